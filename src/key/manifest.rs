//! Direct-mode manifests: every way a source has compiled (the files it read, the
//! lookups that found nothing, the result they lead to), how an entry is checked
//! against the file system, recorded after a compile, and merged across machines.

use rustc_hash::FxHashMap as HashMap;
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::put_field;
use super::relocate::BaseDirs;
use crate::digest::StatStamp;
use crate::fsutil;
use crate::store::CacheKey;

/// Inputs modified this close to (or after) a compile's start are "too new": their
/// content may not be what the compiler read, so nothing is recorded for them.
/// The margin is one tick of the coarse kernel clock that stamps files (10 ms at
/// HZ=100, the slowest common setting).
pub const TOO_NEW_SLACK_NS: i128 = 10_000_000;

/// One file the compile read, by content.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct FileDigest {
    #[serde(with = "serde_bytes")]
    pub path: Vec<u8>,
    pub digest: [u8; 32],
    /// When present and still matching, the content is not read again.
    pub stamp: Option<StatStamp>,
}

/// A path where nothing exists.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct MissingPath {
    #[serde(with = "serde_bytes")]
    pub path: Vec<u8>,
    /// The parent directory's stamp: while it is unchanged, no entry was added there.
    pub parent_stamp: Option<StatStamp>,
}

/// One way a source has compiled: the files it read with their digests, the include
/// lookups that found nothing, and the result they lead to.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ManifestEntry {
    pub files: Vec<FileDigest>,
    /// Paths where nothing exists (the topmost missing component of a lookup).
    pub missing: Vec<MissingPath>,
    /// Paths that exist but are not regular files (a directory where a header could be).
    pub not_file: Vec<serde_bytes::ByteBuf>,
    /// Regular files a lookup finds that the compile did not read: they must still be
    /// files (a `__has_include` answer), whatever they hold.
    pub present: Vec<serde_bytes::ByteBuf>,
    pub result: CacheKey,
    /// Set when the result depends on where the checkout is (`base_dir`): the base
    /// directories it was compiled under ([`BaseDirs::pin`]); it matches only there.
    pub pinned: Option<serde_bytes::ByteBuf>,
}

/// Why a source cannot be keyed directly; such compiles go to preprocessor mode.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PreprocessorOnly {
    /// The reason, for people (the family's reason and detail).
    pub reason: String,
    /// The source or a header expands `__TIME__`: the preprocessed text would differ
    /// on every compile, so such a source is not cached at all.
    pub uses_time: bool,
}

/// All known ways a (compiler, arguments, source) has compiled.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Manifest {
    /// Set when this source cannot be keyed directly (e.g. it uses `__DATE__`).
    pub preprocessor_only: Option<PreprocessorOnly>,
    pub entries: Vec<ManifestEntry>,
}

/// Entries kept per manifest, newest first.
pub const MAX_MANIFEST_ENTRIES: usize = 32;

impl ManifestEntry {
    /// The result key this entry's own inputs lead to (see [`result_key`]).
    pub fn expected_result(&self, manifest_key: &CacheKey) -> CacheKey {
        result_key(
            manifest_key,
            &self.files,
            &self.missing,
            &self.not_file,
            &self.present,
            self.pinned.as_deref().map(|p| &p[..]),
        )
    }

    /// The entry without stat stamps: what another machine can check (by content),
    /// and nothing about this machine's inodes.
    pub fn portable(mut self) -> ManifestEntry {
        for f in &mut self.files {
            f.stamp = None;
        }
        for m in &mut self.missing {
            m.parent_stamp = None;
        }
        self
    }
}

impl Manifest {
    pub fn decode(data: &[u8]) -> Option<Manifest> {
        postcard::from_bytes(data).ok()
    }
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("manifest serializes")
    }
    /// Adds an entry in front, dropping an identical older one and the oldest beyond
    /// the limit.
    pub fn add(&mut self, e: ManifestEntry) {
        self.entries.retain(|x| x != &e);
        self.entries.insert(0, e);
        self.entries.truncate(MAX_MANIFEST_ENTRIES);
    }

    /// Takes another machine's manifest in: its entries go in front, in their order,
    /// without that machine's stat stamps, identical older ones dropped, the oldest
    /// beyond the limit dropped (whatever was stored, the result is within it). Only
    /// entries are taken: a preprocessor-only marker is the decision of the machine
    /// that recorded it (shims never publish one), so this manifest's own marker stays
    /// as it is.
    pub fn merge(&mut self, incoming: Manifest) {
        for e in incoming.entries.into_iter().rev() {
            self.add(e.portable());
        }
        self.entries.truncate(MAX_MANIFEST_ENTRIES);
    }
}

/// Merges an encoded manifest another machine sent into the encoded one stored (see
/// [`Manifest::merge`]); `None` when `incoming` is not a manifest. A stored manifest
/// that does not decode counts as none. No I/O: a store that can only read and write
/// whole values (Redis, S3) merges with it too, under its own lock or compare-and-set.
pub fn merge(stored: Option<&[u8]>, incoming: &[u8]) -> Option<Vec<u8>> {
    let incoming = Manifest::decode(incoming)?;
    let mut merged = stored.and_then(Manifest::decode).unwrap_or_default();
    merged.merge(incoming);
    Some(merged.encode())
}

/// The result key of a manifest entry: the manifest key plus everything the entry
/// checks (paths as stored: relative to their base directory where one applies), and
/// the base directories of a pinned entry.
pub fn result_key(
    manifest_key: &CacheKey,
    files: &[FileDigest],
    missing: &[MissingPath],
    not_file: &[serde_bytes::ByteBuf],
    present: &[serde_bytes::ByteBuf],
    pinned: Option<&[u8]>,
) -> CacheKey {
    let mut h = blake3::Hasher::new();
    put_field(&mut h, "manifest", &manifest_key.0);
    for f in files {
        put_field(&mut h, "file", &f.path);
        put_field(&mut h, "digest", &f.digest);
    }
    for m in missing {
        put_field(&mut h, "missing", &m.path);
    }
    for m in not_file {
        put_field(&mut h, "not-file", m);
    }
    for p in present {
        put_field(&mut h, "present", p);
    }
    if let Some(p) = pinned {
        put_field(&mut h, "pinned", p);
    }
    CacheKey(*h.finalize().as_bytes())
}

fn is_missing(p: &Path) -> bool {
    match fs::metadata(p) {
        Ok(_) => false,
        Err(e) => e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR),
    }
}

/// Per-check memo of stamps and digests, shared by the entries of one manifest.
#[derive(Default)]
pub struct CheckMemo {
    stamps: HashMap<Vec<u8>, Option<StatStamp>>,
    digests: HashMap<Vec<u8>, Option<[u8; 32]>>,
    /// Directory listings, for entries without stamps (another machine's), whose
    /// thousands of missing paths would otherwise cost a `stat` each.
    listings: HashMap<Vec<u8>, Listing>,
}

/// What a directory holds, as far as missing paths go.
enum Listing {
    /// The directory is not there (nothing under it exists).
    Absent,
    /// Its entries' names.
    Names(rustc_hash::FxHashSet<Vec<u8>>),
    /// It cannot be listed (no read permission): ask per path.
    Unlisted,
}

impl CheckMemo {
    /// Whether nothing exists at `p` (a path with a parent directory), from its
    /// parent's listing when that can be read. A name listed is there, whatever it
    /// is (a dangling link counts as there: at worst a miss).
    fn missing(&mut self, p: &[u8]) -> bool {
        let parent = parent_bytes(p);
        let name = &p[parent.len()..];
        let name = name.strip_prefix(b"/").unwrap_or(name);
        if parent.is_empty() || name.is_empty() || name == b"." || name == b".." {
            return is_missing(Path::new(OsStr::from_bytes(p)));
        }
        let listing = self.listings.entry(parent.to_vec()).or_insert_with(|| {
            match fs::read_dir(Path::new(OsStr::from_bytes(parent))) {
                Ok(rd) => {
                    let mut names = rustc_hash::FxHashSet::default();
                    for e in rd {
                        match e {
                            Ok(e) => {
                                names.insert(e.file_name().as_bytes().to_vec());
                            }
                            Err(_) => return Listing::Unlisted,
                        }
                    }
                    Listing::Names(names)
                }
                Err(e)
                    if e.kind() == io::ErrorKind::NotFound
                        || e.raw_os_error() == Some(libc::ENOTDIR) =>
                {
                    Listing::Absent
                }
                Err(_) => Listing::Unlisted,
            }
        });
        match listing {
            Listing::Absent => true,
            Listing::Names(names) => !names.contains(name),
            Listing::Unlisted => is_missing(Path::new(OsStr::from_bytes(p))),
        }
    }

    fn stamp(&mut self, p: &[u8]) -> Option<StatStamp> {
        if let Some(s) = self.stamps.get(p) {
            return *s;
        }
        let s = StatStamp::current(Path::new(OsStr::from_bytes(p)));
        self.stamps.insert(p.to_vec(), s);
        s
    }
}

/// The parent directory of a path, as bytes (`a/b` → `a`, `/a` → `/`, `a` → ``).
fn parent_bytes(p: &[u8]) -> &[u8] {
    match memchr::memrchr(b'/', p) {
        Some(0) => &p[..1],
        Some(i) => &p[..i],
        None => &p[..0],
    }
}

/// Does the file system still look the way this entry recorded? Paths are put back
/// under this checkout's base directories; a pinned entry matches only under the
/// base directories it was compiled under.
pub fn entry_matches(e: &ManifestEntry, memo: &mut CheckMemo, base: &BaseDirs) -> bool {
    if let Some(p) = &e.pinned {
        if p.as_slice() != base.pin().as_slice() {
            return false;
        }
    }
    for m in &e.missing {
        let Some(path) = base.absolute(&m.path) else {
            return false;
        };
        if let Some(ps) = &m.parent_stamp {
            if memo.stamp(parent_bytes(&path)).as_ref() == Some(ps) {
                continue;
            }
        }
        if !memo.missing(&path) {
            tracing::debug!(path = %String::from_utf8_lossy(&path), "manifest entry: a missing path exists");
            return false;
        }
    }
    for m in &e.not_file {
        let Some(path) = base.absolute(m) else {
            return false;
        };
        let p = Path::new(OsStr::from_bytes(&path));
        if fs::metadata(p).map(|m| m.is_file()).unwrap_or(false) {
            return false;
        }
    }
    for p in &e.present {
        let Some(path) = base.absolute(p) else {
            return false;
        };
        let p = Path::new(OsStr::from_bytes(&path));
        if !fs::metadata(p).map(|m| m.is_file()).unwrap_or(false) {
            return false;
        }
    }
    for f in &e.files {
        let Some(path) = base.absolute(&f.path) else {
            return false;
        };
        if let Some(st) = &f.stamp {
            if memo.stamp(&path).as_ref() == Some(st) {
                continue;
            }
        }
        let d = match memo.digests.get(path.as_ref()) {
            Some(d) => *d,
            None => {
                let d = fsutil::hash_file(Path::new(OsStr::from_bytes(&path))).ok();
                memo.digests.insert(path.to_vec(), d);
                d
            }
        };
        if d.as_ref() != Some(&f.digest) {
            tracing::debug!(path = %String::from_utf8_lossy(&path), "manifest entry: content differs");
            return false;
        }
    }
    true
}

/// Why an entry could not be recorded.
#[derive(Debug, PartialEq, Eq)]
pub enum RecordError {
    /// An input changed during or right before the compile.
    TooNew(PathBuf),
    /// An input could not be read.
    Unreadable(PathBuf),
}

/// Digests the files a compile read and records its lookups that found nothing
/// (`missing`: topmost missing components; `not_file`: non-files where a header could
/// be). Refuses files modified at or after `started_ns` (minus slack). Paths under a
/// base directory are stored relative to it; `pinned`: the result depends on where
/// the checkout is, so the entry names this checkout's base directories.
#[allow(clippy::too_many_arguments)]
pub fn record_entry(
    manifest_key: &CacheKey,
    source: &Path,
    files: &[PathBuf],
    missing_paths: &[PathBuf],
    not_file_paths: &[PathBuf],
    present_paths: &[PathBuf],
    started_ns: i128,
    base: &BaseDirs,
    pinned: bool,
) -> Result<ManifestEntry, RecordError> {
    let limit = started_ns - TOO_NEW_SLACK_NS;
    let now = fsutil::now_ns();
    let check_new = |p: &Path, meta: &fs::Metadata| {
        let (m, c) = fsutil::times_ns(meta);
        if m >= limit || c >= limit {
            Err(RecordError::TooNew(p.to_path_buf()))
        } else {
            Ok(())
        }
    };
    let src_meta = fs::metadata(source).map_err(|_| RecordError::Unreadable(source.into()))?;
    check_new(source, &src_meta)?;
    let mut digests = Vec::with_capacity(files.len());
    for p in files {
        let (data, meta) =
            fsutil::read_file_meta(p).map_err(|_| RecordError::Unreadable(p.clone()))?;
        check_new(p, &meta)?;
        digests.push(FileDigest {
            path: base.relative(p.as_os_str().as_bytes()).into_owned(),
            digest: *blake3::hash(&data).as_bytes(),
            stamp: StatStamp::trusted(&meta, now),
        });
    }
    // Parent directories' stamps: one stat per directory, not per path.
    let mut parents: HashMap<PathBuf, Option<StatStamp>> = HashMap::default();
    let mut missing: Vec<MissingPath> = missing_paths
        .iter()
        .map(|p| {
            let parent_stamp = match p.parent() {
                // A relative name in the cwd: the cwd may differ on a hit, so no stamp.
                Some(par) if !par.as_os_str().is_empty() => {
                    *parents.entry(par.to_path_buf()).or_insert_with(|| {
                        fs::metadata(par)
                            .ok()
                            .and_then(|m| StatStamp::trusted(&m, now))
                    })
                }
                _ => None,
            };
            MissingPath {
                path: base.relative(p.as_os_str().as_bytes()).into_owned(),
                parent_stamp,
            }
        })
        .collect();
    let mut not_file: Vec<serde_bytes::ByteBuf> = not_file_paths
        .iter()
        .map(|p| serde_bytes::ByteBuf::from(base.relative(p.as_os_str().as_bytes()).into_owned()))
        .collect();
    missing.sort();
    missing.dedup();
    not_file.sort();
    not_file.dedup();
    let mut present: Vec<serde_bytes::ByteBuf> = present_paths
        .iter()
        .map(|p| serde_bytes::ByteBuf::from(base.relative(p.as_os_str().as_bytes()).into_owned()))
        .collect();
    present.sort();
    present.dedup();
    let mut entry = ManifestEntry {
        files: digests,
        missing,
        not_file,
        present,
        result: CacheKey([0; 32]),
        pinned: pinned.then(|| serde_bytes::ByteBuf::from(base.pin())),
    };
    entry.result = entry.expected_result(manifest_key);
    Ok(entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_roundtrip_and_limit() {
        let mut m = Manifest::default();
        for i in 0..40u8 {
            m.add(ManifestEntry {
                files: vec![FileDigest {
                    path: b"a.h".to_vec(),
                    digest: [i; 32],
                    stamp: None,
                }],
                missing: vec![],
                not_file: vec![],
                present: vec![],
                result: CacheKey([i; 32]),
                pinned: None,
            });
        }
        assert_eq!(m.entries.len(), MAX_MANIFEST_ENTRIES);
        assert_eq!(m.entries[0].result, CacheKey([39; 32]));
        assert_eq!(Manifest::decode(&m.encode()).unwrap(), m);
        assert!(Manifest::decode(b"\xff\xff\xff").is_none());
    }

    #[test]
    fn entry_checks_content_missing_and_not_file() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("a.c");
        let hdr = d.path().join("a.h");
        fs::write(&src, "x").unwrap();
        fs::write(&hdr, "one").unwrap();
        let probe = d.path().join("sub/deeper/a.h");
        let dirprobe = d.path().join("adir");
        fs::create_dir(&dirprobe).unwrap();
        let key = CacheKey([1; 32]);
        // The family reports the topmost missing component and non-files.
        let e = record_entry(
            &key,
            &src,
            std::slice::from_ref(&hdr),
            &[d.path().join("sub")],
            std::slice::from_ref(&dirprobe),
            &[],
            fsutil::now_ns() + 1_000_000_000,
            &BaseDirs::default(),
            false,
        )
        .unwrap();
        // The topmost missing component is recorded.
        assert_eq!(e.missing.len(), 1);
        assert_eq!(
            e.missing[0].path,
            d.path().join("sub").as_os_str().as_bytes().to_vec()
        );
        assert_eq!(e.not_file.len(), 1);
        assert!(entry_matches(
            &e,
            &mut CheckMemo::default(),
            &BaseDirs::default()
        ));
        // Same size, different content: no match.
        fs::write(&hdr, "two").unwrap();
        assert!(!entry_matches(
            &e,
            &mut CheckMemo::default(),
            &BaseDirs::default()
        ));
        fs::write(&hdr, "one").unwrap();
        assert!(entry_matches(
            &e,
            &mut CheckMemo::default(),
            &BaseDirs::default()
        ));
        // A shadowing header appears.
        fs::create_dir_all(probe.parent().unwrap()).unwrap();
        assert!(!entry_matches(
            &e,
            &mut CheckMemo::default(),
            &BaseDirs::default()
        ));
        fs::remove_dir_all(d.path().join("sub")).unwrap();
        fs::write(dirprobe.join("x"), "").unwrap();
        assert!(entry_matches(
            &e,
            &mut CheckMemo::default(),
            &BaseDirs::default()
        ));
        fs::remove_dir_all(&dirprobe).unwrap();
        fs::write(&dirprobe, "now a file").unwrap();
        assert!(!entry_matches(
            &e,
            &mut CheckMemo::default(),
            &BaseDirs::default()
        ));
    }

    #[test]
    fn too_new_inputs_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("a.c");
        fs::write(&src, "x").unwrap();
        let started = fsutil::now_ns() - 1_000_000; // the file was written "during" the compile
        assert!(matches!(
            record_entry(
                &CacheKey([0; 32]),
                &src,
                &[],
                &[],
                &[],
                &[],
                started,
                &BaseDirs::default(),
                false
            ),
            Err(RecordError::TooNew(_))
        ));
    }

    fn entry(n: u8, stamped: bool) -> ManifestEntry {
        let stamp = stamped.then_some(StatStamp {
            dev: 1,
            ino: n as u64,
            size: 3,
            mtime_ns: 5,
            ctime_ns: 7,
        });
        ManifestEntry {
            files: vec![FileDigest {
                path: format!("h{n}.h").into_bytes(),
                digest: [n; 32],
                stamp,
            }],
            missing: vec![MissingPath {
                path: format!("m{n}").into_bytes(),
                parent_stamp: stamp,
            }],
            not_file: vec![],
            present: vec![],
            result: CacheKey([n; 32]),
            pinned: None,
        }
    }

    fn manifest(
        marker: Option<&str>,
        entries: impl IntoIterator<Item = ManifestEntry>,
    ) -> Manifest {
        Manifest {
            preprocessor_only: marker.map(|r| PreprocessorOnly {
                reason: r.into(),
                uses_time: false,
            }),
            entries: entries.into_iter().collect(),
        }
    }

    fn results(m: &[u8]) -> Vec<u8> {
        Manifest::decode(m)
            .unwrap()
            .entries
            .iter()
            .map(|e| e.result.0[0])
            .collect()
    }

    #[test]
    fn merge_puts_incoming_entries_first_without_stamps() {
        let incoming = manifest(None, [entry(1, true), entry(2, true)]).encode();
        let merged = merge(None, &incoming).unwrap();
        let m = Manifest::decode(&merged).unwrap();
        assert_eq!(
            m.entries,
            vec![entry(1, true).portable(), entry(2, true).portable()]
        );
        assert!(m.entries[0].files[0].stamp.is_none());
        assert!(m.entries[0].missing[0].parent_stamp.is_none());

        let stored = manifest(None, [entry(3, false), entry(2, false), entry(4, false)]).encode();
        let merged = merge(Some(&stored), &incoming).unwrap();
        // The incoming entries in their order, then the stored ones, a duplicate once.
        assert_eq!(results(&merged), vec![1, 2, 3, 4]);
    }

    #[test]
    fn merge_caps_keeping_the_newest() {
        let stored = manifest(None, (0..30).map(|n| entry(n, false))).encode();
        let incoming = manifest(None, (100..105).map(|n| entry(n, false))).encode();
        let merged = results(&merge(Some(&stored), &incoming).unwrap());
        assert_eq!(merged.len(), MAX_MANIFEST_ENTRIES);
        assert_eq!(&merged[..5], &[100, 101, 102, 103, 104]);
        assert_eq!(merged[5..], (0..27).collect::<Vec<u8>>()[..]);
    }

    #[test]
    fn merge_rejects_non_manifests_and_replaces_damaged_stored_ones() {
        let incoming = manifest(None, [entry(1, false)]).encode();
        assert_eq!(merge(None, b"\xff\xff\xff"), None);
        assert_eq!(merge(Some(&incoming), b"\xff\xff\xff"), None);
        let merged = merge(Some(b"\xff\xff\xff"), &incoming).unwrap();
        assert_eq!(results(&merged), vec![1]);
    }

    #[test]
    fn merge_keeps_the_stored_marker_and_never_takes_one() {
        let incoming = manifest(Some("time_macro: __DATE__ in a.c"), [entry(1, false)]).encode();
        let merged = Manifest::decode(&merge(None, &incoming).unwrap()).unwrap();
        assert_eq!(merged.preprocessor_only, None);
        let stored = manifest(Some("search_list"), []).encode();
        let merged = Manifest::decode(&merge(Some(&stored), &incoming).unwrap()).unwrap();
        assert_eq!(merged.preprocessor_only.unwrap().reason, "search_list");
        assert_eq!(merged.entries.len(), 1);
    }

    #[test]
    fn preprocessor_only_marker_roundtrips() {
        let m = Manifest {
            preprocessor_only: Some(PreprocessorOnly {
                reason: "time_macro: __TIME__ in a.c".into(),
                uses_time: true,
            }),
            entries: vec![],
        };
        assert_eq!(Manifest::decode(&m.encode()).unwrap(), m);
    }
}
