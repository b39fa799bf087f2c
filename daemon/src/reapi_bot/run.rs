//! One lease: the Action it carries becomes a job directory (the input root laid out
//! from the CAS), the Command runs in farmd's job sandbox when its program is on this
//! node's allow-list, and the outputs go back to the CAS as an ActionResult. Whoever
//! can submit to the REAPI service chooses the Command, so everything about it is
//! checked: the program (fail closed), every path (relative, no `..`, no links
//! followed on this side), every size.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use bazel_remote_apis::build::bazel::remote::execution::v2::{
    Action, ActionResult, Command, Digest, Directory, DirectoryNode, ExecutedActionMetadata,
    FileNode, OutputDirectory, OutputFile, OutputSymlink, Tree,
};
use bazel_remote_apis::google::protobuf::{Any, Timestamp};
use prost::Message as _;

use super::cas::{sha256_digest, show, Cas};
use super::input::{lay_out, MAX_INPUT_BLOB};
use super::proto::unpack;
use super::rootfs;
use crate::node::Node;
use crate::worker::sandbox::{MappedView, Run, Sandbox};
use crate::worker::JobSlot;

pub const ACTION: &str = "build.bazel.remote.execution.v2.Action";
const DIGEST: &str = "build.bazel.remote.execution.v2.Digest";

/// Where the job sees its input root and its temporary directory: the same on every
/// worker, so that outputs that record paths (`-g`) do not differ by worker or run.
const JOB_ROOT: &str = "/reapi/root";
const JOB_TMP: &str = "/reapi/tmp";
/// Actions, Commands and Directories are small messages.
pub const MAX_MESSAGE: u64 = 4 << 20;
/// Bytes of outputs of one action, all together (read into memory to upload).
pub const MAX_OUTPUT_BYTES: u64 = 2 << 30;

/// `google.rpc.Code`s a lease can end with.
pub mod code {
    pub const OK: i32 = 0;
    pub const INVALID_ARGUMENT: i32 = 3;
    pub const DEADLINE_EXCEEDED: i32 = 4;
    pub const RESOURCE_EXHAUSTED: i32 = 8;
    pub const FAILED_PRECONDITION: i32 = 9;
    pub const INTERNAL: i32 = 13;
    pub const UNAVAILABLE: i32 = 14;

    /// The metric label of a code this bot fails a lease with.
    pub fn name(code: i32) -> &'static str {
        match code {
            INVALID_ARGUMENT => "invalid_argument",
            DEADLINE_EXCEEDED => "deadline_exceeded",
            RESOURCE_EXHAUSTED => "resource_exhausted",
            FAILED_PRECONDITION => "failed_precondition",
            UNAVAILABLE => "unavailable",
            _ => "internal",
        }
    }
}

/// Why a lease did not produce an ActionResult: a `google.rpc.Code` and a message.
#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    pub message: String,
}

pub fn fail(code: i32, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
    }
}

/// A CAS error: a blob the CAS lacks is the client's to fix (FAILED_PRECONDITION,
/// per the REAPI), anything else is worth a retry elsewhere.
pub fn cas_fail(e: String) -> Failure {
    let code = if e.contains("missing") || e.contains("not found") || e.contains("Not found") {
        code::FAILED_PRECONDITION
    } else {
        code::UNAVAILABLE
    };
    fail(code, e)
}

/// What running a lease's Command left: its outputs in `result`, their blobs, how
/// it ran, and when it fetched and ran (fetch start and end, run start and end).
pub struct Ran {
    pub result: ActionResult,
    pub blobs: Vec<(Digest, Vec<u8>)>,
    pub run: Run,
    pub times: [SystemTime; 4],
}

/// A sandbox that could not run the job to its end.
pub fn sandbox_fail(node: &Node, why: String) -> Failure {
    let code = if why.contains("ran past") {
        code::DEADLINE_EXCEEDED
    } else {
        code::RESOURCE_EXHAUSTED
    };
    fail(code, format!("farmd {}: sandbox: {why}", node.name))
}

/// The lease's outcome to report: an ActionResult (any exit code) or a failure.
pub async fn run_lease(
    node: &Node,
    cas: &Cas,
    bot_id: &str,
    payload: Option<&Any>,
) -> Result<ActionResult, Failure> {
    let start = SystemTime::now();
    let payload = payload.ok_or_else(|| fail(code::INVALID_ARGUMENT, "lease has no payload"))?;
    let action: Action = match unpack(payload, ACTION) {
        Some(a) => a,
        None => {
            let d: Digest = unpack(payload, DIGEST).ok_or_else(|| {
                fail(
                    code::INVALID_ARGUMENT,
                    format!("lease payload is a {:?}, not an Action", payload.type_url),
                )
            })?;
            let bytes = cas.read_one(&d, MAX_MESSAGE).await.map_err(cas_fail)?;
            Action::decode(bytes.as_slice())
                .map_err(|e| fail(code::INVALID_ARGUMENT, format!("Action {}: {e}", show(&d))))?
        }
    };
    let cmd_digest = action
        .command_digest
        .as_ref()
        .ok_or_else(|| fail(code::INVALID_ARGUMENT, "Action has no command_digest"))?;
    let bytes = cas
        .read_one(cmd_digest, MAX_MESSAGE)
        .await
        .map_err(cas_fail)?;
    let command = Command::decode(bytes.as_slice()).map_err(|e| {
        fail(
            code::INVALID_ARGUMENT,
            format!("Command {}: {e}", show(cmd_digest)),
        )
    })?;
    if command.arguments.is_empty() {
        return Err(fail(code::INVALID_ARGUMENT, "Command has no arguments"));
    }
    let root_digest = action
        .input_root_digest
        .clone()
        .ok_or_else(|| fail(code::INVALID_ARGUMENT, "Action has no input_root_digest"))?;
    // Fail closed, before anything is fetched or laid out. The Command's platform is
    // what clients before REAPI 2.2 set (deprecated since, still sent).
    #[allow(deprecated)]
    let platforms = [action.platform.as_ref(), command.platform.as_ref()];
    let layout = if rootfs::wanted(&platforms)? {
        Layout::Rootfs(rootfs::check(node, &command)?)
    } else {
        Layout::Mapped(check_mapped(node, &command)?)
    };
    let sandbox = node.sandbox.as_ref().ok_or_else(|| {
        fail(
            code::FAILED_PRECONDITION,
            format!("farmd {} has no job sandbox", node.name),
        )
    })?;
    let env = environment(&command)?;
    let deadline = action
        .timeout
        .as_ref()
        .filter(|t| t.seconds > 0 || t.nanos > 0)
        .map(|t| {
            Duration::new(
                t.seconds.max(0) as u64,
                t.nanos.clamp(0, 999_999_999) as u32,
            )
        })
        .map_or(node.cfg.job_timeout, |t| t.min(node.cfg.job_timeout));
    let job = JobSlot::take(node, "reapi").await.map_err(unavailable)?;
    let lease = Lease {
        sandbox,
        command: &command,
        env,
        root_digest: &root_digest,
        dir: &job.dir,
        deadline,
    };
    let ran = match layout {
        Layout::Rootfs(checked) => rootfs::run(node, cas, lease, checked).await?,
        Layout::Mapped(checked) => run_mapped(node, cas, lease, checked).await?,
    };
    let Ran {
        mut result,
        mut blobs,
        run,
        times: [fetch_start, fetch_done, exec_start, exec_done],
    } = ran;
    result.exit_code = run.exit_code;
    let out_d = sha256_digest(&run.stdout);
    let err_d = sha256_digest(&run.stderr);
    blobs.push((out_d.clone(), run.stdout));
    blobs.push((err_d.clone(), run.stderr));
    result.stdout_digest = Some(out_d);
    result.stderr_digest = Some(err_d);
    let upload_start = SystemTime::now();
    cas.write_many(blobs)
        .await
        .map_err(|e| fail(code::UNAVAILABLE, e))?;
    result.execution_metadata = Some(ExecutedActionMetadata {
        worker: bot_id.to_string(),
        worker_start_timestamp: Some(ts(start)),
        input_fetch_start_timestamp: Some(ts(fetch_start)),
        input_fetch_completed_timestamp: Some(ts(fetch_done)),
        execution_start_timestamp: Some(ts(exec_start)),
        execution_completed_timestamp: Some(ts(exec_done)),
        output_upload_start_timestamp: Some(ts(upload_start)),
        output_upload_completed_timestamp: Some(ts(SystemTime::now())),
        worker_completed_timestamp: Some(ts(SystemTime::now())),
        ..Default::default()
    });
    Ok(result)
}

fn unavailable(why: String) -> Failure {
    fail(code::UNAVAILABLE, why)
}

/// A checked lease to run: the sandbox, its Command and environment, its input root,
/// the job directory it runs in, its deadline.
pub struct Lease<'a> {
    pub sandbox: &'a Sandbox,
    pub command: &'a Command,
    pub env: Vec<(String, String)>,
    pub root_digest: &'a Digest,
    pub dir: &'a Path,
    pub deadline: Duration,
}

/// How a lease is laid out and run, as checked before anything is fetched.
enum Layout {
    /// The default: the input root at [`JOB_ROOT`], an allow-listed program.
    Mapped(Mapped),
    /// `farm-layout=rootfs`: the input root as `/` ([`rootfs`]).
    Rootfs(rootfs::Checked),
}

/// What a default-layout Command runs, checked before anything is fetched: the
/// allow-listed program, the working directory, the outputs.
struct Mapped {
    program: PathBuf,
    working_dir: PathBuf,
    outputs: Vec<(PathBuf, OutputKind)>,
}

fn check_mapped(node: &Node, command: &Command) -> Result<Mapped, Failure> {
    let program = allowed_program(node, &command.arguments[0])?;
    let working_dir = relative(&command.working_directory, true)
        .ok_or_else(|| bad_path("working_directory", &command.working_directory))?;
    Ok(Mapped {
        program,
        working_dir,
        outputs: output_list(command)?,
    })
}

/// The allow-listed compiler a default-layout Command runs (by path, or by name).
fn allowed_program(node: &Node, program: &str) -> Result<PathBuf, Failure> {
    node.compilers
        .iter()
        .find(|c| {
            if program.contains('/') {
                c.path == Path::new(program)
            } else {
                c.name == *program
            }
        })
        .map(|c| c.path.clone())
        .ok_or_else(|| {
            fail(
                code::FAILED_PRECONDITION,
                format!(
                    "program {program:?} is not on the allow-list (`compilers`) of farmd {}",
                    node.name
                ),
            )
        })
}

/// The default layout: the input root at [`JOB_ROOT`] beside this machine's
/// toolchain, `program` an allow-listed compiler.
async fn run_mapped(
    node: &Node,
    cas: &Cas,
    lease: Lease<'_>,
    checked: Mapped,
) -> Result<Ran, Failure> {
    let Lease {
        sandbox,
        command,
        mut env,
        root_digest,
        dir,
        deadline,
    } = lease;
    let Mapped {
        program,
        working_dir,
        outputs,
    } = checked;
    let root = dir.join("root");
    let tmp = dir.join("tmp");
    for d in [&root, &tmp] {
        std::fs::create_dir_all(d)
            .map_err(|e| fail(code::INTERNAL, format!("{}: {e}", d.display())))?;
    }
    let fetch_start = SystemTime::now();
    let blob_cap = node.cfg.job_file_size.min(MAX_INPUT_BLOB);
    lay_out(cas, root_digest, &root, blob_cap).await?;
    let fetch_done = SystemTime::now();
    mkdirs_beneath(&root, &working_dir)?;
    for (path, _) in &outputs {
        if let Some(parent) = working_dir.join(path).parent() {
            mkdirs_beneath(&root, parent)?;
        }
    }

    // The job sees its input root and temporary directory at fixed paths.
    let cwd = Path::new(JOB_ROOT).join(&working_dir);
    let cwd = cwd
        .to_str()
        .ok_or_else(|| bad_path("working_directory", &command.working_directory))?;
    if !env.iter().any(|(k, _)| k == "TMPDIR") {
        env.push(("TMPDIR".into(), JOB_TMP.into()));
    }
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let view = MappedView {
        rw: &[(&root, JOB_ROOT), (&tmp, JOB_TMP)],
        cwd,
        env: &env_ref,
    };
    let limits = crate::worker::spawn::job_limits(&node.cfg);
    let exec_start = SystemTime::now();
    let run = sandbox
        .run_mapped(&program, &command.arguments[1..], &view, limits, deadline)
        .await
        .map_err(|why| sandbox_fail(node, why))?;
    let exec_done = SystemTime::now();

    let mut result = ActionResult::default();
    let mut blobs: Vec<(Digest, Vec<u8>)> = Vec::new();
    let mut left = MAX_OUTPUT_BYTES;
    for (path, kind) in &outputs {
        collect(
            &root,
            &working_dir,
            path,
            *kind,
            &mut left,
            &mut result,
            &mut blobs,
        )?;
    }
    Ok(Ran {
        result,
        blobs,
        run,
        times: [fetch_start, fetch_done, exec_start, exec_done],
    })
}

fn ts(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

pub fn bad_path(what: &str, p: &str) -> Failure {
    fail(
        code::INVALID_ARGUMENT,
        format!("{what} {p:?} is not a relative path without `..`"),
    )
}

/// `p` as a relative path of plain components (no `..`, `.`, root or NUL); the empty
/// string only where `empty_ok`.
pub fn relative(p: &str, empty_ok: bool) -> Option<PathBuf> {
    if p.is_empty() {
        return empty_ok.then(PathBuf::new);
    }
    if p.contains('\0') || p.starts_with('/') {
        return None;
    }
    let path = Path::new(p);
    path.components()
        .all(|c| matches!(c, Component::Normal(_)))
        .then(|| path.to_path_buf())
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum OutputKind {
    /// `output_paths` (REAPI 2.1+): whatever the action left there.
    Any,
    File,
    Directory,
}

/// `output_paths`, or from clients before REAPI 2.1 (deprecated since, still sent by
/// older ones) `output_files` and `output_directories`.
#[allow(deprecated)]
fn output_list(c: &Command) -> Result<Vec<(PathBuf, OutputKind)>, Failure> {
    let mut out = Vec::new();
    let lists: [(&[String], OutputKind); 3] = if c.output_paths.is_empty() {
        [
            (&c.output_files, OutputKind::File),
            (&c.output_directories, OutputKind::Directory),
            (&[], OutputKind::Any),
        ]
    } else {
        [
            (&c.output_paths, OutputKind::Any),
            (&[], OutputKind::File),
            (&[], OutputKind::Directory),
        ]
    };
    for (list, kind) in lists {
        for p in list {
            let rel = relative(p, kind == OutputKind::Directory)
                .ok_or_else(|| bad_path("output path", p))?;
            out.push((rel, kind));
        }
    }
    Ok(out)
}

/// The Command's environment, and nothing else of farmd's.
fn environment(c: &Command) -> Result<Vec<(String, String)>, Failure> {
    let mut env = Vec::new();
    for v in &c.environment_variables {
        if v.name.is_empty() || v.name.contains(['=', '\0']) || v.value.contains('\0') {
            return Err(fail(
                code::INVALID_ARGUMENT,
                format!("environment variable {:?} is malformed", v.name),
            ));
        }
        env.push((v.name.clone(), v.value.clone()));
    }
    Ok(env)
}

/// Creates `rel`'s directories under `root`, never through a link: a component that
/// exists must be a real directory.
fn mkdirs_beneath(root: &Path, rel: &Path) -> Result<(), Failure> {
    let mut at = root.to_path_buf();
    for c in rel.components() {
        at.push(c);
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(fail(
                    code::INVALID_ARGUMENT,
                    format!("{} is in the way of a directory", rel.display()),
                ))
            }
            Err(_) => std::fs::create_dir(&at)
                .map_err(|e| fail(code::INTERNAL, format!("{}: {e}", rel.display())))?,
        }
    }
    Ok(())
}

/// Reads what the action left at output `path` (relative to its working directory)
/// into the result, without following a link anywhere on the way.
fn collect(
    root: &Path,
    working_dir: &Path,
    path: &Path,
    kind: OutputKind,
    left: &mut u64,
    result: &mut ActionResult,
    blobs: &mut Vec<(Digest, Vec<u8>)>,
) -> Result<(), Failure> {
    let full_rel = working_dir.join(path);
    // Every directory on the way must be a real one (the job may have made links).
    let mut at = root.to_path_buf();
    let comps: Vec<_> = full_rel.components().collect();
    for (i, c) in comps.iter().enumerate() {
        at.push(c);
        let last = i + 1 == comps.len();
        match std::fs::symlink_metadata(&at) {
            Ok(m) if !last && !m.is_dir() => return Ok(()),
            Ok(_) => {}
            Err(_) => return Ok(()), // not produced: simply absent from the result
        }
    }
    let shown = path.to_string_lossy().into_owned();
    let meta = std::fs::symlink_metadata(&at)
        .map_err(|e| fail(code::INTERNAL, format!("output {shown}: {e}")))?;
    let too_large = || {
        fail(
            code::RESOURCE_EXHAUSTED,
            format!("outputs larger than {MAX_OUTPUT_BYTES} bytes"),
        )
    };
    if meta.file_type().is_symlink() {
        let target = std::fs::read_link(&at)
            .map_err(|e| fail(code::INTERNAL, format!("output {shown}: {e}")))?;
        result.output_symlinks.push(OutputSymlink {
            path: shown,
            target: target.to_string_lossy().into_owned(),
            node_properties: None,
        });
    } else if meta.is_file() && kind != OutputKind::Directory {
        let data = crate::worker::spawn::read_output(&at, *left).map_err(|_| too_large())?;
        *left -= data.len() as u64;
        let d = sha256_digest(&data);
        use std::os::unix::fs::PermissionsExt as _;
        result.output_files.push(OutputFile {
            path: shown,
            digest: Some(d.clone()),
            is_executable: meta.permissions().mode() & 0o111 != 0,
            ..Default::default()
        });
        blobs.push((d, data));
    } else if meta.is_dir() && kind != OutputKind::File {
        let files = farm::fsutil::collect_tree_capped(&at, *left).map_err(|e| {
            fail(
                code::RESOURCE_EXHAUSTED,
                format!("output directory {shown}: {e}"),
            )
        })?;
        let mut tree = TreeNode::default();
        for (rel, data) in files {
            *left = left.saturating_sub(data.len() as u64);
            use std::os::unix::fs::PermissionsExt as _;
            let exec = std::fs::symlink_metadata(at.join(&rel))
                .map(|m| m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false);
            let d = sha256_digest(&data);
            tree.insert(&rel, d.clone(), exec);
            blobs.push((d, data));
        }
        let mut children = Vec::new();
        let root_dir = tree.into_directory(&mut children);
        let t = Tree {
            root: Some(root_dir),
            children,
        };
        let bytes = t.encode_to_vec();
        let td = sha256_digest(&bytes);
        blobs.push((td.clone(), bytes));
        result.output_directories.push(OutputDirectory {
            path: shown,
            tree_digest: Some(td),
            ..Default::default()
        });
    }
    Ok(())
}

/// An output directory being turned into a REAPI `Tree`.
#[derive(Default)]
struct TreeNode {
    files: BTreeMap<String, (Digest, bool)>,
    dirs: BTreeMap<String, TreeNode>,
}

impl TreeNode {
    fn insert(&mut self, rel: &str, d: Digest, exec: bool) {
        match rel.split_once('/') {
            Some((dir, rest)) => self
                .dirs
                .entry(dir.to_string())
                .or_default()
                .insert(rest, d, exec),
            None => {
                self.files.insert(rel.to_string(), (d, exec));
            }
        }
    }

    /// This node as a Directory (names sorted, as the REAPI wants), every
    /// subdirectory's Directory added to `children`.
    fn into_directory(self, children: &mut Vec<Directory>) -> Directory {
        let mut out = Directory::default();
        for (name, (digest, is_executable)) in self.files {
            out.files.push(FileNode {
                name,
                digest: Some(digest),
                is_executable,
                node_properties: None,
            });
        }
        for (name, node) in self.dirs {
            let sub = node.into_directory(children);
            let digest = sha256_digest(&sub.encode_to_vec());
            children.push(sub);
            out.directories.push(DirectoryNode {
                name,
                digest: Some(digest),
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_must_be_relative_and_plain() {
        assert_eq!(relative("a/b.o", false), Some(PathBuf::from("a/b.o")));
        assert_eq!(relative("", true), Some(PathBuf::new()));
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "a\0b"] {
            assert_eq!(relative(bad, false), None, "{bad:?}");
        }
    }

    #[test]
    fn output_trees_are_sorted_with_children() {
        let mut t = TreeNode::default();
        t.insert("z.o", sha256_digest(b"z"), false);
        t.insert("sub/a.o", sha256_digest(b"a"), true);
        t.insert("a.o", sha256_digest(b"a"), false);
        let mut children = Vec::new();
        let root = t.into_directory(&mut children);
        let names: Vec<_> = root.files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["a.o", "z.o"]);
        assert_eq!(root.directories[0].name, "sub");
        assert_eq!(children.len(), 1);
        assert!(children[0].files[0].is_executable);
        assert_eq!(
            root.directories[0].digest,
            Some(sha256_digest(&children[0].encode_to_vec()))
        );
    }

    #[test]
    fn directories_are_made_without_following_links() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join("link")).unwrap();
        assert!(mkdirs_beneath(d.path(), Path::new("link/sub")).is_err());
        assert!(!outside.path().join("sub").exists());
        mkdirs_beneath(d.path(), Path::new("a/b")).unwrap();
        assert!(d.path().join("a/b").is_dir());
    }
}
