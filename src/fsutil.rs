//! Small filesystem helpers shared by the cache and the shim.
//!
//! Every file farm writes lands by write-to-temp + rename in the destination's own
//! directory (DESIGN.md invariant 3), so a reader never sees a torn file even when
//! the writer is killed halfway.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

static TMP_SEQ: AtomicU32 = AtomicU32::new(0);

/// A temporary name beside `dest`, unique per process and call.
pub fn temp_path_beside(dest: &Path) -> PathBuf {
    let seq = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = format!(".{name}.farm-tmp.{}.{seq}", std::process::id());
    match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.join(tmp),
        _ => PathBuf::from(tmp),
    }
}

/// The directory of this user's scratch files (observation depfiles):
/// `$TMPDIR/farm-<euid>`, created 0700 by [`create_private_file`]. Nothing is created
/// here: the hit path only names paths in it.
pub fn private_temp_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    std::env::temp_dir().join(format!("farm-{uid}"))
}

/// Whether `dir` is a user's private scratch directory as [`private_temp_dir`] names
/// it (`farm-<uid>` in the temporary directory): files there are per-compile scratch.
pub fn is_private_temp_dir(dir: &Path) -> bool {
    dir.parent() == Some(std::env::temp_dir().as_path())
        && dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("farm-"))
            .is_some_and(|uid| !uid.is_empty() && uid.bytes().all(|b| b.is_ascii_digit()))
}

/// Scratch files older than this in the private directory are leftovers of killed
/// shims, removed by the next file created there.
const PRIVATE_LEFTOVER_SECS: u64 = 3600;

/// Makes sure `dir` is this user's own directory, mode 0700, not a symlink: created
/// if missing, refused (an error) if someone else planted it or it is open to others.
pub fn ensure_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let m = fs::symlink_metadata(dir)?;
    // SAFETY: as above.
    let uid = unsafe { libc::geteuid() };
    if !m.file_type().is_dir() || m.uid() != uid || m.mode() & 0o077 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{}: not a private directory of this user", dir.display()),
        ));
    }
    Ok(())
}

/// Creates `path`, a fresh file in a private directory (see [`ensure_private_dir`]),
/// mode 0600, with `O_EXCL`: never through a symlink, never someone else's file. A
/// leftover of the same name (a killed process of the same pid) is replaced; files of
/// killed shims older than an hour are removed on the way.
pub fn create_private_file(path: &Path) -> io::Result<File> {
    let dir = path.parent().unwrap_or(Path::new("."));
    ensure_private_dir(dir)?;
    remove_leftovers(dir);
    let open = || {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
    };
    match open() {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            fs::remove_file(path)?;
            open()
        }
        other => other,
    }
}

fn remove_leftovers(dir: &Path) {
    let Ok(rd) = fs::read_dir(dir) else {
        return;
    };
    let now = std::time::SystemTime::now();
    for e in rd.flatten() {
        let Ok(m) = e.metadata() else { continue };
        let old = m
            .modified()
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age.as_secs() > PRIVATE_LEFTOVER_SECS);
        if old {
            let _ = fs::remove_file(e.path());
        }
    }
}

static CACHE_SHARED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether cache files are for a group (`cache_shared`): directories 0770 and files
/// 0660, else 0700 and 0600. Set once from the config, before the cache is touched.
pub fn set_cache_shared(shared: bool) {
    CACHE_SHARED.store(shared, Ordering::Relaxed);
}

/// (directory mode, file mode) of what farm creates in a cache, whatever the umask.
pub fn cache_modes() -> (u32, u32) {
    if CACHE_SHARED.load(Ordering::Relaxed) {
        (0o770, 0o660)
    } else {
        (0o700, 0o600)
    }
}

/// `create_dir_all` for cache directories: each directory it creates gets exactly the
/// cache's directory mode (existing ones are left as they are).
pub fn create_cache_dir_all(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_cache_dir_all(parent)?;
    }
    let mode = cache_modes().0;
    match fs::DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => fs::set_permissions(dir, fs::Permissions::from_mode(mode)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Opens (creating) a cache file read-write; a file it creates gets exactly the
/// cache's file mode.
pub fn open_cache_file(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::PermissionsExt;
    let mode = cache_modes().1;
    match OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
    {
        Ok(f) => {
            f.set_permissions(fs::Permissions::from_mode(mode))?;
            Ok(f)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            OpenOptions::new().read(true).write(true).open(path)
        }
        Err(e) => Err(e),
    }
}

/// [`write_atomic`] for a cache file: mode 0600 (0660 shared), whatever the umask.
pub fn write_cache_atomic(dest: &Path, data: &[u8]) -> io::Result<()> {
    write_atomic_mode(dest, &[data], Some(cache_modes().1))
}

/// Writes `data` to `dest` atomically. The file gets mode 0666 minus the umask,
/// like a file the compiler itself creates.
pub fn write_atomic(dest: &Path, data: &[u8]) -> io::Result<()> {
    write_atomic_parts(dest, &[data])
}

/// Like [`write_atomic`], for data that comes in pieces (header + payload).
pub fn write_atomic_parts(dest: &Path, parts: &[&[u8]]) -> io::Result<()> {
    write_atomic_mode(dest, parts, None)
}

/// `mode`: exactly this mode (set after creation, so the umask does not matter), or
/// 0666 minus the umask.
fn write_atomic_mode(dest: &Path, parts: &[&[u8]], mode: Option<u32>) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = temp_path_beside(dest);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode.unwrap_or(0o666))
            .open(&tmp)?;
        if let Some(m) = mode {
            f.set_permissions(fs::Permissions::from_mode(m))?;
        }
        for p in parts {
            f.write_all(p)?;
        }
        drop(f);
        fs::rename(&tmp, dest)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Reads a whole file with one `fstat` and, for a regular file, one `read`: the hot
/// path reads dozens of headers, so syscalls per file matter.
pub fn read_file(path: &Path) -> io::Result<Vec<u8>> {
    read_file_meta(path).map(|(d, _)| d)
}

/// Like [`read_file`], also returning the metadata of the opened file.
pub fn read_file_meta(path: &Path) -> io::Result<(Vec<u8>, fs::Metadata)> {
    let mut f = File::open(path)?;
    let meta = f.metadata()?;
    let len = meta.len() as usize;
    let mut buf = vec![0u8; len + 1];
    let mut filled = 0;
    loop {
        let want = buf.len() - filled;
        let n = match f.read(&mut buf[filled..]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        filled += n;
        if n == 0 || (n < want && meta.is_file()) {
            // A short read of a regular file is its end.
            break;
        }
        if filled == buf.len() {
            buf.resize(buf.len() * 2 + 4096, 0);
        }
    }
    buf.truncate(filled);
    Ok((buf, meta))
}

/// blake3 of a file's content.
pub fn hash_file(path: &Path) -> io::Result<[u8; 32]> {
    let mut f = File::open(path)?;
    // Headers in one read; a compiler's 30 MB program streamed, not held.
    if f.metadata()?.len() > 1 << 20 {
        let mut h = blake3::Hasher::new();
        h.update_reader(&mut f)?;
        return Ok(*h.finalize().as_bytes());
    }
    drop(f);
    let data = read_file(path)?;
    Ok(*blake3::hash(&data).as_bytes())
}

/// Modification and status-change times of a file in nanoseconds since the epoch.
pub fn times_ns(meta: &fs::Metadata) -> (i128, i128) {
    use std::os::unix::fs::MetadataExt;
    let m = meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128;
    let c = meta.ctime() as i128 * 1_000_000_000 + meta.ctime_nsec() as i128;
    (m, c)
}

/// Wall-clock now in nanoseconds since the epoch.
pub fn now_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

/// Lexically cleans a path: drops `.` components and repeated separators.
/// `..` is kept (it is not lexically resolvable through symlinks).
pub fn clean_path(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    if out.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        out
    }
}

/// Every regular file under `dir`, as (relative path, content), sorted by path; an
/// empty list when `dir` does not exist. A non-UTF-8 name or anything but files and
/// directories is an error: such a tree cannot be stored and restored exactly.
pub fn collect_tree(dir: &Path) -> io::Result<Vec<(String, Vec<u8>)>> {
    collect_tree_capped(dir, u64::MAX)
}

/// [`collect_tree`] for a tree someone else wrote (a worker's job): no symbolic link
/// is followed anywhere (the tree's root, its directories, its files, which are opened
/// with `O_NOFOLLOW`), only regular files count, and more than `max_total` bytes in all
/// is an error before they are read.
pub fn collect_tree_capped(dir: &Path, max_total: u64) -> io::Result<Vec<(String, Vec<u8>)>> {
    fn walk(
        root: &Path,
        rel: &Path,
        left: &mut u64,
        out: &mut Vec<(String, Vec<u8>)>,
    ) -> io::Result<()> {
        for e in fs::read_dir(root.join(rel))? {
            let e = e?;
            let sub = rel.join(e.file_name());
            // The entry's own type: a symbolic link is neither a directory nor a file.
            let ft = e.file_type()?;
            if ft.is_dir() {
                walk(root, &sub, left, out)?;
            } else if ft.is_file() {
                let Some(name) = sub.to_str() else {
                    return Err(io::Error::other(format!(
                        "non-UTF-8 output name {}",
                        sub.display()
                    )));
                };
                let f = fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(root.join(&sub))?;
                let meta = f.metadata()?;
                if !meta.is_file() || meta.len() > *left {
                    return Err(io::Error::other(format!(
                        "output {} is not a regular file or is too large",
                        sub.display()
                    )));
                }
                *left -= meta.len();
                let mut data = Vec::with_capacity(meta.len() as usize);
                f.take(meta.len()).read_to_end(&mut data)?;
                out.push((name.to_string(), data));
            } else {
                return Err(io::Error::other(format!(
                    "output {} is not a regular file",
                    sub.display()
                )));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    match fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => {
            let mut left = max_total;
            walk(dir, Path::new(""), &mut left, &mut out)?;
        }
        Ok(_) => {
            return Err(io::Error::other(format!(
                "{} is not a directory",
                dir.display()
            )))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    out.sort();
    Ok(out)
}

/// Hex form of a digest.
pub fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

/// An exclusive advisory lock on an open file, released on drop.
pub struct FileLock(File);

impl FileLock {
    pub fn lock(file: File) -> io::Result<FileLock> {
        use std::os::unix::io::AsRawFd;
        // SAFETY: flock on a valid, owned descriptor.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(FileLock(file))
    }

    /// Takes the lock only if nobody holds it.
    pub fn try_lock(file: File) -> io::Result<Option<FileLock>> {
        use std::os::unix::io::AsRawFd;
        // SAFETY: flock on a valid, owned descriptor.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Ok(None);
            }
            return Err(e);
        }
        Ok(Some(FileLock(file)))
    }

    pub fn file(&mut self) -> &mut File {
        &mut self.0
    }
}

/// What a path is, as far as include lookups care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathKind {
    Missing,
    File,
    Dir,
    Other,
}

/// Answers "what is at this path" from one `readdir` per directory instead of one
/// `stat` per path: recording a C++ compile's include lookups asks about tens of
/// thousands of paths in a few dozen directories. Keys are raw bytes (hashing a
/// `Path` walks its components).
#[derive(Default)]
pub struct DirCache {
    dirs: rustc_hash::FxHashMap<Vec<u8>, Option<rustc_hash::FxHashMap<Vec<u8>, PathKind>>>,
}

/// Splits `a/b/c` into (`a/b`, `c`); `c` alone into (``, `c`).
fn split_last(p: &[u8]) -> (&[u8], &[u8]) {
    match memchr::memrchr(b'/', p) {
        Some(0) => (&p[..1], &p[1..]),
        Some(i) => (&p[..i], &p[i + 1..]),
        None => (&p[..0], p),
    }
}

impl DirCache {
    fn kind_of(path: &Path) -> PathKind {
        match fs::metadata(path) {
            Ok(m) if m.is_file() => PathKind::File,
            Ok(m) if m.is_dir() => PathKind::Dir,
            Ok(_) => PathKind::Other,
            Err(_) => PathKind::Missing,
        }
    }

    fn listing(dir: &[u8]) -> Option<rustc_hash::FxHashMap<Vec<u8>, PathKind>> {
        use std::os::unix::ffi::{OsStrExt, OsStringExt};
        let dir = if dir.is_empty() { b"." as &[u8] } else { dir };
        let rd = fs::read_dir(std::ffi::OsStr::from_bytes(dir)).ok()?;
        let mut m = rustc_hash::FxHashMap::default();
        for e in rd.flatten() {
            let kind = match e.file_type() {
                Ok(t) if t.is_file() => PathKind::File,
                Ok(t) if t.is_dir() => PathKind::Dir,
                // Links (and unknown types) are resolved like the compiler's open().
                _ => Self::kind_of(&e.path()),
            };
            m.insert(e.file_name().into_vec(), kind);
        }
        Some(m)
    }

    /// What `path` is (links followed).
    pub fn kind(&mut self, path: &Path) -> PathKind {
        use std::os::unix::ffi::OsStrExt;
        self.kind_bytes(path.as_os_str().as_bytes())
    }

    fn kind_bytes(&mut self, p: &[u8]) -> PathKind {
        let p = p.strip_suffix(b"/").unwrap_or(p);
        let (parent, name) = split_last(p);
        if name.is_empty() || name == b"." || name == b".." {
            use std::os::unix::ffi::OsStrExt;
            // `..`, `.`, `/`: rare in lookups; ask the file system.
            return Self::kind_of(Path::new(std::ffi::OsStr::from_bytes(p)));
        }
        if !self.dirs.contains_key(parent) {
            // A parent its own parent's listing lacks is not opened at all.
            let listing = if parent.len() > 1 && self.kind_bytes(parent) != PathKind::Dir {
                None
            } else {
                Self::listing(parent)
            };
            self.dirs.insert(parent.to_vec(), listing);
        }
        match &self.dirs[parent] {
            Some(m) => m.get(name).copied().unwrap_or(PathKind::Missing),
            None => PathKind::Missing,
        }
    }

    /// The topmost missing component of a missing path: `a/b/c.h` with no `a/b`
    /// gives `a/b` (one check then covers every lookup below it).
    pub fn topmost_missing<'a>(&mut self, path: &'a Path) -> &'a Path {
        use std::os::unix::ffi::OsStrExt;
        let mut top = path.as_os_str().as_bytes();
        loop {
            let (parent, _) = split_last(top);
            if parent.is_empty() || parent == b"/" || self.kind_bytes(parent) != PathKind::Missing {
                break;
            }
            top = parent;
        }
        Path::new(std::ffi::OsStr::from_bytes(top))
    }
}

/// `p` without `.` components and repeated separators, as bytes; borrowed when it
/// is already clean (the common case on hot paths).
pub fn clean_bytes(p: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    use std::os::unix::ffi::OsStrExt;
    let dirty = p.starts_with(b"./")
        || p.ends_with(b"/.")
        || p == b"."
        || memchr::memmem::find(p, b"//").is_some()
        || memchr::memmem::find(p, b"/./").is_some()
        || (p.len() > 1 && p.ends_with(b"/"));
    if !dirty {
        return std::borrow::Cow::Borrowed(p);
    }
    let c = clean_path(Path::new(std::ffi::OsStr::from_bytes(p)));
    std::borrow::Cow::Owned(c.as_os_str().as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.o");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(d.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn dir_cache_answers_like_stat() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("inc/sub")).unwrap();
        fs::write(d.path().join("inc/a.h"), "").unwrap();
        std::os::unix::fs::symlink(d.path().join("inc/a.h"), d.path().join("inc/link.h")).unwrap();
        std::os::unix::fs::symlink(d.path().join("nowhere"), d.path().join("inc/dangling.h"))
            .unwrap();
        let mut c = DirCache::default();
        assert_eq!(c.kind(&d.path().join("inc/a.h")), PathKind::File);
        assert_eq!(c.kind(&d.path().join("inc/link.h")), PathKind::File);
        assert_eq!(c.kind(&d.path().join("inc/dangling.h")), PathKind::Missing);
        assert_eq!(c.kind(&d.path().join("inc/sub")), PathKind::Dir);
        assert_eq!(c.kind(&d.path().join("inc/nope.h")), PathKind::Missing);
        let deep = d.path().join("inc/x/y/z.h");
        assert_eq!(c.kind(&deep), PathKind::Missing);
        assert_eq!(c.topmost_missing(&deep), d.path().join("inc/x"));
    }

    #[test]
    fn clean_bytes_matches_clean_path() {
        use std::os::unix::ffi::OsStrExt;
        for p in [
            "a/b.h",
            "./a/b.h",
            "a//b.h",
            "a/./b.h",
            "/usr/include",
            "x.h",
            "../x.h",
            "a/b/",
        ] {
            let want = clean_path(Path::new(p));
            assert_eq!(
                &*clean_bytes(p.as_bytes()),
                want.as_os_str().as_bytes(),
                "{p}"
            );
        }
    }

    #[test]
    fn a_tree_someone_else_wrote_is_read_without_following_links() {
        let d = tempfile::tempdir().unwrap();
        let secret = d.path().join("secret");
        fs::write(&secret, "key").unwrap();
        let out = d.path().join("out");
        fs::create_dir_all(out.join("p")).unwrap();
        fs::write(out.join("p/A.class"), "ok").unwrap();
        assert_eq!(
            collect_tree_capped(&out, 100).unwrap(),
            vec![("p/A.class".to_string(), b"ok".to_vec())]
        );
        assert!(collect_tree_capped(&out, 1).is_err(), "over the cap");
        std::os::unix::fs::symlink(&secret, out.join("p/B.class")).unwrap();
        assert!(collect_tree_capped(&out, 100).is_err(), "a linked file");
        fs::remove_file(out.join("p/B.class")).unwrap();
        std::os::unix::fs::symlink(d.path(), out.join("q")).unwrap();
        assert!(
            collect_tree_capped(&out, 100).is_err(),
            "a linked directory"
        );
        let linked_root = d.path().join("root");
        std::os::unix::fs::symlink(&out, &linked_root).unwrap();
        assert!(
            collect_tree_capped(&linked_root, 100).is_err(),
            "a linked root"
        );
    }

    #[test]
    fn clean_path_drops_dots() {
        assert_eq!(
            clean_path(Path::new("./a//b/./c.h")),
            PathBuf::from("a/b/c.h")
        );
        assert_eq!(clean_path(Path::new("../x.h")), PathBuf::from("../x.h"));
        assert_eq!(
            clean_path(Path::new("/usr/./include")),
            PathBuf::from("/usr/include")
        );
    }
}
