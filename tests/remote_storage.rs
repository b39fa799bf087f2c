//! Remote tiers on real servers (redis-server, nginx WebDAV) started on loopback:
//! lua5.4 from its Debian source built in checkout A, then in checkout B at another
//! path with another empty local cache, which the remote answers; and every way a
//! remote can fail, each ending in a build whose objects are a plain build's.

mod common;
use common::remote_builds::*;
use common::servers::*;
use common::*;

#[test]
fn checkout_b_is_answered_from_redis() {
    let r = redis("256mb", "allkeys-lru");
    two_checkouts(&format!("redis://127.0.0.1:{}", r.port));
}

#[test]
fn checkout_b_is_answered_from_s3() {
    let s3 = moto_s3();
    // (Credentials from the usual AWS variables, which `make` sets.)
    two_checkouts(&format!(
        "s3://farm-cache/team|endpoint=http://127.0.0.1:{}|region=us-east-1",
        s3.port
    ));
}

#[test]
fn checkout_b_is_answered_from_webdav() {
    let (n, root) = nginx_webdav();
    two_checkouts(&format!("webdav://127.0.0.1:{}/cache", n.port));
    assert!(!files_under(&root).is_empty());
}

/// Plain HTTP (GET and PUT, as bazel-remote and nginx serve) in the Bazel
/// remote-cache layout: every entry under `ac/` with a 64-hex name.
#[test]
fn checkout_b_is_answered_from_http_in_the_bazel_layout() {
    let (n, root) = nginx_webdav();
    two_checkouts(&format!("http://127.0.0.1:{}/bazel|layout=bazel", n.port));
    let files = files_under(&root);
    assert!(!files.is_empty());
    for f in &files {
        let rel = f.strip_prefix(&root).unwrap().to_str().unwrap().to_string();
        let name = rel
            .strip_prefix("bazel/ac/")
            .unwrap_or_else(|| panic!("{rel}"));
        assert!(
            name.len() == 64 && name.chars().all(|c| c.is_ascii_hexdigit()),
            "{rel}"
        );
    }
}

/// A remote that answers every call, but slowly: each compile spends at most its
/// budget (one operation timeout) there, then the machine skips it, so the build
/// asks it a few times, not once per call, and is a plain build.
#[test]
fn a_slow_remote_is_skipped_after_one_compile_spent_its_budget() {
    let c = checkouts();
    let n = c.plain_b.len() as u64;
    let farm_cc = farm_cc_bin().display().to_string();
    let r = redis("256mb", "allkeys-lru");
    let (answers, port) = slow_proxy(r.port, std::time::Duration::from_millis(400));
    let remote = format!("redis://127.0.0.1:{port}|timeout=1s");
    let env = Env::new("direct");
    make(&env, &c.b, &farm_cc, &remote);
    assert_same_objects(&c.plain_b, &objects(&c.b), "slow remote");
    assert_eq!(env.misses(), n, "{}", env.stats());
    assert!(env.counter(&["errors", "remote"]) >= 1, "{}", env.stats());
    assert!(
        env.counter(&["errors", "remote_skipped"]) >= n / 2,
        "the rest of the build skips it: {}",
        env.stats()
    );
    // Without a budget every compile would wait for each of its calls (34 compiles,
    // several calls each): a handful of answers at most.
    let asked = answers.load(std::sync::atomic::Ordering::SeqCst);
    assert!(asked <= 12, "{asked} slow answers for {n} compiles");
    let log = std::fs::read_to_string(&env.log).unwrap_or_default();
    assert!(log.contains("slow:"), "the reason is logged");
}

/// A remote that refuses, one that never answers, one killed mid-build and one that
/// is full: every build succeeds with a plain build's objects, and a dead remote is
/// skipped after its first failure (not waited for by every compile).
#[test]
fn a_failing_remote_never_fails_a_build() {
    let c = checkouts();
    let n = c.plain_b.len() as u64;
    let farm_cc = farm_cc_bin().display().to_string();
    let refused = format!("redis://127.0.0.1:{}", free_port());
    let (accepted, silent_port) = silent();
    let hung = format!("redis://127.0.0.1:{silent_port}|connect-timeout=100ms|timeout=300ms");
    for remote in [refused, hung.clone()] {
        let env = Env::new("direct");
        let t0 = std::time::Instant::now();
        make(&env, &c.b, &farm_cc, &remote);
        assert_same_objects(&c.plain_b, &objects(&c.b), &remote);
        assert_eq!(env.misses(), n, "{remote}: {}", env.stats());
        assert!(env.counter(&["errors", "remote"]) >= 1, "{}", env.stats());
        // One timeout per parallel job at most, not one per compile.
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(60),
            "{remote}: {:?}",
            t0.elapsed()
        );
        sh(&c.b.join("src"), "make clean >/dev/null");
    }
    // The hung remote was tried by the compiles running when it first failed, then
    // skipped by the rest of the build: a few connections, not one per compile.
    let tried = accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        (1..=6).contains(&tried),
        "{tried} connections to the hung remote for {n} compiles"
    );
    // Killed mid-build: the compiles after it go on without it.
    let mut r = redis("256mb", "allkeys-lru");
    let remote = format!("redis://127.0.0.1:{}", r.port);
    let env = Env::new("direct");
    let farm_cc2 = farm_cc.clone();
    let tree = c.b.clone();
    std::thread::scope(|s| {
        let build = s.spawn(|| make(&env, &tree, &farm_cc2, &remote));
        std::thread::sleep(std::time::Duration::from_millis(300));
        r.kill();
        build.join().unwrap();
    });
    assert_same_objects(&c.plain_b, &objects(&c.b), "killed mid-build");
    sh(&c.b.join("src"), "make clean >/dev/null");
    // Full (noeviction): writes fail, reads still answer. A fills it, then it is
    // made full: B still gets every object from it, and a build with other flags
    // (every compile a miss whose write fails) is a plain build.
    let full = redis("256mb", "noeviction");
    let remote = format!("redis://127.0.0.1:{}", full.port);
    make(&Env::new("direct"), &c.a, &farm_cc, &remote);
    let o = std::process::Command::new(require("redis-cli"))
        .args([
            "-p",
            &full.port.to_string(),
            "config",
            "set",
            "maxmemory",
            "1",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let env = Env::new("direct");
    make(&env, &c.b, &farm_cc, &remote);
    assert_same_objects(&c.plain_b, &objects(&c.b), "full redis, reads");
    assert_eq!(env.counter(&["hits", "remote"]), n, "{}", env.stats());
    sh(&c.b.join("src"), "make clean >/dev/null");
    let env = Env::new("direct");
    make(&env, &c.b, &format!("{farm_cc} -O1"), &remote);
    assert_eq!(env.misses(), n, "{}", env.stats());
    assert!(env.counter(&["errors", "remote"]) >= 1, "{}", env.stats());
    let again = objects(&c.b);
    sh(&c.b.join("src"), "make clean >/dev/null");
    make(&Env::new("direct"), &c.b, "gcc -O1", "");
    assert_same_objects(&objects(&c.b), &again, "full redis, writes");
}

/// A damaged entry on the remote is a miss, counted, never restored.
#[test]
fn a_corrupt_remote_entry_is_a_counted_miss() {
    let c = checkouts();
    let n = c.plain_b.len() as u64;
    let farm_cc = farm_cc_bin().display().to_string();
    let (ng, root) = nginx_webdav();
    let remote = format!("webdav://127.0.0.1:{}/cache", ng.port);
    make(&Env::new("direct"), &c.a, &farm_cc, &remote);
    // Flip a byte in every stored result (truncate half of them).
    let mut damaged = 0;
    for (i, f) in files_under(&root).into_iter().enumerate() {
        if !f.to_string_lossy().contains("/farm/r/") {
            continue;
        }
        let mut d = std::fs::read(&f).unwrap();
        if i % 2 == 0 {
            d.truncate(d.len() / 2);
        } else {
            let k = d.len() - 1;
            d[k] ^= 0x5a;
        }
        std::fs::write(&f, d).unwrap();
        damaged += 1;
    }
    assert!(
        damaged as u64 >= n,
        "set-up: results on the remote ({damaged})"
    );
    let env = Env::new("direct");
    make(&env, &c.b, &farm_cc, &remote);
    assert_same_objects(&c.plain_b, &objects(&c.b), "corrupt remote");
    assert_eq!(env.counter(&["hits", "remote"]), 0, "{}", env.stats());
    assert_eq!(env.misses(), n);
    assert!(env.counter(&["errors", "corrupt_entries"]) >= n);
}

/// `farm cache ping` tries each remote now: one line each, the password never shown,
/// exit 1 when one failed.
#[test]
fn cache_ping_tries_every_remote() {
    let r = redis("64mb", "allkeys-lru");
    let env = Env::new("direct");
    let remotes = format!(
        "redis://127.0.0.1:{} redis://farm:s3cret@127.0.0.1:{}|read-only|timeout=300ms",
        r.port,
        free_port()
    );
    let o = env
        .cmd(farm_bin())
        .args(["cache", "ping"])
        .env("FARM_REMOTE_STORAGE", &remotes)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].starts_with(&format!("redis://127.0.0.1:{}: ok (write ", r.port)),
        "{text}"
    );
    assert!(lines[1].contains("(read-only): FAILED"), "{text}");
    assert!(
        !text.contains("s3cret") && lines[1].contains("farm:***@"),
        "{text}"
    );
    let o = env
        .cmd(farm_bin())
        .args(["cache", "ping"])
        .env(
            "FARM_REMOTE_STORAGE",
            format!("redis://127.0.0.1:{}", r.port),
        )
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
}

// ---- Through this machine's farmd agent (warm connections, writes in the background).

use std::cell::Cell;

/// The most connections the agent's clients may open to one Redis over two builds:
/// its pool (at most 10) and a plain connect check before a client's first call and
/// after a failure. Well under the 34 compiles of one build, each of which connects
/// on the direct path.
const AGENT_CONNECTIONS: u64 = 20;

/// redis-cli on one server, counting its own connections so that the server's count
/// of connections received can be told apart from them.
struct RedisCli {
    port: u16,
    calls: Cell<u64>,
}

impl RedisCli {
    fn run(&self, args: &[&str]) -> String {
        self.calls.set(self.calls.get() + 1);
        let o = std::process::Command::new(require("redis-cli"))
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    fn keys(&self) -> u64 {
        self.run(&["dbsize"]).parse().unwrap()
    }

    /// Connections the server received from anyone but this redis-cli.
    fn others_connections(&self) -> u64 {
        let info = self.run(&["info", "stats"]);
        let total: u64 = info
            .lines()
            .find_map(|l| l.strip_prefix("total_connections_received:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        total - self.calls.get()
    }

    /// Waits until the server holds `want` keys (a queue draining), at most 20 s.
    fn wait_keys(&self, want: u64) -> u64 {
        let t0 = std::time::Instant::now();
        loop {
            let k = self.keys();
            if k >= want || t0.elapsed() > std::time::Duration::from_secs(20) {
                return k;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

/// With a farmd agent up, the shim asks Redis through it: A's writes reach Redis
/// from the agent's queue (as many keys as the shim's own writes make), B is answered
/// from Redis through the agent with a plain build's objects, and Redis sees only the
/// agent's few connections, not one per compile.
#[test]
fn checkout_b_is_answered_from_redis_through_the_agent() {
    let c = checkouts();
    let n = c.plain_b.len() as u64;
    let farm_cc = farm_cc_bin().display().to_string();
    let farmd = lone_farmd();
    let agent = farmd.nodes[0].socket();
    // What the shim's own writes leave in a Redis, for comparison.
    let direct = redis("256mb", "allkeys-lru");
    make(
        &Env::new("direct"),
        &c.a,
        &farm_cc,
        &format!("redis://127.0.0.1:{}", direct.port),
    );
    let direct_cli = RedisCli {
        port: direct.port,
        calls: Cell::new(0),
    };
    let want = direct_cli.keys();
    assert!(want >= 2 * n, "results and manifests: {want}");
    // (Without the agent, every compile connects.)
    assert!(direct_cli.others_connections() >= n);
    sh(&c.a.join("src"), "make clean >/dev/null");

    let r = redis("256mb", "allkeys-lru");
    let cli = RedisCli {
        port: r.port,
        calls: Cell::new(0),
    };
    let remote = format!("redis://127.0.0.1:{}", r.port);
    let env_a = Env::new("direct");
    make_with_agent(&env_a, &c.a, &farm_cc, &remote, &agent);
    assert_eq!(env_a.misses(), n, "{}", env_a.stats());
    assert_eq!(
        cli.wait_keys(want),
        want,
        "the agent's queue drained into Redis"
    );
    assert_eq!(env_a.counter(&["errors", "remote"]), 0, "{}", env_a.stats());
    assert_eq!(
        env_a.counter(&["errors", "remote_write_dropped"]),
        0,
        "{}",
        env_a.stats()
    );
    assert_eq!(
        env_a.counter(&["farm", "fallback", "agent_remote"]),
        0,
        "{}",
        env_a.stats()
    );

    let env_b = Env::new("direct");
    make_with_agent(&env_b, &c.b, &farm_cc, &remote, &agent);
    assert_same_objects(&c.plain_b, &objects(&c.b), "checkout B through the agent");
    assert_eq!(
        env_b.counter(&["hits", "remote"]),
        n,
        "every TU of B hits Redis through the agent: {}",
        env_b.stats()
    );
    assert_eq!(env_b.misses(), 0);
    // Two builds of 2n compiles: Redis saw the agent's warm client only (its pool
    // holds at most 10 connections, and its connect checks add a few), not one
    // connection per compile (the direct path's, asserted above: at least n).
    let conns = cli.others_connections();
    assert!(
        (1..=AGENT_CONNECTIONS).contains(&conns),
        "{conns} connections to Redis for {} compiles",
        2 * n
    );
}

/// With a farmd agent up and a remote that never answers, or refuses: every build
/// succeeds with a plain build's objects; the agent answers each request in time (no
/// compile falls back to asking the remote itself after waiting for the agent), and
/// the breaker skips the dead remote after its first failure, as on the direct path.
#[test]
fn a_dead_remote_costs_the_agent_path_what_it_costs_directly() {
    let c = checkouts();
    let n = c.plain_b.len() as u64;
    let farm_cc = farm_cc_bin().display().to_string();
    let farmd = lone_farmd();
    let agent = farmd.nodes[0].socket();
    let (accepted, silent_port) = silent();
    let hung = format!("redis://127.0.0.1:{silent_port}|connect-timeout=100ms|timeout=300ms");
    let refused = format!("redis://127.0.0.1:{}", free_port());
    for remote in [hung, refused] {
        let env = Env::new("direct");
        make_with_agent(&env, &c.b, &farm_cc, &remote, &agent);
        assert_same_objects(&c.plain_b, &objects(&c.b), &remote);
        // (The second build finds the first's objects in the farm's cache.)
        assert_eq!(
            env.misses() + env.counter(&["hits", "farm"]),
            n,
            "{remote}: {}",
            env.stats()
        );
        assert!(env.counter(&["errors", "remote"]) >= 1, "{}", env.stats());
        assert_eq!(
            env.counter(&["farm", "fallback", "agent_remote"]),
            0,
            "{remote}: {}",
            env.stats()
        );
        sh(&c.b.join("src"), "make clean >/dev/null");
    }
    // The compiles running when the hung remote first failed tried it (through the
    // agent), the rest skipped it: a few connections, as directly.
    let tried = accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        (1..=6).contains(&tried),
        "{tried} connections to the hung remote for {n} compiles"
    );
}

/// An agent that does not know the remote requests (an older farmd: it closes the
/// connection on a request it cannot decode) costs nothing: the shim asks Redis
/// itself, B hits, and the fallback is counted.
#[test]
fn an_agent_without_remote_requests_leaves_the_shim_asking_directly() {
    use std::os::unix::net::UnixListener;
    let c = checkouts();
    let n = c.plain_b.len() as u64;
    let farm_cc = farm_cc_bin().display().to_string();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let l = UnixListener::bind(&socket).unwrap();
    // (A stand-in for a fault: an agent that hangs up on every request.)
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            drop(s);
        }
    });
    let r = redis("256mb", "allkeys-lru");
    let remote = format!("redis://127.0.0.1:{}", r.port);
    make_with_agent(&Env::new("direct"), &c.a, &farm_cc, &remote, &socket);
    let env = Env::new("direct");
    make_with_agent(&env, &c.b, &farm_cc, &remote, &socket);
    assert_same_objects(&c.plain_b, &objects(&c.b), "checkout B, directly");
    assert_eq!(env.counter(&["hits", "remote"]), n, "{}", env.stats());
    assert!(
        env.counter(&["farm", "fallback", "agent_remote"]) >= 1,
        "{}",
        env.stats()
    );
}

/// Depend mode asks the agent for its remote tiers and for nothing else: B is
/// answered from Redis through the agent, and the farm's cache gets nothing.
#[test]
fn depend_mode_asks_the_agent_for_remote_tiers_only() {
    let c = checkouts();
    let n = c.plain_b.len() as u64;
    let farm_cc = farm_cc_bin().display().to_string();
    let farmd = lone_farmd();
    let agent = farmd.nodes[0].socket();
    let r = redis("256mb", "allkeys-lru");
    let cli = RedisCli {
        port: r.port,
        calls: Cell::new(0),
    };
    let remote = format!("redis://127.0.0.1:{}", r.port);
    let env_a = Env::new("depend");
    make_with_agent(&env_a, &c.a, &farm_cc, &remote, &agent);
    assert_eq!(env_a.misses(), n, "{}", env_a.stats());
    assert!(cli.wait_keys(2 * n) >= 2 * n, "results and manifests");
    let env_b = Env::new("depend");
    make_with_agent(&env_b, &c.b, &farm_cc, &remote, &agent);
    assert_same_objects(&c.plain_b, &objects(&c.b), "depend mode through the agent");
    assert_eq!(env_b.counter(&["hits", "remote"]), n, "{}", env_b.stats());
    assert_eq!(farmd.nodes[0].status()["store_entries"], 0);
    let conns = cli.others_connections();
    assert!(
        (1..=AGENT_CONNECTIONS).contains(&conns),
        "{conns} connections to Redis: only the agent's pool expected; {}",
        env_b.stats()
    );
}

/// Objects under `prefix` in moto's bucket (one listing page: enough here).
fn s3_objects(port: u16, bucket: &str, prefix: &str) -> usize {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET /{bucket}?list-type=2&prefix={prefix} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"
    )
    .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body.matches("<Key>").count()
}

/// S3 through the agent, with the keys from the shim's environment (the agent has
/// none of its own): A's writes reach the bucket from the agent's queue, B hits.
#[test]
fn checkout_b_is_answered_from_s3_through_the_agent() {
    let c = checkouts();
    let n = c.plain_b.len() as u64;
    let farm_cc = farm_cc_bin().display().to_string();
    let farmd = lone_farmd();
    let agent = farmd.nodes[0].socket();
    let s3 = moto_s3();
    let remote = format!(
        "s3://farm-cache/team|endpoint=http://127.0.0.1:{}|region=us-east-1",
        s3.port
    );
    let env_a = Env::new("direct");
    make_with_agent(&env_a, &c.a, &farm_cc, &remote, &agent);
    assert_eq!(env_a.misses(), n, "{}", env_a.stats());
    let t0 = std::time::Instant::now();
    while (s3_objects(s3.port, "farm-cache", "team/") as u64) < 2 * n
        && t0.elapsed() < std::time::Duration::from_secs(20)
    {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(s3_objects(s3.port, "farm-cache", "team/") as u64 >= 2 * n);
    let env_b = Env::new("direct");
    make_with_agent(&env_b, &c.b, &farm_cc, &remote, &agent);
    assert_same_objects(
        &c.plain_b,
        &objects(&c.b),
        "checkout B from S3, through the agent",
    );
    assert_eq!(env_b.counter(&["hits", "remote"]), n, "{}", env_b.stats());
    for env in [&env_a, &env_b] {
        assert_eq!(
            env.counter(&["farm", "fallback", "agent_remote"]),
            0,
            "{}",
            env.stats()
        );
        assert_eq!(env.counter(&["errors", "remote"]), 0, "{}", env.stats());
    }
}

/// Two sources and a header in `env`'s work dir, dated in the past (a file newer than
/// the compile is never stored).
fn small_project(env: &Env) {
    env.write("inc/h.h", "#define TWICE(x) ((x) * 2)\nint y(int);\n");
    env.write(
        "src/x.c",
        "#include \"h.h\"\nint x(int a) { return TWICE(a) + y(a); }\n",
    );
    env.write(
        "src/y.c",
        "#include \"h.h\"\nstatic const char msg[] = \"a remote tier\";\nint y(int a) { return TWICE(a) + msg[a & 7]; }\n",
    );
    for f in ["inc/h.h", "src/x.c", "src/y.c"] {
        set_mtime(&env.work.join(f), 1_600_000_000);
    }
    // Past the few milliseconds a just-changed file (by its ctime) is not trusted.
    std::thread::sleep(std::time::Duration::from_millis(120));
}

/// Compiles the small project in `env` through farm with `remote`.
fn compile_small(env: &Env, remote: &str) {
    for src in ["x", "y"] {
        let o = env
            .cmd(farm_bin())
            .env("FARM_REMOTE_STORAGE", remote)
            .args(["gcc", "-O2", "-c", "-Iinc"])
            .arg(format!("src/{src}.c"))
            .args(["-o", &format!("{src}.o")])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
}

/// `farm stats` counts per tier what real compiles moved through a real Redis:
/// checkout A's misses write results and manifests there; checkout B's hits read
/// exactly those bytes back and write them into B's own cache, which B's next build
/// reads back. `farm config` and `farm cache remotes` show the tier with every
/// attribute in force and where it was set, never a password.
#[test]
fn stats_count_bytes_per_tier_and_config_shows_the_remote() {
    let r = redis("64mb", "allkeys-lru");
    let remote = format!("redis://127.0.0.1:{}|key-prefix=team", r.port);
    let (a, b) = (Env::new("direct"), Env::new("direct"));
    small_project(&a);
    small_project(&b);
    let tier = |env: &Env, kind: &str, what: &str| env.counter(&["tiers", kind, what]);

    compile_small(&a, &remote);
    assert_eq!(
        a.counter(&["entries"]),
        4,
        "2 results, 2 manifests: {}",
        a.stats()
    );
    let objects_size = (a.read("x.o").len() + a.read("y.o").len()) as u64;
    assert_eq!(tier(&a, "local", "misses"), 2, "{}", a.stats());
    assert_eq!(tier(&a, "redis", "misses"), 2, "{}", a.stats());
    assert_eq!(tier(&a, "redis", "hits"), 0);
    assert_eq!(tier(&a, "redis", "errors"), 0);
    // Nothing was there to read; each result holds its object.
    assert_eq!(tier(&a, "redis", "bytes_read"), 0);
    let written_a = tier(&a, "redis", "bytes_written");
    assert!(
        written_a > objects_size,
        "{written_a} <= {objects_size}: {}",
        a.stats()
    );
    assert!(tier(&a, "local", "bytes_written") > objects_size);

    compile_small(&b, &remote);
    assert_eq!(b.read("x.o"), a.read("x.o"));
    assert_eq!(b.read("y.o"), a.read("y.o"));
    assert_eq!(tier(&b, "redis", "hits"), 2, "{}", b.stats());
    assert_eq!(tier(&b, "redis", "misses"), 0);
    assert_eq!(b.counter(&["hits", "remote"]), 2);
    // B read back exactly what A wrote (each manifest and result), wrote nothing
    // there, and kept what it read in its own cache.
    assert_eq!(tier(&b, "redis", "bytes_read"), written_a, "{}", b.stats());
    assert_eq!(tier(&b, "redis", "bytes_written"), 0);
    assert_eq!(tier(&b, "local", "bytes_read"), 0);
    let kept = tier(&b, "local", "bytes_written");
    assert!(kept > objects_size, "{kept}");

    // B again: local hits that read back what B kept, the remote not asked.
    compile_small(&b, &remote);
    assert_eq!(tier(&b, "local", "hits"), 2, "{}", b.stats());
    assert_eq!(tier(&b, "local", "bytes_read"), kept);
    assert_eq!(tier(&b, "redis", "hits"), 2);
    assert_eq!(tier(&b, "redis", "bytes_read"), written_a);

    // The table people read has a line for each kind that moved something.
    let o = b
        .cmd(farm_bin())
        .env("FARM_REMOTE_STORAGE", &remote)
        .arg("stats")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    let redis_line = text
        .lines()
        .find(|l| l.trim_start().starts_with("redis "))
        .unwrap_or_else(|| panic!("no redis line: {text}"));
    let cols: Vec<&str> = redis_line.split_whitespace().collect();
    assert_eq!(&cols[..4], ["redis", "2", "0", "0"], "{text}");

    // Where the tiers come from: the environment, then a config file (whose
    // password is never shown).
    let o = b
        .cmd(farm_bin())
        .env("FARM_REMOTE_STORAGE", &remote)
        .arg("config")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("1 tier") && text.contains("(env FARM_REMOTE_STORAGE)"),
        "{text}"
    );
    assert!(
        text.contains(&format!("1. redis://127.0.0.1:{}", r.port))
            && text.contains("kind=redis access=read-write")
            && text.contains("key-prefix=team")
            && text.contains("timeout=2000ms"),
        "{text}"
    );
    let cfg = b.root.path().join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "remote_storage = \"redis://farm:s3cret@127.0.0.1:{}/3|read-only|connect-timeout=40ms s3://farm-cache/ci|region=eu-west-1\"\n",
            r.port
        ),
    )
    .unwrap();
    for args in [
        &["config"][..],
        &["config", "--json"],
        &["cache", "remotes"],
    ] {
        let o = b
            .cmd(farm_bin())
            .env("FARM_CONFIG", &cfg)
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{args:?}: {text}");
        assert!(!text.contains("s3cret"), "{args:?}: {text}");
        assert!(
            text.contains(&format!("redis://farm:***@127.0.0.1:{}/3", r.port))
                && text.contains("read-only")
                && text.contains("40ms")
                && text.contains("s3://farm-cache/ci")
                && text.contains("eu-west-1")
                && text.contains(&format!("file {}", cfg.display())),
            "{args:?}: {text}"
        );
    }
    let o = b
        .cmd(farm_bin())
        .env("FARM_CONFIG", &cfg)
        .args(["cache", "remotes"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        text.lines().count(),
        5,
        "a heading, two lines a tier: {text}"
    );

    // A Redis that refuses: its failed calls are that kind's errors, the build goes on.
    let c = Env::new("direct");
    small_project(&c);
    compile_small(&c, &format!("redis://127.0.0.1:{}", free_port()));
    assert_eq!(c.read("x.o"), a.read("x.o"));
    assert!(tier(&c, "redis", "errors") >= 1, "{}", c.stats());
    assert_eq!(tier(&c, "redis", "hits"), 0);
    assert_eq!(tier(&c, "redis", "bytes_read"), 0);
    assert_eq!(tier(&c, "redis", "bytes_written"), 0);
    assert_eq!(c.misses(), 2);
}
