//! Toolchain packages: what a compiler needs to run on a machine that may not have it,
//! as icecc-create-env packs it. A package lists files at their absolute paths (the
//! driver, the programs it starts, the shared libraries they load, the loader and its
//! cache) and the symbolic links on the way to them; its digest names it, and its
//! files travel as blobs. Built here for this machine's compilers (memoized), checked
//! and laid out by farmd for a same-path job.
//!
//! Paths are laid out under a job's root by [`resolve_in_root`], which follows the
//! package's own links as if the root were `/`: nothing a package or a job names can
//! reach outside the root.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use crate::fsutil;

/// A content digest.
pub type Key = [u8; 32];

/// One file of a toolchain package, at its absolute path on the sending machine.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ToolEntry {
    pub path: String,
    pub kind: ToolKind,
}

/// A toolchain file's content (a blob, executable or not) or a symbolic link's target
/// as the link holds it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ToolKind {
    File { digest: Key, exec: bool },
    Link(String),
}

/// What a compiler needs to run, as icecc-create-env packs it: the driver, the
/// programs it starts, the libraries they load and the loader's cache, each at its
/// path. Its digest ([`digest`]) names it; its files travel as blobs.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Toolchain {
    /// The driver the job runs (a path of `entries`).
    pub driver: String,
    /// Sorted by path.
    pub entries: Vec<ToolEntry>,
}

/// Most entries a package may hold (a JDK-sized toolchain has a few hundred).
pub const MAX_ENTRIES: usize = 4096;
/// Links followed while resolving one path.
const MAX_HOPS: usize = 40;
/// The loader's cache: which file each library name is.
const LD_SO_CACHE: &str = "/etc/ld.so.cache";
/// The C.UTF-8 locale's files (glibc reads them where it has no built-in C.UTF-8):
/// without them a compiler under `LANG=C.UTF-8` quotes in ASCII.
const C_UTF8_LOCALE: &str = "/usr/lib/locale/C.utf8";

/// The digest that names a package.
pub fn digest(t: &Toolchain) -> Key {
    let mut h = blake3::Hasher::new();
    h.update(b"farm-toolchain-1\0");
    h.update(&postcard::to_allocvec(t).unwrap_or_default());
    *h.finalize().as_bytes()
}

/// The digest of what in a package decides a compile's output: its programs and
/// libraries, not the loader's cache or the locale data (they change whenever any
/// library is installed, and change no object).
pub fn identity_digest(t: &Toolchain) -> Key {
    let mut h = blake3::Hasher::new();
    h.update(b"farm-toolchain-identity-1\0");
    for e in &t.entries {
        if e.path == LD_SO_CACHE || Path::new(&e.path).starts_with(C_UTF8_LOCALE) {
            continue;
        }
        h.update(&postcard::to_allocvec(e).unwrap_or_default());
    }
    *h.finalize().as_bytes()
}

/// Why a package cannot be used: names the entry.
#[derive(Debug, thiserror::Error)]
pub enum ToolchainError {
    #[error("toolchain entry {0:?}: not an absolute, clean path")]
    BadPath(String),
    #[error("toolchain has {0} entries (at most {MAX_ENTRIES})")]
    TooLarge(usize),
    #[error("toolchain entries are not sorted and unique at {0:?}")]
    Unsorted(String),
    #[error("toolchain driver {0:?} is not one of its files")]
    NoDriver(String),
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: io::Error },
}

/// A path a package or a job may name: absolute, UTF-8 already, no `.`/`..`, no empty
/// or NUL component, not in the few places the sandbox provides itself.
pub fn valid_path(p: &str) -> bool {
    if !p.starts_with('/') || p.len() > 4096 || p.contains('\0') || p == "/" {
        return false;
    }
    let clean = p[1..]
        .split('/')
        .all(|c| !c.is_empty() && c != "." && c != "..");
    let top = p[1..].split('/').next().unwrap_or("");
    clean && !matches!(top, "proc" | "dev" | "sys")
}

/// Checks a package from the wire: sorted unique valid paths, bounded, its driver a
/// file of it.
pub fn check(t: &Toolchain) -> Result<(), ToolchainError> {
    if t.entries.len() > MAX_ENTRIES {
        return Err(ToolchainError::TooLarge(t.entries.len()));
    }
    for (i, e) in t.entries.iter().enumerate() {
        if !valid_path(&e.path) {
            return Err(ToolchainError::BadPath(e.path.clone()));
        }
        if let ToolKind::Link(target) = &e.kind {
            if target.is_empty() || target.len() > 4096 || target.contains('\0') {
                return Err(ToolchainError::BadPath(e.path.clone()));
            }
        }
        if i > 0 && t.entries[i - 1].path >= e.path {
            return Err(ToolchainError::Unsorted(e.path.clone()));
        }
    }
    if !t.entries.iter().any(|e| e.path == t.driver) {
        return Err(ToolchainError::NoDriver(t.driver.clone()));
    }
    Ok(())
}

/// Builds the package of a compiler from the files the family names (`programs`: the
/// driver as found first, then the programs it starts and any file it probes):
/// each with the links on its way, the libraries `ldd` lists for the executables, the
/// loader's cache.
pub fn build(
    driver: &Path,
    programs: &[PathBuf],
    hash: &mut dyn FnMut(&Path) -> io::Result<Key>,
) -> Result<Toolchain, ToolchainError> {
    let mut b = Builder::default();
    let driver_real = b.add(driver)?;
    for p in programs {
        b.add(p)?;
    }
    let execs: Vec<PathBuf> = b
        .files
        .iter()
        .filter(|(_, exec)| *exec)
        .map(|(p, _)| p.clone())
        .collect();
    for e in execs {
        for lib in shared_libraries(&e) {
            b.add(&lib)?;
        }
    }
    if Path::new(LD_SO_CACHE).is_file() {
        b.add(Path::new(LD_SO_CACHE))?;
    }
    for f in files_under(Path::new(C_UTF8_LOCALE)) {
        b.add(&f)?;
    }
    let mut entries = Vec::with_capacity(b.files.len() + b.links.len());
    for (p, exec) in &b.files {
        let digest = hash(p).map_err(|err| ToolchainError::Io {
            path: p.clone(),
            err,
        })?;
        entries.push(ToolEntry {
            path: utf8(p)?,
            kind: ToolKind::File {
                digest,
                exec: *exec,
            },
        });
    }
    for (p, target) in &b.links {
        entries.push(ToolEntry {
            path: utf8(p)?,
            kind: ToolKind::Link(utf8(target)?),
        });
    }
    entries.sort();
    entries.dedup_by(|a, b| a.path == b.path);
    // The driver as a file of the package: `/bin/gcc` on a merged-/usr system is
    // `/usr/bin/gcc` (or the file its links end at), `/bin` a link entry.
    let t = Toolchain {
        driver: utf8(&driver_real)?,
        entries,
    };
    check(&t)?;
    Ok(t)
}

fn utf8(p: &Path) -> Result<String, ToolchainError> {
    p.to_str()
        .map(str::to_string)
        .ok_or_else(|| ToolchainError::BadPath(p.display().to_string()))
}

#[derive(Default)]
struct Builder {
    files: Vec<(PathBuf, bool)>,
    links: Vec<(PathBuf, PathBuf)>,
}

impl Builder {
    /// Adds the file at `path` and every link on the way to it; returns its real path.
    fn add(&mut self, path: &Path) -> Result<PathBuf, ToolchainError> {
        let io_err = |err| ToolchainError::Io {
            path: path.to_path_buf(),
            err,
        };
        let mut rest: Vec<OsString> = components(path);
        rest.reverse();
        let mut cur = PathBuf::from("/");
        let mut hops = 0;
        while let Some(c) = rest.pop() {
            if c == ".." {
                cur.pop();
                continue;
            }
            let next = cur.join(&c);
            let meta = fs::symlink_metadata(&next).map_err(io_err)?;
            if meta.file_type().is_symlink() {
                hops += 1;
                if hops > MAX_HOPS {
                    return Err(io_err(io::Error::other("too many links")));
                }
                let target = fs::read_link(&next).map_err(io_err)?;
                if !self.links.iter().any(|(p, _)| *p == next) {
                    self.links.push((next.clone(), target.clone()));
                }
                if target.is_absolute() {
                    cur = PathBuf::from("/");
                }
                let mut t = components(&target);
                t.reverse();
                rest.extend(t);
            } else if rest.is_empty() {
                if !meta.is_file() {
                    return Err(io_err(io::Error::other("not a regular file")));
                }
                let exec = meta.permissions().mode() & 0o111 != 0;
                if !self.files.iter().any(|(p, _)| *p == next) {
                    self.files.push((next.clone(), exec));
                }
                return Ok(next);
            } else {
                cur = next;
            }
        }
        Err(io_err(io::Error::other("not a file")))
    }
}

/// The regular files under `dir` (none when it is missing).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        match e.file_type() {
            Ok(t) if t.is_dir() => out.extend(files_under(&e.path())),
            Ok(t) if t.is_file() => out.push(e.path()),
            _ => {}
        }
    }
    out.sort();
    out
}

/// The components of an absolute or relative path as names and `..`.
fn components(p: &Path) -> Vec<OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}

/// The shared libraries (and loader) an executable loads, as `ldd` resolves them here.
/// A static executable, or one `ldd` cannot read, loads none. Remembered per file and
/// stamp for the life of the process (farmd packages many names of one compiler).
fn shared_libraries(exe: &Path) -> Vec<PathBuf> {
    type Seen = std::sync::Mutex<std::collections::HashMap<(PathBuf, [i64; 5]), Vec<PathBuf>>>;
    static SEEN: std::sync::OnceLock<Seen> = std::sync::OnceLock::new();
    let seen = SEEN.get_or_init(Default::default);
    let key = stamp(exe).map(|s| (exe.to_path_buf(), s));
    if let Some(k) = &key {
        if let Some(libs) = seen.lock().unwrap().get(k) {
            return libs.clone();
        }
    }
    let libs = run_ldd(exe);
    if let Some(k) = key {
        seen.lock().unwrap().insert(k, libs.clone());
    }
    libs
}

fn run_ldd(exe: &Path) -> Vec<PathBuf> {
    // What the compiler itself loads, not what this process was started with: a
    // worker runs jobs without LD_PRELOAD (and a compile with it stays home), and a
    // preload inherited here (farmd under libfaketime, a malloc preload) would put
    // that library into the package and change the compiler's identity, so that no
    // peer would run this node's compiler or this node a peer's.
    let Ok(out) = Command::new("ldd")
        .arg(exe)
        .env("LC_ALL", "C")
        .env_remove("LD_PRELOAD")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
    else {
        return Vec::new();
    };
    let mut libs = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let line = line.trim();
        // "libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x...)", "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = match line.split_once(" => ") {
            Some((_, rhs)) => rhs.split(" (").next().unwrap_or(""),
            None => line.split(" (").next().unwrap_or(""),
        };
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    libs
}

/// A memoized package: the package and the stamps of its files when it was built.
#[derive(Serialize, Deserialize)]
struct Memo {
    toolchain: Toolchain,
    stamps: Vec<(String, [i64; 5])>,
}

fn stamp(p: &Path) -> Option<[i64; 5]> {
    let m = fs::metadata(p).ok()?;
    Some([
        m.size() as i64,
        m.mtime() * 1_000_000_000 + m.mtime_nsec(),
        m.ctime() * 1_000_000_000 + m.ctime_nsec(),
        m.ino() as i64,
        m.dev() as i64,
    ])
}

/// The package of the compiler whose identity is `identity`, from its memo in
/// `memo_dir` while every file in it is unchanged, else built again
/// (`programs` lists what [`build`] takes).
pub fn memoized(
    identity: &Key,
    memo_dir: &Path,
    driver: &Path,
    programs: impl FnOnce() -> io::Result<Vec<PathBuf>>,
) -> Result<Toolchain, ToolchainError> {
    let memo = memo_dir.join(format!("{}.toolchain", fsutil::hex(&identity[..16])));
    if let Ok(data) = fs::read(&memo) {
        if let Ok(m) = postcard::from_bytes::<Memo>(&data) {
            let fresh = m
                .stamps
                .iter()
                .all(|(p, s)| stamp(Path::new(p)).as_ref() == Some(s));
            if fresh {
                return Ok(m.toolchain);
            }
        }
    }
    let programs = programs().map_err(|err| ToolchainError::Io {
        path: driver.to_path_buf(),
        err,
    })?;
    let toolchain = build(driver, &programs, &mut |p| {
        crate::digest::digest_memo(p, memo_dir)
    })?;
    let stamps = toolchain
        .entries
        .iter()
        .filter(|e| matches!(e.kind, ToolKind::File { .. }))
        .filter_map(|e| Some((e.path.clone(), stamp(Path::new(&e.path))?)))
        .collect();
    let m = Memo {
        toolchain: toolchain.clone(),
        stamps,
    };
    if let Ok(data) = postcard::to_allocvec(&m) {
        let _ = fsutil::create_cache_dir_all(memo_dir);
        let _ = fsutil::write_cache_atomic(&memo, &data);
    }
    Ok(toolchain)
}

/// Where the absolute `path` lies under `root` when `root` is taken for `/`: links
/// already laid out under `root` are followed as they would be inside it (absolute
/// targets from `root`, `..` never above it), missing directories on the way are made
/// when `make_dirs`. The last component is not followed (a file's place). Never
/// returns a path outside `root`.
pub fn resolve_in_root(root: &Path, path: &Path, make_dirs: bool) -> io::Result<PathBuf> {
    let name = match path.file_name() {
        Some(n) if !path.ends_with("..") => n.to_os_string(),
        _ => return resolve_dir_in_root(root, path, make_dirs),
    };
    let dir = resolve_dir_in_root(root, path.parent().unwrap_or(Path::new("/")), make_dirs)?;
    Ok(dir.join(name))
}

/// Like [`resolve_in_root`] for a directory: every component is followed, and made
/// when missing and `make_dirs`.
pub fn resolve_dir_in_root(root: &Path, path: &Path, make_dirs: bool) -> io::Result<PathBuf> {
    let mut rest = components(path);
    rest.reverse();
    let mut parts: Vec<OsString> = Vec::new();
    let mut hops = 0;
    let here = |parts: &[OsString]| {
        let mut p = root.to_path_buf();
        p.extend(parts);
        p
    };
    while let Some(c) = rest.pop() {
        if c == ".." {
            parts.pop();
            continue;
        }
        let next = here(&parts).join(&c);
        match fs::symlink_metadata(&next) {
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > MAX_HOPS {
                    return Err(io::Error::other(format!(
                        "{}: too many links",
                        path.display()
                    )));
                }
                let target = fs::read_link(&next)?;
                if target.is_absolute() {
                    parts.clear();
                }
                let mut t = components(&target);
                t.reverse();
                rest.extend(t);
            }
            Ok(m) if m.is_dir() => parts.push(c),
            Ok(_) => {
                return Err(io::Error::other(format!(
                    "{}: {} is not a directory",
                    path.display(),
                    next.display()
                )))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && make_dirs => {
                fs::create_dir(&next)?;
                parts.push(c);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(here(&parts))
}

/// Whether `p` holds a `..` component (its meaning depends on links on the way).
pub fn has_parent_component(p: &Path) -> bool {
    p.as_os_str()
        .as_bytes()
        .split(|&b| b == b'/')
        .any(|c| c == b"..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_from_the_wire() {
        for ok in ["/usr/bin/gcc", "/a", "/home/u/x y/z.h"] {
            assert!(valid_path(ok), "{ok}");
        }
        for bad in [
            "",
            "/",
            "usr/bin",
            "/a/../b",
            "/a/./b",
            "/a//b",
            "/proc/1/mem",
            "/dev/sda",
            "/sys/x",
            "/a\0b",
        ] {
            assert!(!valid_path(bad), "{bad:?}");
        }
    }

    #[test]
    fn resolving_never_leaves_the_root() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        fs::create_dir(&root).unwrap();
        std::os::unix::fs::symlink("usr/lib", root.join("lib")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("evil")).unwrap();
        std::os::unix::fs::symlink("../../../..", root.join("up")).unwrap();
        let p = resolve_in_root(&root, Path::new("/lib/x/libc.so"), true).unwrap();
        assert_eq!(p, root.join("usr/lib/x/libc.so"));
        let p = resolve_in_root(&root, Path::new("/evil/passwd"), true).unwrap();
        assert_eq!(p, root.join("etc/passwd"));
        let p = resolve_in_root(&root, Path::new("/up/tmp/x"), true).unwrap();
        assert_eq!(p, root.join("tmp/x"));
        let p = resolve_in_root(&root, Path::new("/a/../../../b"), true).unwrap();
        assert_eq!(p, root.join("b"));
        // The last component is never followed; a directory's every one is.
        let p = resolve_in_root(&root, Path::new("/evil"), false).unwrap();
        assert_eq!(p, root.join("evil"));
        let p = resolve_dir_in_root(&root, Path::new("/evil"), true).unwrap();
        assert_eq!(p, root.join("etc"));
        let p = resolve_dir_in_root(&root, Path::new("/lib/y"), true).unwrap();
        assert_eq!(p, root.join("usr/lib/y"));
    }

    #[test]
    fn a_package_of_this_machines_gcc() {
        let Ok(gcc) = which("gcc") else { return };
        let t = build(&gcc, &[], &mut |p| fsutil::hash_file(p)).unwrap();
        check(&t).unwrap();
        assert!(t.entries.iter().any(|e| e.path.ends_with("libc.so.6")));
        assert_eq!(Path::new(&t.driver), fs::canonicalize(&gcc).unwrap());
        // The same files give the same digest.
        let again = build(&gcc, &[], &mut |p| fsutil::hash_file(p)).unwrap();
        assert_eq!(digest(&t), digest(&again));
    }

    fn which(name: &str) -> Result<PathBuf, ()> {
        std::env::split_paths(&std::env::var_os("PATH").ok_or(())?)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
            .ok_or(())
    }
}
