//! farmd as the bot of a real REAPI service: BuildGrid 0.9.1 (Execute, CAS, Action
//! Cache, Bots) on a throwaway PostgreSQL, Actions submitted with BuildGrid's own
//! client (`bgd execute command`), farmd running their leases in its job sandbox.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::farmd::Cluster;
use common::servers::{buildgrid_exec, buildgrid_exec_jwt, BuildGridExec};

/// One farmd serving `bg` as its bot, with `compilers` as its allow-list.
fn bot(bg: &BuildGridExec, compilers: &[&str]) -> Cluster {
    bot_with(bg, compilers, "")
}

/// [`bot`] with more keys in its `reapi_bot` table (`, key = value`).
fn bot_with(bg: &BuildGridExec, compilers: &[&str], more: &str) -> Cluster {
    let more = more.to_string();
    let list = compilers
        .iter()
        .map(|c| format!("{c:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let port = bg.port;
    let http = common::servers::free_port();
    Cluster::new(&["bot"], move |_| {
        format!(
            "compilers = [{list}]\nhttp = \"127.0.0.1:{http}\"\njob_timeout = 60\n\
             reapi_bot = {{ endpoint = \"reapi://127.0.0.1:{port}\", bot_id = \"farm-test-bot\", \
             properties = {{ OSFamily = \"linux\", ISA = \"x86-64\" }}{more} }}\n"
        )
    })
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
    let mut c = bg.bgd();
    c.args(["execute", "--remote", &bg.url(), "command"])
        .args(["-p", "OSFamily", "linux", "-p", "ISA", "x86-64"])
        .arg("--output-directory")
        .arg(out);
    for o in outputs {
        c.args(["--output-file", o]);
    }
    if cache {
        c.arg("-c");
    }
    c.arg(input).arg("--").args(args);
    let o = c.output().unwrap();
    // Python's client prints ExecuteResponses as text protos.
    o
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
    let o = execute(
        &bg,
        &input,
        &out,
        &["a.o"],
        false,
        &["gcc", "-O2", "-c", "a.c", "-o", "a.o"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let lines = wait_leases(&farm, 1);
    assert!(
        lines[0].contains("REAPI lease done") && lines[0].contains("exit=0"),
        "{lines:?}"
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
        let before = lease_lines(&farm).len();
        let out = work.path().join(format!("out-g{i}"));
        let o = execute(
            &bg,
            &input,
            &out,
            &["g.o"],
            false,
            &["gcc", "-g", "-c", "a.c", "-o", "g.o"],
        );
        assert!(o.status.success(), "{}", text(&o));
        wait_leases(&farm, before + 1);
        objs.push(std::fs::read(out.join("g.o")).expect("the -g object came back"));
    }
    assert!(objs[0] == objs[1], "two runs of the same -g Action differ");
    let has = |needle: &[u8]| objs[0].windows(needle.len()).any(|w| w == needle);
    assert!(
        has(b"/reapi/root"),
        "the fixed job path is not in the debug info"
    );
    assert!(
        !has(b"jobs/reapi-"),
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
    let before = lease_lines(&farm).len();
    let o = execute(
        &bg,
        &input,
        &work.path().join("out-c1"),
        &[],
        false,
        &["sh", "-c", "echo pwned > /tmp/farm-reapi-pwned"],
    );
    let lines = wait_leases(&farm, before + 1);
    let last = lines.last().unwrap();
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
    let before = lease_lines(&farm).len();
    let o = execute(
        &bg,
        &input,
        &work.path().join("out-c2"),
        &[],
        false,
        &["cat", "/etc/shadow"],
    );
    let lines = wait_leases(&farm, before + 1);
    assert!(lines.last().unwrap().contains("exit=1"), "{lines:?}");
    assert!(!text(&o).contains("root:"), "{}", text(&o));

    // ...nor write outside its job directory: not to this test's directory (not
    // in the sandbox: cp fails), not into farmd's state directory (the job's view
    // has only the directories leading to its job directory, on the sandbox's own
    // tmpfs: cp may succeed there, and the file vanishes with the sandbox).
    let planted = work.path().join(format!("planted-{}", std::process::id()));
    let before = lease_lines(&farm).len();
    let t = planted.to_str().unwrap();
    let o = execute(
        &bg,
        &input,
        &work.path().join("out-c3"),
        &[],
        false,
        &["cp", "a.c", t],
    );
    let lines = wait_leases(&farm, before + 1);
    assert!(
        lines.last().unwrap().contains("exit=1"),
        "{lines:?}: {}",
        text(&o)
    );
    assert!(
        !planted.exists(),
        "{} written from a lease",
        planted.display()
    );
    let state = farm.nodes[0].dir.join("state/planted");
    let before = lease_lines(&farm).len();
    let t = state.to_str().unwrap();
    let _ = execute(
        &bg,
        &input,
        &work.path().join("out-c4"),
        &[],
        false,
        &["cp", "a.c", t],
    );
    wait_leases(&farm, before + 1);
    assert!(!state.exists(), "{} written from a lease", state.display());
    // An output path out of the working directory is refused as a malformed Command.
    let before = lease_lines(&farm).len();
    let o = execute(
        &bg,
        &input,
        &work.path().join("out-c6"),
        &["../up.o"],
        false,
        &["gcc", "-c", "a.c", "-o", "../up.o"],
    );
    let lines = wait_leases(&farm, before + 1);
    let last = lines.last().unwrap();
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
    let before = lease_lines(&farm).len();
    let _ = execute(
        &bg,
        &input,
        &work.path().join("out-c4"),
        &[],
        false,
        &["gcc", "-c", "a.c", "-o", &escape],
    );
    wait_leases(&farm, before + 1);
    assert!(
        !Path::new(&escape).exists(),
        "{escape} written from a lease"
    );
}

/// farmd killed while it runs a lease: the Execute is not left hanging — BuildGrid
/// re-queues the job once the bot's session lapses, and a restarted farmd (a new
/// session, same bot id) runs it, or the client gets an error.
#[test]
fn a_bot_killed_mid_lease_leaves_nothing_hanging() {
    let bg = buildgrid_exec();
    let mut farm = bot(&bg, &["/usr/bin/sleep"]);
    let work = tempfile::tempdir().unwrap();
    let input = src_dir(work.path(), "in", "int x;\n");
    let out = work.path().join("out");
    let mut client = bg.bgd();
    client
        .args(["execute", "--remote", &bg.url(), "command"])
        .args(["-p", "OSFamily", "linux", "-p", "ISA", "x86-64"])
        .arg("--output-directory")
        .arg(&out)
        .arg(&input)
        .args(["--", "sleep", "4"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let t0 = Instant::now();
    let child = client.spawn().unwrap();
    // Wait for the lease to start, then kill farmd under it.
    while !farmd_log(&farm).contains("REAPI lease started") {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no lease started:\n{}",
            farmd_log(&farm)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
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
    let bg = buildgrid_exec();
    let mut farm = bot(&bg, &["/usr/bin/sleep"]);
    let work = tempfile::tempdir().unwrap();
    let input = src_dir(work.path(), "in", "int x;\n");
    let mut client = bg.bgd();
    client
        .args(["execute", "--remote", &bg.url(), "command"])
        .args(["-p", "OSFamily", "linux", "-p", "ISA", "x86-64"])
        .arg("--output-directory")
        .arg(work.path().join("out"))
        .arg(&input)
        .args(["--", "sleep", "2"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let t0 = Instant::now();
    let child = client.spawn().unwrap();
    while !farmd_log(&farm).contains("REAPI lease started") {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no lease started:\n{}",
            farmd_log(&farm)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
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
    let o = execute(
        &bg,
        &input,
        &work.path().join("o1"),
        &["a.o"],
        false,
        &["gcc", "-c", "a.c", "-o", "a.o"],
    );
    assert!(o.status.success(), "{}", text(&o));
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
    let o = execute(
        &bg,
        &input,
        &work.path().join("o2"),
        &["b.o"],
        false,
        &["gcc", "-c", "a.c", "-o", "b.o"],
    );
    assert!(o.status.success(), "{}", text(&o));
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
    let mut c = bg.bgd();
    c.args(["execute", "--remote", &bg.url(), "--auth-token"])
        .arg(&token_file)
        .args(["command", "-p", "OSFamily", "linux", "-p", "ISA", "x86-64"])
        .arg("--output-directory")
        .arg(work.path().join("out"))
        .args(["--output-file", "a.o"])
        .arg(&input)
        .args(["--", "gcc", "-c", "a.c", "-o", "a.o"]);
    let o = c.output().unwrap();
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
