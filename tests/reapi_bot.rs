//! farmd as the bot of a real REAPI service: BuildGrid 0.9.1 (Execute, CAS, Action
//! Cache, Bots) on a throwaway PostgreSQL, Actions submitted with BuildGrid's own
//! client (`bgd execute command`), farmd running their leases in its job sandbox.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::farmd::Cluster;
use common::servers::{buildgrid_exec, buildgrid_exec_jwt, buildgrid_exec_with, BuildGridExec};

/// One farmd serving `bg` as its bot, with `compilers` as its allow-list.
fn bot(bg: &BuildGridExec, compilers: &[&str]) -> Cluster {
    bot_with(bg, compilers, "")
}

/// The device properties the tests' bots advertise unless told otherwise.
const PROPERTIES: &str = "OSFamily = \"linux\", ISA = \"x86-64\"";

/// [`bot`] with more keys in its `reapi_bot` table (`, key = value`).
fn bot_with(bg: &BuildGridExec, compilers: &[&str], more: &str) -> Cluster {
    bot_conf(bg, compilers, "", Some(PROPERTIES), more)
}

/// A bot farmd with `top` lines in its configuration, `properties` (`None`: farmd's
/// defaults) and `more` keys in its `reapi_bot` table.
fn bot_conf(
    bg: &BuildGridExec,
    compilers: &[&str],
    top: &str,
    properties: Option<&str>,
    more: &str,
) -> Cluster {
    let list = compilers
        .iter()
        .map(|c| format!("{c:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let props = properties.map_or(String::new(), |p| format!(", properties = {{ {p} }}"));
    let conf = format!(
        "{top}compilers = [{list}]\nhttp = \"127.0.0.1:{http}\"\njob_timeout = 60\n\
         reapi_bot = {{ endpoint = \"reapi://127.0.0.1:{port}\", bot_id = \"farm-test-bot\"\
         {props}{more} }}\n",
        http = common::servers::free_port(),
        port = bg.port,
    );
    Cluster::new(&["bot"], move |_| conf.clone())
}

/// farmd's `/metrics` value of `farm_reapi_bot_leases_total{result="…"}`.
fn leases_metric(c: &Cluster, result: &str) -> u64 {
    let conf = std::fs::read_to_string(&c.nodes[0].config).unwrap();
    let addr = conf
        .lines()
        .find_map(|l| l.strip_prefix("http = \""))
        .and_then(|l| l.strip_suffix('"'))
        .unwrap();
    let (status, body) = common::http::get(&format!("http://{addr}/metrics"));
    assert_eq!(status, 200);
    let want = format!("farm_reapi_bot_leases_total{{result=\"{result}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&want))
        .map_or(0, |v| v.trim().parse().unwrap())
}

fn farmd_log(c: &Cluster) -> String {
    std::fs::read_to_string(c.nodes[0].dir.join("farmd.log")).unwrap_or_default()
}

/// The farmd log's lines about finished leases (done or failed), in order.
fn lease_lines(c: &Cluster) -> Vec<String> {
    farmd_log(c)
        .lines()
        .filter(|l| l.contains("REAPI lease done") || l.contains("REAPI lease failed"))
        .map(str::to_string)
        .collect()
}

/// `bgd execute command` of `args` with `input` as the input root, OSFamily/ISA
/// platform; outputs (`outputs`) fetched into `out`; `cache`: look up and fill the
/// Action Cache.
fn execute(
    bg: &BuildGridExec,
    input: &Path,
    out: &Path,
    outputs: &[&str],
    cache: bool,
    args: &[&str],
) -> Output {
    // Python's client prints ExecuteResponses as text protos.
    execute_command(bg, None, input, out, outputs, cache, args)
        .output()
        .unwrap()
}

/// The `bgd execute command` of [`execute`], not started yet (`auth`: a token file
/// for `--auth-token`); stdout and stderr piped.
fn execute_command(
    bg: &BuildGridExec,
    auth: Option<&Path>,
    input: &Path,
    out: &Path,
    outputs: &[&str],
    cache: bool,
    args: &[&str],
) -> Command {
    let mut c = bg.bgd();
    c.args(["execute", "--remote", &bg.url()]);
    if let Some(token) = auth {
        c.arg("--auth-token").arg(token);
    }
    c.arg("command")
        .args(["-p", "OSFamily", "linux", "-p", "ISA", "x86-64"])
        .arg("--output-directory")
        .arg(out);
    for o in outputs {
        c.args(["--output-file", o]);
    }
    if cache {
        c.arg("-c");
    }
    c.arg(input)
        .arg("--")
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    c
}

/// Waits until farmd has started a lease (within a minute of `t0`).
fn wait_lease_started(c: &Cluster, t0: Instant) {
    while !farmd_log(c).contains("REAPI lease started") {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no lease started:\n{}",
            farmd_log(c)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// [`execute`] without the cache, and the farmd log's line about the lease it ran.
fn lease(
    bg: &BuildGridExec,
    farm: &Cluster,
    input: &Path,
    out: &Path,
    outputs: &[&str],
    args: &[&str],
) -> (Output, String) {
    let before = lease_lines(farm).len();
    let o = execute(bg, input, out, outputs, false, args);
    let lines = wait_leases(farm, before + 1);
    (o, lines[before].clone())
}

/// `gcc -c a.c -o <obj>` of `input` through [`execute`]: it succeeds and the object
/// comes back into `out`.
fn gcc_c(bg: &BuildGridExec, input: &Path, out: &Path, obj: &str) {
    let o = execute(
        bg,
        input,
        out,
        &[obj],
        false,
        &["gcc", "-c", "a.c", "-o", obj],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(out.join(obj).exists(), "no {obj}: {}", text(&o));
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Waits until the farmd log has `n` finished leases.
fn wait_leases(c: &Cluster, n: usize) -> Vec<String> {
    let t0 = Instant::now();
    loop {
        let l = lease_lines(c);
        if l.len() >= n {
            return l;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "{} leases finished, wanted {n}; farmd log:\n{}",
            l.len(),
            farmd_log(c)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn src_dir(root: &Path, name: &str, body: &str) -> PathBuf {
    let d = root.join(name);
    std::fs::create_dir_all(d.join("include")).unwrap();
    std::fs::write(d.join("include/k.h"), "#define K 7\n").unwrap();
    std::fs::write(d.join("a.c"), body).unwrap();
    d
}

/// Submits malformed Actions (through BuildGrid's Python protos, which its CLI does
/// not let one build) and prints each one's status code and message, one per line.
const BAD_ACTIONS: &str = r#"
import hashlib, os, sys, grpc
from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re
from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as reg
ch = grpc.insecure_channel(sys.argv[1])
cas, ex = reg.ContentAddressableStorageStub(ch), reg.ExecutionStub(ch)
def d(b): return re.Digest(hash=hashlib.sha256(b).hexdigest(), size_bytes=len(b))
plat = re.Platform(properties=[re.Platform.Property(name="ISA", value="x86-64"),
                               re.Platform.Property(name="OSFamily", value="linux")])
src = b"int x;\n"
good = re.FileNode(name="a.c", digest=d(src))
cases = [
    (re.Directory(files=[good, re.FileNode(name="../evil.c", digest=d(src))]), ["a.o"]),
    (re.Directory(files=[good, re.FileNode(name="b.c", digest=re.Digest(hash="zz", size_bytes=-5))]), ["a.o"]),
    (re.Directory(files=[good], symlinks=[re.SymlinkNode(name="etc", target="/etc")]), ["a.o"]),
    (re.Directory(files=[good, good]), ["a.o"]),
    (re.Directory(files=[good]), ["/tmp/abs.o"]),
]
for root, outs in cases:
    cmd = re.Command(arguments=["gcc", "-c", "a.c"], output_paths=outs, platform=plat)
    rb, cb = root.SerializeToString(), cmd.SerializeToString()
    act = re.Action(command_digest=d(cb), input_root_digest=d(rb), do_not_cache=True, platform=plat,
                    salt=os.urandom(8))
    ab = act.SerializeToString()
    reqs = [re.BatchUpdateBlobsRequest.Request(digest=d(b), data=b) for b in [src, rb, cb, ab]]
    cas.BatchUpdateBlobs(re.BatchUpdateBlobsRequest(requests=reqs))
    for op in ex.Execute(re.ExecuteRequest(action_digest=d(ab), skip_cache_lookup=True)):
        if op.done:
            r = re.ExecuteResponse(); op.response.Unpack(r)
            print(f"code={r.status.code} {r.status.message}", flush=True)
"#;

#[test]
fn farmd_runs_buildgrid_actions_in_its_sandbox() {
    let bg = buildgrid_exec();
    let mut farm = bot(&bg, &["/usr/bin/gcc", "/usr/bin/cat", "/usr/bin/cp"]);
    let work = tempfile::tempdir().unwrap();

    // (a) gcc -c with its inputs in the input root: the object is byte-identical to
    // a plain local gcc -c of the same files.
    let body = "#include \"include/k.h\"\nint f(int x) { return x * K; }\n";
    let input = src_dir(work.path(), "in-a", body);
    let out = work.path().join("out-a");
    let (o, last) = lease(
        &bg,
        &farm,
        &input,
        &out,
        &["a.o"],
        &["gcc", "-O2", "-c", "a.c", "-o", "a.o"],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        last.contains("REAPI lease done") && last.contains("exit=0"),
        "{last}"
    );
    let remote = std::fs::read(out.join("a.o")).expect("the object came back");
    let local_dir = work.path().join("local");
    std::fs::create_dir_all(&local_dir).unwrap();
    let st = Command::new("gcc")
        .args(["-O2", "-c", "a.c", "-o"])
        .arg(local_dir.join("a.o"))
        .current_dir(&input)
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(
        remote,
        std::fs::read(local_dir.join("a.o")).unwrap(),
        "object differs from a local gcc -c"
    );

    // A -g compile records its directory: the job sees its input root at a fixed
    // path, so two runs (two leases, two job directories) give the same bytes, and
    // no path of farmd's machine is in them.
    let mut objs = Vec::new();
    for i in 0..2 {
        let out = work.path().join(format!("out-g{i}"));
        let (o, _) = lease(
            &bg,
            &farm,
            &input,
            &out,
            &["g.o"],
            &["gcc", "-g", "-c", "a.c", "-o", "g.o"],
        );
        assert!(o.status.success(), "{}", text(&o));
        objs.push(std::fs::read(out.join("g.o")).expect("the -g object came back"));
    }
    assert!(objs[0] == objs[1], "two runs of the same -g Action differ");
    let has = |needle: &[u8]| objs[0].windows(needle.len()).any(|w| w == needle);
    assert!(
        has(b"/reapi/root"),
        "the fixed job path is not in the debug info"
    );
    assert!(
        !has(b"/jobs/"),
        "farmd's job directory leaked into the object"
    );

    // (b) The second identical Execute (with the Action Cache) is answered from the
    // cache: one lease reaches farmd for the two.
    let input_b = src_dir(work.path(), "in-b", "int g(void) { return 42; }\n");
    let before = lease_lines(&farm).len();
    for i in 0..2 {
        let out = work.path().join(format!("out-b{i}"));
        let o = execute(
            &bg,
            &input_b,
            &out,
            &["b.o"],
            true,
            &["gcc", "-c", "a.c", "-o", "b.o"],
        );
        assert!(o.status.success(), "{}", text(&o));
        assert!(out.join("b.o").exists(), "run {i}: no object: {}", text(&o));
        if i == 0 {
            wait_leases(&farm, before + 1);
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(leases_metric(&farm, "done"), before as u64 + 1);
    assert_eq!(
        lease_lines(&farm).len(),
        before + 1,
        "the cached Execute reached the bot"
    );

    // Blobs above the batch size travel through ByteStream both ways: a 5 MiB
    // input read by the bot, copied by the action and uploaded as its output.
    let input_big = work.path().join("in-big");
    std::fs::create_dir_all(&input_big).unwrap();
    let big: Vec<u8> = (0..5u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(input_big.join("big.bin"), &big).unwrap();
    let out = work.path().join("out-big");
    let o = execute(
        &bg,
        &input_big,
        &out,
        &["copy.bin"],
        false,
        &["cp", "big.bin", "copy.bin"],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(lease_lines(&farm).last().unwrap().contains("exit=0"));
    assert!(
        std::fs::read(out.join("copy.bin")).unwrap() == big,
        "the 5 MiB output differs"
    );

    // (c) A program not on the allow-list is refused, naming it.
    let (o, last) = lease(
        &bg,
        &farm,
        &input,
        &work.path().join("out-c1"),
        &[],
        &["sh", "-c", "echo pwned > /tmp/farm-reapi-pwned"],
    );
    assert!(
        last.contains("REAPI lease failed") && last.contains("code=9"),
        "{last}"
    );
    assert!(
        text(&o).contains("is not on the allow-list"),
        "{}",
        text(&o)
    );
    assert!(!Path::new("/tmp/farm-reapi-pwned").exists());
    assert_eq!(leases_metric(&farm, "failed_precondition"), 1);

    // An allow-listed program cannot read outside what the sandbox shows it...
    let (o, last) = lease(
        &bg,
        &farm,
        &input,
        &work.path().join("out-c2"),
        &[],
        &["cat", "/etc/shadow"],
    );
    assert!(last.contains("exit=1"), "{last}");
    assert!(!text(&o).contains("root:"), "{}", text(&o));

    // ...nor write outside its job directory: not to this test's directory (not
    // in the sandbox: cp fails), not into farmd's state directory (the job's view
    // has only the directories leading to its job directory, on the sandbox's own
    // tmpfs: cp may succeed there, and the file vanishes with the sandbox).
    let planted = work.path().join(format!("planted-{}", std::process::id()));
    let t = planted.to_str().unwrap();
    let (o, last) = lease(
        &bg,
        &farm,
        &input,
        &work.path().join("out-c3"),
        &[],
        &["cp", "a.c", t],
    );
    assert!(last.contains("exit=1"), "{last}: {}", text(&o));
    assert!(
        !planted.exists(),
        "{} written from a lease",
        planted.display()
    );
    let state = farm.nodes[0].dir.join("state/planted");
    let t = state.to_str().unwrap();
    let _ = lease(
        &bg,
        &farm,
        &input,
        &work.path().join("out-c4"),
        &[],
        &["cp", "a.c", t],
    );
    assert!(!state.exists(), "{} written from a lease", state.display());
    // An output path out of the working directory is refused as a malformed Command.
    let (o, last) = lease(
        &bg,
        &farm,
        &input,
        &work.path().join("out-c6"),
        &["../up.o"],
        &["gcc", "-c", "a.c", "-o", "../up.o"],
    );
    assert!(
        last.contains("REAPI lease failed") && last.contains("code=3"),
        "{last}: {}",
        text(&o)
    );
    // Malformed Actions fail their lease as INVALID_ARGUMENT, naming what is wrong;
    // farmd keeps serving.
    let o = Command::new(bg.venv.join("bin/python"))
        .args(["-c", BAD_ACTIONS, &format!("127.0.0.1:{}", bg.port)])
        .output()
        .unwrap();
    let out = text(&o);
    let codes: Vec<&str> = out.lines().filter(|l| l.starts_with("code=")).collect();
    assert_eq!(codes.len(), 5, "{out}");
    for (line, what) in
        codes
            .iter()
            .zip(["../evil.c", "b.c", "symbolic links", "a.c", "/tmp/abs.o"])
    {
        assert!(
            line.starts_with("code=3 ") && line.contains(what),
            "{line} (wanted {what})"
        );
    }
    assert!(farm.nodes[0].alive(), "farmd died on a bad lease");

    // A gcc output path outside the input root is not even accepted by the client or
    // lands in the sandbox's own tmpfs: never on this machine.
    let escape = format!("/tmp/farm-reapi-escape-{}.o", std::process::id());
    let _ = lease(
        &bg,
        &farm,
        &input,
        &work.path().join("out-c4"),
        &[],
        &["gcc", "-c", "a.c", "-o", &escape],
    );
    assert!(
        !Path::new(&escape).exists(),
        "{escape} written from a lease"
    );
}

/// A bot running a lease of `sleep <secs>`, submitted with BuildGrid's client.
struct Sleeping {
    _bg: BuildGridExec,
    farm: Cluster,
    _work: tempfile::TempDir,
    /// The client, waiting for its Execute.
    child: std::process::Child,
    /// When the Execute was submitted.
    t0: Instant,
}

/// Submits `sleep <secs>` to a bot of its own and waits until the lease started.
fn sleeping_lease(secs: u32) -> Sleeping {
    let bg = buildgrid_exec();
    let farm = bot(&bg, &["/usr/bin/sleep"]);
    let work = tempfile::tempdir().unwrap();
    let input = src_dir(work.path(), "in", "int x;\n");
    let out = work.path().join("out");
    let secs = secs.to_string();
    let mut client = execute_command(&bg, None, &input, &out, &[], false, &["sleep", &secs]);
    let t0 = Instant::now();
    let child = client.spawn().unwrap();
    wait_lease_started(&farm, t0);
    Sleeping {
        _bg: bg,
        farm,
        _work: work,
        child,
        t0,
    }
}

/// farmd killed while it runs a lease: the Execute is not left hanging — BuildGrid
/// re-queues the job once the bot's session lapses, and a restarted farmd (a new
/// session, same bot id) runs it, or the client gets an error.
#[test]
fn a_bot_killed_mid_lease_leaves_nothing_hanging() {
    // Every part bound: BuildGrid and the input live to the end.
    let Sleeping {
        _bg,
        mut farm,
        _work,
        child,
        t0,
    } = sleeping_lease(4);
    // The lease started: kill farmd under it.
    farm.nodes[0].kill9();
    let killed_at = t0.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    farm.nodes[0].start();
    let o = child.wait_with_output().unwrap();
    let took = t0.elapsed();
    eprintln!(
        "killed after {killed_at:?}; client returned after {took:?} ({}): {}",
        o.status,
        text(&o)
            .lines()
            .rev()
            .take(3)
            .collect::<Vec<_>>()
            .join(" | ")
    );
    assert!(
        took < Duration::from_secs(120),
        "the Execute hung for {took:?}"
    );
    let log = farmd_log(&farm);
    if o.status.success() && !text(&o).contains("code:") {
        // Re-queued and run by the restarted farmd.
        assert!(log.contains("REAPI lease done"), "{log}");
    }
}

/// farmd stopped (SIGTERM) while it runs a lease finishes it and reports it before it
/// exits: the Execute succeeds without a re-run.
#[test]
fn a_stopping_bot_reports_its_running_lease() {
    let Sleeping {
        _bg,
        mut farm,
        _work,
        child,
        ..
    } = sleeping_lease(2);
    let pid = farm.nodes[0].pid();
    assert!(Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let st = farm.nodes[0].child.as_mut().unwrap().wait().unwrap();
    assert!(st.success(), "farmd exited with {st}");
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let log = farmd_log(&farm);
    assert_eq!(log.matches("REAPI lease started").count(), 1, "{log}");
    assert!(log.contains("REAPI lease done"), "{log}");
    assert!(!text(&o).contains("code: 14"), "{}", text(&o));
}

/// A REAPI service that is down does not stop farmd: it logs the outage once, keeps
/// serving its other roles, and takes leases again once the service is back.
#[test]
fn a_service_that_goes_away_and_comes_back() {
    let mut bg = buildgrid_exec();
    let mut farm = bot(&bg, &["/usr/bin/gcc"]);
    let work = tempfile::tempdir().unwrap();
    let input = src_dir(work.path(), "in", "int f(void) { return 1; }\n");
    gcc_c(&bg, &input, &work.path().join("o1"), "a.o");
    wait_leases(&farm, 1);
    bg.kill();
    // Down for longer than a long poll and the session's keep-alive.
    std::thread::sleep(Duration::from_secs(35));
    assert!(farm.nodes[0].alive(), "farmd died with the REAPI service");
    assert!(
        farm.nodes[0].try_status().is_some(),
        "farmd's agent stopped answering"
    );
    bg.restart();
    let t0 = Instant::now();
    gcc_c(&bg, &input, &work.path().join("o2"), "b.o");
    wait_leases(&farm, 2);
    eprintln!("first Execute after the restart took {:?}", t0.elapsed());
    let log = farmd_log(&farm);
    assert!(
        log.matches("cannot open a session").count() <= 1,
        "the outage was logged more than once:\n{log}"
    );
}

/// A REAPI service with authorization: farmd sends `auth_token_file`'s token as a
/// bearer token on every call (session, CAS, ByteStream) and runs leases; without
/// it the service turns the bot away and nothing runs.
#[test]
fn a_bot_with_a_bearer_token() {
    let bg = buildgrid_exec_jwt("farm-test-secret");
    let work = tempfile::tempdir().unwrap();
    let token_file = work.path().join("token");
    let o = Command::new(bg.venv.join("bin/python"))
        .args([
            "-c",
            "import jwt, time; print(jwt.encode({'sub': 'farm', 'exp': int(time.time()) + 3600}, \
             'farm-test-secret', algorithm='HS256'))",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    std::fs::write(&token_file, &o.stdout).unwrap();
    let more = format!(", auth_token_file = {:?}", token_file.display().to_string());
    let farm = bot_with(&bg, &["/usr/bin/gcc"], &more);
    let input = src_dir(work.path(), "in", "int f(void) { return 2; }\n");
    let o = execute_command(
        &bg,
        Some(&token_file),
        &input,
        &work.path().join("out"),
        &["a.o"],
        false,
        &["gcc", "-c", "a.c", "-o", "a.o"],
    )
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(work.path().join("out/a.o").exists(), "{}", text(&o));
    wait_leases(&farm, 1);

    // Without the token: no session, logged once.
    let stranger = bot(&bg, &["/usr/bin/gcc"]);
    let t0 = Instant::now();
    while !farmd_log(&stranger).contains("cannot open a session") {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "{}",
            farmd_log(&stranger)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!farmd_log(&stranger).contains("session open"));
}

// ---- farm-layout=rootfs: a farm same-path job as a REAPI Action ----

use farm::reapi::proto as re;

/// BuildGrid with `farm-layout` among its match keys (so that rootfs Actions reach
/// only bots that advertise the layout) and room in its CAS for a toolchain.
fn buildgrid_rootfs() -> BuildGridExec {
    buildgrid_exec_with(|yaml, _| {
        common::servers::edited(
            &common::servers::edited(
                yaml,
                "match-property-keys: [OSFamily, ISA]",
                "match-property-keys: [OSFamily, ISA, farm-layout]",
            ),
            "size: 256M",
            "size: 2G",
        )
    })
}

/// A rootfs Action being built as THE CONTRACT (docs/reapi.md) says: the input root
/// mirrors `/` (paths absolute here, the tree made by `reapi::merkle`).
#[derive(Default)]
struct RootfsAction {
    files: Vec<farm::reapi::merkle::InputFile>,
    links: Vec<farm::reapi::merkle::InputLink>,
    dirs: Vec<String>,
    blobs: Vec<(re::Digest, Vec<u8>)>,
}

impl RootfsAction {
    fn file(&mut self, path: &str, data: Vec<u8>, exec: bool) {
        let digest = farm::reapi::digest_of(&data);
        self.files.push(farm::reapi::merkle::InputFile {
            path: path.trim_start_matches('/').to_string(),
            digest: digest.clone(),
            executable: exec,
        });
        self.blobs.push((digest, data));
    }

    fn link(&mut self, path: &str, target: &str) {
        self.links.push(farm::reapi::merkle::InputLink {
            path: path.trim_start_matches('/').to_string(),
            target: target.to_string(),
        });
    }

    fn dir(&mut self, path: &str) {
        self.dirs.push(path.trim_start_matches('/').to_string());
    }

    /// Every entry of a toolchain package built by farm's own packager, its files
    /// read from where this machine has them.
    fn package(&mut self, t: &farm::toolchain::Toolchain) {
        for e in &t.entries {
            match &e.kind {
                farm::toolchain::ToolKind::File { exec, .. } => {
                    self.file(&e.path, std::fs::read(&e.path).unwrap(), *exec)
                }
                farm::toolchain::ToolKind::Link(target) => self.link(&e.path, target),
            }
        }
    }

    /// The Action (and every blob it needs, Command and Directories included).
    fn action(
        mut self,
        args: &[&str],
        cwd: &Path,
        outputs: &[&str],
    ) -> (re::Digest, Vec<(re::Digest, Vec<u8>)>) {
        let cwd = cwd.to_str().unwrap();
        self.dir(cwd);
        let dirs: Vec<&str> = self.dirs.iter().map(String::as_str).collect();
        let tree = farm::reapi::merkle::build_with_links(&self.files, &self.links, &dirs).unwrap();
        self.blobs.extend(tree.directories);
        let root = tree.root;
        let platform = re::Platform {
            properties: [
                ("ISA", "x86-64"),
                ("OSFamily", "linux"),
                ("farm-layout", "rootfs"),
            ]
            .iter()
            .map(|(k, v)| re::platform::Property {
                name: k.to_string(),
                value: v.to_string(),
            })
            .collect(),
        };
        let mut outputs: Vec<String> = outputs.iter().map(|s| s.to_string()).collect();
        outputs.sort();
        #[allow(deprecated)]
        let command = re::Command {
            arguments: args.iter().map(|s| s.to_string()).collect(),
            environment_variables: vec![re::command::EnvironmentVariable {
                name: "PATH".into(),
                value: "/usr/bin:/bin".into(),
            }],
            output_files: outputs.clone(),
            output_paths: outputs,
            working_directory: cwd.trim_start_matches('/').to_string(),
            platform: Some(platform.clone()),
            ..Default::default()
        };
        let (cd, cb) = farm::reapi::message_digest(&command);
        self.blobs.push((cd.clone(), cb));
        let action = re::Action {
            command_digest: Some(cd),
            input_root_digest: Some(root),
            timeout: Some(bazel_remote_apis::google::protobuf::Duration {
                seconds: 60,
                nanos: 0,
            }),
            do_not_cache: false,
            platform: Some(platform),
            ..Default::default()
        };
        let (ad, ab) = farm::reapi::message_digest(&action);
        self.blobs.push((ad.clone(), ab));
        (ad, self.blobs)
    }
}

/// Runs an Action already in the CAS through BuildGrid's Execute (its Python protos)
/// and prints the response: `code=N message`, `exit=N`, `file PATH HASH SIZE`, and
/// the stdout and stderr digests.
const EXECUTE: &str = r#"
import sys, grpc
from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re
from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as reg
ex = reg.ExecutionStub(grpc.insecure_channel(sys.argv[1]))
d = re.Digest(hash=sys.argv[2], size_bytes=int(sys.argv[3]))
for op in ex.Execute(re.ExecuteRequest(action_digest=d, skip_cache_lookup=True)):
    if op.done:
        if op.HasField("error"):
            print(f"code={op.error.code} {op.error.message}")
            break
        r = re.ExecuteResponse(); op.response.Unpack(r)
        print(f"code={r.status.code} {r.status.message}")
        print(f"exit={r.result.exit_code}")
        for f in r.result.output_files:
            print(f"file {f.path} {f.digest.hash} {f.digest.size_bytes}")
        for n, o in (("stdout", r.result.stdout_digest), ("stderr", r.result.stderr_digest)):
            print(f"{n} {o.hash} {o.size_bytes}")
"#;

/// What an Execute answered, the blobs read back.
#[derive(Debug, Default)]
struct Executed {
    code: i32,
    message: String,
    exit: i32,
    files: std::collections::BTreeMap<String, Vec<u8>>,
    stdout: String,
    stderr: String,
}

fn client(bg: &BuildGridExec) -> farm::reapi::BlockingClient {
    let mut cfg = farm::reapi::ReapiConfig::plain(&format!("127.0.0.1:{}", bg.port));
    cfg.call_timeout = Duration::from_secs(120);
    farm::reapi::BlockingClient::new(cfg)
}

/// Uploads an Action's blobs, runs it through Execute, reads its outputs back.
fn submit(
    bg: &BuildGridExec,
    (action, blobs): &(re::Digest, Vec<(re::Digest, Vec<u8>)>),
) -> Executed {
    let c = client(bg);
    let refs: Vec<(re::Digest, &[u8])> = blobs
        .iter()
        .map(|(d, b)| (d.clone(), b.as_slice()))
        .collect();
    c.upload(&refs).unwrap();
    let o = Command::new(bg.venv.join("bin/python"))
        .args(["-c", EXECUTE, &format!("127.0.0.1:{}", bg.port)])
        .arg(&action.hash)
        .arg(action.size_bytes.to_string())
        .output()
        .unwrap();
    let out = text(&o);
    let mut e = Executed::default();
    let read = |hash: &str, size: &str| {
        let d = re::Digest {
            hash: hash.to_string(),
            size_bytes: size.parse().unwrap(),
        };
        c.read_blob(&d).unwrap().unwrap_or_default()
    };
    let mut seen = false;
    for line in out.lines() {
        let w: Vec<&str> = line.split(' ').collect();
        if let Some(code) = w[0].strip_prefix("code=") {
            seen = true;
            e.code = code.parse().unwrap();
            e.message = line[w[0].len()..].trim().to_string();
        } else if let Some(exit) = w[0].strip_prefix("exit=") {
            e.exit = exit.parse().unwrap();
        } else if w[0] == "file" && w.len() == 4 {
            e.files.insert(w[1].to_string(), read(w[2], w[3]));
        } else if (w[0] == "stdout" || w[0] == "stderr") && w.len() == 3 {
            let s = String::from_utf8_lossy(&read(w[1], w[2])).into_owned();
            if w[0] == "stdout" {
                e.stdout = s
            } else {
                e.stderr = s
            }
        }
    }
    assert!(seen, "no Execute response: {out}");
    e
}

/// The package of `driver` (with `programs`) as farm's packager builds it.
fn package_of(driver: &Path, programs: &[PathBuf]) -> farm::toolchain::Toolchain {
    farm::toolchain::build(driver, programs, &mut |p| farm::fsutil::hash_file(p)).unwrap()
}

/// gcc's package as a same-path job ships it (the gcc family names the programs).
fn gcc_package() -> farm::toolchain::Toolchain {
    let gcc = Path::new("/usr/bin/gcc");
    let programs = farm::lang::family_by_name("gcc")
        .unwrap()
        .path_jobs()
        .unwrap()
        .toolchain_files(gcc, gcc.as_os_str())
        .unwrap();
    package_of(gcc, &programs)
}

/// The files `gcc -M` says a compile of `src` in `cwd` reads, absolute.
fn compile_inputs(cwd: &Path, src: &str) -> Vec<PathBuf> {
    let o = Command::new("gcc")
        .args(["-M", src])
        .current_dir(cwd)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let deps = String::from_utf8_lossy(&o.stdout).replace("\\\n", " ");
    let (_, files) = deps.split_once(':').unwrap();
    files.split_whitespace().map(|f| cwd.join(f)).collect()
}

/// A rootfs Action of `gcc -g -O2 -c a.c -o a.o -MD -MF <depfile>` in `cwd`: gcc's
/// package, the inputs at their absolute paths, the depfile (under /tmp, outside the
/// working directory) named through `..`.
fn gcc_action(cwd: &Path, depfile: &Path) -> (re::Digest, Vec<(re::Digest, Vec<u8>)>) {
    let mut a = RootfsAction::default();
    a.package(&gcc_package());
    for f in compile_inputs(cwd, "a.c") {
        a.file(f.to_str().unwrap(), std::fs::read(&f).unwrap(), false);
    }
    a.dir(cwd.join("include").to_str().unwrap());
    let up = "../".repeat(cwd.components().count() - 1);
    let dep_rel = format!("{up}{}", depfile.to_str().unwrap().trim_start_matches('/'));
    let args = gcc_args(depfile);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    a.action(&args, cwd, &["a.o", &dep_rel])
}

fn gcc_args(depfile: &Path) -> Vec<String> {
    ["gcc", "-g", "-O2", "-c", "a.c", "-o", "a.o", "-MD", "-MF"]
        .iter()
        .map(|s| s.to_string())
        .chain([depfile.to_str().unwrap().to_string()])
        .collect()
}

#[test]
fn farmd_runs_rootfs_actions_as_same_path_jobs() {
    let bg = buildgrid_rootfs();
    // Default properties: a farmd that accepts toolchains advertises the layout.
    let mut farm = bot_conf(&bg, &["/usr/bin/cat"], "", None, "");
    let work = tempfile::tempdir().unwrap();
    let cwd = src_dir(
        work.path(),
        "proj",
        "#include \"include/k.h\"\nstatic int t[K];\nint f(int x) { return t[x] * K; }\n",
    );
    let depfile = PathBuf::from(format!("/tmp/farm-rootfs-{}.d", std::process::id()));
    let _ = std::fs::remove_file(&depfile);

    // The compile: byte-identical to gcc here, in the same directory, -g included;
    // the depfile outside the working directory comes back.
    let action = gcc_action(&cwd, &depfile);
    let t0 = Instant::now();
    let e = submit(&bg, &action);
    let first = t0.elapsed();
    assert_eq!(e.code, 0, "{e:?}\n{}", farmd_log(&farm));
    assert_eq!(e.exit, 0, "{e:?}");
    let remote_obj = e.files.get("a.o").expect("a.o came back").clone();
    let dep_name = action_output_dep(&e);
    let remote_dep = e.files[&dep_name].clone();
    let local = Command::new("gcc")
        .args(&gcc_args(&depfile)[1..])
        .current_dir(&cwd)
        .output()
        .unwrap();
    assert!(local.status.success(), "{}", text(&local));
    assert!(
        remote_obj == std::fs::read(cwd.join("a.o")).unwrap(),
        "the rootfs object differs from gcc's here"
    );
    assert_eq!(
        String::from_utf8_lossy(&remote_dep),
        std::fs::read_to_string(&depfile).unwrap(),
        "the depfile differs"
    );
    let _ = std::fs::remove_file(&depfile);
    let has = |needle: &[u8]| remote_obj.windows(needle.len()).any(|w| w == needle);
    assert!(has(cwd.to_str().unwrap().as_bytes()), "no -g directory");
    assert_eq!(leases_metric(&farm, "done"), 1);

    // Symbolic links in the input root point anywhere, but into the root only:
    // nothing of this machine is read, by the job or by farmd reading outputs.
    let sh = package_of(Path::new("/bin/sh"), &[PathBuf::from("/usr/bin/cat")]);
    let links_action = |outputs: &[&str]| {
        let mut a = RootfsAction::default();
        a.package(&sh);
        a.link("/work/shadow", "/etc/shadow");
        a.link("/work/up", "../../..");
        a.link("/work/passwd", "up/etc/passwd");
        a.action(
            &[
                "sh",
                "-c",
                "cat shadow passwd up/etc/passwd up/etc/hostname /etc/passwd; \
                 cat shadow up/etc/shadow > out.txt",
            ],
            Path::new("/work"),
            outputs,
        )
    };
    let e = submit(
        &bg,
        &links_action(&["out.txt", "shadow", "passwd", "up/etc/passwd"]),
    );
    assert_eq!(e.code, 0, "{e:?}");
    assert_ne!(e.exit, 0, "{e:?}");
    assert!(e.stderr.contains("No such file"), "{e:?}");
    let machine_passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let first_line = machine_passwd.lines().next().unwrap();
    for (what, got) in [("stdout", &e.stdout), ("stderr", &e.stderr)] {
        assert!(!got.contains("root:"), "{what} shows the machine: {got}");
    }
    for (name, data) in &e.files {
        let s = String::from_utf8_lossy(data);
        assert!(
            !s.contains("root:") && !s.contains(first_line),
            "output {name}: {s}"
        );
    }
    assert!(
        !e.files.contains_key("shadow") && !e.files.contains_key("passwd"),
        "a link was read as an output: {:?}",
        e.files.keys()
    );
    assert!(farm.nodes[0].alive());

    // An output path whose `..` leaves the root is refused before anything runs.
    let e = submit(&bg, &links_action(&["../../x.o"]));
    assert_eq!(e.code, 3, "{e:?}");
    assert!(e.message.contains("../../x.o"), "{e:?}");
    assert!(farm.nodes[0].alive());

    // farmd keeps serving: the compile again (another source, the toolchain's
    // contents kept from the first lease: not fetched again).
    std::fs::write(
        cwd.join("a.c"),
        "#include \"include/k.h\"\nint g(void) { return K; }\n",
    )
    .unwrap();
    let t0 = Instant::now();
    let e = submit(&bg, &gcc_action(&cwd, &depfile));
    let again = t0.elapsed();
    assert_eq!((e.code, e.exit), (0, 0), "{e:?}");
    assert!(e.files.contains_key("a.o"));
    let _ = std::fs::remove_file(&depfile);
    let laid: Vec<String> = farmd_log(&farm)
        .lines()
        .filter(|l| l.contains("rootfs lease laid out"))
        .map(str::to_string)
        .collect();
    eprintln!(
        "rootfs gcc lease: first {first:?} (toolchain fetched), again {again:?}; {} blobs, {} bytes\n{}",
        action.1.len(),
        action.1.iter().map(|(d, _)| d.size_bytes).sum::<i64>(),
        laid.join("\n")
    );
    // The second compile fetched only what changed (the source, and the stdout,
    // stderr of nothing: the toolchain's files were kept).
    let last = laid.last().unwrap();
    assert!(
        last.contains("fetched=1 "),
        "the toolchain was fetched again: {last}"
    );
    assert_eq!(leases_metric(&farm, "done"), 3);
    assert_eq!(leases_metric(&farm, "invalid_argument"), 1);
    assert!(farm.nodes[0].alive());
    let _ = &mut farm;
}

/// The depfile's name among an Execute's outputs (the one through `..`).
fn action_output_dep(e: &Executed) -> String {
    e.files
        .keys()
        .find(|k| k.starts_with("../"))
        .unwrap_or_else(|| panic!("no depfile came back: {e:?}"))
        .clone()
}

/// A farmd that runs only its own compilers takes no rootfs lease, even one routed
/// to it: FAILED_PRECONDITION naming the setting, and it keeps serving.
#[test]
fn a_rootfs_lease_needs_accept_toolchains() {
    let bg = buildgrid_rootfs();
    // Own toolchains only, advertising the layout by hand.
    let props = format!("{PROPERTIES}, farm-layout = \"rootfs\"");
    let mut farm = bot_conf(
        &bg,
        &["/usr/bin/gcc"],
        "accept_toolchains = false\n",
        Some(&props),
        "",
    );
    let mut a = RootfsAction::default();
    a.package(&package_of(Path::new("/bin/sh"), &[]));
    let planted = format!("/tmp/farm-rootfs-planted-{}", std::process::id());
    let script = format!("echo ran > {planted}");
    let e = submit(
        &bg,
        &a.action(&["sh", "-c", &script], Path::new("/work"), &[]),
    );
    assert_eq!(e.code, 9, "{e:?}");
    assert!(e.message.contains("accept_toolchains"), "{e:?}");
    assert!(!Path::new(&planted).exists());
    assert!(farm.nodes[0].alive());
    // Default-layout leases still run on it.
    let work = tempfile::tempdir().unwrap();
    let input = src_dir(work.path(), "in", "int x;\n");
    gcc_c(&bg, &input, &work.path().join("out"), "a.o");
    let _ = &mut farm;
}
