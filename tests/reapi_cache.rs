//! The REAPI client and the REAPI cache tier against a real server: BuildGrid 0.9.1
//! (from PyPI, in target/buildgrid-venv; scripts/install-deps.sh) with its CAS, ByteStream
//! and Action Cache in memory on loopback. The tier end to end: lua5.4 built in
//! checkout A, then in checkout B with an empty local cache, answered by BuildGrid;
//! a server killed mid-build or one that never answers fails nothing.

mod common;
use common::remote_builds::*;
use common::servers::*;
use common::*;

use farm::reapi::proto::{ActionResult, OutputFile};
use farm::reapi::{digest_of, BlockingClient, ReapiConfig};
use farm::store::remote::{spec::parse_one, RemoteTier};
use farm::store::{CacheError, CacheKey, EntryKind, Tier};
use std::time::{Duration, Instant};

fn client(port: u16) -> BlockingClient {
    BlockingClient::new(ReapiConfig::plain(&format!("127.0.0.1:{port}")))
}

/// Bytes that do not compress to nothing and differ per `seed`.
fn data(len: usize, seed: u8) -> Vec<u8> {
    let mut x = 0x9e37_79b9u32 ^ u32::from(seed);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

#[test]
fn capabilities_blobs_both_ways_and_the_action_cache() {
    let bg = buildgrid_cas_ac();
    let c = client(bg.port);
    let caps = c.capabilities().unwrap();
    assert!(caps.ac_update_enabled, "{caps:?}");
    assert!(
        !caps.exec_enabled,
        "the CAS+AC configuration runs nothing: {caps:?}"
    );
    assert_eq!(caps.max_batch_bytes, 4_193_280, "{caps:?}");
    // Below the batch limit (BatchUpdateBlobs/BatchReadBlobs) and above it
    // (ByteStream Write/Read, in chunks).
    let small = data(10_000, 1);
    let large = data(caps.max_batch_bytes as usize + 1_500_000, 2);
    let (ds, dl) = (digest_of(&small), digest_of(&large));
    let mut missing = c.find_missing(&[ds.clone(), dl.clone()]).unwrap();
    missing.sort_by_key(|d| d.size_bytes);
    assert_eq!(missing, [ds.clone(), dl.clone()]);
    c.upload(&[(ds.clone(), &small), (dl.clone(), &large)])
        .unwrap();
    assert!(c
        .find_missing(&[ds.clone(), dl.clone()])
        .unwrap()
        .is_empty());
    assert_eq!(c.read_blob(&ds).unwrap().as_deref(), Some(&small[..]));
    assert_eq!(c.read_blob(&dl).unwrap().as_deref(), Some(&large[..]));
    assert_eq!(c.read_blob(&digest_of(b"never stored")).unwrap(), None);
    let never_large = digest_of(&data(caps.max_batch_bytes as usize + 10, 3));
    assert_eq!(c.read_blob(&never_large).unwrap(), None);
    // Uploading again finds nothing missing and sends nothing.
    c.upload(&[(ds.clone(), &small)]).unwrap();
    // The Action Cache: none, then the result stored.
    let action = digest_of(b"an action of this test");
    assert_eq!(c.get_action_result(&action).unwrap(), None);
    let result = ActionResult {
        output_files: vec![OutputFile {
            path: "out/a.o".into(),
            digest: Some(ds.clone()),
            ..Default::default()
        }],
        exit_code: 0,
        ..Default::default()
    };
    c.update_action_result(&action, result.clone()).unwrap();
    let got = c.get_action_result(&action).unwrap().unwrap();
    assert_eq!(got.output_files, result.output_files);
    let inlined = c
        .get_action_result_inlined(&action, &["out/a.o"])
        .unwrap()
        .unwrap();
    eprintln!(
        "inlined output file: {} bytes of {}",
        inlined.output_files[0].contents.len(),
        small.len()
    );
    // What one GetActionResult costs on loopback (printed for docs/reapi.md).
    let t0 = Instant::now();
    for _ in 0..50 {
        c.get_action_result(&action).unwrap().unwrap();
    }
    eprintln!("GetActionResult on loopback: {:?} each", t0.elapsed() / 50);
}

/// The tier by itself: an entry round-trips; an Action Cache entry pointing at
/// another entry's blob is refused (corrupt), never restored; remove forgets.
#[test]
fn the_tier_stores_entries_and_refuses_a_swapped_one() {
    let bg = buildgrid_cas_ac();
    let spec = parse_one(&format!("reapi://127.0.0.1:{}", bg.port)).unwrap();
    let tier = RemoteTier::in_process(spec);
    let (k1, k2) = (CacheKey([1; 32]), CacheKey([2; 32]));
    assert_eq!(tier.get(EntryKind::Result, &k1).unwrap(), None);
    let big = data(6 << 20, 4); // above the batch limit once framed and compressed
    tier.put(EntryKind::Result, &k1, b"result one").unwrap();
    tier.put(EntryKind::Manifest, &k1, &big).unwrap();
    assert_eq!(
        tier.get(EntryKind::Result, &k1).unwrap().as_deref(),
        Some(&b"result one"[..])
    );
    assert_eq!(tier.get(EntryKind::Manifest, &k1).unwrap(), Some(big));
    assert!(tier.have(EntryKind::Result, &k1).unwrap());
    assert!(!tier.have(EntryKind::Result, &k2).unwrap());
    // A tree job's blob is stored raw under its BLAKE3 key.
    let blob = b"int x;".to_vec();
    let bk = CacheKey(*blake3::hash(&blob).as_bytes());
    tier.put(EntryKind::Blob, &bk, &blob).unwrap();
    assert_eq!(tier.get(EntryKind::Blob, &bk).unwrap(), Some(blob));
    // k2's Action answered with k1's entry: refused.
    let c = client(bg.port);
    let (_, (a1, _)) = farm::store::remote::reapi_tier::entry_action(EntryKind::Result, &k1);
    let (_, (a2, _)) = farm::store::remote::reapi_tier::entry_action(EntryKind::Result, &k2);
    let r1 = c.get_action_result(&a1).unwrap().unwrap();
    c.update_action_result(&a2, r1).unwrap();
    match tier.get(EntryKind::Result, &k2) {
        Err(CacheError::Corrupt { what, .. }) => assert!(what.contains("another"), "{what}"),
        other => panic!("a swapped entry must be refused: {other:?}"),
    }
    tier.remove(EntryKind::Result, &k1).unwrap();
    assert_eq!(tier.get(EntryKind::Result, &k1).unwrap(), None);
    // `farm cache ping`'s steps work against it.
    let steps = tier.ping().unwrap();
    assert_eq!(steps.len(), 3, "{steps:?}");
}

#[test]
fn checkout_b_is_answered_from_reapi() {
    let bg = buildgrid_cas_ac();
    let remote = format!("reapi://127.0.0.1:{}", bg.port);
    let t0 = Instant::now();
    let env_b = two_checkouts(&remote);
    eprintln!("two checkouts through BuildGrid: {:?}", t0.elapsed());
    assert!(
        env_b.counter(&["tiers", "reapi", "hits"]) >= 30,
        "{}",
        env_b.stats()
    );
    assert!(env_b.counter(&["tiers", "reapi", "bytes_read"]) > 0);
}

/// Killed mid-build, and a server that accepts connections but never answers: each
/// build is a plain build's, counted as remote errors, and the dead server costs a
/// few deadlines, not one per compile.
#[test]
fn a_reapi_server_that_dies_or_hangs_fails_nothing() {
    let c = checkouts();
    let n = c.plain_b.len() as u64;
    let farm_cc = farm_cc_bin().display().to_string();
    let mut bg = buildgrid_cas_ac();
    let remote = format!("reapi://127.0.0.1:{}", bg.port);
    let env = Env::new("direct");
    let tree = c.b.clone();
    let t0 = Instant::now();
    std::thread::scope(|s| {
        let build = s.spawn(|| make(&env, &tree, &farm_cc, &remote));
        std::thread::sleep(Duration::from_millis(1500));
        bg.kill();
        build.join().unwrap();
    });
    eprintln!(
        "build with BuildGrid killed after 1.5 s: {:?}",
        t0.elapsed()
    );
    assert_same_objects(&c.plain_b, &objects(&c.b), "killed mid-build");
    assert_eq!(env.misses(), n, "{}", env.stats());
    assert!(env.counter(&["errors", "remote"]) >= 1, "{}", env.stats());
    sh(&c.b.join("src"), "make clean >/dev/null");
    let (accepted, port) = silent();
    let hung = format!("reapi://127.0.0.1:{port}|connect-timeout=100ms|timeout=300ms");
    let env = Env::new("direct");
    let t0 = Instant::now();
    make(&env, &c.b, &farm_cc, &hung);
    assert_same_objects(&c.plain_b, &objects(&c.b), "hung server");
    assert!(env.counter(&["errors", "remote"]) >= 1, "{}", env.stats());
    assert!(t0.elapsed() < Duration::from_secs(60), "{:?}", t0.elapsed());
    let tried = accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        (1..=6).contains(&tried),
        "{tried} connections to the hung server for {n} compiles"
    );
}

/// With a farmd agent up, the shim asks BuildGrid through it (the agent's one warm
/// channel; the credential read by the shim and sent resolved): B is answered with a
/// plain build's objects, no compile falls back to asking directly, and `farm
/// config` names the credential's file, never its content.
#[test]
fn checkout_b_is_answered_from_reapi_through_the_agent() {
    let c = checkouts();
    let n = c.plain_b.len() as u64;
    let farm_cc = farm_cc_bin().display().to_string();
    let farmd = lone_farmd();
    let agent = farmd.nodes[0].socket();
    let bg = buildgrid_cas_ac();
    let token = c._root.path().join("reapi-token");
    std::fs::write(&token, "s3cret-token\n").unwrap();
    let remote = format!(
        "reapi://127.0.0.1:{}|token-file={}",
        bg.port,
        token.display()
    );
    let env_a = Env::new("direct");
    make_with_agent(&env_a, &c.a, &farm_cc, &remote, &agent);
    assert_eq!(env_a.misses(), n, "{}", env_a.stats());
    assert_eq!(env_a.counter(&["errors", "remote"]), 0, "{}", env_a.stats());
    // The agent's write queue drains in the background: B may come before it ends.
    std::thread::sleep(Duration::from_secs(2));
    let env_b = Env::new("direct");
    make_with_agent(&env_b, &c.b, &farm_cc, &remote, &agent);
    assert_same_objects(&c.plain_b, &objects(&c.b), "checkout B through the agent");
    assert_eq!(
        env_b.counter(&["hits", "remote"]),
        n,
        "every TU of B hits BuildGrid through the agent: {}",
        env_b.stats()
    );
    for env in [&env_a, &env_b] {
        assert_eq!(
            env.counter(&["farm", "fallback", "agent_remote"]),
            0,
            "{}",
            env.stats()
        );
    }
    let o = env_b
        .cmd(farm_bin())
        .arg("config")
        .env("FARM_REMOTE_STORAGE", &remote)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{text}");
    assert!(text.contains("kind=reapi"), "{text}");
    assert!(
        text.contains(&format!("credentials=bearer(file:{})", token.display())),
        "{text}"
    );
    assert!(!text.contains("s3cret"), "{text}");
}

/// `grpcs://`: BuildGrid with a certificate of a CA farm trusts through `ca-file`
/// (rustls on ring); without that CA the handshake fails, named.
#[test]
fn grpcs_with_a_ca_file() {
    let ca = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let bg = buildgrid_cas_ac_tls(&ca.cert.pem(), &ca.key_pair.serialize_pem());
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.cert.pem()).unwrap();
    let spec = parse_one(&format!(
        "grpcs://localhost:{}|ca-file={}",
        bg.port,
        ca_file.display()
    ))
    .unwrap();
    let cfg = spec.reapi.clone().unwrap();
    let c = BlockingClient::new(cfg.clone());
    assert!(c.capabilities().unwrap().ac_update_enabled);
    let tier = RemoteTier::in_process(spec);
    tier.put(EntryKind::Result, &CacheKey([9; 32]), b"over TLS")
        .unwrap();
    assert_eq!(
        tier.get(EntryKind::Result, &CacheKey([9; 32]))
            .unwrap()
            .as_deref(),
        Some(&b"over TLS"[..])
    );
    let mut untrusted = cfg;
    untrusted.ca_file = None;
    let e = BlockingClient::new(untrusted).capabilities().unwrap_err();
    assert!(e.to_string().contains("grpcs://localhost"), "{e}");
    assert!(e.to_string().contains("certificate"), "{e}");
    eprintln!("without the CA: {e}");
}

/// A server whose Action Cache clients may not write: capabilities say so, a write
/// fails at once (asking nothing more) and then writes are skipped on this machine,
/// while reads go on being answered.
#[test]
fn a_server_without_action_cache_updates_skips_writes_only() {
    let bg = buildgrid_cas_ac_no_updates();
    assert!(!client(bg.port).capabilities().unwrap().ac_update_enabled);
    let spec = parse_one(&format!("reapi://127.0.0.1:{}", bg.port)).unwrap();
    let tier = RemoteTier::in_process(spec);
    let k = CacheKey([3; 32]);
    match tier.put(EntryKind::Result, &k, b"x") {
        Err(CacheError::Unavailable { detail, .. }) => {
            assert!(detail.contains("does not let clients write"), "{detail}")
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        tier.put(EntryKind::Result, &k, b"x"),
        Err(CacheError::Skipped { .. })
    ));
    assert_eq!(tier.get(EntryKind::Result, &k).unwrap(), None);
}

/// A server that accepts connections and never answers: each call ends at its
/// deadline (connect + call, tried once: no UNAVAILABLE to retry on), named.
#[test]
fn a_silent_server_costs_one_deadline_per_call() {
    let (_, port) = silent();
    let mut cfg = ReapiConfig::plain(&format!("127.0.0.1:{port}"));
    cfg.connect_timeout = Duration::from_millis(100);
    cfg.call_timeout = Duration::from_millis(300);
    let c = BlockingClient::new(cfg);
    let t0 = Instant::now();
    let e = c.get_action_result(&digest_of(b"x")).unwrap_err();
    let spent = t0.elapsed();
    assert!(e.to_string().contains("GetActionResult"), "{e}");
    assert!(
        spent >= Duration::from_millis(300) && spent < Duration::from_millis(1500),
        "{spent:?}: {e}"
    );
}
