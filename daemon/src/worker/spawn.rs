//! Running an allow-listed compiler for a job: in the sandbox with this node's job
//! limits, its outputs read with a cap, and its exit judged.

use std::path::Path;

use super::sandbox::{Limits, Run, Sandbox, View};
use crate::node::{AllowedCompiler, Node};

/// The limits of one job from farmd's configuration.
pub fn job_limits(cfg: &crate::config::DaemonConfig) -> Limits {
    Limits {
        cpu: cfg.job_timeout,
        memory: cfg.job_memory,
        file_size: cfg.job_file_size,
        output: cfg.job_output_max,
    }
}

/// Runs an allow-listed compiler in the sandbox with this node's job limits.
pub(super) async fn run_compiler(
    node: &Node,
    sandbox: &Sandbox,
    compiler: &AllowedCompiler,
    args: &[String],
    view: &View<'_>,
) -> Result<Run, String> {
    let limits = job_limits(&node.cfg);
    sandbox
        .run(&compiler.path, args, view, limits, node.cfg.job_timeout)
        .await
}

/// An exit code other than success or an ordinary compile error (a compiler crash, a
/// limit of the sandbox such as memory) is not passed on as the compile's result: the
/// client compiles at home instead, where the same compile may well succeed.
pub(super) fn abnormal(exit_code: i32) -> Option<String> {
    (!matches!(exit_code, 0 | 1)).then(|| format!("job ended with exit code {exit_code}"))
}

/// Reads a file the job wrote: a regular file reached without following a link, at
/// most `cap` bytes.
pub(crate) fn read_output(path: &Path, cap: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() || meta.len() > cap {
        return Err(std::io::Error::other(format!(
            "{} is not a regular file of at most {cap} bytes",
            path.display()
        )));
    }
    let mut data = Vec::with_capacity(meta.len() as usize);
    f.take(meta.len()).read_to_end(&mut data)?;
    Ok(data)
}
