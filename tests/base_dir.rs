//! `base_dir` (FARM_BASE_DIR): the same project in two checkouts at different absolute
//! paths shares cache entries, and never where the output depends on the path. Each
//! compile in checkout B is checked against the real compiler run with the same
//! command in B: object, dependency file and messages byte for byte.

mod common;
use common::servers::*;
use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A small C project in checkout `dir`: a header, a plain source, one using
/// `assert`, one naming `__FILE__`, one with a warning, one measuring `__FILE__`
/// through a header outside the checkout (`ext`), one asking the compiler for its
/// file name, one including a file by a macro that names checkout `a` (copied
/// checkouts keep such generated paths).
fn small_project(dir: &Path, a: &Path, ext: &Path) {
    let paths_h = format!("#define CFG \"{}/inc/h.h\"\n", a.display());
    let q_c = format!(
        "int q(void) {{ int unused; const char *p = \"{}/data\"; return p[0]; }}\n",
        a.display()
    );
    // A line that starts with checkout A's path (clang quotes it as it is, like a
    // location).
    let s_c = format!(
        "int s(void) {{ const char *p = \"x\\\n{}/data\"; int unused; return p[0]; }}\n",
        a.display()
    );
    // A generated header naming its own checkout (CMake's configure_file), unused
    // by the code: the text compiled is the same in every checkout.
    let cfg_h = format!(
        "#include \"h.h\"\n#define DATA_DIR \"{}/data\"\n",
        dir.display()
    );
    let files: [(&str, &str); 12] = [
        ("inc/h.h", "#define V 3\n"),
        ("src/x.c", "#include \"h.h\"\nint f(void) { return V; }\n"),
        (
            "src/y.c",
            "#include <assert.h>\n#include \"h.h\"\nint g(int a) { assert(a > V); return a; }\n",
        ),
        (
            "src/f.c",
            "#include \"h.h\"\nconst char *where(void) { return __FILE__; }\n",
        ),
        (
            "src/w.c",
            "#include \"h.h\"\nint w(void) { int unused; return V; }\n",
        ),
        (
            "src/z.c",
            "#include <log.h>\nint len(void) { return FILE_LEN; }\n",
        ),
        (
            "src/bf.c",
            "int len(void) { return __builtin_strlen(__builtin_FILE()); }\n",
        ),
        ("src/paths.h", &paths_h),
        ("src/q.c", &q_c),
        ("src/s.c", &s_c),
        ("inc/cfg.h", &cfg_h),
        ("src/g.c", "#include \"cfg.h\"\nint g(void) { return V; }\n"),
    ];
    fs::create_dir_all(ext).unwrap();
    fs::write(
        ext.join("log.h"),
        "#define FILE_LEN ((int)sizeof(__FILE__) - 1)\n",
    )
    .unwrap();

    for (rel, text) in files {
        let p = dir.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, text).unwrap();
    }
    fs::write(
        dir.join("src/c.c"),
        "#include \"paths.h\"\n#include CFG\nint c(void) { return V; }\n",
    )
    .unwrap();
    fs::create_dir_all(dir.join("build")).unwrap();
    // Like a real checkout, not edited in the instant a build starts (farm records
    // nothing for inputs changed within a clock tick of a compile).
    std::thread::sleep(std::time::Duration::from_millis(50));
}

/// What one compile left: its object, dependency file and messages.
#[derive(Debug, PartialEq, Eq)]
struct Compiled {
    object: Vec<u8>,
    depfile: Vec<u8>,
    stderr: Vec<u8>,
}

fn compile(env: &Env, cc: &str, farm: bool, checkout: &Path, args: &[String]) -> Compiled {
    let build = checkout.join("build");
    let _ = fs::remove_file(build.join("o.o"));
    let _ = fs::remove_file(build.join("o.d"));
    let mut c = if farm {
        let mut c = env.cmd(farm_bin());
        c.arg(cc);
        c
    } else {
        Command::new(cc)
    };
    let o = c
        .current_dir(&build)
        .env("FARM_BASE_DIR", checkout)
        .args(args)
        .args(["-MD", "-MF", "o.d", "-o", "o.o"])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    Compiled {
        object: fs::read(build.join("o.o")).unwrap(),
        depfile: fs::read(build.join("o.d")).unwrap(),
        stderr: o.stderr,
    }
}

/// Each case: the arguments (with `@` for the checkout, `%` for the directory
/// above both checkouts) and whether checkout B may hit what A stored (in
/// preprocessor mode: `PP_ONLY_HOME` lists those it may not).
const CASES: [(&str, bool); 15] = [
    ("-O2 -c @/src/x.c -I@/inc", true),
    // An include directory through `..`: named as written.
    ("-O2 -c @/src/x.c -I@/src/../inc", true),
    // assert() puts the source's path into the object.
    ("-O2 -c @/src/y.c -I@/inc", false),
    ("-c @/src/f.c -I@/inc", false),
    // The warning names the source by its path: written with B's (direct and
    // depend modes, which know no file read names the checkout).
    ("-Wall -c @/src/w.c -I@/inc", true),
    // A warning quoting a line that names checkout A: as the compiler quotes it.
    ("-Wall -c @/src/q.c -I@/inc", false),
    ("-Wall -c @/src/s.c -I@/inc", false),
    // A header that differs only in naming its checkout, unused: no manifest
    // entry matches, the preprocessed text does (not in depend mode, which runs
    // no preprocessor).
    ("-O2 -c @/src/g.c -I@/inc", true),
    // Debug info records the paths...
    ("-g -c @/src/x.c -I@/inc", false),
    // ...unless a prefix map rewrites the checkout...
    ("-g -ffile-prefix-map=@=. -c @/src/x.c -I@/inc", true),
    // ...itself: a map of a directory above it leaves the rest in the output.
    ("-fmacro-prefix-map=%=~ -c @/src/f.c -I@/inc", false),
    // LTO data records locations.
    ("-O2 -flto -frandom-seed=1 -c @/src/x.c -I@/inc", false),
    // A header elsewhere computes with the path of the file using it.
    ("-O2 -c @/src/z.c -I%/ext", false),
    // A builtin takes the path from the line markers.
    ("-O2 -c @/src/bf.c", false),
    // A macro names checkout A's header: B's compile reads A's.
    ("-c @/src/c.c -I@/inc", false),
];

/// Cases preprocessor mode keeps apart although the others share them: it cannot
/// tell whether a file read names the checkout, so messages stay home.
const PP_ONLY_HOME: [&str; 1] = ["-Wall -c @/src/w.c -I@/inc"];

/// Cases only a lookup by preprocessed text shares, which depend mode never makes.
const DEPEND_ONLY_HOME: [&str; 1] = ["-O2 -c @/src/g.c -I@/inc"];

fn args_in(case: &str, checkout: &Path) -> Vec<String> {
    let above = checkout.ancestors().nth(3).unwrap();
    case.split(' ')
        .map(|a| {
            a.replace('@', checkout.to_str().unwrap())
                .replace('%', above.to_str().unwrap())
        })
        .collect()
}

#[test]
fn two_checkouts_share_entries_only_where_outputs_do_not_name_the_path() {
    for cc in ["gcc", "clang"] {
        require(cc);
        for mode in MODES {
            checkouts_with(cc, mode);
        }
    }
}

fn checkouts_with(cc: &str, mode: &'static str) {
    let env = Env::new(mode);
    let root = tempfile::tempdir().unwrap();
    // Both three levels below `root`; B's name holds a space, which dependency
    // files escape.
    let a = root.path().join("home/a/proj");
    let b = root.path().join("ci/build 1234/proj");
    let ext = root.path().join("ext");
    small_project(&a, &a, &ext);
    small_project(&b, &a, &ext);
    for (case, shared) in CASES {
        let what = format!("{cc}, {mode}: {case}");
        compile(&env, cc, true, &a, &args_in(case, &a));
        let before = env.hits();
        let got = compile(&env, cc, true, &b, &args_in(case, &b));
        let hit = env.hits() - before;
        let shared = shared
            && !(mode == "preprocessor" && PP_ONLY_HOME.contains(&case))
            && !(mode == "depend" && DEPEND_ONLY_HOME.contains(&case));
        assert_eq!(hit, shared as u64, "{what}: {}", env.stats());
        let plain = compile(&env, cc, false, &b, &args_in(case, &b));
        assert_eq!(got, plain, "{what}: checkout B's outputs");
        let a_path = a.to_str().unwrap().as_bytes();
        // (Except where the compiler itself names checkout A there: it reads A's
        // files, or quotes a line that names A.)
        for (part, data, own) in [
            ("depfile", &got.depfile, &plain.depfile),
            ("stderr", &got.stderr, &plain.stderr),
        ] {
            let own_names_a = memchr::memmem::find(own, a_path).is_some();
            assert!(
                own_names_a || memchr::memmem::find(data, a_path).is_none(),
                "{what}: the {part} names checkout A"
            );
        }
        // And A hits its own entry again, whichever kind it was.
        let before = env.hits();
        let again = compile(&env, cc, true, &a, &args_in(case, &a));
        assert_eq!(env.hits() - before, 1, "{what}: A again");
        assert_eq!(
            again,
            compile(&env, cc, false, &a, &args_in(case, &a)),
            "{what}"
        );
    }
}

#[test]
fn a_bad_base_dir_is_a_clear_error() {
    let env = Env::new("direct");
    for (value, says) in [
        ("src", "not an absolute path"),
        ("/", "every path relative"),
    ] {
        let o = env
            .cmd(farm_bin())
            .env("FARM_BASE_DIR", value)
            .arg("config")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{value}");
        assert!(
            err.contains("FARM_BASE_DIR") && err.contains(says),
            "{value}: {err}"
        );
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
    let o = env
        .cmd(farm_bin())
        .env("FARM_BASE_DIR", "/home/a/src:/ci/x/")
        .arg("config")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.lines().any(|l| l.contains("base_dir")
            && l.contains("/home/a/src:/ci/x")
            && l.contains("FARM_BASE_DIR")),
        "{out}"
    );
}

fn cmake_build(env: &Env, tree: &Path, remote: &str, launcher: bool, flags: &str) {
    let build = tree.join("_build");
    let _ = fs::remove_dir_all(&build);
    let mut c = env.cmd("cmake");
    c.args([
        "-S",
        tree.to_str().unwrap(),
        "-B",
        build.to_str().unwrap(),
        "-G",
        "Ninja",
        "-DCMAKE_BUILD_TYPE=Release",
        "-DCMAKE_C_COMPILER=gcc",
        &format!("-DCMAKE_C_FLAGS={flags}"),
    ]);
    if launcher {
        c.arg(format!(
            "-DCMAKE_C_COMPILER_LAUNCHER={}",
            farm_bin().display()
        ));
    }
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = env
        .cmd("ninja")
        .env("FARM_REMOTE_STORAGE", remote)
        .env("FARM_BASE_DIR", tree)
        .args(["-C", build.to_str().unwrap(), "-j2"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
}

/// zlib with CMake (absolute paths everywhere) in checkout A, then in checkout B at
/// another path with another empty local cache: B is answered from Redis, its
/// objects are a plain build's in B, and ninja's dependency log names B's files.
/// With `-g`, the same once a prefix map rewrites the checkout.
#[test]
fn zlib_cmake_checkout_b_is_answered_from_redis() {
    require("gcc");
    require("cmake");
    require("ninja");
    let src = sources("zlib");
    let root = tempfile::tempdir().unwrap();
    let a = root.path().join("home/a/zlib");
    let b = root.path().join("ci/build/1234/zlib");
    for d in [&a, &b] {
        fs::create_dir_all(d.parent().unwrap()).unwrap();
        copy_tree(&src, d);
    }
    let r = redis("256mb", "allkeys-lru");
    let remote = format!("redis://127.0.0.1:{}", r.port);
    for flags in ["", "-g -ffile-prefix-map=@=."] {
        let flags_in = |d: &PathBuf| flags.replace('@', d.to_str().unwrap());
        let plain_env = Env::new("direct");
        cmake_build(&plain_env, &b, "", false, &flags_in(&b));
        let plain = objects(&b.join("_build"));
        let n = plain.len() as u64;
        assert!(n >= 15, "{n} objects");

        let env_a = Env::new("direct");
        cmake_build(&env_a, &a, &remote, true, &flags_in(&a));
        assert_eq!(env_a.misses(), n, "{flags}: {}", env_a.stats());
        let env_b = Env::new("direct");
        cmake_build(&env_b, &b, &remote, true, &flags_in(&b));
        assert_eq!(
            env_b.counter(&["hits", "remote"]),
            n,
            "{flags}: every compile of B hits the remote: {}",
            env_b.stats()
        );
        assert_eq!(env_b.misses(), 0, "{flags}");
        assert_same_objects(&plain, &objects(&b.join("_build")), flags);
        // The restored dependency files named B's headers: ninja has nothing to do,
        // and its log knows nothing of A.
        let o = env_b
            .cmd("ninja")
            .args(["-C", b.join("_build").to_str().unwrap(), "-n"])
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("no work to do"),
            "{}",
            String::from_utf8_lossy(&o.stdout)
        );
        let deps = fs::read(b.join("_build/.ninja_deps")).unwrap();
        let a_path = a.to_str().unwrap().as_bytes();
        assert!(memchr::memmem::find(&deps, a_path).is_none());
        assert!(memchr::memmem::find(&deps, b.to_str().unwrap().as_bytes()).is_some());
    }
}

/// javac with absolute paths: checkout B hits A's entry, and gets A's classes, which
/// are what javac writes in B.
#[test]
fn javac_two_checkouts_share_entries() {
    require("javac");
    let env = Env::new("direct");
    let root = tempfile::tempdir().unwrap();
    let mut outs = Vec::new();
    for (n, co) in ["home/a/j", "ci/9/j"].iter().enumerate() {
        let dir = root.path().join(co);
        fs::create_dir_all(dir.join("src/p")).unwrap();
        fs::create_dir_all(dir.join("out")).unwrap();
        let src = dir.join("src/p/P.java");
        fs::write(
            &src,
            "package p;\npublic class P { public static int f() { return 3; } }\n",
        )
        .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let o = env
            .cmd(farm_javac_bin())
            .env("FARM_BASE_DIR", &dir)
            .current_dir(&dir)
            .args(["-d", dir.join("out").to_str().unwrap()])
            .args(["-sourcepath", dir.join("src").to_str().unwrap()])
            .arg(&src)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(env.hits(), n as u64, "{}", env.stats());
        outs.push(fs::read(dir.join("out/p/P.class")).unwrap());
    }
    assert_eq!(outs[0], outs[1]);
    let plain = root.path().join("plain");
    let b = root.path().join("ci/9/j");
    fs::create_dir_all(&plain).unwrap();
    let o = Command::new("javac")
        .args(["-d", plain.to_str().unwrap()])
        .args(["-sourcepath", b.join("src").to_str().unwrap()])
        .arg(b.join("src/p/P.java"))
        .output()
        .unwrap();
    assert!(o.status.success());
    assert_eq!(fs::read(plain.join("p/P.class")).unwrap(), outs[1]);
}
