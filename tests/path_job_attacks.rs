//! Attacks on same-path jobs (`PeerRequest::PathJob`), by a cluster member that ships
//! its own "compiler" (docs/security.md, "Same-path jobs and shipped toolchains").
//!
//! farmd accepts toolchains sent by peers by default (`accept_toolchains`): a member
//! can make a worker run any program it packages. The defence is the job's root: a
//! tree of hard links (the toolchain's files, the inputs from the blob store) that the
//! sandbox shows read-only as `/`, with fresh writable directories bound over the
//! output directories and its own TMPDIR, no network, its own PID namespace. These tests ship
//! a bash script as `gcc` (with bash and a few coreutils packaged from this machine)
//! and check, on what comes back and on the worker's disk, that it reads nothing of
//! the worker, writes nothing but its own directories, cannot reach the network, and
//! cannot make farmd read a file for it; that paths which try to leave the root are
//! refused or stay inside it; that with `accept_toolchains = false` a member cannot
//! get its own code run after all; that nothing of a job reaches the farm's cache; and
//! that garbage and oversized frames are refused while farmd stays up.
//!
//! Like tests/security_attacks.rs: needs root (users, setpriv); farmd runs as
//! `farmsec-d` (tests/common/secfarm.rs).

mod common;
use common::secfarm::*;
use common::*;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use farm::protocol::{
    Blob, CompilerAd, PathJob, PeerRequest, PeerResponse, ToolEntry, ToolKind, Toolchain, TreeFile,
    TreeResult,
};

macro_rules! need_root {
    () => {
        if !is_root() {
            eprintln!("skipped: needs root");
            return;
        }
    };
}

/// A farm of `node-1` (no CPUs of its own) and `node-2`, a worker with `extra_2`.
fn farm_with_worker(extra_2: &str) -> SecFarm {
    let extra_2 = extra_2.to_string();
    SecFarm::new(2, &["gcc"], move |i| {
        if i == 0 {
            "local_slots = 0".into()
        } else {
            extra_2.clone()
        }
    })
}

fn blob(data: Vec<u8>) -> Blob {
    Blob {
        digest: *blake3::hash(&data).as_bytes(),
        data,
    }
}

fn put_blobs(peer: &RawPeer, blobs: Vec<Blob>) {
    match peer.ask(&PeerRequest::PutBlobs(blobs)) {
        Ok(PeerResponse::Stored) => {}
        other => panic!("set-up: PutBlobs answered {other:?}"),
    }
}

/// Programs the attack scripts use besides bash.
const TOOLS: &[&str] = &[
    "cat", "ls", "ln", "rm", "mkdir", "chmod", "head", "touch", "cp", "mv", "mkfifo", "grep",
    "find", "cut", "tail", "tr",
];

/// A package of bash and [`TOOLS`] as this machine has them, with `script` (run by
/// bash) as its driver `/usr/bin/gcc`; its files are sent to `peer` as blobs.
fn ship(peer: &RawPeer, script: &str) -> Toolchain {
    let mut programs: Vec<PathBuf> = TOOLS.iter().map(|t| require(t)).collect();
    // The scripts' `#!` line, with the `/bin` link of a merged /usr.
    programs.push("/bin/bash".into());
    let mut t = farm::toolchain::build(&require("bash"), &programs, &mut |p| {
        farm::fsutil::hash_file(p)
    })
    .expect("set-up: package");
    let driver = blob(format!("#!/bin/bash\n{script}\n").into_bytes());
    t.entries.retain(|e| e.path != "/usr/bin/gcc");
    t.entries.push(ToolEntry {
        path: "/usr/bin/gcc".into(),
        kind: ToolKind::File {
            digest: driver.digest,
            exec: true,
        },
    });
    t.entries.sort();
    t.driver = "/usr/bin/gcc".into();
    farm::toolchain::check(&t).expect("set-up: a valid package");
    let mut blobs = vec![driver];
    for e in &t.entries {
        if let ToolKind::File { .. } = e.kind {
            if e.path != "/usr/bin/gcc" {
                blobs.push(blob(fs::read(&e.path).unwrap()));
            }
        }
    }
    put_blobs(peer, blobs);
    t
}

/// A same-path job of `t` compiling `/src/a.c` (content `source`) with `args`, in
/// `/src`, writing `outputs`.
fn job(t: &Toolchain, args: &[&str], source: &Blob, outputs: &[&str]) -> PathJob {
    PathJob {
        family: "gcc".into(),
        compiler: CompilerAd {
            name: "gcc".into(),
            identity: [7; 32],
        },
        toolchain: t.clone(),
        arg0: "/usr/bin/gcc".into(),
        args: args.iter().map(|s| s.to_string()).collect(),
        cwd: "/src".into(),
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        files: vec![TreeFile {
            path: "/src/a.c".into(),
            digest: source.digest,
        }],
        dirs: vec![],
        outputs: outputs.iter().map(|s| s.to_string()).collect(),
    }
}

fn ask(peer: &RawPeer, j: PathJob) -> Result<PeerResponse, String> {
    peer.ask(&PeerRequest::PathJob(Box::new(j)))
}

fn done(r: Result<PeerResponse, String>, what: &str) -> TreeResult {
    match r {
        Ok(PeerResponse::TreeDone(d)) => d,
        other => panic!("{what}: expected the job to run, got {other:?}"),
    }
}

/// Every file under `dir` by relative path (content), links as `-> target`.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut m = BTreeMap::new();
    fn walk(base: &Path, d: &Path, m: &mut BTreeMap<String, Vec<u8>>) {
        let Ok(entries) = fs::read_dir(d) else { return };
        for e in entries.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(base).unwrap().display().to_string();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                walk(base, &p, m);
            } else if ft.is_symlink() {
                let t = fs::read_link(&p).unwrap();
                m.insert(rel, format!("-> {}", t.display()).into_bytes());
            } else {
                m.insert(rel, fs::read(&p).unwrap_or_default());
            }
        }
    }
    walk(dir, dir, &mut m);
    m
}

/// Blobs of the worker's store that no longer hash to their name.
fn bad_blobs(node: &SecNode) -> Vec<String> {
    let mut bad = Vec::new();
    for (rel, data) in files_with_ext(&node.state().join("blobs"), "b") {
        let name = Path::new(&rel)
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let got = farm::fsutil::hex(blake3::hash(&data).as_bytes());
        if got != name {
            bad.push(format!("blob {name} now hashes to {got}"));
        }
    }
    bad
}

/// Files of laid-out toolchains (`state/toolchains/<digest>-<x|r>`, kept by content)
/// whose content or mode is no longer the one their package names.
fn bad_toolchain_files(node: &SecNode, t: &Toolchain) -> Vec<String> {
    let dir = node.state().join("toolchains");
    let mut bad = Vec::new();
    for e in &t.entries {
        if let ToolKind::File { digest, exec } = &e.kind {
            let f = dir.join(format!(
                "{}-{}",
                farm::fsutil::hex(digest),
                if *exec { "x" } else { "r" }
            ));
            let data = fs::read(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            if blake3::hash(&data).as_bytes() != digest {
                bad.push(format!("{} ({}) was changed", e.path, f.display()));
            }
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&f).unwrap().permissions().mode() & 0o777;
            let want = if *exec { 0o555 } else { 0o444 };
            if mode != want {
                bad.push(format!("{} ({}) has mode {mode:o}", e.path, f.display()));
            }
        }
    }
    bad
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

// ------------------------------------------------------------------ reading, network

/// The shipped compiler probes what it must not see: the worker's key, config,
/// state directory, blob store (by path, and a tenant's blob by content), the jobs
/// directory, /etc/shadow, the host's /usr beyond its package, the host through
/// /proc/1/root, and farmd itself over loopback TCP/UDP. It sees its own input (the
/// positive control), nothing else.
#[test]
fn shipped_compiler_sees_only_its_own_root() {
    need_root!();
    let _serial = one_at_a_time();
    let mut farm = farm_with_worker("");
    let worker = &farm.nodes[1];
    let peer = farm.member_to(1);
    let tenant = blob(format!("FARMSEC tenant source {}\n", std::process::id()).into_bytes());
    let tenant_hex = farm::fsutil::hex(&tenant.digest);
    put_blobs(&peer, vec![tenant.clone()]);
    let key = worker.key_path().display().to_string();
    let state = worker.state().display().to_string();
    let config = worker.config.display().to_string();
    let secrets: Vec<(String, Vec<Vec<u8>>)> = vec![
        (
            "key".into(),
            secret_lines(&fs::read(worker.key_path()).unwrap()),
        ),
        (
            "tenant blob".into(),
            vec![tenant.data.trim_ascii_end().to_vec()],
        ),
        (
            "config".into(),
            vec![format!("listen = \"127.0.0.1:{}\"", worker.port).into_bytes()],
        ),
        ("/etc/shadow".into(), vec![b"root:".to_vec()]),
        ("host /usr/include".into(), vec![b"_STDIO_H".to_vec()]),
    ];
    // Listeners on this machine's loopback: the job must reach neither.
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    tcp.set_nonblocking(true).unwrap();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_nonblocking(true).unwrap();
    let script = format!(
        r#"cat /src/a.c
for p in {key} {config} {state} {state}/blobs {state}/jobs {state}/toolchains \
         /etc/shadow /usr/include/stdio.h /proc/1/root/etc/shadow /proc/1/root{key}; do
  if cat "$p" 2>/dev/null || ls -la "$p" 2>/dev/null; then echo "LEAK: read $p"; fi
done
grep -r FARM""SEC / --exclude-dir=proc 2>/dev/null && echo "LEAK: found a tenant blob"
find / -name '*{hexpart}*' 2>/dev/null | grep . && echo "LEAK: found a blob by name"
cat /proc/1/cmdline | grep -q farmd && echo "LEAK: sees farmd"
(exec 3<>/dev/tcp/127.0.0.1/{tcp}) 2>/dev/null && echo "LEAK: reached the host's loopback over TCP"
for i in 1 2 3; do echo FARM-UDP > /dev/udp/127.0.0.1/{udp}; echo FARM-UDP > /dev/udp/127.0.0.1/{port}; done 2>/dev/null
(exec 3<>/dev/tcp/1.1.1.1/53) 2>/dev/null && echo "LEAK: reached the network"
echo "interfaces: $(cut -d: -f1 /proc/net/dev | tail -n +3 | tr -d ' ' | tr '\n' ' ')"
ls /
exit 0"#,
        hexpart = &tenant_hex[..16],
        port = worker.port,
        tcp = tcp.local_addr().unwrap().port(),
        udp = udp.local_addr().unwrap().port(),
    );
    let t = ship(&peer, &script);
    let src = blob(b"int main(void) { return 0; } /* POSITIVE-CONTROL */\n".to_vec());
    put_blobs(&peer, vec![src.clone()]);
    let r = done(
        ask(
            &peer,
            job(&t, &["-c", "a.c", "-o", "a.o"], &src, &["/src/a.o"]),
        ),
        "the probing job",
    );
    let out = text(&r.stdout) + &text(&r.stderr);
    eprintln!("the job printed:\n{out}");
    assert!(
        out.contains("POSITIVE-CONTROL"),
        "the shipped compiler did not run or could not read its own input: {out}"
    );
    let mut failed: Vec<String> = out
        .lines()
        .filter(|l| l.contains("LEAK"))
        .map(str::to_string)
        .collect();
    for (what, lines) in &secrets {
        let n = leaks(out.as_bytes(), lines);
        if n > 0 {
            failed.push(format!("{n} lines of the worker's {what} came back"));
        }
    }
    if tcp.accept().is_ok() {
        failed.push("the job connected to a TCP listener on the host's loopback".into());
    }
    let mut buf = [0u8; 64];
    if udp.recv_from(&mut buf).is_ok() {
        failed.push("the job's UDP datagram reached the host's loopback".into());
    }
    match out.lines().find_map(|l| l.strip_prefix("interfaces: ")) {
        // A same-path job has no /proc (nothing to list); where one is, only lo.
        Some(ifs) if ifs.trim() == "lo" || ifs.trim().is_empty() => {}
        other => failed.push(format!("the job's network interfaces: {other:?} (only lo)")),
    }
    // Its `/` holds the package, its input and the sandbox's own few directories.
    let top: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.is_empty() && !matches!(*l, "bin" | "dev"))
        .collect();
    for host_only in ["home", "root", "var", "boot", "work"] {
        if top.contains(&host_only) {
            failed.push(format!("the job's / lists the host's /{host_only}"));
        }
    }
    assert!(
        failed.is_empty(),
        "defence failed: same-path job root (only its toolchain and inputs), no network —\n{}",
        failed.join("\n")
    );
    farm.assert_still_serving(1, "a probing shipped compiler");
}

// ------------------------------------------------------------------ writing

/// The shipped compiler tries to write everywhere: through its input (a hard link
/// into the blob store), through the toolchain's files (hard links into the laid-out
/// package), by chmod, by a hard link from its writable directory, into `/` and the
/// toolchain's directories. Only its output directory and its TMPDIR take writes; the blob
/// store and the laid-out package are unchanged, and the output comes back.
#[test]
fn shipped_compiler_cannot_write_through_its_links() {
    need_root!();
    let _serial = one_at_a_time();
    let mut farm = farm_with_worker("");
    let worker = &farm.nodes[1];
    let peer = farm.member_to(1);
    let script = r#"try() { if eval "$1" 2>/dev/null; then echo "WROTE: $1"; fi; }
try 'echo x >> /src/a.c'
try 'chmod 666 /src/a.c'
try 'echo x > /src/a.c'
try 'mv /src/a.c /src/b.c'
try 'rm -f /src/a.c'
try 'ln /src/a.c /src/hard && echo x >> /src/hard'
try 'ln /src/a.c $TMPDIR/hard && echo x >> $TMPDIR/hard'
try 'echo x >> /usr/bin/bash'
try 'chmod 777 /usr/bin/bash'
try 'rm -f /usr/bin/bash'
try 'echo x >> /usr/bin/gcc'
try 'touch /newfile'
try 'mkdir /newdir'
try 'touch /usr/bin/newfile'
try '[ -b /dev/sda ] || [ -b /dev/vda ] || [ -b /dev/nvme0n1 ]'
echo ok > $TMPDIR/scratch && cat $TMPDIR/scratch
cat /src/a.c > /out/a.o && echo object >> /out/a.o
exit 0"#;
    let t = ship(&peer, script);
    let src = blob(b"int main(void) { return 0; }\n".to_vec());
    put_blobs(&peer, vec![src.clone()]);
    // The output goes to its own directory: /src (the input's) is the read-only root.
    // (An input inside an output's directory is the job's own copy there; writing it
    // changes nothing outside the job, which the blob check below also covers.)
    let r = done(
        ask(
            &peer,
            job(&t, &["-c", "a.c", "-o", "/out/a.o"], &src, &["/out/a.o"]),
        ),
        "the writing job",
    );
    let out = text(&r.stdout) + &text(&r.stderr);
    eprintln!("the job printed:\n{out}");
    let mut failed: Vec<String> = out
        .lines()
        .filter(|l| l.starts_with("WROTE"))
        .map(str::to_string)
        .collect();
    failed.extend(bad_blobs(worker));
    failed.extend(bad_toolchain_files(worker, &t));
    assert!(out.contains("ok"), "its TMPDIR is not writable: {out}");
    let obj = r.outputs.iter().find(|o| o.path == "/out/a.o");
    assert_eq!(
        obj.map(|o| o.data.clone()),
        Some(b"int main(void) { return 0; }\nobject\n".to_vec()),
        "the job's output did not come back as written"
    );
    assert!(
        failed.is_empty(),
        "defence failed: read-only job root over hard links into the blob store and the \
         laid-out package —\n{}",
        failed.join("\n")
    );
    farm.assert_still_serving(1, "a writing shipped compiler");
}

/// The job replaces a directory on the way to one of its outputs (below its writable
/// directory) with a link to the worker's directory, so that farmd, collecting the
/// output after the job, would read the worker's key for it. Also a FIFO as an output
/// (farmd must not block opening it). Outputs are read without following links: the
/// key never comes back, farmd stays up.
#[test]
fn outputs_are_collected_without_following_the_jobs_links() {
    need_root!();
    let _serial = one_at_a_time();
    let mut farm = farm_with_worker("");
    let worker = &farm.nodes[1];
    let key_name = worker
        .key_path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let key_secret = secret_lines(&fs::read(worker.key_path()).unwrap());
    let node_dir = worker.dir.display().to_string();
    let peer = farm.member_to(1);
    let script = format!(
        r#"rm -rf /tmp/w/sub /src/sub
ln -s {node_dir} /tmp/w/sub
ln -s {node_dir} /src/sub
ln -s {node_dir}/{key_name} /src/a.o
mkfifo /src/fifo.d
exit 0"#
    );
    let t = ship(&peer, &script);
    let src = blob(b"int x;\n".to_vec());
    put_blobs(&peer, vec![src.clone()]);
    let tmp_key = format!("/tmp/w/sub/{key_name}");
    let src_key = format!("/src/sub/{key_name}");
    let cases: Vec<(&str, Vec<&str>, Vec<&str>)> = vec![
        (
            "a directory under a writable /tmp/w made a link to the worker's directory",
            vec!["-c", "a.c", "-o", "/tmp/w/x.o", "-MD", "-MF", &tmp_key],
            vec!["/tmp/w/x.o", &tmp_key],
        ),
        (
            "a directory under the output directory made such a link",
            vec!["-c", "a.c", "-o", "/src/x.o", "-MD", "-MF", &src_key],
            vec!["/src/x.o", &src_key],
        ),
        (
            "the output itself made a link to the worker's key",
            vec!["-c", "a.c", "-o", "/src/a.o"],
            vec!["/src/a.o"],
        ),
        (
            "a FIFO as an output",
            vec!["-c", "a.c", "-o", "/src/x.o", "-MD", "-MF", "/src/fifo.d"],
            vec!["/src/x.o", "/src/fifo.d"],
        ),
    ];
    let mut failed = Vec::new();
    for (what, args, outputs) in &cases {
        let t0 = std::time::Instant::now();
        let r = ask(&peer, job(&t, args, &src, outputs));
        eprintln!(
            "{what}: {:?} in {:?}",
            r.as_ref().map(describe),
            t0.elapsed()
        );
        match r {
            Ok(PeerResponse::TreeDone(d)) => {
                for o in &d.outputs {
                    if leaks(&o.data, &key_secret) > 0 {
                        failed.push(format!("{what}: the worker's key came back as {}", o.path));
                    }
                }
            }
            Ok(PeerResponse::Refused(_)) => {}
            other => failed.push(format!("{what}: unexpected answer {other:?}")),
        }
    }
    assert!(
        failed.is_empty(),
        "defence failed: outputs read beneath their writable directory without following \
         links —\n{}",
        failed.join("\n")
    );
    farm.assert_still_serving(1, "outputs turned into links");
}

fn describe(r: &PeerResponse) -> String {
    match r {
        PeerResponse::TreeDone(d) => format!(
            "ran: exit {}, outputs {:?}",
            d.exit_code,
            d.outputs
                .iter()
                .map(|o| (&o.path, o.data.len()))
                .collect::<Vec<_>>()
        ),
        PeerResponse::Refused(why) => format!("refused: {why}"),
        other => format!("{other:?}"),
    }
}

/// The job takes every permission off the directories it made (and its writable
/// directory itself): its job directory is still removed afterwards, nothing of it
/// stays on the worker's disk.
#[test]
fn a_job_cannot_leave_its_directory_behind() {
    need_root!();
    let _serial = one_at_a_time();
    let farm = farm_with_worker("");
    let worker = &farm.nodes[1];
    let peer = farm.member_to(1);
    let script = r#"mkdir -p $TMPDIR/a/b /src/c && head -c 100000 /dev/zero > $TMPDIR/a/b/big
cp $TMPDIR/a/b/big /src/c/big
chmod 000 $TMPDIR/a/b $TMPDIR/a /src/c $TMPDIR /src
exit 0"#;
    let t = ship(&peer, script);
    let src = blob(b"int x;\n".to_vec());
    put_blobs(&peer, vec![src.clone()]);
    // The output is unreadable too: a refusal, or a run without it.
    let r = ask(
        &peer,
        job(&t, &["-c", "a.c", "-o", "a.o"], &src, &["/src/a.o"]),
    );
    eprintln!("the locking job: {:?}", r.as_ref().map(describe));
    assert!(
        matches!(r, Ok(PeerResponse::Refused(_) | PeerResponse::TreeDone(_))),
        "{r:?}"
    );
    // The slot's directory goes when the answer is sent.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let left = snapshot(&worker.state().join("jobs"));
    assert!(
        left.is_empty(),
        "defence failed: job directory removal — the job left {} files on the worker: {:?}",
        left.len(),
        left.keys().take(10).collect::<Vec<_>>()
    );
}

// ------------------------------------------------------------------ escaping paths

/// Paths that try to leave the job's root, or reach places the sandbox provides: each
/// is refused with a reason that names it, before anything runs.
#[test]
fn escaping_paths_are_refused() {
    need_root!();
    let _serial = one_at_a_time();
    let mut farm = farm_with_worker("");
    let peer = farm.member_to(1);
    let t = ship(&peer, "echo RAN; exit 0");
    let src = blob(b"int x;\n".to_vec());
    put_blobs(&peer, vec![src.clone()]);
    let base = || job(&t, &["-c", "a.c", "-o", "a.o"], &src, &["/src/a.o"]);
    type Edit = Box<dyn Fn(&mut PathJob)>;
    let file = |p: &str| {
        let p = p.to_string();
        Box::new(move |j: &mut PathJob| j.files[0].path = p.clone()) as Edit
    };
    let link = |p: &str, target: &str| {
        let (p, target) = (p.to_string(), target.to_string());
        Box::new(move |j: &mut PathJob| {
            j.toolchain.entries.push(ToolEntry {
                path: p.clone(),
                kind: ToolKind::Link(target.clone()),
            });
            j.toolchain.entries.sort();
        }) as Edit
    };
    let cases: Vec<(&str, Edit, &str)> = vec![
        ("input with ..", file("/src/../etc/a.c"), "path"),
        ("input with //", file("/src//a.c"), "path"),
        ("relative input", file("src/a.c"), "path"),
        ("input in /proc", file("/proc/self/mem"), "path"),
        ("input in /dev", file("/dev/sda"), "path"),
        ("input /", file("/"), "path"),
        ("input with NUL", file("/src/a\0.c"), "path"),
        (
            "dir with ..",
            Box::new(|j: &mut PathJob| j.dirs = vec!["/usr/../..".into()]),
            "path",
        ),
        (
            "relative cwd",
            Box::new(|j: &mut PathJob| j.cwd = "src".into()),
            "path",
        ),
        (
            "cwd /proc/self",
            Box::new(|j: &mut PathJob| j.cwd = "/proc/self".into()),
            "path",
        ),
        (
            "output with ..",
            Box::new(|j: &mut PathJob| j.outputs = vec!["/src/../a.o".into()]),
            "path",
        ),
        (
            "output in /dev",
            Box::new(|j: &mut PathJob| {
                j.args = ["-c", "a.c", "-o", "/dev/sda"].map(String::from).to_vec();
                j.outputs = vec!["/dev/sda".into()];
            }),
            "path",
        ),
        (
            "output equal to the input",
            Box::new(|j: &mut PathJob| {
                j.args = ["-c", "a.c", "-o", "a.c"].map(String::from).to_vec();
                j.outputs = vec!["/src/a.c".into()];
            }),
            "is an input",
        ),
        (
            "output equal to a toolchain file",
            Box::new(|j: &mut PathJob| {
                j.args = ["-c", "a.c", "-o", "/usr/bin/gcc"]
                    .map(String::from)
                    .to_vec();
                j.outputs = vec!["/usr/bin/gcc".into()];
            }),
            "is an input",
        ),
        (
            "output the arguments do not name",
            Box::new(|j: &mut PathJob| j.outputs.push("/src/other.o".into())),
            "output",
        ),
        (
            "toolchain link at /",
            link("/", "/etc"),
            "not an absolute, clean path",
        ),
        (
            "toolchain link with ..",
            link("/usr/../x", "/"),
            "not an absolute, clean path",
        ),
        (
            "toolchain link in /proc",
            link("/proc/x", "/"),
            "not an absolute, clean path",
        ),
        (
            "empty link target",
            link("/usr/lnk", ""),
            "not an absolute, clean path",
        ),
        (
            "unsorted toolchain",
            Box::new(|j: &mut PathJob| j.toolchain.entries.reverse()),
            "not sorted",
        ),
        (
            "driver not in the package",
            Box::new(|j: &mut PathJob| j.toolchain.driver = "/usr/bin/cc".into()),
            "driver",
        ),
        (
            "200 000 input files",
            Box::new(|j: &mut PathJob| {
                let d = j.files[0].digest;
                j.files = (0..200_000)
                    .map(|i| TreeFile {
                        path: format!("/src/f{i}.h"),
                        digest: d,
                    })
                    .collect();
            }),
            "too many files",
        ),
        (
            "LD_PRELOAD",
            Box::new(|j: &mut PathJob| j.env.push(("LD_PRELOAD".into(), "/src/a.c".into()))),
            "environment",
        ),
        (
            "LD_LIBRARY_PATH",
            Box::new(|j: &mut PathJob| j.env.push(("LD_LIBRARY_PATH".into(), "/src".into()))),
            "environment",
        ),
        (
            "GCC_EXEC_PREFIX",
            Box::new(|j: &mut PathJob| j.env.push(("GCC_EXEC_PREFIX".into(), "/src/".into()))),
            "environment",
        ),
        (
            "an unknown variable",
            Box::new(|j: &mut PathJob| j.env.push(("BASH_ENV".into(), "/src/a.c".into()))),
            "environment",
        ),
        (
            "-B",
            Box::new(|j: &mut PathJob| j.args.push("-B/src/".into())),
            "flag",
        ),
        (
            "-fplugin",
            Box::new(|j: &mut PathJob| j.args.push("-fplugin=/src/a.c".into())),
            "flag",
        ),
        (
            "@file",
            Box::new(|j: &mut PathJob| j.args.push("@/src/a.c".into())),
            "flag",
        ),
        (
            "-wrapper",
            Box::new(|j: &mut PathJob| {
                j.args.push("-wrapper".into());
                j.args.push("/bin/sh,-c".into());
            }),
            "flag",
        ),
        (
            "argv[0] that is no compiler",
            Box::new(|j: &mut PathJob| j.arg0 = "/usr/bin/bash".into()),
            "compiler",
        ),
        (
            "empty argv[0]",
            Box::new(|j: &mut PathJob| j.arg0 = String::new()),
            "argv[0]",
        ),
        (
            "unknown family",
            Box::new(|j: &mut PathJob| j.family = "javac".into()),
            "same-path",
        ),
    ];
    let mut failed = Vec::new();
    for (what, edit, reason) in &cases {
        let mut j = base();
        edit(&mut j);
        match ask(&peer, j) {
            Ok(PeerResponse::Refused(why)) => {
                eprintln!("{what}: refused: {why}");
                if !why.contains(reason) {
                    failed.push(format!(
                        "{what}: refused, but for {why:?} (wanted {reason:?})"
                    ));
                }
            }
            other => failed.push(format!("{what}: not refused: {other:?}")),
        }
    }
    assert!(
        failed.is_empty(),
        "defence failed: PathJob checks —\n{}",
        failed.join("\n")
    );
    farm.assert_still_serving(1, "escaping paths");
}

/// Toolchain links that point out of the root (`/`, `../../..`, an absolute path of
/// the worker's own directory) are followed inside the job's root only: inputs and
/// outputs laid out through them land inside it, an output under a link comes back
/// from the job's tree, and the worker's directory is unchanged.
#[test]
fn toolchain_links_stay_inside_the_root() {
    need_root!();
    let _serial = one_at_a_time();
    let mut farm = farm_with_worker("");
    let worker = &farm.nodes[1];
    let node_dir = worker.dir.display().to_string();
    let before = snapshot(&worker.dir);
    let peer = farm.member_to(1);
    let script = r#"ls /up /root-link /host 2>&1
echo object > /host/out.o
cat /host/in.h
exit 0"#;
    let mut t = ship(&peer, script);
    for (p, target) in [
        ("/root-link", "/".to_string()),
        ("/up", "../../../../../../..".to_string()),
        ("/host", node_dir.clone()),
    ] {
        t.entries.push(ToolEntry {
            path: p.into(),
            kind: ToolKind::Link(target),
        });
    }
    t.entries.sort();
    // The package's files are blobs already; only the entries changed.
    let src = blob(b"int x;\n".to_vec());
    let header = blob(b"/* HEADER-THROUGH-LINK */\n".to_vec());
    put_blobs(&peer, vec![src.clone(), header.clone()]);
    let mut j = job(
        &t,
        &["-c", "a.c", "-o", "/host/out.o"],
        &src,
        &["/host/out.o"],
    );
    j.files.push(TreeFile {
        path: "/host/in.h".into(),
        digest: header.digest,
    });
    j.files.push(TreeFile {
        path: "/up/etc/in2.h".into(),
        digest: header.digest,
    });
    let r = ask(&peer, j);
    eprintln!("{:?}", r.as_ref().map(describe));
    let d = done(r, "the job with escaping links");
    let out = text(&d.stdout) + &text(&d.stderr);
    eprintln!("the job printed:\n{out}");
    assert!(out.contains("HEADER-THROUGH-LINK"), "{out}");
    assert_eq!(
        d.outputs
            .iter()
            .map(|o| (o.path.as_str(), o.data.clone()))
            .collect::<Vec<_>>(),
        vec![("/host/out.o", b"object\n".to_vec())]
    );
    let after = snapshot(&worker.dir);
    let added: Vec<&String> = after.keys().filter(|k| !before.contains_key(*k)).collect();
    let host_files: Vec<&String> = added
        .iter()
        .copied()
        .filter(|k| !k.starts_with("state/") && !k.starts_with("farmd."))
        .collect();
    assert!(
        host_files.is_empty(),
        "defence failed: resolve_in_root — files appeared in the worker's directory: \
         {host_files:?}"
    );
    for secret in ["BEGIN", "node-2.key"] {
        assert!(
            !out.contains(secret),
            "the job listed the worker's directory: {out}"
        );
    }
    farm.assert_still_serving(1, "links out of the root");
}

// ------------------------------------------------------------------ own toolchains only

/// With `accept_toolchains = false` a worker runs only its own compilers. A member
/// tries to get its own code run anyway: this machine's loader placed at a compiler
/// path (and a link named `gcc` to it) running an input as a program, and the worker's
/// exact own gcc package with an input `/etc/ld.so.preload` naming an input library.
/// Each is refused; the own package runs an ordinary compile.
#[test]
fn own_toolchains_only_means_no_code_of_the_member() {
    need_root!();
    let _serial = one_at_a_time();
    let mut farm = farm_with_worker("accept_toolchains = false");
    let peer = farm.member_to(1);
    let gcc = which::which("gcc").unwrap();
    let family = farm::lang::family_by_name("gcc").unwrap();
    let programs = family
        .path_jobs()
        .unwrap()
        .toolchain_files(&gcc, gcc.as_os_str())
        .unwrap();
    let own = farm::toolchain::build(&gcc, &programs, &mut |p| farm::fsutil::hash_file(p)).unwrap();
    let loader = own
        .entries
        .iter()
        .find(|e| e.path.contains("/ld-linux"))
        .expect("the package holds the loader")
        .clone();
    let tmp = tempfile::tempdir().unwrap();
    fs::write(
        tmp.path().join("evil.c"),
        "#include <unistd.h>\n__attribute__((constructor)) static void f(void) \
         { write(2, \"MEMBER-CODE-RAN\\n\", 16); }\n",
    )
    .unwrap();
    sh(tmp.path(), "gcc -shared -fPIC evil.c -o evil.so");
    let evil_so = blob(fs::read(tmp.path().join("evil.so")).unwrap());
    let echo = blob(fs::read(require("echo")).unwrap());
    let src = blob(b"int answer(void) { return 42; }\n".to_vec());
    let preload = blob(b"/src/evil.so\n".to_vec());
    put_blobs(
        &peer,
        vec![evil_so.clone(), echo.clone(), src.clone(), preload.clone()],
    );
    let gcc_path = gcc.display().to_string();
    let predef = blob(fs::read("/usr/include/stdc-predef.h").unwrap());
    put_blobs(&peer, vec![predef.clone()]);
    let own_job = |args: &[&str]| {
        let mut j = job(&own, args, &src, &["/src/a.o"]);
        j.arg0 = gcc_path.clone();
        // gcc reads stdc-predef.h before every source.
        j.files.push(TreeFile {
            path: "/usr/include/stdc-predef.h".into(),
            digest: predef.digest,
        });
        j.dirs = vec!["/usr/include".into()];
        j
    };
    // The loader as `/usr/local/bin/gcc`, a file and a link: `gcc /src/evil.c ...`
    // would make it run the input `evil.c` (this machine's echo) as a program.
    let mut as_file = own.clone();
    as_file.entries.push(ToolEntry {
        path: "/usr/local/bin/gcc".into(),
        kind: loader.kind.clone(),
    });
    as_file.entries.sort();
    as_file.driver = "/usr/local/bin/gcc".into();
    let ToolKind::File { .. } = loader.kind else {
        panic!("set-up: the loader is a file")
    };
    let mut as_link = own.clone();
    as_link.entries.push(ToolEntry {
        path: "/usr/local/bin/gcc".into(),
        kind: ToolKind::Link(loader.path.clone()),
    });
    as_link.entries.sort();
    let loader_job = |t: &Toolchain| {
        let mut j = job(
            t,
            &["/src/evil.c", "-c", "-o", "/src/a.o"],
            &src,
            &["/src/a.o"],
        );
        j.arg0 = "/usr/local/bin/gcc".into();
        j.files = vec![TreeFile {
            path: "/src/evil.c".into(),
            digest: echo.digest,
        }];
        j
    };
    let mut preload_job = own_job(&["-c", "a.c", "-o", "a.o"]);
    preload_job.files.push(TreeFile {
        path: "/etc/ld.so.preload".into(),
        digest: preload.digest,
    });
    preload_job.files.push(TreeFile {
        path: "/src/evil.so".into(),
        digest: evil_so.digest,
    });
    let mut failed = Vec::new();
    for (what, j, reason) in [
        (
            "the loader as a compiler file",
            loader_job(&as_file),
            "is not one of this node's",
        ),
        (
            "a link named gcc to the loader",
            loader_job(&as_link),
            "is not one of this node's",
        ),
        (
            "/etc/ld.so.preload naming an input library",
            preload_job,
            "executable or library",
        ),
    ] {
        let r = ask(&peer, j);
        eprintln!("{what}: {:?}", r.as_ref().map(describe));
        match r {
            Ok(PeerResponse::Refused(why)) if why.contains(reason) => {}
            Ok(PeerResponse::Refused(why)) => {
                failed.push(format!("{what}: refused for {why:?}, wanted {reason:?}"))
            }
            Ok(PeerResponse::TreeDone(d)) => {
                let out = text(&d.stdout) + &text(&d.stderr);
                if out.contains("MEMBER-CODE-RAN") || out.contains("-c -o /src/a.o") {
                    failed.push(format!("{what}: the member's code ran: {out}"));
                } else if d.exit_code == 0 {
                    failed.push(format!("{what}: ran to success: {out}"));
                }
            }
            other => failed.push(format!("{what}: unexpected answer {other:?}")),
        }
    }
    assert!(
        failed.is_empty(),
        "defence failed: accept_toolchains = false (own entries at their own paths, no \
         code among the inputs) —\n{}",
        failed.join("\n")
    );
    // The worker's own package still runs an ordinary compile.
    let d = done(
        ask(&peer, own_job(&["-O2", "-c", "a.c", "-o", "a.o"])),
        "an ordinary job on the worker's own gcc",
    );
    assert_eq!(d.exit_code, 0, "{}", text(&d.stderr));
    assert!(d.outputs.iter().any(|o| o.data.starts_with(b"\x7fELF")));
    farm.assert_still_serving(1, "a member's code under accept_toolchains = false");
}

// ------------------------------------------------------------------ cache, frames

/// What a same-path job writes goes back to its sender only: after jobs whose output
/// is forged, the farm's cache (every node's store) holds no entry more than before.
#[test]
fn a_same_path_job_stores_nothing_in_the_farm_cache() {
    need_root!();
    let _serial = one_at_a_time();
    let farm = farm_with_worker("");
    let peer = farm.member_to(1);
    let stores = |farm: &SecFarm| -> Vec<BTreeMap<String, Vec<u8>>> {
        farm.nodes
            .iter()
            .map(|n| snapshot(&n.state().join("store")))
            .collect()
    };
    let before = stores(&farm);
    let t = ship(&peer, "echo FORGED-OBJECT > /src/a.o; exit 0");
    let src = blob(b"int answer(void) { return 42; }\n".to_vec());
    put_blobs(&peer, vec![src.clone()]);
    for _ in 0..3 {
        let d = done(
            ask(
                &peer,
                job(&t, &["-O2", "-c", "a.c", "-o", "a.o"], &src, &["/src/a.o"]),
            ),
            "the forging job",
        );
        assert_eq!(d.outputs.len(), 1);
    }
    let after = stores(&farm);
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        let new: Vec<&String> = a.keys().filter(|k| !b.contains_key(*k)).collect();
        let forged = a.values().any(|v| contains(v, b"FORGED-OBJECT"));
        assert!(
            new.is_empty() && !forged,
            "defence failed: same-path results go to the sender only — {}'s store gained \
             {new:?} (forged object stored: {forged})",
            farm.nodes[i].name
        );
    }
}

/// Garbage, truncated and oversized PathJob frames are refused (or the stream
/// closed), and farmd keeps serving.
#[test]
fn garbage_path_job_frames_are_refused() {
    need_root!();
    let _serial = one_at_a_time();
    let mut farm = farm_with_worker("");
    let peer = farm.member_to(1);
    let t = ship(&peer, "exit 0");
    let src = blob(b"int x;\n".to_vec());
    let request = PeerRequest::PathJob(Box::new(job(
        &t,
        &["-c", "a.c", "-o", "a.o"],
        &src,
        &["/src/a.o"],
    )));
    let frame = |flags: u8, payload: &[u8]| {
        let mut f = ((payload.len() + 1) as u32).to_le_bytes().to_vec();
        f.push(flags);
        f.extend_from_slice(payload);
        f
    };
    let payload = postcard::to_allocvec(&request).unwrap();
    let mut huge_count = payload[..1].to_vec();
    // PathJob variant, then a family string claiming 2^62 bytes.
    huge_count.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated PathJob", frame(0, &payload[..payload.len() / 2])),
        ("PathJob with a garbage tail", {
            let mut p = payload.clone();
            let n = p.len();
            for b in &mut p[n / 3..] {
                *b ^= 0x5a;
            }
            frame(0, &p)
        }),
        ("a length of 2^62", frame(0, &huge_count)),
        ("a frame over the cap", {
            let mut f = ((farm::protocol::MAX_FRAME + 2) as u32)
                .to_le_bytes()
                .to_vec();
            f.push(0);
            f.extend_from_slice(&payload);
            f
        }),
        ("bad zstd", frame(1, &payload)),
        ("empty frame", 0u32.to_le_bytes().to_vec()),
    ];
    for (what, bytes) in &cases {
        let t0 = std::time::Instant::now();
        let r = peer.raw(bytes);
        eprintln!("{what}: {r:?} in {:?}", t0.elapsed());
        assert!(
            matches!(r, Ok(PeerResponse::Refused(_)) | Err(_)),
            "{what}: answered {r:?}"
        );
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(20),
            "{what}: hung"
        );
    }
    farm.assert_still_serving(1, "garbage PathJob frames");
}
