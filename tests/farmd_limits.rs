//! farmd's limits against a cluster member or a stranger that misbehaves
//! (docs/security.md, "Resources"): the peer table, connections, streams and bytes
//! of requests being read, log lines of refused handshakes, numeric configuration
//! keys, and the state directory's mode. Real farmd processes on loopback.

mod common;
use common::farmd::*;
use common::rawpeer::*;
use common::*;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use farm::protocol::{self, Advert, PeerRequest, PeerResponse};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A certificate of the cluster's CA for a test client: a member of the cluster.
fn member(cl: &Cluster, name: &str) -> farm::net::NodeTls {
    let dir = cl.root.path().join(name);
    run_ok(
        Command::new(farm_bin())
            .args(["cluster", "issue", name, "--ca"])
            .arg(&cl.ca)
            .arg("--out")
            .arg(&dir),
    );
    farm::net::load_node_tls(
        &cl.ca.join("ca.crt"),
        &dir.join(format!("{name}.crt")),
        &dir.join(format!("{name}.key")),
        Duration::from_secs(10),
    )
    .unwrap()
}

async fn ask(conn: &quinn::Connection, req: &PeerRequest) -> anyhow::Result<PeerResponse> {
    let (mut s, mut r) = conn.open_bi().await?;
    protocol::write_async(&mut s, req).await?;
    s.finish()?;
    Ok(protocol::read_async(&mut r, protocol::MAX_FRAME).await?)
}

fn table(node: &Node) -> Vec<(String, bool)> {
    node.status()["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["addr"].as_str().unwrap().to_string(),
                p["live"].as_bool().unwrap(),
            )
        })
        .collect()
}

fn junk(i: u32) -> String {
    if i % 2 == 0 {
        format!("192.0.2.{}:{}", i % 250 + 1, 1000 + i)
    } else {
        format!("127.0.0.1:{}", 40000 + i % 20000)
    }
}

/// A member floods a node with adverts of junk addresses and answers its adverts
/// with junk peer lists: a node joining afterwards is still learned, and the junk
/// leaves the table within the expiry.
#[test]
fn junk_adverts_do_not_crowd_out_a_joining_node() {
    let mut cl = Cluster::new(&["node-a", "node-b"], |_| String::new());
    cl.wait_all();
    let a_addr = cl.nodes[0].addr();
    let tls = member(&cl, "mallory");
    let rt = rt();
    let mallory_port = free_port();
    let mallory_addr = format!("127.0.0.1:{mallory_port}");
    let endpoint = rt.block_on(async {
        let mut ep = quinn::Endpoint::server(tls.server, mallory_addr.parse().unwrap()).unwrap();
        ep.set_default_client_config(tls.client);
        // Answers every advert with 2000 junk peers.
        let server = ep.clone();
        let me = mallory_addr.clone();
        tokio::spawn(async move {
            while let Some(inc) = server.accept().await {
                let me = me.clone();
                tokio::spawn(async move {
                    let Ok(conn) = inc.await else { return };
                    while let Ok((mut s, mut r)) = conn.accept_bi().await {
                        let me = me.clone();
                        tokio::spawn(async move {
                            let _: PeerRequest =
                                protocol::read_async(&mut r, protocol::MAX_FRAME).await?;
                            let a = Advert {
                                version: protocol::VERSION,
                                node: "mallory".into(),
                                addr: me,
                                peers: (0..2000).map(|i| junk(i + 100_000)).collect(),
                                ..Advert::default()
                            };
                            protocol::write_async(&mut s, &PeerResponse::Advert(a)).await?;
                            s.finish()?;
                            let _ = s.stopped().await;
                            anyhow::Ok(())
                        });
                    }
                });
            }
        });
        let conn = ep
            .connect(a_addr.parse().unwrap(), farm::net::SERVER_NAME)
            .unwrap()
            .await
            .unwrap();
        // 2000 adverts of other machines' addresses (and junk ports of its own),
        // then one of its own address so node-a dials it and hears its peer lists.
        for i in 0..2000u32 {
            let a = Advert {
                version: protocol::VERSION,
                node: "mallory".into(),
                addr: junk(i),
                peers: (0..50).map(|j| junk(i * 50 + j + 200_000)).collect(),
                ..Advert::default()
            };
            ask(&conn, &PeerRequest::Advert(a)).await.unwrap();
        }
        let a = Advert {
            version: protocol::VERSION,
            node: "mallory".into(),
            addr: mallory_addr.clone(),
            ..Advert::default()
        };
        ask(&conn, &PeerRequest::Advert(a)).await.unwrap();
        (ep, conn)
    });
    let a = &cl.nodes[0];
    let t = table(a);
    assert!(t.len() <= 1024, "table of {} entries", t.len());
    assert!(
        !t.iter()
            .any(|(addr, _)| addr.starts_with("192.0.2.") && (0..2000).any(|i| junk(i) == *addr)),
        "an advertised address of another machine was learned"
    );

    // A genuine node joins: node-a learns it and sees it live.
    let dir = cl.root.path().join("node-c");
    fs::create_dir_all(&dir).unwrap();
    run_ok(
        Command::new(farm_bin())
            .args(["cluster", "issue", "node-c", "--ca"])
            .arg(&cl.ca)
            .arg("--out")
            .arg(&dir),
    );
    let port = free_port();
    let config = dir.join("farmd.toml");
    fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\npeers = [\"{a_addr}\"]\nca = \"{}/ca.crt\"\n\
             cert = \"node-c.crt\"\nkey = \"node-c.key\"\nsocket = \"agent.sock\"\n\
             state_dir = \"state\"\nslots = 2\nlog = \"farmd.log\"\nidle_timeout_ms = 1500\n",
            cl.ca.display()
        ),
    )
    .unwrap();
    cl.nodes.push(Node {
        name: "node-c".into(),
        dir,
        port,
        config,
        child: None,
    });
    cl.nodes[2].start();
    let t0 = Instant::now();
    while !cl.nodes[0].live_peers().contains(&"node-c".to_string()) {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "node-a never saw node-c live: {:?}",
            cl.nodes[0].live_peers()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let c_addr = cl.nodes[2].addr();

    // Mallory leaves; within the expiry the junk and mallory are gone, and the
    // genuine nodes stay.
    let (ep, conn) = endpoint;
    conn.close(0u32.into(), b"bye");
    ep.close(0u32.into(), b"bye");
    drop(rt);
    let b_addr = cl.nodes[1].addr();
    let t0 = Instant::now();
    loop {
        let t = table(&cl.nodes[0]);
        if t.iter().all(|(addr, _)| *addr == b_addr || *addr == c_addr) {
            assert_eq!(t.len(), 2, "{t:?}");
            assert!(t.iter().all(|(_, live)| *live), "{t:?}");
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(80),
            "junk still in the table: {} entries, e.g. {:?}",
            t.len(),
            &t[..t.len().min(5)]
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Many concurrent large frames from a member: farmd reads at most its read budget
/// of them at once, stays small and keeps answering.
#[test]
fn large_frames_from_a_member_stay_within_the_read_budget() {
    // FARM_TEST_BUDGET=2G shows how much this flood gets farmd to read with (nearly)
    // no budget: in a debug build on two cores, less than the bound below.
    let cl = Cluster::new(&["node-a", "node-b"], |i| {
        if i == 1 {
            std::env::var("FARM_TEST_BUDGET")
                .map(|b| format!("peer_read_budget = \"{b}\""))
                .unwrap_or_else(|_| "peer_read_budget = \"64M\"".into())
        } else {
            String::new()
        }
    });
    cl.wait_all();
    let b = &cl.nodes[1];
    let tls = member(&cl, "mallory");
    let rt = rt();
    let rss0 = b.rss_kb();
    let t0 = Instant::now();
    let b_addr: std::net::SocketAddr = b.addr().parse().unwrap();
    let (ep, conns) = rt.block_on(async {
        let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        ep.set_default_client_config(tls.client);
        let mut conns = Vec::new();
        for _ in 0..4 {
            conns.push(
                ep.connect(b_addr, farm::net::SERVER_NAME)
                    .unwrap()
                    .await
                    .unwrap(),
            );
        }
        // 4 connections x 32 streams, each declaring a 60 MiB frame and sending
        // 8 MiB of it: 1 GiB if farmd read everything it is sent.
        let chunk = Arc::new(vec![0x55u8; 8 << 20]);
        let mut tasks = Vec::new();
        let mut streams = Vec::new();
        for c in &conns {
            for _ in 0..32 {
                let (mut s, r) = c.open_bi().await.unwrap();
                let chunk = chunk.clone();
                tasks.push(tokio::spawn(async move {
                    let mut head = (60u32 << 20).to_le_bytes().to_vec();
                    head.push(0);
                    // Writes stop when farmd's flow control stops them.
                    let _ = tokio::time::timeout(Duration::from_secs(10), async {
                        s.write_all(&head).await?;
                        s.write_all(&chunk).await
                    })
                    .await;
                    (s, r)
                }));
            }
        }
        for t in tasks {
            streams.push(t.await.unwrap());
        }
        (ep, (conns, streams))
    });
    let rss1 = b.rss_kb();
    eprintln!(
        "farmd: {rss0} kB before, {rss1} kB with 128 large frames pending ({:?})",
        t0.elapsed()
    );
    // Small requests still get answers (control frames never wait for the budget).
    let answered = rt.block_on(async {
        let c = ep
            .connect(b_addr, farm::net::SERVER_NAME)
            .unwrap()
            .await
            .unwrap();
        tokio::time::timeout(
            Duration::from_secs(5),
            ask(
                &c,
                &PeerRequest::Have {
                    kind: protocol::EntryKind::Result,
                    key: [1; 32],
                },
            ),
        )
        .await
    });
    assert!(
        matches!(answered, Ok(Ok(PeerResponse::Have(false)))),
        "{answered:?}"
    );
    assert!(b.try_status().is_some(), "farmd answers its agent socket");
    eprintln!("answered ({:?})", t0.elapsed());
    assert!(
        rss1 < rss0 + 320 * 1024,
        "farmd grew from {rss0} kB to {rss1} kB"
    );
    drop(conns);
    drop(ep);
    drop(rt);
    cl.wait_live(0, 1);
    eprintln!("node-a sees node-b ({:?})", t0.elapsed());
}

/// 200 handshakes without a certificate: a few log lines, which count the others.
#[test]
fn refused_handshakes_are_logged_a_few_times() {
    let cl = Cluster::new(&["node-a"], |_| String::new());
    let a = &cl.nodes[0];
    let t0 = Instant::now();
    while a.try_status().is_none() {
        assert!(t0.elapsed() < Duration::from_secs(15));
        std::thread::sleep(Duration::from_millis(100));
    }
    let ca = cl.ca.join("ca.crt");
    let addr: std::net::SocketAddr = a.addr().parse().unwrap();
    let rt = rt();
    let no_cert = |n: usize| {
        rt.block_on(async {
            let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
            ep.set_default_client_config(client_without_certificate(&ca));
            let mut tasks = Vec::new();
            for _ in 0..n {
                let connecting = ep.connect(addr, farm::net::SERVER_NAME).unwrap();
                tasks.push(tokio::spawn(async move {
                    if let Ok(Ok(c)) =
                        tokio::time::timeout(Duration::from_secs(5), connecting).await
                    {
                        // TLS 1.3: the client may finish first; wait for the refusal.
                        let _ = tokio::time::timeout(Duration::from_secs(5), c.closed()).await;
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
        })
    };
    no_cert(200);
    // One more a second later: its line counts those not logged.
    std::thread::sleep(Duration::from_millis(1100));
    no_cert(1);
    std::thread::sleep(Duration::from_millis(300));
    let log = fs::read_to_string(a.dir.join("farmd.log")).unwrap();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("handshake refused"))
        .collect();
    let suppressed: u64 = lines
        .iter()
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("suppressed="))
                .and_then(|n| n.parse::<u64>().ok())
        })
        .sum();
    assert!(
        !lines.is_empty() && lines.len() <= 12,
        "{} lines:\n{log}",
        lines.len()
    );
    assert_eq!(
        lines.len() as u64 + suppressed,
        201,
        "every refusal logged or counted:\n{log}"
    );
    assert!(cl.nodes[0].try_status().is_some());
}

/// Numbers that would overflow a duration or a semaphore are configuration errors,
/// one line naming the file and the key.
#[test]
fn farmd_check_refuses_out_of_range_numbers() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("farmd.toml");
    let base = "listen = \"127.0.0.1:1\"\nca = \"ca.crt\"\ncert = \"n.crt\"\nkey = \"n.key\"\nstate_dir = \"s\"\n";
    for (line, key) in [
        ("idle_timeout_ms = 9223372036854775807", "idle_timeout_ms"),
        ("idle_timeout_ms = 100", "idle_timeout_ms"),
        ("job_timeout = 18446744073709551615", "job_timeout"),
        ("job_timeout = 86401", "job_timeout"),
        ("local_slots = 4294967295", "local_slots"),
        ("max_peer_connections = 0", "max_peer_connections"),
        ("peer_read_budget = \"1T\"", "peer_read_budget"),
        ("peer_read_budget = \"1M\"", "peer_read_budget"),
    ] {
        fs::write(&cfg, format!("{base}{line}\n")).unwrap();
        let o = Command::new(farmd_bin())
            .arg("--check")
            .arg(&cfg)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert_eq!(o.status.code(), Some(1), "{line}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
        assert!(
            err.contains(&cfg.display().to_string()) && err.contains(key),
            "{line}: {err}"
        );
    }
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// The state directory and what farmd keeps in it are private to farmd's user,
/// whatever the umask, and an existing one open to others is closed at start.
#[test]
fn state_dir_is_private() {
    let mut cl = Cluster::new(&["node-a"], |_| String::new());
    let a = &mut cl.nodes[0];
    let state = a.dir.join("state");
    let wait = |a: &Node| {
        let t0 = Instant::now();
        while a.try_status().is_none() {
            assert!(t0.elapsed() < Duration::from_secs(15));
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait(a);
    for d in ["", "jobs", "store", "blobs", "memo"] {
        assert_eq!(mode(&state.join(d)), 0o700, "state/{d}");
    }
    a.kill9();
    fs::set_permissions(&state, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(state.join("store"), fs::Permissions::from_mode(0o775)).unwrap();
    a.start();
    wait(a);
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join("store")), 0o700);
}

/// Connections past `max_peer_connections` are refused; the ones held, node-a's
/// included, keep working, and a slot freed is a connection accepted again.
#[test]
fn peer_connections_are_capped() {
    let cl = Cluster::new(&["node-a", "node-b"], |i| {
        if i == 1 {
            "max_peer_connections = 3".into()
        } else {
            String::new()
        }
    });
    cl.wait_all();
    let b = &cl.nodes[1];
    let tls = member(&cl, "mallory");
    let b_addr: std::net::SocketAddr = b.addr().parse().unwrap();
    let rt = rt();
    let have = PeerRequest::Have {
        kind: protocol::EntryKind::Result,
        key: [3; 32],
    };
    rt.block_on(async {
        let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        ep.set_default_client_config(tls.client);
        let connect = || async {
            let c = tokio::time::timeout(
                Duration::from_secs(5),
                ep.connect(b_addr, farm::net::SERVER_NAME).unwrap(),
            )
            .await
            .map_err(|_| anyhow::anyhow!("timeout"))??;
            ask(&c, &have).await?;
            anyhow::Ok(c)
        };
        // node-a holds one of the three.
        let mut held = Vec::new();
        let mut refused = 0;
        for _ in 0..4 {
            match connect().await {
                Ok(c) => held.push(c),
                Err(_) => refused += 1,
            }
        }
        assert_eq!(held.len(), 2, "{refused} refused");
        for c in &held {
            assert!(ask(c, &have).await.is_ok(), "a held connection still works");
        }
        held.pop().unwrap().close(0u32.into(), b"bye");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(connect().await.is_ok(), "a freed slot is taken again");
    });
    drop(rt);
    cl.wait_live(0, 1);
    let log = fs::read_to_string(b.dir.join("farmd.log")).unwrap();
    assert!(log.contains("max_peer_connections reached"), "{log}");
}
