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
