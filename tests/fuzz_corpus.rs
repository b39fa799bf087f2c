//! The fuzz targets' seed corpora (fuzz/corpus/<target>/seed-*, docs/robustness.md):
//! `seeds_are_what_they_claim` checks that every committed seed is still a valid input
//! of its kind (a format change that left them stale fails here, not silently in the
//! fuzzer); `regenerate_seeds` (ignored; `scripts/fuzz.sh --seeds`) writes them again
//! from real compiles: lua's command lines from its Makefile, the dependency files gcc
//! and clang write, the entries and manifests farm stores for them, and the frames
//! farm's protocol encodes around them.

mod common;

use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use common::{require, sources, Env};
use farm::key::{Manifest, ResultEntry};
use farm::lang::csc::CSC;
use farm::lang::gcc::{expand_response_files, parse_depfile, GCC};
use farm::lang::javac::JAVAC;
use farm::lang::Family;
use farm::protocol::{
    self, AgentRequest, AgentResponse, Blob, CompilerAd, EntryKind, Item, Job, JobResult,
    OutputFile, PeerRequest, PeerResponse, TreeFile, TreeJob, MAX_FRAME,
};
use farm::store::decode_entry;

fn corpus(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

/// The committed seeds of a target, by name.
fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = fs::read_dir(corpus(target))
        .unwrap_or_else(|e| panic!("fuzz/corpus/{target}: {e}"))
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("seed-"))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    assert!(
        v.len() >= 2,
        "fuzz/corpus/{target} has {} seeds: run scripts/fuzz.sh --seeds",
        v.len()
    );
    v
}

/// NUL-separated arguments, as the argument targets read them.
fn argv(data: &[u8]) -> Vec<OsString> {
    data.split(|&b| b == 0)
        .map(|a| OsString::from_vec(a.to_vec()))
        .collect()
}

/// A stand-in mcs launcher (the family reads the layout it names, and runs nothing).
fn mcs_launcher(dir: &Path) -> PathBuf {
    let p = dir.join("mcs");
    fs::write(
        &p,
        "#!/bin/sh\nexec /usr/bin/mono /usr/lib/mono/4.5/mcs.exe \"$@\"\n",
    )
    .unwrap();
    p
}

/// The frames of a stream.
fn frames(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let n = protocol::body_len(data[..4].try_into().unwrap(), MAX_FRAME).unwrap();
        out.push(&data[4..4 + n]);
        data = &data[4 + n..];
    }
    out
}

#[test]
fn seeds_are_what_they_claim() {
    let stale = "(stale: run scripts/fuzz.sh --seeds)";
    for (name, data) in seeds("gcc_args") {
        let mut a = argv(&data);
        let arg0 = a.remove(0);
        let compiler = Path::new("/usr/bin").join(&arg0);
        let r = GCC.parse(&compiler, &arg0, &a, false);
        assert!(r.is_ok(), "gcc_args/{name} does not parse: {r:?} {stale}");
    }
    for (name, data) in seeds("javac_args") {
        let r = JAVAC.parse(
            Path::new("/usr/bin/javac"),
            &"javac".into(),
            &argv(&data),
            false,
        );
        assert!(r.is_ok(), "javac_args/{name} does not parse: {r:?} {stale}");
    }
    let dir = tempfile::tempdir().unwrap();
    let mcs = mcs_launcher(dir.path());
    for (name, data) in seeds("csc_args") {
        // The first byte picks the launcher (low bit 0: mcs).
        assert_eq!(data[0] & 1, 0, "csc_args/{name}");
        let r = CSC.parse(&mcs, &"mcs".into(), &argv(&data[1..]), false);
        assert!(r.is_ok(), "csc_args/{name} does not parse: {r:?} {stale}");
    }
    for (name, data) in seeds("response_file") {
        let f = dir.path().join("r.rsp");
        fs::write(&f, &data).unwrap();
        let mut at = OsString::from("@");
        at.push(&f);
        let args = expand_response_files(&[at]).unwrap();
        assert!(args.len() > 3, "response_file/{name}: {args:?}");
    }
    for (name, data) in seeds("depfile") {
        let deps = parse_depfile(&data);
        assert!(
            deps.iter().any(|d| d.extension().is_some_and(|e| e == "h")),
            "depfile/{name}: {deps:?}"
        );
    }
    for (name, data) in seeds("entry_frame") {
        let r = decode_entry(&data);
        assert!(r.is_ok(), "entry_frame/{name}: {r:?} {stale}");
    }
    for (name, data) in seeds("result_entry") {
        let r = ResultEntry::decode(&data);
        assert!(
            r.is_some_and(|r| !r.outputs.is_empty()),
            "result_entry/{name} {stale}"
        );
    }
    for (name, data) in seeds("manifest") {
        let m = Manifest::decode(&data);
        assert!(
            m.is_some_and(|m| !m.entries.is_empty() && !m.entries[0].files.is_empty()),
            "manifest/{name} {stale}"
        );
    }
    for (name, data) in seeds("protocol") {
        for body in frames(&data) {
            let ok = protocol::decode::<PeerRequest>(body, MAX_FRAME).is_ok()
                || protocol::decode::<PeerResponse>(body, MAX_FRAME).is_ok()
                || protocol::decode::<AgentRequest>(body, MAX_FRAME).is_ok()
                || protocol::decode::<AgentResponse>(body, MAX_FRAME).is_ok();
            assert!(
                ok,
                "protocol/{name}: a frame no message type decodes {stale}"
            );
        }
    }
}

/// Writes `fuzz/corpus/<target>/seed-<name>`.
fn put(target: &str, name: &str, data: &[u8]) {
    let d = corpus(target);
    fs::create_dir_all(&d).unwrap();
    fs::write(d.join(format!("seed-{name}")), data).unwrap();
}

fn nul_joined(args: &[&str]) -> Vec<u8> {
    args.join("\0").into_bytes()
}

/// Lua's compile lines as its Makefile runs them (`make -n linux`), one per distinct
/// set of flags.
fn lua_compile_lines(src: &Path) -> Vec<Vec<String>> {
    let o = std::process::Command::new("make")
        .args(["-n", "linux"])
        .current_dir(src)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut lines: Vec<Vec<String>> = Vec::new();
    let mut shapes = Vec::new();
    for l in String::from_utf8_lossy(&o.stdout).lines() {
        let words: Vec<String> = l.split_whitespace().map(String::from).collect();
        if words.first().map(String::as_str) != Some("gcc") || !words.iter().any(|w| w == "-c") {
            continue;
        }
        let shape: Vec<String> = words
            .iter()
            .filter(|w| w.starts_with('-'))
            .cloned()
            .collect();
        if !shapes.contains(&shape) {
            shapes.push(shape);
            lines.push(words);
        }
    }
    assert!(!lines.is_empty(), "no compile lines in make -n linux");
    lines
}

/// Every stored entry of `kind` (extension `r` or `m`) under a cache directory.
fn stored(dir: &Path, ext: &str, out: &mut Vec<(PathBuf, Vec<u8>)>) {
    for e in fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            stored(&p, ext, out);
        } else if p.extension().is_some_and(|x| x == ext) {
            out.push((p.clone(), fs::read(&p).unwrap()));
        }
    }
}

/// lua's flags on Linux (its Makefile's `linux` target).
const LUA_FLAGS: [&str; 6] = [
    "-std=gnu99",
    "-O2",
    "-Wall",
    "-Wextra",
    "-DLUA_COMPAT_5_3",
    "-DLUA_USE_LINUX",
];

#[test]
#[ignore = "writes the seed corpora: scripts/fuzz.sh --seeds"]
fn regenerate_seeds() {
    require("gcc");
    require("clang");
    let lua = sources("lua5.4").join("src");
    let env = Env::new("direct");
    // Small translation units keep the seeds (and so the fuzzer's inputs) small.
    for f in ["lctype.c", "lzio.c", "lopcodes.c"] {
        fs::copy(lua.join(f), env.work.join(f)).unwrap();
    }
    for h in fs::read_dir(&lua).unwrap().flatten() {
        if h.path().extension().is_some_and(|e| e == "h") {
            fs::copy(h.path(), env.work.join(h.file_name())).unwrap();
        }
    }

    // gcc_args: lua's own lines, and the same flags as CMake's Ninja generator and
    // clang spell a compile with dependency files.
    for (i, words) in lua_compile_lines(&lua).iter().enumerate() {
        let w: Vec<&str> = words.iter().map(String::as_str).collect();
        put("gcc_args", &format!("lua-make-{i}"), &nul_joined(&w));
    }
    let flags = LUA_FLAGS;
    let with = |cc: &'static str, extra: &[&'static str]| -> Vec<&'static str> {
        let mut v = vec![cc];
        v.extend(LUA_FLAGS);
        v.extend(extra);
        v
    };
    let cmake_md = with(
        "gcc",
        &[
            "-MD", "-MT", "lzio.o", "-MF", "lzio.o.d", "-o", "lzio.o", "-c", "lzio.c",
        ],
    );
    put("gcc_args", "cmake-ninja-md", &nul_joined(&cmake_md));
    let clang_mmd = with(
        "clang",
        &[
            "-g",
            "-fPIC",
            "-MMD",
            "-MP",
            "-c",
            "lctype.c",
            "-o",
            "obj/lctype.o",
        ],
    );
    put("gcc_args", "clang-mmd-g", &nul_joined(&clang_mmd));

    // Compiles through farm: the dependency files, then the entries it stored.
    fs::create_dir_all(env.work.join("obj")).unwrap();
    env.farm_ok(&cmake_md);
    env.farm_ok(&clang_mmd);
    let opc = with("gcc", &["-MMD", "-c", "lopcodes.c"]);
    env.farm_ok(&opc);
    put("depfile", "gcc-md", &env.read("lzio.o.d"));
    put("depfile", "clang-mmd-mp", &env.read("obj/lctype.d"));
    put("depfile", "gcc-mmd", &env.read("lopcodes.d"));

    // response_file: the same compile's flags as a build system writes them to a
    // response file (one per line, quoted where they must be).
    let rsp = "-std=gnu99 -O2\n-Wall -Wextra\n\"-DLUA_ROOT=\\\"/usr/local/\\\"\"\n'-DLUA_COMPAT_5_3' -DLUA_USE_LINUX\n-I.\\ dir -c lzio.c\n";
    put("response_file", "build-flags", rsp.as_bytes());
    put(
        "response_file",
        "cmake-objects",
        b"-o lzio.o -c lzio.c\t-MF lzio.o.d\r\n-MD -MT lzio.o\n",
    );

    let mut results = Vec::new();
    let mut manifests = Vec::new();
    stored(&env.cache, "r", &mut results);
    stored(&env.cache, "m", &mut manifests);
    assert!(results.len() >= 3 && manifests.len() >= 3, "{results:?}");
    results.sort_by_key(|(_, d)| d.len());
    manifests.sort_by_key(|(_, d)| d.len());
    for (i, (_, framed)) in results.iter().take(2).enumerate() {
        put("entry_frame", &format!("result-{i}"), framed);
        put(
            "result_entry",
            &format!("lua-{i}"),
            &decode_entry(framed).unwrap(),
        );
    }
    for (i, (_, framed)) in manifests.iter().take(2).enumerate() {
        put("entry_frame", &format!("manifest-{i}"), framed);
        put(
            "manifest",
            &format!("lua-{i}"),
            &decode_entry(framed).unwrap(),
        );
    }

    // protocol: the frames these entries travel in, and the jobs around them.
    let key = |p: &Path| -> [u8; 32] {
        let stem = p.file_stem().unwrap().as_bytes();
        let mut k = [0u8; 32];
        for (i, c) in stem.chunks(2).take(32).enumerate() {
            k[i] = u8::from_str_radix(std::str::from_utf8(c).unwrap(), 16).unwrap();
        }
        k
    };
    let (rpath, rframed) = &results[0];
    let (mpath, mframed) = &manifests[0];
    let result_payload = decode_entry(rframed).unwrap();
    let r = ResultEntry::decode(&result_payload).unwrap();
    let object = r.outputs[0].data.to_vec();
    let compiler = CompilerAd {
        name: "gcc".into(),
        identity: [0x5a; 32],
    };
    let preprocessed = std::process::Command::new("gcc")
        .args(flags)
        .args(["-E", "lopcodes.c"])
        .current_dir(&env.work)
        .output()
        .unwrap()
        .stdout;
    let mut stream = Vec::new();
    for m in [
        PeerRequest::Get {
            kind: EntryKind::Result,
            key: key(rpath),
        },
        PeerRequest::Have {
            kind: EntryKind::Manifest,
            key: key(mpath),
        },
        PeerRequest::Put(Item {
            kind: EntryKind::Manifest,
            key: key(mpath),
            data: mframed.clone(),
        }),
    ] {
        stream.extend(protocol::encode(&m));
    }
    put("protocol", "peer-get-have-put", &stream);
    let job = Job {
        family: "gcc".into(),
        compiler: compiler.clone(),
        input: "job.i".into(),
        args: flags
            .iter()
            .map(|s| s.to_string())
            .chain(["-c".into()])
            .collect(),
        source: preprocessed,
        outputs: vec!["job.o".into()],
    };
    // Above the compression threshold: a zstd frame.
    put(
        "protocol",
        "peer-job",
        &protocol::encode(&PeerRequest::Job(job.clone())),
    );
    let done = PeerResponse::Done(JobResult {
        exit_code: 0,
        stdout: vec![],
        stderr: b"lopcodes.c: warning: nothing\n".to_vec(),
        outputs: vec![OutputFile {
            path: "job.o".into(),
            data: object.clone(),
        }],
        compile_ms: 31,
        worker: "node-b".into(),
    });
    let mut stream = protocol::encode(&done);
    stream.extend(protocol::encode(&PeerResponse::Entry(Some(
        serde_bytes::ByteBuf::from(rframed.clone()),
    ))));
    stream.extend(protocol::encode(&PeerResponse::Stored));
    stream.extend(protocol::encode(&PeerResponse::Refused(
        "-fplugin=x.so".into(),
    )));
    put("protocol", "peer-responses", &stream);
    let lzio = fs::read(env.work.join("lzio.c")).unwrap();
    let digest = *blake3::hash(&lzio).as_bytes();
    let tree = TreeJob {
        family: "javac".into(),
        compiler: compiler.clone(),
        args: vec!["-d".into(), "/w/classes".into(), "/w/src/A.java".into()],
        outputs: vec![("classes".into(), "/w/classes".into())],
        files: vec![TreeFile {
            path: "/w/src/A.java".into(),
            digest,
        }],
    };
    let mut stream = protocol::encode(&PeerRequest::HaveBlobs(vec![digest, [1; 32]]));
    stream.extend(protocol::encode(&PeerRequest::PutBlobs(vec![Blob {
        digest,
        data: lzio,
    }])));
    stream.extend(protocol::encode(&PeerRequest::TreeJob(tree.clone())));
    put("protocol", "peer-tree-job", &stream);
    let mut stream = protocol::encode(&AgentRequest::Fetch {
        kind: EntryKind::Result,
        key: key(rpath),
    });
    stream.extend(protocol::encode(&AgentRequest::Place {
        compiler: compiler.clone(),
    }));
    stream.extend(protocol::encode(&AgentRequest::Compile(job)));
    stream.extend(protocol::encode(&AgentRequest::Publish {
        items: vec![
            Item {
                kind: EntryKind::Result,
                key: key(rpath),
                data: rframed.clone(),
            },
            Item {
                kind: EntryKind::Manifest,
                key: key(mpath),
                data: mframed.clone(),
            },
        ],
        local_ms: 40,
    }));
    stream.extend(protocol::encode(&AgentRequest::CompileTree(tree)));
    stream.extend(protocol::encode(&AgentRequest::Status));
    put("protocol", "agent-requests", &stream);
    let mut stream = protocol::encode(&AgentResponse::Cached {
        entry: rframed.clone(),
        peer: "node-b".into(),
    });
    stream.extend(protocol::encode(&AgentResponse::Missing));
    stream.extend(protocol::encode(&AgentResponse::Ship));
    stream.extend(protocol::encode(&AgentResponse::Local(
        "no_peer_has_compiler".into(),
    )));
    stream.extend(protocol::encode(&AgentResponse::Published));
    put("protocol", "agent-responses", &stream);

    // javac: Maven's and Gradle's compile lines; csc: xbuild's mcs line (its output in
    // the working directory: an output's directory must exist) and a plain one. The
    // sources they name need not exist (parse reads only argfiles).
    put(
        "javac_args",
        "maven",
        &nul_joined(&[
            "-d",
            "/w/target/classes",
            "-classpath",
            "/w/target/classes:/usr/share/java/junit4.jar",
            "-sourcepath",
            "/w/src/main/java:",
            "-s",
            "/w/target/generated-sources/annotations",
            "-g",
            "-nowarn",
            "-target",
            "8",
            "-source",
            "8",
            "-encoding",
            "UTF-8",
            "/w/src/main/java/org/apache/commons/io/IOUtils.java",
            "/w/src/main/java/org/apache/commons/io/FileUtils.java",
        ]),
    );
    put(
        "javac_args",
        "gradle",
        &nul_joined(&[
            "-source",
            "17",
            "-target",
            "17",
            "-d",
            "build/classes/java/main",
            "-h",
            "build/generated/sources/headers/java/main",
            "-g",
            "-sourcepath",
            "",
            "-proc:none",
            "-XDuseUnsharedTable=true",
            "-classpath",
            "",
            "src/main/java/a/B.java",
        ]),
    );
    let mut xbuild = vec![0u8];
    xbuild.extend(nul_joined(&[
        "/noconfig",
        "/debug:portable",
        "/optimize+",
        "/out:dbus-sharp.dll",
        "/target:library",
        "/define:DEBUG;TRACE",
        "/nowarn:0618,0612",
        "/r:System.dll",
        "/r:System.Xml.dll",
        "/warn:4",
        "src/Bus.cs",
        "src/Connection.cs",
        "src/Message.cs",
    ]));
    put("csc_args", "xbuild-mcs", &xbuild);
    let mut plain = vec![0u8];
    plain.extend(nul_joined(&[
        "-target:exe",
        "-out:hello.exe",
        "-langversion:7",
        "-unsafe+",
        "Hello.cs",
    ]));
    put("csc_args", "mcs-exe", &plain);
}
