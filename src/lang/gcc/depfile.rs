//! Make dependency files: the compile's own (`-MD`/`-MMD`), farm's observation file,
//! and their parse.

use super::plan;
use crate::fsutil;
use crate::lang::{Invocation, NotRecordable};
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

/// Parses the first rule of a Make dependency file: the prerequisites, unescaped.
pub fn parse_depfile(text: &[u8]) -> Vec<PathBuf> {
    // Join continuation lines, keep escapes for the tokenizer.
    let mut deps = Vec::new();
    let mut i = 0;
    // Skip the targets: up to the first ':' that is followed by whitespace or the end.
    while i < text.len() {
        if text[i] == b'\\' {
            i += 2;
            continue;
        }
        if text[i] == b':' && (i + 1 == text.len() || text[i + 1].is_ascii_whitespace()) {
            i += 1;
            break;
        }
        i += 1;
    }
    let mut cur: Vec<u8> = Vec::new();
    while i < text.len() {
        let c = text[i];
        match c {
            b'\\' if i + 1 < text.len() && text[i + 1] == b'\n' => i += 1,
            b'\\' if i + 2 < text.len() && text[i + 1] == b'\r' && text[i + 2] == b'\n' => i += 2,
            b'\\' if i + 1 < text.len() && matches!(text[i + 1], b' ' | b'#' | b'\\') => {
                cur.push(text[i + 1]);
                i += 1;
            }
            b'$' if i + 1 < text.len() && text[i + 1] == b'$' => {
                cur.push(b'$');
                i += 1;
            }
            b' ' | b'\t' | b'\r' => {
                if !cur.is_empty() {
                    deps.push(PathBuf::from(OsString::from_vec(std::mem::take(&mut cur))));
                }
            }
            b'\n' => break,
            _ => cur.push(c),
        }
        i += 1;
    }
    if !cur.is_empty() {
        deps.push(PathBuf::from(OsString::from_vec(cur)));
    }
    deps
}

/// The dependency list of this compile: `(files, complete)`; `complete` is false for
/// `-MMD` output, which leaves system headers out.
pub(super) fn read_deps(inv: &Invocation) -> Result<(Vec<PathBuf>, bool), NotRecordable> {
    let p = plan(inv);
    let (path, complete) = match (&p.observe_depfile, p.deps.md, &p.deps.file) {
        (Some(f), _, _) => (f.clone(), true),
        (None, Some(md), Some(f)) => (f.clone(), md),
        _ => {
            return Err(NotRecordable {
                reason: "no_dependency_file",
                detail: String::new(),
                preprocessor_ok: false,
                uses_time: false,
            })
        }
    };
    // A missing file is possibly transient (TMPDIR): not stored this time, nothing
    // remembered.
    let text = std::fs::read(&path).map_err(|e| NotRecordable {
        reason: "no_dependency_file",
        detail: format!("{}: {e}", path.display()),
        preprocessor_ok: false,
        uses_time: false,
    })?;
    Ok((parse_depfile(&text), complete))
}

/// A fresh name for farm's own dependency file (the observation of a compile).
pub(super) fn tmp_depfile() -> PathBuf {
    let seq = {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        N.fetch_add(1, Ordering::Relaxed)
    };
    // Only named here (the hit path creates nothing): the file is created, with
    // O_EXCL in a private 0700 directory, when the compile is observed.
    fsutil::private_temp_dir().join(format!("{}-{seq}.d", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depfile_parsing() {
        let t = b"obj/a.o: src/a.c /usr/include/stdio.h \\\n inc/my\\ file.h a$$b.h\ninc/x.h:\n";
        let d = parse_depfile(t);
        assert_eq!(
            d,
            vec![
                PathBuf::from("src/a.c"),
                PathBuf::from("/usr/include/stdio.h"),
                PathBuf::from("inc/my file.h"),
                PathBuf::from("a$b.h")
            ]
        );
    }
}
