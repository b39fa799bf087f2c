//! Every input that decides an object must cause a miss when it changes, in every
//! cache mode, and the object farm then gives must equal the plain compiler's.

mod common;
use common::*;
use std::path::Path;
use std::time::Duration;

/// Files written just now would be "too new" to record (their content may not be what
/// the compiler read); tests wait past that margin before compiling.
fn settle() {
    std::thread::sleep(Duration::from_millis(120));
}

struct Case {
    name: &'static str,
    setup: fn(&Env),
    before: Vec<String>,
    after: Vec<String>,
    change: fn(&Env),
    env_before: Vec<(&'static str, String)>,
    env_after: Vec<(&'static str, String)>,
    cwd_before: &'static str,
    cwd_after: &'static str,
}

impl Case {
    fn new(name: &'static str, setup: fn(&Env), args: &[&str], change: fn(&Env)) -> Case {
        let a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        Case {
            name,
            setup,
            before: a.clone(),
            after: a,
            change,
            env_before: vec![],
            env_after: vec![],
            cwd_before: ".",
            cwd_after: ".",
        }
    }
}

fn compile(
    env: &Env,
    through_farm: bool,
    args: &[String],
    extra_env: &[(&str, String)],
    cwd: &str,
    out: &str,
) -> Vec<u8> {
    let dir = env.work.join(cwd);
    let mut full: Vec<String> = args.to_vec();
    full.extend(["-o".to_string(), env.work.join(out).display().to_string()]);
    let o = if through_farm {
        let mut c = env.cmd(farm_bin());
        c.args(&full).current_dir(&dir);
        for (k, v) in extra_env {
            c.env(k, v);
        }
        c.output().unwrap()
    } else {
        let (prog, rest) = full.split_first().unwrap();
        let prog = if prog.contains('/') {
            env.work.join(prog).display().to_string()
        } else {
            prog.clone()
        };
        let mut c = std::process::Command::new(prog);
        c.args(rest).current_dir(&dir);
        for (k, v) in extra_env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    assert!(
        o.status.success(),
        "compile {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    env.read(out)
}

fn run_case(mode: &'static str, case: &Case) {
    let env = Env::new(mode);
    (case.setup)(&env);
    settle();
    let ctx = format!("[{mode}] {} ({})", case.name, case.before[0]);
    let fix = |args: &[String]| -> Vec<String> {
        // A compiler given as a relative path (the swapped symlink) is made absolute.
        args.iter()
            .enumerate()
            .map(|(i, a)| {
                if i == 0 && a.contains('/') {
                    env.work.join(a).display().to_string()
                } else {
                    a.clone()
                }
            })
            .collect()
    };
    let before = fix(&case.before);
    let after = fix(&case.after);

    let first = compile(
        &env,
        true,
        &before,
        &case.env_before,
        case.cwd_before,
        "farm1.o",
    );
    let plain1 = compile(
        &env,
        false,
        &before,
        &case.env_before,
        case.cwd_before,
        "plain1.o",
    );
    assert_eq!(
        first, plain1,
        "{ctx}: miss object differs from the plain compile"
    );
    assert_eq!((env.hits(), env.misses()), (0, 1), "{ctx}: first compile");
    let again = compile(
        &env,
        true,
        &before,
        &case.env_before,
        case.cwd_before,
        "farm2.o",
    );
    assert_eq!(again, plain1, "{ctx}: hit object differs");
    assert_eq!(
        (env.hits(), env.misses()),
        (1, 1),
        "{ctx}: identical compile must hit"
    );

    (case.change)(&env);
    settle();
    let changed = compile(
        &env,
        true,
        &after,
        &case.env_after,
        case.cwd_after,
        "farm3.o",
    );
    assert_eq!(
        (env.hits(), env.misses()),
        (1, 2),
        "{ctx}: the change must cause a miss (stats: {})",
        env.stats()
    );
    let plain2 = compile(
        &env,
        false,
        &after,
        &case.env_after,
        case.cwd_after,
        "plain2.o",
    );
    assert_eq!(
        changed, plain2,
        "{ctx}: object after the change differs from the plain compile"
    );
    assert_ne!(
        plain1, plain2,
        "{ctx}: the change should change the object (test is void otherwise)"
    );
    let rehit = compile(
        &env,
        true,
        &after,
        &case.env_after,
        case.cwd_after,
        "farm4.o",
    );
    assert_eq!(rehit, plain2, "{ctx}: hit after the change differs");
    assert_eq!(
        (env.hits(), env.misses()),
        (2, 2),
        "{ctx}: new state must be cached"
    );
}

/// Rewrites a file with same-size content and puts its mtime back, as a tool that
/// preserves timestamps would: only the content (and the ctime) differ.
fn edit_same_size_keep_mtime(e: &Env, rel: &str, text: &str) {
    let p = e.work.join(rel);
    let t = mtime_secs(&p);
    assert_eq!(
        std::fs::metadata(&p).unwrap().len(),
        text.len() as u64,
        "same size"
    );
    std::fs::write(&p, text).unwrap();
    set_mtime(&p, t);
}

const MAIN_H: &str = "#include \"h.h\"\nint value(void) { return V; }\n";

fn cases() -> Vec<Case> {
    let mut v = vec![
        Case::new(
            "header edit, same size, mtime restored",
            |e| {
                e.write("inc/h.h", "#define V 3\n");
                e.write("a.c", MAIN_H);
            },
            &["gcc", "-c", "-Iinc", "a.c"],
            |e| edit_same_size_keep_mtime(e, "inc/h.h", "#define V 4\n"),
        ),
        Case::new(
            "source edit, same size, mtime restored",
            |e| {
                e.write("a.c", "int value(void) { return 3; }\n");
            },
            &["gcc", "-c", "a.c"],
            |e| edit_same_size_keep_mtime(e, "a.c", "int value(void) { return 4; }\n"),
        ),
        Case::new(
            "new header shadows one later on -I",
            |e| {
                e.write("b/h.h", "#define V 3\n");
                std::fs::create_dir_all(e.work.join("a")).unwrap();
                e.write("a.c", MAIN_H);
            },
            &["gcc", "-c", "-Ia", "-Ib", "a.c"],
            |e| {
                e.write("a/h.h", "#define V 4\n");
            },
        ),
        Case::new(
            "new header beside the source",
            |e| {
                e.write("inc/h.h", "#define V 3\n");
                e.write("src/a.c", MAIN_H);
            },
            &["gcc", "-c", "-Iinc", "src/a.c"],
            |e| {
                e.write("src/h.h", "#define V 4\n");
            },
        ),
        Case::new(
            "new header in a directory that did not exist",
            |e| {
                e.write("inc/h.h", "#define V 3\n");
                e.write("a.c", MAIN_H);
            },
            &["gcc", "-c", "-Inotyet", "-Iinc", "a.c"],
            |e| {
                e.write("notyet/h.h", "#define V 4\n");
            },
        ),
        Case::new(
            "__has_include becomes true",
            |e| {
                std::fs::create_dir_all(e.work.join("inc")).unwrap();
                e.write(
                    "a.c",
                    "#if __has_include(<opt.h>)\n#include <opt.h>\n#else\n#define V 1\n#endif\nint value(void) { return V; }\n",
                );
            },
            &["gcc", "-c", "-Iinc", "a.c"],
            |e| {
                e.write("inc/opt.h", "#define V 2\n");
            },
        ),
        Case::new(
            "-include file edited",
            |e| {
                e.write("cfg.h", "#define V 3\n");
                e.write("a.c", "int value(void) { return V; }\n");
            },
            &["gcc", "-c", "-include", "cfg.h", "a.c"],
            |e| {
                e.write("cfg.h", "#define V 44\n");
            },
        ),
        Case::new(
            "compiler behind the same path changes (gcc -> clang)",
            |e| {
                std::fs::create_dir_all(e.work.join("tc")).unwrap();
                std::os::unix::fs::symlink(require("gcc"), e.work.join("tc/cc")).unwrap();
                e.write("a.c", "int value(int x) { return x * 3 + 1; }\n");
            },
            &["tc/cc", "-c", "-O2", "a.c"],
            |e| {
                std::fs::remove_file(e.work.join("tc/cc")).unwrap();
                std::os::unix::fs::symlink(require("clang"), e.work.join("tc/cc")).unwrap();
            },
        ),
    ];
    // -MMD leaves system headers out of its output: farm must still track them.
    v.push(Case::new(
        "-MMD: nested system header edited",
        |e| {
            // Only following includes inside system headers finds inner.h.
            e.write("sys/h.h", "#include <inner.h>\n");
            e.write("sys/inner.h", "#define V 3\n");
            e.write("a.c", "#include <h.h>\nint value(void) { return V; }\n");
            std::fs::create_dir_all(e.work.join("o")).unwrap();
        },
        &[
            "gcc", "-c", "-isystem", "sys", "-MMD", "-MF", "o/a.d", "-MT", "a.o", "a.c",
        ],
        |e| {
            e.write("sys/inner.h", "#define V 4\n");
        },
    ));
    v.push(Case::new(
        "-MMD: new system header shadows one later on -isystem",
        |e| {
            e.write("sys2/h.h", "#define V 3\n");
            std::fs::create_dir_all(e.work.join("sys1")).unwrap();
            e.write(
                "a.c",
                "#include <stdio.h>\n#include <h.h>\nint value(void) { return V; }\n",
            );
            std::fs::create_dir_all(e.work.join("o")).unwrap();
        },
        &[
            "gcc", "-c", "-isystem", "sys1", "-isystem", "sys2", "-MMD", "-MF", "o/a.d", "-MT",
            "a.o", "a.c",
        ],
        |e| {
            e.write("sys1/h.h", "#define V 4\n");
        },
    ));
    let mut d = Case::new(
        "-D changes",
        |e| {
            e.write("a.c", "int value(void) { return V; }\n");
        },
        &[],
        |_| {},
    );
    d.before = ["gcc", "-c", "-DV=1", "a.c"].map(String::from).to_vec();
    d.after = ["gcc", "-c", "-DV=2", "a.c"].map(String::from).to_vec();
    v.push(d);
    let mut o = Case::new(
        "-O changes",
        |e| {
            e.write(
                "a.c",
                "int value(int x) { int s = 0; for (int i = 0; i < x; i++) s += i; return s; }\n",
            );
        },
        &[],
        |_| {},
    );
    o.before = ["gcc", "-c", "-O0", "a.c"].map(String::from).to_vec();
    o.after = ["gcc", "-c", "-O2", "a.c"].map(String::from).to_vec();
    v.push(o);
    let mut g = Case::new(
        "-g in another directory",
        |e| {
            e.write("d1/a.c", "int value(void) { return 3; }\n");
            e.write("d2/a.c", "int value(void) { return 3; }\n");
        },
        &["gcc", "-c", "-g", "a.c"],
        |_| {},
    );
    g.cwd_before = "d1";
    g.cwd_after = "d2";
    v.push(g);
    let mut env = Case::new(
        "CPATH changes",
        |e| {
            e.write("i1/h.h", "#define V 3\n");
            e.write("i2/h.h", "#define V 4\n");
            e.write("a.c", "#include <h.h>\nint value(void) { return V; }\n");
        },
        &["gcc", "-c", "a.c"],
        |_| {},
    );
    env.env_before = vec![("CPATH", "i1".into())];
    env.env_after = vec![("CPATH", "i2".into())];
    v.push(env);
    v
}

fn run_all(mode: &'static str) {
    require("gcc");
    require("clang");
    for c in cases() {
        run_case(mode, &c);
    }
    // The same inputs through clang (its own search list, depfiles and diagnostics).
    for mut c in cases() {
        for args in [&mut c.before, &mut c.after] {
            if args[0] == "gcc" {
                args[0] = "clang".into();
            }
        }
        run_case(mode, &c);
    }
}

#[test]
fn every_key_input_causes_a_miss_direct() {
    run_all("direct");
}

#[test]
fn every_key_input_causes_a_miss_preprocessor() {
    run_all("preprocessor");
}

#[test]
fn every_key_input_causes_a_miss_depend() {
    run_all("depend");
}

/// Headers older than the stamp margin are checked by stat stamp, not content; a
/// same-size edit with the mtime put back must still miss (ctime moves).
#[test]
fn stamp_shortcut_still_sees_same_size_edits() {
    for mode in ["direct", "depend"] {
        let env = Env::new(mode);
        env.write("inc/h.h", "#define V 3\n");
        env.write("a.c", MAIN_H);
        std::thread::sleep(Duration::from_millis(2200));
        env.farm_ok(&["gcc", "-c", "-Iinc", "a.c", "-o", "x.o"]);
        env.farm_ok(&["gcc", "-c", "-Iinc", "a.c", "-o", "x.o"]);
        assert_eq!(env.hits(), 1, "[{mode}] hit through the stamp");
        edit_same_size_keep_mtime(&env, "inc/h.h", "#define V 4\n");
        env.farm_ok(&["gcc", "-c", "-Iinc", "a.c", "-o", "x.o"]);
        assert_eq!(
            (env.hits(), env.misses()),
            (1, 2),
            "[{mode}] edit must miss"
        );
        env.plain(&["gcc", "-c", "-Iinc", "a.c", "-o", "plain.o"]);
        assert_eq!(env.read("x.o"), env.read("plain.o"));
    }
}

/// `__DATE__`/`__TIME__` users never get a direct hit: direct mode sends them to the
/// preprocessor mode (date) or does not cache them (time).
#[test]
fn time_macros_never_hit_directly() {
    let env = Env::new("direct");
    env.write("d.c", "const char *built = __DATE__;\n");
    env.write("t.c", "const char *built = __TIME__;\n");
    settle();
    for _ in 0..3 {
        env.farm_ok(&["gcc", "-c", "d.c"]);
        env.farm_ok(&["gcc", "-c", "t.c"]);
    }
    let s = env.stats();
    assert_eq!(s["hits"]["direct"], 0, "{s}");
    // d.c: the first compile marks it for preprocessor mode, the second is a miss
    // there, the third a hit.
    assert_eq!(s["hits"]["preprocessor"], 1, "{s}");
    assert_eq!(s["passthrough"]["time_macro"], 2, "{s}");
    env.plain(&["gcc", "-c", "d.c", "-o", "dplain.o"]);
    assert_eq!(env.read("d.o"), env.read("dplain.o"));
    assert!(Path::new(&env.work.join("t.o")).exists());
}

/// gcc takes `foo.h.gch` before `foo.h` and then names neither in its dependency
/// output: a precompiled header appearing next to an unchanged header must never be
/// answered with the object compiled from the header text.
#[test]
fn precompiled_header_beside_a_header_is_never_a_false_hit() {
    for mode in MODES {
        let env = Env::new(mode);
        env.write("foo.h", "#define V 3\nint helper(void);\n");
        env.write("alt.h", "#define V 9\nint helper(void);\n");
        env.write("a.c", "#include \"foo.h\"\nint value(void) { return V; }\n");
        settle();
        env.farm_ok(&["gcc", "-c", "a.c", "-o", "f1.o"]);
        env.farm_ok(&["gcc", "-c", "a.c", "-o", "f2.o"]);
        assert_eq!(env.hits(), 1, "[{mode}]");
        // A .gch built from other text, under foo.h's name.
        env.plain(&["gcc", "-x", "c-header", "alt.h", "-o", "foo.h.gch"]);
        settle();
        for round in 0..2 {
            env.farm_ok(&["gcc", "-c", "a.c", "-o", "f3.o"]);
            env.plain(&["gcc", "-c", "a.c", "-o", "p3.o"]);
            assert_eq!(env.read("f3.o"), env.read("p3.o"), "[{mode}] round {round}");
            assert_ne!(
                env.read("f3.o"),
                env.read("f1.o"),
                "[{mode}] the .gch changes the object"
            );
        }
        assert_eq!(
            env.hits(),
            1,
            "[{mode}] never a hit while a .gch is in play: {}",
            env.stats()
        );
    }
}

/// Files named by flags (here clang's sanitizer ignore list) are hashed by content.
#[test]
fn file_named_by_a_flag_is_part_of_the_key() {
    require("clang");
    for mode in MODES {
        let env = Env::new(mode);
        env.write("ign.txt", "fun:value\n");
        env.write("s.c", "int value(int *p) { return *p; }\n");
        settle();
        let args = [
            "clang",
            "-c",
            "-fsanitize=address",
            "-fsanitize-ignorelist=ign.txt",
            "s.c",
            "-o",
            "s.o",
        ];
        env.farm_ok(&args);
        let first = env.read("s.o");
        env.farm_ok(&args);
        assert_eq!(env.hits(), 1, "[{mode}]");
        env.write("ign.txt", "fun:other\n");
        settle();
        env.farm_ok(&args);
        assert_eq!(
            (env.hits(), env.misses()),
            (1, 2),
            "[{mode}] edited list must miss"
        );
        env.plain(&[
            "clang",
            "-c",
            "-fsanitize=address",
            "-fsanitize-ignorelist=ign.txt",
            "s.c",
            "-o",
            "p.o",
        ]);
        assert_eq!(env.read("s.o"), env.read("p.o"), "[{mode}]");
        assert_ne!(env.read("s.o"), first);
    }
}

/// A source edited while its compile runs: whatever the timing, farm must never later
/// answer the new text with the object of the old one.
#[test]
fn source_edited_during_the_compile_is_never_a_false_hit() {
    for mode in MODES {
        let env = Env::new(mode);
        // Slow enough to edit in the middle: many functions at -O2.
        let body = |k: u32| -> String {
            let mut t = String::new();
            for i in 0..500 {
                t.push_str(&format!("int f{i}(int x) {{ int s = {k}; for (int j = 0; j < x; j++) s += j * {i}; return s; }}\n"));
            }
            t
        };
        // The compiler's identity is computed (and memoized) by a first compile, so the
        // timed one keys its source within the 150 ms even on a loaded machine.
        env.write("warm.c", "int warm;\n");
        env.farm_ok(&["gcc", "-c", "-O2", "warm.c", "-o", "warm.o"]);
        env.write("big.c", &body(1));
        settle();
        let child = env
            .cmd(farm_bin())
            .args(["gcc", "-c", "-O2", "big.c", "-o", "during.o"])
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(150));
        env.write("big.c", &body(2)); // same size: only the digit changes
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        settle();
        env.farm_ok(&["gcc", "-c", "-O2", "big.c", "-o", "after.o"]);
        env.plain(&["gcc", "-c", "-O2", "big.c", "-o", "plain.o"]);
        assert_eq!(
            env.read("after.o"),
            env.read("plain.o"),
            "[{mode}] object of the edited text"
        );
        if mode != "preprocessor" {
            // The edit landed mid-compile (~2 s of -O2), after the source was keyed.
            assert_eq!(
                env.counter(&["not_stored", "input_too_new"]),
                1,
                "[{mode}] {}",
                env.stats()
            );
        }
    }
}
