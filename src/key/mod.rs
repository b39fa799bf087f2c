//! Cache keys, direct-mode manifests and result entries (docs/cache-key.md).
//!
//! Knows invocations (family-agnostic) and files; never a compiler's flags, and never
//! a family itself: a family contributes its name and key environment through a
//! [`KeyScheme`]. Every field that enters a key is listed in docs/cache-key.md;
//! changing what a key covers means bumping [`SCHEMA`], so old entries are never
//! reused across schema versions.
//!
//! - [`identity`]: a compiler's content identity.
//! - [`manifest`]: direct-mode manifests (match, record, merge).
//! - [`result`]: result entries.

pub mod identity;
pub mod manifest;
pub mod result;

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::fsutil;
use crate::lang::{Invocation, KeyInput};
use crate::store::CacheKey;

pub use identity::compiler_identity;
pub use manifest::{
    entry_matches, record_entry, result_key, CheckMemo, FileDigest, Manifest, ManifestEntry,
    MissingPath, PreprocessorOnly, RecordError, MAX_MANIFEST_ENTRIES, TOO_NEW_SLACK_NS,
};
pub use result::{OutputBlob, ResultEntry};

/// Version of the key schema; part of every key. 2: `native-cpu` for `=native` flags,
/// and no entry may stand for a header with `.incbin`/`#embed` (older ones could).
/// 3: a manifest's preprocessor-only marker is typed ([`PreprocessorOnly`]), so
/// manifests stored under 2 no longer decode and must never be looked up.
pub const SCHEMA: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("compiler {path}: {err}")]
    Compiler { path: PathBuf, err: io::Error },
    #[error("input {path}: {err}")]
    Input { path: PathBuf, err: io::Error },
}

/// What a compiler family contributes to every key besides the invocation: its name
/// and the environment variables that change its output.
#[derive(Clone, Copy, Debug)]
pub struct KeyScheme<'a> {
    pub family: &'a str,
    pub env: &'a [&'a str],
}

fn put_field(h: &mut blake3::Hasher, tag: &str, value: &[u8]) {
    h.update(tag.as_bytes());
    h.update(&(value.len() as u64).to_le_bytes());
    h.update(value);
}

/// Everything in a key except the source's content: schema, key class, family,
/// compiler identity, how it was invoked, normalized arguments, key-only facts, the
/// environment that matters, the working directory when it reaches the outputs, and
/// the content of files named by flags.
pub fn base_hasher(
    class: &str,
    scheme: KeyScheme<'_>,
    identity: &[u8; 32],
    inv: &Invocation,
) -> Result<blake3::Hasher, KeyError> {
    let mut h = blake3::Hasher::new();
    put_field(&mut h, "schema", &SCHEMA.to_le_bytes());
    put_field(&mut h, "class", class.as_bytes());
    put_field(&mut h, "family", scheme.family.as_bytes());
    put_field(&mut h, "compiler", identity);
    let invoked_as = Path::new(&inv.arg0)
        .file_name()
        .unwrap_or(OsStr::new(""))
        .as_bytes();
    put_field(&mut h, "invoked-as", invoked_as);
    put_field(&mut h, "argc", &(inv.key_args.len() as u64).to_le_bytes());
    for a in &inv.key_args {
        put_field(&mut h, "arg", a.as_bytes());
    }
    for e in &inv.key_extra {
        put_field(&mut h, "extra", e.as_bytes());
    }
    for var in scheme.env {
        match std::env::var_os(var) {
            Some(v) => {
                put_field(&mut h, "env", var.as_bytes());
                put_field(&mut h, "=", v.as_bytes());
            }
            None => put_field(&mut h, "noenv", var.as_bytes()),
        }
    }
    if let Some(cwd) = &inv.cwd_in_key {
        put_field(&mut h, "cwd", cwd.as_os_str().as_bytes());
    }
    for p in &inv.extra_inputs {
        let data = fsutil::read_file(p).map_err(|err| KeyError::Input {
            path: p.clone(),
            err,
        })?;
        put_field(&mut h, "input", p.as_os_str().as_bytes());
        put_field(&mut h, "content", blake3::hash(&data).as_bytes());
    }
    Ok(h)
}

/// Finishes a key with the main content (the source in direct mode, the preprocessed
/// text in preprocessor mode).
pub fn finish(mut h: blake3::Hasher, content_tag: &str, content: &[u8]) -> CacheKey {
    put_field(&mut h, content_tag, blake3::hash(content).as_bytes());
    CacheKey(*h.finalize().as_bytes())
}

/// Finishes a declared-input key with every input, labelled, in the family's order.
pub fn finish_declared(mut h: blake3::Hasher, inputs: &[KeyInput]) -> CacheKey {
    put_field(&mut h, "inputs", &(inputs.len() as u64).to_le_bytes());
    for i in inputs {
        put_field(&mut h, "input", i.label.as_bytes());
        put_field(&mut h, "digest", &i.digest);
    }
    CacheKey(*h.finalize().as_bytes())
}
