//! What a user of the shim sees: hits, restored side outputs, diagnostics, pass-through,
//! entry points, failure handling. Real gcc and clang throughout.

mod common;
use common::*;
use std::fs;
use std::process::{Command, Stdio};
use std::time::Duration;

fn settle() {
    std::thread::sleep(Duration::from_millis(120));
}

const SRC: &str =
    "#include <stdio.h>\n#include \"h.h\"\nint value(void) { printf(\"%d\", V); return V; }\n";

fn project(env: &Env) {
    env.write("inc/h.h", "#define V 7\n");
    env.write("src/a.c", SRC);
    settle();
}

#[test]
fn hit_is_byte_identical_and_lands_in_another_output() {
    for compiler in ["gcc", "clang"] {
        require(compiler);
        let env = Env::new("direct");
        project(&env);
        env.farm_ok(&[compiler, "-c", "-O2", "-Iinc", "src/a.c", "-o", "a.o"]);
        let other = [
            compiler,
            "-c",
            "-O2",
            "-Iinc",
            "src/a.c",
            "-o",
            "sub/dir/other.o",
        ];
        let o = env.farm(&other);
        assert!(
            !o.status.success(),
            "missing output dir: the compiler's own error"
        );
        assert_eq!(env.hits(), 0, "missing output dir: not a hit");
        fs::create_dir_all(env.work.join("sub/dir")).unwrap();
        env.farm_ok(&other);
        env.plain(&[compiler, "-c", "-O2", "-Iinc", "src/a.c", "-o", "plain.o"]);
        assert_eq!(env.read("a.o"), env.read("plain.o"), "{compiler}");
        assert_eq!(
            env.read("sub/dir/other.o"),
            env.read("plain.o"),
            "{compiler}"
        );
        assert_eq!((env.hits(), env.misses()), (1, 1), "{compiler}");
        // Launcher form with an absolute compiler path, and farm-cc, share the entry.
        let real = require(compiler);
        env.farm_ok(&[
            real.to_str().unwrap(),
            "-c",
            "-O2",
            "-Iinc",
            "src/a.c",
            "-o",
            "abs.o",
        ]);
        assert_eq!(env.read("abs.o"), env.read("plain.o"));
    }
}

#[test]
fn missing_output_directory_gives_the_compilers_error() {
    let env = Env::new("direct");
    project(&env);
    env.farm_ok(&["gcc", "-c", "-Iinc", "src/a.c", "-o", "a.o"]);
    let o = env.farm(&["gcc", "-c", "-Iinc", "src/a.c", "-o", "nodir/a.o"]);
    let p = Command::new("gcc")
        .args(["-c", "-Iinc", "src/a.c", "-o", "nodir/a.o"])
        .current_dir(&env.work)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), p.status.code());
    assert_eq!(o.stderr, p.stderr);
}

#[test]
fn dependency_files_on_a_hit_equal_the_compilers() {
    let variants: &[&[&str]] = &[
        &["-MD"],
        &["-MMD", "-MP"],
        &["-MD", "-MF", "deps/a.dep", "-MT", "obj/a.o"],
        &["-MMD", "-MP", "-MF", "deps/a.dep", "-MQ", "$(OBJ)/a.o"],
    ];
    for mode in MODES {
        for v in variants {
            let env = Env::new(mode);
            project(&env);
            fs::create_dir_all(env.work.join("obj")).unwrap();
            fs::create_dir_all(env.work.join("deps")).unwrap();
            let mut args = vec!["gcc", "-c", "-Iinc", "src/a.c", "-o", "obj/a.o"];
            args.extend_from_slice(v);
            let depfile = if v.contains(&"-MF") {
                "deps/a.dep"
            } else {
                "obj/a.d"
            };
            env.farm_ok(&args);
            let miss_dep = env.read(depfile);
            fs::remove_file(env.work.join(depfile)).unwrap();
            fs::remove_file(env.work.join("obj/a.o")).unwrap();
            env.farm_ok(&args);
            assert_eq!(env.hits(), 1, "[{mode}] {v:?}: {}", env.stats());
            let hit_dep = env.read(depfile);
            let mut plain = args.clone();
            plain.insert(0, "gcc");
            plain.remove(1);
            env.plain(&args);
            let plain_dep = env.read(depfile);
            assert_eq!(hit_dep, plain_dep, "[{mode}] {v:?}");
            assert_eq!(miss_dep, plain_dep, "[{mode}] {v:?}");
        }
    }
}

#[test]
fn warnings_are_replayed_and_errors_are_identical_and_uncached() {
    for mode in MODES {
        let env = Env::new(mode);
        env.write("w.c", "int f(int x) { int unused; return x; }\n");
        env.write("e.c", "int f(void) { return undeclared; }\n");
        settle();
        let plain_w = Command::new("gcc")
            .args(["-c", "-Wall", "w.c", "-o", "pw.o"])
            .current_dir(&env.work)
            .output()
            .unwrap();
        assert!(!plain_w.stderr.is_empty());
        for _ in 0..2 {
            let o = env.farm_ok(&["gcc", "-c", "-Wall", "w.c", "-o", "w.o"]);
            assert_eq!(o.stderr, plain_w.stderr, "[{mode}] warning replay");
            assert_eq!(o.stdout, plain_w.stdout);
        }
        assert_eq!(env.hits(), 1, "[{mode}]");
        let plain_e = Command::new("gcc")
            .args(["-c", "e.c", "-o", "pe.o"])
            .current_dir(&env.work)
            .output()
            .unwrap();
        for _ in 0..2 {
            let o = env.farm(&["gcc", "-c", "e.c", "-o", "e.o"]);
            assert_eq!(o.status.code(), plain_e.status.code(), "[{mode}]");
            assert_eq!(o.stderr, plain_e.stderr, "[{mode}]");
        }
        assert_eq!(
            env.counter(&["compile_failed"]),
            2,
            "[{mode}] errors are never cached"
        );
        assert!(!env.work.join("e.o").exists());
    }
}

#[test]
fn pass_through_keeps_argv_stdin_stdout_stderr_and_exit_code() {
    let env = Env::new("direct");
    env.write("a.c", "int main(void) { return 3; }\n");
    settle();
    // -### prints exactly the commands gcc would run, argv[0] and argv included; only
    // its temporary file names differ from run to run.
    let norm = |b: &[u8]| -> String {
        let s = String::from_utf8_lossy(b).into_owned();
        let mut out = String::with_capacity(s.len());
        let mut rest = s.as_str();
        while let Some(i) = rest.find("/tmp/cc") {
            out.push_str(&rest[..i + 7]);
            let tail = &rest[i + 7..];
            let n = tail
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .count();
            out.push_str("<tempname>");
            rest = &tail[n..];
        }
        out.push_str(rest);
        out
    };
    for args in [
        &["-###", "-O2", "a.c", "-o", "prog"][..],
        &["-###", "-c", "a.c", "-fplugin=nowhere.so"][..],
    ] {
        let f = env.farm(&[&["gcc"][..], args].concat());
        let p = Command::new("gcc")
            .args(args)
            .current_dir(&env.work)
            .output()
            .unwrap();
        assert_eq!(f.status.code(), p.status.code());
        assert_eq!(norm(&f.stdout), norm(&p.stdout));
        assert_eq!(norm(&f.stderr), norm(&p.stderr));
        assert!(norm(&f.stderr).contains("COLLECT_GCC=gcc\n"));
    }
    // An unknown flag: the compiler's own error and exit code.
    let f = env.farm(&["gcc", "-c", "a.c", "--no-such-flag"]);
    let p = Command::new("gcc")
        .args(["-c", "a.c", "--no-such-flag"])
        .current_dir(&env.work)
        .output()
        .unwrap();
    assert_eq!(f.status.code(), p.status.code());
    assert_eq!(
        String::from_utf8_lossy(&f.stderr),
        String::from_utf8_lossy(&p.stderr)
    );
    // Linking is passed through and works.
    env.farm_ok(&["gcc", "a.c", "-o", "prog"]);
    let st = Command::new(env.work.join("prog")).status().unwrap();
    assert_eq!(st.code(), Some(3));
    // Source from stdin.
    let mut child = env
        .cmd(farm_bin())
        .args(["gcc", "-x", "c", "-c", "-", "-o", "stdin.o"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"int s(void) { return 5; }\n")
        .unwrap();
    assert!(child.wait().unwrap().success());
    let mut plain = Command::new("gcc")
        .args(["-x", "c", "-c", "-", "-o", "stdin-plain.o"])
        .current_dir(&env.work)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    plain
        .stdin
        .take()
        .unwrap()
        .write_all(b"int s(void) { return 5; }\n")
        .unwrap();
    assert!(plain.wait().unwrap().success());
    assert_eq!(env.read("stdin.o"), env.read("stdin-plain.o"));
    let s = env.stats();
    for reason in ["verbose", "unknown_option", "link", "stdin"] {
        assert!(
            s["passthrough"][reason].as_u64().unwrap_or(0) >= 1,
            "{reason}: {s}"
        );
    }
    assert_eq!(s["misses"], 0);
}

#[test]
fn response_files_are_understood_and_passed_unchanged() {
    let env = Env::new("direct");
    project(&env);
    env.write("args.rsp", "-c -Iinc\n\"src/a.c\" -o 'rsp.o'\n");
    settle();
    env.farm_ok(&["gcc", "@args.rsp"]);
    env.farm_ok(&["gcc", "@args.rsp"]);
    assert_eq!((env.hits(), env.misses()), (1, 1));
    env.plain(&["gcc", "-c", "-Iinc", "src/a.c", "-o", "plain.o"]);
    assert_eq!(env.read("rsp.o"), env.read("plain.o"));
}

const SPLIT: &[&str] = &[
    "gcc",
    "-c",
    "-g",
    "-gsplit-dwarf",
    "-Iinc",
    "src/a.c",
    "-o",
    "o/a.o",
];

#[test]
fn split_dwarf_and_coverage_outputs_are_restored() {
    let env = Env::new("direct");
    project(&env);
    fs::create_dir_all(env.work.join("o")).unwrap();
    env.farm_ok(SPLIT);
    let (obj, dwo) = (env.read("o/a.o"), env.read("o/a.dwo"));
    fs::remove_file(env.work.join("o/a.dwo")).unwrap();
    env.farm_ok(SPLIT);
    assert_eq!(env.hits(), 1);
    assert_eq!(env.read("o/a.dwo"), dwo);
    assert_eq!(env.read("o/a.o"), obj);
    env.plain(&[
        "gcc",
        "-c",
        "-g",
        "-gsplit-dwarf",
        "-Iinc",
        "src/a.c",
        "-o",
        "o/p.o",
    ]);

    env.farm_ok(&["gcc", "-c", "--coverage", "-Iinc", "src/a.c", "-o", "o/c.o"]);
    let (cobj, gcno) = (env.read("o/c.o"), env.read("o/c.gcno"));
    fs::remove_file(env.work.join("o/c.gcno")).unwrap();
    env.farm_ok(&["gcc", "-c", "--coverage", "-Iinc", "src/a.c", "-o", "o/c.o"]);
    assert_eq!(env.hits(), 2);
    // The object and the .gcno carry one stamp: they are restored as a pair.
    assert_eq!(env.read("o/c.gcno"), gcno);
    assert_eq!(env.read("o/c.o"), cobj);
}

#[test]
fn concurrent_identical_compiles_all_succeed() {
    let env = Env::new("direct");
    project(&env);
    env.plain(&["gcc", "-c", "-Iinc", "src/a.c", "-o", "plain.o"]);
    let kids: Vec<_> = (0..8)
        .map(|i| {
            env.cmd(farm_bin())
                .args(["gcc", "-c", "-Iinc", "src/a.c", "-o", &format!("c{i}.o")])
                .spawn()
                .unwrap()
        })
        .collect();
    for mut k in kids {
        assert!(k.wait().unwrap().success());
    }
    for i in 0..8 {
        assert_eq!(env.read(&format!("c{i}.o")), env.read("plain.o"));
    }
    env.farm_ok(&["gcc", "-c", "-Iinc", "src/a.c", "-o", "after.o"]);
    assert!(env.hits() >= 1);
    assert_eq!(env.read("after.o"), env.read("plain.o"));
    // No temp files left behind.
    let leftovers = walk(&env.cache)
        .into_iter()
        .filter(|p| p.contains(".farm-tmp."))
        .count();
    assert_eq!(leftovers, 0);
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut v = Vec::new();
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().unwrap().is_dir() {
                v.extend(walk(&e.path()));
            } else {
                v.push(e.path().display().to_string());
            }
        }
    }
    v
}

/// One compile of src/a.c stored (a.o), its plain twin (plain.o), and the paths of the
/// result entries in the cache (one).
fn one_stored_result() -> (Env, Vec<String>) {
    let env = Env::new("direct");
    project(&env);
    env.farm_ok(&["gcc", "-c", "-Iinc", "src/a.c", "-o", "a.o"]);
    env.plain(&["gcc", "-c", "-Iinc", "src/a.c", "-o", "plain.o"]);
    let entries: Vec<String> = walk(&env.cache)
        .into_iter()
        .filter(|p| p.ends_with(".r"))
        .collect();
    assert_eq!(entries.len(), 1);
    (env, entries)
}

#[test]
fn corrupted_entries_are_misses_removed_and_recompiled() {
    let (env, entries) = one_stored_result();
    let mut data = fs::read(&entries[0]).unwrap();
    let n = data.len();
    data[n / 2] ^= 0xff;
    fs::write(&entries[0], &data).unwrap();
    let o = env.farm_ok(&["gcc", "-c", "-Iinc", "src/a.c", "-o", "a.o"]);
    assert!(
        o.stderr.is_empty(),
        "nothing about the cache on the compiler's stderr"
    );
    assert_eq!(env.read("a.o"), env.read("plain.o"));
    let s = env.stats();
    assert_eq!(s["errors"]["corrupt_entries"], 1, "{s}");
    assert_eq!(s["misses"], 2, "{s}");
    // The recompile stored a good entry again.
    env.farm_ok(&["gcc", "-c", "-Iinc", "src/a.c", "-o", "a.o"]);
    assert_eq!(env.hits(), 1);
    // Truncated manifest: also a counted miss, never a failure.
    let manifests: Vec<String> = walk(&env.cache)
        .into_iter()
        .filter(|p| p.ends_with(".m"))
        .collect();
    fs::write(&manifests[0], b"FARMENT1").unwrap();
    env.farm_ok(&["gcc", "-c", "-Iinc", "src/a.c", "-o", "a.o"]);
    assert_eq!(env.read("a.o"), env.read("plain.o"));
    assert_eq!(env.stats()["errors"]["corrupt_entries"], 2);
}

/// A damaged entry whose compressed frame claims 4 GiB (found by fuzz/entry_frame):
/// reading it costs what the frame holds, not what it claims, so under a 1 GiB
/// address-space limit the shim still counts it as corrupt and compiles.
#[test]
fn entry_claiming_gigabytes_is_read_in_bounded_memory() {
    let (env, entries) = one_stored_result();
    // Magic, a checksum, and a zstd frame header (single segment, 8-byte content
    // size) saying 0xffff_ffff bytes follow; none do.
    let mut data = b"FARMENT1".to_vec();
    data.extend_from_slice(&[0; 32]);
    data.extend_from_slice(&[0x28, 0xb5, 0x2f, 0xfd, 0xe0]);
    data.extend_from_slice(&0xffff_ffffu64.to_le_bytes());
    fs::write(&entries[0], &data).unwrap();
    let o = env
        .cmd("sh")
        .args(["-c", "ulimit -v 1048576 && exec \"$@\"", "sh"])
        .arg(farm_bin())
        .args(["gcc", "-c", "-Iinc", "src/a.c", "-o", "a.o"])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{:?}: {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(env.read("a.o"), env.read("plain.o"));
    let s = env.stats();
    assert_eq!(s["errors"]["corrupt_entries"], 1, "{s}");
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc_geteuid() == 0 }
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// A read-only or full cache: the compile still succeeds, one log line, a counted
/// cache error. As root (CI) the cache is a real read-only / full tmpfs in a private
/// mount namespace; otherwise a directory without write permission.
#[test]
fn read_only_and_full_cache_never_fail_the_build() {
    let env = Env::new("direct");
    project(&env);
    env.plain(&["gcc", "-c", "-Iinc", "src/a.c", "-o", "plain.o"]);
    let farm = farm_bin();
    let objects = env.root.path().join("cache/v1");
    fs::create_dir_all(&objects).unwrap();
    for (label, mount) in [("read-only", "ro,size=1m"), ("full", "size=64k")] {
        let script = if is_root() {
            format!(
                "unshare -m bash -ec 'mount -t tmpfs -o {mount} tmpfs {objects}; \
                 {fill} \"{farm}\" gcc -c -Iinc src/a.c -o out.o; \"{farm}\" gcc -c -Iinc src/a.c -o out2.o'",
                objects = objects.display(),
                farm = farm.display(),
                fill = if label == "full" {
                    format!("head -c 200000 /dev/zero > {}/filler 2>/dev/null || true;", objects.display())
                } else {
                    String::new()
                },
            )
        } else {
            if label == "full" {
                continue; // no way to fill a file system without mounting one
            }
            format!(
                "chmod 555 {o}; \"{farm}\" gcc -c -Iinc src/a.c -o out.o; \"{farm}\" gcc -c -Iinc src/a.c -o out2.o; chmod 755 {o}",
                o = objects.display(),
                farm = farm.display()
            )
        };
        let _ = fs::remove_file(&env.log);
        let o = env.cmd("bash").arg("-ec").arg(&script).output().unwrap();
        assert!(
            o.status.success(),
            "[{label}] {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            o.stderr.is_empty(),
            "[{label}] farm wrote to stderr: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(env.read("out.o"), env.read("plain.o"), "[{label}]");
        assert_eq!(env.read("out2.o"), env.read("plain.o"), "[{label}]");
        let log = fs::read_to_string(&env.log).unwrap_or_default();
        assert!(
            log.contains("cache error") || log.contains("cache write"),
            "[{label}] log: {log}"
        );
    }
    assert!(env.stats()["errors"]["cache"].as_u64().unwrap() >= 2);
}

#[test]
fn entry_points_masquerade_and_no_recursion() {
    let env = Env::new("direct");
    project(&env);
    env.plain(&["gcc", "-c", "-Iinc", "src/a.c", "-o", "plain.o"]);
    // The packaged masquerade script makes the links, as a user would.
    let masq = env.root.path().join("masq");
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/farm-masquerade.sh");
    sh(
        env.root.path(),
        &format!(
            "bash '{}' '{}' '{}'",
            script.display(),
            masq.display(),
            farm_bin().display()
        ),
    );
    for name in ["gcc", "cc", "c++", "clang", "clang++"] {
        assert!(masq.join(name).exists(), "{name} link");
    }
    // A `cc` that is farm itself, first on PATH: farm-cc must skip it.
    let path = format!(
        "{}:{}:{}",
        masq.display(),
        env.bin.display(),
        std::env::var("PATH").unwrap()
    );
    let run = |prog: &str, out: &str| {
        let o = env
            .cmd(prog)
            .env("PATH", &path)
            .args(["-c", "-Iinc", "src/a.c", "-o", out])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{prog}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    run(masq.join("gcc").to_str().unwrap(), "m1.o");
    run(farm_cc_bin().to_str().unwrap(), "m2.o");
    run("gcc", "m3.o"); // through PATH: the masquerade link
    run(env.bin.join("farm-c++").to_str().unwrap(), "m4.o");
    for o in ["m1.o", "m2.o", "m3.o"] {
        assert_eq!(env.read(o), env.read("plain.o"), "{o}");
    }
    env.plain(&["c++", "-c", "-Iinc", "src/a.c", "-o", "plaincxx.o"]);
    assert_eq!(env.read("m4.o"), env.read("plaincxx.o"));
    // gcc through the masquerade link, then through PATH: one entry, one hit. (`cc`
    // and `c++` are other invoked names: their own keys.)
    let s = env.stats();
    assert_eq!(
        (s["hits"]["total"].as_u64(), s["misses"].as_u64()),
        (Some(1), Some(3)),
        "{s}"
    );
    // FARM_CC pointing at farm itself is refused with a clear message.
    let o = env
        .cmd(farm_cc_bin())
        .env("FARM_CC", farm_bin())
        .args(["-c", "src/a.c"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("is farm itself"));
    // CC="farm gcc" with FARM_CC naming a compiler.
    let o = env
        .cmd(farm_cc_bin())
        .env("FARM_CC", "clang")
        .args(["-c", "-Iinc", "src/a.c", "-o", "viaenv.o"])
        .output()
        .unwrap();
    assert!(o.status.success());
    env.plain(&["clang", "-c", "-Iinc", "src/a.c", "-o", "clang.o"]);
    assert_eq!(env.read("viaenv.o"), env.read("clang.o"));
}

#[test]
fn farm_disable_is_a_pure_pass_through() {
    let env = Env::new("direct");
    project(&env);
    for _ in 0..2 {
        let o = env
            .cmd(farm_bin())
            .env("FARM_DISABLE", "1")
            .args(["gcc", "-c", "-Iinc", "src/a.c", "-o", "a.o"])
            .output()
            .unwrap();
        assert!(o.status.success());
    }
    assert!(!env.cache.join("v1").exists(), "nothing cached");
    assert_eq!(env.hits() + env.misses(), 0);
}

#[test]
fn logs_go_to_the_log_file_never_to_stderr() {
    let env = Env::new("direct");
    project(&env);
    let a = env.farm_ok(&["gcc", "-c", "-Iinc", "src/a.c", "-o", "a.o"]);
    let b = env.farm_ok(&["gcc", "-c", "-Iinc", "src/a.c", "-o", "a.o"]);
    let c = env.farm_ok(&["gcc", "src/a.c", "-Iinc", "-c", "-save-temps", "-o", "t.o"]);
    assert!(a.stderr.is_empty() && b.stderr.is_empty() && c.stderr.is_empty());
    let log = fs::read_to_string(&env.log).unwrap();
    assert!(log.contains("hit"), "{log}");
    assert!(log.contains("save_temps"), "{log}");
}

#[test]
fn config_file_env_overrides_and_errors() {
    let env = Env::new("direct");
    let cfg = env.root.path().join("config.toml");
    fs::write(&cfg, "max_size = \"1G\"\nmode = \"preprocessor\"\n").unwrap();
    let o = env
        .cmd(farm_bin())
        .env("FARM_CONFIG", &cfg)
        .env_remove("FARM_MODE")
        .args(["config"])
        .output()
        .unwrap();
    let t = String::from_utf8_lossy(&o.stdout);
    assert!(
        t.contains("preprocessor") && t.contains("config.toml"),
        "{t}"
    );
    assert!(t.contains("1.0 GiB"), "{t}");
    assert!(t.contains("env FARM_DIR"), "{t}");
    // A bad value: one line naming file, line and key; `farm config` fails.
    fs::write(&cfg, "# farm\nmax_size = \"huge\"\n").unwrap();
    let o = env
        .cmd(farm_bin())
        .env("FARM_CONFIG", &cfg)
        .args(["config"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("config.toml: line 2") && e.contains("max_size"),
        "{e}"
    );
    assert_eq!(e.trim_end().lines().count(), 1, "{e}");
    // ...while a compile still succeeds, saying once why it is uncached.
    project(&env);
    let o = env
        .cmd(farm_bin())
        .env("FARM_CONFIG", &cfg)
        .args(["gcc", "-c", "-Iinc", "src/a.c", "-o", "a.o"])
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("compiling without the cache"));
    // A bad environment value names the variable.
    let o = env
        .cmd(farm_bin())
        .env("FARM_MAX_SIZE", "lots")
        .args(["stats"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("FARM_MAX_SIZE"));
}

#[test]
fn size_cap_evicts_and_stats_report_it() {
    let env = Env::new("direct");
    for i in 0..40 {
        env.write(
            &format!("u{i}.c"),
            &format!(
                "int f{i}(int x) {{ return x * {i} + {}; }}\nconst char big{i}[4000] = \"{i}\";\n",
                i * 7
            ),
        );
    }
    settle();
    for i in 0..40 {
        let o = env
            .cmd(farm_bin())
            .env("FARM_MAX_SIZE", "32K")
            .args(["gcc", "-c", &format!("u{i}.c")])
            .output()
            .unwrap();
        assert!(o.status.success());
    }
    let s = env.stats();
    assert!(s["evicted_files"].as_u64().unwrap() > 0, "{s}");
    let real: u64 = walk(&env.cache.join("v1"))
        .iter()
        .filter(|p| p.ends_with(".r") || p.ends_with(".m"))
        .map(|p| fs::metadata(p).unwrap().len())
        .sum();
    assert!(real <= 32 * 1024, "cache holds {real} bytes");
    // Clearing.
    let o = env.farm(&["cache", "clear"]);
    assert!(o.status.success());
    assert_eq!(env.stats()["entries"], 0);
}

#[test]
fn stats_zero_and_human_output() {
    let env = Env::new("direct");
    project(&env);
    env.farm_ok(&["gcc", "-c", "-Iinc", "src/a.c"]);
    env.farm_ok(&["gcc", "-c", "-Iinc", "src/a.c"]);
    let o = env.farm(&["stats"]);
    let t = String::from_utf8_lossy(&o.stdout);
    assert!(t.contains("summary: hits=1 misses=1"), "{t}");
    env.farm(&["stats", "--zero"]);
    assert_eq!(env.hits() + env.misses(), 0);
}

/// `-o /dev/null` (configure does it) and `-MF /dev/null` are written by the compiler
/// itself: a hit must never rename a file over a device.
#[test]
fn special_file_outputs_are_left_to_the_compiler() {
    use std::os::unix::fs::FileTypeExt;
    let env = Env::new("direct");
    project(&env);
    for _ in 0..2 {
        env.farm_ok(&["gcc", "-c", "-Iinc", "src/a.c", "-o", "/dev/null"]);
        env.farm_ok(&[
            "gcc",
            "-c",
            "-Iinc",
            "src/a.c",
            "-o",
            "a.o",
            "-MD",
            "-MF",
            "/dev/null",
        ]);
    }
    assert!(fs::metadata("/dev/null")
        .unwrap()
        .file_type()
        .is_char_device());
    assert_eq!(
        env.counter(&["passthrough", "special_output"]),
        4,
        "{}",
        env.stats()
    );
    assert_eq!(env.hits(), 0);
}

/// The dependency observation must never be why a compile fails: with an unwritable
/// TMPDIR the compile runs unobserved, succeeds, and is simply not stored.
#[test]
fn unwritable_tmpdir_never_fails_a_compile() {
    let env = Env::new("direct");
    project(&env);
    env.plain(&["gcc", "-c", "-Iinc", "src/a.c", "-o", "plain.o"]);
    for _ in 0..2 {
        let o = env
            .cmd(farm_bin())
            .env("TMPDIR", env.root.path().join("no-such-dir"))
            .args(["gcc", "-c", "-Iinc", "src/a.c", "-o", "a.o"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(o.stderr.is_empty());
        assert_eq!(env.read("a.o"), env.read("plain.o"));
    }
    assert_eq!(
        env.counter(&["not_stored", "no_dependency_file"]),
        2,
        "{}",
        env.stats()
    );
}

/// On a terminal gcc colours its diagnostics; farm captures stderr through a pipe, so
/// it asks for the colours the terminal would get, and replays them on hits. Runs under
/// a real pseudo-terminal (`script`, from util-linux).
#[test]
fn coloured_diagnostics_on_a_terminal_match_the_compiler() {
    require("script");
    let env = Env::new("direct");
    env.write("w.c", "int f(int x) { int unused; return x; }\n");
    settle();
    let in_pty = |cmd: String| -> Vec<u8> {
        let o = env
            .cmd("script")
            .args(["-qec", &cmd, "/dev/null"])
            .output()
            .unwrap();
        assert!(o.status.success());
        o.stdout
    };
    let farm = farm_bin().display().to_string();
    let plain = in_pty("gcc -c -Wall w.c -o p.o".into());
    assert!(
        plain.windows(2).any(|w| w == b"\x1b["),
        "gcc colours on a terminal"
    );
    let miss = in_pty(format!("{farm} gcc -c -Wall w.c -o a.o"));
    let hit = in_pty(format!("{farm} gcc -c -Wall w.c -o b.o"));
    assert_eq!(
        String::from_utf8_lossy(&miss),
        String::from_utf8_lossy(&plain)
    );
    assert_eq!(
        String::from_utf8_lossy(&hit),
        String::from_utf8_lossy(&plain)
    );
    assert_eq!((env.hits(), env.misses()), (1, 1));
    // Through a pipe: plain text, a different entry, still identical to gcc's.
    let piped = env.farm_ok(&["gcc", "-c", "-Wall", "w.c", "-o", "c.o"]);
    let plain_piped = Command::new("gcc")
        .args(["-c", "-Wall", "w.c", "-o", "q.o"])
        .current_dir(&env.work)
        .output()
        .unwrap();
    assert_eq!(piped.stderr, plain_piped.stderr);
    assert!(!piped.stderr.windows(2).any(|w| w == b"\x1b["));
    assert_eq!(env.misses(), 2);
    assert_eq!(env.read("a.o"), env.read("c.o"));
}

/// asm `.incbin` reads a file no dependency output names: a source (or header) using
/// it is never cached, so an edit of that file is never answered by a stale object.
#[test]
fn incbin_is_never_cached() {
    require("gcc");
    for mode in MODES {
        for in_header in [false, true] {
            let env = Env::new(mode);
            let asm = "asm(\".section .rodata\\n.globl blob\\nblob:\\n.incbin \\\"data.bin\\\"\\n.previous\");\n";
            if in_header {
                env.write("blob.h", asm);
                env.write("s.c", "#include \"blob.h\"\nint f(void) { return 1; }\n");
            } else {
                env.write("s.c", &format!("{asm}int f(void) {{ return 1; }}\n"));
            }
            for (round, data) in ["first data\n", "other data!\n"].iter().enumerate() {
                env.write("data.bin", data);
                settle();
                env.farm_ok(&["gcc", "-c", "s.c", "-o", "s.o"]);
                env.plain(&["gcc", "-c", "s.c", "-o", "p.o"]);
                assert_eq!(
                    env.read("s.o"),
                    env.read("p.o"),
                    "[{mode}] header={in_header} round {round}: stale object"
                );
            }
            assert_eq!(env.hits(), 0, "[{mode}] header={in_header}");
            assert_eq!(
                env.counter(&["passthrough", "unsupported_code_directive"]),
                2,
                "[{mode}] header={in_header}"
            );
        }
    }
}

/// A source that is a pipe can be read once: by the compiler, never by farm first
/// (which gave an empty object from `<(…)` and hung on a FIFO). A response file that
/// is a pipe is the compiler's too (gcc takes `@/dev/fd/N` literally, as a missing
/// input: it is not seekable; farm used to expand it).
#[test]
fn source_that_is_not_a_regular_file_passes_through() {
    require("gcc");
    require("nm");
    for mode in MODES {
        let env = Env::new(mode);
        let farm = farm_bin();
        let script = format!(
            "timeout 30 {farm} gcc -x c -c <(printf 'int from_pipe(void) {{ return 3; }}\\n') -o ps.o\n\
             mkfifo fifo.c\n\
             (printf 'int from_fifo(void) {{ return 4; }}\\n' > fifo.c) &\n\
             timeout 30 {farm} gcc -x c -c fifo.c -o fifo.o\n\
             wait\n\
             printf 'int from_rsp(void) {{ return 5; }}\n' > r.c\n\
             rc=0; timeout 30 {farm} gcc -c r.c @<(printf -- '-o rsp.o') 2>/dev/null || rc=$?\n\
             test $rc = 1\n\
             nm ps.o | grep -q from_pipe\n\
             nm fifo.o | grep -q from_fifo\n\
             ",
            farm = farm.display()
        );
        let o = env.cmd("bash").arg("-ec").arg(&script).output().unwrap();
        assert!(
            o.status.success(),
            "[{mode}] {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(
            env.counter(&["passthrough", "source_not_regular"]),
            3,
            "[{mode}]"
        );
    }
}

/// `-fbranch-probabilities` reads `<object>.gcda`, a file named by no flag: never
/// cached, so a new profile is never answered by an object built from the old one.
#[test]
fn branch_probabilities_reads_an_unnamed_profile_and_passes_through() {
    require("gcc");
    let env = Env::new("direct");
    env.write(
        "s.c",
        "int f(int x) { if (x > 3) return x * 2; return x + 1; }\nint main(int c, char **v) { (void)v; return f(c) & 1; }\n",
    );
    settle();
    // A real profile beside the object.
    env.plain(&["gcc", "-O2", "-fprofile-arcs", "s.c", "-o", "s"]);
    sh(&env.work, "./s || true; ls *.gcda > gcda-list");
    let gcda = String::from_utf8(env.read("gcda-list")).unwrap();
    let gcda = gcda.trim();
    fs::rename(env.work.join(gcda), env.work.join("s.gcda")).unwrap();
    let args = [
        "gcc",
        "-c",
        "-O2",
        "-fbranch-probabilities",
        "s.c",
        "-o",
        "s.o",
    ];
    for _ in 0..2 {
        env.farm_ok(&args);
    }
    assert_eq!(env.hits(), 0);
    assert_eq!(env.counter(&["passthrough", "profile_use_implicit"]), 2);
    // Bare `-fauto-profile` reads `fbdata.afdo` (gcc may fail without one; either way
    // it ran untouched).
    env.farm(&["gcc", "-c", "-fauto-profile", "s.c", "-o", "a.o"]);
    assert_eq!(env.counter(&["passthrough", "profile_use_implicit"]), 3);
}

/// The observation depfile goes to `$TMPDIR/farm-<uid>`, a private 0700 directory,
/// created with O_EXCL and removed afterwards; a directory planted there by someone
/// else (here a symlink) is never written through, and leftovers of killed shims
/// older than an hour are removed.
#[test]
fn scratch_files_are_private_and_cleaned() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let env = Env::new("direct");
    project(&env);
    let uid = fs::metadata(&env.work).unwrap().uid();
    let tmp = env.root.path().join("tmp");
    let elsewhere = env.root.path().join("elsewhere");
    fs::create_dir_all(&tmp).unwrap();
    fs::create_dir_all(&elsewhere).unwrap();
    let private = tmp.join(format!("farm-{uid}"));
    let compile = |out: &str| {
        let o = env
            .cmd(farm_bin())
            .env("TMPDIR", &tmp)
            .args(["gcc", "-c", "-Iinc", "src/a.c", "-o", out])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    // Planted: a symlink where the private directory goes.
    std::os::unix::fs::symlink(&elsewhere, &private).unwrap();
    compile("a.o");
    assert_eq!(
        fs::read_dir(&elsewhere).unwrap().count(),
        0,
        "wrote through a symlink"
    );
    fs::remove_file(&private).unwrap();
    // A directory open to others is not used either.
    fs::create_dir(&private).unwrap();
    fs::set_permissions(&private, fs::Permissions::from_mode(0o777)).unwrap();
    compile("a.o");
    assert_eq!(fs::read_dir(&private).unwrap().count(), 0);
    assert_eq!(env.hits(), 0, "unobserved compiles are not stored");
    fs::remove_dir(&private).unwrap();
    // The real thing: created 0700, empty after the compile; an old leftover goes.
    compile("a.o");
    let m = fs::symlink_metadata(&private).unwrap();
    assert!(m.is_dir());
    assert_eq!(m.mode() & 0o777, 0o700);
    assert_eq!(fs::read_dir(&private).unwrap().count(), 0);
    let leftover = private.join("12345-0.d");
    fs::write(&leftover, "x").unwrap();
    set_mtime(&leftover, mtime_secs(&leftover) - 7200);
    let fresh = private.join("12345-1.d");
    fs::write(&fresh, "x").unwrap();
    env.write("src/a.c", &format!("{SRC}int other;\n"));
    settle();
    compile("b.o");
    assert!(!leftover.exists(), "an hour-old leftover stays");
    assert!(fresh.exists(), "a live shim's file was removed");
    assert_eq!(env.misses(), 4);
    env.farm_ok(&["gcc", "-c", "-Iinc", "src/a.c", "-o", "c.o"]);
    assert_eq!(env.hits(), 1);
}

/// A config path naming a FIFO or a device is one clear error, never a hang, and the
/// compile still succeeds without the cache; a log that cannot be written never
/// reaches the compiler's stderr.
#[test]
fn config_fifo_or_device_and_unwritable_log() {
    let env = Env::new("direct");
    project(&env);
    env.plain(&["gcc", "-c", "-Iinc", "src/a.c", "-o", "plain.o"]);
    let fifo = env.root.path().join("config.fifo");
    sh(env.root.path(), "mkfifo config.fifo");
    let big = env.root.path().join("big.toml");
    fs::write(&big, format!("# {}\n", "x".repeat(2 << 20))).unwrap();
    for cfg in [
        fifo.as_path(),
        std::path::Path::new("/dev/zero"),
        big.as_path(),
    ] {
        let script = format!(
            "timeout 30 {} gcc -c -Iinc src/a.c -o a.o",
            farm_bin().display()
        );
        let o = env
            .cmd("bash")
            .arg("-c")
            .arg(&script)
            .env("FARM_CONFIG", cfg)
            .output()
            .unwrap();
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{}: {e}", cfg.display());
        assert_eq!(e.trim_end().lines().count(), 1, "{e}");
        assert!(
            e.contains(&*cfg.to_string_lossy()) && e.contains("compiling without the cache"),
            "{e}"
        );
        assert_eq!(env.read("a.o"), env.read("plain.o"));
        let o = env
            .cmd("timeout")
            .args(["30".as_ref(), farm_bin().as_os_str(), "config".as_ref()])
            .env("FARM_CONFIG", cfg)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{}", cfg.display());
    }
    // FARM_LOG=/dev/full: every write fails; the compiler's stderr stays its own.
    for _ in 0..2 {
        let o = env
            .cmd(farm_bin())
            .env("FARM_LOG", "/dev/full")
            .args(["gcc", "-c", "-Iinc", "src/a.c", "-o", "a.o"])
            .output()
            .unwrap();
        assert!(o.status.success());
        assert!(
            o.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(env.read("a.o"), env.read("plain.o"));
    }
    assert_eq!(env.hits(), 1);
}

/// Everything farm creates in the cache is the user's alone (0700 directories, 0600
/// files) whatever the umask, unless the config says the cache is shared (0770/0660).
#[test]
fn cache_files_are_private_unless_shared() {
    use std::os::unix::fs::PermissionsExt;
    fn walk(dir: &std::path::Path, out: &mut Vec<(std::path::PathBuf, u32, bool)>) {
        for e in fs::read_dir(dir).unwrap().flatten() {
            let m = fs::symlink_metadata(e.path()).unwrap();
            out.push((e.path(), m.permissions().mode() & 0o777, m.is_dir()));
            if m.is_dir() {
                walk(&e.path(), out);
            }
        }
    }
    for (shared, umask, dir_mode, file_mode) in
        [(false, "000", 0o700, 0o600), (true, "077", 0o770, 0o660)]
    {
        let env = Env::new("direct");
        project(&env);
        let script = format!(
            "umask {umask}; {farm} gcc -c -Iinc src/a.c -o a.o && {farm} gcc -c -Iinc src/a.c -o a.o",
            farm = farm_bin().display()
        );
        let mut c = env.cmd("bash");
        c.arg("-ec").arg(&script);
        if shared {
            c.env("FARM_CACHE_SHARED", "1");
        }
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(env.hits(), 1);
        let mode = fs::metadata(&env.cache).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, dir_mode, "cache dir, shared={shared}");
        let mut all = Vec::new();
        walk(&env.cache, &mut all);
        assert!(all.len() > 5, "{all:?}");
        for (p, mode, is_dir) in all {
            let want = if is_dir { dir_mode } else { file_mode };
            assert_eq!(
                mode,
                want,
                "{} (shared={shared}) mode {mode:o}",
                p.display()
            );
        }
    }
}

/// `-march=native` is keyed on this CPU (its `/proc/cpuinfo` identity): stable here,
/// so the second compile hits, and never the same key as an explicit `-march`.
#[test]
fn march_native_is_keyed_on_this_cpu_and_hits_here() {
    require("gcc");
    let env = Env::new("direct");
    env.write(
        "s.c",
        "int f(int *a, int n) { int s = 0; for (int i = 0; i < n; i++) s += a[i]; return s; }\n",
    );
    settle();
    for _ in 0..2 {
        env.farm_ok(&["gcc", "-c", "-O2", "-march=native", "s.c", "-o", "s.o"]);
    }
    assert_eq!((env.hits(), env.misses()), (1, 1));
    env.plain(&["gcc", "-c", "-O2", "-march=native", "s.c", "-o", "p.o"]);
    assert_eq!(env.read("s.o"), env.read("p.o"));
    let log = fs::read_to_string(&env.log).unwrap_or_default();
    assert!(!log.contains("native_cpu_unknown"), "{log}");
}
