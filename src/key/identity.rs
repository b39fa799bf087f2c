//! A compiler's content identity: what the `compiler` field of every key holds.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};

use super::KeyError;
use crate::fsutil;
use crate::lang::IdentityProbe;

/// Content identity of a compiler: blake3 of the binary plus its `-v` output,
/// memoized by path, size, mtime, ctime and inode in `memo_dir`. `canonical` is the
/// compiler's path with every link resolved.
pub fn compiler_identity(
    canonical: &Path,
    probe: &IdentityProbe,
    memo_dir: &Path,
) -> Result<[u8; 32], KeyError> {
    let err = |err| KeyError::Compiler {
        path: canonical.to_path_buf(),
        err,
    };
    let meta = fs::metadata(canonical).map_err(err)?;
    let mut h = blake3::Hasher::new();
    h.update(b"farm-compiler-memo-1\0");
    h.update(canonical.as_os_str().as_bytes());
    let mut stamps = vec![meta.clone()];
    for f in &probe.files {
        h.update(b"\0probe\0");
        h.update(f.as_os_str().as_bytes());
        stamps.push(fs::metadata(f).map_err(|err| KeyError::Compiler {
            path: f.clone(),
            err,
        })?);
    }
    for meta in &stamps {
        for v in [
            meta.size() as i64,
            meta.mtime(),
            meta.mtime_nsec(),
            meta.ctime(),
            meta.ctime_nsec(),
            meta.ino() as i64,
            meta.dev() as i64,
        ] {
            h.update(&v.to_le_bytes());
        }
    }
    let memo = memo_dir.join(format!(
        "{}.id",
        fsutil::hex(&h.finalize().as_bytes()[..16])
    ));
    if let Ok(data) = fs::read(&memo) {
        if let Ok(d) = <[u8; 32]>::try_from(data.as_slice()) {
            return Ok(d);
        }
    }
    let binary = fsutil::read_file(canonical).map_err(err)?;
    let version = Command::new(canonical)
        .args(&probe.version_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map_err(err)?;
    let mut h = blake3::Hasher::new();
    h.update(b"farm-compiler-identity-1\0");
    h.update(blake3::hash(&binary).as_bytes());
    h.update(&version.stdout);
    h.update(b"\0");
    h.update(&version.stderr);
    for f in &probe.files {
        h.update(b"\0file\0");
        h.update(f.as_os_str().as_bytes());
        let digest = fsutil::hash_file(f).map_err(|err| KeyError::Compiler {
            path: f.clone(),
            err,
        })?;
        h.update(&digest);
    }
    let id = *h.finalize().as_bytes();
    let _ = fsutil::create_cache_dir_all(memo_dir);
    let _ = fsutil::write_cache_atomic(&memo, &id);
    Ok(id)
}
