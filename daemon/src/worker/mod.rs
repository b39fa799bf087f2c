//! The worker role: runs peers' jobs. It executes nothing it did not build itself:
//! the family module validates every argument and file name and builds argv, the
//! compiler is one of this node's allow-listed binaries matched by identity digest,
//! and it runs with a clean environment in a private job directory, inside the job
//! sandbox ([`sandbox`]): the job sees the toolchain and its own directory, its inputs
//! read-only.
//!
//! The worker knows job kinds, not compilers: a text job ([`text`]) is one shipped
//! source for a family with [`farm::lang::TextJobs`], a tree job ([`tree`]) an input
//! tree for a family with [`farm::lang::TreeJobs`], run in a warm compiler
//! (`crate::warm`) when the family has one. What to run and which files come back
//! are the job's and its family's to say.

mod paths;
pub(crate) mod root;
pub mod sandbox;
pub mod spawn;
mod text;
mod tree;

use std::sync::atomic::Ordering;

use farm::protocol::PeerResponse;

use crate::node::{AllowedCompiler, Node};

pub use paths::run_paths;
pub use text::run;
pub use tree::run_tree;

/// Why a worker refused a job: the `reason` label of `farm_refusals_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// farmd is stopping.
    Stopping,
    /// A family this node does not know, or one without this kind of job.
    Family,
    /// A compiler not on this node's allow-list (by name and identity).
    Compiler,
    /// The job's arguments broke the family's rules.
    Arguments,
    /// A malformed job: file names, output roles, paths.
    Request,
    /// A toolchain this node will not run (`accept_toolchains = false`).
    Toolchain,
    /// The queue is full.
    Busy,
    /// This node has no job sandbox.
    NoSandbox,
    /// The job's inputs could not be laid out.
    Inputs,
    /// No warm compiler could be had.
    Warm,
    /// The sandboxed compile did not end normally (limits, signals, deadline).
    Sandbox,
    /// The outputs could not be read back, or are too large.
    Outputs,
    /// `state_dir`'s disk is full (less than [`MIN_FREE`] available), or a peer's
    /// blobs could not be stored.
    Disk,
}

/// Bytes a worker wants free on `state_dir`'s file system to take a job: a job's
/// inputs, its outputs and the compiler's temporary files, for any ordinary compile.
pub(crate) const MIN_FREE: u64 = 16 << 20;

/// Bytes available to farmd on the file system holding `dir`; `None` when it cannot
/// be asked (then nobody is refused for it).
pub(crate) fn free_bytes(dir: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: a NUL-terminated path and a buffer statvfs fills on success.
    let r = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if r != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled the buffer.
    let st = unsafe { st.assume_init() };
    // A file system that reports no size at all (some FUSE and pseudo file systems,
    // tmpfs with size=0) says nothing about its room: never call it full.
    if st.f_blocks == 0 {
        return None;
    }
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

impl Refusal {
    pub(crate) const ALL: [Refusal; 13] = [
        Refusal::Stopping,
        Refusal::Family,
        Refusal::Compiler,
        Refusal::Arguments,
        Refusal::Request,
        Refusal::Toolchain,
        Refusal::Busy,
        Refusal::NoSandbox,
        Refusal::Inputs,
        Refusal::Warm,
        Refusal::Sandbox,
        Refusal::Outputs,
        Refusal::Disk,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Refusal::Stopping => "stopping",
            Refusal::Family => "family",
            Refusal::Compiler => "compiler",
            Refusal::Arguments => "arguments",
            Refusal::Request => "request",
            Refusal::Toolchain => "toolchain",
            Refusal::Busy => "busy",
            Refusal::NoSandbox => "no_sandbox",
            Refusal::Inputs => "inputs",
            Refusal::Warm => "warm",
            Refusal::Sandbox => "sandbox",
            Refusal::Outputs => "outputs",
            Refusal::Disk => "disk",
        }
    }
}

pub(crate) fn refuse(node: &Node, kind: Refusal, why: String) -> PeerResponse {
    node.jobs_refused.fetch_add(1, Ordering::Relaxed);
    crate::metrics::get().count_refusal(kind.name());
    tracing::warn!(reason = %why, kind = kind.name(), "job refused");
    PeerResponse::Refused(why)
}

/// One of farmd's job slots, held for one job (a peer's, or a REAPI lease), with
/// its private job directory (not made yet); both are given back on drop.
pub(crate) struct JobSlot<'a> {
    node: &'a Node,
    _permit: tokio::sync::OwnedSemaphorePermit,
    pub dir: std::path::PathBuf,
}

impl<'a> JobSlot<'a> {
    /// Slots cap concurrent jobs; a long queue is refused so the client goes elsewhere
    /// (`family`: the label of the wait in `farm_queue_seconds`).
    pub(crate) async fn take(node: &'a Node, family: &str) -> Result<JobSlot<'a>, String> {
        let t0 = std::time::Instant::now();
        let waiting = node.queue.fetch_add(1, Ordering::Relaxed);
        if waiting >= node.cfg.slots * 2 {
            node.queue.fetch_sub(1, Ordering::Relaxed);
            return Err(format!("{}: queue full", node.name));
        }
        let permit = node.slots.clone().acquire_owned().await;
        node.queue.fetch_sub(1, Ordering::Relaxed);
        crate::metrics::get().observe_queue(family, t0.elapsed());
        let Ok(permit) = permit else {
            return Err(format!("{}: stopping", node.name));
        };
        node.running.fetch_add(1, Ordering::Relaxed);
        node.changed.notify_one();
        let seq = node.job_seq.fetch_add(1, Ordering::Relaxed);
        let dir = node
            .cfg
            .state_dir
            .join("jobs")
            .join(format!("{}-{seq}", std::process::id()));
        Ok(JobSlot {
            node,
            _permit: permit,
            dir,
        })
    }
}

impl Drop for JobSlot<'_> {
    fn drop(&mut self) {
        remove_job_dir(&self.dir);
        self.node.running.fetch_sub(1, Ordering::Relaxed);
        self.node.changed.notify_one();
    }
}

/// Removes a job's directory, also where the job took the permissions off a directory
/// it made (`chmod 000`: a plain removal would leave it, and its files, on the disk
/// for good). Links are never followed.
pub(crate) fn remove_job_dir(dir: &std::path::Path) {
    if std::fs::remove_dir_all(dir).is_ok() || !dir.exists() {
        return;
    }
    fn open_up(d: &std::path::Path) {
        use std::os::unix::fs::PermissionsExt as _;
        let _ = std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700));
        let Ok(entries) = std::fs::read_dir(d) else {
            return;
        };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                open_up(&e.path());
            }
        }
    }
    open_up(dir);
    if let Err(e) = std::fs::remove_dir_all(dir) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a job directory");
    }
}

/// The allow-listed compiler a job names, by name and identity.
fn allowed(node: &Node, ad: &farm::protocol::CompilerAd) -> Result<AllowedCompiler, String> {
    node.compilers
        .iter()
        .find(|c| c.identity == ad.identity && c.name == ad.name)
        .cloned()
        .ok_or_else(|| {
            format!(
                "compiler {:?} with identity {} is not allowed on {}",
                ad.name,
                farm::fsutil::hex(&ad.identity[..8]),
                node.name
            )
        })
}

#[cfg(test)]
mod tests {
    use super::free_bytes;
    use std::path::Path;

    /// A file system without a size (procfs reports 0 blocks) is not "full".
    #[test]
    fn a_file_system_without_a_size_is_never_full() {
        assert_eq!(free_bytes(Path::new("/proc")), None);
        assert!(free_bytes(Path::new("/")).is_some_and(|b| b > 0));
        assert_eq!(free_bytes(Path::new("/nonexistent/farm")), None);
    }
}
