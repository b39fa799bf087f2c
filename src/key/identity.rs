//! A compiler's content identity: what the `compiler` field of every key holds.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use std::process::{Command, Stdio};

use super::KeyError;
use crate::fsutil;
use crate::lang::IdentityProbe;

/// Content identity of a compiler: blake3 of the binary plus its `-v` output, and of
/// its toolchain package when the family lists one (the programs the driver starts,
/// the libraries they load), memoized by path, size, mtime, ctime and inode in
/// `memo_dir`; the memo also holds the stamps of the package's programs, so a
/// compiler proper (`cc1`) replaced under an unchanged driver is a new identity.
/// `canonical` is the compiler's path with every link resolved.
pub fn compiler_identity(
    canonical: &Path,
    probe: &IdentityProbe,
    memo_dir: &Path,
) -> Result<[u8; 32], KeyError> {
    let memo = memo_path(canonical, probe, memo_dir)?;
    if let Ok(data) = fs::read(&memo) {
        if let Some(d) = read_memo(&data) {
            return Ok(d);
        }
    }
    compute(canonical, probe, memo_dir, &memo)
}

/// Where the identity of the compiler at `canonical`, as it is now (its and its probe
/// files' stamps), is memoized.
fn memo_path(
    canonical: &Path,
    probe: &IdentityProbe,
    memo_dir: &Path,
) -> Result<PathBuf, KeyError> {
    let meta = fs::metadata(canonical).map_err(|err| KeyError::Compiler {
        path: canonical.to_path_buf(),
        err,
    })?;
    let mut h = blake3::Hasher::new();
    h.update(b"farm-compiler-memo-2\0");
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
    Ok(memo_dir.join(format!(
        "{}.id",
        fsutil::hex(&h.finalize().as_bytes()[..16])
    )))
}

/// What a compiler identity was made of, for explaining a changed one (`farm why`):
/// kept beside the memo when the identity is computed, never read on a hit.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct IdentityFacts {
    /// The driver binary's content digest.
    pub binary: [u8; 32],
    /// The last line of what the version arguments printed (`gcc version 12.2.0 …`).
    pub version: String,
    /// The version output's digest (all of it).
    pub version_digest: [u8; 32],
    /// The toolchain package's digest, when the family lists one and it could be made.
    pub toolchain: Option<[u8; 32]>,
}

/// The facts of the compiler's current identity, if its memo holds them.
pub fn identity_facts(
    canonical: &Path,
    probe: &IdentityProbe,
    memo_dir: &Path,
) -> Option<IdentityFacts> {
    let memo = memo_path(canonical, probe, memo_dir).ok()?;
    let data = fs::read(memo.with_extension("facts")).ok()?;
    postcard::from_bytes(&data).ok()
}

fn compute(
    canonical: &Path,
    probe: &IdentityProbe,
    memo_dir: &Path,
    memo: &Path,
) -> Result<[u8; 32], KeyError> {
    let err = |err| KeyError::Compiler {
        path: canonical.to_path_buf(),
        err,
    };
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
    let binary = *blake3::hash(&binary).as_bytes();
    h.update(&binary);
    h.update(&version.stdout);
    h.update(b"\0");
    h.update(&version.stderr);
    let mut facts = IdentityFacts {
        binary,
        version: last_line(&version.stderr)
            .or_else(|| last_line(&version.stdout))
            .unwrap_or_default(),
        version_digest: *blake3::hash(&[&version.stdout[..], b"\0", &version.stderr].concat())
            .as_bytes(),
        toolchain: None,
    };
    for f in &probe.files {
        h.update(b"\0file\0");
        h.update(f.as_os_str().as_bytes());
        let digest = fsutil::hash_file(f).map_err(|err| KeyError::Compiler {
            path: f.clone(),
            err,
        })?;
        h.update(&digest);
    }
    let mut programs = Vec::new();
    if let Some(list) = probe.programs {
        let files = list(canonical, canonical.as_os_str()).map_err(err)?;
        // A package that cannot be made (a file unreadable) leaves the identity as it
        // was before packages: caching goes on, and same-path jobs fail on their own.
        match crate::toolchain::build(canonical, &files, &mut |p| {
            crate::digest::digest_memo(p, memo_dir)
        }) {
            Ok(t) => {
                h.update(b"\0toolchain\0");
                let digest = crate::toolchain::identity_digest(&t);
                h.update(&digest);
                facts.toolchain = Some(digest);
            }
            Err(e) => tracing::warn!(error = %e, "no toolchain package for the identity"),
        }
        for f in files {
            if let Some(s) = program_stamp(&f) {
                programs.push((f.to_string_lossy().into_owned(), s));
            }
        }
    }
    let id = *h.finalize().as_bytes();
    let mut data = id.to_vec();
    data.extend(postcard::to_allocvec(&programs).unwrap_or_default());
    let _ = fsutil::create_cache_dir_all(memo_dir);
    let _ = fsutil::write_cache_atomic(memo, &data);
    if let Ok(f) = postcard::to_allocvec(&facts) {
        let _ = fsutil::write_cache_atomic(&memo.with_extension("facts"), &f);
    }
    Ok(id)
}

/// The last non-empty line of a program's output, trimmed and bounded.
fn last_line(out: &[u8]) -> Option<String> {
    let s = String::from_utf8_lossy(out);
    let line = s.lines().rev().map(str::trim).find(|l| !l.is_empty())?;
    Some(line.chars().take(200).collect())
}

/// What identifies a toolchain program's file without reading it.
fn program_stamp(p: &Path) -> Option<[i64; 4]> {
    let m = fs::metadata(p).ok()?;
    Some([
        m.size() as i64,
        m.mtime() * 1_000_000_000 + m.mtime_nsec(),
        m.ctime() * 1_000_000_000 + m.ctime_nsec(),
        m.ino() as i64,
    ])
}

/// The identity in a memo, if each program it lists is unchanged.
fn read_memo(data: &[u8]) -> Option<[u8; 32]> {
    let id = <[u8; 32]>::try_from(data.get(..32)?).ok()?;
    let programs: Vec<(String, [i64; 4])> = postcard::from_bytes(&data[32..]).ok()?;
    programs
        .iter()
        .all(|(p, s)| program_stamp(Path::new(p)).as_ref() == Some(s))
        .then_some(id)
}
