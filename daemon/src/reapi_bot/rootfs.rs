//! `farm-layout=rootfs` leases: the Action's input root is the whole filesystem the
//! command may see (a farm same-path job as a REAPI Action: the toolchain package and
//! the inputs at their absolute paths), so it runs as a same-path job does, through
//! the same code ([`crate::worker::root`]): the root laid out as hard links (each
//! content kept once under the state directory, by its digest), the input's symbolic
//! links laid out first and every path resolved through them inside the root, the
//! root read-only as `/`, writable directories over each output's directory and a
//! fresh TMPDIR. The program comes from the root, so only a farmd that runs shipped
//! toolchains (`accept_toolchains = true`) takes these leases; the allow-list does
//! not apply.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use bazel_remote_apis::build::bazel::remote::execution::v2::{Command, OutputFile, Platform};

use super::cas::{sha256_digest, Cas};
use super::input::{fetch, walk, InputFile, MAX_INPUT_BLOB};
use super::run::{bad_path, code, fail, relative, Failure, Lease, Ran, MAX_OUTPUT_BYTES};
use crate::node::Node;
use crate::worker::root::{job_env, read_output_beneath, too_large, writable, Root};
use crate::worker::sandbox::RootedView;

/// The platform property that asks for this layout, and its value.
pub const LAYOUT_KEY: &str = "farm-layout";
pub const ROOTFS: &str = "rootfs";

/// SHA-256 digests (hex) of contents this node has kept, with their BLAKE3 digest
/// (how the toolchain store names files): a toolchain sent again is not fetched
/// again. Bounded: forgotten all at once when full (then fetched again once).
static KEPT: OnceLock<Mutex<HashMap<String, [u8; 32]>>> = OnceLock::new();
const MAX_KEPT: usize = 1 << 20;

fn kept() -> &'static Mutex<HashMap<String, [u8; 32]>> {
    KEPT.get_or_init(Default::default)
}

/// An output of a rootfs lease: its path as the Command names it (relative to the
/// working directory, `..` allowed) and its absolute path in the root.
type Output = (String, PathBuf);

/// A rootfs Command as [`check`] found it: its working directory and outputs.
pub struct Checked {
    working_dir: PathBuf,
    outputs: Vec<Output>,
}

/// Checks a rootfs Command before anything is fetched: this node runs shipped
/// toolchains, the working directory is plain, every output a file path that stays
/// inside the root.
pub fn check(node: &Node, command: &Command) -> Result<Checked, Failure> {
    if !node.toolchains.accept {
        return Err(fail(
            code::FAILED_PRECONDITION,
            format!(
                "farmd {} does not run {LAYOUT_KEY}={ROOTFS} leases (accept_toolchains = false: \
                 it runs only its own compilers)",
                node.name
            ),
        ));
    }
    let working_dir = relative(&command.working_directory, true)
        .ok_or_else(|| bad_path("working_directory", &command.working_directory))?;
    #[allow(deprecated)]
    if !command.output_directories.is_empty() {
        return Err(fail(
            code::INVALID_ARGUMENT,
            format!("a {LAYOUT_KEY}={ROOTFS} lease's outputs are files, not directories"),
        ));
    }
    #[allow(deprecated)]
    let list = if command.output_paths.is_empty() {
        &command.output_files
    } else {
        &command.output_paths
    };
    let mut outputs = Vec::new();
    for o in list {
        let abs = inside_root(&working_dir, o).ok_or_else(|| {
            fail(
                code::INVALID_ARGUMENT,
                format!("output path {o:?} is not a file path inside the input root"),
            )
        })?;
        outputs.push((o.clone(), abs));
    }
    Ok(Checked {
        working_dir,
        outputs,
    })
}

/// `/<working_dir>/<p>` where `p` is relative, its components plain names or `..`
/// that never climb above the root (counted by name, as the REAPI means them), its
/// last a name.
fn inside_root(working_dir: &Path, p: &str) -> Option<PathBuf> {
    if p.is_empty() || p.starts_with('/') || p.contains('\0') {
        return None;
    }
    let mut depth = working_dir.components().count();
    let parts: Vec<&str> = p.split('/').collect();
    for c in &parts {
        match *c {
            "" | "." => return None,
            ".." => depth = depth.checked_sub(1)?,
            _ => depth += 1,
        }
    }
    if parts.last() == Some(&"..") {
        return None;
    }
    Some(Path::new("/").join(working_dir).join(p))
}

/// Lays the input root out under the lease's job directory and runs the Command in
/// it (`checked`: what [`check`] made of it).
pub async fn run(
    node: &Node,
    cas: &Cas,
    lease: Lease<'_>,
    checked: Checked,
) -> Result<Ran, Failure> {
    let Checked {
        working_dir,
        outputs,
    } = checked;
    let Lease {
        sandbox,
        command,
        env,
        root_digest,
        dir,
        deadline,
    } = lease;
    let internal = |e: String| fail(code::INTERNAL, format!("farmd {}: {e}", node.name));
    let fetch_start = std::time::SystemTime::now();
    std::fs::create_dir_all(dir).map_err(|e| internal(format!("{}: {e}", dir.display())))?;
    let tree = walk(cas, root_digest, true).await?;
    let mut root = Root::create(dir).map_err(internal)?;
    let abs = |p: &Path| Path::new("/").join(p);
    let links: Vec<(String, &str)> = tree
        .links
        .iter()
        .map(|(p, t)| (abs(p).to_string_lossy().into_owned(), t.as_str()))
        .collect();
    root.links(links.iter().map(|(p, t)| (p.as_str(), *t)).collect())
        .map_err(|e| fail(code::INVALID_ARGUMENT, format!("input link {e}")))?;
    for d in &tree.dirs {
        root.dir(&abs(d))
            .map_err(|e| fail(code::INVALID_ARGUMENT, format!("input {e}")))?;
    }
    // Contents kept already are linked at once; the others fetched first.
    let mut placer = Placer {
        root,
        first_of: HashMap::new(),
    };
    let mut missing: Vec<InputFile> = Vec::new();
    for f in &tree.files {
        let known = kept().lock().unwrap().get(&f.1.hash).copied();
        // A kept file trimmed meanwhile is fetched again.
        let linked = known.is_some_and(|b3| {
            let kept = node.toolchains.file_at(&b3, f.2, &node.blobs);
            kept.is_ok_and(|k| placer.place(f, b3, &k).is_ok())
        });
        if !linked {
            missing.push(f.clone());
        }
    }
    let cap = node.cfg.job_file_size.min(MAX_INPUT_BLOB);
    let fetched_bytes: i64 = missing.iter().map(|f| f.1.size_bytes).sum();
    fetch(cas, &missing, cap, |f, data| {
        // Checked against its SHA-256 by the fetch; kept by its BLAKE3 digest.
        let b3 = *blake3::hash(data).as_bytes();
        let at = node.toolchains.keep(&b3, f.2, data).map_err(internal)?;
        let mut k = kept().lock().unwrap();
        if k.len() >= MAX_KEPT {
            k.clear();
        }
        k.insert(f.1.hash.clone(), b3);
        drop(k);
        match placer.place(f, b3, &at) {
            // Trimmed by a concurrent job between keeping and linking: kept again, once.
            Err(_) if !at.exists() => {
                let at = node.toolchains.keep(&b3, f.2, data).map_err(internal)?;
                placer.place(f, b3, &at)
            }
            placed => placed,
        }
    })
    .await?;
    let root = placer.root;
    let cwd = abs(&working_dir);
    root.dir(&cwd)
        .map_err(|e| fail(code::INVALID_ARGUMENT, format!("working directory {e}")))?;
    let w = writable(&root.path, dir, &outputs)
        .map_err(|e| fail(code::INVALID_ARGUMENT, format!("outputs: {e}")))?;
    let fetch_done = std::time::SystemTime::now();
    tracing::info!(
        files = tree.files.len(),
        links = tree.links.len(),
        fetched = missing.len(),
        fetched_bytes,
        ms = fetch_done
            .duration_since(fetch_start)
            .unwrap_or_default()
            .as_millis() as u64,
        "rootfs lease laid out"
    );

    let cwd = cwd.to_string_lossy().into_owned();
    let view = RootedView {
        root: root.path.clone(),
        rw: w.rw.clone(),
        env: job_env(&env, &cwd, &w.scratch),
        cwd,
        proc: false,
    };
    let limits = crate::worker::spawn::job_limits(&node.cfg);
    let exec_start = std::time::SystemTime::now();
    let run = sandbox
        .run_rooted(
            &command.arguments[0],
            &command.arguments[1..],
            &view,
            limits,
            deadline,
        )
        .await
        .map_err(|why| super::run::sandbox_fail(node, why))?;
    let exec_done = std::time::SystemTime::now();

    let mut ran = Ran {
        result: Default::default(),
        blobs: Vec::new(),
        run,
        times: [fetch_start, fetch_done, exec_start, exec_done],
    };
    let mut left = MAX_OUTPUT_BYTES;
    for (name, _) in &outputs {
        let Some((host, rel)) = w.output_at.get(name) else {
            continue;
        };
        match read_output_beneath(host, rel, left) {
            Ok((data, exec)) => {
                left -= data.len() as u64;
                let d = sha256_digest(&data);
                ran.result.output_files.push(OutputFile {
                    path: name.clone(),
                    digest: Some(d.clone()),
                    is_executable: exec,
                    ..Default::default()
                });
                ran.blobs.push((d, data));
            }
            // Not made, or not a regular file reached without following a link:
            // absent from the result.
            Err(e) if too_large(&e) => {
                return Err(fail(
                    code::RESOURCE_EXHAUSTED,
                    format!("outputs larger than {MAX_OUTPUT_BYTES} bytes"),
                ))
            }
            Err(e) => tracing::debug!(output = %name, error = %e, "rootfs output not read"),
        }
    }
    Ok(ran)
}

/// Places input files in a root: the first file of a content (and mode) a hard link
/// to the kept file, the others copies (files distinct at home stay distinct inodes:
/// `#pragma once` tells files apart by inode).
struct Placer {
    root: Root,
    first_of: HashMap<([u8; 32], bool), PathBuf>,
}

impl Placer {
    fn place(
        &mut self,
        (p, _, exec): &InputFile,
        b3: [u8; 32],
        kept: &Path,
    ) -> Result<(), Failure> {
        let at = self
            .root
            .place(&Path::new("/").join(p))
            .map_err(|e| fail(code::INVALID_ARGUMENT, format!("input {e}")))?;
        let made = match self.first_of.get(&(b3, *exec)) {
            Some(first) => std::fs::copy(first, &at).map(drop),
            None => std::fs::hard_link(kept, &at),
        };
        made.map_err(|e| {
            fail(
                code::INVALID_ARGUMENT,
                format!("input {}: {e}", p.display()),
            )
        })?;
        self.first_of.entry((b3, *exec)).or_insert(at);
        Ok(())
    }
}

/// Whether an Action asks for the rootfs layout (by its platform, or its Command's
/// for clients before REAPI 2.2); another value of the key is an error.
pub fn wanted(platforms: &[Option<&Platform>]) -> Result<bool, Failure> {
    let mut rootfs = false;
    for p in platforms.iter().flatten() {
        for prop in p.properties.iter().filter(|p| p.name == LAYOUT_KEY) {
            if prop.value != ROOTFS {
                return Err(fail(
                    code::INVALID_ARGUMENT,
                    format!(
                        "platform property {LAYOUT_KEY}={:?} is not one farmd runs",
                        prop.value
                    ),
                ));
            }
            rootfs = true;
        }
    }
    Ok(rootfs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_paths_may_climb_but_not_out_of_the_root() {
        let wd = Path::new("home/u/p");
        assert_eq!(
            inside_root(wd, "../../../tmp/farm-1.d"),
            Some(PathBuf::from("/home/u/p/../../../tmp/farm-1.d"))
        );
        assert_eq!(inside_root(wd, "a.o"), Some(PathBuf::from("/home/u/p/a.o")));
        for bad in [
            "../../../../etc/x",
            "/tmp/x",
            "a/./b",
            "a//b",
            "..",
            "a/..",
            "",
            "a\0",
        ] {
            assert_eq!(inside_root(wd, bad), None, "{bad:?}");
        }
        assert_eq!(inside_root(Path::new(""), "../x"), None);
    }
}
