//! Text jobs: one shipped source (gcc's preprocessed text) compiled in a private job
//! directory. The job names its input file and the files that come back; the family
//! module validates those names and the arguments and builds argv.

use std::path::Path;
use std::sync::atomic::Ordering;

use farm::lang::valid_output_role;
use farm::protocol::{Job, JobResult, OutputFile, PeerResponse, MAX_FRAME};

use super::sandbox::{Sandbox, View};
use super::spawn::{abnormal, read_output, run_compiler};
use super::{allowed, refuse, JobSlot, Refusal};
use crate::node::{AllowedCompiler, Node};

/// Most files a text job may name: its input and its outputs together.
const MAX_JOB_FILES: usize = 16;
/// The job directory's own temporary directory, which no job file may be.
const TMP: &str = "tmp";

/// A text job's file names: each one plain name in the job directory, none the
/// worker's own, none twice. Checked before anything touches the filesystem: a name
/// like `/etc/farm` would make `dir.join(name)` leave the job directory.
fn check_names(job: &Job) -> Result<(), String> {
    if job.outputs.len() >= MAX_JOB_FILES {
        return Err(format!("refused {} output files", job.outputs.len()));
    }
    let mut seen: Vec<&str> = Vec::with_capacity(job.outputs.len() + 1);
    for name in std::iter::once(&job.input).chain(&job.outputs) {
        if !valid_output_role(name) || name == TMP || seen.contains(&name.as_str()) {
            return Err(format!("refused file name {name:?}"));
        }
        seen.push(name);
    }
    Ok(())
}

/// Runs one text job for `peer`, or says why not.
pub async fn run(node: &Node, peer: &str, job: Job) -> PeerResponse {
    if node.stopping.load(Ordering::Relaxed) {
        return refuse(node, Refusal::Stopping, format!("{}: stopping", node.name));
    }
    let Some(family) = farm::lang::family_by_name(&job.family) else {
        return refuse(
            node,
            Refusal::Family,
            format!("unknown compiler family {:?}", job.family),
        );
    };
    let compiler = match allowed(node, &job.compiler) {
        Ok(c) => c,
        Err(why) => return refuse(node, Refusal::Compiler, why),
    };
    let Some(text_jobs) = family.text_jobs() else {
        return refuse(
            node,
            Refusal::Family,
            format!("refused family: {}", family.name()),
        );
    };
    if let Err(why) = check_names(&job) {
        return refuse(node, Refusal::Request, why);
    }
    let args = match text_jobs.worker_text_args(&job.input, &job.args, &job.outputs) {
        Ok(a) => a,
        Err(p) => {
            return refuse(
                node,
                Refusal::Arguments,
                format!("refused {}: {}", p.reason, p.detail),
            )
        }
    };
    // Shipped text is compiler input from someone we do not trust: directives that
    // make the compiler or assembler read files are refused (the sandbox would show
    // them nothing but the toolchain, but such a compile is not worth running here).
    if let Err(p) = text_jobs.worker_text_check(&job.source) {
        return refuse(
            node,
            Refusal::Arguments,
            format!("refused {}: {}", p.reason, p.detail),
        );
    }
    if let Err(why) = node.disk_room() {
        return refuse(node, Refusal::Disk, why);
    }
    let slot = match JobSlot::take(node, &job.family).await {
        Ok(s) => s,
        Err(why) => return refuse(node, Refusal::Busy, why),
    };
    let Some(sandbox) = &node.sandbox else {
        return refuse(
            node,
            Refusal::NoSandbox,
            format!("{}: no job sandbox", node.name),
        );
    };
    let result = run_in(node, sandbox, &compiler, &slot.dir, &job, &args).await;
    drop(slot);
    match result {
        Ok(r) => {
            node.jobs_served.fetch_add(1, Ordering::Relaxed);
            tracing::info!(peer, ms = r.compile_ms, exit = r.exit_code, "job done");
            PeerResponse::Done(r)
        }
        Err(why) => refuse(node, Refusal::Sandbox, why),
    }
}

/// Writes the job's text to its input file in `dir`, runs the compiler there and
/// reads back every output the job named (when it succeeded).
async fn run_in(
    node: &Node,
    sandbox: &Sandbox,
    compiler: &AllowedCompiler,
    dir: &Path,
    job: &Job,
    args: &[String],
) -> Result<JobResult, String> {
    let tmp = dir.join(TMP);
    tokio::fs::create_dir_all(&tmp)
        .await
        .map_err(|e| format!("{}: job directory {}: {e}", node.name, dir.display()))?;
    let input_path = dir.join(&job.input);
    tokio::fs::write(&input_path, &job.source)
        .await
        .map_err(|e| format!("{}: cannot write job input: {e}", node.name))?;
    let tmp_s = tmp.to_string_lossy().into_owned();
    let view = View {
        rw: &[dir],
        ro: &[&input_path],
        cwd: dir,
        env: &[
            ("PATH", "/usr/local/bin:/usr/bin:/bin"),
            ("TMPDIR", &tmp_s),
            ("LC_ALL", "C"),
        ],
        // Compilers of preprocessed text read nothing of /proc.
        proc: false,
    };
    let out = run_compiler(node, sandbox, compiler, args, &view)
        .await
        .map_err(|e| format!("{}: {e}", node.name))?;
    if let Some(why) = abnormal(out.exit_code) {
        return Err(format!("{}: {why}", node.name));
    }
    let compile_ms = out.elapsed.as_millis() as u64;
    let code = out.exit_code;
    let mut outputs = Vec::with_capacity(job.outputs.len());
    if code == 0 {
        let mut left = (MAX_FRAME - 4096) as u64;
        for name in &job.outputs {
            let data = read_output(&dir.join(name), left)
                .map_err(|e| format!("{}: output {name}: {e}", node.name))?;
            left -= data.len() as u64;
            outputs.push(OutputFile {
                path: name.clone(),
                data,
            });
        }
    }
    Ok(JobResult {
        exit_code: code,
        stdout: out.stdout,
        stderr: out.stderr,
        outputs,
        compile_ms,
        worker: node.name.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(input: &str, outputs: &[&str]) -> Job {
        Job {
            family: "gcc".into(),
            compiler: farm::protocol::CompilerAd {
                name: "gcc".into(),
                identity: [0; 32],
            },
            input: input.into(),
            args: Vec::new(),
            source: Vec::new(),
            outputs: outputs.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn job_file_names_stay_in_the_job_directory() {
        assert!(check_names(&job("job.i", &["job.o"])).is_ok());
        for (input, outputs) in [
            ("/etc/farm/node.key", &["job.o"][..]),
            ("job.i", &["/etc/farm/node.key"]),
            ("job.i", &["../job.o"]),
            ("job.i", &["a/b.o"]),
            ("job.i", &["."]),
            ("", &["job.o"]),
            ("tmp", &["job.o"]),
            ("job.i", &["tmp"]),
            ("job.i", &["job.i"]),
            ("job.i", &["job.o", "job.o"]),
        ] {
            assert!(
                check_names(&job(input, outputs)).is_err(),
                "{input:?} {outputs:?}"
            );
        }
        let many: Vec<String> = (0..MAX_JOB_FILES).map(|i| format!("o{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(check_names(&job("job.i", &many)).is_err());
    }
}
