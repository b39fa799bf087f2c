//! farm's compiles through a REAPI service's Execute (`reapi_execute`): a real
//! BuildGrid 0.9.1 (target/buildgrid-venv, scripts/install-deps.sh) with its scheduler on
//! a throwaway PostgreSQL, one farmd as its bot (`reapi_bot`, `accept_toolchains`: it
//! runs `farm-layout=rootfs` leases) and one farmd as the home node with
//! `reapi_execute` and no peers. lua5.4 built with `-g` through farm-cc: every compile a
//! same-path job, run as a rootfs Action by the bot, its object byte-identical to a
//! plain build at the same path; then a new home node and an empty local cache: every
//! compile answered from BuildGrid's Action Cache (no lease); then BuildGrid killed
//! mid-build: the build finishes at home with the same objects, nothing hangs. And a
//! service that is not there, or never answers: every compile at home, no stall.

mod common;
use common::farmd::*;
use common::servers::*;
use common::*;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The shared BuildGrid YAML for rootfs Actions: `farm-layout` a match key, no
/// random pause in its assigner (docs/reapi.md, per-action overhead), room in its CAS
/// for toolchains.
fn for_rootfs(yaml: &str) -> String {
    let y = edited(
        yaml,
        "match-property-keys: [OSFamily, ISA]",
        "match-property-keys: [OSFamily, ISA, farm-layout]",
    );
    let y = edited(
        &y,
        "        interval: 0.1\n",
        "        interval: 0.1\n        jitter-factor: 0\n",
    );
    edited(&y, "size: 256M", "size: 1G")
}

fn buildgrid_for_rootfs() -> BuildGridExec {
    buildgrid_exec_with(|yaml, _| for_rootfs(yaml))
}

/// farmd as BuildGrid's bot: it takes shipped toolchains (the default), so rootfs
/// leases. `more`: more keys of its `reapi_bot` table.
fn bot(bg: &BuildGridExec) -> Cluster {
    bot_with(bg, "")
}

fn bot_with(bg: &BuildGridExec, more: &str) -> Cluster {
    let port = bg.port;
    let more = more.to_string();
    let c = Cluster::new(&["bot"], move |_| {
        format!(
            "accept_toolchains = true\nreapi_bot = {{ endpoint = \"reapi://127.0.0.1:{port}\", bot_id = \"farm-bot\"{more} }}"
        )
    });
    c.wait_live(0, 0);
    c
}

/// The home node: no peers, no CPUs of its own for placement (every miss is placed
/// remotely when it can be), the REAPI service as its executor.
fn home(bg_port: u16) -> Cluster {
    home_with(&format!("reapi://127.0.0.1:{bg_port}"))
}

fn home_with(spec: &str) -> Cluster {
    let spec = spec.to_string();
    let c = Cluster::new(&["home"], move |_| {
        format!("local_slots = 0\nreapi_execute = \"{spec}\"")
    });
    // The service is the one row of its status.
    c.wait_live(0, 1);
    c
}

/// `make -j2 linux` of lua with `MYCFLAGS=<flags>` (`-g` and more),
/// `CC=<cc> -std=gnu99`, through the agent when given, with a journal.
fn make_g(env: &Env, tree: &Path, flags: &str, cc: &str, agent: Option<&Path>, journal: &Path) {
    let mut c = env.cmd("make");
    c.current_dir(tree.join("src"))
        .args([
            "-j2",
            "linux",
            &format!("CC={cc} -std=gnu99"),
            &format!("MYCFLAGS={flags}"),
        ])
        .env("FARM_JOURNAL", journal);
    if let Some(a) = agent {
        c.env("FARM_AGENT", a);
    }
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "make failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn log_of(c: &Cluster) -> String {
    std::fs::read_to_string(c.nodes[0].dir.join("farmd.log")).unwrap_or_default()
}

fn leases_done(bot: &Cluster) -> usize {
    log_of(bot).matches("REAPI lease done").count()
}

/// Medians of the home node's `REAPI job done` stages (ms since the job reached
/// the executor).
fn stages(home: &Cluster) -> String {
    let log = log_of(home);
    let mut out = Vec::new();
    for stage in ["built_ms", "looked_ms", "uploaded_ms", "ms"] {
        let mut v: Vec<u64> = log
            .lines()
            .filter(|l| l.contains("REAPI job done"))
            .filter_map(|l| {
                l.split(&format!(" {stage}="))
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .collect();
        v.sort_unstable();
        out.push(format!(
            "{stage} median {} max {}",
            v.get(v.len() / 2).unwrap_or(&0),
            v.last().unwrap_or(&0)
        ));
    }
    out.join(", ")
}

/// Journal lines (JSON) of compiles that ran on `peer`.
fn ran_on(journal: &Path, peer: &str) -> usize {
    std::fs::read_to_string(journal)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["peer"].as_str() == Some(peer))
        .count()
}

type Objects = std::collections::BTreeMap<String, Vec<u8>>;

/// A plain build's objects of `tree` with `flags` (cleaned after).
fn plain(tree: &Path, flags: &str, root: &Path) -> Objects {
    let env = Env::new("direct");
    let t0 = Instant::now();
    make_g(&env, tree, flags, "gcc", None, &root.join("plain.jsonl"));
    eprintln!("plain build ({flags}): {:?}", t0.elapsed());
    let objs = objects(tree);
    assert!(objs.len() >= 30);
    sh(&tree.join("src"), "make clean >/dev/null");
    objs
}

/// A checkout of lua at a path of its own.
fn checkout(root: &Path) -> PathBuf {
    require("gcc");
    require("make");
    let tree = root.join("home/u/src/lua");
    std::fs::create_dir_all(tree.parent().unwrap()).unwrap();
    copy_tree(&sources("lua5.4"), &tree);
    tree
}

fn metrics(c: &Cluster) -> String {
    common::http::get(&format!("http://127.0.0.1:{}/metrics", c.nodes[0].port)).1
}

/// A `-g` build of `tree` through farm-cc and `home`'s agent, with an empty local
/// cache and a journal of its own (named after `what`), timed; its objects must be
/// `plain`'s. The build's counters and its journal.
fn g_build(
    tree: &Path,
    home: &Cluster,
    plain: &Objects,
    root: &Path,
    what: &str,
) -> (Env, PathBuf) {
    let env = Env::new("direct");
    let journal = root.join(format!("{}.jsonl", what.replace(' ', "-")));
    let t0 = Instant::now();
    make_g(
        &env,
        tree,
        "-g",
        &farm_cc_bin().display().to_string(),
        Some(&home.nodes[0].socket()),
        &journal,
    );
    eprintln!("{what}: {:?}", t0.elapsed());
    assert_same_objects(plain, &objects(tree), what);
    (env, journal)
}

#[test]
fn lua_with_debug_info_through_buildgrid_execute_then_its_action_cache_then_it_dies() {
    let root = tempfile::tempdir().unwrap();
    let tree = checkout(root.path());
    let plain_g = plain(&tree, "-g", root.path());
    // The last build's Actions must be new ones (a define no source uses).
    let plain_killed = plain(&tree, "-g -DFARM_TEST_UNUSED=1", root.path());
    let n = plain_g.len();
    let farm_cc = farm_cc_bin().display().to_string();
    let mut bg = buildgrid_for_rootfs();
    let service = format!("reapi:127.0.0.1:{}", bg.port);
    let bot = bot(&bg);

    // Cold: every compile a rootfs Action the bot runs.
    let home1 = home(bg.port);
    let (env, journal) = g_build(
        &tree,
        &home1,
        &plain_g,
        root.path(),
        "cold build through Execute",
    );
    let remote = env.counter(&["farm", "remote"]) as usize;
    assert_eq!(
        remote,
        n,
        "every compile ran through REAPI: {}\nhome log:\n{}\nbot log:\n{}\nBuildGrid:\n{}",
        env.stats(),
        log_of(&home1),
        log_of(&bot),
        bg.log()
    );
    assert_eq!(env.counter(&["farm", "same_path"]) as usize, n);
    assert_eq!(ran_on(&journal, &service), n, "journal names {service}");
    let leases = leases_done(&bot);
    let mut lease_ms: Vec<u64> = log_of(&bot)
        .lines()
        .filter(|l| l.contains("REAPI lease done"))
        .filter_map(|l| {
            l.split(" ms=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    lease_ms.sort_unstable();
    eprintln!(
        "bot: {} leases, median {} ms, max {} ms (fetch, layout, sandbox, gcc, report)",
        lease_ms.len(),
        lease_ms.get(lease_ms.len() / 2).unwrap_or(&0),
        lease_ms.last().unwrap_or(&0)
    );
    assert!(
        leases >= n,
        "{leases} leases for {n} compiles: {}",
        log_of(&bot)
    );
    let status = home1.nodes[0].status();
    let row = status["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["node"].as_str() == Some(&service))
        .cloned()
        .unwrap_or_else(|| panic!("no {service} row: {status}"));
    assert_eq!(row["jobs_ok"].as_u64(), Some(n as u64), "{row}");
    // The audit log names the service as the job's peer.
    let audit =
        std::fs::read_to_string(home1.nodes[0].dir.join("state/audit.jsonl")).unwrap_or_default();
    let audited = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["peer"].as_str() == Some(&service) && v["outcome"].as_str() == Some("ok"))
        .count();
    assert_eq!(audited, n, "{audit}");
    let m = metrics(&home1);
    assert!(
        m.contains(&format!(
            "farm_reapi_executions_total{{result=\"executed\"}} {n}"
        )),
        "{m}"
    );
    assert!(
        m.contains(&format!(
            "farm_placement_decisions_total{{decision=\"reapi\",reason=\"\"}} {n}"
        )),
        "{m}"
    );
    eprintln!("home, per job: {}", stages(&home1));
    drop(home1);

    // Warm: a new home node and an empty local cache, the same checkout: every
    // compile answered by GetActionResult, no lease.
    sh(&tree.join("src"), "make clean >/dev/null");
    let home2 = home(bg.port);
    let (env, journal) = g_build(
        &tree,
        &home2,
        &plain_g,
        root.path(),
        "warm build from the Action Cache",
    );
    assert_eq!(
        env.counter(&["farm", "remote"]) as usize,
        n,
        "{}",
        env.stats()
    );
    assert_eq!(ran_on(&journal, &service), n);
    assert_eq!(leases_done(&bot), leases, "a cached Action ran again");
    let metrics = metrics(&home2);
    assert!(
        metrics.contains(&format!(
            "farm_reapi_executions_total{{result=\"cached\"}} {n}"
        )),
        "{metrics}"
    );
    eprintln!("home, per job: {}", stages(&home2));
    drop(home2);

    // BuildGrid killed mid-build (with new Actions: another define): the build
    // finishes with a plain build's objects, home compiles the rest, nothing hangs.
    sh(&tree.join("src"), "make clean >/dev/null");
    let home3 = home(bg.port);
    let env = Env::new("direct");
    let journal = root.path().join("killed.jsonl");
    let t0 = Instant::now();
    std::thread::scope(|s| {
        let build = s.spawn(|| {
            make_g(
                &env,
                &tree,
                "-g -DFARM_TEST_UNUSED=1",
                &farm_cc,
                Some(&home3.nodes[0].socket()),
                &journal,
            )
        });
        // Mid-build: once a few compiles came back through BuildGrid.
        while ran_on(&journal, &service) < 3 && t0.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(20));
        }
        bg.kill();
        eprintln!("BuildGrid killed after {:?}", t0.elapsed());
        build.join().unwrap();
    });
    let took = t0.elapsed();
    eprintln!("build with BuildGrid killed mid-build: {took:?}");
    assert_same_objects(&plain_killed, &objects(&tree), "BuildGrid killed mid-build");
    assert!(took < Duration::from_secs(120), "{took:?}");
    let through = ran_on(&journal, &service);
    eprintln!("{through} of {n} answered by BuildGrid before it died");
    assert!(
        (3..n).contains(&through),
        "{through} of {n} through BuildGrid: not killed mid-build"
    );
    assert_eq!(env.misses() as usize, n, "{}", env.stats());
    let log = log_of(&home3);
    assert_eq!(
        log.matches("REAPI service failed").count(),
        1,
        "one outage, logged once: {log}"
    );
}

/// A service nobody listens for, and one that accepts connections and never answers
/// (default deadlines): lua builds at home with a plain build's objects, the first
/// failure pauses the service (logged once), so the build pays a few deadlines, not
/// one per compile.
#[test]
fn a_dead_or_silent_service_sends_every_compile_home_without_stalling() {
    let root = tempfile::tempdir().unwrap();
    let tree = checkout(root.path());
    let plain_g = plain(&tree, "-g", root.path());
    let n = plain_g.len() as u64;
    let farm_cc = farm_cc_bin().display().to_string();
    let dead = common::servers::free_port();
    let (accepted, silent_port) = silent();
    for (what, port) in [("dead", dead), ("silent", silent_port)] {
        let service = format!("reapi:127.0.0.1:{port}");
        let home = home_with(&format!("reapi://127.0.0.1:{port}"));
        let env = Env::new("direct");
        let journal = root.path().join(format!("{what}.jsonl"));
        let t0 = Instant::now();
        make_g(
            &env,
            &tree,
            "-g",
            &farm_cc,
            Some(&home.nodes[0].socket()),
            &journal,
        );
        let took = t0.elapsed();
        eprintln!("lua with a {what} REAPI service: {took:?}");
        assert_same_objects(&plain_g, &objects(&tree), what);
        assert_eq!(env.misses(), n, "{}", env.stats());
        assert_eq!(env.counter(&["farm", "remote"]), 0, "{}", env.stats());
        assert_eq!(ran_on(&journal, &service), 0);
        assert!(took < Duration::from_secs(90), "{what}: {took:?}");
        let log = log_of(&home);
        assert_eq!(
            log.matches("REAPI service failed").count(),
            1,
            "{what}: one outage, logged once: {log}"
        );
        let row = home.nodes[0].status()["peers"][0].clone();
        assert_eq!(row["node"].as_str(), Some(service.as_str()), "{row}");
        assert!(row["jobs_failed"].as_u64().unwrap() >= 1, "{row}");
        sh(&tree.join("src"), "make clean >/dev/null");
    }
    let tried = accepted.load(std::sync::atomic::Ordering::SeqCst);
    eprintln!("{tried} connections to the silent service for {n} compiles");
    assert!(
        (1..=8).contains(&tried),
        "{tried} connections to the silent service for {n} compiles"
    );
}

/// Home with a farm peer and the REAPI service: placement measures both (each gets
/// jobs), every compile ran on one of them, objects byte-identical to a plain build.
#[test]
fn placement_shares_a_build_between_a_peer_and_the_service() {
    let root = tempfile::tempdir().unwrap();
    let tree = checkout(root.path());
    let plain_g = plain(&tree, "-g", root.path());
    let n = plain_g.len();
    let farm_cc = farm_cc_bin().display().to_string();
    let bg = buildgrid_for_rootfs();
    let _bot = bot(&bg);
    let service = format!("reapi:127.0.0.1:{}", bg.port);
    let port = bg.port;
    let cl = Cluster::new(&["home", "peer"], move |i| {
        if i == 0 {
            format!("local_slots = 0\nreapi_execute = \"reapi://127.0.0.1:{port}\"")
        } else {
            String::new()
        }
    });
    // home sees the peer and the service; the peer sees home.
    cl.wait_live(0, 2);
    cl.wait_live(1, 1);
    let env = Env::new("direct");
    let journal = root.path().join("shared.jsonl");
    let t0 = Instant::now();
    make_g(
        &env,
        &tree,
        "-g",
        &farm_cc,
        Some(&cl.nodes[0].socket()),
        &journal,
    );
    eprintln!("build on a peer and the service: {:?}", t0.elapsed());
    assert_same_objects(&plain_g, &objects(&tree), "a peer and the service");
    let on_service = ran_on(&journal, &service);
    let on_peer = ran_on(&journal, "peer");
    eprintln!("{on_service} compiles through the service, {on_peer} on the peer");
    assert_eq!(on_service + on_peer, n, "{}", env.stats());
    assert!(on_service >= 1 && on_peer >= 1, "both measured");
}

/// A service with authorization (BuildGrid's JWT): the home node sends
/// `|token-file=`'s token on every call and its compile runs there; a home node
/// without it is turned away and compiles at home, the same object either way.
#[test]
fn a_service_with_authorization_gets_the_token() {
    require("gcc");
    let secret = "farm-exec-secret";
    let bg = buildgrid_exec_with(move |yaml, dir| {
        let file = dir.join("auth.secret");
        std::fs::write(&file, secret).unwrap();
        let jwt = format!(
            "authorization:\n  method: jwt\n  secret: {}\n  algorithm: hs256\n",
            file.display()
        );
        for_rootfs(&edited(yaml, "authorization:\n  method: none\n", &jwt))
    });
    let root = tempfile::tempdir().unwrap();
    let token = root.path().join("token");
    let o = std::process::Command::new(bg.venv.join("bin/python"))
        .args([
            "-c",
            &format!(
                "import jwt, time; print(jwt.encode({{'sub': 'farm', 'exp': int(time.time()) + 3600}}, \
                 '{secret}', algorithm='HS256'))"
            ),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::write(&token, &o.stdout).unwrap();
    let _bot = bot_with(
        &bg,
        &format!(", auth_token_file = {:?}", token.display().to_string()),
    );
    let service = format!("reapi:127.0.0.1:{}", bg.port);
    let env = Env::new("direct");
    env.write(
        "src/a.c",
        "#include <stdio.h>\nint main(void) { return puts(\"a\") < 0; }\n",
    );
    env.plain(&["gcc", "-g", "-c", "src/a.c", "-o", "plain.o"]);
    let want = env.read("plain.o");
    for (with_token, remote) in [(true, 1), (false, 0)] {
        let spec = if with_token {
            format!(
                "reapi://127.0.0.1:{}|token-file={}",
                bg.port,
                token.display()
            )
        } else {
            format!("reapi://127.0.0.1:{}", bg.port)
        };
        let home = home_with(&spec);
        // The same directory (a -g object names it), an empty cache each time.
        env.farm_ok(&["cache", "clear"]);
        let before = env.counter(&["farm", "remote"]);
        let o = env
            .cmd(farm_bin())
            .args(["gcc", "-g", "-c", "src/a.c", "-o", "a.o"])
            .env("FARM_AGENT", home.nodes[0].socket())
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(
            env.read("a.o") == want,
            "token {with_token}: not the plain object"
        );
        std::fs::remove_file(env.work.join("a.o")).unwrap();
        assert_eq!(
            env.counter(&["farm", "remote"]) - before,
            remote,
            "token {with_token}: {}\n{}",
            env.stats(),
            log_of(&home)
        );
        if !with_token {
            let log = log_of(&home);
            assert!(
                log.contains("REAPI service failed") && log.contains(&service),
                "{log}"
            );
        }
    }
}

/// The two halves together: checkout A's compiles run through Execute while
/// its shims keep farm's entries in the same server (`remote_storage = reapi://`);
/// then checkout B at another path, with an empty local cache and no farmd, is
/// answered from that server's Action Cache, every object byte-identical to a plain
/// build in B, and no compile of B reaches the bot.
#[test]
fn checkout_a_through_execute_then_checkout_b_from_the_action_cache() {
    use common::remote_builds::{checkouts, make, make_with_agent};
    let c = checkouts();
    let n = c.plain_b.len();
    let farm_cc = farm_cc_bin().display().to_string();
    let bg = buildgrid_for_rootfs();
    let bot = bot(&bg);
    let service = format!("reapi:127.0.0.1:{}", bg.port);
    let remote = format!("reapi://127.0.0.1:{}", bg.port);
    let home = home(bg.port);
    let env_a = Env::new("direct");
    let t0 = Instant::now();
    make_with_agent(&env_a, &c.a, &farm_cc, &remote, &home.nodes[0].socket());
    eprintln!("checkout A through Execute: {:?}", t0.elapsed());
    assert_eq!(
        env_a.counter(&["farm", "remote"]) as usize,
        n,
        "every compile of A ran through REAPI: {}\nhome log:\n{}",
        env_a.stats(),
        log_of(&home)
    );
    let row = home.nodes[0].status()["peers"][0].clone();
    assert_eq!(row["node"].as_str(), Some(service.as_str()), "{row}");
    assert_eq!(row["jobs_ok"].as_u64(), Some(n as u64), "{row}");
    let leases = leases_done(&bot);
    assert!(leases >= n, "{leases} leases for {n} compiles");
    // The agent writes A's entries in the background: B may come before it ends.
    std::thread::sleep(Duration::from_secs(2));
    drop(home);

    let env_b = Env::new("direct");
    let t0 = Instant::now();
    make(&env_b, &c.b, &farm_cc, &remote);
    eprintln!(
        "checkout B from the Action Cache, no farmd: {:?}",
        t0.elapsed()
    );
    assert_same_objects(
        &c.plain_b,
        &objects(&c.b),
        "checkout B from the Action Cache",
    );
    assert_eq!(
        env_b.counter(&["tiers", "reapi", "hits"]) as usize,
        n,
        "every compile of B a hit from BuildGrid: {}",
        env_b.stats()
    );
    assert_eq!(env_b.misses(), 0, "{}", env_b.stats());
    assert_eq!(leases_done(&bot), leases, "B reached the bot");
}
