//! The attack suite: real farmd processes run as an unprivileged user, attacked the
//! two ways the farm's threat model names (docs/security.md).
//!
//! **Attacker model.**
//! - *A cluster member*: whoever holds any valid node certificate of the cluster CA
//!   (a compromised or careless machine of the farm). It speaks the peer protocol
//!   directly (`farm::net` + `farm::protocol`): it can send any `Job`, `TreeJob`,
//!   `PutBlobs` or `Advert`, not only what a shim would build. A worker must not let
//!   such a job read the worker's files (its key, its state, other jobs' inputs), run
//!   code in the worker (compiler plugins, PCH memory images), write outside the job
//!   directory, corrupt the blob store, or exhaust the worker (time, processes,
//!   memory, the peer table).
//! - *A local user*: an account on a farm machine. Members of group `farmsec` may use
//!   the agent socket (farm-cc as `farmsec-alice` and `farmsec-bob`; bob is the
//!   attacker, alice the victim); `farmsec-eve` is not in the group and must not reach
//!   farmd at all. A local user can send any `AgentRequest` frame, including forged
//!   `Publish` entries, and frames that never finish.
//!
//! farmd runs as `farmsec-d`; its directory (certificate, key, state) is 0700, its
//! socket directory 2750 `farmsec-d:farmsec`, the socket 0660. Users compile in their
//! own directories with their own caches. Each test starts its own farm on loopback
//! and stops it at the end; after each attack farmd must still answer `farm status`
//! and run an ordinary job, and a user build involved must still produce exactly the
//! plain compiler's output.
//!
//! The defences these tests check (each failure message names the one that failed):
//! the worker's `Refused` answers for unsafe flags and `-XD` smuggling, every job in a
//! bubblewrap sandbox that shows only the toolchain (read-only) and its job
//! directory, a job's deadline killing its whole process tree, a cap on what a job
//! may print (`job_output_max`), bounded agent-socket reads, a bounded and
//! sender-checked peer table, an immutable blob store, and result entries published
//! through the agent scoped to the publishing user (unless listed in
//! `trusted_publishers`).
//!
//! Needs root (users, setpriv); as another user every test prints
//! "skipped: needs root" and returns.

mod common;
use common::farmd::run_ok;
use common::rawpeer::job_output;
use common::secfarm::*;
use common::*;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use farm::protocol::{
    AgentRequest, AgentResponse, Blob, EntryKind, Item, PeerRequest, PeerResponse, TreeFile,
    TreeJob,
};

macro_rules! need_root {
    () => {
        if !is_root() {
            eprintln!("skipped: needs root");
            return;
        }
    };
}

/// A farm of `node-1` (home of the users, no CPUs of its own) and `node-2` (a worker),
/// allowing `compilers`, plus `extra_2` lines in node-2's config.
fn home_and_worker(compilers: &[&str], extra_2: &str) -> SecFarm {
    let extra_2 = extra_2.to_string();
    SecFarm::new(2, compilers, move |i| {
        if i == 0 {
            "local_slots = 0".into()
        } else {
            extra_2.clone()
        }
    })
}

/// A one-line account of an answer, for the test's output.
fn outcome(r: &Result<PeerResponse, String>) -> String {
    let text = |b: &[u8]| String::from_utf8_lossy(&b[..b.len().min(200)]).replace('\n', " | ");
    match r {
        Ok(PeerResponse::Refused(why)) => format!("refused: {why}"),
        Ok(PeerResponse::Done(d)) => format!(
            "done: exit {}, object {} bytes, stderr {} bytes: {}",
            d.exit_code,
            job_output(d).len(),
            d.stderr.len(),
            text(&d.stderr)
        ),
        Ok(PeerResponse::TreeDone(d)) => format!(
            "tree done: exit {}, {} outputs, stderr: {}",
            d.exit_code,
            d.outputs.len(),
            text(&d.stderr)
        ),
        Ok(other) => format!("{other:?}"),
        Err(e) => format!("error: {e}"),
    }
}

fn blake3_of(data: &[u8]) -> [u8; 32] {
    *blake3::hash(data).as_bytes()
}

fn blob(data: Vec<u8>) -> Blob {
    Blob {
        digest: blake3_of(&data),
        data,
    }
}

fn put_blobs(peer: &RawPeer, blobs: Vec<Blob>) {
    match peer.ask(&PeerRequest::PutBlobs(blobs)) {
        Ok(PeerResponse::Stored) => {}
        other => panic!("set-up: PutBlobs answered {other:?}"),
    }
}

fn javac_tree(args: &[&str], outputs: &[(&str, &str)], files: &[(&str, &Blob)]) -> PeerRequest {
    static JAVAC: std::sync::OnceLock<farm::protocol::CompilerAd> = std::sync::OnceLock::new();
    PeerRequest::TreeJob(TreeJob {
        family: "javac".into(),
        compiler: JAVAC.get_or_init(|| ad("javac")).clone(),
        args: args.iter().map(|s| s.to_string()).collect(),
        outputs: outputs
            .iter()
            .map(|(r, p)| (r.to_string(), p.to_string()))
            .collect(),
        files: files
            .iter()
            .map(|(p, b)| TreeFile {
                path: p.to_string(),
                digest: b.digest,
            })
            .collect(),
    })
}

/// javac in `dir`, asserting success.
fn javac(dir: &Path, args: &[&str]) {
    let o = Command::new("javac")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "set-up: javac {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Where a node's blob store keeps a blob (the local tier's layout for kind Blob:
/// `v1/<first hex digit>/<next two>/<hex>.b`).
fn blob_path(node: &SecNode, hex: &str) -> PathBuf {
    node.state()
        .join("blobs/v1")
        .join(&hex[..1])
        .join(&hex[1..3])
        .join(format!("{hex}.b"))
}

/// The blobs of a node's store, and those that no longer hash to their name.
fn blob_check(node: &SecNode) -> (usize, Vec<String>) {
    let mut n = 0;
    let mut bad = Vec::new();
    if !node.state().join("blobs").is_dir() {
        return (0, bad);
    }
    for (rel, data) in files_with_ext(&node.state().join("blobs"), "b") {
        let name = Path::new(&rel)
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let got = farm::fsutil::hex(&blake3_of(&data));
        if got != name {
            bad.push(format!("blob {name} now hashes to {got}"));
        }
        n += 1;
    }
    (n, bad)
}

// ------------------------------------------------------------------ 1, 2, 3: files

/// A member's gcc jobs try to read the worker's files: its private key by `.incbin`
/// with an absolute and relative path (into the object), `.include` (into the
/// assembler's error messages), `-fno-preprocessed` with `#include`; and what the
/// job's view should not hold at all (the sandbox check): farmd's config and a blob
/// of its store (another tenant's input). Each is refused, or runs without a line of
/// the file in what comes back.
#[test]
fn member_jobs_cannot_read_worker_files() {
    need_root!();
    let _serial = one_at_a_time();
    require("gcc");
    let mut farm = home_and_worker(&["gcc"], "");
    let worker = &farm.nodes[1];
    let key_path = worker.key_path();
    let key_secret = secret_lines(&fs::read(&key_path).unwrap());
    assert!(!key_secret.is_empty());
    let key = key_path.display().to_string();
    let config = worker.config.display().to_string();
    let config_secret: Vec<Vec<u8>> = fs::read_to_string(&worker.config)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("listen") || l.starts_with("socket ="))
        .map(|l| l.as_bytes().to_vec())
        .collect();
    assert_eq!(config_secret.len(), 2);
    let peer = farm.member_to(1);
    let tenant = format!(
        "FARMSEC another tenant's source {} {:?}\n",
        std::process::id(),
        Instant::now()
    );
    let tenant_blob = blob(tenant.repeat(4).into_bytes());
    let hex = farm::fsutil::hex(&tenant_blob.digest);
    let stored = blob_path(worker, &hex);
    put_blobs(&peer, vec![tenant_blob]);
    let tenant_secret = vec![tenant.trim_end().as_bytes().to_vec()];
    let incbin = |p: &str| format!("__asm__(\".incbin \\\"{p}\\\"\");\nint x;\n");
    // (what, args, source, the lines that must not come back)
    type Case<'a> = (String, Vec<&'a str>, String, &'a Vec<Vec<u8>>);
    let cases: Vec<Case> = vec![
        (
            "`.incbin` of the worker's key by absolute path".into(),
            vec!["-O2"],
            incbin(&key),
            &key_secret,
        ),
        (
            "`.incbin` of the worker's key by a relative ../../.. path".into(),
            vec!["-O2"],
            incbin(&format!("../../../{}.key", worker.name)),
            &key_secret,
        ),
        (
            "`.incbin` of the worker's key through /proc/self/cwd".into(),
            vec!["-O2"],
            incbin(&format!("/proc/self/cwd/../../../{}.key", worker.name)),
            &key_secret,
        ),
        (
            "`.include` of the worker's key (its lines quoted in errors)".into(),
            vec!["-O2"],
            format!("__asm__(\".include \\\"{key}\\\"\");\nint x;\n"),
            &key_secret,
        ),
        (
            "`-fno-preprocessed` with `#include` of the worker's key".into(),
            vec!["-O2", "-fno-preprocessed"],
            format!("#include \"{key}\"\nint x;\n"),
            &key_secret,
        ),
        (
            "`.incbin` of farmd's config (the job's view)".into(),
            vec!["-O2"],
            incbin(&config),
            &config_secret,
        ),
        (
            "`.incbin` of a blob in farmd's store (the job's view)".into(),
            vec!["-O2"],
            incbin(&stored.display().to_string()),
            &tenant_secret,
        ),
    ];
    let mut failed = Vec::new();
    for (what, args, source, secret) in &cases {
        let r = peer.ask(&gcc_job(args, source.as_bytes()));
        eprintln!("{what}: {}", outcome(&r));
        match r {
            Ok(PeerResponse::Refused(_)) | Err(_) => {}
            Ok(PeerResponse::Done(r)) => {
                let n = leaks(&job_output(&r), secret)
                    + leaks(&r.stderr, secret)
                    + leaks(&r.stdout, secret);
                if n > 0 {
                    failed.push(format!(
                        "{what}: {n} of {} lines came back (exit {}, object {} bytes, stderr \
                         {} bytes)",
                        secret.len(),
                        r.exit_code,
                        job_output(&r).len(),
                        r.stderr.len()
                    ));
                }
            }
            Ok(other) => failed.push(format!("{what}: unexpected answer {other:?}")),
        }
    }
    assert!(
        failed.is_empty(),
        "defence failed: worker sandbox (bwrap: a job sees only the toolchain and its job \
         dir) / argument check —\n{}",
        failed.join("\n")
    );
    farm.assert_still_serving(1, "file-read jobs");
}

/// `#pragma GCC pch_preprocess` names a file gcc loads as a memory image (a PCH): a
/// member points it at a PCH it stored in the worker's blob store. The job is refused
/// or fails without loading it.
#[test]
fn member_jobs_cannot_load_pch_images() {
    need_root!();
    let _serial = one_at_a_time();
    require("gcc");
    let mut farm = home_and_worker(&["gcc"], "");
    let tmp = tempfile::tempdir().unwrap();
    fs::write(
        tmp.path().join("h.h"),
        "static inline int from_pch(void) { return 1234567; }\n",
    )
    .unwrap();
    sh(tmp.path(), "gcc -O2 -x c-header h.h -o h.gch");
    let pch = blob(fs::read(tmp.path().join("h.gch")).unwrap());
    let hex = farm::fsutil::hex(&pch.digest);
    let peer = farm.member_to(1);
    put_blobs(&peer, vec![pch]);
    let stored = blob_path(&farm.nodes[1], &hex);
    assert!(stored.is_file(), "set-up: the PCH blob is at {stored:?}");
    let source = format!(
        "#pragma GCC pch_preprocess \"{}\"\nint use(void) {{ return from_pch(); }}\n",
        stored.display()
    );
    match peer.ask(&gcc_job(&["-O2"], source.as_bytes())) {
        Ok(PeerResponse::Refused(_)) | Err(_) => {}
        Ok(PeerResponse::Done(r)) => assert_ne!(
            r.exit_code,
            0,
            "defence failed: `#pragma GCC pch_preprocess` (refuse it / sandbox the job) — the \
             worker loaded the PCH memory image {} and compiled a use of its function",
            stored.display()
        ),
        Ok(other) => panic!("unexpected answer {other:?}"),
    }
    farm.assert_still_serving(1, "a PCH job");
}

/// clang options that write or read files the arguments name are refused by the
/// worker, and nothing appears outside the job directory.
#[test]
fn member_jobs_cannot_use_clang_file_flags() {
    need_root!();
    let _serial = one_at_a_time();
    require("clang");
    let mut farm = home_and_worker(&["gcc", "clang"], "");
    let key = farm.nodes[1].key_path().display().to_string();
    let tag = std::process::id();
    let record = format!("/tmp/farmsec-record-{tag}");
    let stat = format!("/tmp/farmsec-procstat-{tag}");
    let peer = farm.member_to(1);
    let flags = [
        format!("-foptimization-record-file={record}"),
        format!("-fproc-stat-report={stat}"),
        format!("-fbasic-block-sections=list={key}"),
    ];
    let mut failed = Vec::new();
    for flag in &flags {
        let r = peer.ask(&compile_job(
            "clang",
            "cpp-output",
            &["-O2", flag.as_str()],
            b"int f(int x) { return x * 3; }\n",
        ));
        eprintln!("{flag}: {}", outcome(&r));
        if !matches!(r, Ok(PeerResponse::Refused(_))) {
            failed.push(format!("`{flag}` was not refused: {}", outcome(&r)));
        }
    }
    for p in [&record, &stat] {
        if Path::new(p).exists() {
            let _ = fs::remove_file(p);
            failed.push(format!("a job wrote {p} outside its job directory"));
        }
    }
    assert!(
        failed.is_empty(),
        "defence failed: worker argument check (clang file flags) / sandbox —\n{}",
        failed.join("\n")
    );
    farm.assert_still_serving(1, "clang file flags");
}

// ------------------------------------------------------------------ 4, 5: javac

/// Two evil jars: `plugin.jar` (a javac `Plugin` service; its constructor and its
/// `init` append to `marker`) and `proc.jar` (an annotation processor service; its
/// `init` and `process` append). The marker then says what ran.
fn evil_jars(dir: &Path, marker: &Path) -> (Vec<u8>, Vec<u8>) {
    let m = marker.display();
    let write = |token: &str| {
        format!(
            "try {{ java.nio.file.Files.writeString(java.nio.file.Path.of(\"{m}\"), \"{token} \", \
             java.nio.file.StandardOpenOption.CREATE, java.nio.file.StandardOpenOption.APPEND); }} \
             catch (Exception x) {{ }}"
        )
    };
    fs::create_dir_all(dir.join("src")).unwrap();
    fs::write(
        dir.join("src/Evil.java"),
        format!(
            "public class Evil implements com.sun.source.util.Plugin {{\n\
             public Evil() {{ {} }}\n\
             public String getName() {{ return \"Evil\"; }}\n\
             public void init(com.sun.source.util.JavacTask t, String... args) {{ {} }}\n}}\n",
            write("plugin-loaded"),
            write("plugin-started")
        ),
    )
    .unwrap();
    fs::write(
        dir.join("src/EvilProc.java"),
        format!(
            "@javax.annotation.processing.SupportedAnnotationTypes(\"*\")\n\
             public class EvilProc extends javax.annotation.processing.AbstractProcessor {{\n\
             public synchronized void init(javax.annotation.processing.ProcessingEnvironment e) {{\n\
             super.init(e); {} }}\n\
             public boolean process(java.util.Set<? extends javax.lang.model.element.TypeElement> a,\n\
             javax.annotation.processing.RoundEnvironment r) {{ {} return false; }}\n}}\n",
            write("processor-started"),
            write("processor-ran")
        ),
    )
    .unwrap();
    javac(dir, &["-d", "cls", "src/Evil.java", "src/EvilProc.java"]);
    for (jar, class, service) in [
        ("plugin.jar", "Evil", "com.sun.source.util.Plugin"),
        (
            "proc.jar",
            "EvilProc",
            "javax.annotation.processing.Processor",
        ),
    ] {
        let d = dir.join(jar).with_extension("d");
        fs::create_dir_all(d.join("META-INF/services")).unwrap();
        fs::copy(
            dir.join(format!("cls/{class}.class")),
            d.join(format!("{class}.class")),
        )
        .unwrap();
        fs::write(
            d.join("META-INF/services").join(service),
            format!("{class}\n"),
        )
        .unwrap();
        sh(dir, &format!("jar cf {jar} -C {} .", d.display()));
    }
    (
        fs::read(dir.join("plugin.jar")).unwrap(),
        fs::read(dir.join("proc.jar")).unwrap(),
    )
}

/// A member's javac tree jobs try to run code in the worker: a class-path jar with a
/// `Plugin` service and no option at all (JDK 17's javac instantiates every Plugin
/// service to ask `autoStart`), and a plugin, an annotation processor and a
/// file-writing debug option smuggled through `-XD`. No code of the member's runs
/// in the worker, the `-XD` jobs are refused, and no file appears outside the job
/// directory.
#[test]
fn member_javac_jobs_cannot_run_code_or_write_files() {
    need_root!();
    let _serial = one_at_a_time();
    require("javac");
    require("jar");
    let mut farm = home_and_worker(&["gcc", "javac"], "");
    let tmp = tempfile::tempdir().unwrap();
    let tag = std::process::id();
    let marker = Path::new("/tmp").join(format!("farmsec-javac-marker-{tag}"));
    let dump = Path::new("/tmp").join(format!("farmsec-javac-dump-{tag}"));
    let _ = fs::remove_file(&marker);
    let _ = fs::remove_dir_all(&dump);
    // A directory farmsec-d could write, so a dump would land there and show.
    fs::create_dir_all(&dump).unwrap();
    run_ok(Command::new("chown").arg(DAEMON).arg(&dump));
    let (plugin, proc) = evil_jars(tmp.path(), &marker);
    let (plugin, proc) = (blob(plugin), blob(proc));
    let src = blob(
        b"public class A { java.util.List<String> l = java.util.List.of(\"a\"); \
          int n() { return l.size(); } }\n"
            .to_vec(),
    );
    let peer = farm.member_to(1);
    put_blobs(&peer, vec![plugin.clone(), proc.clone(), src.clone()]);
    let files = [
        ("/w/lib/plugin.jar", &plugin),
        ("/w/lib/proc.jar", &proc),
        ("/w/src/A.java", &src),
    ];
    let out = [("classes", "/w/out")];
    let job = |extra: &[&str]| {
        let mut a = vec!["-d", "/w/out"];
        a.extend_from_slice(extra);
        a.push("/w/src/A.java");
        javac_tree(&a, &out, &files)
    };
    let dump_opt = format!("-XDdebug.dumpInferenceGraphsTo={}", dump.display());
    // (what, job, must it be refused)
    let cases = [
        (
            "a class-path jar with a Plugin service, no option",
            job(&["-classpath", "/w/lib/plugin.jar"]),
            false,
        ),
        (
            "-XD-Xplugin:=Evil",
            job(&["-classpath", "/w/lib/plugin.jar", "-XD-Xplugin:=Evil"]),
            true,
        ),
        (
            "-XD-Xplugin:=Evil with -processorpath",
            job(&["-processorpath", "/w/lib/plugin.jar", "-XD-Xplugin:=Evil"]),
            true,
        ),
        (
            "-XD-processor=EvilProc",
            job(&["-classpath", "/w/lib/proc.jar", "-XD-processor=EvilProc"]),
            true,
        ),
        (
            "-XD-proc:=full",
            job(&["-classpath", "/w/lib/proc.jar", "-XD-proc:=full"]),
            true,
        ),
        ("-XDdebug.dumpInferenceGraphsTo", job(&[&dump_opt]), true),
    ];
    let mut failed = Vec::new();
    for (what, req, must_refuse) in &cases {
        let r = peer.ask(req);
        eprintln!("{what}: {}", outcome(&r));
        let ran = fs::read_to_string(&marker).unwrap_or_default();
        let _ = fs::remove_file(&marker);
        let dumped = fs::read_dir(&dump).map(|d| d.count()).unwrap_or(0);
        if !ran.is_empty() {
            failed.push(format!(
                "`{what}` ran the member's code in the worker (marker: {})",
                ran.trim()
            ));
        }
        if dumped > 0 {
            failed.push(format!(
                "`{what}` wrote {dumped} files into {} outside the job directory",
                dump.display()
            ));
        }
        if *must_refuse && !matches!(r, Ok(PeerResponse::Refused(_))) {
            let r = match r {
                Ok(PeerResponse::TreeDone(t)) => format!("TreeDone(exit {})", t.exit_code),
                other => format!("{other:?}"),
            };
            failed.push(format!("`{what}` was not refused: {r}"));
        }
    }
    let _ = fs::remove_dir_all(&dump);
    assert!(
        failed.is_empty(),
        "defence failed: javac -XD option filter / no member code in the worker (sandbox) —\n{}",
        failed.join("\n")
    );
    farm.assert_still_serving(1, "javac -XD jobs");
}

/// A tree job without `-d` whose source recompiles a class of its class path: javac
/// writes the class next to the source, where the worker put the class path's blob.
/// The blob store must stay as it was (every blob hashes to its name), and a victim's
/// next compile against that class gets the right one (a compile-time constant of
/// it is inlined, so a poisoned class would show in the victim's program).
#[test]
fn member_javac_job_cannot_tamper_with_blobs() {
    need_root!();
    let _serial = one_at_a_time();
    require("javac");
    require("java");
    let mut farm = home_and_worker(&["gcc", "javac"], "");
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    fs::create_dir_all(t.join("orig")).unwrap();
    fs::write(
        t.join("orig/V.java"),
        "public class V { public static final int VALUE = 1; }\n",
    )
    .unwrap();
    javac(&t.join("orig"), &["V.java"]);
    let v_class = blob(fs::read(t.join("orig/V.class")).unwrap());
    let evil_src = blob(b"public class V { public static final int VALUE = 666; }\n".to_vec());
    let main_src = blob(
        b"public class Main { public static void main(String[] a) { System.out.println(V.VALUE); } }\n"
            .to_vec(),
    );
    let peer = farm.member_to(1);
    put_blobs(
        &peer,
        vec![v_class.clone(), evil_src.clone(), main_src.clone()],
    );
    // The attack: no -d, so V.class is written over /w/cp/V.class, the blob's link.
    let r = peer.ask(&javac_tree(
        &["-classpath", "/w/cp", "/w/cp/V.java"],
        &[],
        &[("/w/cp/V.class", &v_class), ("/w/cp/V.java", &evil_src)],
    ));
    eprintln!("tampering job: {}", outcome(&r));
    let (n, tampered) = blob_check(&farm.nodes[1]);
    assert!(n >= 3, "set-up: the blobs are in the store ({n})");
    // The victim: Main against the class path's V, as a peer would compile it.
    let victim = peer.ask(&javac_tree(
        &["-d", "/v/out", "-classpath", "/v/cp", "/v/src/Main.java"],
        &[("classes", "/v/out")],
        &[("/v/cp/V.class", &v_class), ("/v/src/Main.java", &main_src)],
    ));
    let out = match victim {
        Ok(PeerResponse::TreeDone(r)) => {
            assert_eq!(r.exit_code, 0, "{}", String::from_utf8_lossy(&r.stderr));
            r.outputs
        }
        other => panic!("the victim's javac job did not run: {other:?}"),
    };
    let run = t.join("run");
    fs::create_dir_all(&run).unwrap();
    fs::copy(t.join("orig/V.class"), run.join("V.class")).unwrap();
    let main = out
        .iter()
        .find(|o| o.path == "classes/Main.class")
        .expect("Main.class came back");
    fs::write(run.join("Main.class"), &main.data).unwrap();
    let o = sh(&run, "java -cp . Main");
    let printed = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert!(
        tampered.is_empty() && printed == "1",
        "defence failed: blob store immutability (a job's output overwrote a hard-linked \
         blob) — after a javac job without -d: {tampered:?} on node-2; the victim's program \
         prints {printed} (plain javac: 1)"
    );
    farm.assert_still_serving(1, "a blob-tampering job");
}

/// The same path named twice in one tree job (also as `/w/./cp/V.class`): the worker
/// must never write the second file through the first, a hard link into its blob
/// store (that replaced a public blob's bytes for every later job).
#[test]
fn member_tree_job_cannot_overwrite_a_blob_through_a_repeated_path() {
    need_root!();
    let _serial = one_at_a_time();
    require("javac");
    let mut farm = home_and_worker(&["gcc", "javac"], "");
    let good = blob(b"public class V { public static final int VALUE = 1; }\n".to_vec());
    let evil = blob(b"public class V { public static final int VALUE = 666; }\n".to_vec());
    let peer = farm.member_to(1);
    put_blobs(&peer, vec![good.clone(), evil.clone()]);
    for second in ["/w/cp/V.java", "/w/./cp/V.java", "/w/x/../cp/V.java"] {
        let r = peer.ask(&javac_tree(
            &["-d", "/w/out", "/w/cp/V.java"],
            &[("classes", "/w/out")],
            &[("/w/cp/V.java", &good), (second, &evil)],
        ));
        assert!(
            matches!(r, Ok(PeerResponse::Refused(_))),
            "defence failed: a tree job naming {second} twice was not refused: {}",
            outcome(&r)
        );
        let (n, tampered) = blob_check(&farm.nodes[1]);
        assert!(n >= 2, "set-up: the blobs are in the store ({n})");
        assert!(
            tampered.is_empty(),
            "defence failed: blob store immutability — naming {second} twice rewrote {tampered:?}"
        );
    }
    farm.assert_still_serving(1, "a repeated-path tree job");
}

/// A tree job's output role is a directory name inside the job's `out/`: an absolute
/// role (`/etc/farm`, the node's own directory) once made the worker create that
/// directory and send back every file in it, the node key included, to a member and,
/// through the agent, to any local user of the socket.
#[test]
fn tree_job_output_roles_cannot_name_worker_directories() {
    need_root!();
    let _serial = one_at_a_time();
    require("javac");
    let mut farm = home_and_worker(&["gcc", "javac"], "");
    let src = blob(b"public class A { }\n".to_vec());
    let node_dir = farm.nodes[1].dir.to_string_lossy().into_owned();
    let created = format!("{node_dir}/made-by-a-job");
    let key = fs::read(farm.nodes[1].key_path()).unwrap();
    let leaked = |outputs: &[farm::protocol::OutputFile]| {
        outputs
            .iter()
            .any(|o| o.data == key || o.path.ends_with(".key") || o.path.ends_with(".toml"))
    };
    let peer = farm.member_to(1);
    put_blobs(&peer, vec![src.clone()]);
    let double = format!("/{node_dir}");
    for role in [
        node_dir.as_str(),
        double.as_str(),
        created.as_str(),
        ".",
        "a/b",
    ] {
        let r = peer.ask(&javac_tree(
            &["-d", "/w/out", "/w/A.java"],
            &[("classes", "/w/out"), (role, "/w/x")],
            &[("/w/A.java", &src)],
        ));
        if let Ok(PeerResponse::TreeDone(d)) = &r {
            assert!(
                !leaked(&d.outputs),
                "defence failed: output role {role:?} sent the worker's files back to a member"
            );
        }
        assert!(
            matches!(r, Ok(PeerResponse::Refused(_))),
            "defence failed: output role {role:?} was not refused: {}",
            outcome(&r)
        );
    }
    assert!(
        !Path::new(&created).exists(),
        "defence failed: a job's output role created {created}"
    );
    // The same job from a local user through the agent.
    let mut s = connect_as(&farm.nodes[0].socket(), "farmsec-bob").unwrap();
    agent_ask(&mut s, &AgentRequest::PutBlobs(vec![src.clone()])).unwrap();
    let PeerRequest::TreeJob(job) = javac_tree(
        &["-d", "/w/out", "/w/A.java"],
        &[("classes", "/w/out"), (node_dir.as_str(), "/w/x")],
        &[("/w/A.java", &src)],
    ) else {
        unreachable!()
    };
    match agent_ask(&mut s, &AgentRequest::CompileTree(job)) {
        Ok(AgentResponse::TreeCompiled(d)) => assert!(
            !leaked(&d.outputs) && d.outputs.iter().all(|o| o.path.starts_with("classes/")),
            "defence failed: through the agent, bob received {:?}",
            d.outputs.iter().map(|o| &o.path).collect::<Vec<_>>()
        ),
        Ok(AgentResponse::Local(_)) => {}
        other => panic!("unexpected agent answer: {other:?}"),
    }
    farm.assert_still_serving(1, "jobs with absolute output roles");
}

// ------------------------------------------------------------------ 6: users

/// A fake agent that records what a shim asks (its keys, and the entries it
/// publishes) and sends every compile home: how the test learns the key alice's
/// compile will use, from bob's compile of the same file.
struct Recorder {
    path: std::path::PathBuf,
    log: std::sync::Arc<std::sync::Mutex<Vec<AgentRequest>>>,
}

impl Recorder {
    fn new(dir: &Path) -> Recorder {
        let path = dir.join("recorder.sock");
        let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log2 = log.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                let log = log2.clone();
                std::thread::spawn(move || loop {
                    let Ok(req) = farm::protocol::read_sync::<AgentRequest>(
                        &mut s,
                        farm::protocol::MAX_FRAME,
                    ) else {
                        return;
                    };
                    let resp = match &req {
                        AgentRequest::Fetch { .. } => AgentResponse::Missing,
                        AgentRequest::Publish { .. } | AgentRequest::LocalDone { .. } => {
                            AgentResponse::Published
                        }
                        AgentRequest::MissingBlobs(_) => AgentResponse::MissingBlobs(vec![]),
                        _ => AgentResponse::Local("recorder".into()),
                    };
                    log.lock().unwrap().push(req);
                    if farm::protocol::write_sync(&mut s, &resp).is_err() {
                        return;
                    }
                });
            }
        });
        Recorder { path, log }
    }

    /// The result entries published since the last call, and the result keys fetched.
    fn take(&self) -> (Vec<Item>, Vec<[u8; 32]>) {
        let mut items = Vec::new();
        let mut keys = Vec::new();
        for r in self.log.lock().unwrap().drain(..) {
            match r {
                AgentRequest::Publish { items: i, .. } => {
                    items.extend(i.into_iter().filter(|i| i.kind == EntryKind::Result))
                }
                AgentRequest::Fetch {
                    kind: EntryKind::Result,
                    key,
                } => keys.push(key),
                _ => {}
            }
        }
        (items, keys)
    }
}

/// Bob's compile of `source` as `a.c` in `dir`, through the recorder: the result key
/// and the published entry.
fn bobs_entry(farm: &SecFarm, rec: &Recorder, dir: &Path, source: &str) -> Item {
    fs::write(dir.join("a.c"), source).unwrap();
    set_mtime(&dir.join("a.c"), 1_600_000_000);
    let _ = fs::remove_file(dir.join("a.o"));
    farm.cc_as(BOB, &rec.path, dir, &["-O2", "-c", "a.c", "-o", "a.o"]);
    let _ = fs::remove_file(dir.join("a.o"));
    // Bob's own cache would answer the next compile of the same text without asking.
    let bob = farm.user_dir(BOB).join("cache");
    let _ = fs::remove_dir_all(&bob);
    fs::create_dir_all(&bob).unwrap();
    Command::new("chown")
        .arg(format!("{BOB}:"))
        .arg(&bob)
        .status()
        .unwrap();
    let (items, keys) = rec.take();
    assert_eq!(
        items.len(),
        1,
        "set-up: bob's compile published one result (keys asked: {})",
        keys.len()
    );
    assert!(
        keys.contains(&items[0].key),
        "set-up: the published key is the one fetched"
    );
    items.into_iter().next().unwrap()
}

/// Bob forges result entries under the key alice's compile uses; alice's object is
/// still exactly plain gcc's. Eve, not in group farmsec, cannot connect to the agent
/// socket at all, and her build still succeeds.
#[test]
fn local_users_cannot_poison_each_other_and_outsiders_are_kept_out() {
    need_root!();
    let _serial = one_at_a_time();
    require("gcc");
    let mut farm = home_and_worker(&["gcc"], "");
    let home_sock = farm.nodes[0].socket();
    let shared = farm.shared_dir();
    let rec = Recorder::new(&shared);
    let good = "int answer(void) { return 42; }\n";
    let evil = "int answer(void) { return 666; }\n";
    let alices = bobs_entry(&farm, &rec, &shared, good);
    let forged = bobs_entry(&farm, &rec, &shared, evil);
    assert_ne!(alices.key, forged.key);
    // Bob publishes his object under alice's key, through the agent.
    let mut bob = connect_as(&home_sock, BOB).expect("bob (group farmsec) reaches the agent");
    let r = agent_ask(
        &mut bob,
        &AgentRequest::Publish {
            items: vec![Item {
                kind: EntryKind::Result,
                key: alices.key,
                data: forged.data.clone(),
            }],
            local_ms: 0,
        },
    );
    assert!(matches!(r, Ok(AgentResponse::Published)), "{r:?}");
    // Publishing is asynchronous: wait until bob himself would get it back (or 2 s).
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(2) {
        let mut b = connect_as(&home_sock, BOB).unwrap();
        if let Ok(AgentResponse::Cached { .. }) = agent_ask(
            &mut b,
            &AgentRequest::Fetch {
                kind: EntryKind::Result,
                key: alices.key,
            },
        ) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Alice compiles the good text: plain gcc's object, not bob's.
    fs::write(shared.join("a.c"), good).unwrap();
    set_mtime(&shared.join("a.c"), 1_600_000_000);
    sh(&shared, "gcc -O2 -c a.c -o plain.o");
    let plain = fs::read(shared.join("plain.o")).unwrap();
    farm.cc_as(
        ALICE,
        &home_sock,
        &shared,
        &["-O2", "-c", "a.c", "-o", "a.o"],
    );
    let got = fs::read(shared.join("a.o")).unwrap();
    let mut failed = Vec::new();
    if got != plain {
        failed.push(format!(
            "per-user scoping of agent-published entries (trusted_publishers): alice's object \
             is bob's forged one (alice's hits: {})",
            farm.stats_of(ALICE)["hits"]
        ));
    }
    let _ = fs::remove_file(shared.join("a.o"));

    // An entry with no files under alice's key satisfies nothing.
    let good2 = "int twice(int x) { return 2 * x; }\n";
    let alices2 = bobs_entry(&farm, &rec, &shared, good2);
    let zero = farm::key::ResultEntry {
        stdout: b"",
        stderr: b"",
        outputs: vec![],
        compile_ms: 1,
    }
    .encode();
    let zero = if farm::store::decode_entry(&alices2.data).is_ok() {
        farm::store::encode_entry(&zero).unwrap()
    } else {
        zero
    };
    let mut bob = connect_as(&home_sock, BOB).unwrap();
    let r = agent_ask(
        &mut bob,
        &AgentRequest::Publish {
            items: vec![Item {
                kind: EntryKind::Result,
                key: alices2.key,
                data: zero,
            }],
            local_ms: 0,
        },
    );
    assert!(matches!(r, Ok(AgentResponse::Published)), "{r:?}");
    std::thread::sleep(Duration::from_millis(700));
    fs::write(shared.join("a.c"), good2).unwrap();
    set_mtime(&shared.join("a.c"), 1_600_000_000);
    sh(&shared, "gcc -O2 -c a.c -o plain.o");
    let plain = fs::read(shared.join("plain.o")).unwrap();
    farm.cc_as(
        ALICE,
        &home_sock,
        &shared,
        &["-O2", "-c", "a.c", "-o", "a.o"],
    );
    if fs::read(shared.join("a.o")).unwrap() != plain {
        failed.push(
            "per-user scoping of agent-published entries: an entry with no files from bob \
             changed alice's object"
                .to_string(),
        );
    }

    // Eve is not in group farmsec: no connection at all, and her build still works.
    if connect_as(&home_sock, EVE).is_ok() {
        failed.push(
            "agent socket permissions (dir 2750 group farmsec, socket 0660): eve, not in group \
             farmsec, connected to the agent"
                .to_string(),
        );
    }
    let eve = farm.user_dir(EVE).join("work");
    fs::write(eve.join("e.c"), good).unwrap();
    Command::new("chown")
        .arg(format!("{EVE}:"))
        .arg(eve.join("e.c"))
        .status()
        .unwrap();
    farm.cc_as(EVE, &home_sock, &eve, &["-O2", "-c", "e.c", "-o", "e.o"]);
    sh(&eve, "gcc -O2 -c e.c -o plain.o");
    assert!(
        fs::read(eve.join("e.o")).unwrap() == fs::read(eve.join("plain.o")).unwrap(),
        "eve's object differs from plain gcc's"
    );
    farm.assert_still_serving(1, "forged publishes");
    assert!(
        failed.is_empty(),
        "defence failed: {}",
        failed.join("\ndefence failed: ")
    );
}

// ------------------------------------------------------------------ 7: resources

/// C++ whose compile runs for many minutes and prints nothing meanwhile (a thousand
/// separate constexpr evaluations of about a second each, every one under gcc's
/// operation limit: a diagnostic would end it early by SIGPIPE once farmd stops
/// reading).
fn endless_cxx() -> Vec<u8> {
    let mut s = String::from(
        "template <int N> constexpr long spin() { long s = N; for (long i = 0; i < 1000; ++i) \
         for (long j = 0; j < 1000; ++j) s += i ^ j; return s; }\n\
         template <int N> constexpr long val = spin<N>();\nlong f() { return 0",
    );
    for i in 1..1000 {
        s.push_str(&format!(" + val<{i}>"));
    }
    s.push_str("; }\n");
    s.into_bytes()
}

/// A job that would compile for minutes: after `job_timeout` (3 s) no compiler process
/// of it is left, and its slot is free again.
#[test]
fn endless_job_is_killed_whole_at_its_deadline() {
    need_root!();
    let _serial = one_at_a_time();
    require("g++");
    let mut farm = home_and_worker(&["gcc", "g++"], "job_timeout = 3");
    let peer = farm.member_to(1);
    let t0 = Instant::now();
    let r = peer.ask(&compile_job(
        "g++",
        "c++-cpp-output",
        &["-O2"],
        &endless_cxx(),
    ));
    let took = t0.elapsed();
    eprintln!("endless job after {took:?}: {}", outcome(&r));
    assert!(
        !matches!(&r, Ok(PeerResponse::Done(d)) if d.exit_code == 0),
        "set-up: the endless job finished: {}",
        outcome(&r)
    );
    assert!(
        took < Duration::from_secs(10),
        "defence failed: job deadline — the answer took {took:?} (job_timeout = 3)"
    );
    std::thread::sleep(Duration::from_millis(1500));
    let jobs = farm.nodes[1].state().join("jobs");
    let left = procs_under("cc1plus", &jobs);
    kill_pids(&left);
    assert!(
        left.is_empty(),
        "defence failed: killing a job's whole process tree at its deadline — cc1plus \
         {left:?} of farmsec-d still running after the 3 s job_timeout"
    );
    // The slot is free again.
    let t0 = Instant::now();
    loop {
        let st = farm.nodes[1].status();
        if st["free"] == st["slots"] {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "defence failed: job deadline — the slot was not given back: {st}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    farm.assert_still_serving(1, "an endless job");
}

/// A job that prints ~48 MB of warnings: the answer is refused or cut short, and
/// farmd's memory stays bounded.
#[test]
fn huge_job_output_is_capped() {
    need_root!();
    let _serial = one_at_a_time();
    require("gcc");
    let mut farm = home_and_worker(&["gcc"], "");
    let mut src = Vec::new();
    for _ in 0..3 {
        src.extend_from_slice(b"#pragma GCC warning \"");
        src.extend_from_slice(&vec![b'w'; 8 << 20]);
        src.extend_from_slice(b"\"\n");
    }
    src.extend_from_slice(b"int z;\n");
    let peer = farm.member_to(1);
    let r = peer.ask(&gcc_job(&["-O2"], &src));
    let hwm = farm.nodes[1].mem_kb("VmHWM");
    match &r {
        Ok(PeerResponse::Refused(why)) => assert!(!why.is_empty()),
        Ok(PeerResponse::Done(d)) => assert!(
            d.stderr.len() <= 16 << 20,
            "defence failed: job_output_max — the worker returned {} bytes of stderr (its \
             farmd peaked at {hwm} kB)",
            d.stderr.len()
        ),
        _ => panic!(
            "defence failed: job_output_max — no clear answer to a job with huge output: {}",
            outcome(&r)
        ),
    }
    assert!(
        hwm < 300 * 1024,
        "defence failed: job_output_max / bounded output buffers — the worker's farmd \
         peaked at {hwm} kB"
    );
    farm.assert_still_serving(1, "a job with huge output");
}

/// 50 agent-socket clients each announce a 60 MB frame, send 4 MB of it and hang:
/// farmd keeps answering `farm status`, and its memory stays bounded.
#[test]
fn agent_socket_slow_clients_cannot_exhaust_farmd() {
    need_root!();
    let _serial = one_at_a_time();
    let mut farm = home_and_worker(&["gcc"], "");
    let home = &farm.nodes[0];
    let rss0 = home.mem_kb("VmRSS");
    let chunk = vec![0x5au8; 64 << 10];
    let mut conns = Vec::new();
    for _ in 0..50 {
        let Ok(mut s) = connect_as(&home.socket(), ALICE) else {
            break;
        };
        s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut ok = s.write_all(&(60u32 << 20).to_le_bytes()).is_ok();
        for _ in 0..64 {
            if !ok {
                break;
            }
            ok = s.write_all(&chunk).is_ok();
        }
        conns.push(s);
    }
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    let st = home.try_status();
    let took = t0.elapsed();
    let rss1 = home.mem_kb("VmRSS");
    assert!(
        st.is_some() && took < Duration::from_secs(5),
        "defence failed: bounded agent-socket reads — `farm status` did not answer with 50 \
         hanging clients (took {took:?})"
    );
    assert!(
        rss1 < rss0 + 100 * 1024,
        "defence failed: bounded agent-socket reads — farmd grew from {rss0} kB to {rss1} kB \
         with 50 clients hanging in 60 MB frames"
    );
    drop(conns);
    farm.assert_still_serving(1, "hanging agent clients");
}

/// 2000 adverts with junk addresses from a member: a genuine node that joins later is
/// still learned, and no junk address that is not the sender's is in the peer table.
#[test]
fn advert_flood_does_not_fill_the_peer_table() {
    need_root!();
    let _serial = one_at_a_time();
    let mut farm = home_and_worker(&["gcc"], "");
    let peer = farm.member_to(0);
    let mut junk = Vec::new();
    for i in 0..2000u32 {
        let addr = match i % 4 {
            0 => format!("127.0.0.2:{}", 1000 + i),
            1 => format!("10.{}.{}.9:{}", i / 256, i % 256, 2000 + i),
            2 => format!("junk-{i}.invalid:1"),
            _ => format!("[::2]:{}", 3000 + i),
        };
        let r = peer.ask(&PeerRequest::Advert(farm::protocol::Advert {
            version: farm::protocol::VERSION,
            node: "mallory".into(),
            addr: addr.clone(),
            slots: 64,
            free: 64,
            ..Default::default()
        }));
        assert!(r.is_ok() || i > 0, "set-up: an advert is answered: {r:?}");
        junk.push(addr);
    }
    // A genuine node joins through node-1.
    let port = common::farmd::free_port();
    let peers = format!("\"{}\"", farm.nodes[0].addr());
    let mut n3 = farm.make_node("node-3", port, &peers, "");
    n3.start();
    farm.nodes.push(n3);
    let t0 = Instant::now();
    loop {
        if farm.nodes[0].live_peers().contains(&"node-3".to_string()) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "defence failed: bounded, sender-checked peer table — after 2000 junk adverts \
             node-1 never learned the genuine node-3; peers: {}",
            farm.nodes[0].status()["peers"]
                .as_array()
                .map(|a| a.len())
                .unwrap_or(0)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let st = farm.nodes[0].status();
    let table: Vec<String> = st["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["addr"].as_str().unwrap_or("").to_string())
        .collect();
    let bad: Vec<&String> = table.iter().filter(|a| junk.contains(a)).collect();
    assert!(
        bad.is_empty(),
        "defence failed: sender-checked adverts — {} junk addresses not matching the sender \
         are in node-1's peer table (e.g. {:?})",
        bad.len(),
        bad.iter().take(3).collect::<Vec<_>>()
    );
    farm.assert_still_serving(1, "an advert flood");
}
