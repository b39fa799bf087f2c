//! `farm why` names the key input that made a real gcc compile miss: an edited
//! header, a new header that shadows another, a changed `-D`, a changed compiler, a
//! changed environment variable; `farm why -- CMD` predicts a hit or a miss.

mod common;
use common::*;
use std::process::Output;
use std::time::Duration;

/// Files written just now are "too new" to record; wait past that margin.
fn settle() {
    std::thread::sleep(Duration::from_millis(120));
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `farm why ARGS`, asserting exit 0; its output.
fn why(env: &Env, args: &[&str]) -> String {
    let mut a = vec!["why"];
    a.extend(args);
    let o = env.farm(&a);
    assert!(o.status.success(), "farm why {args:?}: {}", text(&o));
    text(&o)
}

fn compile(env: &Env, args: &[&str], vars: &[(&str, &str)]) {
    let mut c = env.cmd(farm_bin());
    c.args(args);
    for (k, v) in vars {
        c.env(k, v);
    }
    let o = c.output().unwrap();
    assert!(o.status.success(), "farm {args:?}: {}", text(&o));
}

const SRC: &str = "#include \"foo.h\"\n#include \"config.h\"\nint x = FOO + CFG + LEVEL;\n";

/// A project: a.c includes foo.h (include/) and config.h (found in inc2/; inc1/ is
/// searched first and has none).
fn project(mode: &'static str) -> Env {
    let env = Env::new(mode);
    env.write("include/foo.h", "#define FOO 1\n");
    env.write("inc2/config.h", "#define CFG 2\n");
    std::fs::create_dir_all(env.work.join("inc1")).unwrap();
    env.write("a.c", SRC);
    settle();
    env
}

fn gcc_args(level: &str) -> Vec<String> {
    [
        "gcc",
        "-Iinclude",
        "-Iinc1",
        "-Iinc2",
        level,
        "-c",
        "a.c",
        "-o",
        "a.o",
    ]
    .map(String::from)
    .to_vec()
}

fn run_gcc(env: &Env, level: &str, vars: &[(&str, &str)]) {
    let a = gcc_args(level);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    compile(env, &a, vars);
}

#[test]
fn names_an_edited_header() {
    require("gcc");
    let env = project("direct");
    run_gcc(&env, "-DLEVEL=1", &[]);
    let first = why(&env, &["a.c"]);
    assert!(
        first.contains("no earlier record of this source"),
        "{first}"
    );
    env.write("include/foo.h", "#define FOO 3\n");
    settle();
    run_gcc(&env, "-DLEVEL=1", &[]);
    assert_eq!(env.misses(), 2);
    let out = why(&env, &["a.c"]);
    assert!(out.contains("include/foo.h changed content"), "{out}");
    // Nothing else differs.
    assert_eq!(out.matches("\n  - ").count(), 1, "{out}");
}

#[test]
fn names_a_new_shadowing_header() {
    require("gcc");
    let env = project("direct");
    run_gcc(&env, "-DLEVEL=1", &[]);
    env.write("inc1/config.h", "#define CFG 5\n");
    settle();
    run_gcc(&env, "-DLEVEL=1", &[]);
    let out = why(&env, &["a.c"]);
    assert!(
        out.contains("#include \"config.h\" now finds inc1/config.h (before: inc2/config.h)"),
        "{out}"
    );
}

#[test]
fn names_a_changed_define_in_direct_and_preprocessor_modes() {
    require("gcc");
    for mode in ["direct", "preprocessor"] {
        let env = project(mode);
        run_gcc(&env, "-DLEVEL=1", &[]);
        run_gcc(&env, "-DLEVEL=2", &[]);
        let out = why(&env, &["a.c"]);
        assert!(
            out.contains("argument `-DLEVEL=1` became `-DLEVEL=2`"),
            "{mode}: {out}"
        );
        assert!(out.contains(&format!("{mode} mode")), "{out}");
        // Asked from another directory, by another name for the same file.
        let sub = env.work.join("sub");
        std::fs::create_dir_all(&sub).unwrap();
        let o = env
            .cmd(farm_bin())
            .args(["why", "../a.c"])
            .current_dir(&sub)
            .output()
            .unwrap();
        assert!(
            text(&o).contains("`-DLEVEL=1` became `-DLEVEL=2`"),
            "{}",
            text(&o)
        );
    }
}

#[test]
fn names_a_changed_compiler() {
    let gcc = require("gcc");
    let env = project("direct");
    // A wrapper of gcc at one path, replaced by another (its binary changes).
    let tc = env.root.path().join("tc");
    std::fs::create_dir_all(&tc).unwrap();
    let wrapper = tc.join("gcc");
    let write_wrapper = |note: &str| {
        let tmp = tc.join("gcc.new");
        std::fs::write(
            &tmp,
            format!("#!/bin/sh\n# {note}\nexec {} \"$@\"\n", gcc.display()),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::rename(&tmp, &wrapper).unwrap();
    };
    write_wrapper("release one");
    let mut args = gcc_args("-DLEVEL=1");
    args[0] = wrapper.display().to_string();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    compile(&env, &a, &[]);
    write_wrapper("release two");
    compile(&env, &a, &[]);
    assert_eq!(env.misses(), 2);
    let out = why(&env, &["a.c"]);
    assert!(
        out.contains(&format!("the compiler {} changed", wrapper.display())),
        "{out}"
    );
    assert!(out.contains("its binary's content differs"), "{out}");
    assert_eq!(out.matches("\n  - ").count(), 1, "{out}");
}

#[test]
fn names_a_changed_environment_variable() {
    require("gcc");
    let env = project("direct");
    run_gcc(&env, "-DLEVEL=1", &[("SOURCE_DATE_EPOCH", "1000")]);
    run_gcc(&env, "-DLEVEL=1", &[("SOURCE_DATE_EPOCH", "2000")]);
    let out = why(&env, &["a.c"]);
    assert!(
        out.contains("environment variable SOURCE_DATE_EPOCH is `2000` (before: `1000`)"),
        "{out}"
    );
    let json: serde_json::Value = serde_json::from_str(&why(&env, &["--json", "a.c"])).unwrap();
    assert_eq!(json["verdict"], "explained");
    assert_eq!(json["findings"][0]["kind"], "environment");
    assert_eq!(json["findings"][0]["subject"], "SOURCE_DATE_EPOCH");
    assert_eq!(json["findings"][0]["before"], "1000");
    assert_eq!(json["findings"][0]["after"], "2000");
}

#[test]
fn predicts_a_hit_and_names_what_would_miss() {
    require("gcc");
    let env = project("direct");
    run_gcc(&env, "-DLEVEL=1", &[]);
    let mut cmd = vec!["--".to_string()];
    cmd.extend(gcc_args("-DLEVEL=1"));
    let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let out = why(&env, &cmd);
    assert!(out.contains("would hit the local cache"), "{out}");
    // It compiled nothing and stored nothing.
    assert_eq!(env.misses(), 1);
    assert_eq!(env.hits(), 0);
    env.write("include/foo.h", "#define FOO 7\n");
    env.write("inc1/config.h", "#define CFG 9\n");
    let out = why(&env, &cmd);
    assert!(out.contains("would miss the local cache"), "{out}");
    assert!(out.contains("include/foo.h changed content"), "{out}");
    assert!(
        out.contains("#include \"config.h\" now finds inc1/config.h (before: inc2/config.h)"),
        "{out}"
    );
    // Another -D: named against the record, before any compile.
    let mut other = cmd.clone();
    other[5] = "-DLEVEL=4";
    let out = why(&env, &other);
    assert!(out.contains("`-DLEVEL=1` became `-DLEVEL=4`"), "{out}");
    // The prediction was right: the compile misses.
    settle();
    run_gcc(&env, "-DLEVEL=1", &[]);
    assert_eq!(env.misses(), 2);
}

#[test]
fn nothing_to_explain_and_not_cacheable() {
    require("gcc");
    let env = project("direct");
    let o = env.farm(&["why", "a.c"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&env.work.join("a.c").display().to_string()),
        "{err}"
    );
    // A pass-through names its reason.
    compile(
        &env,
        &["gcc", "-E", "a.c", "-Iinclude", "-Iinc2", "-DLEVEL=1"],
        &[],
    );
    let out = why(&env, &["a.c"]);
    assert!(out.contains("not cacheable"), "{out}");
    assert!(out.contains("preprocess_only"), "{out}");
    // `farm cache clear` takes the records with the entries.
    env.farm_ok(&["cache", "clear"]);
    assert_eq!(env.farm(&["why", "a.c"]).status.code(), Some(1));
    let help = env.farm_ok(&["why", "--help"]);
    assert!(text(&help).contains("farm why"));
}

#[test]
fn a_damaged_record_is_named_and_the_next_miss_rewrites_it() {
    require("gcc");
    let env = project("direct");
    run_gcc(&env, "-DLEVEL=1", &[]);
    let why_dir = env.cache.join("why");
    let file = files_with_ext(&why_dir, "")
        .into_keys()
        .next()
        .map(|rel| why_dir.join(rel))
        .expect("a record after a miss");
    std::fs::write(&file, b"not a record").unwrap();
    let o = env.farm(&["why", "a.c"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("damaged") && err.contains(&file.display().to_string()),
        "{err}"
    );
    run_gcc(&env, "-DLEVEL=2", &[]);
    let out = why(&env, &["a.c"]);
    assert!(out.contains("no earlier record"), "{out}");
}
