//! Response files: `@file` arguments expanded as gcc's libiberty does, within bounds.

use crate::lang::Passthrough;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

/// Expands `@file` arguments the way gcc's libiberty does (whitespace separated,
/// single/double quotes, backslash escapes, nested files). A file that cannot be read
/// stays a literal argument, as gcc leaves it.
pub fn expand_response_files(args: &[OsString]) -> Result<Vec<OsString>, Passthrough> {
    let mut out = Vec::with_capacity(args.len());
    let mut budget = Budget::default();
    expand_into(args, &mut out, 0, &mut budget)?;
    Ok(out)
}

/// Bounds on what `@file` expansion may read: nested files can fan out (40 files of 40
/// references, 5 deep, is 10^8 arguments). Past them the compiler gets argv unchanged.
const RESPONSE_FILES_MAX: usize = 1000;
const RESPONSE_ARGS_MAX: usize = 1_000_000;
const RESPONSE_BYTES_MAX: u64 = 64 << 20;

#[derive(Default)]
struct Budget {
    files: usize,
    bytes: u64,
}

fn expand_into(
    args: &[OsString],
    out: &mut Vec<OsString>,
    depth: u32,
    budget: &mut Budget,
) -> Result<(), Passthrough> {
    for a in args {
        let b = a.as_bytes();
        if b.len() > 1 && b[0] == b'@' {
            if depth > 16 {
                return Err(Passthrough::new(
                    "response_file_nesting",
                    a.to_string_lossy(),
                ));
            }
            budget.files += 1;
            if budget.files > RESPONSE_FILES_MAX {
                return Err(Passthrough::new(
                    "response_file_limit",
                    format!("more than {RESPONSE_FILES_MAX} response files"),
                ));
            }
            let path = Path::new(OsStr::from_bytes(&b[1..]));
            // A FIFO or device would block farm, or be consumed before the compiler
            // reads it: the compiler alone reads it.
            if std::fs::metadata(path).is_ok_and(|m| !m.is_file()) {
                return Err(Passthrough::new("source_not_regular", a.to_string_lossy()));
            }
            let mut data = Vec::new();
            let left = RESPONSE_BYTES_MAX - budget.bytes;
            let read = std::fs::File::open(path).and_then(|f| {
                use std::io::Read;
                f.take(left + 1).read_to_end(&mut data)
            });
            match read {
                Ok(n) => {
                    if n as u64 > left {
                        return Err(Passthrough::new(
                            "response_file_limit",
                            format!("more than {RESPONSE_BYTES_MAX} bytes of response files"),
                        ));
                    }
                    budget.bytes += n as u64;
                    let inner = split_response_file(&data);
                    drop(data);
                    expand_into(&inner, out, depth + 1, budget)?;
                }
                Err(_) => {
                    return Err(Passthrough::new(
                        "response_file_unreadable",
                        a.to_string_lossy(),
                    ))
                }
            }
        } else {
            if out.len() >= RESPONSE_ARGS_MAX {
                return Err(Passthrough::new(
                    "response_file_limit",
                    format!("more than {RESPONSE_ARGS_MAX} arguments"),
                ));
            }
            out.push(a.clone());
        }
    }
    Ok(())
}

/// Splits one response file into arguments (see [`expand_response_files`]).
fn split_response_file(data: &[u8]) -> Vec<OsString> {
    let mut args = Vec::new();
    let mut cur = Vec::new();
    let mut in_arg = false;
    let mut quote: Option<u8> = None;
    let mut i = 0;
    while i < data.len() {
        let c = data[i];
        match (quote, c) {
            (None, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c) => {
                if in_arg {
                    args.push(OsString::from_vec(std::mem::take(&mut cur)));
                    in_arg = false;
                }
            }
            (_, b'\\') if i + 1 < data.len() => {
                cur.push(data[i + 1]);
                in_arg = true;
                i += 1;
            }
            (None, b'\'' | b'"') => {
                quote = Some(c);
                in_arg = true;
            }
            (Some(q), c) if c == q => quote = None,
            _ => {
                cur.push(c);
                in_arg = true;
            }
        }
        i += 1;
    }
    if in_arg {
        args.push(OsString::from_vec(cur));
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lang::gcc::test_util::os;

    #[test]
    fn response_files() {
        let d = tempfile::tempdir().unwrap();
        let rsp = d.path().join("args.rsp");
        std::fs::write(&rsp, "-c 'a b.c' \"-DX=1 2\" -O\\ 2\n").unwrap();
        let got = expand_response_files(&os(&[&format!("@{}", rsp.display()), "-g"])).unwrap();
        assert_eq!(got, os(&["-c", "a b.c", "-DX=1 2", "-O 2", "-g"]));
        assert_eq!(
            expand_response_files(&os(&["@/nonexistent/farm.rsp"]))
                .unwrap_err()
                .reason,
            "response_file_unreadable"
        );
    }

    #[test]
    fn response_file_fan_out_is_bounded() {
        // 5 levels of 40 files, each naming all 40 of the next level: 10^8 arguments
        // if expanded; refused after the file budget instead.
        let dir = tempfile::tempdir().unwrap();
        for level in 0..5 {
            for i in 0..40 {
                let body: String = if level == 4 {
                    "-DX=1 ".repeat(10)
                } else {
                    (0..40)
                        .map(|j| format!("@{}/r{}_{j} ", dir.path().display(), level + 1))
                        .collect()
                };
                std::fs::write(dir.path().join(format!("r{level}_{i}")), body).unwrap();
            }
        }
        let top = format!("@{}/r0_0", dir.path().display());
        let err = expand_response_files(&os(&["-c", &top, "a.c"])).unwrap_err();
        assert_eq!(err.reason, "response_file_limit");
        // Many arguments in one file: the argument budget.
        let big = dir.path().join("big");
        std::fs::write(&big, "-DX ".repeat(RESPONSE_ARGS_MAX + 1)).unwrap();
        let err = expand_response_files(&os(&[&format!("@{}", big.display())])).unwrap_err();
        assert_eq!(err.reason, "response_file_limit");
        // A normal nested pair still expands.
        std::fs::write(dir.path().join("inner"), "-O2 -DA=1").unwrap();
        std::fs::write(
            dir.path().join("outer"),
            format!("-c @{}/inner", dir.path().display()),
        )
        .unwrap();
        let got = expand_response_files(&os(&[&format!("@{}/outer", dir.path().display())]));
        assert_eq!(got.unwrap(), os(&["-c", "-O2", "-DA=1"]));
    }
}
