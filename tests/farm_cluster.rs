//! The farm end to end: real farmd processes on loopback with their own certificates,
//! cache directories and agent sockets; real gcc/clang and a real Debian project built
//! by make. Every object is compared with `cmp`-equality against a plain local build.

mod common;
use common::farmd::*;
use common::rawpeer::*;
use common::*;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use farm::protocol::{self, CompilerAd, Job, PeerRequest, PeerResponse};

/// The tests that build lua through a farm run one at a time: each starts several
/// farmd and `make -j8`, and CI has two cores for everything.
fn heavy() -> std::sync::MutexGuard<'static, ()> {
    static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

fn lua_make(env: &Env, tree: &Path, cc: &str, agent: Option<&Path>) {
    lua_make_j(env, tree, cc, agent, 8)
}

/// One peer's line of `farm status --json`.
fn peer_of(status: &serde_json::Value, node: &str) -> Option<serde_json::Value> {
    status["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["node"] == node)
        .cloned()
}

/// A cluster whose first node keeps nothing at home, a test environment, lua's
/// sources, a tree, and the objects of a plain build of it.
fn lua_farm(names: &[&str]) -> (Cluster, Env, PathBuf, PathBuf, BTreeMap<String, Vec<u8>>) {
    require("gcc");
    require("make");
    let src = sources("lua5.4");
    let cl = Cluster::new(names, |i| {
        if i == 0 { "local_slots = 0" } else { "" }.to_string()
    });
    cl.wait_all();
    let env = Env::new("direct");
    let tree = env.root.path().join("lua");
    copy_tree(&src, &tree);
    lua_make(&env, &tree, "gcc", None);
    let plain = objects(&tree);
    (cl, env, src, tree, plain)
}

/// `make -j8` of lua through farm-cc and the agent at `agent`, in the background.
fn spawn_lua_make(env: &Env, tree: &Path, agent: &Path) -> Child {
    spawn_lua_make_j(env, tree, agent, 8)
}

fn jobs_ok(status: &serde_json::Value) -> u64 {
    status["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["jobs_ok"].as_u64().unwrap())
        .sum()
}

#[test]
fn three_farmd_build_lua_remote_then_from_the_farm_cache() {
    let _one_at_a_time = heavy();
    // Node a keeps nothing at home: every distributable compile goes to b or c.
    let (cl, env, src, tree, plain) = lua_farm(&["node-a", "node-b", "node-c"]);
    let a = &cl.nodes[0];
    let n = plain.len() as u64;

    copy_tree(&src, &tree);
    let farm_cc = farm_cc_bin().display().to_string();
    lua_make(&env, &tree, &farm_cc, Some(&a.socket()));
    assert_same_objects(&plain, &objects(&tree), "built by the farm");
    let remote = env.counter(&["farm", "remote"]);
    // A TU whose compile printed warnings is compiled again here, so the user sees
    // this machine's compiler's own messages; every other one ran on a peer.
    // Under load (CI has two cores for everything and runs the tests in parallel) a
    // peer may miss adverts and be briefly not live (`no_peer`), or look full from a
    // stale advert (`peers_busy`): such a TU is compiled here.
    let diagnostics = env.counter(&["farm", "home", "diagnostics"]);
    let home =
        env.counter(&["farm", "home", "no_peer"]) + env.counter(&["farm", "home", "peers_busy"]);
    assert_eq!(
        remote + diagnostics + home,
        n,
        "every TU compiled by a peer: {}",
        env.stats()
    );
    assert!(remote >= n / 2 && home <= 4, "{}", env.stats());
    // Comments travel with the preprocessed source (`/* FALLTHROUGH */`), so a peer's
    // gcc warns exactly where this one does: nowhere, for lua.
    assert_eq!(diagnostics, 0, "{}", env.stats());
    assert_eq!(env.misses(), n, "{}", env.stats());
    let st = a.status();
    assert_eq!(
        jobs_ok(&st),
        remote + diagnostics,
        "agent's count of jobs peers ran: {st}"
    );
    for p in st["peers"].as_array().unwrap() {
        assert!(
            p["jobs_ok"].as_u64().unwrap() > 0,
            "both peers ran jobs: {st}"
        );
    }

    // An empty local cache: the farm's cache answers every TU.
    let o = env.farm(&["cache", "clear"]);
    assert!(o.status.success());
    env.farm(&["stats", "--zero"]);
    // Publishing is asynchronous: give the last puts a moment to land.
    std::thread::sleep(Duration::from_millis(500));
    copy_tree(&src, &tree);
    lua_make(&env, &tree, &farm_cc, Some(&a.socket()));
    assert_same_objects(&plain, &objects(&tree), "from the farm's cache");
    assert_eq!(
        env.counter(&["hits", "farm"]),
        n,
        "every TU from the farm's cache: {}",
        env.stats()
    );
    assert_eq!(env.misses(), 0);
    let o = sh(&tree.join("src"), "./lua -e 'print(6*7)'");
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "42");
    // The human form of `farm status` lists both peers as live.
    let o = farm(&["status"], &a.socket());
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success());
    for peer in ["node-b", "node-c"] {
        assert!(
            text.lines()
                .any(|l| l.contains(peer) && l.contains(" yes ")),
            "{text}"
        );
    }
}

/// farmd's configuration errors are one line naming the file and the key; farmd
/// without any farmd running leaves `farm status` with a clear message.
#[test]
fn farmd_config_errors_name_the_file_and_key() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("farmd.toml");
    let check = |text: &str| {
        fs::write(&cfg, text).unwrap();
        let o = Command::new(farmd_bin())
            .arg("--check")
            .arg(&cfg)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{text}");
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
        assert!(err.contains(&cfg.display().to_string()), "{err}");
        err
    };
    let base = "ca = \"ca.crt\"\ncert = \"n.crt\"\nkey = \"n.key\"\nstate_dir = \"s\"\n";
    assert!(check(&format!("listen = \"nowhere\"\n{base}")).contains("listen"));
    assert!(check(&format!("listen = \"127.0.0.1:1\"\nslots = 0\n{base}")).contains("slots"));
    assert!(check(&format!("listen = \"127.0.0.1:1\"\nbogus = 1\n{base}")).contains("bogus"));
    assert!(check(&format!("listen = \"0.0.0.0:1\"\n{base}")).contains("advertise"));
    // Certificates that are not there are named too.
    let err = check(&format!("listen = \"127.0.0.1:1\"\n{base}"));
    assert!(err.contains("ca.crt"), "{err}");
    let o = farm(&["status"], &d.path().join("none.sock"));
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no farmd agent"));

    // A node key that others may read is refused, as ssh refuses one: whoever reads it
    // is this node to the cluster (a key in group `farm` is readable by every build user).
    let ca = d.path().join("ca");
    let made = |args: &[&str]| {
        let o = Command::new(farm_bin()).args(args).output().unwrap();
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    made(&["cluster", "init", ca.to_str().unwrap(), "--name", "t"]);
    made(&[
        "cluster",
        "issue",
        "n",
        "--ca",
        ca.to_str().unwrap(),
        "--out",
        d.path().to_str().unwrap(),
    ]);
    fs::copy(ca.join("ca.crt"), d.path().join("ca.crt")).unwrap();
    let key = d.path().join("n.key");
    let text = format!("listen = \"127.0.0.1:1\"\n{base}");
    for mode in [0o640, 0o604, 0o644] {
        fs::set_permissions(&key, fs::Permissions::from_mode(mode)).unwrap();
        let err = check(&text);
        assert!(
            err.contains(&key.display().to_string()) && err.contains("readable by others"),
            "{mode:o}: {err}"
        );
    }
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(&cfg, &text).unwrap();
    let o = Command::new(farmd_bin())
        .arg("--check")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// Single files through a peer for both compilers, C and C++, with the dependency
/// flags build systems use: objects and `.d` files equal the plain compile's.
#[test]
fn remote_objects_and_depfiles_match_plain_for_gcc_and_clang() {
    require("clang");
    let cl = Cluster::new(&["node-a", "node-b"], |i| {
        if i == 0 { "local_slots = 0" } else { "" }.to_string()
    });
    cl.wait_all();
    let env = Env::new("direct");
    env.write("inc/util.h", "#define TWICE(x) ((x) * 2)\nint util(int);\n");
    env.write(
        "a.c",
        "#include <stdio.h>\n#include \"inc/util.h\"\nint main(void){printf(\"%d\\n\", TWICE(21));return util(0);}\n",
    );
    env.write(
        "b.cpp",
        "#include <vector>\n#include \"inc/util.h\"\nint f(){std::vector<int> v{1,2,3};return TWICE(v.size());}\n",
    );
    let cases: &[(&str, &str, &[&str])] = &[
        ("gcc", "a.c", &["-O2", "-Iinc", "-DX=1"]),
        (
            "gcc",
            "a.c",
            &["-O1", "-MD", "-MT", "obj/a.o", "-MF", "obj/a.d"],
        ),
        ("g++", "b.cpp", &["-O2", "-std=c++17", "-MMD", "-MP"]),
        ("clang", "a.c", &["-O2", "-MD"]),
        (
            "clang++",
            "b.cpp",
            &["-O1", "-fPIC", "-MD", "-MF", "obj/b.d"],
        ),
    ];
    fs::create_dir_all(env.work.join("obj")).unwrap();
    for (cc, src, flags) in cases {
        let obj = "obj/out.o";
        let mut args: Vec<&str> = flags.to_vec();
        args.extend(["-c", src, "-o", obj]);
        let depfile = if flags.contains(&"-MF") {
            Some(flags[flags.iter().position(|f| *f == "-MF").unwrap() + 1].to_string())
        } else if flags.iter().any(|f| f.starts_with("-M")) {
            Some("obj/out.d".to_string())
        } else {
            None
        };
        let o = env.cmd(cc).args(&args).output().unwrap();
        assert!(o.status.success());
        let plain_obj = env.read(obj);
        let plain_dep = depfile.as_ref().map(|d| env.read(d));
        fs::remove_file(env.work.join(obj)).unwrap();
        let before = env.counter(&["farm", "remote"]);
        let o = env
            .cmd(farm_bin())
            .arg(cc)
            .args(&args)
            .env("FARM_AGENT", cl.nodes[0].socket())
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(o.stderr.is_empty());
        assert_eq!(
            env.counter(&["farm", "remote"]),
            before + 1,
            "{cc} {flags:?} ran on the peer: {}",
            env.stats()
        );
        assert!(env.read(obj) == plain_obj, "{cc} {flags:?}: object differs");
        if let (Some(d), Some(pd)) = (&depfile, &plain_dep) {
            assert_eq!(
                String::from_utf8_lossy(&env.read(d)),
                String::from_utf8_lossy(pd),
                "{cc} {flags:?}: depfile differs"
            );
        }
        env.farm(&["cache", "clear"]);
    }
    // With debug info the compile runs on the peer at the same paths (a same-path
    // job), and the object is exactly the plain one.
    let o = env
        .cmd("gcc")
        .args(["-g", "-c", "a.c", "-o", "g.o"])
        .output()
        .unwrap();
    assert!(o.status.success());
    let plain = env.read("g.o");
    let before_g = env.counter(&["farm", "remote"]);
    let o = env
        .cmd(farm_cc_bin())
        .args(["-g", "-c", "a.c", "-o", "g.o"])
        .env("FARM_CC", "gcc")
        .env("FARM_AGENT", cl.nodes[0].socket())
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(env.read("g.o") == plain);
    assert_eq!(
        env.counter(&["farm", "remote"]),
        before_g + 1,
        "{}",
        env.stats()
    );
    // A warning is shown exactly as the local compiler prints it: such a compile is
    // done here, whatever a peer said.
    env.write("w.c", "int f(int x){int unused; return x;}\n");
    let o = env
        .cmd("gcc")
        .args(["-Wall", "-c", "w.c", "-o", "w.o"])
        .output()
        .unwrap();
    let plain_err = o.stderr;
    assert!(!plain_err.is_empty());
    let o = env
        .cmd(farm_bin())
        .args(["gcc", "-Wall", "-c", "w.c", "-o", "w.o"])
        .env("FARM_AGENT", cl.nodes[0].socket())
        .output()
        .unwrap();
    assert!(o.status.success());
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&plain_err)
    );
}

#[test]
fn peer_killed_mid_build_then_every_peer_stopped() {
    let _one_at_a_time = heavy();
    let (mut cl, env, src, tree, plain) = lua_farm(&["node-a", "node-b", "node-c"]);

    // kill -9 node-b as soon as it has run a job for us; the build goes on.
    copy_tree(&src, &tree);
    let farm_cc = farm_cc_bin().display().to_string();
    let child = spawn_lua_make(&env, &tree, &cl.nodes[0].socket());
    let t0 = Instant::now();
    loop {
        let st = cl.nodes[0].status();
        let b = peer_of(&st, "node-b")
            .map(|p| {
                (
                    p["jobs_ok"].as_u64().unwrap(),
                    p["inflight"].as_u64().unwrap(),
                )
            })
            .unwrap_or((0, 0));
        // It has run a job for us and is running one now.
        if b.0 >= 1 && b.1 >= 1 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "node-b never ran a job: {st}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    cl.nodes[1].kill9();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_same_objects(&plain, &objects(&tree), "peer killed mid-build");
    // node-b leaves the table; the job it was running failed there and ran elsewhere.
    cl.wait_live(0, 1);
    let st = cl.nodes[0].status();
    let b = peer_of(&st, "node-b").unwrap();
    assert!(b["jobs_failed"].as_u64().unwrap() >= 1, "{st}");
    assert!(!b["live"].as_bool().unwrap());
    // Restarted, it speaks again and is back in the table.
    cl.nodes[1].start();
    cl.wait_live(0, 2);
    cl.nodes[1].kill9();
    cl.wait_live(0, 1);

    // Stop every peer (node-c gracefully, with SIGTERM): the build compiles at home.
    let c_pid = cl.nodes[2].pid();
    run_ok(Command::new("kill").args(["-TERM", &c_pid.to_string()]));
    let t0 = Instant::now();
    while cl.nodes[2].alive() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "SIGTERM did not stop node-c"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    cl.wait_live(0, 0);
    env.farm(&["cache", "clear"]);
    env.farm(&["stats", "--zero"]);
    copy_tree(&src, &tree);
    lua_make(&env, &tree, &farm_cc, Some(&cl.nodes[0].socket()));
    assert_same_objects(&plain, &objects(&tree), "no peers");
    assert_eq!(env.counter(&["farm", "remote"]), 0);
    // node-a is now the home of every key: what it stored answers, the rest is
    // compiled here.
    assert_eq!(
        env.counter(&["farm", "home", "no_peer"]) + env.counter(&["hits", "farm"]),
        plain.len() as u64,
        "{}",
        env.stats()
    );

    // And with no farmd at all: a plain local cache, no errors, no waiting.
    cl.nodes[0].kill9();
    env.farm(&["cache", "clear"]);
    env.farm(&["stats", "--zero"]);
    copy_tree(&src, &tree);
    lua_make(&env, &tree, &farm_cc, Some(&cl.nodes[0].socket()));
    assert_same_objects(&plain, &objects(&tree), "no farmd");
    assert_eq!(env.misses(), plain.len() as u64, "{}", env.stats());
    assert_eq!(env.counter(&["farm", "fallback", "agent_error"]), 0);
    drop(cl.root);
}

/// The local farmd itself dies (kill -9) while shims wait on it: each of them compiles
/// at home, the build succeeds, and the fallbacks are counted.
#[test]
fn agent_killed_mid_build() {
    let _one_at_a_time = heavy();
    let (mut cl, env, src, tree, plain) = lua_farm(&["node-a", "node-b"]);
    copy_tree(&src, &tree);
    let child = spawn_lua_make(&env, &tree, &cl.nodes[0].socket());
    let t0 = Instant::now();
    // Shims are waiting on the agent once node-b is running jobs for it.
    while peer_of(&cl.nodes[0].status(), "node-b")
        .map(|p| p["inflight"].as_u64().unwrap())
        .unwrap_or(0)
        == 0
    {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no job reached node-b"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    cl.nodes[0].kill9();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_same_objects(&plain, &objects(&tree), "agent killed mid-build");
    assert!(
        env.counter(&["farm", "fallback", "agent_error"]) >= 1,
        "{}",
        env.stats()
    );
    assert_eq!(env.misses(), plain.len() as u64, "{}", env.stats());
}

// ------------------------------------------------------------------ security

fn gcc_ad() -> CompilerAd {
    let gcc = fs::canonicalize(which::which("gcc").unwrap()).unwrap();
    let memo = tempfile::tempdir().unwrap();
    CompilerAd {
        name: "gcc".into(),
        identity: farm::key::compiler_identity(
            &gcc,
            &farm::lang::Family::identity_probe(&farm::lang::gcc::GCC, &gcc),
            memo.path(),
        )
        .unwrap(),
    }
}

#[test]
fn strangers_garbage_and_unsafe_jobs_are_refused() {
    require("gcc");
    let mut cl = Cluster::new(&["node-a", "node-b"], |_| "revoked = [\"node-r\"]".into());
    cl.wait_all();
    let b = &cl.nodes[1];
    let ca = cl.ca.join("ca.crt");
    let tester = cl.root.path().join("tester");
    run_ok(
        Command::new(farm_bin())
            .args(["cluster", "issue", "tester", "--ca"])
            .arg(&cl.ca)
            .arg("--out")
            .arg(&tester),
    );
    let peer = RawPeer::connect(
        &ca,
        &tester.join("tester.crt"),
        &tester.join("tester.key"),
        &b.addr(),
    )
    .expect("a cluster certificate is accepted");

    // A good job runs (the control), a job with -fplugin= is refused by the worker.
    let job = |args: &[&str]| {
        let (input, outputs) = job_files("cpp-output");
        PeerRequest::Job(Job {
            family: "gcc".into(),
            compiler: gcc_ad(),
            input,
            args: args.iter().map(|s| s.to_string()).collect(),
            source: b"int answer(void) { return 42; }\n".to_vec(),
            outputs,
        })
    };
    match peer.ask(&job(&["-O2"])).unwrap() {
        PeerResponse::Done(r) => {
            assert_eq!(r.exit_code, 0);
            assert!(job_output(&r).starts_with(b"\x7fELF"));
        }
        other => panic!("good job not run: {other:?}"),
    }
    for bad in [
        &["-fplugin=/tmp/evil.so"][..],
        &["-B/tmp/evil"],
        &["-specs=/tmp/evil.specs"],
        &["-wrapper", "/bin/sh"],
        &["-o", "/etc/passwd"],
        &["-o../escape.o"],
        &["-save-temps"],
        &["-Xclang", "-load"],
        &["/etc/shadow"],
        &["@/etc/shadow"],
    ] {
        match peer.ask(&job(bad)).unwrap() {
            PeerResponse::Refused(why) => assert!(why.contains("refused"), "{bad:?}: {why}"),
            other => panic!("{bad:?} was not refused: {other:?}"),
        }
    }
    let mut other = job(&["-O2"]);
    if let PeerRequest::Job(j) = &mut other {
        j.compiler.identity = [0; 32];
    }
    assert!(
        matches!(peer.ask(&other).unwrap(), PeerResponse::Refused(w) if w.contains("not allowed"))
    );
    // The shim never ships -fplugin: it compiles such a file at home, untouched.
    let env = Env::new("direct");
    env.write("p.c", "int p;\n");
    let o = env
        .cmd(farm_bin())
        .args(["gcc", "-fplugin=/nonexistent/x.so", "-c", "p.c"])
        .env("FARM_AGENT", cl.nodes[0].socket())
        .output()
        .unwrap();
    let plain = env
        .cmd("gcc")
        .args(["-fplugin=/nonexistent/x.so", "-c", "p.c"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), plain.status.code());
    assert_eq!(o.stderr, plain.stderr);
    assert_eq!(env.counter(&["passthrough", "plugin"]), 1);

    // Oversized and garbage frames: a clear refusal, and farmd carries on.
    let rss0 = b.rss_kb();
    let mut huge = (u32::MAX - 8).to_le_bytes().to_vec();
    huge.extend_from_slice(&[0u8; 64]);
    match peer.raw(&huge) {
        Ok(PeerResponse::Refused(why)) => assert!(why.contains("exceeds"), "{why}"),
        other => panic!("oversized frame: {other:?}"),
    }
    for i in 0..50u32 {
        let mut g: Vec<u8> = (0..200u32)
            .map(|x| (x.wrapping_mul(2654435761).wrapping_add(i) >> 7) as u8)
            .collect();
        g[..4].copy_from_slice(&150u32.to_le_bytes());
        let r = peer.raw(&g);
        assert!(matches!(r, Ok(PeerResponse::Refused(_)) | Err(_)), "{r:?}");
    }
    // Random datagrams at the UDP port.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..5000u32 {
        let d: Vec<u8> = (0..1200u32)
            .map(|x| (x ^ i).wrapping_mul(2246822519) as u8)
            .collect();
        let _ = udp.send_to(&d, b.addr());
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(matches!(
        peer.ask(&job(&["-O1"])).unwrap(),
        PeerResponse::Done(_)
    ));
    let rss1 = b.rss_kb();
    assert!(
        rss1 < rss0 + 32 * 1024,
        "farmd grew from {rss0} kB to {rss1} kB"
    );
    assert!(cl.nodes[1].alive());

    // A node from another CA, a revoked node, and a client without a certificate are
    // refused at the handshake, and never show up as peers.
    let other_ca = cl.root.path().join("other-ca");
    run_ok(
        Command::new(farm_bin())
            .args(["cluster", "init"])
            .arg(&other_ca),
    );
    run_ok(
        Command::new(farm_bin())
            .args(["cluster", "issue", "node-x", "--ca"])
            .arg(&other_ca),
    );
    // With TLS 1.3 the client may finish its handshake before the server has
    // checked its certificate; the refusal then closes the connection before any
    // request is answered.
    if let Ok(p) = RawPeer::connect(
        &ca,
        &other_ca.join("node-x.crt"),
        &other_ca.join("node-x.key"),
        &cl.nodes[0].addr(),
    ) {
        assert!(
            p.ask(&job(&["-O2"])).is_err(),
            "a certificate of another CA is refused"
        );
    }
    run_ok(
        Command::new(farm_bin())
            .args(["cluster", "issue", "node-r", "--ca"])
            .arg(&cl.ca),
    );
    let revoked = RawPeer::connect(
        &ca,
        &cl.ca.join("node-r.crt"),
        &cl.ca.join("node-r.key"),
        &cl.nodes[0].addr(),
    );
    if let Ok(p) = revoked {
        // The handshake completes before the name is read; the first request fails.
        assert!(p.ask(&job(&["-O2"])).is_err(), "a revoked node is refused");
    }
    let no_cert = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
            ep.set_default_client_config(client_without_certificate(&ca));
            let conn = ep
                .connect(cl.nodes[0].addr().parse().unwrap(), farm::net::SERVER_NAME)
                .unwrap()
                .await;
            match conn {
                Err(_) => true,
                Ok(c) => {
                    // TLS 1.3 lets the client finish first; the server's refusal
                    // arrives as the connection closing before any stream works.
                    let r = async {
                        let (mut s, mut r) = c.open_bi().await?;
                        protocol::write_async(
                            &mut s,
                            &PeerRequest::Have {
                                kind: protocol::EntryKind::Result,
                                key: [0; 32],
                            },
                        )
                        .await?;
                        s.finish()?;
                        let _: PeerResponse = protocol::read_async(&mut r, 1024).await?;
                        anyhow::Ok(())
                    };
                    tokio::time::timeout(Duration::from_secs(5), r)
                        .await
                        .map(|x| x.is_err())
                        .unwrap_or(true)
                }
            }
        });
    assert!(no_cert, "a client without a certificate is refused");
    // farmd with a foreign certificate never joins: node-a does not list it.
    let stranger_dir = cl.root.path().join("stranger");
    fs::create_dir_all(&stranger_dir).unwrap();
    let port = free_port();
    fs::write(
        stranger_dir.join("farmd.toml"),
        format!(
            "listen = \"127.0.0.1:{port}\"\npeers = [\"{}\"]\nca = \"{}/ca.crt\"\ncert = \"{o}/node-x.crt\"\nkey = \"{o}/node-x.key\"\nsocket = \"agent.sock\"\nstate_dir = \"state\"\nlog = \"farmd.log\"\n",
            cl.nodes[0].addr(),
            other_ca.display(),
            o = other_ca.display()
        ),
    )
    .unwrap();
    let mut stranger = Node {
        name: "node-x".into(),
        dir: stranger_dir.clone(),
        port,
        config: stranger_dir.join("farmd.toml"),
        child: None,
    };
    stranger.start();
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        stranger.alive(),
        "{}",
        fs::read_to_string(stranger_dir.join("farmd.stderr")).unwrap()
    );
    assert_eq!(stranger.live_peers(), Vec::<String>::new());
    let peers_of_a = cl.nodes[0].live_peers();
    assert_eq!(
        peers_of_a,
        vec!["node-b".to_string()],
        "only the cluster's own node"
    );
    // Each refusal is counted under its reason in /metrics.
    let metric = |n: &Node, line: &str| -> f64 {
        let (_, text) = common::http::get(&format!("http://127.0.0.1:{}/metrics", n.port));
        text.lines()
            .find(|l| l.starts_with(line))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {line} in:\n{text}"))
    };
    let b = &cl.nodes[1];
    assert!(metric(b, "farm_refusals_total{reason=\"arguments\"}") >= 8.0);
    assert!(metric(b, "farm_refusals_total{reason=\"compiler\"}") >= 1.0);
    assert!(
        metric(
            b,
            "farm_jobs_total{role=\"served\",shape=\"text\",family=\"gcc\",result=\"ok\"}"
        ) >= 2.0
    );
    let a = &cl.nodes[0];
    assert!(
        metric(
            a,
            "farm_peer_connections_refused_total{reason=\"handshake\"}"
        ) >= 1.0
    );
    assert!(metric(a, "farm_peer_connections_refused_total{reason=\"revoked\"}") >= 1.0);
    cl.nodes[1].kill9();
}
