//! A job's own root, shown read-only as `/` by the sandbox
//! ([`super::sandbox::Sandbox::command_rooted`]): what same-path jobs
//! ([`super::paths`]) and the REAPI bot's `farm-layout=rootfs` leases run in. Links
//! are laid out first (shallowest first) and every later path is resolved through
//! them as inside the root ([`farm::toolchain::resolve_in_root`]): nothing a job
//! names reaches outside the root. Each directory an output goes to, and a scratch
//! directory (the job's TMPDIR), gets a fresh writable directory bound over it,
//! holding copies of what the root has there; outputs are read back beneath those
//! without following links.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use farm::toolchain::{resolve_dir_in_root, resolve_in_root};

/// Bytes of copies one job's writable directories may hold before it runs: an output
/// in `/` or a toolchain directory would otherwise copy the whole root per job.
const MIRROR_MAX: u64 = 256 << 20;

fn io(what: &Path, e: std::io::Error) -> String {
    format!("{}: {e}", what.display())
}

/// A root being laid out under a job directory.
pub(crate) struct Root {
    pub path: PathBuf,
    /// Each directory of an absolute path placed so far: where it lies under the root.
    dirs_at: HashMap<PathBuf, PathBuf>,
}

impl Root {
    /// Makes `<dir>/root`, with the mount points of `/dev` and `/proc`.
    pub(crate) fn create(dir: &Path) -> Result<Root, String> {
        let path = dir.join("root");
        std::fs::create_dir_all(&path).map_err(|e| io(&path, e))?;
        for d in ["dev", "proc"] {
            std::fs::create_dir(path.join(d)).map_err(|e| io(&path, e))?;
        }
        Ok(Root {
            path,
            dirs_at: HashMap::new(),
        })
    }

    /// Lays out symbolic links (absolute path, target verbatim), shallowest first, so
    /// that paths below them resolve through them; a path already there is kept.
    pub(crate) fn links(&mut self, mut links: Vec<(&str, &str)>) -> Result<(), String> {
        links.sort_by_key(|(p, _)| p.matches('/').count());
        for (path, target) in links {
            let p = Path::new(path);
            let at = resolve_in_root(&self.path, p, true).map_err(|e| io(p, e))?;
            if std::fs::symlink_metadata(&at).is_ok() {
                continue;
            }
            std::os::unix::fs::symlink(target, &at).map_err(|e| io(p, e))?;
        }
        Ok(())
    }

    /// Where the file at the absolute `path` lies under the root (its directory
    /// resolved through the links laid out, made when missing; resolved once).
    pub(crate) fn place(&mut self, path: &Path) -> Result<PathBuf, String> {
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return resolve_in_root(&self.path, path, true).map_err(|e| io(path, e));
        };
        if let Some(d) = self.dirs_at.get(parent) {
            return Ok(d.join(name));
        }
        let d = resolve_dir_in_root(&self.path, parent, true).map_err(|e| io(path, e))?;
        let at = d.join(name);
        self.dirs_at.insert(parent.to_path_buf(), d);
        Ok(at)
    }

    /// Makes the directory at the absolute `path` (through the links laid out).
    pub(crate) fn dir(&self, path: &Path) -> Result<PathBuf, String> {
        resolve_dir_in_root(&self.path, path, true).map_err(|e| io(path, e))
    }
}

/// The writable directories bound over a root.
pub(crate) struct Writable {
    /// (this machine's directory, where the job sees it).
    pub rw: Vec<(PathBuf, String)>,
    /// Each output, by the caller's name for it: where the job's write of it lands
    /// here, as the writable directory and the path below it (the job may have
    /// replaced any directory below with a link, so it is walked without following
    /// links: [`read_output_beneath`]).
    pub output_at: HashMap<String, (PathBuf, PathBuf)>,
    /// The job's TMPDIR (a writable directory of its own, in the job's paths).
    pub scratch: String,
}

/// Makes the writable directories of a job whose root is `root` and whose job
/// directory is `dir`: a scratch one, and each output's directory (`outputs`: the
/// caller's name and the absolute path, which may hold `..`) not inside another.
pub(crate) fn writable(
    root: &Path,
    dir: &Path,
    outputs: &[(String, PathBuf)],
) -> Result<Writable, String> {
    // The compiler's own scratch directory (TMPDIR): a fresh name no path of the
    // sender's can be, so that a source tree under /tmp is not made writable (and
    // copied) with it.
    let scratch = format!(
        "/tmp/.farm-job-{}",
        farm::fsutil::hex(&blake3::hash(dir.as_os_str().as_encoded_bytes()).as_bytes()[..8])
    );
    let scratch_at =
        resolve_dir_in_root(root, Path::new(&scratch), true).map_err(|e| io(root, e))?;
    let mut out_dirs: Vec<PathBuf> = vec![scratch_at];
    let mut output_parent: Vec<(String, PathBuf)> = Vec::new();
    for (name, p) in outputs {
        let file = p
            .file_name()
            .filter(|_| !p.ends_with(".."))
            .ok_or_else(|| format!("output {name}: not a file name"))?;
        let parent = resolve_dir_in_root(root, p.parent().unwrap_or(Path::new("/")), true)
            .map_err(|e| io(p, e))?;
        // A writable directory over `/` would hide the job's `/dev` and copy the
        // whole root.
        if parent == root {
            return Err(format!("output {name}: its directory is the job's `/`"));
        }
        output_parent.push((name.clone(), parent.join(file)));
        out_dirs.push(parent);
    }
    out_dirs.sort_by_key(|d| d.as_os_str().len());
    let mut bound: Vec<PathBuf> = Vec::new();
    for d in out_dirs {
        if !bound.iter().any(|b| d.starts_with(b)) {
            bound.push(d);
        }
    }
    let mut rw = Vec::new();
    let mut copied = 0u64;
    let mut host_of: Vec<(PathBuf, PathBuf)> = Vec::new();
    for (n, d) in bound.iter().enumerate() {
        let host = dir.join(format!("w{n}"));
        std::fs::create_dir(&host).map_err(|e| io(&host, e))?;
        let inside = in_job(root, d);
        // What the root holds there stays visible: directories and links made, files
        // copied.
        mirror(d, &host, &mut copied)?;
        rw.push((host.clone(), inside));
        host_of.push((d.clone(), host));
    }
    let mut output_at = HashMap::new();
    for (o, at) in output_parent {
        if let Some((d, host)) = host_of.iter().find(|(d, _)| at.starts_with(d)) {
            if let Ok(rel) = at.strip_prefix(d) {
                output_at.insert(o, (host.clone(), rel.to_path_buf()));
            }
        }
    }
    Ok(Writable {
        rw,
        output_at,
        scratch,
    })
}

/// A job's environment in its root: `env` without PWD, TMPDIR and HOME, which name
/// the working directory and the fresh scratch directory; a plain PATH where it has
/// none.
pub(crate) fn job_env(env: &[(String, String)], cwd: &str, scratch: &str) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = env.to_vec();
    env.retain(|(k, _)| !matches!(k.as_str(), "PWD" | "TMPDIR" | "HOME"));
    env.push(("PWD".into(), cwd.to_string()));
    env.push(("TMPDIR".into(), scratch.to_string()));
    env.push(("HOME".into(), scratch.to_string()));
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.push(("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()));
    }
    env
}

/// The path inside the job of `at`, a path under `root`.
fn in_job(root: &Path, at: &Path) -> String {
    let rel = at.strip_prefix(root).unwrap_or(Path::new(""));
    format!("/{}", rel.display())
}

/// Re-creates under `host` what the root holds under `dir`: directories and links as
/// they are, files copied. Without recursion: the root's directories nest as deep as
/// its paths allow (2000 levels in 4 KiB), what a job's sender chooses, and recursing
/// that deep overflows a runtime thread's stack (farmd aborts).
fn mirror(dir: &Path, host: &Path, copied: &mut u64) -> Result<(), String> {
    let mut todo = vec![(dir.to_path_buf(), host.to_path_buf())];
    while let Some((dir, host)) = todo.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for e in entries.flatten() {
            let from = e.path();
            let to = host.join(e.file_name());
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                std::fs::create_dir(&to).map_err(|e| format!("{}: {e}", to.display()))?;
                todo.push((from, to));
            } else if ft.is_symlink() {
                let t =
                    std::fs::read_link(&from).map_err(|e| format!("{}: {e}", from.display()))?;
                std::os::unix::fs::symlink(t, &to).map_err(|e| format!("{}: {e}", to.display()))?;
            } else {
                // A copy, never a link: the job may write here, and a link would write
                // through to the blob store. A bind mount per file would cost
                // bubblewrap a mount each (a source tree under /tmp holds hundreds).
                *copied +=
                    std::fs::copy(&from, &to).map_err(|e| format!("{}: {e}", to.display()))?;
                if *copied > MIRROR_MAX {
                    return Err(format!(
                        "output directories hold more than {MIRROR_MAX} bytes of inputs"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Reads the output at `rel` below the writable directory `base` (a directory this
/// node made), following no link on the way: the job ran with that directory writable
/// and may have turned any directory below it, or the file itself, into a link to a
/// file of this machine (its key), which farmd could read where the job cannot.
/// Only a regular file of at most `cap` bytes is read; with whether it is executable.
pub(crate) fn read_output_beneath(
    base: &Path,
    rel: &Path,
    cap: u64,
) -> std::io::Result<(Vec<u8>, bool)> {
    use std::ffi::CString;
    use std::io::Read as _;
    use std::os::fd::FromRawFd as _;
    use std::os::unix::ffi::OsStrExt as _;
    let cstr = |p: &std::ffi::OsStr| {
        CString::new(p.as_bytes()).map_err(|_| std::io::Error::other("NUL in a path"))
    };
    let open = |dir: libc::c_int, name: &CString, flags: libc::c_int| {
        // SAFETY: `name` is a valid C string; the result is checked.
        let fd = unsafe {
            libc::openat(
                dir,
                name.as_ptr(),
                flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor owned by nothing else.
        Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
    };
    use std::os::fd::AsRawFd as _;
    let names: Vec<&std::ffi::OsStr> = rel
        .components()
        .map(|c| match c {
            std::path::Component::Normal(n) => Ok(n),
            _ => Err(std::io::Error::other(format!(
                "output path {} is not plain",
                rel.display()
            ))),
        })
        .collect::<Result<_, _>>()?;
    let Some((file, dirs)) = names.split_last() else {
        return Err(std::io::Error::other("empty output path"));
    };
    let mut dir = open(
        libc::AT_FDCWD,
        &cstr(base.as_os_str())?,
        libc::O_RDONLY | libc::O_DIRECTORY,
    )?;
    for d in dirs {
        dir = open(
            dir.as_raw_fd(),
            &cstr(d)?,
            libc::O_RDONLY | libc::O_DIRECTORY,
        )?;
    }
    // O_NONBLOCK: a FIFO the job left there must not block farmd's open.
    let fd = open(
        dir.as_raw_fd(),
        &cstr(file)?,
        libc::O_RDONLY | libc::O_NONBLOCK,
    )?;
    let f = std::fs::File::from(fd);
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", base.join(rel).display()),
        ));
    }
    if meta.len() > cap {
        return Err(std::io::Error::other(TooLarge(format!(
            "{} is larger than {cap} bytes",
            base.join(rel).display()
        ))));
    }
    let mut data = Vec::with_capacity(meta.len() as usize);
    f.take(meta.len()).read_to_end(&mut data)?;
    use std::os::unix::fs::PermissionsExt as _;
    Ok((data, meta.permissions().mode() & 0o111 != 0))
}

/// Why an output was not read: larger than the room left ([`read_output_beneath`]).
#[derive(Debug)]
pub(crate) struct TooLarge(String);

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TooLarge {}

/// Whether `e` is [`read_output_beneath`]'s error for an output past its cap.
pub(crate) fn too_large(e: &std::io::Error) -> bool {
    e.get_ref().is_some_and(|i| i.is::<TooLarge>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_get_writable_directories_inside_the_root() {
        let d = tempfile::tempdir().unwrap();
        let mut root = Root::create(d.path()).unwrap();
        root.links(vec![("/w/up", "../../.."), ("/lib", "usr/lib")])
            .unwrap();
        let src = root.place(Path::new("/w/p/a.c")).unwrap();
        std::fs::write(&src, "int x;").unwrap();
        let outputs = [
            ("a.o".to_string(), PathBuf::from("/w/p/a.o")),
            ("dep".to_string(), PathBuf::from("/w/p/../../tmp/f.d")),
            ("up".to_string(), PathBuf::from("/w/up/lib/x.o")),
        ];
        let w = writable(&root.path, d.path(), &outputs).unwrap();
        let seen: Vec<&str> = w.rw.iter().map(|(_, dest)| dest.as_str()).collect();
        // /tmp holds the scratch directory and the depfile; a link leads back into the
        // root, through the root's own links.
        assert!(seen.contains(&"/tmp") && seen.contains(&"/w/p"), "{seen:?}");
        assert!(seen.contains(&"/usr/lib"), "{seen:?}");
        assert!(w.scratch.starts_with("/tmp/.farm-job-"));
        for (host, _) in &w.rw {
            assert!(host.starts_with(d.path()) && !host.starts_with(&root.path));
        }
        // What the root holds where an output goes is copied, not linked.
        let (host, rel) = &w.output_at["a.o"];
        assert_eq!(rel, Path::new("a.o"));
        assert_eq!(std::fs::read(host.join("a.c")).unwrap(), b"int x;");
        assert_eq!(w.output_at["dep"].1, Path::new("f.d"));
        let top = [("x".to_string(), PathBuf::from("/w/../x.o"))];
        assert!(writable(&root.path, &d.path().join("again"), &top).is_err());
    }

    #[test]
    fn an_output_directory_as_deep_as_paths_allow_is_mirrored() {
        let d = tempfile::tempdir().unwrap();
        let mut root = Root::create(d.path()).unwrap();
        let mut deep = String::from("/o");
        while root.path.as_os_str().len() + deep.len() + 2 < 4090 {
            deep.push_str("/a");
        }
        let end = root.place(Path::new(&format!("{deep}/h"))).unwrap();
        std::fs::write(end, "deep").unwrap();
        // On a thread with a runtime worker's stack (2 MiB): no overflow.
        let dir = d.path().to_path_buf();
        let made = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || {
                let outputs = [("x".to_string(), PathBuf::from("/o/x"))];
                writable(&root.path, &dir, &outputs).map(|w| w.output_at["x"].0.clone())
            })
            .unwrap()
            .join()
            .unwrap()
            .unwrap();
        let copy = made.join(format!("{}/h", &deep[3..]));
        assert_eq!(std::fs::read(copy).unwrap(), b"deep");
    }

    #[test]
    fn outputs_are_read_without_following_links_and_capped() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("sub/a.o"), b"obj").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("sub/l.o")).unwrap();
        std::os::unix::fs::symlink("sub", d.path().join("linked")).unwrap();
        let (data, exec) = read_output_beneath(d.path(), Path::new("sub/a.o"), 10).unwrap();
        assert_eq!((data.as_slice(), exec), (&b"obj"[..], false));
        assert!(read_output_beneath(d.path(), Path::new("sub/l.o"), 1 << 20).is_err());
        assert!(read_output_beneath(d.path(), Path::new("linked/a.o"), 1 << 20).is_err());
        let e = read_output_beneath(d.path(), Path::new("sub/a.o"), 2).unwrap_err();
        assert!(too_large(&e), "{e}");
    }
}
