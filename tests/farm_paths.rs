//! Same-path jobs end to end: gcc and clang compiles with debug information,
//! coverage and split DWARF run on a peer at the same absolute paths, and every
//! output and message is byte for byte the plain compiler's. Real farmd processes on
//! loopback, real compilers.

mod common;
use common::farmd::*;
use common::*;

use std::fs;

/// One compile, plainly and through the farm: each named output and stderr equal.
fn same_as_plain(
    env: &Env,
    cl: &Cluster,
    cc: &str,
    args: &[&str],
    outputs: &[&str],
) -> std::process::Output {
    for o in outputs {
        let _ = fs::remove_file(env.work.join(o));
    }
    let plain = env.cmd(cc).args(args).output().unwrap();
    assert!(
        plain.status.success(),
        "{cc} {args:?}: {}",
        String::from_utf8_lossy(&plain.stderr)
    );
    let want: Vec<Vec<u8>> = outputs.iter().map(|o| env.read(o)).collect();
    for o in outputs {
        fs::remove_file(env.work.join(o)).unwrap();
    }
    let before = env.counter(&["farm", "remote"]);
    let o = env
        .cmd(farm_bin())
        .arg(cc)
        .args(args)
        .env("FARM_AGENT", cl.nodes[0].socket())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{cc} {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        env.counter(&["farm", "remote"]),
        before + 1,
        "{cc} {args:?} did not run on the peer: {}\nlog: {}",
        env.stats(),
        fs::read_to_string(cl.nodes[0].dir.join("farmd.log")).unwrap_or_default()
    );
    for (o, w) in outputs.iter().zip(&want) {
        assert!(
            env.read(o) == *w,
            "{cc} {args:?}: {o} differs from the plain compile's"
        );
    }
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&plain.stderr),
        "{cc} {args:?}: messages differ"
    );
    env.farm(&["cache", "clear"]);
    o
}

#[test]
fn debug_coverage_and_split_dwarf_compile_on_a_peer_byte_for_byte() {
    require("gcc");
    require("clang");
    let cl = Cluster::home_and_peer();
    let env = Env::new("direct");
    env.write("inc/util.h", "#define TWICE(x) ((x) * 2)\nint util(int);\n");
    env.write(
        "src/a.c",
        "#include <stdio.h>\n#include \"util.h\"\nint main(void){printf(\"%d\\n\", TWICE(21));return util(0);}\n",
    );
    env.write(
        "src/b.cpp",
        "#include <vector>\n#include <string>\n#include \"util.h\"\nint f(){std::vector<std::string> v{\"a\"};return TWICE(v.size());}\n",
    );
    env.write("w.c", "int f(int x){int unused; return x;}\n");
    fs::create_dir_all(env.work.join("obj")).unwrap();
    for cc in ["gcc", "clang"] {
        same_as_plain(
            &env,
            &cl,
            cc,
            &["-O2", "-g", "-Iinc", "-c", "src/a.c", "-o", "obj/a.o"],
            &["obj/a.o"],
        );
        same_as_plain(
            &env,
            &cl,
            cc,
            &[
                "-g", "-MD", "-MF", "obj/a.d", "-Iinc", "-c", "src/a.c", "-o", "obj/a.o",
            ],
            &["obj/a.o", "obj/a.d"],
        );
        same_as_plain(
            &env,
            &cl,
            cc,
            &[
                "-O1",
                "-g",
                "-gsplit-dwarf",
                "-Iinc",
                "-c",
                "src/a.c",
                "-o",
                "obj/a.o",
            ],
            &["obj/a.o", "obj/a.dwo"],
        );
        same_as_plain(
            &env,
            &cl,
            cc,
            // gcc stamps coverage notes with the time unless given a seed.
            &[
                "--coverage",
                "-frandom-seed=a",
                "-Iinc",
                "-c",
                "src/a.c",
                "-o",
                "obj/a.o",
            ],
            &["obj/a.o", "obj/a.gcno"],
        );
        same_as_plain(
            &env,
            &cl,
            cc,
            &[
                "-fprofile-generate",
                "-frandom-seed=a",
                "-Iinc",
                "-c",
                "src/a.c",
                "-o",
                "obj/a.o",
            ],
            &["obj/a.o"],
        );
        // Warnings come from the peer, as the compiler here prints them.
        let o = same_as_plain(
            &env,
            &cl,
            cc,
            &["-Wall", "-Wextra", "-g", "-c", "w.c", "-o", "obj/w.o"],
            &["obj/w.o"],
        );
        assert!(!o.stderr.is_empty(), "{cc}: no warning to compare");
    }
    for cxx in ["g++", "clang++"] {
        same_as_plain(
            &env,
            &cl,
            cxx,
            &[
                "-O2",
                "-g",
                "-std=c++17",
                "-MMD",
                "-MP",
                "-Iinc",
                "-c",
                "src/b.cpp",
                "-o",
                "obj/b.o",
            ],
            &["obj/b.o", "obj/b.d"],
        );
        same_as_plain(
            &env,
            &cl,
            cxx,
            &[
                "-g",
                "-gsplit-dwarf",
                "-Iinc",
                "-c",
                "src/b.cpp",
                "-o",
                "obj/b.o",
            ],
            &["obj/b.o", "obj/b.dwo"],
        );
    }
}

/// Bytes of the regular files under `dir`.
fn tree_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => tree_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

/// A peer with no compiler of its own receives the toolchain once (its files then
/// sit in its blob store), and compiles byte-identical objects with it; a peer that
/// takes no toolchains is not sent the job, and the compile is done at home.
#[test]
fn a_peer_without_the_compiler_receives_the_toolchain_once() {
    require("gcc");
    let cl = Cluster::new(&["home", "bare", "strict"], |i| {
        match i {
            0 => "local_slots = 0",
            1 => "compilers = []",
            _ => "compilers = []\naccept_toolchains = false",
        }
        .to_string()
    });
    cl.wait_all();
    // Only the bare peer takes jobs at first: the strict one is stopped.
    let mut cl = cl;
    cl.nodes[2].kill9();
    cl.wait_live(0, 1);
    let env = Env::new("direct");
    env.write(
        "a.c",
        "#include <stdio.h>\nint main(void){puts(\"a\");return 0;}\n",
    );
    env.write(
        "b.c",
        "#include <string.h>\nint b(const char *s){return (int)strlen(s);}\n",
    );
    let blobs = cl.nodes[1].dir.join("state").join("blobs");
    let before = tree_bytes(&blobs);
    same_as_plain(
        &env,
        &cl,
        "gcc",
        &["-O2", "-g", "-c", "a.c", "-o", "a.o"],
        &["a.o"],
    );
    let after_first = tree_bytes(&blobs);
    assert!(
        after_first > before + (10 << 20),
        "the toolchain did not reach the bare peer: {before} -> {after_first} bytes"
    );
    same_as_plain(
        &env,
        &cl,
        "gcc",
        &["-O2", "-g", "-c", "b.c", "-o", "b.o"],
        &["b.o"],
    );
    let after_second = tree_bytes(&blobs);
    assert!(
        after_second < after_first + (1 << 20),
        "the toolchain was sent again: {after_first} -> {after_second} bytes"
    );
    // A peer that takes no toolchains: the compile is done here, unchanged.
    cl.nodes[1].kill9();
    cl.nodes[2].start();
    let t0 = std::time::Instant::now();
    while cl.nodes[0].live_peers() != ["strict"] {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(20),
            "{:?}",
            cl.nodes[0].live_peers()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    env.write("c.c", "int c(int x){return x*3;}\n");
    let plain = env
        .cmd("gcc")
        .args(["-g", "-c", "c.c", "-o", "c.o"])
        .output()
        .unwrap();
    assert!(plain.status.success());
    let want = env.read("c.o");
    fs::remove_file(env.work.join("c.o")).unwrap();
    let o = env
        .cmd(farm_bin())
        .args(["gcc", "-g", "-c", "c.c", "-o", "c.o"])
        .env("FARM_AGENT", cl.nodes[0].socket())
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(env.read("c.o") == want);
    // It advertises neither compilers nor toolchains: placement does not even try it.
    assert_eq!(
        env.counter(&["farm", "home", "no_peer"]),
        1,
        "{}",
        env.stats()
    );
}

/// A header edited while its compile runs on a peer: the peer compiled what was
/// sent, so the result is not used; the compile is done here with the header as it
/// is now, and that is what the cache keeps.
#[test]
fn a_header_changed_while_the_job_runs_never_gives_a_stale_object() {
    require("gcc");
    let cl = Cluster::home_and_peer();
    let env = Env::new("direct");
    env.write("h.h", "#define VALUE 1\n");
    let mut src = String::from("#include \"h.h\"\n");
    for n in 0..700 {
        src.push_str(&format!(
            "int f{n}(int x){{int s=VALUE; for(int i=0;i<x;i++) s += (i*{n}) ^ (s>>3); return s;}}\n"
        ));
    }
    env.write("slow.c", &src);
    let jobs = cl.nodes[1].dir.join("state").join("jobs");
    let mut child = env
        .cmd(farm_bin())
        .args(["gcc", "-O2", "-g", "-c", "slow.c", "-o", "slow.o"])
        .env("FARM_AGENT", cl.nodes[0].socket())
        .spawn()
        .unwrap();
    // Edit once the peer has laid the job out: its inputs were sent by then.
    let t0 = std::time::Instant::now();
    let running = || {
        fs::read_dir(&jobs)
            .map(|d| d.flatten().any(|e| e.path().join("root").is_dir()))
            .unwrap_or(false)
    };
    while !running() {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(60),
            "the job never reached the peer"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    env.write("h.h", "#define VALUE 2\n");
    assert!(child.wait().unwrap().success());
    assert_eq!(
        env.counter(&["farm", "home", "input_changed"]),
        1,
        "{}",
        env.stats()
    );
    let got = env.read("slow.o");
    let plain = env
        .cmd("gcc")
        .args(["-O2", "-g", "-c", "slow.c", "-o", "slow.o"])
        .output()
        .unwrap();
    assert!(plain.status.success());
    assert!(
        got == env.read("slow.o"),
        "the object is not the one of the header as it is now"
    );
    // And the cache holds that object: a hit gives it back.
    let o = env
        .cmd(farm_bin())
        .args(["gcc", "-O2", "-g", "-c", "slow.c", "-o", "slow.o"])
        .env("FARM_AGENT", cl.nodes[0].socket())
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(
        env.hits() >= 1 || env.counter(&["farm", "remote"]) >= 1,
        "{}",
        env.stats()
    );
    assert!(env.read("slow.o") == got);
}

/// Where a compile may take either shape, placement tries both and then keeps to the
/// one that cost the shims less; a compile only one shape can carry (`-g` cannot be
/// preprocessed text) always takes it.
#[test]
fn placement_measures_both_shapes_and_debug_info_takes_the_same_path() {
    require("gcc");
    let cl = Cluster::home_and_peer();
    let env = Env::new("direct");
    for i in 0..10 {
        env.write(
            &format!("s{i}.c"),
            &format!("#include <stdlib.h>\nint f{i}(int x){{return abs(x) + {i};}}\n"),
        );
        let o = env
            .cmd(farm_bin())
            .args([
                "gcc",
                "-O2",
                "-c",
                &format!("s{i}.c"),
                "-o",
                &format!("s{i}.o"),
            ])
            .env("FARM_AGENT", cl.nodes[0].socket())
            .output()
            .unwrap();
        assert!(o.status.success());
    }
    let remote = env.counter(&["farm", "remote"]);
    let same_path = env.counter(&["farm", "same_path"]);
    assert_eq!(remote, 10, "{}", env.stats());
    assert!(
        same_path >= 3,
        "same-path jobs were not measured: {}",
        env.stats()
    );
    assert!(
        remote - same_path >= 3,
        "text jobs were not measured: {}",
        env.stats()
    );
    for i in 0..4 {
        let o = env
            .cmd(farm_bin())
            .args([
                "gcc",
                "-g",
                "-c",
                &format!("s{i}.c"),
                "-o",
                &format!("g{i}.o"),
            ])
            .env("FARM_AGENT", cl.nodes[0].socket())
            .output()
            .unwrap();
        assert!(o.status.success());
    }
    assert_eq!(
        env.counter(&["farm", "same_path"]),
        same_path + 4,
        "{}",
        env.stats()
    );
    // What `-march=native` means differs per machine: such a compile stays here.
    let o = env
        .cmd(farm_bin())
        .args(["gcc", "-g", "-march=native", "-c", "s0.c", "-o", "n.o"])
        .env("FARM_AGENT", cl.nodes[0].socket())
        .output()
        .unwrap();
    assert!(o.status.success());
    assert_eq!(
        env.counter(&["farm", "same_path"]),
        same_path + 4,
        "{}",
        env.stats()
    );
    assert_eq!(
        env.counter(&["farm", "home", "native_cpu"]),
        1,
        "{}",
        env.stats()
    );
}

/// Depend mode runs no preprocessor, so it ships only same-path jobs, and publishes
/// nothing to the farm's cache.
#[test]
fn depend_mode_ships_same_path_jobs_only() {
    require("gcc");
    let cl = Cluster::home_and_peer();
    let env = Env::new("depend");
    env.write(
        "d.c",
        "#include <stdio.h>\nint d(void){return puts(\"d\");}\n",
    );
    same_as_plain(
        &env,
        &cl,
        "gcc",
        &["-O2", "-g", "-MD", "-MF", "d.d", "-c", "d.c", "-o", "d.o"],
        &["d.o", "d.d"],
    );
    same_as_plain(
        &env,
        &cl,
        "gcc",
        &["-O2", "-MD", "-c", "d.c", "-o", "d.o"],
        &["d.o", "d.d"],
    );
    assert_eq!(env.counter(&["farm", "same_path"]), 2, "{}", env.stats());
    assert_eq!(cl.nodes[0].status()["store_entries"], 0);
    assert_eq!(cl.nodes[1].status()["store_entries"], 0);
}
