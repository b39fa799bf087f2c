//! What a javac search path holds, by content: jars by digest (memoized by stat, with
//! their manifest `Class-Path` followed), directories by the digests of every file
//! javac could look up in them.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::StatStamp;
use crate::fsutil;
use crate::lang::{DeclaredInputs, KeyInput, Passthrough};

/// The service file that makes javac run annotation processors found on a path.
pub const PROCESSOR_SERVICE: &str = "META-INF/services/javax.annotation.processing.Processor";
/// The service file of javac plugins. javac instantiates every plugin it finds on the
/// processor path (the class path when none is given), with or without `-Xplugin:` or
/// `-proc:none`, to ask whether it starts itself: code from the path runs in javac.
pub const PLUGIN_SERVICE: &str = "META-INF/services/com.sun.source.util.Plugin";

fn plugin_found(where_: &Path) -> Passthrough {
    Passthrough::new(
        "compiler_plugin",
        format!("{} declares a javac plugin", where_.display()),
    )
}

/// `Err(compiler_plugin)` when `entry` (a jar or class directory) declares a javac
/// plugin. For paths javac searches for plugins but farm does not key (the processor
/// path under `-proc:none`).
pub fn refuse_plugins(entry: &Path, memo: &Path) -> Result<(), Passthrough> {
    match fs::metadata(entry) {
        Ok(m) if m.is_dir() => {
            if entry.join(PLUGIN_SERVICE).exists() {
                return Err(plugin_found(entry));
            }
            Ok(())
        }
        Ok(m) if m.is_file() => {
            if jar_facts(entry, memo)?.plugins {
                return Err(plugin_found(entry));
            }
            Ok(())
        }
        Ok(_) => Err(Passthrough::new(
            "classpath_special_file",
            entry.display().to_string(),
        )),
        Err(_) => Ok(()),
    }
}

/// What farm needs to know about one jar.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct JarFacts {
    /// What javac can read from it (entry names and contents).
    pub digest: [u8; 32],
    /// The file's bytes, for shipping it as a blob.
    pub raw: [u8; 32],
    /// It declares annotation processors.
    pub processors: bool,
    /// It declares javac plugins.
    pub plugins: bool,
    /// Its manifest's `Class-Path` entries, as written.
    pub class_path: Vec<String>,
}

fn memo_name(path: &Path, stamp: &StatStamp) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"farm-jar-memo-3\0");
    h.update(path.as_os_str().as_bytes());
    h.update(&postcard::to_allocvec(stamp).unwrap_or_default());
    format!("jar-{}", fsutil::hex(&h.finalize().as_bytes()[..16]))
}

/// Reads a jar's facts (or the memo of them, while its stat stamp is unchanged).
pub fn jar_facts(path: &Path, memo: &Path) -> Result<JarFacts, Passthrough> {
    let err = |e: &dyn std::fmt::Display| {
        Passthrough::new("classpath_unreadable", format!("{}: {e}", path.display()))
    };
    let (data, meta) = fsutil::read_file_meta(path).map_err(|e| err(&e))?;
    let stamp = StatStamp::trusted(&meta, fsutil::now_ns());
    if let Some(s) = &stamp {
        if let Ok(m) = fs::read(memo.join(memo_name(path, s))) {
            if let Ok(f) = postcard::from_bytes::<JarFacts>(&m) {
                return Ok(f);
            }
        }
    }
    let facts = read_jar(&data).map_err(|e| err(&e))?;
    if let Some(s) = &stamp {
        let _ = fsutil::create_cache_dir_all(memo);
        if let Ok(bytes) = postcard::to_allocvec(&facts) {
            let _ = fsutil::write_cache_atomic(&memo.join(memo_name(path, s)), &bytes);
        }
    }
    Ok(facts)
}

/// A jar's digest covers what javac can read from it: each entry's name and
/// uncompressed content, by name. Timestamps, compression and entry order do not
/// enter it, so a jar a build rewrites with the same classes keeps its digest.
fn read_jar(data: &[u8]) -> Result<JarFacts, String> {
    let mut zip =
        zip::ZipArchive::new(std::io::Cursor::new(data)).map_err(|e| format!("not a jar: {e}"))?;
    let mut entries = Vec::with_capacity(zip.len());
    let mut buf = Vec::new();
    for i in 0..zip.len() {
        let mut f = zip.by_index(i).map_err(|e| format!("entry {i}: {e}"))?;
        buf.clear();
        f.read_to_end(&mut buf)
            .map_err(|e| format!("entry {}: {e}", f.name()))?;
        entries.push((f.name().to_string(), *blake3::hash(&buf).as_bytes()));
    }
    // Stable: entries with one name (javac sees the first) keep their order.
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let mut h = blake3::Hasher::new();
    h.update(b"farm-jar-content-1\0");
    for (name, d) in &entries {
        h.update(&(name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update(d);
    }
    let digest = *h.finalize().as_bytes();
    let raw = *blake3::hash(data).as_bytes();
    let processors = entries.iter().any(|(n, _)| n == PROCESSOR_SERVICE);
    let plugins = entries.iter().any(|(n, _)| n == PLUGIN_SERVICE);
    let mut class_path = Vec::new();
    if let Ok(mut mf) = zip.by_name("META-INF/MANIFEST.MF") {
        let mut text = String::new();
        mf.read_to_string(&mut text)
            .map_err(|e| format!("manifest: {e}"))?;
        class_path = manifest_class_path(&text);
    }
    Ok(JarFacts {
        digest,
        raw,
        processors,
        plugins,
        class_path,
    })
}

/// The `Class-Path` attribute of a manifest (continuation lines joined), split.
pub fn manifest_class_path(text: &str) -> Vec<String> {
    let mut value: Option<String> = None;
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if let Some(v) = value.as_mut() {
            if let Some(cont) = line.strip_prefix(' ') {
                v.push_str(cont);
                continue;
            }
            break;
        }
        if line.len() >= 11 && line[..11].eq_ignore_ascii_case("class-path:") {
            value = Some(line[11..].trim_start().to_string());
        }
    }
    value
        .map(|v| v.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

/// Which files of a directory javac can read as a search-path entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirRole {
    /// Class files, and sources too when there is no `-sourcepath`.
    Classes { sources: bool },
    /// Sources only (`-sourcepath`).
    Sources,
    /// Everything (a module path directory holds jars or an exploded module).
    Everything,
}

/// A package directory's name is a Java identifier: javac can look nothing up in any
/// other directory, so those (`.git`, `build-cache`, `META-INF`) are not hashed.
fn is_identifier(name: &[u8]) -> bool {
    let Ok(s) = std::str::from_utf8(name) else {
        return false;
    };
    let mut cs = s.chars();
    match cs.next() {
        Some(c) if c.is_alphabetic() || c == '_' || c == '$' => {}
        _ => return false,
    }
    cs.all(|c| c.is_alphanumeric() || c == '_' || c == '$')
}

/// The files of a directory javac could read: relative path → content digest.
pub type DirFiles = BTreeMap<Vec<u8>, [u8; 32]>;

/// One digest over every file javac could read in `dir` (relative path and content,
/// in sorted order), whether it declares annotation processors, and those files.
pub fn dir_digest(dir: &Path, role: DirRole) -> Result<([u8; 32], bool, DirFiles), Passthrough> {
    let mut files = BTreeMap::new();
    walk(dir, Path::new(""), role, &mut files)?;
    let mut h = blake3::Hasher::new();
    h.update(b"farm-dir-1\0");
    for (rel, digest) in &files {
        h.update(&(rel.len() as u64).to_le_bytes());
        h.update(rel);
        h.update(digest);
    }
    let processors = dir.join(PROCESSOR_SERVICE).exists();
    Ok((*h.finalize().as_bytes(), processors, files))
}

fn walk(root: &Path, rel: &Path, role: DirRole, out: &mut DirFiles) -> Result<(), Passthrough> {
    let here = root.join(rel);
    let err = |p: &Path, e: &dyn std::fmt::Display| {
        Passthrough::new("classpath_unreadable", format!("{}: {e}", p.display()))
    };
    let rd = fs::read_dir(&here).map_err(|e| err(&here, &e))?;
    for e in rd {
        let e = e.map_err(|e| err(&here, &e))?;
        let name = e.file_name();
        let path = e.path();
        // Links are followed, as javac follows them.
        let Ok(meta) = fs::metadata(&path) else {
            continue; // a dangling link: javac finds nothing there either
        };
        let sub = rel.join(&name);
        if meta.is_dir() {
            if role == DirRole::Everything || is_identifier(name.as_bytes()) {
                walk(root, &sub, role, out)?;
            }
            continue;
        }
        let n = name.as_bytes();
        let wanted = match role {
            DirRole::Everything => true,
            DirRole::Classes { sources } => {
                n.ends_with(b".class") || (sources && n.ends_with(b".java"))
            }
            DirRole::Sources => n.ends_with(b".java"),
        };
        if wanted {
            let d = fsutil::hash_file(&path).map_err(|e| err(&path, &e))?;
            out.insert(sub.as_os_str().as_bytes().to_vec(), d);
        }
    }
    Ok(())
}

/// Adds one search-path entry (and, for a jar, what its `Class-Path` names) to the
/// key inputs. Returns whether it declares annotation processors.
pub fn add_entry(
    label: &str,
    entry: &Path,
    role: DirRole,
    follow_manifest: bool,
    memo: &Path,
    seen: &mut Vec<PathBuf>,
    out: &mut DeclaredInputs,
) -> Result<bool, Passthrough> {
    if seen.iter().any(|s| s == entry) {
        return Ok(false);
    }
    seen.push(entry.to_path_buf());
    let shown = format!("{label} {}", entry.display());
    let meta = match fs::metadata(entry) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // javac skips a missing entry; one appearing later changes the key.
            out.key.push(KeyInput {
                label: format!("{shown} (missing)"),
                digest: [0; 32],
            });
            return Ok(false);
        }
        Err(e) => {
            return Err(Passthrough::new(
                "classpath_unreadable",
                format!("{}: {e}", entry.display()),
            ))
        }
    };
    if meta.is_dir() {
        if entry.join(PLUGIN_SERVICE).exists() {
            return Err(plugin_found(entry));
        }
        let (digest, processors, files) = dir_digest(entry, role)?;
        out.key.push(KeyInput {
            label: format!("{shown}/"),
            digest,
        });
        for (rel, d) in files {
            let rel = PathBuf::from(std::ffi::OsString::from_vec(rel));
            out.files.push((entry.join(rel), d));
        }
        return Ok(processors);
    }
    if !meta.is_file() {
        return Err(Passthrough::new(
            "classpath_special_file",
            entry.display().to_string(),
        ));
    }
    let facts = jar_facts(entry, memo)?;
    if facts.plugins {
        return Err(plugin_found(entry));
    }
    out.key.push(KeyInput {
        label: shown,
        digest: facts.digest,
    });
    out.files.push((entry.to_path_buf(), facts.raw));
    let mut processors = facts.processors;
    if follow_manifest {
        let base = entry.parent().unwrap_or(Path::new(""));
        for cp in &facts.class_path {
            if cp.contains('%') || cp.contains(':') {
                // URL escapes or schemes: farm does not resolve these the way javac does.
                return Err(Passthrough::new(
                    "manifest_class_path",
                    format!("{}: {cp}", entry.display()),
                ));
            }
            let target = base.join(cp);
            processors |= add_entry(label, &target, role, true, memo, seen, out)?;
        }
    }
    Ok(processors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_class_path_with_continuations() {
        let mf =
            "Manifest-Version: 1.0\r\nClass-Path: a.jar b/c.j\r\n ar d.jar\r\nMain-Class: X\r\n";
        assert_eq!(manifest_class_path(mf), vec!["a.jar", "b/c.jar", "d.jar"]);
        assert!(manifest_class_path("Manifest-Version: 1.0\n").is_empty());
    }

    #[test]
    fn dir_digest_sees_class_files_in_package_dirs_only() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        fs::create_dir_all(p.join("com/x")).unwrap();
        fs::create_dir_all(p.join(".gradle/x")).unwrap();
        fs::write(p.join("com/x/A.class"), "one").unwrap();
        fs::write(p.join("com/x/notes.txt"), "n").unwrap();
        let role = DirRole::Classes { sources: false };
        let (a, procs, files) = dir_digest(p, role).unwrap();
        assert_eq!(files.len(), 1, "only com/x/A.class");
        assert!(!procs);
        // Files javac never reads do not change the digest.
        fs::write(p.join("com/x/notes.txt"), "changed").unwrap();
        fs::write(p.join(".gradle/x/B.class"), "x").unwrap();
        assert_eq!(dir_digest(p, role).unwrap().0, a);
        // A class file does, and so does a source when sources are looked up there.
        fs::write(p.join("com/x/A.class"), "two").unwrap();
        let b = dir_digest(p, role).unwrap().0;
        assert_ne!(a, b);
        fs::write(p.join("com/x/B.java"), "class B {}").unwrap();
        assert_eq!(dir_digest(p, role).unwrap().0, b);
        assert_ne!(
            dir_digest(p, DirRole::Classes { sources: true }).unwrap().0,
            b
        );
        fs::create_dir_all(p.join("META-INF/services")).unwrap();
        fs::write(p.join(PROCESSOR_SERVICE), "x.Proc").unwrap();
        assert!(dir_digest(p, role).unwrap().1);
    }

    fn jar(entries: &[(&str, &[u8])], year: u16) -> Vec<u8> {
        use std::io::Write;
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let t = zip::DateTime::from_date_and_time(year, 1, 2, 3, 4, 5).unwrap();
        let opts = zip::write::FileOptions::default().last_modified_time(t);
        for (name, data) in entries {
            w.start_file(*name, opts).unwrap();
            w.write_all(data).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    #[test]
    fn jar_digest_is_entry_names_and_contents_only() {
        let a = read_jar(&jar(&[("x/A.class", b"one"), ("x/B.class", b"two")], 2001)).unwrap();
        // Rewritten later, entries in another order: javac reads the same classes.
        let b = read_jar(&jar(&[("x/B.class", b"two"), ("x/A.class", b"one")], 2024)).unwrap();
        assert_eq!(a.digest, b.digest);
        let c = read_jar(&jar(&[("x/A.class", b"one"), ("x/B.class", b"2")], 2001)).unwrap();
        assert_ne!(a.digest, c.digest);
        let d = read_jar(&jar(&[("x/A.class", b"one"), ("x/C.class", b"two")], 2001)).unwrap();
        assert_ne!(a.digest, d.digest);
        assert!(!a.processors);
        let p = read_jar(&jar(&[(PROCESSOR_SERVICE, b"x.P")], 2001)).unwrap();
        assert!(p.processors);
        assert!(read_jar(b"not a zip").is_err());
    }

    #[test]
    fn identifiers() {
        assert!(is_identifier(b"com"));
        assert!(is_identifier(b"_x$1"));
        assert!(!is_identifier(b".git"));
        assert!(!is_identifier(b"build-cache"));
        assert!(!is_identifier(b"1a"));
        assert!(!is_identifier(b"META-INF"));
    }
}
