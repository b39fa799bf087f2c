//! Chaos under a real build: three real farmd, each in its own network namespace
//! (tests/common/netns.rs), build lua through farm-cc while something goes wrong
//! underneath: a peer cut off mid-build, a slow and lossy network, a peer's disk filling
//! up, peers whose clocks are hours off (and one decades off). Every build must succeed
//! with objects byte for byte those of a plain build, no compile may take longer than the
//! bound farmd's configured deadlines give it, and each test checks that its fault really
//! happened (the peer had jobs in flight when cut, the switch dropped frames, the disk
//! was full, the clocks were skewed). Needs root (`ip netns`, mounts) and libfaketime.
//!
//! The bounds. A compile through the farm waits at most for: the farm's cache lookup
//! (`LOOKUP_WAIT`, 1.5 s, daemon/src/farm_cache.rs), then at most two placements (one
//! retry elsewhere), each bounded by its job's deadline, which farmd caps at
//! `job_timeout` (set to [`JOB_TIMEOUT_S`] here), then a compile at home. A peer that
//! goes silent costs less: its QUIC connection closes `idle_timeout_ms` (1.5 s) after
//! the last packet heard, failing the jobs on it at once. So no compile may take longer
//! than `LOOKUP_WAIT + 2 × JOB_TIMEOUT_S + HOME_SLACK_S` ([`compile_ceiling`]), and the
//! whole build no longer than a few plain builds plus one compile's ceiling.

mod common;
use common::netns::*;
use common::*;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// farmd's `job_timeout` in these clusters: the ceiling of every job's deadline.
const JOB_TIMEOUT_S: u64 = 20;
/// farmd's `idle_timeout_ms` (tests/common/netns.rs writes it into every config).
const IDLE_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long the agent waits for the farm's cache (daemon/src/farm_cache.rs).
const LOOKUP_WAIT: Duration = Duration::from_millis(1500);
/// A compile of one lua source at home on a loaded two-core machine, generously.
const HOME_SLACK_S: u64 = 10;
/// `make -j` of every build here: CI has two cores.
const JOBS: u32 = 2;

/// The longest one compile may take through the farm, whatever fails underneath.
fn compile_ceiling() -> Duration {
    LOOKUP_WAIT + Duration::from_secs(2 * JOB_TIMEOUT_S + HOME_SLACK_S)
}

/// The longest a whole build may take: `factor` plain builds (the farm's own cost on
/// these shared CPUs, and the network's), plus one compile's ceiling for the fault.
fn build_ceiling(plain: Duration, factor: u32) -> Duration {
    plain * factor + compile_ceiling()
}

/// These tests start three or four farmd and a build each: one at a time.
fn heavy() -> std::sync::MutexGuard<'static, ()> {
    static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

/// The plain build every chaos build is compared with: lua built by gcc at `-j2`, once
/// per test process, in the tree every chaos build then uses (same paths, same bytes).
struct Plain {
    _dir: tempfile::TempDir,
    tree: PathBuf,
    objects: BTreeMap<String, Vec<u8>>,
    wall: Duration,
}

fn plain() -> &'static Plain {
    static PLAIN: OnceLock<Plain> = OnceLock::new();
    PLAIN.get_or_init(|| {
        require("gcc");
        require("make");
        require("curl");
        let src = sources("lua5.4");
        let dir = tempfile::Builder::new()
            .prefix("farm-chaos")
            .tempdir()
            .unwrap();
        let tree = dir.path().join("lua");
        copy_tree(&src, &tree);
        let env = Env::new("direct");
        let t0 = Instant::now();
        lua_make_j(&env, &tree, "gcc", None, JOBS);
        let wall = t0.elapsed();
        let objects = objects(&tree);
        assert!(objects.len() >= 30, "{} objects", objects.len());
        eprintln!(
            "farm_chaos: plain build: {} objects in {:.1} s",
            objects.len(),
            wall.as_secs_f64()
        );
        Plain {
            _dir: dir,
            tree,
            objects,
            wall,
        }
    })
}

/// Config lines every chaos node gets, plus node 0's `home` lines.
fn config(i: usize, home: &str) -> String {
    let mut c = format!("job_timeout = {JOB_TIMEOUT_S}\n");
    if i == 0 {
        c.push_str(home);
    }
    c
}

/// A build of the plain build's tree (fresh sources) through farm-cc in the client's
/// namespace, with a journal, running in the background.
struct Build {
    child: Child,
    t0: Instant,
    journal: PathBuf,
}

fn start_build(cl: &NetnsCluster, env: &Env) -> Build {
    let p = plain();
    copy_tree(&sources("lua5.4"), &p.tree);
    let journal = env.root.path().join("build.jsonl");
    let farm_cc = farm_cc_bin().display().to_string();
    let mut c = cl.client_cmd(env, "make");
    c.current_dir(p.tree.join("src"))
        .args([
            format!("-j{JOBS}"),
            "linux".into(),
            format!("CC={farm_cc} -std=gnu99"),
        ])
        .env("FARM_JOURNAL", &journal)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    // Its own process group: a build past its ceiling is killed whole.
    std::os::unix::process::CommandExt::process_group(&mut c, 0);
    Build {
        child: c.spawn().unwrap(),
        t0: Instant::now(),
        journal,
    }
}

/// One compile's journal line, as far as these tests read it.
#[derive(Debug)]
struct Compile {
    source: String,
    ms: u64,
    how: String,
    peer: String,
    events: Vec<String>,
}

struct Finished {
    wall: Duration,
    compiles: Vec<Compile>,
}

impl Finished {
    /// Compiles by where they ran: a peer's name, or `home`.
    fn placed(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for c in &self.compiles {
            let at = if c.peer.is_empty() {
                "home".to_string()
            } else {
                c.peer.clone()
            };
            *m.entry(at).or_insert(0) += 1;
        }
        m
    }

    fn slowest(&self) -> &Compile {
        self.compiles.iter().max_by_key(|c| c.ms).unwrap()
    }
}

/// Waits for the build, killing it and failing past `ceiling`; then asserts it
/// succeeded, its objects are the plain build's byte for byte, and every compile in
/// its journal finished within [`compile_ceiling`].
fn finish(mut b: Build, ceiling: Duration, what: &str) -> Finished {
    let status = loop {
        if let Some(s) = b.child.try_wait().unwrap() {
            break s;
        }
        if b.t0.elapsed() > ceiling {
            let pg = b.child.id().to_string();
            let _ = Command::new("kill")
                .args(["-9", "--", &format!("-{pg}")])
                .status();
            let _ = b.child.wait();
            panic!(
                "{what}: the build hung: still running after {:.1} s (ceiling {:.1} s)",
                b.t0.elapsed().as_secs_f64(),
                ceiling.as_secs_f64()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let wall = b.t0.elapsed();
    let mut err = String::new();
    if let Some(mut e) = b.child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut err);
    }
    assert!(status.success(), "{what}: the build failed: {err}");
    let p = plain();
    assert_same_objects(&p.objects, &objects(&p.tree), what);
    let text = std::fs::read_to_string(&b.journal).unwrap();
    let compiles: Vec<Compile> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["family"] == "gcc" && v["outcome"] != "passthrough")
        .map(|v| Compile {
            source: v["source"].as_str().unwrap_or_default().to_string(),
            ms: v["ms"].as_u64().unwrap(),
            how: v["how"].as_str().unwrap_or_default().to_string(),
            peer: v["peer"].as_str().unwrap_or_default().to_string(),
            events: v["events"]
                .as_array()
                .map(|a| a.iter().map(|e| e.as_str().unwrap().to_string()).collect())
                .unwrap_or_default(),
        })
        .collect();
    assert_eq!(
        compiles.len(),
        p.objects.len(),
        "{what}: one journal line per object"
    );
    let f = Finished { wall, compiles };
    let slow = f.slowest();
    assert!(
        Duration::from_millis(slow.ms) <= compile_ceiling(),
        "{what}: {} took {} ms, past the ceiling of {} ms: {slow:?}",
        slow.source,
        slow.ms,
        compile_ceiling().as_millis()
    );
    let mut why_home: BTreeMap<String, usize> = BTreeMap::new();
    for c in f.compiles.iter().filter(|c| c.peer.is_empty()) {
        let k = format!("{} {}", c.how, c.events.join(","));
        *why_home.entry(k).or_insert(0) += 1;
    }
    eprintln!("farm_chaos: {what}: compiled at home: {why_home:?}");
    eprintln!(
        "farm_chaos: {what}: built in {:.1} s (plain {:.1} s, ceiling {:.1} s), slowest compile {} ms ({} {} {} {:?}; ceiling {} ms), placed {:?}",
        wall.as_secs_f64(),
        p.wall.as_secs_f64(),
        ceiling.as_secs_f64(),
        slow.ms,
        slow.source,
        slow.how,
        slow.peer,
        slow.events,
        compile_ceiling().as_millis(),
        f.placed()
    );
    f
}

/// Node `name` as node 0 sees it in `farm status --json`.
fn peer_status(cl: &NetnsCluster, name: &str) -> serde_json::Value {
    cl.nodes[0].status()["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["node"] == name)
        .cloned()
        .unwrap_or(serde_json::Value::Null)
}

/// The sum of every sample of metric `name` whose labels contain each of `labels`.
fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let base = series.split('{').next()?;
            (base == name && labels.iter().all(|x| series.contains(x)))
                .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

fn log_of(cl: &NetnsCluster, i: usize) -> String {
    std::fs::read_to_string(cl.nodes[i].dir.join("farmd.log")).unwrap_or_default()
}

/// Waits (at most `secs`) until `cond` holds, polling.
fn wait_for(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "{what}: not within {secs} s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A peer cut off mid-build (every frame to and from it dropped while it has jobs)
/// costs the build at most one idle timeout and a retry: the jobs on it fail when its
/// connection goes silent, and go to the other peer. Healed, it takes jobs again.
#[test]
fn a_peer_partitioned_mid_build_costs_a_retry_not_the_build() {
    let _one_at_a_time = heavy();
    let p = plain();
    // Home keeps nothing for itself: every compile goes to peer-b or peer-c.
    let cl = NetnsCluster::with(
        &["home", "peer-b", "peer-c"],
        2.0,
        0.0,
        |i| config(i, "local_slots = 0\n"),
        |_, _| Vec::new(),
    );
    cl.wait_all();
    let env = Env::new("direct");
    let b = start_build(&cl, &env);
    // Cut peer-b while home has jobs on it.
    let mut inflight = 0;
    wait_for(60, "peer-b never had a job in flight", || {
        inflight = peer_status(&cl, "peer-b")["inflight"].as_u64().unwrap_or(0);
        if inflight > 0 {
            cl.net.cut(1);
        }
        inflight > 0
    });
    let cut_at = b.t0.elapsed();
    let still = peer_status(&cl, "peer-b")["inflight"].as_u64().unwrap_or(0);
    eprintln!(
        "farm_chaos: partition: peer-b cut {:.2} s into the build with {inflight} job(s) in flight ({still} still in flight just after)",
        cut_at.as_secs_f64()
    );
    let f = finish(b, build_ceiling(p.wall, 4), "peer-b partitioned mid-build");
    // The cut costs the jobs on peer-b one idle timeout, not their deadline: QUIC
    // closes the silent connection `idle_timeout_ms` after the last packet heard, the
    // job fails and goes to peer-c, an ordinary compile there.
    let partition_ceiling = LOOKUP_WAIT + IDLE_TIMEOUT + Duration::from_secs(HOME_SLACK_S);
    let slow = f.slowest();
    assert!(
        Duration::from_millis(slow.ms) <= partition_ceiling,
        "{} took {} ms, past the partition's ceiling of {} ms",
        slow.source,
        slow.ms,
        partition_ceiling.as_millis()
    );
    // Home keeps nothing and peer-c has room: the retries went there, not home.
    assert!(!f.placed().contains_key("home"), "{:?}", f.placed());
    // The fault really happened: the switch dropped peer-b's frames, and home lost the
    // jobs that were on it (the failure home recorded names the lost connection).
    let stats = cl.net.switch_stats();
    if !stats.is_empty() {
        assert!(stats["dropped_cut"] > 0.0, "{stats:?}");
    }
    let b_st = peer_status(&cl, "peer-b");
    assert!(
        b_st["jobs_failed"].as_u64().unwrap() >= 1,
        "no job failed on the partitioned peer: {b_st}"
    );
    assert!(!b_st["live"].as_bool().unwrap(), "{b_st}");
    let c_st = peer_status(&cl, "peer-c");
    assert!(c_st["jobs_ok"].as_u64().unwrap() >= 1, "{c_st}");
    eprintln!(
        "farm_chaos: partition: peer-b failures {} ({}), switch {stats:?}",
        b_st["jobs_failed"], b_st["recent_failures"]
    );
    // Healed, peer-b is live again and takes jobs: a few compiles with a flag of their
    // own (new keys), each compared with gcc's object.
    cl.net.heal(1);
    let ok_before = b_st["jobs_ok"].as_u64().unwrap();
    wait_for(30, "peer-b is not live again after the heal", || {
        peer_status(&cl, "peer-b")["live"].as_bool() == Some(true)
    });
    let src = p.tree.join("src");
    let farm_cc = farm_cc_bin();
    let files: Vec<&str> = vec![
        "lapi", "lcode", "ldo", "lgc", "llex", "lparser", "lvm", "ltable",
    ];
    let mut used_again = false;
    for (k, f) in files.iter().enumerate() {
        let args = [
            "-std=gnu99",
            "-O2",
            "-DLUA_COMPAT_5_3",
            "-DFARM_CHAOS_HEALED",
            "-c",
            &format!("{f}.c"),
            "-o",
        ];
        let ours = src.join(format!("{f}.healed.o"));
        let theirs = src.join(format!("{f}.plain.o"));
        let o = cl
            .client_cmd(&env, farm_cc.to_str().unwrap())
            .current_dir(&src)
            .args(args)
            .arg(&ours)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let o = Command::new("gcc")
            .current_dir(&src)
            .args(args)
            .arg(&theirs)
            .output()
            .unwrap();
        assert!(o.status.success());
        assert!(
            std::fs::read(&ours).unwrap() == std::fs::read(&theirs).unwrap(),
            "{f}.c compiled after the heal differs from gcc's"
        );
        if peer_status(&cl, "peer-b")["jobs_ok"].as_u64().unwrap() > ok_before {
            eprintln!("farm_chaos: partition: healed peer-b took a job again ({} compiles after the heal)", k + 1);
            used_again = true;
            break;
        }
    }
    assert!(used_again, "peer-b took no job after the heal");
}

/// 200 ms round trips and 5 % of the frames lost each way between every two nodes:
/// the build still succeeds, byte for byte, and placement decides between the slow
/// peers and home.
#[test]
fn a_slow_lossy_network_200ms_rtt_5pct_loss_builds_identical() {
    let _one_at_a_time = heavy();
    let p = plain();
    let cl = NetnsCluster::with(
        &["home", "peer-b", "peer-c"],
        200.0,
        5.0,
        |i| config(i, ""),
        |_, _| Vec::new(),
    );
    cl.wait_all();
    let rtt = cl.net.rtt_ms;
    assert!((180.0..400.0).contains(&rtt), "measured RTT {rtt} ms");
    let env = Env::new("direct");
    let b = start_build(&cl, &env);
    let f = finish(b, build_ceiling(p.wall, 6), "200 ms RTT, 5 % loss");
    let stats = cl.net.switch_stats();
    if !stats.is_empty() {
        let lost = stats["dropped_loss"] / (stats["dropped_loss"] + stats["delivered"]);
        assert!(
            (0.02..0.10).contains(&lost),
            "the switch lost {:.1} % of the frames: {stats:?}",
            lost * 100.0
        );
    }
    let placed = f.placed();
    let remote: usize = placed
        .iter()
        .filter(|(k, _)| k.as_str() != "home")
        .map(|(_, v)| v)
        .sum();
    eprintln!(
        "farm_chaos: lossy: RTT {rtt} ms, {remote} of {} compiles on peers, {placed:?}, wall {:.1} s vs plain {:.1} s, switch {stats:?}",
        f.compiles.len(),
        f.wall.as_secs_f64(),
        p.wall.as_secs_f64()
    );
}

/// The path of `p` (absolute) as farmd's process `pid` sees it, in its own mount
/// namespace.
fn in_mounts_of(pid: u32, p: &Path) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/root")).join(p.strip_prefix("/").unwrap())
}

/// A peer whose disk fills up mid-build refuses what it cannot hold (and stops
/// advertising compilers until it has room); the jobs go elsewhere, the build is byte
/// for byte the plain one, and the peer says so in its log and metrics.
#[test]
fn a_peer_whose_disk_fills_mid_build_is_worked_around_and_says_so() {
    let _one_at_a_time = heavy();
    let p = plain();
    // peer-b's state directory (job directories, blobs, its compilers' files laid out
    // for jobs, its share of the cache, audit log) is a tmpfs of its own, mounted in
    // the mount namespace `ip netns exec` gives it: gone with farmd, never in the
    // host's. 128 MiB: room for gcc's files (cc1 alone is 33 MB) and the build.
    let cl = NetnsCluster::with(
        &["home", "peer-b", "peer-c"],
        2.0,
        0.0,
        |i| config(i, "local_slots = 0\n"),
        |i, dir| {
            if i != 1 {
                return Vec::new();
            }
            let state = dir.join("state");
            std::fs::create_dir_all(&state).unwrap();
            vec![
                "sh".into(),
                "-c".into(),
                "mount -t tmpfs -o size=128m,mode=0700 farm-chaos \"$0\" && exec \"$@\"".into(),
                OsString::from(state),
            ]
        },
    );
    cl.wait_all();
    let state = in_mounts_of(cl.nodes[1].pid(), &cl.nodes[1].dir.join("state"));
    let free = |p: &Path| -> u64 {
        let o = Command::new("stat")
            .args(["-f", "--format=%a %S"])
            .arg(p)
            .output()
            .unwrap();
        let s = String::from_utf8_lossy(&o.stdout);
        let mut w = s.split_whitespace().map(|x| x.parse::<u64>().unwrap());
        w.next().unwrap() * w.next().unwrap()
    };
    let before = free(&state);
    assert!(
        before > 0 && before <= 128 << 20,
        "peer-b's state is not its own small file system: {before} bytes free"
    );
    let env = Env::new("direct");
    let b = start_build(&cl, &env);
    let t0 = Instant::now();
    while peer_status(&cl, "peer-b")["jobs_ok"].as_u64().unwrap_or(0) < 1 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "peer-b never compiled a job: {}\npeer-b's log:\n{}",
            peer_status(&cl, "peer-b"),
            log_of(&cl, 1),
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Fill it: write until the file system says it is full.
    let filled_at = b.t0.elapsed();
    let ok_at_fill = peer_status(&cl, "peer-b")["jobs_ok"].as_u64().unwrap();
    let mut f = std::fs::File::create(state.join("ballast")).unwrap();
    let chunk = vec![0u8; 64 << 10];
    let full = loop {
        use std::io::Write;
        if let Err(e) = f.write_all(&chunk) {
            break e;
        }
    };
    drop(f);
    assert_eq!(full.raw_os_error(), Some(28), "{full}");
    let left = free(&state);
    assert!(left < 64 << 10, "{left} bytes still free");
    eprintln!(
        "farm_chaos: disk: peer-b's 128 MiB state filled {:.2} s into the build, after {ok_at_fill} jobs ({before} bytes were free at start, {left} left)",
        filled_at.as_secs_f64()
    );
    let fin = finish(b, build_ceiling(p.wall, 4), "peer-b's disk full");
    let b_st = peer_status(&cl, "peer-b");
    let log = log_of(&cl, 1);
    let m = cl.metrics(1);
    let refused = metric(&m, "farm_refusals_total", &["reason=\"disk\""]);
    eprintln!(
        "farm_chaos: disk: peer-b ran {:?} compiles; home saw it: ok {} failed {} {}; its disk refusals {refused}; placed {:?}",
        fin.placed().get("peer-b"),
        b_st["jobs_ok"],
        b_st["jobs_failed"],
        b_st["recent_failures"],
        fin.placed()
    );
    // The peer noticed, said so once, and stopped offering its compilers.
    assert!(
        log.contains("state directory's disk is full"),
        "peer-b's log does not mention the full disk:\n{log}"
    );
    wait_for(
        10,
        "peer-b still advertises compilers with a full disk",
        || {
            peer_status(&cl, "peer-b")["compilers"]
                .as_array()
                .is_some_and(|a| a.is_empty())
        },
    );
    assert!(
        b_st["live"].as_bool().unwrap(),
        "peer-b, disk full, is no longer a live peer (it still serves the cache): {b_st}"
    );
    // Every job home sent it after the fill was refused (and counted), none failed
    // silently: the peer's failures at home are its refusals.
    let failed = b_st["jobs_failed"].as_u64().unwrap();
    assert!(
        refused >= failed as f64,
        "home saw {failed} failures on peer-b, peer-b counted {refused} disk refusals"
    );
    // Room again: it says so and offers its compilers again.
    std::fs::remove_file(state.join("ballast")).unwrap();
    wait_for(30, "peer-b does not advertise its compilers again", || {
        peer_status(&cl, "peer-b")["compilers"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
    });
    assert!(log_of(&cl, 1).contains("disk has room again"));
}

/// libfaketime's library for a multi-threaded program (farmd), wherever Debian put it.
fn libfaketime() -> PathBuf {
    let o = Command::new("dpkg")
        .args(["-L", "libfaketime"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .find(|l| l.ends_with("/libfaketimeMT.so.1"))
        .map(PathBuf::from)
        .expect("libfaketime is not installed: run scripts/install-deps.sh")
}

/// Peers whose clocks are hours ahead and behind take jobs as any other (nothing in
/// the protocol carries wall-clock time, and the cluster's certificates are valid
/// 2020-2100); a peer whose clock is past 2100 sees every certificate expired, so it
/// never joins, which both sides log, and the build does not wait for it.
#[test]
fn peers_with_skewed_clocks_build_identical_and_one_past_the_certificates_is_refused() {
    let _one_at_a_time = heavy();
    let p = plain();
    let lib = libfaketime();
    // CLOCK_REALTIME only: a skewed clock, not a slower or faster one.
    let skew = |spec: &str| -> Vec<OsString> {
        vec![
            "env".into(),
            format!("LD_PRELOAD={}", lib.display()).into(),
            format!("FAKETIME={spec}").into(),
            "FAKETIME_DONT_FAKE_MONOTONIC=1".into(),
            "FAKETIME_NO_CACHE=1".into(),
        ]
    };
    let cl = NetnsCluster::with(
        &["home", "peer-b", "peer-c", "peer-d"],
        2.0,
        0.0,
        |i| config(i, "local_slots = 0\n"),
        |i, _| match i {
            1 => skew("+5h"),
            2 => skew("-5h"),
            3 => skew("@2101-01-01 00:00:00"),
            _ => Vec::new(),
        },
    );
    // home, peer-b and peer-c see each other; peer-d is refused by everyone.
    for i in 0..3 {
        wait_for(40, "the skewed peers do not join", || {
            let mut live = cl.nodes[i].live_peers();
            live.sort();
            live.len() == 2 && !live.contains(&"peer-d".to_string())
        });
    }
    // The clocks really are skewed: each farmd's start time, by its own clock.
    let start = |i: usize| metric(&cl.metrics(i), "farm_start_time_seconds", &[]);
    let home_t = start(0);
    for (i, hours) in [(1, 5.0), (2, -5.0)] {
        let d = (start(i) - home_t) / 3600.0;
        assert!((d - hours).abs() < 0.25, "node {i}'s clock is {d:.2} h off");
    }
    let d_years = (start(3) - home_t) / (365.25 * 86400.0);
    assert!(d_years > 70.0, "peer-d's clock is {d_years:.1} years ahead");
    let env = Env::new("direct");
    let b = start_build(&cl, &env);
    let f = finish(b, build_ceiling(p.wall, 4), "peers with skewed clocks");
    let placed = f.placed();
    for n in ["peer-b", "peer-c"] {
        assert!(
            placed.get(n).copied().unwrap_or(0) > 0,
            "{n} ran nothing: {placed:?}"
        );
    }
    // Home keeps nothing and two peers have room: every compile ran on one of them
    // (libfaketime's LD_PRELOAD on their farmd must not make their compilers look
    // like other compilers).
    assert!(!placed.contains_key("home"), "{placed:?}");
    assert!(!placed.contains_key("peer-d"), "{placed:?}");
    // The refusal is logged: peer-d refuses home's certificate (expired by its clock),
    // and home logs the handshake peer-d broke off.
    let d_log = log_of(&cl, 3);
    let home_log = log_of(&cl, 0);
    eprintln!(
        "farm_chaos: skew: placed {placed:?}\npeer-d log:\n{}\nhome log (handshakes):\n{}",
        d_log.lines().take(20).collect::<Vec<_>>().join("\n"),
        home_log
            .lines()
            .filter(|l| l.contains("handshake"))
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        home_log.contains("handshake refused"),
        "home does not log peer-d's broken handshakes:\n{home_log}"
    );
    assert!(
        d_log.to_lowercase().contains("expired"),
        "peer-d does not log why it cannot join:\n{d_log}"
    );
}
