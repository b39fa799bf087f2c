//! `farm why`: what keyed a compile that missed, kept per source so a later question
//! ("why did this miss?") can be answered by comparing two compiles' key inputs.
//!
//! A miss (never a hit) leaves a [`Record`] under `<cache>/why/<xx>/<source digest>`:
//! the labelled fields of the key's base exactly as they were hashed (one function
//! feeds both, see [`crate::key::FieldSink`]), the compiler's identity facts, and the
//! content part (direct mode: the files read with their digests and the lookups that
//! found nothing; declared mode: the declared inputs; preprocessor mode: only that
//! the text differs). [`diff`] compares two records and says what differed.
//!
//! Everything here is best effort: a record that cannot be written is logged, never
//! the build's failure.

pub mod diff;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fsutil;
use crate::key::{IdentityFacts, RecordedFields};

/// Records kept per source, newest first.
pub const RECORDS_PER_SOURCE: usize = 4;
/// Sources kept per shard directory (256 shards): the oldest beyond go.
pub const SOURCES_PER_SHARD: usize = 32;
/// Caps on what one record holds (a compile reading more says it was truncated).
pub const MAX_FIELDS: usize = 4096;
pub const MAX_VALUE: usize = 4096;
pub const MAX_INPUTS: usize = 8192;

const MAGIC: &[u8] = b"farm-why-1\n";

/// A content digest as records keep it: 128 bits tell changed from unchanged.
pub type Digest = [u8; 16];

pub fn short(d: &[u8; 32]) -> Digest {
    let mut s = [0; 16];
    s.copy_from_slice(&d[..16]);
    s
}

/// How a recorded compile ended.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A miss whose result was stored.
    Stored,
    /// A miss that compiled but left nothing stored, and why.
    NotStored(String),
    /// Not cacheable: compiled untouched, with the pass-through reason and detail.
    Passthrough { reason: String, detail: String },
}

/// The compiler as a key saw it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Compiler {
    /// The path it ran by.
    pub path: String,
    /// The file that path resolves to.
    pub canonical: String,
    /// The identity digest in the key (zero when none was computed).
    pub identity: [u8; 32],
    /// What the identity was made of, when known.
    pub facts: Option<IdentityFacts>,
}

/// The content part of a key: what the compile read.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Content {
    /// The source's digest (direct and depend modes).
    pub source: Option<Digest>,
    /// The key in full, where the content part is not recorded item by item
    /// (preprocessor mode: the preprocessed text's digest is inside).
    pub key: Option<Digest>,
    /// Files read, absolute, with their digests.
    pub files: Vec<(String, Digest)>,
    /// Paths where a lookup found nothing (absolute).
    pub missing: Vec<String>,
    /// Paths where a lookup found something that is not a file.
    pub not_file: Vec<String>,
    /// Files a lookup found but the compile did not read.
    pub present: Vec<String>,
    /// Declared inputs (javac, csc): label and digest.
    pub declared: Vec<(String, Digest)>,
    /// Whether direct mode's inputs are known (a manifest entry was recorded).
    pub inputs_known: bool,
}

/// One compile of a source, as keyed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Seconds since the epoch.
    pub time_s: u64,
    pub source: String,
    pub cwd: String,
    /// The compiler as run, then its arguments.
    pub argv: Vec<String>,
    /// direct, depend, preprocessor, declared, or none (a pass-through before keying).
    pub mode: String,
    pub outcome: Outcome,
    pub compiler: Compiler,
    /// The base key's fields in order: tag, value (lossy text; a base directory is
    /// shown as `<base_dir>`).
    pub fields: Vec<(String, String)>,
    pub content: Content,
    /// Some fields or inputs were left out (caps).
    pub truncated: bool,
}

impl Record {
    /// A record of now for `source` (absolute) compiled from `cwd`.
    pub fn new(
        source: &Path,
        cwd: &Path,
        argv: Vec<String>,
        mode: &str,
        outcome: Outcome,
    ) -> Record {
        Record {
            time_s: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            source: source.to_string_lossy().into_owned(),
            cwd: cwd.to_string_lossy().into_owned(),
            argv,
            mode: mode.to_string(),
            outcome,
            compiler: Compiler::default(),
            fields: Vec::new(),
            content: Content::default(),
            truncated: false,
        }
    }

    /// Takes the recorded base fields in, within the caps.
    pub fn set_fields(&mut self, fields: RecordedFields) {
        let n = fields.0.len();
        for (tag, value) in fields.0.into_iter().take(MAX_FIELDS) {
            let value = if value.len() > MAX_VALUE {
                self.truncated = true;
                &value[..MAX_VALUE]
            } else {
                &value[..]
            };
            self.fields.push((tag.to_string(), field_text(tag, value)));
        }
        self.truncated |= n > MAX_FIELDS;
    }

    /// Caps the content's lists.
    pub fn cap_content(&mut self) {
        let c = &mut self.content;
        for len in [
            c.files.len(),
            c.missing.len(),
            c.not_file.len(),
            c.present.len(),
            c.declared.len(),
        ] {
            self.truncated |= len > MAX_INPUTS;
        }
        c.files.truncate(MAX_INPUTS);
        c.missing.truncate(MAX_INPUTS);
        c.not_file.truncate(MAX_INPUTS);
        c.present.truncate(MAX_INPUTS);
        c.declared.truncate(MAX_INPUTS);
    }
}

/// A field's value for people: digests in hex, counts as numbers, text as text with
/// a base directory (`\0N` in a key) shown as `<base_dir>`.
pub fn field_text(tag: &str, value: &[u8]) -> String {
    match tag {
        "schema" | "argc" if value.len() == 4 || value.len() == 8 => {
            let mut b = [0u8; 8];
            b[..value.len()].copy_from_slice(value);
            u64::from_le_bytes(b).to_string()
        }
        "compiler" | "content" => fsutil::hex(value),
        _ => {
            let mut out = Vec::with_capacity(value.len());
            let mut i = 0;
            while i < value.len() {
                if value[i] == 0 && value.get(i + 1).is_some_and(u8::is_ascii_digit) {
                    out.extend_from_slice(b"<base_dir>");
                    i += 2;
                    if value.get(i) != Some(&b'/') && i < value.len() {
                        out.push(b'/');
                    }
                } else {
                    out.push(value[i]);
                    i += 1;
                }
            }
            String::from_utf8_lossy(&out).into_owned()
        }
    }
}

/// What `before`'s inputs are on disk now (for a compile not yet run): each file
/// read with its digest now (gone: a missing path), each path where a lookup found
/// nothing that now holds a file (a directory there: the file of a name read
/// before, if it has one), each found file that still is one. The source, the key
/// and declared inputs are the caller's.
pub fn probe(before: &Content) -> Content {
    let is_file = |p: &str| std::fs::metadata(p).map(|m| m.is_file()).unwrap_or(false);
    // Only regular files are read: a FIFO or a device (what a header became, or what
    // a damaged record names) would block or never end.
    let hash = |p: &str| {
        is_file(p)
            .then(|| fsutil::hash_file(Path::new(p)).ok())
            .flatten()
            .map(|d| short(&d))
    };
    let mut now = Content {
        inputs_known: before.inputs_known,
        ..Content::default()
    };
    for (p, _) in &before.files {
        match hash(p) {
            Some(d) => now.files.push((p.clone(), d)),
            None => now.missing.push(p.clone()),
        }
    }
    for m in &before.missing {
        match std::fs::metadata(m) {
            Err(_) => now.missing.push(m.clone()),
            Ok(meta) if meta.is_file() => match hash(m) {
                Some(d) => now.files.push((m.clone(), d)),
                None => now.missing.push(m.clone()),
            },
            Ok(_) => {
                let names: BTreeSet<&str> = before
                    .files
                    .iter()
                    .map(|(p, _)| p.rsplit('/').next().unwrap_or(p))
                    .collect();
                let found: Vec<(String, Digest)> = names
                    .iter()
                    .map(|n| format!("{m}/{n}"))
                    .filter_map(|p| hash(&p).map(|d| (p, d)))
                    .collect();
                if found.is_empty() {
                    now.not_file.push(m.clone());
                }
                now.files.extend(found);
            }
        }
    }
    for p in &before.not_file {
        match hash(p) {
            Some(d) if is_file(p) => now.files.push((p.clone(), d)),
            _ => now.not_file.push(p.clone()),
        }
    }
    now.present = before
        .present
        .iter()
        .filter(|p| is_file(p))
        .cloned()
        .collect();
    now
}

/// The path records of `source`, as compiled from `cwd`, are filed by: its real path
/// (so `../src/a.c` from a build directory and `src/a.c` from the top are one
/// source), else the absolute, lexically clean path.
pub fn absolute_source(cwd: &Path, source: &Path) -> PathBuf {
    let abs = cwd.join(source);
    std::fs::canonicalize(&abs).unwrap_or_else(|_| fsutil::clean_path(&abs))
}

/// Where the records of `source` (absolute) live.
pub fn record_path(cache_dir: &Path, source: &Path) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    let h = fsutil::hex(&blake3::hash(source.as_os_str().as_bytes()).as_bytes()[..16]);
    cache_dir.join("why").join(&h[..2]).join(h)
}

/// The records of `source` (absolute), newest first; none when there are none or
/// they cannot be read.
pub fn load(cache_dir: &Path, source: &Path) -> Vec<Record> {
    load_checked(cache_dir, source).unwrap_or_default()
}

/// [`load`], saying when the records' file exists but cannot be read or decoded
/// (the error names the file).
pub fn load_checked(cache_dir: &Path, source: &Path) -> Result<Vec<Record>, String> {
    let path = record_path(cache_dir, source);
    match std::fs::read(&path) {
        Ok(d) => decode(&d).ok_or_else(|| {
            format!(
                "the records file {} is damaged (the next miss of this source rewrites it)",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

fn decode(data: &[u8]) -> Option<Vec<Record>> {
    let body = data.strip_prefix(MAGIC)?;
    let raw = zstd::bulk::decompress(body, 64 << 20).ok()?;
    postcard::from_bytes(&raw).ok()
}

fn encode(records: &[Record]) -> Option<Vec<u8>> {
    let raw = postcard::to_allocvec(records).ok()?;
    let mut out = MAGIC.to_vec();
    out.extend(zstd::bulk::compress(&raw, 3).ok()?);
    Some(out)
}

/// Adds `record` in front of its source's records (the oldest beyond
/// [`RECORDS_PER_SOURCE`] go), written atomically; the shard keeps at most
/// [`SOURCES_PER_SHARD`] sources, the least recently recorded go. Errors are logged.
pub fn save(cache_dir: &Path, record: Record) {
    if let Err(e) = try_save(cache_dir, record) {
        tracing::warn!(error = %e, "cannot write the why record");
    }
}

fn try_save(cache_dir: &Path, record: Record) -> std::io::Result<()> {
    let path = record_path(cache_dir, Path::new(&record.source));
    let mut records = load(cache_dir, Path::new(&record.source));
    records.insert(0, record);
    records.truncate(RECORDS_PER_SOURCE);
    let data = encode(&records).ok_or_else(|| std::io::Error::other("cannot encode"))?;
    let shard = path.parent().expect("record path has a shard");
    fsutil::create_cache_dir_all(shard)?;
    fsutil::write_cache_atomic(&path, &data)?;
    trim_shard(shard);
    Ok(())
}

/// Removes the least recently written record files beyond [`SOURCES_PER_SHARD`]
/// (temporary files of writers that died go too once old).
fn trim_shard(shard: &Path) {
    let Ok(rd) = std::fs::read_dir(shard) else {
        return;
    };
    let mut files: Vec<(std::time::SystemTime, PathBuf)> = rd
        .filter_map(|e| {
            let e = e.ok()?;
            let m = e.metadata().ok()?;
            Some((m.modified().ok()?, e.path()))
        })
        .collect();
    if files.len() <= SOURCES_PER_SHARD {
        return;
    }
    files.sort();
    let excess = files.len() - SOURCES_PER_SHARD;
    for (_, p) in files.into_iter().take(excess) {
        let _ = std::fs::remove_file(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(n: u64) -> Record {
        let mut r = Record::new(
            Path::new("/w/a.c"),
            Path::new("/w"),
            vec!["gcc".into(), "-c".into(), "a.c".into()],
            "direct",
            Outcome::Stored,
        );
        r.time_s = n;
        r
    }

    #[test]
    fn records_roundtrip_newest_first_and_capped() {
        let d = tempfile::tempdir().unwrap();
        for n in 0..6 {
            save(d.path(), rec(n));
        }
        let got = load(d.path(), Path::new("/w/a.c"));
        assert_eq!(
            got.iter().map(|r| r.time_s).collect::<Vec<_>>(),
            vec![5, 4, 3, 2]
        );
        assert!(load(d.path(), Path::new("/w/b.c")).is_empty());
        assert!(decode(b"garbage").is_none());
    }

    #[test]
    fn fields_are_shown_for_people() {
        let mut f = RecordedFields::default();
        f.0.push(("argc", 3u64.to_le_bytes().to_vec()));
        f.0.push(("arg", b"-I\x000/inc".to_vec()));
        f.0.push(("compiler", vec![0xab; 2]));
        let mut r = rec(0);
        r.set_fields(f);
        assert_eq!(r.fields[0].1, "3");
        assert_eq!(r.fields[1].1, "-I<base_dir>/inc");
        assert_eq!(r.fields[2].1, "abab");
    }
}
