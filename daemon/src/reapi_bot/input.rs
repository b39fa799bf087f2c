//! A lease's input root: its Directories read from the CAS and checked (every name
//! one plain component, each once in its Directory, bounded counts and sizes), then
//! its files fetched in bounded chunks. The default layout writes them out as files
//! of the job directory; the rootfs layout ([`super::rootfs`]) lays them out as a
//! root of hard links.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use bazel_remote_apis::build::bazel::remote::execution::v2::{Digest, Directory};
use prost::Message as _;

use super::cas::{show, Cas};
use super::run::{cas_fail, code, fail, Failure, MAX_MESSAGE};

/// Directories in one input root.
const MAX_DIRECTORIES: usize = 65_536;
/// Files in one input root.
const MAX_FILES: usize = 1_000_000;
/// Bytes of one input root, all files together.
const MAX_INPUT_BYTES: u64 = 8 << 30;
/// One input file (read into memory before it is written out), at most.
pub const MAX_INPUT_BLOB: u64 = 1 << 30;
/// Input bytes held in memory at once while the root is laid out.
const FETCH_CHUNK: u64 = 64 << 20;

/// One input file: its path relative to the root, its digest, whether executable.
pub type InputFile = (PathBuf, Digest, bool);

/// An input root as read from the CAS, every path relative to the root.
#[derive(Default)]
pub struct InputTree {
    /// Every directory, parents before children.
    pub dirs: Vec<PathBuf>,
    pub files: Vec<InputFile>,
    /// Symbolic links (path, target verbatim); only where the layout takes them.
    pub links: Vec<(PathBuf, String)>,
}

/// Reads the input root `digest`: every Directory read and checked. Symbolic links
/// are refused unless `links_ok`.
pub async fn walk(cas: &Cas, digest: &Digest, links_ok: bool) -> Result<InputTree, Failure> {
    let mut tree = InputTree::default();
    let mut dirs = vec![(digest.clone(), PathBuf::new())];
    let mut input_bytes = 0u64;
    while !dirs.is_empty() {
        if tree.dirs.len() + dirs.len() > MAX_DIRECTORIES {
            return Err(fail(
                code::RESOURCE_EXHAUSTED,
                format!("input root has more than {MAX_DIRECTORIES} directories"),
            ));
        }
        let digests: Vec<Digest> = dirs.iter().map(|(d, _)| d.clone()).collect();
        let got = cas
            .read_many(&digests, MAX_MESSAGE)
            .await
            .map_err(cas_fail)?;
        let mut next = Vec::new();
        for (d, path) in dirs {
            let bytes = got
                .get(&d.hash)
                .ok_or_else(|| cas_fail(format!("Directory {} missing", show(&d))))?;
            let m = Directory::decode(bytes.as_slice()).map_err(|e| {
                fail(
                    code::INVALID_ARGUMENT,
                    format!("Directory {}: {e}", show(&d)),
                )
            })?;
            if !m.symlinks.is_empty() && !links_ok {
                return Err(fail(
                    code::INVALID_ARGUMENT,
                    "symbolic links in the input root are not supported by farmd's bot \
                     (only in the farm-layout=rootfs layout)",
                ));
            }
            let mut names = HashSet::new();
            let mut once = |n: &str| {
                let shown = path.join(n);
                if names.insert(n.to_string()) {
                    Ok(shown)
                } else {
                    Err(fail(
                        code::INVALID_ARGUMENT,
                        format!("input {} is listed twice", shown.display()),
                    ))
                }
            };
            for sub in &m.directories {
                let p = once(name(&sub.name)?)?;
                let sd = valid_digest(sub.digest.as_ref(), &p)?;
                next.push((sd, p));
            }
            for f in &m.files {
                let p = once(name(&f.name)?)?;
                let fd = valid_digest(f.digest.as_ref(), &p)?;
                // Valid: a size of at least 0.
                input_bytes = input_bytes.saturating_add(fd.size_bytes as u64);
                tree.files.push((p, fd, f.is_executable));
            }
            for l in &m.symlinks {
                let p = once(name(&l.name)?)?;
                if l.target.is_empty() || l.target.len() > 4096 || l.target.contains('\0') {
                    return Err(fail(
                        code::INVALID_ARGUMENT,
                        format!("input link {}: bad target", p.display()),
                    ));
                }
                tree.links.push((p, l.target.clone()));
            }
            if tree.files.len() + tree.links.len() > MAX_FILES || input_bytes > MAX_INPUT_BYTES {
                return Err(fail(
                    code::RESOURCE_EXHAUSTED,
                    format!("input root larger than {MAX_FILES} files or {MAX_INPUT_BYTES} bytes"),
                ));
            }
        }
        tree.dirs.extend(next.iter().map(|(_, p)| p.clone()));
        dirs = next;
    }
    Ok(tree)
}

fn valid_digest(d: Option<&Digest>, p: &Path) -> Result<Digest, Failure> {
    d.cloned().filter(super::cas::valid).ok_or_else(|| {
        fail(
            code::INVALID_ARGUMENT,
            format!("input {:?}: no valid digest", p.display().to_string()),
        )
    })
}

/// Fetches `files`' blobs (each at most `cap` bytes) in chunks of bounded memory and
/// hands each to `put` with its content.
pub async fn fetch(
    cas: &Cas,
    files: &[InputFile],
    cap: u64,
    mut put: impl FnMut(&InputFile, &[u8]) -> Result<(), Failure>,
) -> Result<(), Failure> {
    let mut i = 0;
    while i < files.len() {
        let mut j = i;
        let mut bytes = 0u64;
        while j < files.len()
            && (j == i || bytes.saturating_add(files[j].1.size_bytes as u64) <= FETCH_CHUNK)
        {
            bytes = bytes.saturating_add(files[j].1.size_bytes as u64);
            j += 1;
        }
        let digests: Vec<Digest> = files[i..j].iter().map(|(_, d, _)| d.clone()).collect();
        let got = cas.read_many(&digests, cap).await.map_err(cas_fail)?;
        for f in &files[i..j] {
            let data = got
                .get(&f.1.hash)
                .ok_or_else(|| cas_fail(format!("blob {} missing", show(&f.1))))?;
            put(f, data)?;
        }
        i = j;
    }
    Ok(())
}

/// Lays the input root out under `dir` (which exists and is empty) as plain
/// directories and files, every file created new.
pub async fn lay_out(cas: &Cas, digest: &Digest, dir: &Path, file_cap: u64) -> Result<(), Failure> {
    let tree = walk(cas, digest, false).await?;
    for d in &tree.dirs {
        std::fs::create_dir(dir.join(d)).map_err(|e| {
            fail(
                code::INVALID_ARGUMENT,
                format!("input {}: {e}", d.display()),
            )
        })?;
    }
    fetch(cas, &tree.files, file_cap, |(p, _, exec), data| {
        // Messages name the input as the submitter does, not this machine's path.
        write_new(&dir.join(p), data, *exec).map_err(|e| {
            fail(
                code::INVALID_ARGUMENT,
                format!("input {}: {e}", p.display()),
            )
        })
    })
    .await
}

pub fn name(n: &str) -> Result<&str, Failure> {
    let ok = !n.is_empty() && n != "." && n != ".." && !n.contains(['/', '\0']);
    ok.then_some(n).ok_or_else(|| {
        fail(
            code::INVALID_ARGUMENT,
            format!("{n:?} is not a file name in the input root"),
        )
    })
}

fn write_new(p: &Path, data: &[u8], exec: bool) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if exec { 0o755 } else { 0o644 })
        .open(p)?;
    f.write_all(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_names_are_one_plain_component() {
        for bad in ["", ".", "..", "a/b", "/etc", "a\0"] {
            assert!(name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(name("a.c").unwrap(), "a.c");
    }
}
