//! Real projects from Debian source packages, built by their own build systems:
//! lua5.4 with `CC=farm-cc make -j2`, zlib with CMake + Ninja and
//! CMAKE_C_COMPILER_LAUNCHER=farm. Cold build, then clean + warm build (all hits),
//! every object byte-identical to a plain build in the same directory.

mod common;
use common::*;
use std::fs;
use std::path::PathBuf;

#[test]
fn lua_with_make_j2_cold_then_warm() {
    require("gcc");
    require("make");
    let src = sources("lua5.4");
    let env = Env::new("direct");
    let tree = env.root.path().join("lua");
    let make = |cc: &str| {
        let o = env
            .cmd("make")
            .current_dir(tree.join("src"))
            .args(["-j2", "linux", &format!("CC={cc} -std=gnu99")])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "make failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    copy_tree(&src, &tree);
    make("gcc");
    let plain = objects(&tree);
    assert!(plain.len() >= 30, "lua has ~34 TUs, got {}", plain.len());

    copy_tree(&src, &tree);
    let farm_cc = farm_cc_bin().display().to_string();
    make(&farm_cc);
    assert_same_objects(&plain, &objects(&tree), "cold");
    let n = plain.len() as u64;
    assert_eq!(env.misses(), n, "{}", env.stats());
    assert_eq!(env.hits(), 0);

    sh(&tree.join("src"), "make clean >/dev/null");
    make(&farm_cc);
    assert_same_objects(&plain, &objects(&tree), "warm");
    assert_eq!(
        env.hits(),
        n,
        "every TU hits on the warm build: {}",
        env.stats()
    );
    assert_eq!(env.misses(), n);
    // The linked interpreter works.
    let o = sh(&tree.join("src"), "./lua -e 'print(6*7)'");
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "42");

    // Two builds at once on one (emptied) cache, in two other trees.
    let o = env.farm(&["cache", "clear"]);
    assert!(o.status.success());
    env.farm(&["stats", "--zero"]);
    let trees: Vec<PathBuf> = (0..2)
        .map(|i| env.root.path().join(format!("lua-par{i}")))
        .collect();
    for t in &trees {
        copy_tree(&src, t);
    }
    let kids: Vec<_> = trees
        .iter()
        .map(|t| {
            env.cmd("make")
                .current_dir(t.join("src"))
                .args(["-j2", "linux", &format!("CC={farm_cc} -std=gnu99")])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for k in kids {
        let o = k.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    for t in &trees {
        assert_same_objects(&plain, &objects(t), "parallel builds");
    }
    assert_eq!(env.hits() + env.misses(), 2 * n, "{}", env.stats());
}

#[test]
fn zlib_with_cmake_ninja_launcher_cold_then_warm() {
    require("gcc");
    require("cmake");
    require("ninja");
    let src = sources("zlib");
    let env = Env::new("direct");
    let tree = env.root.path().join("zlib");
    let build = tree.join("_build");
    let configure = |launcher: bool| {
        let mut c = env.cmd("cmake");
        c.args([
            "-S",
            tree.to_str().unwrap(),
            "-B",
            build.to_str().unwrap(),
            "-G",
            "Ninja",
            "-DCMAKE_BUILD_TYPE=RelWithDebInfo",
            "-DCMAKE_C_COMPILER=gcc",
        ]);
        if launcher {
            c.arg(format!(
                "-DCMAKE_C_COMPILER_LAUNCHER={}",
                farm_bin().display()
            ));
        }
        let o = c.output().unwrap();
        assert!(
            o.status.success(),
            "cmake failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    let ninja = || {
        let o = env
            .cmd("ninja")
            .args(["-C", build.to_str().unwrap(), "-j2"])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "ninja failed: {}",
            String::from_utf8_lossy(&o.stdout)
        );
    };
    // Same directory for both builds: -g puts the build directory into the objects.
    copy_tree(&src, &tree);
    configure(false);
    ninja();
    let plain = objects(&build);
    assert!(plain.len() >= 15, "got {} objects", plain.len());

    copy_tree(&src, &tree);
    configure(true);
    let stats_after_configure = (env.hits(), env.misses());
    ninja();
    assert_same_objects(&plain, &objects(&build), "cold");
    let n = plain.len() as u64;
    assert_eq!(env.misses() - stats_after_configure.1, n, "{}", env.stats());

    let o = env
        .cmd("ninja")
        .args(["-C", build.to_str().unwrap(), "clean"])
        .output()
        .unwrap();
    assert!(o.status.success());
    let before = (env.hits(), env.misses());
    ninja();
    assert_same_objects(&plain, &objects(&build), "warm");
    assert_eq!(env.hits() - before.0, n, "all hits: {}", env.stats());
    assert_eq!(env.misses(), before.1);
    // Ninja's depfiles were restored: a no-op rebuild does nothing.
    let o = env
        .cmd("ninja")
        .args(["-C", build.to_str().unwrap(), "-n"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("no work to do"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    // A header edit rebuilds its dependents through farm, correctly.
    let zutil = tree.join("zutil.h");
    let text = fs::read_to_string(&zutil).unwrap();
    fs::write(
        &zutil,
        text.replace(
            "#define ZUTIL_H",
            "#define ZUTIL_H\n#define FARM_TEST_EDIT 1",
        ),
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100));
    let before = env.misses();
    ninja();
    assert!(env.misses() > before, "edited header must cause misses");
}
