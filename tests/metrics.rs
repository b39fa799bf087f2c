//! Seeing the farm from outside: a real Prometheus (Debian's) scrapes three real farmd
//! while a real project builds through them; every query of the Grafana dashboard in
//! packaging/ returns data; `promtool check metrics` accepts every node's `/metrics`;
//! `/healthz`, `/readyz` and `farm status --json`'s URLs; the audit log names who sent
//! each job and where it ran.

mod common;
use common::farmd::*;
use common::http;
use common::*;

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn lua_make(env: &Env, tree: &Path, cc: &str, agent: Option<&Path>) {
    lua_make_j(env, tree, cc, agent, 8)
}

/// The sum of `name{labels…}` samples in a `/metrics` text whose line contains every
/// one of `having`.
fn sample(text: &str, name: &str, having: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| having.iter().all(|h| l.contains(h)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// An instant query against Prometheus: the result vector.
fn query(prom: u16, expr: &str) -> Vec<serde_json::Value> {
    let (status, body) = http::get(&format!(
        "http://127.0.0.1:{prom}/api/v1/query?query={}",
        http::encode(expr)
    ));
    assert_eq!(status, 200, "query {expr}: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "success", "query {expr}: {body}");
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

/// Waits until Prometheus has scraped all three nodes and `expr` returns a series.
fn wait_scraped(prom: u16, expr: &str) {
    let t0 = Instant::now();
    loop {
        let up = query(prom, "sum(up{job=\"farmd\"})");
        if up.first().map(|s| s["value"][1] == "3").unwrap_or(false)
            && !query(prom, expr).is_empty()
        {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "prometheus never scraped all three nodes with {expr}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Every PromQL expression of the dashboard, with Grafana's variables as a user's
/// "All" and a 10-minute range would set them.
fn dashboard_queries() -> Vec<(String, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/grafana/farm-dashboard.json");
    let d: serde_json::Value = serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap();
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"]
                .as_str()
                .unwrap()
                .replace("$instance", ".*")
                .replace("$__rate_interval", "1m")
                .replace("$__range", "10m");
            out.push((p["title"].as_str().unwrap().to_string(), expr));
        }
    }
    assert!(out.len() >= 15, "the dashboard has its panels");
    out
}

#[test]
fn prometheus_scrapes_three_farmd_during_a_build_and_every_dashboard_query_has_data() {
    require("gcc");
    require("make");
    let promtool = require("promtool");
    let src = sources("lua5.4");
    let env = Env::new("direct");
    // Home keeps no CPU for itself (every miss it can place goes to a peer); its peers
    // cap a job's messages at 4 KiB, so a compile with many warnings is refused there
    // and falls back home, for real.
    let cache = env.cache.display().to_string();
    let cl = Cluster::new(&["home", "p1", "p2"], |i| {
        let mut extra = format!("shim_stats = [\"{cache}\"]\n");
        if i == 0 {
            extra.push_str("local_slots = 0\n");
        } else {
            extra.push_str("job_output_max = \"4096\"\n");
        }
        extra
    });
    cl.wait_all();
    let home = &cl.nodes[0];

    // farm status names the endpoints; health and readiness answer.
    let mut targets = Vec::new();
    for n in &cl.nodes {
        let st = n.status();
        let urls = &st["http"];
        let metrics = urls["metrics"].as_str().expect("status names /metrics");
        assert_eq!(metrics, format!("http://127.0.0.1:{}/metrics", n.port));
        let (code, body) = http::get(urls["healthz"].as_str().unwrap());
        assert_eq!((code, body.as_str()), (200, "ok\n"));
        let (code, body) = http::get(urls["readyz"].as_str().unwrap());
        assert_eq!(code, 200, "{body}");
        assert!(body.starts_with("ready"), "{body}");
        assert!(urls["monitor"].as_str().unwrap().ends_with('/'));
        targets.push(format!("127.0.0.1:{}", n.port));
    }
    let prom = common::servers::prometheus(&targets);
    // The build must fall between scrapes: a counter whose first sample already holds the
    // whole build has no rate. Prometheus listens before it scrapes, and on a loaded
    // machine its first scrape can come seconds later (CI once saw it after the build).
    wait_scraped(prom.port, "sum(farm_compiles_total)");

    // A cold build (misses: placed on p1 and p2, or home), then a warm one (hits).
    let tree = env.root.path().join("lua");
    let farm_cc = farm_cc_bin().display().to_string();
    copy_tree(&src, &tree);
    lua_make(&env, &tree, &farm_cc, Some(&home.socket()));
    copy_tree(&src, &tree);
    lua_make(&env, &tree, &farm_cc, Some(&home.socket()));

    // A compile whose messages outgrow what the peers send back: refused on both,
    // compiled at home, its warnings exactly gcc's.
    let mut noisy = String::new();
    for i in 0..80 {
        noisy.push_str(&format!("void f{i}(void) {{ int unused_{i}; }}\n"));
    }
    env.write("noisy.c", &noisy);
    let o = env
        .cmd(&farm_cc)
        .args(["-Wall", "-c", "noisy.c", "-o", "noisy.o"])
        .env("FARM_AGENT", home.socket())
        .output()
        .unwrap();
    assert!(o.status.success());
    let plain = env.plain(&["gcc", "-Wall", "-c", "noisy.c", "-o", "plain-noisy.o"]);
    assert_eq!(o.stderr, plain.stderr, "warnings replayed byte for byte");
    assert!(o.stderr.len() > 4096);
    // And one that no other machine may compile: it stays home.
    env.write("native.c", "int native(int x) { return x * 3; }\n");
    let o = env
        .cmd(&farm_cc)
        .args(["-march=native", "-O2", "-c", "native.c"])
        .env("FARM_AGENT", home.socket())
        .output()
        .unwrap();
    assert!(o.status.success());

    // What each node exposes: valid for promtool, and telling the build's story.
    let text: Vec<String> = cl
        .nodes
        .iter()
        .map(|n| http::get(&format!("http://127.0.0.1:{}/metrics", n.port)).1)
        .collect();
    for (n, t) in cl.nodes.iter().zip(&text) {
        let mut check = Command::new(&promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        check.stdin.take().unwrap().write_all(t.as_bytes()).unwrap();
        let o = check.wait_with_output().unwrap();
        assert!(
            o.status.success(),
            "promtool check metrics on {}: {}{}",
            n.name,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let tus = 33.0;
    assert!(sample(&text[0], "farm_compiles_total", &["outcome=\"hit_direct\""]) >= tus);
    assert!(sample(&text[0], "farm_compiles_total", &["outcome=\"miss\""]) >= tus);
    let why_home: Vec<&str> = text[0]
        .lines()
        .filter(|l| l.starts_with("farm_fallbacks") || l.starts_with("farm_home_compiles"))
        .collect();
    assert!(
        sample(&text[0], "farm_fallbacks_total", &["reason=\"refused\""]) >= 1.0,
        "{why_home:?}"
    );
    assert!(
        sample(&text[0], "farm_home_compiles_total", &[]) >= 1.0,
        "{why_home:?}"
    );
    let placed = sample(
        &text[0],
        "farm_jobs_total",
        &["role=\"placed\"", "result=\"ok\""],
    );
    let served: f64 = text[1..]
        .iter()
        .map(|t| sample(t, "farm_jobs_total", &["role=\"served\"", "result=\"ok\""]))
        .sum();
    assert!(placed >= 1.0, "home placed jobs on its peers");
    assert_eq!(placed, served, "every job home placed, a peer served");
    let refused: f64 = text[1..]
        .iter()
        .map(|t| sample(t, "farm_refusals_total", &["reason=\"sandbox\""]))
        .sum();
    assert!(refused >= 2.0, "both peers refused the noisy compile");
    let output_failures: f64 = text[1..]
        .iter()
        .map(|t| sample(t, "farm_sandbox_failures_total", &["reason=\"output\""]))
        .sum();
    assert!(output_failures >= 2.0);
    assert!(sample(&text[0], "farm_peers", &["state=\"live\""]) == 2.0);

    // Prometheus has scraped every node since the build; every dashboard query answers.
    wait_scraped(prom.port, "sum(farm_fallbacks_total) > 0");
    // Rates need two samples after the build.
    std::thread::sleep(Duration::from_secs(3));
    let mut empty = Vec::new();
    for (title, expr) in dashboard_queries() {
        let result = query(prom.port, &expr);
        if result.is_empty() {
            empty.push(format!("{title}: {expr}"));
        }
    }
    assert!(
        empty.is_empty(),
        "dashboard queries with no data:\n{}",
        empty.join("\n")
    );
    let hit_rate = query(
        prom.port,
        "sum(farm_compiles_total{outcome=~\"hit_.*\"}) / sum(farm_compiles_total{outcome=~\"hit_.*|miss\"})",
    );
    let rate: f64 = hit_rate[0]["value"][1].as_str().unwrap().parse().unwrap();
    // All three farmd read the same shims' counters: the rate is the build's.
    assert!((0.45..=0.55).contains(&rate), "hit rate {rate}");
    drop(prom);

    // The audit log: home wrote who asked for each job it placed and where it ran; each
    // peer wrote which node sent each job it served.
    let audit = |i: usize| -> Vec<serde_json::Value> {
        fs::read_to_string(cl.nodes[i].dir.join("state/audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let me = format!("uid:{}(", unsafe { libc::getuid() });
    let placed_lines = audit(0);
    assert!(placed_lines.len() as f64 >= placed);
    for l in &placed_lines {
        assert_eq!(l["role"], "placed");
        assert!(l["submitter"].as_str().unwrap().starts_with(&me), "{l}");
        assert!(["p1", "p2"].contains(&l["peer"].as_str().unwrap()), "{l}");
        assert_eq!(l["compiler_digest"].as_str().unwrap().len(), 64);
        assert_eq!(l["job"].as_str().unwrap().len(), 64);
    }
    let mut served_jobs = 0;
    for i in 1..3 {
        for l in audit(i) {
            assert_eq!(l["role"], "served");
            assert_eq!(l["submitter"], "node:home", "{l}");
            served_jobs += 1;
        }
    }
    assert_eq!(
        served_jobs,
        placed_lines.len(),
        "one line per job on each side"
    );
    assert!(placed_lines.iter().any(|l| l["outcome"] == "refused"));
}

/// `/readyz` turns 503 the moment farmd starts its graceful stop, while `/healthz`
/// stays 200 and the job in flight still finishes (a load balancer drains the node,
/// a supervisor does not kill it).
#[test]
fn readyz_drains_on_sigterm_while_healthz_stays_up() {
    require("gcc");
    let cl = Cluster::home_and_peer();
    let home = &cl.nodes[0];
    let env = Env::new("direct");
    // A compile of a few seconds, so home's agent is busy with it when stopped.
    let mut slow = String::new();
    for i in 0..1500 {
        slow.push_str(&format!(
            "int f{i}(int x) {{ int s = 0; for (int k = 0; k < x; k++) s += k * {i} ^ (s >> 3); return s; }}\n"
        ));
    }
    env.write("slow.c", &slow);
    let farm_cc = farm_cc_bin();
    let build = env
        .cmd(&farm_cc)
        .args(["-O2", "-c", "slow.c"])
        .env("FARM_AGENT", home.socket())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{}", home.port);
    // Wait until the job is on the peer, then stop home.
    let t0 = Instant::now();
    while !http::get(&format!("{base}/metrics"))
        .1
        .contains("farm_jobs_in_flight{role=\"placed\"} 1")
    {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the job never left home"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(http::get(&format!("{base}/readyz")).0, 200);
    unsafe { libc::kill(home.pid() as i32, libc::SIGTERM) };
    let t0 = Instant::now();
    loop {
        let (code, body) = http::get(&format!("{base}/readyz"));
        if code == 503 {
            assert_eq!(body, "stopping\n");
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "readyz still {code}");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(http::get(&format!("{base}/healthz")).0, 200);
    let o = build.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(env.work.join("slow.o").exists());
}
