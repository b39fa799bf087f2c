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
pub mod relocate;
pub mod result;

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::fsutil;
use crate::lang::{Invocation, KeyInput, KeyPath};
use crate::store::CacheKey;

pub use identity::{compiler_identity, identity_facts, IdentityFacts};
pub use manifest::{
    entry_matches, record_entry, result_key, CheckMemo, FileDigest, Manifest, ManifestEntry,
    MissingPath, PreprocessorOnly, RecordError, MAX_MANIFEST_ENTRIES, TOO_NEW_SLACK_NS,
};
pub use relocate::BaseDirs;
pub use result::{OutputBlob, ResultEntry};

/// Version of the key schema; part of every key. 2: `native-cpu` for `=native` flags,
/// and no entry may stand for a header with `.incbin`/`#embed` (older ones could).
/// 3: a manifest's preprocessor-only marker is typed ([`PreprocessorOnly`]), so
/// manifests stored under 2 no longer decode and must never be looked up.
/// 4: `base_dir` (relative paths, pinned entries, dependency files stored relative).
pub const SCHEMA: u32 = 4;

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

/// Where a key's fields go: a hasher (the key itself), or a recorder that keeps them
/// labelled to explain a miss (`farm why`). One function feeds both, so an
/// explanation is exactly what the key hashed; generic, so the hasher's path costs
/// nothing more than before.
pub trait FieldSink {
    fn field(&mut self, tag: &'static str, value: &[u8]);
}

impl FieldSink for blake3::Hasher {
    #[inline]
    fn field(&mut self, tag: &'static str, value: &[u8]) {
        put_field(self, tag, value);
    }
}

/// The fields of a key as they were hashed, in order, tag and value.
#[derive(Default, Debug, Clone)]
pub struct RecordedFields(pub Vec<(&'static str, Vec<u8>)>);

impl FieldSink for RecordedFields {
    fn field(&mut self, tag: &'static str, value: &[u8]) {
        self.0.push((tag, value.to_vec()));
    }
}

/// Everything in a key except the source's content: schema, key class, family,
/// compiler identity, how it was invoked, normalized arguments, key-only facts, the
/// environment that matters, the working directory when it reaches the outputs, and
/// the content of files named by flags. Paths the family marks, and the working
/// directory, are relative to their base directory where one applies.
pub fn base_hasher(
    class: &str,
    scheme: KeyScheme<'_>,
    identity: &[u8; 32],
    inv: &Invocation,
    base: &BaseDirs,
) -> Result<blake3::Hasher, KeyError> {
    let mut h = blake3::Hasher::new();
    base_fields(&mut h, class, scheme, identity, inv, base)?;
    Ok(h)
}

/// [`base_hasher`]'s fields, into any [`FieldSink`].
pub fn base_fields<S: FieldSink>(
    h: &mut S,
    class: &str,
    scheme: KeyScheme<'_>,
    identity: &[u8; 32],
    inv: &Invocation,
    base: &BaseDirs,
) -> Result<(), KeyError> {
    h.field("schema", &SCHEMA.to_le_bytes());
    h.field("class", class.as_bytes());
    h.field("family", scheme.family.as_bytes());
    h.field("compiler", identity);
    let invoked_as = Path::new(&inv.arg0)
        .file_name()
        .unwrap_or(OsStr::new(""))
        .as_bytes();
    h.field("invoked-as", invoked_as);
    h.field("argc", &(inv.key_args.len() as u64).to_le_bytes());
    let mut marked = inv.paths.key_args.iter().peekable();
    for (i, a) in inv.key_args.iter().enumerate() {
        let mut arg = std::borrow::Cow::Borrowed(a.as_bytes());
        while let Some(kp) = marked.next_if(|k| k.arg <= i) {
            if kp.arg == i && !base.is_empty() {
                arg = std::borrow::Cow::Owned(relative_arg(&arg, kp, base));
            }
        }
        h.field("arg", &arg);
    }
    for (i, e) in inv.key_extra.iter().enumerate() {
        let e = e.as_bytes();
        match memchr::memchr(b'=', e) {
            Some(eq) if !base.is_empty() && inv.paths.key_extra.contains(&i) => {
                let mut rel = e[..=eq].to_vec();
                rel.extend_from_slice(&base.relative(&e[eq + 1..]));
                h.field("extra", &rel);
            }
            _ => h.field("extra", e),
        }
    }
    for var in scheme.env {
        match std::env::var_os(var) {
            Some(v) => {
                h.field("env", var.as_bytes());
                h.field("=", v.as_bytes());
            }
            None => h.field("noenv", var.as_bytes()),
        }
    }
    if let Some(cwd) = &inv.cwd_in_key {
        h.field("cwd", &base.relative(cwd.as_os_str().as_bytes()));
    }
    for p in &inv.extra_inputs {
        let data = fsutil::read_file(p).map_err(|err| KeyError::Input {
            path: p.clone(),
            err,
        })?;
        h.field("input", p.as_os_str().as_bytes());
        h.field("content", blake3::hash(&data).as_bytes());
    }
    Ok(())
}

/// One argument with the path (or paths) `kp` marks made relative.
fn relative_arg(arg: &[u8], kp: &KeyPath, base: &BaseDirs) -> Vec<u8> {
    let Some(tail) = arg.get(kp.start..) else {
        return arg.to_vec();
    };
    let mut out = arg[..kp.start].to_vec();
    let (path, rest) = match kp.until.and_then(|u| memchr::memchr(u, tail)) {
        Some(end) => tail.split_at(end),
        None => (tail, &b""[..]),
    };
    match kp.list {
        Some(sep) => {
            for (n, p) in path.split(|c| *c == sep).enumerate() {
                if n > 0 {
                    out.push(sep);
                }
                out.extend_from_slice(&base.relative(p));
            }
        }
        None => out.extend_from_slice(&base.relative(path)),
    }
    out.extend_from_slice(rest);
    out
}

/// A key made apart for a result that depends on where the checkout is: the same
/// key with this checkout's base directories (preprocessor and declared modes, whose
/// keys are computed before the compile shows that).
pub fn pinned(key: &CacheKey, base: &BaseDirs) -> CacheKey {
    let mut h = blake3::Hasher::new();
    put_field(&mut h, "key", &key.0);
    put_field(&mut h, "pinned", &base.pin());
    CacheKey(*h.finalize().as_bytes())
}

/// Finishes a key with the main content (the source in direct mode, the preprocessed
/// text in preprocessor mode).
pub fn finish(mut h: blake3::Hasher, content_tag: &str, content: &[u8]) -> CacheKey {
    put_field(&mut h, content_tag, blake3::hash(content).as_bytes());
    CacheKey(*h.finalize().as_bytes())
}

/// Finishes a declared-input key with every input, labelled, in the family's order.
/// Paths in labels are relative to their base directory where one applies.
pub fn finish_declared(mut h: blake3::Hasher, inputs: &[KeyInput], base: &BaseDirs) -> CacheKey {
    put_field(&mut h, "inputs", &(inputs.len() as u64).to_le_bytes());
    for i in inputs {
        match base.relative_in_text(i.label.as_bytes()) {
            Some(rel) => put_field(&mut h, "input", &rel),
            None => put_field(&mut h, "input", i.label.as_bytes()),
        }
        put_field(&mut h, "digest", &i.digest);
    }
    CacheKey(*h.finalize().as_bytes())
}
