//! farm-javac end to end: the real javac (OpenJDK 17), real Gradle 4.4.1 and Maven
//! from Debian, offline, and a real library from Debian sources. Every class file is
//! compared byte for byte with plain javac's.

mod common;
use common::farmd::*;
use common::*;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn javac() -> PathBuf {
    require("javac")
}

/// `farm-javac ARGS` (or plain javac) in `dir`.
fn run_javac(env: &Env, farm: bool, dir: &Path, args: &[&str]) -> Output {
    let prog = if farm { farm_javac_bin() } else { javac() };
    env.cmd(prog).current_dir(dir).args(args).output().unwrap()
}

fn ok(o: Output, what: &str) -> Output {
    assert!(
        o.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn classes(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    files_with_ext(dir, "")
}

fn assert_same_classes(plain: &Path, got: &Path, what: &str) {
    let (p, g) = (classes(plain), classes(got));
    assert!(!p.is_empty(), "{what}: the plain build wrote nothing");
    assert_same_objects(&p, &g, what);
}

/// A small project: a package with an inner class, a lambda, a deprecated call and an
/// unchecked call (javac prints notes for both).
fn write_project(env: &Env) {
    env.write(
        "proj/src/p/A.java",
        "package p;\npublic class A {\n  Runnable r = () -> {};\n  class In {}\n  @Deprecated public void f() {}\n}\n",
    );
    env.write(
        "proj/src/p/B.java",
        "package p;\npublic class B {\n  void g() { new A().f(); java.util.List l = new java.util.ArrayList(); l.add(1); }\n}\n",
    );
    env.write(
        "proj/src/q/C.java",
        "package q;\npublic class C { public static final int X = 1; }\n",
    );
}

#[test]
fn javac_misses_hits_and_replays_like_plain_javac() {
    javac();
    let env = Env::new("direct");
    write_project(&env);
    let proj = env.work.join("proj");
    // Gradle-style argfile: one token per line, quoted, a comment, an empty value.
    // The class path `""` is the working directory, so outputs go beside it: class
    // files under it would be inputs of the next compile.
    env.write(
        "proj/args.txt",
        "# written by a build tool\n-d\n\"../OUT\"\n-g\n-sourcepath\n\"\"\n-proc:none\n-classpath\n\"\"\n\
         'src/p/A.java'\nsrc/p/B.java\n\"src/q/C.java\"\n",
    );
    let args_for = |out: &str| {
        let t = fs::read_to_string(proj.join("args.txt"))
            .unwrap()
            .replace("OUT", out);
        fs::write(proj.join(format!("{out}.args")), t).unwrap();
        format!("@{out}.args")
    };
    let plain = ok(
        run_javac(&env, false, &proj, &[&args_for("plain")]),
        "javac",
    );
    assert!(!plain.stderr.is_empty(), "the project prints javac's notes");
    let cold = ok(
        run_javac(&env, true, &proj, &[&args_for("farm")]),
        "farm-javac",
    );
    assert_eq!(cold.stderr, plain.stderr, "a miss shows javac's own notes");
    assert_same_classes(&env.work.join("plain"), &env.work.join("farm"), "miss");
    assert_eq!(env.misses(), 1);

    // A hit restores every class file, inner and lambda classes included, and
    // replays the notes byte for byte.
    fs::remove_dir_all(env.work.join("farm")).unwrap();
    let warm = ok(
        run_javac(&env, true, &proj, &[&args_for("farm")]),
        "farm-javac",
    );
    assert_eq!(warm.stderr, plain.stderr, "a hit replays the notes");
    assert_eq!(warm.stdout, plain.stdout);
    assert_same_classes(&env.work.join("plain"), &env.work.join("farm"), "hit");
    assert_eq!(env.counter(&["hits", "declared"]), 1);
    // Another output directory is the same compile.
    ok(
        run_javac(&env, true, &proj, &[&args_for("elsewhere")]),
        "farm-javac",
    );
    assert_same_classes(&env.work.join("plain"), &env.work.join("elsewhere"), "hit");
    assert_eq!(env.counter(&["hits", "declared"]), 2);

    // An edited source is a miss, and its classes are javac's.
    std::thread::sleep(std::time::Duration::from_millis(20));
    env.write(
        "proj/src/q/C.java",
        "package q;\npublic class C { public static final int X = 2; }\n",
    );
    ok(
        run_javac(&env, false, &proj, &[&args_for("plain")]),
        "javac",
    );
    ok(
        run_javac(&env, true, &proj, &[&args_for("farm")]),
        "farm-javac",
    );
    assert_same_classes(&env.work.join("plain"), &env.work.join("farm"), "edited");
    assert_eq!(env.misses(), 2);

    // A compile error: javac's exit code and words, nothing stored.
    env.write("proj/bad/Bad.java", "class Bad { int x = \"no\"; }\n");
    let args = ["-d", "../badout", "-cp", "", "bad/Bad.java"];
    let p = run_javac(&env, false, &proj, &args);
    let f = run_javac(&env, true, &proj, &args);
    assert_eq!(f.status.code(), p.status.code());
    assert_ne!(f.status.code(), Some(0));
    assert_eq!(f.stderr, p.stderr);
    assert_eq!(env.counter(&["compile_failed"]), 1);

    // Version and help requests are the real javac's.
    for flag in ["-version", "-fullversion", "--help"] {
        let p = run_javac(&env, false, &proj, &[flag]);
        let f = run_javac(&env, true, &proj, &[flag]);
        assert_eq!(
            (f.status.code(), &f.stdout, &f.stderr),
            (p.status.code(), &p.stdout, &p.stderr),
            "{flag}"
        );
    }
    assert_eq!(env.counter(&["passthrough", "information"]), 3);
}

/// A hit whose output directory cannot be written is the user's error, not a damaged
/// entry: javac runs as it would and says why, and the entry stays for the next
/// compile (it used to be counted corrupt and deleted).
#[test]
fn an_unwritable_output_directory_on_a_hit_keeps_the_entry() {
    javac();
    let env = Env::new("direct");
    write_project(&env);
    let proj = env.work.join("proj");
    let args = |out: &str| {
        vec![
            "-d".to_string(),
            format!("../{out}"),
            "-proc:none".into(),
            "-cp".into(),
            String::new(),
            "src/p/A.java".into(),
            "src/p/B.java".into(),
            "src/q/C.java".into(),
        ]
    };
    let run = |farm: bool, out: &str| {
        let a = args(out);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        run_javac(&env, farm, &proj, &a)
    };
    ok(run(true, "first"), "farm-javac");
    assert_eq!(env.misses(), 1);
    // A regular file where javac must make the package directory `p`: no user,
    // root included, can write there.
    fs::create_dir_all(env.work.join("blocked")).unwrap();
    fs::write(env.work.join("blocked/p"), "not a directory").unwrap();
    let plain = run(false, "blocked");
    assert_ne!(
        plain.status.code(),
        Some(0),
        "set-up: javac cannot write there"
    );
    let farm = run(true, "blocked");
    assert_eq!(
        (farm.status.code(), &farm.stdout, &farm.stderr),
        (plain.status.code(), &plain.stdout, &plain.stderr),
        "javac's own failure"
    );
    assert_eq!(env.counter(&["errors", "corrupt_entries"]), 0);
    assert_eq!(env.counter(&["passthrough", "output_unwritable"]), 1);
    // The entry stayed.
    ok(run(true, "again"), "farm-javac");
    assert_eq!(env.counter(&["hits", "declared"]), 1);
    assert_eq!(env.misses(), 1);
    assert_same_classes(&env.work.join("first"), &env.work.join("again"), "hit");
}

/// Builds a jar from `files` (path → Java source) compiled against `cp`, with an
/// optional manifest Class-Path and extra raw entries.
fn make_jar(
    env: &Env,
    jar: &Path,
    files: &[(&str, &str)],
    cp: &str,
    class_path: Option<&str>,
    raw: &[(&str, &str)],
) {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let out = tmp.path().join("out");
    fs::create_dir_all(&out).unwrap();
    let mut args = vec![
        "-d".to_string(),
        out.display().to_string(),
        "-cp".to_string(),
        cp.to_string(),
    ];
    for (rel, text) in files {
        let p = src.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, text).unwrap();
        args.push(p.display().to_string());
    }
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(run_javac(env, false, tmp.path(), &a), "javac for a jar");
    for (rel, text) in raw {
        let p = out.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }
    fs::create_dir_all(jar.parent().unwrap()).unwrap();
    let mf = tmp.path().join("MANIFEST.MF");
    let mut m = "Manifest-Version: 1.0\n".to_string();
    if let Some(cp) = class_path {
        m.push_str(&format!("Class-Path: {cp}\n"));
    }
    fs::write(&mf, m).unwrap();
    let o = Command::new(require("jar"))
        .arg("cfm")
        .arg(jar)
        .arg(&mf)
        .arg("-C")
        .arg(&out)
        .arg(".")
        .output()
        .unwrap();
    ok(o, "jar");
}

#[test]
fn classpath_jars_manifests_and_class_directories_are_keyed_by_content() {
    javac();
    let env = Env::new("direct");
    let w = env.work.clone();
    // b.jar holds a constant javac inlines; a.jar reaches it only through its
    // manifest's Class-Path.
    let b_src =
        |x: u32| format!("package b;\npublic class B {{ public static final int X = {x}; }}\n");
    make_jar(
        &env,
        &w.join("libs/b.jar"),
        &[("b/B.java", &b_src(1))],
        "",
        None,
        &[],
    );
    make_jar(
        &env,
        &w.join("libs/a.jar"),
        &[("a/A.java", "package a;\npublic class A {}\n")],
        "",
        Some("b.jar"),
        &[],
    );
    env.write("app/U.java", "public class U { a.A a; int x = b.B.X; }\n");
    let args = ["-d", "out", "-proc:none", "-cp", "libs/a.jar", "app/U.java"];
    let plain_args = [
        "-d",
        "plain",
        "-proc:none",
        "-cp",
        "libs/a.jar",
        "app/U.java",
    ];
    ok(run_javac(&env, false, &w, &plain_args), "javac");
    ok(run_javac(&env, true, &w, &args), "farm-javac");
    assert_same_classes(&w.join("plain"), &w.join("out"), "jar miss");
    ok(run_javac(&env, true, &w, &args), "farm-javac");
    assert_eq!(env.counter(&["hits", "declared"]), 1);
    // b.jar changes: U inlines the new constant, so this must be a miss.
    std::thread::sleep(std::time::Duration::from_millis(30));
    make_jar(
        &env,
        &w.join("libs/b.jar"),
        &[("b/B.java", &b_src(2))],
        "",
        None,
        &[],
    );
    ok(run_javac(&env, false, &w, &plain_args), "javac");
    ok(run_javac(&env, true, &w, &args), "farm-javac");
    assert_eq!(env.misses(), 2, "a jar named by a manifest is an input");
    assert_same_classes(&w.join("plain"), &w.join("out"), "manifest jar changed");

    // A class directory on the class path, by the class files in it.
    env.write(
        "dep/d/D.java",
        "package d;\npublic class D { public static final int Y = 5; }\n",
    );
    ok(
        run_javac(&env, false, &w, &["-d", "depcls", "dep/d/D.java"]),
        "javac",
    );
    env.write("app2/V.java", "public class V { int y = d.D.Y; }\n");
    let args = [
        "-d",
        "out2",
        "-proc:none",
        "-cp",
        "depcls",
        "-sourcepath",
        "",
        "app2/V.java",
    ];
    ok(run_javac(&env, true, &w, &args), "farm-javac");
    fs::write(w.join("depcls/d/notes.txt"), "javac never reads this").unwrap();
    ok(run_javac(&env, true, &w, &args), "farm-javac");
    assert_eq!(
        env.counter(&["hits", "declared"]),
        2,
        "unread files are not inputs"
    );
    std::thread::sleep(std::time::Duration::from_millis(30));
    env.write(
        "dep/d/D.java",
        "package d;\npublic class D { public static final int Y = 6; }\n",
    );
    ok(
        run_javac(&env, false, &w, &["-d", "depcls", "dep/d/D.java"]),
        "javac",
    );
    ok(run_javac(&env, true, &w, &args), "farm-javac");
    assert_eq!(env.misses(), 4, "a changed class file is a miss");
    let plain2 = [
        "-d",
        "plain2",
        "-proc:none",
        "-cp",
        "depcls",
        "-sourcepath",
        "",
        "app2/V.java",
    ];
    ok(run_javac(&env, false, &w, &plain2), "javac");
    assert_same_classes(&w.join("plain2"), &w.join("out2"), "class dir changed");

    // A jar that declares an annotation processor: javac would run it, so farm does
    // not cache; with -proc:none it does.
    make_jar(
        &env,
        &w.join("libs/proc.jar"),
        &[("x/P.java", "package x;\npublic class P {}\n")],
        "",
        None,
        &[(
            "META-INF/services/javax.annotation.processing.Processor",
            "x.Missing\n",
        )],
    );
    let with_proc = [
        "-d",
        "out3",
        "-cp",
        "libs/proc.jar",
        "app2/V.java",
        "-cp",
        "depcls",
    ];
    let _ = with_proc;
    let o = run_javac(
        &env,
        true,
        &w,
        &[
            "-d",
            "out3",
            "-cp",
            "libs/proc.jar:depcls",
            "-sourcepath",
            "",
            "app2/V.java",
        ],
    );
    let p = run_javac(
        &env,
        false,
        &w,
        &[
            "-d",
            "out3",
            "-cp",
            "libs/proc.jar:depcls",
            "-sourcepath",
            "",
            "app2/V.java",
        ],
    );
    assert_eq!((o.status.code(), &o.stderr), (p.status.code(), &p.stderr));
    assert_eq!(env.counter(&["passthrough", "annotation_processors"]), 1);
    let before = env.misses();
    ok(
        run_javac(
            &env,
            true,
            &w,
            &[
                "-d",
                "out3",
                "-proc:none",
                "-cp",
                "libs/proc.jar:depcls",
                "-sourcepath",
                "",
                "app2/V.java",
            ],
        ),
        "farm-javac -proc:none",
    );
    assert_eq!(env.misses(), before + 1);
}

/// One farmd on loopback whose agent socket the shims use.
fn one_farmd() -> Cluster {
    let c = Cluster::new(&["solo"], |_| String::new());
    let t0 = std::time::Instant::now();
    while c.nodes[0].try_status().is_none() {
        assert!(t0.elapsed().as_secs() < 20, "farmd did not start");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    c
}

#[test]
fn farmd_warm_jvm_compiles_misses_like_a_fresh_javac() {
    javac();
    let farmd = one_farmd();
    let env = Env::new("direct");
    write_project(&env);
    let proj = env.work.join("proj");
    let socket = farmd.nodes[0].socket();
    let abs = |rel: &str| proj.join(rel).display().to_string();
    let args_to = |out: &str| {
        vec![
            "-d".to_string(),
            abs(out),
            "-proc:none".into(),
            "-cp".into(),
            "".into(),
            "-sourcepath".into(),
            "".into(),
            abs("src/p/A.java"),
            abs("src/p/B.java"),
            abs("src/q/C.java"),
        ]
    };
    let run = |out: &str, farm: bool| {
        let a = args_to(out);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let prog = if farm { farm_javac_bin() } else { javac() };
        env.cmd(prog)
            .env("FARM_AGENT", &socket)
            .current_dir(&proj)
            .args(&a)
            .output()
            .unwrap()
    };
    let plain = ok(run("plain", false), "javac");
    // Three misses in the warm JVM (each edit makes a new key): every class file
    // and every note equal to a fresh javac's.
    for i in 0..3 {
        if i > 0 {
            std::thread::sleep(std::time::Duration::from_millis(20));
            env.write(
                "proj/src/q/C.java",
                &format!("package q;\npublic class C {{ public static final int X = {i}; }}\n"),
            );
            ok(run("plain", false), "javac");
        }
        let f = ok(run("farm", true), "farm-javac");
        assert_eq!(f.stderr, plain.stderr, "warm notes are javac's");
        assert_same_classes(&proj.join("plain"), &proj.join("farm"), "warm miss");
    }
    assert_eq!(
        env.counter(&["warm", "compiled"]),
        3,
        "{}",
        String::from_utf8_lossy(&fs::read(&env.log).unwrap_or_default())
    );
    // A jar rewritten at the same path between two warm compiles: the warm JVM reads
    // the new one (a fresh file manager per compile), exactly as a fresh javac does.
    let jar = proj.join("libs/k.jar");
    let k_src =
        |x: u32| format!("package k;\npublic class K {{ public static final int V = {x}; }}\n");
    env.write(
        "proj/src/u/U.java",
        "package u;\npublic class U { int v = k.K.V; }\n",
    );
    let uses_jar = |out: &str, farm: bool| {
        let prog = if farm { farm_javac_bin() } else { javac() };
        let o = env
            .cmd(prog)
            .env("FARM_AGENT", &socket)
            .current_dir(&proj)
            .arg("-d")
            .arg(abs(out))
            .arg("-cp")
            .arg(&jar)
            .arg(abs("src/u/U.java"))
            .output()
            .unwrap();
        ok(o, "javac with a jar")
    };
    for x in [1, 2] {
        std::thread::sleep(std::time::Duration::from_millis(30));
        make_jar(&env, &jar, &[("k/K.java", &k_src(x))], "", None, &[]);
        uses_jar("jarplain", false);
        uses_jar("jarfarm", true);
        assert_same_classes(
            &proj.join("jarplain"),
            &proj.join("jarfarm"),
            "warm, jar rewritten",
        );
    }
    assert_eq!(env.counter(&["warm", "compiled"]), 5);
    // A failing compile is shown by a fresh javac, in its own words.
    env.write(
        "proj/src/q/C.java",
        "package q;\npublic class C { int x = \"s\"; }\n",
    );
    let p = run("plain", false);
    let f = run("farm", true);
    assert_ne!(p.status.code(), Some(0));
    assert_eq!((f.status.code(), &f.stderr), (p.status.code(), &p.stderr));
    assert_eq!(env.counter(&["warm", "declined", "failed"]), 1);
    // Relative paths: javac names files as given, the warm JVM could not; with notes
    // printed the warm result is not used and a fresh javac runs.
    env.write("proj/src/q/C.java", "package q;\npublic class C { }\n");
    let rel = [
        "-d",
        "relout",
        "-cp",
        "",
        "-sourcepath",
        "",
        "src/p/A.java",
        "src/p/B.java",
    ];
    let p = ok(
        run_javac(
            &env,
            false,
            &proj,
            &[
                "-d",
                "relplain",
                "-cp",
                "",
                "-sourcepath",
                "",
                "src/p/A.java",
                "src/p/B.java",
            ],
        ),
        "javac",
    );
    let f = ok(
        env.cmd(farm_javac_bin())
            .env("FARM_AGENT", &socket)
            .current_dir(&proj)
            .args(rel)
            .output()
            .unwrap(),
        "farm-javac",
    );
    assert_eq!(f.stderr, p.stderr);
    assert_same_classes(&proj.join("relplain"), &proj.join("relout"), "relative");
    assert_eq!(env.counter(&["warm", "declined", "diagnostics_paths"]), 1);
}

fn gradle_project(root: &Path) {
    let w = |rel: &str, text: &str| {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    };
    w(
        "settings.gradle",
        "rootProject.name = 'multi'\ninclude 'lib', 'app'\n",
    );
    w(
        "build.gradle",
        "subprojects {\n  apply plugin: 'java'\n  sourceCompatibility = '1.8'\n  targetCompatibility = '1.8'\n}\n\
         project(':app') { dependencies { compile project(':lib') } }\n",
    );
    w(
        "lib/src/main/java/lib/Greeter.java",
        "package lib;\npublic class Greeter {\n  public static final String HELLO = \"hello\";\n  public String greet(String n) { return HELLO + \", \" + n; }\n}\n",
    );
    w(
        "lib/src/main/java/lib/util/Strings.java",
        "package lib.util;\npublic final class Strings {\n  private Strings() {}\n  public static String twice(String s) { return s + s; }\n}\n",
    );
    w(
        "app/src/main/java/app/Main.java",
        "package app;\nimport lib.Greeter;\nimport lib.util.Strings;\npublic class Main {\n  public static void main(String[] a) {\n    Runnable r = () -> System.out.println(new Greeter().greet(Strings.twice(\"x\")));\n    r.run();\n  }\n}\n",
    );
}

fn gradle(env: &Env, dir: &Path, gradle_home: &Path, farm: bool) {
    let mut c = env.cmd(require("gradle"));
    c.current_dir(dir)
        .args(["--offline", "--no-daemon", "-q", "compileJava"])
        .env("GRADLE_USER_HOME", gradle_home)
        .env("FARM_GRADLE", if farm { "1" } else { "0" });
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "gradle failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn gradle_classes(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut all = BTreeMap::new();
    for m in ["lib", "app"] {
        for (k, v) in classes(&dir.join(m).join("build/classes/java/main")) {
            all.insert(format!("{m}/{k}"), v);
        }
    }
    all
}

#[test]
fn gradle_multi_module_cold_warm_and_incremental_through_the_init_script() {
    javac();
    let env = Env::new("direct");
    let gradle_home = env.root.path().join("gradle-home");
    // `farm gradle-init --install` writes the init script; no build file changes.
    let o = env
        .cmd(farm_bin())
        .env("GRADLE_USER_HOME", &gradle_home)
        .args(["gradle-init", "--install"])
        .output()
        .unwrap();
    ok(o, "farm gradle-init --install");
    assert!(gradle_home.join("init.d/farm.gradle").is_file());
    let plain = env.work.join("plain");
    let farm = env.work.join("farm");
    gradle_project(&plain);
    gradle_project(&farm);
    gradle(&env, &plain, &gradle_home, false);
    assert_eq!(env.misses(), 0, "FARM_GRADLE=0 leaves Gradle alone");
    // Cold: both modules miss; classes equal to plain Gradle's.
    gradle(&env, &farm, &gradle_home, true);
    assert_eq!(env.misses(), 2);
    assert_same_objects(
        &gradle_classes(&plain),
        &gradle_classes(&farm),
        "gradle cold",
    );
    // Warm: a clean build is answered from the cache.
    fs::remove_dir_all(farm.join("lib/build")).unwrap();
    fs::remove_dir_all(farm.join("app/build")).unwrap();
    gradle(&env, &farm, &gradle_home, true);
    assert_eq!(env.counter(&["hits", "declared"]), 2);
    assert_same_objects(
        &gradle_classes(&plain),
        &gradle_classes(&farm),
        "gradle warm",
    );
    // Incremental: one edit in lib; Gradle recompiles what it decides to, with its
    // own output directory on the class path, and the result equals plain Gradle's.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let edit = |root: &Path| {
        let f = root.join("lib/src/main/java/lib/util/Strings.java");
        let t = fs::read_to_string(&f)
            .unwrap()
            .replace("return s + s;", "return s + \"-\" + s;");
        fs::write(f, t).unwrap();
    };
    edit(&plain);
    edit(&farm);
    gradle(&env, &plain, &gradle_home, false);
    let misses = env.misses();
    gradle(&env, &farm, &gradle_home, true);
    assert!(env.misses() > misses, "the edit is compiled");
    assert_same_objects(
        &gradle_classes(&plain),
        &gradle_classes(&farm),
        "gradle incremental",
    );
}

fn maven_project(root: &Path) {
    let w = |rel: &str, text: &str| {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    };
    w(
        "pom.xml",
        r#"<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>farm.test</groupId>
  <artifactId>mp</artifactId>
  <version>1.0</version>
  <properties>
    <project.build.sourceEncoding>UTF-8</project.build.sourceEncoding>
    <maven.compiler.source>8</maven.compiler.source>
    <maven.compiler.target>8</maven.compiler.target>
  </properties>
  <build>
    <plugins>
      <plugin>
        <groupId>org.apache.maven.plugins</groupId>
        <artifactId>maven-compiler-plugin</artifactId>
        <version>3.10.1</version>
      </plugin>
      <plugin>
        <groupId>org.apache.maven.plugins</groupId>
        <artifactId>maven-resources-plugin</artifactId>
        <version>3.3.0</version>
      </plugin>
    </plugins>
  </build>
</project>
"#,
    );
    w(
        "src/main/java/m/Shape.java",
        "package m;\npublic interface Shape { double area(); }\n",
    );
    w(
        "src/main/java/m/Circle.java",
        "package m;\npublic final class Circle implements Shape {\n  private final double r;\n  public Circle(double r) { this.r = r; }\n  public double area() { return Math.PI * r * r; }\n}\n",
    );
    w(
        "src/main/java/m/Shapes.java",
        "package m;\nimport java.util.*;\npublic class Shapes {\n  public static double total(List<Shape> s) { return s.stream().mapToDouble(Shape::area).sum(); }\n}\n",
    );
}

fn maven(env: &Env, dir: &Path, settings: &Path, farm: bool) {
    let mut c = env.cmd(require("mvn"));
    c.current_dir(dir)
        .args(["-q", "-o", "-gs", "/etc/maven/settings-debian.xml", "-s"])
        .arg(settings)
        .arg("compile");
    if farm {
        c.env("FARM_MAVEN", "1");
    }
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "mvn failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn maven_project_cold_then_warm_through_a_settings_profile() {
    javac();
    let env = Env::new("direct");
    // `farm maven-init` prints a settings file whose profile is on when FARM_MAVEN is set.
    let o = ok(env.farm(&["maven-init"]), "farm maven-init");
    let settings = env.root.path().join("farm-settings.xml");
    fs::write(&settings, &o.stdout).unwrap();
    let plain = env.work.join("plain");
    let farm = env.work.join("farm");
    maven_project(&plain);
    maven_project(&farm);
    maven(&env, &plain, &settings, false);
    assert_eq!(
        env.misses(),
        0,
        "without FARM_MAVEN Maven runs javac in-process"
    );
    maven(&env, &farm, &settings, true);
    assert_eq!(env.misses(), 1);
    let got = |d: &Path| classes(&d.join("target/classes"));
    assert_same_objects(&got(&plain), &got(&farm), "maven cold");
    fs::remove_dir_all(farm.join("target")).unwrap();
    maven(&env, &farm, &settings, true);
    assert_eq!(env.counter(&["hits", "declared"]), 1);
    assert_same_objects(&got(&plain), &got(&farm), "maven warm");
}

#[test]
fn commons_io_from_debian_cold_then_warm() {
    javac();
    let src = sources("commons-io");
    let env = Env::new("direct");
    let tree = env.work.join("commons-io");
    copy_tree(&src, &tree);
    let mut list: Vec<String> = files_with_ext(&tree.join("src/main/java"), "java")
        .into_keys()
        .map(|k| tree.join("src/main/java").join(k).display().to_string())
        .collect();
    list.sort();
    assert!(list.len() > 150, "commons-io has {} sources", list.len());
    // As Gradle calls javac: an argfile, absolute paths, jars from /usr/share/java.
    let argfile = |out: &str| {
        let mut t = format!(
            "--release\n8\n-d\n{}\n-g\n-sourcepath\n\"\"\n-proc:none\n-classpath\n/usr/share/java/junit4.jar\n",
            tree.join(out).display()
        );
        for s in &list {
            t.push_str(s);
            t.push('\n');
        }
        let p = tree.join(format!("{out}.args"));
        fs::write(&p, t).unwrap();
        format!("@{}", p.display())
    };
    ok(run_javac(&env, false, &tree, &[&argfile("plain")]), "javac");
    let cold = ok(
        run_javac(&env, true, &tree, &[&argfile("farm")]),
        "farm-javac",
    );
    assert_same_classes(&tree.join("plain"), &tree.join("farm"), "commons-io cold");
    fs::remove_dir_all(tree.join("farm")).unwrap();
    let warm = ok(
        run_javac(&env, true, &tree, &[&argfile("farm")]),
        "farm-javac",
    );
    assert_eq!(warm.stderr, cold.stderr);
    assert_same_classes(&tree.join("plain"), &tree.join("farm"), "commons-io warm");
    assert_eq!((env.misses(), env.counter(&["hits", "declared"])), (1, 1));
}

/// Blobs a farmd keeps, by file count (the store's `.b` files).
fn blob_count(node: &Node) -> usize {
    files_with_ext(&node.dir.join("state/blobs"), "b").len()
}

#[test]
fn remote_javac_ships_blobs_once_and_matches_plain() {
    javac();
    let farm = Cluster::home_and_peer();
    let env = Env::new("direct");
    let w = env.work.clone();
    make_jar(
        &env,
        &w.join("libs/b.jar"),
        &[(
            "b/B.java",
            "package b;\npublic class B { public static final int X = 7; }\n",
        )],
        "",
        None,
        &[],
    );
    write_project(&env);
    env.write(
        "proj/src/q/D.java",
        "package q;\npublic class D { int x = b.B.X; Runnable r = () -> {}; }\n",
    );
    let sources = [
        "src/p/A.java",
        "src/p/B.java",
        "src/q/C.java",
        "src/q/D.java",
    ];
    let args = |out: &str| {
        let mut a = vec![
            "-d".to_string(),
            w.join(out).display().to_string(),
            "-classpath".into(),
            w.join("libs/b.jar").display().to_string(),
            "-sourcepath".into(),
            "".into(),
            "-proc:none".into(),
        ];
        a.extend(
            sources
                .iter()
                .map(|s| w.join("proj").join(s).display().to_string()),
        );
        a
    };
    let run = |out: &str, farm_on: bool| {
        let a = args(out);
        let prog = if farm_on { farm_javac_bin() } else { javac() };
        env.cmd(prog)
            .env("FARM_AGENT", farm.nodes[0].socket())
            .current_dir(w.join("proj"))
            .args(&a)
            .output()
            .unwrap()
    };
    let plain = ok(run("plain", false), "javac");
    let f = ok(run("farm", true), "farm-javac");
    assert_eq!(
        f.stderr, plain.stderr,
        "the peer's notes name this machine's paths"
    );
    assert_same_classes(&w.join("plain"), &w.join("farm"), "remote javac");
    assert_eq!(
        env.counter(&["farm", "remote"]),
        1,
        "{}",
        String::from_utf8_lossy(&fs::read(&env.log).unwrap_or_default())
    );
    let shipped = blob_count(&farm.nodes[1]);
    assert_eq!(shipped, sources.len() + 1, "four sources and the jar");
    // Another machine's shim (an empty local cache) is answered by the farm's cache.
    // (The first shim published its result asynchronously through its agent.)
    std::thread::sleep(std::time::Duration::from_millis(300));
    let other = Env::new("direct");
    let a = args("farm2");
    let o = other
        .cmd(farm_javac_bin())
        .env("FARM_AGENT", farm.nodes[0].socket())
        .current_dir(w.join("proj"))
        .args(&a)
        .output()
        .unwrap();
    assert_eq!(ok(o, "farm-javac, farm hit").stderr, plain.stderr);
    assert_eq!(other.counter(&["hits", "farm"]), 1);
    assert_same_classes(&w.join("plain"), &w.join("farm2"), "farm cache hit");
    // One edit: only that source crosses the wire again; the jar stays there.
    std::thread::sleep(std::time::Duration::from_millis(20));
    env.write(
        "proj/src/q/C.java",
        "package q;\npublic class C { public static final int X = 3; }\n",
    );
    ok(run("plain", false), "javac");
    ok(run("farm", true), "farm-javac");
    assert_same_classes(
        &w.join("plain"),
        &w.join("farm"),
        "remote javac after an edit",
    );
    assert_eq!(env.counter(&["farm", "remote"]), 2);
    assert_eq!(blob_count(&farm.nodes[1]), shipped + 1);
    let status = farm.nodes[0].status();
    assert!(
        status["peers"][0]["jobs_ok"].as_u64().unwrap() >= 2,
        "{status}"
    );
}

#[test]
fn the_real_javac_is_found_and_never_farm_itself() {
    let real = javac();
    let env = Env::new("direct");
    // A masquerade directory first on PATH: its `javac` is farm.
    std::os::unix::fs::symlink(farm_bin(), env.bin.join("javac")).unwrap();
    let path = format!(
        "{}:{}",
        env.bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let want = Command::new(&real).arg("-version").output().unwrap();
    let via_path = env
        .cmd(farm_javac_bin())
        .env("PATH", &path)
        .env_remove("JAVA_HOME")
        .arg("-version")
        .output()
        .unwrap();
    assert!(
        want.stdout.starts_with(b"javac "),
        "javac -version prints its version"
    );
    assert_eq!(
        (via_path.status.code(), &via_path.stdout, &via_path.stderr),
        (want.status.code(), &want.stdout, &want.stderr)
    );
    // The masquerade link itself compiles through farm with the real javac behind it.
    env.write("m/A.java", "class A {}\n");
    let o = env
        .cmd(env.bin.join("javac"))
        .env("PATH", &path)
        .args(["-d", "mout", "-cp", "", "m/A.java"])
        .output()
        .unwrap();
    ok(o, "javac masquerade");
    assert_eq!(env.misses(), 1);
    // JAVA_HOME names the JDK when FARM_JAVAC does not.
    let home = std::fs::canonicalize(&real).unwrap();
    let home = home.parent().unwrap().parent().unwrap();
    let via_home = env
        .cmd(farm_javac_bin())
        .env("PATH", "/nonexistent")
        .env("JAVA_HOME", home)
        .arg("-version")
        .output()
        .unwrap();
    assert_eq!(
        (&via_home.stdout, &via_home.stderr),
        (&want.stdout, &want.stderr)
    );
    // FARM_JAVAC naming farm is refused with a clear one-line error.
    let o = env
        .cmd(farm_javac_bin())
        .env("FARM_JAVAC", env.bin.join("javac"))
        .arg("-version")
        .output()
        .unwrap();
    assert!(!o.status.success());
    let msg = String::from_utf8_lossy(&o.stderr);
    assert!(msg.contains("is farm itself"), "{msg}");
    assert_eq!(msg.lines().count(), 1, "{msg}");
}

#[test]
fn internal_options_run_javac_untouched_except_gradles() {
    javac();
    let env = Env::new("direct");
    env.write(
        "x/A.java",
        "import java.util.*;\nclass A { List<String> l = Arrays.asList(\"a\"); Object o = Collections.emptyList(); }\n",
    );
    let dir = env.work.join("x");
    fs::create_dir_all(dir.join("graphs")).unwrap();
    // `-XD` reaches javac's internals: here it writes files a hit would never write.
    let dump = [
        "-d",
        "out",
        "-XDdebug.dumpInferenceGraphsTo=graphs",
        "A.java",
    ];
    for round in 0..2 {
        fs::remove_dir_all(dir.join("graphs")).unwrap();
        fs::create_dir_all(dir.join("graphs")).unwrap();
        ok(run_javac(&env, true, &dir, &dump), "farm-javac -XD");
        let n = fs::read_dir(dir.join("graphs")).unwrap().count();
        assert!(
            n > 0,
            "round {round}: javac itself ran and dumped its graphs"
        );
    }
    assert_eq!(env.counter(&["passthrough", "javac_internal_option"]), 2);
    assert_eq!(env.misses(), 0);

    // Gradle's -XDuseUnsharedTable=true is cached like any compile.
    // (An empty class path: the default one, `.`, holds the outputs.)
    fs::create_dir_all(dir.join("cp")).unwrap();
    let gradle = [
        "-d",
        "gout",
        "-cp",
        "cp",
        "-XDuseUnsharedTable=true",
        "A.java",
    ];
    ok(
        run_javac(&env, false, &dir, &["-d", "plain", "-cp", "cp", "A.java"]),
        "javac",
    );
    for _ in 0..2 {
        ok(run_javac(&env, true, &dir, &gradle), "farm-javac");
    }
    assert_eq!(env.misses(), 1);
    assert_eq!(env.counter(&["hits", "declared"]), 1);
    assert_same_classes(&dir.join("plain"), &dir.join("gout"), "-XDuseUnsharedTable");
}

/// javac instantiates every plugin service on the processor path (the class path when
/// none is given), even under `-proc:none`: code from the path runs in javac. Such a
/// compile runs the real javac untouched, every time, whichever path holds the plugin.
#[test]
fn a_plugin_on_a_search_path_runs_javac_untouched() {
    javac();
    let env = Env::new("direct");
    env.write(
        "plug/src/evil/Evil.java",
        "package evil;\nimport com.sun.source.util.*;\npublic class Evil implements Plugin {\n  static { try { java.nio.file.Files.writeString(java.nio.file.Path.of(\"ran\"), \"x\"); } catch (Exception e) {} }\n  public String getName() { return \"Evil\"; }\n  public void init(JavacTask t, String... a) {}\n  public boolean autoStart() { return true; }\n}\n",
    );
    env.write(
        "plug/cls/META-INF/services/com.sun.source.util.Plugin",
        "evil.Evil\n",
    );
    let plug = env.work.join("plug");
    ok(
        run_javac(&env, false, &plug, &["-d", "cls", "src/evil/Evil.java"]),
        "javac Evil",
    );
    let jar = Command::new(require("jar"))
        .current_dir(plug.join("cls"))
        .args(["cf", "../evil.jar", "."])
        .output()
        .unwrap();
    assert!(jar.status.success());
    env.write("plug/A.java", "class A { int x = 1; }\n");
    let cases: [&[&str]; 3] = [
        &["-proc:none", "-cp", "evil.jar", "-d", "o1", "A.java"],
        &[
            "-proc:none",
            "-processorpath",
            "evil.jar",
            "-d",
            "o2",
            "A.java",
        ],
        &["-cp", "cls", "-d", "o3", "A.java"],
    ];
    for (i, args) in cases.iter().enumerate() {
        for round in 0..2 {
            let _ = fs::remove_file(plug.join("ran"));
            ok(
                run_javac(&env, true, &plug, args),
                "farm-javac with a plugin",
            );
            assert!(
                plug.join("ran").exists(),
                "case {i}, round {round}: javac itself ran (and with it the plugin)"
            );
        }
    }
    assert_eq!(env.counter(&["passthrough", "compiler_plugin"]), 6);
    assert_eq!(env.misses(), 0);
}
