//! The live monitor (docs/monitor.md) on a real cluster: three farmd on loopback, a real
//! build of lua through farm-cc, the monitor's event stream read by a plain HTTP client,
//! and the page loaded in headless Chromium during and after the build (DOM asserted,
//! a screenshot kept in target/test-artifacts/monitor.png).

mod common;
use common::chromium::*;
use common::farmd::*;
use common::*;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Headless Chromium driven over its DevTools protocol on a pipe (fds 3 and 4,
/// messages ended by NUL): one page that stays open, its DOM read while it runs.
struct Browser {
    child: Child,
    to: std::fs::File,
    from: std::fs::File,
    inbox: Vec<u8>,
    session: String,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn open(chromium: &Path, url: &str) -> Browser {
        use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
        use std::os::unix::process::CommandExt;
        let pipe = || {
            let mut fds = [0; 2];
            assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
        };
        let (cmd_r, cmd_w) = pipe();
        let (ev_r, ev_w) = pipe();
        let profile = tempfile::tempdir().unwrap();
        let mut c = Command::new(chromium);
        c.args(CHROMIUM_FLAGS)
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args([
                "--remote-debugging-pipe",
                "--window-size=1280,800",
                "about:blank",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let (r, w) = (cmd_r.into_raw_fd(), ev_w.into_raw_fd());
        // Chromium reads commands on fd 3 and writes answers on fd 4.
        unsafe {
            c.pre_exec(move || {
                if libc::dup2(r, 3) < 0 || libc::dup2(w, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = c.spawn().unwrap();
        unsafe {
            drop(OwnedFd::from_raw_fd(r));
            drop(OwnedFd::from_raw_fd(w));
        }
        let mut b = Browser {
            child,
            to: std::fs::File::from(cmd_w),
            from: std::fs::File::from(ev_r),
            inbox: Vec::new(),
            session: String::new(),
            next_id: 1,
            _profile: profile,
        };
        let target = b.call("Target.createTarget", serde_json::json!({ "url": url }));
        let target = target["targetId"].as_str().unwrap().to_string();
        let attached = b.call(
            "Target.attachToTarget",
            serde_json::json!({ "targetId": target, "flatten": true }),
        );
        b.session = attached["sessionId"].as_str().unwrap().to_string();
        b
    }

    /// Sends a command (to the page once attached); its result.
    fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = serde_json::json!({ "id": id, "method": method, "params": params });
        if !self.session.is_empty() {
            msg["sessionId"] = self.session.clone().into();
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.to.write_all(&bytes).unwrap();
        loop {
            let buf = self.message(method);
            let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
            if v["id"] == id {
                assert!(v["error"].is_null(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// The next message from Chromium (a hung browser fails the test, never hangs it).
    fn message(&mut self, method: &str) -> Vec<u8> {
        use std::os::fd::AsRawFd;
        loop {
            if let Some(end) = self.inbox.iter().position(|&b| b == 0) {
                let msg = self.inbox[..end].to_vec();
                self.inbox.drain(..=end);
                return msg;
            }
            let mut poll = libc::pollfd {
                fd: self.from.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ready = unsafe { libc::poll(&mut poll, 1, 30_000) };
            assert!(ready > 0, "chromium did not answer {method} within 30 s");
            let mut chunk = [0u8; 65536];
            let n = self.from.read(&mut chunk).unwrap();
            assert!(n > 0, "chromium closed its DevTools pipe");
            self.inbox.extend_from_slice(&chunk[..n]);
        }
    }

    /// The value of a JavaScript expression in the page.
    fn eval(&mut self, expr: &str) -> serde_json::Value {
        let r = self.call(
            "Runtime.evaluate",
            serde_json::json!({ "expression": expr, "returnByValue": true }),
        );
        r["result"]["value"].clone()
    }

    /// Waits until `expr` is true in the page.
    fn wait_for(&mut self, expr: &str, within: Duration) {
        let t0 = Instant::now();
        while self.eval(expr) != serde_json::Value::Bool(true) {
            assert!(t0.elapsed() < within, "the page never had {expr}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One server-sent event: its name and data.
#[derive(Debug, Clone)]
struct SseEvent {
    name: String,
    data: String,
}

/// An open `GET /events` (HTTP/1.0: the body is the stream itself, no chunks).
struct EventStream {
    conn: TcpStream,
    buf: Vec<u8>,
    headers_seen: bool,
}

impl EventStream {
    fn open(addr: &str) -> EventStream {
        let mut conn = TcpStream::connect(addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        write!(
            conn,
            "GET /events HTTP/1.0\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
        )
        .unwrap();
        EventStream {
            conn,
            buf: Vec::new(),
            headers_seen: false,
        }
    }

    /// The response's status line and headers.
    fn head(&mut self, deadline: Instant) -> String {
        while !self.headers_seen {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.drain(..end + 4);
                self.headers_seen = true;
                return head;
            }
            assert!(self.fill(deadline), "no response head from /events");
        }
        unreachable!("head read twice")
    }

    /// Reads more; false at the deadline or the end of the stream.
    fn fill(&mut self, deadline: Instant) -> bool {
        let mut chunk = [0u8; 65536];
        while Instant::now() < deadline {
            match self.conn.read(&mut chunk) {
                Ok(0) => return false,
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return true;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("/events: {e}"),
            }
        }
        false
    }

    /// The next event, or `None` at the deadline.
    fn next(&mut self, deadline: Instant) -> Option<SseEvent> {
        if !self.headers_seen {
            self.head(deadline);
        }
        loop {
            if let Some(end) = find(&self.buf, b"\n\n") {
                let text = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.drain(..end + 2);
                let mut ev = SseEvent {
                    name: "message".into(),
                    data: String::new(),
                };
                for line in text.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        ev.name = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        if !ev.data.is_empty() {
                            ev.data.push('\n');
                        }
                        ev.data.push_str(v.strip_prefix(' ').unwrap_or(v));
                    }
                }
                return Some(ev);
            }
            if !self.fill(deadline) {
                return None;
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `GET path` on `addr`: status code and body.
fn http_get(addr: &str, path: &str) -> (u16, String) {
    common::http::get(&format!("http://{addr}{path}"))
}

fn snapshot(addr: &str) -> serde_json::Value {
    let (code, body) = http_get(addr, "/api/snapshot");
    assert_eq!(code, 200, "/api/snapshot: {body}");
    serde_json::from_str(&body).unwrap()
}

/// The `job refused` lines of every node's log: why a job came back refused.
fn refusals(cl: &Cluster) -> String {
    cl.nodes
        .iter()
        .flat_map(|n| {
            let log = std::fs::read_to_string(n.dir.join("farmd.log")).unwrap_or_default();
            log.lines()
                .filter(|l| l.contains("refused"))
                .map(|l| format!("{}: {l}", n.name))
                .collect::<Vec<_>>()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn spawn_lua_make(env: &Env, tree: &Path, agent: &Path) -> Child {
    spawn_lua_make_j(env, tree, agent, 4)
}

/// `<tag … attr="value" …>` openings in `dom` that carry every one of `attrs`.
fn tags_with<'a>(dom: &'a str, attrs: &[&str]) -> Vec<&'a str> {
    dom.split('<')
        .filter(|t| {
            attrs
                .iter()
                .all(|a| t.split('>').next().unwrap().contains(a))
        })
        .collect()
}

/// What the page shows about peer `name`: its row in the machines table.
fn peer_row<'a>(dom: &'a str, name: &str) -> &'a str {
    let at = dom
        .find(&format!("<tr data-node=\"{name}\""))
        .unwrap_or_else(|| panic!("no row for {name} in the machines table:\n{dom}"));
    let end = dom[at..].find("</tr>").unwrap();
    &dom[at..at + end]
}

fn assert_page_shows_the_farm(dom: &str, during: bool) {
    let when = if during { "during" } else { "after" };
    assert!(dom.contains("farm monitor"), "{when} the build: {dom}");
    assert!(
        dom.contains("<tr data-node=\"home\" class=\"self live\""),
        "{when} the build, this node is listed first: {dom}"
    );
    for p in ["p1", "p2"] {
        let row = peer_row(dom, p);
        assert!(row.contains("class=\"live\""), "{p} live {when}: {row}");
        assert!(
            row.contains("/2</span>"),
            "{p}'s slots (used/2) {when}: {row}"
        );
    }
    // Jobs as from → to rows: home placed them on its peers.
    let jobs = tags_with(dom, &["class=\"job placed", "data-from=\"home\""]);
    assert!(!jobs.is_empty(), "{when} the build, jobs listed: {dom}");
    for j in &jobs {
        assert!(
            j.contains("data-to=\"p1\"") || j.contains("data-to=\"p2\""),
            "a job went to a peer: {j}"
        );
    }
    assert!(
        dom.contains("<b>home</b><span class=\"arrow\"> → </span><b>p"),
        "a job row reads home → peer {when} the build"
    );
    // The timeline has bars in the peers' lanes.
    let bars = tags_with(dom, &["rect class=\"bar "]);
    assert!(!bars.is_empty(), "{when} the build, timeline bars: {dom}");
    assert!(
        bars.iter()
            .any(|b| b.contains("data-host=\"p1\"") || b.contains("data-host=\"p2\"")),
        "bars in a peer's lane: {bars:?}"
    );
    assert!(dom.contains("id=\"hit-rate\""), "hit rate shown");
}

#[test]
fn monitor_shows_a_cluster_building_lua_live() {
    require("gcc");
    require("make");
    let chromium = chromium();
    let src = sources("lua5.4");
    let env = Env::new("direct");
    let cache = env.cache.display().to_string();
    // home keeps nothing at home: every compile of the build is a job on p1 or p2, and
    // its monitor reads the build's own counters.
    let cl = Cluster::new(&["home", "p1", "p2"], |i| {
        if i == 0 {
            format!("local_slots = 0\nshim_stats = [\"{cache}\"]")
        } else {
            String::new()
        }
    });
    cl.wait_all();
    let home = &cl.nodes[0];
    let status = home.status();
    let url = status["http"]["monitor"].as_str().unwrap().to_string();
    let addr = url
        .strip_prefix("http://")
        .and_then(|u| u.strip_suffix('/'))
        .unwrap()
        .to_string();

    // `farm monitor --no-open` prints the URL farmd's status names.
    let o = farm(&["monitor", "--no-open"], &home.socket());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), format!("{url}\n"));
    let o = farm(
        &["monitor", "--no-open"],
        Path::new("/nonexistent/agent.sock"),
    );
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.starts_with("farm monitor: no farmd agent at /nonexistent/agent.sock")
            && err.lines().count() == 1,
        "{err}"
    );

    // The page is one self-contained document.
    let (code, page) = http_get(&addr, "/");
    assert_eq!(code, 200);
    assert!(page.contains("<title>farm monitor</title>") && page.contains("\"node\":\"home\""));

    // A plain client's stream: the snapshot first, names this node and its peers.
    let mut events = EventStream::open(&addr);
    let head = events.head(Instant::now() + Duration::from_secs(10));
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{head}"
    );
    let first = events
        .next(Instant::now() + Duration::from_secs(10))
        .expect("a first event");
    assert_eq!(first.name, "snapshot");
    let snap: serde_json::Value = serde_json::from_str(&first.data).unwrap();
    assert_eq!(snap["status"]["node"], "home");
    let mut peers: Vec<&str> = snap["status"]["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["node"].as_str().unwrap())
        .collect();
    peers.sort();
    assert_eq!(peers, ["p1", "p2"]);

    // A page opened before the build, kept open: what it shows of the build came
    // through its event stream.
    let mut live_page = chromium.as_ref().map(|c| {
        let mut b = Browser::open(c, &url);
        b.wait_for(
            "document.getElementById('conn-text').textContent === 'live' \
             && document.querySelectorAll('tr.job').length === 0",
            Duration::from_secs(30),
        );
        b
    });

    let tree = env.root.path().join("lua");
    copy_tree(&src, &tree);
    let make = spawn_lua_make(&env, &tree, &home.socket());

    // Jobs stream as they happen: each placed on a peer, started then finished.
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut started, mut finished, mut statuses) = (0, 0, 0);
    let mut during_dom = None;
    while finished < 3 || statuses < 1 {
        let ev = events
            .next(deadline)
            .unwrap_or_else(|| panic!("job events within 120 s: {started} started, {finished} finished, {statuses} status"));
        match ev.name.as_str() {
            "job_started" | "job_finished" => {
                let j: serde_json::Value = serde_json::from_str(&ev.data).unwrap();
                assert_eq!(j["event"], ev.name.as_str());
                assert_eq!(j["role"], "placed", "{j}");
                assert!(j["peer"] == "p1" || j["peer"] == "p2", "{j}");
                assert_eq!(j["family"], "gcc", "{j}");
                if ev.name == "job_started" {
                    started += 1;
                    assert!(j["outcome"].is_null(), "{j}");
                } else {
                    finished += 1;
                    assert_eq!(
                        j["outcome"],
                        "ok",
                        "{j}\nthe peers' refusals:\n{}",
                        refusals(&cl)
                    );
                    assert!(j["total_ms"].as_u64().is_some(), "{j}");
                }
            }
            "status" => {
                statuses += 1;
                let s: serde_json::Value = serde_json::from_str(&ev.data).unwrap();
                assert_eq!(s["status"]["node"], "home");
                assert!(s["now_ms"].as_u64().unwrap() > 0);
                assert!(s["counters"]["dirs"] == 1, "{s}");
            }
            "lagged" => panic!("a reader that keeps up lagged: {}", ev.data),
            other => panic!("unexpected event {other}: {}", ev.data),
        }
        // The browser during the build, once the first job is in.
        if during_dom.is_none() && started > 0 {
            if let Some(c) = &chromium {
                during_dom = Some(run_chromium(c, &url, &["--dump-dom"]));
                screenshot(c, &url, "monitor-during.png");
            }
        }
    }
    assert!(
        started >= finished,
        "{started} started, {finished} finished"
    );

    let o = make.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "make: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let remote = env.counter(&["farm", "remote"]);
    assert!(remote > 0, "the build ran on the peers: {}", env.stats());

    // /api/snapshot after the build: the finished jobs and the build's counters (the
    // counters are read at most once a second: the last compiles show within one).
    let t0 = Instant::now();
    let snap = loop {
        let snap = snapshot(&addr);
        if snap["counters"]["misses"] == env.misses() || t0.elapsed() > Duration::from_secs(5) {
            break snap;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let done = snap["finished"].as_array().unwrap();
    assert!(
        done.len() as u64 >= remote,
        "every remote compile is a finished job: {} jobs, {remote} remote compiles",
        done.len()
    );
    assert_eq!(
        snap["counters"]["misses"],
        env.misses(),
        "{}",
        snap["counters"]
    );
    assert_eq!(snap["counters"]["hit_rate"], 0.0, "{}", snap["counters"]);

    // A worker's monitor shows the jobs it served, sent by home.
    let p1 = &cl.nodes[1];
    let p1_url = p1.status()["http"]["monitor"].as_str().unwrap().to_string();
    let p1_addr = p1_url
        .strip_prefix("http://")
        .and_then(|u| u.strip_suffix('/'))
        .unwrap()
        .to_string();
    let served = snapshot(&p1_addr)["finished"].as_array().unwrap().clone();
    assert!(!served.is_empty(), "p1 served jobs");
    for j in &served {
        assert_eq!(j["role"], "served", "{j}");
        assert_eq!(j["peer"], "home", "{j}");
        assert_eq!(j["submitter"], "node:home", "{j}");
    }

    let Some(chromium) = chromium else { return };
    let worker = run_chromium(&chromium, &p1_url, &["--dump-dom"]);
    let rows = tags_with(
        &worker,
        &["class=\"job served", "data-from=\"home\"", "data-to=\"p1\""],
    );
    assert_eq!(
        rows.len(),
        served.len(),
        "every served job, home → p1: {worker}"
    );
    assert!(
        !tags_with(&worker, &["rect class=\"bar ok served", "data-host=\"p1\""]).is_empty(),
        "served jobs are bars in p1's own lanes: {worker}"
    );
    // The page open since before the build: every job came as an event, and the
    // counters with the status each second.
    let b = live_page.as_mut().unwrap();
    b.wait_for(
        &format!(
            "document.querySelectorAll('tr.job').length >= {remote} \
             && document.getElementById('totals').textContent === '0 · {}'",
            env.misses()
        ),
        Duration::from_secs(10),
    );
    let live_dom = b.eval("document.documentElement.outerHTML");
    let live_dom = live_dom.as_str().unwrap();
    assert_page_shows_the_farm(live_dom, false);
    assert!(
        live_dom.contains("id=\"lagged\"></span>"),
        "no event skipped by a page that keeps up"
    );
    std::fs::write(artifacts().join("monitor-live.html"), live_dom).unwrap();
    drop(live_page);
    let during = during_dom.unwrap();
    assert_page_shows_the_farm(&during, true);
    let after = run_chromium(&chromium, &url, &["--dump-dom"]);
    assert_page_shows_the_farm(&after, false);
    assert!(
        after.contains(">0.0 %<"),
        "a build of misses only: hit rate 0.0 %"
    );
    std::fs::write(artifacts().join("monitor-during.html"), &during).unwrap();
    std::fs::write(artifacts().join("monitor.html"), &after).unwrap();
    screenshot(&chromium, &url, "monitor.png");
}

/// Many monitors are fine, and bounded: past the limit a stream is refused, and a
/// closed one frees its place.
#[test]
fn event_streams_are_bounded() {
    let cl = Cluster::new(&["solo"], |_| String::new());
    let solo = &cl.nodes[0];
    let t0 = Instant::now();
    let url = loop {
        if let Some(s) = solo.try_status() {
            break s["http"]["monitor"].as_str().unwrap().to_string();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "farmd did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let addr = url
        .strip_prefix("http://")
        .and_then(|u| u.strip_suffix('/'))
        .unwrap()
        .to_string();
    let deadline = || Instant::now() + Duration::from_secs(10);
    // Readers that never read past their first event.
    let mut open: Vec<EventStream> = (0..64).map(|_| EventStream::open(&addr)).collect();
    for s in &mut open {
        assert_eq!(s.next(deadline()).unwrap().name, "snapshot");
    }
    let mut extra = EventStream::open(&addr);
    let head = extra.head(deadline());
    assert!(head.contains(" 503 "), "the 65th stream: {head}");
    // The others still answer everything else.
    assert_eq!(http_get(&addr, "/healthz").0, 200);
    assert_eq!(snapshot(&addr)["status"]["node"], "solo");
    open.pop();
    // The server notices the closed one when it next writes to it (at most a second).
    let t0 = Instant::now();
    loop {
        let mut s = EventStream::open(&addr);
        if s.head(deadline()).contains(" 200 ") {
            assert_eq!(s.next(deadline()).unwrap().name, "snapshot");
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "a closed stream's place is freed"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
