//! Toolchains this node runs same-path jobs with: the packages of its own allow-listed
//! compilers (their files served from where they are installed, never copied into
//! the blob store), and packages peers send (their files arrive as blobs). A package
//! is laid out once per digest under `<state>/toolchains/<hex>/`, each file by its
//! index, executable where the package says, and hard-linked into each job's root.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use farm::protocol::{Key, ToolEntry, ToolKind, Toolchain};

use crate::blobs::BlobStore;

pub struct Toolchains {
    dir: PathBuf,
    /// Bytes of toolchain files kept; past it the oldest go (a quarter of
    /// `store_max_size`): a member sending package after package cannot fill the disk.
    cap: u64,
    memo: PathBuf,
    /// Files of this node's own packages by digest: where they are installed.
    own_files: Mutex<HashMap<Key, PathBuf>>,
    /// Digests of this node's own packages.
    own: Mutex<Vec<Key>>,
    /// Every entry of this node's own packages (path and content, or link target), and
    /// the drivers: what a package from a peer may be made of when peers' packages
    /// are not accepted.
    own_entries: Mutex<HashSet<ToolEntry>>,
    own_drivers: Mutex<HashSet<String>>,
    /// Whether packages from peers are run (`accept_toolchains`).
    pub accept: bool,
}

impl Toolchains {
    pub fn new(state_dir: &Path, accept: bool, cap: u64) -> Toolchains {
        Toolchains {
            dir: state_dir.join("toolchains"),
            cap,
            memo: state_dir.join("memo"),
            own_files: Mutex::new(HashMap::new()),
            own: Mutex::new(Vec::new()),
            own_entries: Mutex::new(HashSet::new()),
            own_drivers: Mutex::new(HashSet::new()),
            accept,
        }
    }

    /// Builds the package of each allow-listed compiler of a family with same-path
    /// jobs (`(family, compiler path, name)`), so that jobs naming them need no files
    /// sent. Run off the async threads: it hashes the compilers' files.
    pub fn add_own(&self, compilers: &[(&'static dyn farm::lang::Family, PathBuf, String)]) {
        // Low priority: this runs while the node already serves jobs, and most of the
        // names (gcc, gcc-12, cc, c99, x86_64-linux-gnu-gcc-12, ...) are one compiler,
        // whose programs are asked once.
        // SAFETY: setpriority on this thread only (a tid is a process id to it).
        unsafe {
            libc::setpriority(libc::PRIO_PROCESS, 0, 19);
        }
        let mut files_of: HashMap<PathBuf, Vec<PathBuf>> = HashMap::new();
        for (family, path, _name) in compilers {
            let Some(pj) = family.path_jobs() else {
                continue;
            };
            let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
            let files = match files_of.get(&canonical) {
                Some(f) => f.clone(),
                None => match pj.toolchain_files(path, path.as_os_str()) {
                    Ok(f) => {
                        files_of.insert(canonical, f.clone());
                        f
                    }
                    Err(e) => {
                        tracing::warn!(compiler = %path.display(), error = %e, "no toolchain package");
                        continue;
                    }
                },
            };
            let memo = &self.memo;
            let mut hash = |p: &Path| farm::digest::digest_memo(p, memo);
            match farm::toolchain::build(path, &files, &mut hash) {
                Ok(t) => {
                    let mut own_files = self.own_files.lock().unwrap();
                    for e in &t.entries {
                        if let ToolKind::File { digest, .. } = &e.kind {
                            own_files.insert(*digest, PathBuf::from(&e.path));
                        }
                    }
                    self.own_entries
                        .lock()
                        .unwrap()
                        .extend(t.entries.iter().cloned());
                    self.own_drivers.lock().unwrap().insert(t.driver.clone());
                    let d = farm::toolchain::digest(&t);
                    tracing::info!(compiler = %path.display(), toolchain = %farm::fsutil::hex(&d[..8]), files = t.entries.len(), "toolchain package");
                    self.own.lock().unwrap().push(d);
                }
                Err(e) => {
                    tracing::warn!(compiler = %path.display(), error = %e, "no toolchain package")
                }
            }
        }
    }

    /// Whether this node may run a job on this package: any package when it accepts
    /// them, else one made only of its own compilers' entries, each at the path it has
    /// here (the same file, executable or not, or the same link), driven by one of its
    /// own drivers. Content alone is not enough: this machine's loader at a
    /// compiler's path, or a link named `gcc` to it, runs whatever file it is given.
    pub fn runs(&self, t: &Toolchain, digest: &Key) -> bool {
        if self.accept || self.own.lock().unwrap().contains(digest) {
            return true;
        }
        let own = self.own_entries.lock().unwrap();
        self.own_drivers.lock().unwrap().contains(&t.driver)
            && t.entries.iter().all(|e| own.contains(e))
    }

    /// Whether this node has a blob's content without the blob store (a file of its
    /// own toolchains).
    pub fn has_file(&self, digest: &Key) -> bool {
        self.own_files.lock().unwrap().contains_key(digest)
    }

    /// A file of this node's own toolchains by digest, read and checked.
    pub fn file(&self, digest: &Key) -> Option<Vec<u8>> {
        let path = self.own_files.lock().unwrap().get(digest).cloned()?;
        let data = farm::fsutil::read_file(&path).ok()?;
        (*blake3::hash(&data).as_bytes() == *digest).then_some(data)
    }

    /// Where the content `digest` lies as a file of a toolchain (`exec`: mode 0555,
    /// else 0444), made from this node's own file or the blob store the first time.
    /// Files are kept by content, so packages that differ in one file (the loader's
    /// cache) share the rest.
    pub fn file_at(&self, digest: &Key, exec: bool, blobs: &BlobStore) -> Result<PathBuf, String> {
        self.kept(digest, exec, |tmp| {
            let own = self.own_files.lock().unwrap().get(digest).cloned();
            // Own files are copied as they stream (a compiler's 30 MB program is never
            // held), then checked; the blob store's are checked already. Why a copy
            // failed (a full disk) is the job's refusal if no blob stands in.
            let mut copy_failed = None;
            let copied = own.is_some_and(|p| match std::fs::copy(&p, tmp) {
                Ok(_) => farm::fsutil::hash_file(tmp).ok().as_ref() == Some(digest),
                Err(e) => {
                    copy_failed = Some(format!(
                        ": copying {} to {}: {e}",
                        p.display(),
                        self.dir.display()
                    ));
                    false
                }
            });
            if !copied {
                let data = blobs.get(digest).ok_or_else(|| {
                    format!(
                        "toolchain file {} is missing{}",
                        farm::fsutil::hex(&digest[..8]),
                        copy_failed.as_deref().unwrap_or_default()
                    )
                })?;
                std::fs::write(tmp, &data).map_err(|e| format!("{}: {e}", tmp.display()))?;
            }
            Ok(())
        })
    }

    /// Links the kept file of `digest` (made where missing) at `dest`. A concurrent
    /// job's trim may remove the kept file between the two steps: then it is laid out
    /// again, once.
    pub fn link_at(
        &self,
        digest: &Key,
        exec: bool,
        blobs: &BlobStore,
        dest: &Path,
    ) -> Result<(), String> {
        let link = |kept: PathBuf| {
            std::fs::hard_link(&kept, dest).map_err(|e| {
                (
                    e.kind(),
                    format!("{} → {}: {e}", kept.display(), dest.display()),
                )
            })
        };
        match link(self.file_at(digest, exec, blobs)?) {
            Err((std::io::ErrorKind::NotFound, _)) => {
                link(self.file_at(digest, exec, blobs)?).map_err(|(_, e)| e)
            }
            linked => linked.map_err(|(_, e)| e),
        }
    }

    /// [`Toolchains::file_at`] for a content at hand (checked by the caller against
    /// another digest: a REAPI input's SHA-256), kept as a toolchain file is.
    pub fn keep(&self, digest: &Key, exec: bool, data: &[u8]) -> Result<PathBuf, String> {
        self.kept(digest, exec, |tmp| {
            std::fs::write(tmp, data).map_err(|e| format!("{}: {e}", tmp.display()))
        })
    }

    /// The kept file of `digest`, made by `fill` (which writes the content to the
    /// path it is given) where it is not kept yet.
    fn kept(
        &self,
        digest: &Key,
        exec: bool,
        fill: impl FnOnce(&Path) -> Result<(), String>,
    ) -> Result<PathBuf, String> {
        let at = self.dir.join(format!(
            "{}-{}",
            farm::fsutil::hex(digest),
            if exec { "x" } else { "r" }
        ));
        if at.is_file() {
            return Ok(at);
        }
        std::fs::create_dir_all(&self.dir).map_err(|e| format!("{}: {e}", self.dir.display()))?;
        // Jobs of this process keep files at once: the counter, not the clock (coarse
        // on some machines), keeps their names apart.
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let tmp = self.dir.join(format!(
            ".{}-{}-{}-{}",
            farm::fsutil::hex(&digest[..8]),
            std::process::id(),
            farm::fsutil::now_ns(),
            SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let made = fill(&tmp).and_then(|()| {
            use std::os::unix::fs::PermissionsExt;
            let mode = if exec { 0o555 } else { 0o444 };
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
                .map_err(|e| format!("{}: {e}", tmp.display()))
        });
        if let Err(e) = made {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        // Never over a file kept already (by a job laying out the same toolchain at
        // once): a rename would drop the inode that job is linking (its link fails
        // ENOENT). The content is the same, by digest.
        let linked = std::fs::hard_link(&tmp, &at);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => self.trim(&at),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("{}: {e}", at.display())),
        }
        Ok(at)
    }

    /// Removes the oldest toolchain files (by when they were laid out) until the kept
    /// ones fit the cap, never `keep` (the file just made). A job that links a removed
    /// file keeps its content through its own link; a later job lays it out again.
    fn trim(&self, keep: &Path) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut files: Vec<(std::time::SystemTime, u64, PathBuf)> = entries
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .filter_map(|e| {
                let m = e.metadata().ok().filter(|m| m.is_file())?;
                Some((m.modified().ok()?, m.len(), e.path()))
            })
            .collect();
        let mut total: u64 = files.iter().map(|(_, len, _)| len).sum();
        if total <= self.cap {
            return;
        }
        files.sort();
        for (_, len, path) in files {
            if total <= self.cap {
                break;
            }
            if path == keep {
                continue;
            }
            if std::fs::remove_file(&path).is_ok() {
                total = total.saturating_sub(len);
                tracing::info!(file = %path.display(), "toolchain file trimmed");
            }
        }
    }
}

/// What an executor reads the blobs of a job from: the blob store, and this node's
/// own toolchain files.
pub struct JobBlobs<'a> {
    pub blobs: &'a BlobStore,
    pub toolchains: &'a Toolchains,
}

impl crate::exec::BlobSource for JobBlobs<'_> {
    fn blob(&self, digest: &[u8; 32]) -> Option<Vec<u8>> {
        self.blobs
            .get(digest)
            .or_else(|| self.toolchains.file(digest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Puts `data` in the blob store; its digest.
    fn stored(blobs: &BlobStore, data: &[u8]) -> Key {
        let digest = *blake3::hash(data).as_bytes();
        blobs
            .put(&[farm::protocol::Blob {
                digest,
                data: data.to_vec(),
            }])
            .unwrap();
        digest
    }

    #[test]
    fn kept_toolchain_files_stay_within_the_cap() {
        let d = tempfile::tempdir().unwrap();
        let blobs = BlobStore::new(d.path(), 64 << 20);
        let t = Toolchains::new(d.path(), true, 3 << 20);
        let mut laid = Vec::new();
        for i in 0..5u8 {
            let data = vec![i; 1 << 20];
            let digest = stored(&blobs, &data);
            let at = t.file_at(&digest, i % 2 == 0, &blobs).unwrap();
            assert_eq!(std::fs::read(&at).unwrap(), data);
            laid.push(at);
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let kept: Vec<&PathBuf> = laid.iter().filter(|p| p.exists()).collect();
        assert_eq!(kept.len(), 3, "{kept:?}");
        // The oldest went, the newest stayed.
        assert!(!laid[0].exists() && laid[4].exists());
    }

    #[test]
    fn contents_at_hand_are_kept_as_toolchain_files() {
        let d = tempfile::tempdir().unwrap();
        let blobs = BlobStore::new(d.path(), 64 << 20);
        let t = Toolchains::new(d.path(), true, 64 << 20);
        let data = b"#define K 7\n".to_vec();
        let digest = *blake3::hash(&data).as_bytes();
        let at = t.keep(&digest, true, &data).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&at).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o555);
        // Found again without the blob store; not as another mode.
        assert_eq!(t.file_at(&digest, true, &blobs).unwrap(), at);
        assert!(t.file_at(&digest, false, &blobs).is_err());
    }

    /// Jobs that start together lay out the same toolchain file at once; a job that
    /// found it kept must be able to link it while another finishes making it (a
    /// rename over it dropped the inode being linked: ENOENT, the job refused).
    #[test]
    fn a_file_kept_twice_at_once_stays_linkable() {
        let d = tempfile::tempdir().unwrap();
        let t = Toolchains::new(&d.path().join("state"), true, 1 << 30);
        let data = vec![7u8; 256 << 10];
        let digest = *blake3::hash(&data).as_bytes();
        for round in 0..300 {
            let at = t.dir.join(format!("{}-x", farm::fsutil::hex(&digest)));
            let _ = std::fs::remove_file(&at);
            std::thread::scope(|s| {
                for job in 0..3 {
                    let (t, data, d) = (&t, &data, d.path());
                    s.spawn(move || {
                        let dest = d.join(format!("job-{round}-{job}"));
                        let file = t.keep(&digest, true, data).unwrap();
                        std::fs::hard_link(&file, &dest)
                            .unwrap_or_else(|e| panic!("round {round}, job {job}: {e}"));
                        use std::os::unix::fs::PermissionsExt as _;
                        let mode = std::fs::metadata(&dest).unwrap().permissions().mode();
                        assert_eq!(mode & 0o777, 0o555);
                        assert!(std::fs::read(&dest).unwrap() == *data);
                        std::fs::remove_file(dest).unwrap();
                    });
                }
            });
        }
    }

    /// A kept file removed (by a trim) before a job links it is laid out again.
    #[test]
    fn link_at_lays_out_a_trimmed_file_again() {
        let d = tempfile::tempdir().unwrap();
        let blobs = BlobStore::new(d.path(), 64 << 20);
        let t = Toolchains::new(&d.path().join("state"), true, 64 << 20);
        let data = b"int cc1;\n".to_vec();
        let digest = stored(&blobs, &data);
        let kept = t.file_at(&digest, false, &blobs).unwrap();
        std::fs::remove_file(&kept).unwrap();
        let dest = d.path().join("cc1");
        t.link_at(&digest, false, &blobs, &dest).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), data);
        // A destination that cannot be made names both files.
        let e = t
            .link_at(&digest, false, &blobs, &d.path().join("no/dir/cc1"))
            .unwrap_err();
        assert!(
            e.contains(&kept.display().to_string()) && e.contains("no/dir/cc1"),
            "{e}"
        );
    }

    #[test]
    fn an_own_file_that_cannot_be_copied_says_why() {
        // A full disk under `state_dir` fails the copy of a compiler's own file; the
        // job's refusal (and farmd's log) must say so, not only "missing".
        let d = tempfile::tempdir().unwrap();
        let blobs = BlobStore::new(d.path(), 64 << 20);
        let t = Toolchains::new(&d.path().join("state"), true, 64 << 20);
        let digest = [9u8; 32];
        // A directory where the compiler's file was: the copy fails, as on ENOSPC.
        t.own_files
            .lock()
            .unwrap()
            .insert(digest, d.path().to_path_buf());
        let e = t.file_at(&digest, true, &blobs).unwrap_err();
        assert!(e.contains("is missing: copying"), "{e}");
        assert!(e.contains(&d.path().display().to_string()), "{e}");
    }
}
