//! The farm across network namespaces: three real farmd, each in its own namespace on a
//! private subnet with a 2 ms round trip between them (tests/common/netns.rs), the shim
//! and its home farmd in the first. A real Debian project (lua) is built through
//! farm-cc and every output compared byte for byte with a plain build of the same tree.
//! Needs root (`ip netns`).

mod common;
use common::netns::*;
use common::*;

use std::collections::BTreeMap;
use std::path::Path;

const RTT_MS: f64 = 2.0;

/// These tests start three farmd and `make -j8` each: one at a time.
fn heavy() -> std::sync::MutexGuard<'static, ()> {
    static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

/// `make -j8 linux` of lua with `cc` and extra flags, asserting success; in the
/// client's namespace through its agent when `cl` is given.
fn lua_make(env: &Env, tree: &Path, cc: &str, cflags: &str, cl: Option<&NetnsCluster>) {
    let mut c = match cl {
        Some(cl) => cl.client_cmd(env, "make"),
        None => env.cmd("make"),
    };
    c.current_dir(tree.join("src")).args([
        "-j8",
        "linux",
        &format!("CC={cc} -std=gnu99"),
        &format!("MYCFLAGS={cflags}"),
    ]);
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "make failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Three farmd in namespaces; the home node keeps nothing for itself, so every
/// distributable compile goes to a peer in another namespace.
fn netns_farm() -> NetnsCluster {
    require("gcc");
    require("make");
    let cl = NetnsCluster::new(&["home", "peer-b", "peer-c"], RTT_MS, |i| {
        if i == 0 { "local_slots = 0" } else { "" }.to_string()
    });
    cl.wait_all();
    // The delay is really there (and not wildly more than asked).
    let rtt = cl.net.rtt_ms;
    assert!(
        (RTT_MS * 0.9..RTT_MS * 5.0).contains(&rtt),
        "namespaces' round trip is {rtt} ms ({}), asked for {RTT_MS} ms",
        cl.net.delay
    );
    eprintln!(
        "farm_netns: namespaces {:?}, delay by {}, measured RTT {rtt} ms",
        cl.net.names, cl.net.delay
    );
    cl
}

/// Every peer of the home node: its address (in another namespace) and the jobs it ran.
fn peer_jobs(cl: &NetnsCluster) -> BTreeMap<String, (String, u64)> {
    let st = cl.nodes[0].status();
    st["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["node"].as_str().unwrap().to_string(),
                (
                    p["addr"].as_str().unwrap_or_default().to_string(),
                    p["jobs_ok"].as_u64().unwrap(),
                ),
            )
        })
        .collect()
}

/// Asserts both peers, at their namespaces' addresses, compiled jobs for the build.
fn assert_peers_compiled(cl: &NetnsCluster, env: &Env, n: u64) {
    let remote = env.counter(&["farm", "remote"]);
    assert!(remote > 0, "no TU was compiled by a peer: {}", env.stats());
    let jobs = peer_jobs(cl);
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    for (i, name) in ["peer-b", "peer-c"].iter().enumerate() {
        let (addr, ok) = &jobs[*name];
        assert_eq!(
            addr,
            &format!("{}:{FARMD_PORT}", cl.net.ips[i + 1]),
            "{name} is reached in its own namespace"
        );
        assert!(*ok > 0, "{name} compiled no job: {jobs:?} {}", env.stats());
    }
    let sum: u64 = jobs.values().map(|(_, ok)| ok).sum();
    assert!(
        sum >= remote && remote <= n,
        "peers ran {sum} jobs, the shims count {remote} remote of {n}: {}",
        env.stats()
    );
}

#[test]
fn three_farmd_in_namespaces_build_lua_o2_identical_to_plain() {
    let _one_at_a_time = heavy();
    let src = sources("lua5.4");
    let cl = netns_farm();
    let env = Env::new("direct");
    let tree = env.root.path().join("lua");
    copy_tree(&src, &tree);
    lua_make(&env, &tree, "gcc", "", None);
    let plain = objects(&tree);
    let n = plain.len() as u64;

    copy_tree(&src, &tree);
    let farm_cc = farm_cc_bin().display().to_string();
    lua_make(&env, &tree, &farm_cc, "", Some(&cl));
    assert_same_objects(
        &plain,
        &objects(&tree),
        "built by peers in other namespaces",
    );
    assert_eq!(env.misses(), n, "{}", env.stats());
    assert_peers_compiled(&cl, &env, n);
    // Home offers no slots: a TU stays home only when no peer could take it.
    let remote = env.counter(&["farm", "remote"]);
    assert!(remote >= n / 2, "{}", env.stats());
    let o = sh(&tree.join("src"), "./lua -e 'print(6*7)'");
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "42");
}

#[test]
fn three_farmd_in_namespaces_build_lua_o2_g_objects_and_deps_byte_identical() {
    let _one_at_a_time = heavy();
    // -g puts the build directory and every file name into DWARF; -MMD writes a .d per
    // object. A peer must produce both exactly as this machine does.
    let flags = "-g -MMD";
    let src = sources("lua5.4");
    let cl = netns_farm();
    let env = Env::new("direct");
    let tree = env.root.path().join("lua");
    copy_tree(&src, &tree);
    lua_make(&env, &tree, "gcc", flags, None);
    let plain = objects(&tree);
    let plain_deps = files_with_ext(&tree, "d");
    let n = plain.len() as u64;
    assert_eq!(plain_deps.len() as u64, n, "one .d per object");

    copy_tree(&src, &tree);
    let farm_cc = farm_cc_bin().display().to_string();
    lua_make(&env, &tree, &farm_cc, flags, Some(&cl));
    assert_same_objects(&plain, &objects(&tree), "-O2 -g objects built by peers");
    assert_same_objects(
        &plain_deps,
        &files_with_ext(&tree, "d"),
        "-O2 -g .d files built by peers",
    );
    assert_eq!(env.misses(), n, "{}", env.stats());
    assert_peers_compiled(&cl, &env, n);
    let remote = env.counter(&["farm", "remote"]);
    assert!(remote >= n / 2, "{}", env.stats());
}

/// `cmake` configure and build of jsoncpp (C++, Makefiles: they keep the compiler's
/// `.d` files, where Ninja reads and deletes them) in `build`, RelWithDebInfo with
/// split DWARF, through `launcher` (farm) in the client's namespace when given.
fn jsoncpp_build(env: &Env, tree: &Path, build: &Path, launcher: Option<(&str, &NetnsCluster)>) {
    let cmd = |program: &str| match launcher {
        Some((_, cl)) => cl.client_cmd(env, program),
        None => env.cmd(program),
    };
    let mut configure = cmd("cmake");
    configure.arg("-S").arg(tree).arg("-B").arg(build).args([
        "-G",
        "Unix Makefiles",
        "-DCMAKE_BUILD_TYPE=RelWithDebInfo",
        "-DCMAKE_CXX_COMPILER=clang++",
        "-DCMAKE_CXX_FLAGS=-gsplit-dwarf",
        "-DJSONCPP_WITH_TESTS=ON",
        "-DJSONCPP_WITH_POST_BUILD_UNITTEST=OFF",
        "-DJSONCPP_WITH_PKGCONFIG_SUPPORT=OFF",
        "-DJSONCPP_WITH_CMAKE_PACKAGE=OFF",
        "-DBUILD_SHARED_LIBS=OFF",
        "-DBUILD_OBJECT_LIBS=OFF",
    ]);
    // jsoncpp makes whatever `CCACHE_EXECUTABLE` names its compiler launcher (it
    // looks for ccache): farm, or `env` for the plain build.
    let l = launcher.map(|(l, _)| l).unwrap_or("/usr/bin/env");
    configure.arg(format!("-DCCACHE_EXECUTABLE={l}"));
    let o = configure.output().unwrap();
    assert!(
        o.status.success(),
        "cmake: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = cmd("cmake")
        .arg("--build")
        .arg(build)
        .args(["--", "-j8"])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "build: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A real C++ project (Debian's jsoncpp, CMake) built RelWithDebInfo (`-O2 -g`) with
/// split DWARF by clang++ over three farmd in namespaces: every object, `.dwo` and `.d`
/// byte for byte the plain build's, in the same build directory. (clang++, because
/// g++ 12's split-DWARF unit id is not reproducible for these sources: two plain g++
/// builds already differ in those 8 bytes of each object and `.dwo`; g++ with `-g`
/// is covered by lua above and by tests/farm_paths.rs.)
#[test]
fn three_farmd_in_namespaces_build_a_cpp_project_o2_g_split_dwarf_byte_identical() {
    let _one_at_a_time = heavy();
    require("cmake");
    require("clang++");
    let src = sources("libjsoncpp");
    let cl = netns_farm();
    let env = Env::new("direct");
    let tree = env.root.path().join("jsoncpp");
    copy_tree(&src, &tree);
    let build = tree.join("build");
    let outputs = |b: &Path| {
        let mut all = objects(b);
        all.extend(files_with_ext(b, "dwo"));
        all.extend(files_with_ext(b, "d"));
        all
    };
    jsoncpp_build(&env, &tree, &build, None);
    let plain = outputs(&build);
    let n = objects(&build).len() as u64;
    assert!(n >= 5, "{n} objects");
    // CMake's compiler identification object has neither.
    assert!(
        files_with_ext(&build, "dwo").len() as u64 >= n - 1,
        "a .dwo per object"
    );
    assert!(
        files_with_ext(&build, "d").len() as u64 >= n - 1,
        "a .d per object"
    );

    std::fs::remove_dir_all(&build).unwrap();
    let farm = farm_bin().display().to_string();
    jsoncpp_build(&env, &tree, &build, Some((&farm, &cl)));
    assert_same_objects(
        &plain,
        &outputs(&build),
        "C++ -O2 -g split-DWARF outputs built by peers",
    );
    assert_peers_compiled(&cl, &env, n);
    assert!(
        env.counter(&["farm", "same_path"]) >= n / 2,
        "{}",
        env.stats()
    );
}
