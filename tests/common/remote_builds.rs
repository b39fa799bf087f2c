//! The remote-tier scenario shared by tests/remote_storage.rs and tests/reapi_cache.rs:
//! lua5.4 in two checkouts at different paths, each with its own empty local cache,
//! the second answered by the remote the first filled.

use super::*;
use std::path::{Path, PathBuf};

/// Credentials for moto's S3 server (any will do), on every build's command line.
pub const AWS: [(&str, &str); 2] = [
    ("AWS_ACCESS_KEY_ID", "farm"),
    ("AWS_SECRET_ACCESS_KEY", "farm"),
];

/// `make -j2 linux` of lua in `tree` with `cc`, in `env` with `remote` configured.
pub fn make(env: &Env, tree: &Path, cc: &str, remote: &str) {
    make_in(env, tree, cc, remote, None);
}

fn make_in(env: &Env, tree: &Path, cc: &str, remote: &str, agent: Option<&Path>) {
    let mut c = env.cmd("make");
    c.current_dir(tree.join("src"))
        .env("FARM_REMOTE_STORAGE", remote)
        .envs(AWS)
        .args(["-j2", "linux", &format!("CC={cc} -std=gnu99")]);
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

/// Two checkouts of lua at different paths and their plain objects.
pub struct Checkouts {
    pub _root: tempfile::TempDir,
    pub a: PathBuf,
    pub b: PathBuf,
    pub plain_b: std::collections::BTreeMap<String, Vec<u8>>,
}

pub fn checkouts() -> Checkouts {
    require("gcc");
    require("make");
    let src = sources("lua5.4");
    let root = tempfile::tempdir().unwrap();
    let a = root.path().join("home/a/src/lua");
    let b = root.path().join("ci/build/1234/lua");
    for d in [&a, &b] {
        std::fs::create_dir_all(d.parent().unwrap()).unwrap();
    }
    copy_tree(&src, &a);
    copy_tree(&src, &b);
    let env = Env::new("direct");
    make(&env, &b, "gcc", "");
    let plain_b = objects(&b);
    assert!(plain_b.len() >= 30);
    sh(&b.join("src"), "make clean >/dev/null");
    Checkouts {
        _root: root,
        a,
        b,
        plain_b,
    }
}

/// A builds with `remote` and an empty cache; then B, with another empty cache, is
/// answered from the remote, its objects identical to a plain build in B.
pub fn two_checkouts(remote: &str) -> Env {
    let c = checkouts();
    let n = c.plain_b.len() as u64;
    let farm_cc = farm_cc_bin().display().to_string();
    let env_a = Env::new("direct");
    make(&env_a, &c.a, &farm_cc, remote);
    assert_eq!(env_a.misses(), n, "{}", env_a.stats());
    let env_b = Env::new("direct");
    make(&env_b, &c.b, &farm_cc, remote);
    assert_same_objects(&c.plain_b, &objects(&c.b), "checkout B from the remote");
    assert_eq!(
        env_b.counter(&["hits", "remote"]),
        n,
        "every TU of B hits the remote: {}",
        env_b.stats()
    );
    assert_eq!(env_b.misses(), 0);
    // The remote's hits were kept here: B again hits the local cache.
    sh(&c.b.join("src"), "make clean >/dev/null");
    make(&env_b, &c.b, &farm_cc, remote);
    assert_eq!(env_b.counter(&["hits", "direct"]), n, "{}", env_b.stats());
    env_b
}

/// [`make`] with this machine's farmd agent at `agent`.
pub fn make_with_agent(env: &Env, tree: &Path, cc: &str, remote: &str, agent: &Path) {
    make_in(env, tree, cc, remote, Some(agent));
}

/// A lone farmd whose agent is up.
pub fn lone_farmd() -> super::farmd::Cluster {
    let c = super::farmd::Cluster::new(&["solo"], |_| String::new());
    c.wait_live(0, 0);
    c
}
