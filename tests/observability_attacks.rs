//! Attacks on what farm shows of itself (docs/security.md, "Who can see what farmd
//! does"): farmd's HTTP side (`/metrics`, the monitor), `farm why`. The attacker is a
//! local user whose cache directory farmd reads (`shim_stats`), or one whose files a
//! record names.

mod common;
use common::farmd::*;
use common::*;

use std::ffi::CString;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

fn mkfifo(p: &Path) {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(
        unsafe { libc::mkfifo(c.as_ptr(), 0o666) },
        0,
        "mkfifo {p:?}"
    );
}

/// `GET path` on 127.0.0.1:port within `deadline`: status and body, or why not.
fn get_within(port: u16, path: &str, deadline: Duration) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(deadline)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .map_err(|e| format!("no answer to {path} within {deadline:?}: {e}"))?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, body.to_string()))
}

/// A user whose cache farmd reads plants a FIFO and huge counters among the stats
/// shards: `/metrics` and the monitor still answer at once, with the other shards'
/// counts, and farmd keeps serving.
#[test]
fn planted_stats_shards_neither_hang_nor_break_metrics() {
    let users = tempfile::tempdir().unwrap();
    let cache = users.path().join("cache");
    let stats = cache.join("stats");
    std::fs::create_dir_all(&stats).unwrap();
    // A FIFO nobody writes: opening it for reading blocks until a writer comes.
    mkfifo(&stats.join("0"));
    // Counters that add up past u64.
    std::fs::write(stats.join("1"), "miss 18446744073709551615\n").unwrap();
    std::fs::write(stats.join("2"), "miss 7\nhit.direct 3\n").unwrap();
    let cl = Cluster::new(&["solo"], |_| {
        format!("shim_stats = [\"{}\"]", cache.display())
    });
    let node = &cl.nodes[0];
    let t0 = Instant::now();
    while node.try_status().is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "farmd did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let deadline = Duration::from_secs(5);
    for _ in 0..3 {
        let (code, body) = get_within(node.port, "/metrics", deadline).unwrap();
        assert_eq!(code, 200, "/metrics: {body}");
        assert!(
            body.contains("farm_compiles_total{outcome=\"hit_direct\"} 3"),
            "the readable shards' counts are missing from /metrics:\n{body}"
        );
        assert!(
            body.contains("farm_build_info{") && body.contains("farm_slots"),
            "/metrics is cut short (a reader failed):\n{body}"
        );
    }
    let (code, body) = get_within(node.port, "/api/snapshot", deadline).unwrap();
    assert_eq!(code, 200, "/api/snapshot: {body}");
    let snap: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(snap["counters"]["hits"], 3, "{body}");
    assert!(node.try_status().is_some(), "farmd stopped answering");
}

/// Another user's uid for planted files: `nobody`.
const OTHER_UID: u32 = 65534;

fn lchown(p: &Path, uid: u32) {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(
        unsafe { libc::lchown(c.as_ptr(), uid, uid) },
        0,
        "lchown {p:?}"
    );
}

/// One compile with `FARM_JOURNAL=journal`: it must succeed and print nothing, as
/// gcc would.
fn compile_journaled(env: &Env, journal: &Path) {
    let o = env
        .cmd(farm_bin())
        .args(["gcc", "-c", "a.c", "-o", "a.o"])
        .env("FARM_JOURNAL", journal)
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    assert!(o.stdout.is_empty() && o.stderr.is_empty(), "{o:?}");
}

/// A user who can write to the directory a build's journal is named in (`/tmp`,
/// a shared build directory) plants a link to the victim's own file, a FIFO or a file
/// of theirs there: the victim's shims append neither to the victim's file through
/// the link (a `.bashrc` would run what a source path says) nor into the attacker's
/// FIFO or file (the attacker would read every source path of the build). The
/// compile is untouched either way; a journal the user made is still written, link
/// or not.
#[test]
fn a_journal_planted_by_another_user_is_not_written() {
    if unsafe { libc::geteuid() } == OTHER_UID {
        return;
    }
    require("gcc");
    let env = Env::new("direct");
    env.write("a.c", "int f(void){return 1;}\n");
    let shared = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        shared.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .unwrap();
    // The victim's own file, and the attacker's link to it.
    let own = env.write("profile", "original\n");
    let link = shared.path().join("journal.jsonl");
    std::os::unix::fs::symlink(&own, &link).unwrap();
    lchown(&link, OTHER_UID);
    compile_journaled(&env, &link);
    assert_eq!(
        std::fs::read_to_string(&own).unwrap(),
        "original\n",
        "the journal followed another user's link into the user's own file"
    );
    // The attacker's file, writable by all.
    let theirs = shared.path().join("theirs.jsonl");
    std::fs::write(&theirs, "").unwrap();
    std::fs::set_permissions(&theirs, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    lchown(&theirs, OTHER_UID);
    compile_journaled(&env, &theirs);
    assert_eq!(
        std::fs::read_to_string(&theirs).unwrap(),
        "",
        "the journal was written into another user's file"
    );
    // The attacker's FIFO, with the attacker reading.
    let fifo = shared.path().join("fifo");
    mkfifo(&fifo);
    lchown(&fifo, OTHER_UID);
    let reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    compile_journaled(&env, &fifo);
    let mut got = Vec::new();
    let _ = (&reader).read_to_end(&mut got);
    assert!(
        got.is_empty(),
        "another user's FIFO received the journal: {}",
        String::from_utf8_lossy(&got)
    );
    // The user's own link to the user's own journal: written.
    let journal = env.work.join("journal.jsonl");
    let mine = shared.path().join("mine.jsonl");
    std::os::unix::fs::symlink(&journal, &mine).unwrap();
    compile_journaled(&env, &mine);
    let text = std::fs::read_to_string(&journal).unwrap();
    assert!(text.contains("\"source\":\"a.c\""), "{text}");
}

/// A journal is a file anyone may hand over (a CI artifact of someone else's build):
/// times and durations that add up past u64 are bad lines, counted and named, and
/// `farm report` still writes its page.
#[test]
fn report_on_a_journal_with_huge_numbers_skips_them() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("evil.jsonl");
    let line = |start: u64, ms: u64, saved: u64, src: &str| {
        format!(
            "{{\"v\":1,\"start_ms\":{start},\"ms\":{ms},\"pid\":1,\"host\":\"h\",\"cwd\":\"/w\",\
             \"source\":\"{src}\",\"compiler\":\"gcc\",\"outcome\":\"hit\",\"saved_ms\":{saved}}}\n"
        )
    };
    let text = [
        line(1_700_000_000_000, 5, 10, "ok.c"),
        line(u64::MAX, 5, 1, "end.c"),
        line(1_700_000_000_100, 5, u64::MAX, "saved.c"),
        line(1_700_000_000_200, u64::MAX, 1, "long.c"),
    ]
    .concat();
    std::fs::write(&journal, text).unwrap();
    let out = dir.path().join("r.html");
    let o = std::process::Command::new(farm_bin())
        .arg("report")
        .arg(&journal)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{o:?}");
    assert!(
        err.contains("3 bad line(s) skipped, the first at line 2"),
        "{err}"
    );
    let html = std::fs::read_to_string(&out).unwrap();
    assert!(html.contains("ok.c") && !html.contains("end.c"), "{html}");
}

/// `farm why -- CMD` re-reads the files the nearest earlier compile read: one that is
/// now a FIFO (or a device a damaged record names) is not a file any more, and must
/// not hang the question.
#[test]
fn farm_why_does_not_hang_on_a_header_that_became_a_fifo() {
    require("gcc");
    let env = Env::new("direct");
    env.write("foo.h", "#define FOO 1\n");
    env.write("a.c", "#include \"foo.h\"\nint x = FOO + LEVEL;\n");
    std::thread::sleep(Duration::from_millis(120));
    let o = env
        .cmd(farm_bin())
        .args(["gcc", "-DLEVEL=1", "-c", "a.c", "-o", "a.o"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    std::fs::remove_file(env.work.join("foo.h")).unwrap();
    mkfifo(&env.work.join("foo.h"));
    let mut child = env
        .cmd(farm_bin())
        .args(["why", "--", "gcc", "-DLEVEL=2", "-c", "a.c", "-o", "a.o"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > Duration::from_secs(10) {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("farm why hangs on a header that is now a FIFO");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{o:?}");
    assert!(text.contains("-DLEVEL=1"), "{text}");
    assert!(text.contains("foo.h"), "{text}");
}
