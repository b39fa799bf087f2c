//! A same-path job as a REAPI Action in the "rootfs" layout: the input root mirrors
//! `/` and holds every file the compile may see (its inputs and its toolchain package
//! at their absolute paths), so a worker that shows that root as `/` runs the compile
//! exactly as at home, and the Action's digest covers every byte that decides the
//! output. Knows no compiler and no cache policy: it maps a [`PathJob`]'s parts, as
//! they are, onto `Action`, `Command` and `Directory` messages (docs/reapi.md,
//! "farm's compiles as Actions").

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use super::merkle::{self, InputFile, InputLink};
use super::message_digest;
use super::proto::{command, platform, Action, Command, Digest, Platform};
use crate::protocol::{Key, PathJob, ToolKind};

/// The platform property that marks the layout; a bot runs such an Action only when it
/// accepts shipped toolchains.
pub const LAYOUT_PROPERTY: &str = "farm-layout";
pub const LAYOUT_ROOTFS: &str = "rootfs";

/// PATH when the job's environment sets none (what a farm worker sets too).
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// Links followed while resolving one path through the package's links.
const MAX_HOPS: usize = 40;

/// Why a job makes no Action; names what.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ActionError {
    #[error("path {0:?} is not absolute and plain (no '.', '..' past '/', or empty names)")]
    BadPath(String),
    #[error("output {0:?} is outside the input root")]
    OutputEscapes(String),
    #[error("working directory {0:?} lies under a link of the toolchain package")]
    LinkedCwd(String),
    #[error("no content digest for blob {0} (input or toolchain file)")]
    NoBlob(String),
    #[error("input root: {0}")]
    Tree(#[from] merkle::TreeError),
}

/// One output of the job: its path in the Action (relative to the working directory)
/// and where the sender wants it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputMap {
    pub action_path: String,
    pub sender_path: String,
}

/// A job as an Action, with everything to upload.
#[derive(Clone, Debug)]
pub struct RootfsAction {
    pub action: Action,
    pub action_digest: Digest,
    pub command: Command,
    /// The serialized Action, Command and every `Directory` of the input root, each
    /// with its digest.
    pub messages: Vec<(Digest, Vec<u8>)>,
    /// Every file blob of the input root once: its SHA-256 digest and the BLAKE3
    /// digest farm knows its content by.
    pub files: Vec<(Digest, Key)>,
    /// The outputs, sorted by `action_path`.
    pub outputs: Vec<OutputMap>,
}

/// SHA-256 digests of blobs farm knows by BLAKE3, so that a blob is hashed once per
/// process. Bounded: emptied when it grows past its limit.
pub struct Sha256Memo {
    map: Mutex<HashMap<Key, Digest>>,
    limit: usize,
}

impl Sha256Memo {
    pub fn new(limit: usize) -> Sha256Memo {
        Sha256Memo {
            map: Mutex::new(HashMap::new()),
            limit,
        }
    }

    /// The SHA-256 digest of the blob `b3` names: remembered, else from its bytes
    /// (`bytes`; `None` when they are not at hand).
    pub fn get(&self, b3: &Key, bytes: impl FnOnce() -> Option<Vec<u8>>) -> Option<Digest> {
        if let Some(d) = self.map.lock().unwrap().get(b3) {
            return Some(d.clone());
        }
        let data = bytes()?;
        // Only bytes that are the blob farm named are remembered under its name.
        if blake3::hash(&data).as_bytes() != b3 {
            return None;
        }
        let d = super::digest_of(&data);
        let mut m = self.map.lock().unwrap();
        if m.len() >= self.limit {
            m.clear();
        }
        m.insert(*b3, d.clone());
        Some(d)
    }
}

/// `p` as plain components after `/`, `..` taken lexically; `None` when it is not
/// absolute or climbs past `/`.
fn clean(p: &str) -> Option<Vec<&str>> {
    let rest = p.strip_prefix('/')?;
    let mut out: Vec<&str> = Vec::new();
    for c in rest.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            c if c.contains('\0') => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

/// `parts` with every prefix that is a link of the package replaced by its target,
/// as the worker's layout follows them.
fn resolve<'a>(parts: Vec<&'a str>, links: &'a BTreeMap<String, String>) -> Option<Vec<&'a str>> {
    let mut todo: Vec<&str> = parts;
    todo.reverse();
    let mut done: Vec<&str> = Vec::new();
    let mut hops = 0;
    while let Some(c) = todo.pop() {
        if c == ".." {
            done.pop();
            continue;
        }
        if c.is_empty() || c == "." {
            continue;
        }
        done.push(c);
        let here = format!("/{}", done.join("/"));
        if let Some(target) = links.get(&here) {
            hops += 1;
            if hops > MAX_HOPS {
                return None;
            }
            done.pop();
            if target.starts_with('/') {
                done.clear();
            }
            for t in target.split('/').rev() {
                todo.push(t);
            }
        }
    }
    Some(done)
}

/// `to` relative to `from` (both cleaned components): `..` for each of `from`'s names
/// not shared.
fn relative(from: &[&str], to: &[&str]) -> String {
    let common = from.iter().zip(to).take_while(|(a, b)| a == b).count();
    let mut out: Vec<&str> = vec![".."; from.len() - common];
    out.extend(&to[common..]);
    out.join("/")
}

fn property(name: &str, value: &str) -> platform::Property {
    platform::Property {
        name: name.into(),
        value: value.into(),
    }
}

/// The platform of every rootfs Action, properties sorted by name.
pub fn rootfs_platform() -> Platform {
    let isa = match std::env::consts::ARCH {
        "x86_64" => "x86-64",
        "aarch64" => "aarch64",
        other => other,
    };
    Platform {
        properties: vec![
            property("ISA", isa),
            property("OSFamily", "linux"),
            property(LAYOUT_PROPERTY, LAYOUT_ROOTFS),
        ],
    }
}

/// Builds the rootfs Action of `job`. `sha256` gives the SHA-256 digest of a blob farm
/// knows by BLAKE3 (`None`: its bytes are not at hand). `renames` maps outputs whose
/// name must not reach the Action (a sender's scratch file: a new name per compile
/// would make every Action new) to the name they get there; each is replaced where it
/// is a whole argument. `timeout` is the Action's.
pub fn rootfs_action(
    job: &PathJob,
    sha256: &mut dyn FnMut(&Key) -> Option<Digest>,
    renames: &HashMap<String, String>,
    timeout: Duration,
) -> Result<RootfsAction, ActionError> {
    let bad = |p: &str| ActionError::BadPath(p.to_string());
    let mut links: BTreeMap<String, String> = BTreeMap::new();
    let mut files: Vec<InputFile> = Vec::new();
    let mut blobs: BTreeMap<String, (Digest, Key)> = BTreeMap::new();
    let mut digest_of = |b3: &Key| -> Result<Digest, ActionError> {
        let d = sha256(b3).ok_or_else(|| ActionError::NoBlob(crate::fsutil::hex(&b3[..8])))?;
        blobs.insert(d.hash.clone(), (d.clone(), *b3));
        Ok(d)
    };
    for e in &job.toolchain.entries {
        let parts = clean(&e.path).ok_or_else(|| bad(&e.path))?;
        if parts.is_empty() {
            return Err(bad(&e.path));
        }
        match &e.kind {
            ToolKind::Link(target) => {
                links.insert(format!("/{}", parts.join("/")), target.clone());
            }
            ToolKind::File { digest, exec } => files.push(InputFile {
                path: parts.join("/"),
                digest: digest_of(digest)?,
                executable: *exec,
            }),
        }
    }
    let link_nodes: Vec<InputLink> = links
        .iter()
        .map(|(p, t)| InputLink {
            path: p[1..].to_string(),
            target: t.clone(),
        })
        .collect();
    for f in &job.files {
        let parts = clean(&f.path).ok_or_else(|| bad(&f.path))?;
        let (name, parent) = parts.split_last().ok_or_else(|| bad(&f.path))?;
        let mut at = resolve(parent.to_vec(), &links).ok_or_else(|| bad(&f.path))?;
        at.push(name);
        files.push(InputFile {
            path: at.join("/"),
            digest: digest_of(&f.digest)?,
            executable: false,
        });
    }
    let cwd = clean(&job.cwd).ok_or_else(|| bad(&job.cwd))?;
    if resolve(cwd.clone(), &links).as_ref() != Some(&cwd) {
        return Err(ActionError::LinkedCwd(job.cwd.clone()));
    }
    let mut dirs: Vec<String> = Vec::new();
    for d in &job.dirs {
        let parts = clean(d).ok_or_else(|| bad(d))?;
        let at = resolve(parts, &links).ok_or_else(|| bad(d))?;
        if !at.is_empty() {
            dirs.push(at.join("/"));
        }
    }
    if !cwd.is_empty() {
        dirs.push(cwd.join("/"));
    }
    let dir_refs: Vec<&str> = dirs.iter().map(String::as_str).collect();
    let tree = merkle::build_with_links(&files, &link_nodes, &dir_refs)?;

    let mut outputs: Vec<OutputMap> = Vec::new();
    for o in &job.outputs {
        let named = renames.get(o).unwrap_or(o);
        let parts = clean(named).ok_or_else(|| ActionError::OutputEscapes(o.clone()))?;
        if parts.is_empty() {
            return Err(ActionError::OutputEscapes(o.clone()));
        }
        outputs.push(OutputMap {
            action_path: relative(&cwd, &parts),
            sender_path: o.clone(),
        });
    }
    outputs.sort_by(|a, b| a.action_path.cmp(&b.action_path));
    outputs.dedup_by(|a, b| a.action_path == b.action_path);
    let output_paths: Vec<String> = outputs.iter().map(|o| o.action_path.clone()).collect();

    let mut env: BTreeMap<String, String> = job.env.iter().cloned().collect();
    env.entry("PATH".into())
        .or_insert_with(|| DEFAULT_PATH.into());
    let mut arguments = vec![job.arg0.clone()];
    arguments.extend(
        job.args
            .iter()
            .map(|a| renames.get(a).cloned().unwrap_or_else(|| a.clone())),
    );
    let platform = rootfs_platform();
    // Command.platform and output_files are deprecated, and older servers still read
    // them.
    #[allow(deprecated)]
    let command = Command {
        arguments,
        environment_variables: env
            .into_iter()
            .map(|(name, value)| command::EnvironmentVariable { name, value })
            .collect(),
        output_files: output_paths.clone(),
        output_directories: Vec::new(),
        output_paths,
        platform: Some(platform.clone()),
        working_directory: cwd.join("/"),
        output_node_properties: Vec::new(),
        output_directory_format: 0,
    };
    let (command_digest, command_bytes) = message_digest(&command);
    let action = Action {
        command_digest: Some(command_digest.clone()),
        input_root_digest: Some(tree.root.clone()),
        timeout: Some(super::proto_duration(timeout)),
        do_not_cache: false,
        salt: Vec::new(),
        platform: Some(platform),
    };
    let (action_digest, action_bytes) = message_digest(&action);
    let mut messages = vec![
        (action_digest.clone(), action_bytes),
        (command_digest, command_bytes),
    ];
    messages.extend(tree.directories);
    Ok(RootfsAction {
        action,
        action_digest,
        command,
        messages,
        files: blobs.into_values().collect(),
        outputs,
    })
}

#[cfg(test)]
#[allow(deprecated)] // Command.platform: older servers read it
mod tests {
    use super::*;
    use crate::protocol::{CompilerAd, ToolEntry, Toolchain, TreeFile};
    use crate::reapi::proto::Directory;
    use prost::Message;

    fn b3(s: &str) -> Key {
        *blake3::hash(s.as_bytes()).as_bytes()
    }

    fn job() -> PathJob {
        let file = |path: &str, exec| ToolEntry {
            path: path.into(),
            kind: ToolKind::File {
                digest: b3(path),
                exec,
            },
        };
        PathJob {
            family: "f".into(),
            compiler: CompilerAd {
                name: "cc".into(),
                identity: [1; 32],
            },
            toolchain: Toolchain {
                driver: "/usr/bin/cc".into(),
                entries: vec![
                    ToolEntry {
                        path: "/lib64".into(),
                        kind: ToolKind::Link("usr/lib64".into()),
                    },
                    file("/usr/bin/cc", true),
                    file("/usr/lib64/ld.so", true),
                ],
            },
            arg0: "cc".into(),
            args: vec![
                "-c".into(),
                "a.c".into(),
                "-MF".into(),
                "/tmp/farm-1/99-0.d".into(),
            ],
            cwd: "/home/u/src".into(),
            env: vec![
                ("PATH".into(), "/usr/bin".into()),
                ("LANG".into(), "C".into()),
            ],
            files: vec![
                TreeFile {
                    path: "/home/u/src/a.c".into(),
                    digest: b3("a.c"),
                },
                TreeFile {
                    path: "/lib64/x.h".into(),
                    digest: b3("x.h"),
                },
            ],
            dirs: vec!["/home/u/include".into()],
            outputs: vec!["/home/u/src/a.o".into(), "/tmp/farm-1/99-0.d".into()],
        }
    }

    fn sha(k: &Key) -> Option<Digest> {
        Some(crate::reapi::digest_of(k))
    }

    fn dir_named(a: &RootfsAction, d: &Digest) -> Directory {
        let (_, b) = a.messages.iter().find(|(x, _)| x == d).unwrap();
        Directory::decode(b.as_slice()).unwrap()
    }

    #[test]
    fn canonical_command_and_tree() {
        let a = rootfs_action(&job(), &mut sha, &HashMap::new(), Duration::from_secs(30)).unwrap();
        let c = &a.command;
        assert_eq!(c.arguments[0], "cc");
        assert_eq!(c.arguments.len(), 5);
        assert_eq!(c.working_directory, "home/u/src");
        let env: Vec<_> = c.environment_variables.iter().map(|e| &e.name).collect();
        assert_eq!(env, ["LANG", "PATH"]);
        assert_eq!(c.output_paths, ["../../../tmp/farm-1/99-0.d", "a.o"]);
        assert_eq!(c.output_files, c.output_paths);
        let props: Vec<_> = c
            .platform
            .as_ref()
            .unwrap()
            .properties
            .iter()
            .map(|p| format!("{}={}", p.name, p.value))
            .collect();
        assert_eq!(
            props,
            ["ISA=x86-64", "OSFamily=linux", "farm-layout=rootfs"]
        );
        assert_eq!(a.action.platform, c.platform);
        assert_eq!(a.action.timeout.unwrap().seconds, 30);
        // The root: home, lib64 (a link), usr; names sorted and once.
        let root = dir_named(&a, a.action.input_root_digest.as_ref().unwrap());
        let names: Vec<_> = root.directories.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["home", "usr"]);
        assert_eq!(root.symlinks[0].name, "lib64");
        assert_eq!(root.symlinks[0].target, "usr/lib64");
        // The header under the link lies where the link leads; the search dir exists.
        let usr = dir_named(&a, root.directories[1].digest.as_ref().unwrap());
        let lib64 = usr.directories.iter().find(|d| d.name == "lib64").unwrap();
        let lib64 = dir_named(&a, lib64.digest.as_ref().unwrap());
        let files: Vec<_> = lib64
            .files
            .iter()
            .map(|f| (f.name.as_str(), f.is_executable))
            .collect();
        assert_eq!(files, [("ld.so", true), ("x.h", false)]);
        let home = dir_named(&a, root.directories[0].digest.as_ref().unwrap());
        let u = dir_named(&a, home.directories[0].digest.as_ref().unwrap());
        let names: Vec<_> = u.directories.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["include", "src"]);
        // Every file blob once, by SHA-256, with its BLAKE3 name.
        assert_eq!(a.files.len(), 4);
        assert!(a
            .files
            .iter()
            .any(|(d, k)| *k == b3("a.c") && sha(k) == Some(d.clone())));
        // The messages hold the Action and Command by their digests.
        assert!(a.messages.iter().any(|(d, _)| *d == a.action_digest));
    }

    #[test]
    fn deterministic_digests_and_renamed_scratch_outputs() {
        let none = HashMap::new();
        let t = Duration::from_secs(30);
        let a = rootfs_action(&job(), &mut sha, &none, t).unwrap();
        let mut shuffled = job();
        shuffled.files.reverse();
        shuffled.env.reverse();
        shuffled.outputs.reverse();
        shuffled.dirs.push("/home/u/include".into());
        let b = rootfs_action(&shuffled, &mut sha, &none, t).unwrap();
        assert_eq!(a.action_digest, b.action_digest);
        // Another scratch name, renamed to one stable name: the same Action.
        let mut other = job();
        other.args[3] = "/tmp/farm-1/123-7.d".into();
        other.outputs[1] = "/tmp/farm-1/123-7.d".into();
        let stable = |from: &str| {
            HashMap::from([(from.to_string(), "/tmp/farm-1/farm-output-0.d".to_string())])
        };
        let x = rootfs_action(&job(), &mut sha, &stable("/tmp/farm-1/99-0.d"), t).unwrap();
        let y = rootfs_action(&other, &mut sha, &stable("/tmp/farm-1/123-7.d"), t).unwrap();
        assert_eq!(x.action_digest, y.action_digest);
        assert_ne!(x.action_digest, a.action_digest);
        assert_eq!(x.command.arguments[4], "/tmp/farm-1/farm-output-0.d");
        let d = y
            .outputs
            .iter()
            .find(|o| o.action_path.ends_with(".d"))
            .unwrap();
        assert_eq!(d.sender_path, "/tmp/farm-1/123-7.d");
        assert_eq!(d.action_path, "../../../tmp/farm-1/farm-output-0.d");
        // Any byte that decides the output changes the Action.
        let mut flag = job();
        flag.args.push("-O2".into());
        let mut header = job();
        header.files[1].digest = b3("x.h changed");
        let mut tool = job();
        if let ToolKind::File { exec, .. } = &mut tool.toolchain.entries[2].kind {
            *exec = false;
        }
        for j in [flag, header, tool] {
            let c = rootfs_action(&j, &mut sha, &none, t).unwrap();
            assert_ne!(c.action_digest, a.action_digest);
        }
    }

    #[test]
    fn outputs_that_climb_and_outputs_that_escape() {
        let none = HashMap::new();
        let t = Duration::from_secs(1);
        let mut j = job();
        j.outputs = vec!["/home/u/obj/../out/a.o".into()];
        let a = rootfs_action(&j, &mut sha, &none, t).unwrap();
        assert_eq!(a.command.output_paths, ["../out/a.o"]);
        assert_eq!(a.outputs[0].sender_path, "/home/u/obj/../out/a.o");
        for escaping in ["/../etc/passwd", "/home/../../x", "relative.o", "/"] {
            let mut j = job();
            j.outputs = vec![escaping.into()];
            assert_eq!(
                rootfs_action(&j, &mut sha, &none, t).unwrap_err(),
                ActionError::OutputEscapes(escaping.into()),
                "{escaping}"
            );
        }
        let mut j = job();
        j.files[0].path = "/../a.c".into();
        assert!(matches!(
            rootfs_action(&j, &mut sha, &none, t),
            Err(ActionError::BadPath(_))
        ));
        let mut j = job();
        j.cwd = "/lib64/src".into();
        assert_eq!(
            rootfs_action(&j, &mut sha, &none, t).unwrap_err(),
            ActionError::LinkedCwd("/lib64/src".into())
        );
        let mut missing = |_: &Key| None;
        assert!(matches!(
            rootfs_action(&job(), &mut missing, &none, t),
            Err(ActionError::NoBlob(_))
        ));
    }

    #[test]
    fn the_memo_hashes_a_blob_once_and_only_its_own_bytes() {
        let memo = Sha256Memo::new(2);
        let k = b3("abc");
        let d = memo.get(&k, || Some(b"abc".to_vec())).unwrap();
        assert_eq!(d, crate::reapi::digest_of(b"abc"));
        assert_eq!(memo.get(&k, || panic!("hashed twice")), Some(d));
        assert_eq!(memo.get(&b3("x"), || Some(b"y".to_vec())), None);
        assert_eq!(memo.get(&b3("z"), || None), None);
    }
}
