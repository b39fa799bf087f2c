//! Shared helpers for the integration tests: a private cache, config and bin dir per
//! test, real compilers, and `farm stats --json` as the observable.
#![allow(dead_code)]

pub mod chromium;
pub mod farmd;
pub mod http;
pub mod netns;
pub mod rawpeer;
pub mod remote_builds;
pub mod secfarm;
pub mod servers;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub fn farm_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_farm"))
}

pub fn farm_javac_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_farm-javac"))
}

pub fn farm_cc_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_farm-cc"))
}

/// Fails loudly when a compiler the suite needs is missing: scripts/test.sh installs
/// them, and a test that quietly skips would prove nothing.
pub fn require(tool: &str) -> PathBuf {
    which::which(tool).unwrap_or_else(|_| {
        panic!("`{tool}` is not installed: run scripts/test.sh (it installs the test tools)")
    })
}

pub struct Env {
    pub root: tempfile::TempDir,
    pub cache: PathBuf,
    pub work: PathBuf,
    pub bin: PathBuf,
    pub log: PathBuf,
    pub mode: &'static str,
}

impl Env {
    pub fn new(mode: &'static str) -> Env {
        let root = tempfile::Builder::new()
            .prefix("farm-test")
            .tempdir()
            .unwrap();
        let cache = root.path().join("cache");
        let work = root.path().join("work");
        let bin = root.path().join("bin");
        fs::create_dir_all(&work).unwrap();
        fs::create_dir_all(&bin).unwrap();
        // farm-c++ cannot be a cargo binary name; the install script links it.
        std::os::unix::fs::symlink(farm_bin(), bin.join("farm-c++")).unwrap();
        let log = root.path().join("farm.log");
        Env {
            root,
            cache,
            work,
            bin,
            log,
            mode,
        }
    }

    /// A command with farm's environment isolated from the developer's.
    pub fn cmd(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new(program);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("FARM_") {
                c.env_remove(&k);
            }
        }
        c.env("FARM_DIR", &self.cache)
            .env("FARM_CONFIG", self.root.path().join("no-config.toml"))
            .env("FARM_LOG", &self.log)
            .env("FARM_MODE", self.mode)
            // No farmd unless a test starts one.
            .env("FARM_AGENT", "off")
            .current_dir(&self.work);
        c
    }

    /// `farm ARGS` in the work dir.
    pub fn farm(&self, args: &[&str]) -> Output {
        self.cmd(farm_bin()).args(args).output().unwrap()
    }

    /// `farm COMPILER ARGS`, asserting success.
    pub fn farm_ok(&self, args: &[&str]) -> Output {
        let o = self.farm(args);
        assert!(
            o.status.success(),
            "farm {args:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        o
    }

    /// The real compiler, no farm, in the work dir.
    pub fn plain(&self, args: &[&str]) -> Output {
        let (prog, rest) = args.split_first().unwrap();
        let o = Command::new(prog)
            .args(rest)
            .current_dir(&self.work)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        o
    }

    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.work.join(rel);
        if let Some(d) = p.parent() {
            fs::create_dir_all(d).unwrap();
        }
        fs::write(&p, text).unwrap();
        p
    }

    pub fn read(&self, rel: &str) -> Vec<u8> {
        fs::read(self.work.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }

    pub fn stats(&self) -> serde_json::Value {
        let o = self.farm(&["stats", "--json"]);
        assert!(o.status.success());
        serde_json::from_slice(&o.stdout).unwrap()
    }

    pub fn hits(&self) -> u64 {
        self.stats()["hits"]["total"].as_u64().unwrap()
    }

    pub fn misses(&self) -> u64 {
        self.stats()["misses"].as_u64().unwrap()
    }

    pub fn counter(&self, path: &[&str]) -> u64 {
        let mut v = self.stats();
        for p in path {
            v = v[*p].clone();
        }
        v.as_u64().unwrap_or(0)
    }
}

/// Sets a file's mtime (and atime) to `secs` since the epoch, as `touch -d` would.
pub fn set_mtime(p: &Path, secs: i64) {
    let f = fs::OpenOptions::new().write(true).open(p).unwrap();
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs as u64);
    f.set_times(fs::FileTimes::new().set_modified(t).set_accessed(t))
        .unwrap();
}

pub fn mtime_secs(p: &Path) -> i64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(p).unwrap().mtime()
}

/// Runs a shell snippet, asserting success.
pub fn sh(dir: &Path, script: &str) -> Output {
    let o = Command::new("bash")
        .arg("-ec")
        .arg(script)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "script failed: {script}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

pub const MODES: [&str; 3] = ["direct", "preprocessor", "depend"];

// ------------------------------------------------------------------ real projects

pub fn sources(pkg: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("debian-sources");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/fetch-sources.sh");
    let o = std::process::Command::new("bash")
        .arg(&script)
        .arg(&dir)
        .arg(pkg)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "fetching the Debian source of {pkg} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    dir.join(pkg)
}

/// Every object file under `dir`, by relative path.
pub fn objects(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    files_with_ext(dir, "o")
}

/// Every file under `dir` whose name ends in `.ext` (any file for ""), by relative path.
pub fn files_with_ext(dir: &Path, ext: &str) -> BTreeMap<String, Vec<u8>> {
    let mut m = BTreeMap::new();
    fn walk(base: &Path, d: &Path, ext: &str, m: &mut BTreeMap<String, Vec<u8>>) {
        for e in fs::read_dir(d).unwrap().flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                walk(base, &p, ext, m);
            } else if ext.is_empty() || p.extension().map(|x| x == ext).unwrap_or(false) {
                m.insert(
                    p.strip_prefix(base).unwrap().display().to_string(),
                    fs::read(&p).unwrap(),
                );
            }
        }
    }
    walk(dir, dir, ext, &mut m);
    m
}

pub fn assert_same_objects(
    plain: &BTreeMap<String, Vec<u8>>,
    got: &BTreeMap<String, Vec<u8>>,
    what: &str,
) {
    assert!(!plain.is_empty());
    assert_eq!(
        plain.keys().collect::<Vec<_>>(),
        got.keys().collect::<Vec<_>>(),
        "{what}: object sets differ"
    );
    for (k, v) in plain {
        assert!(got[k] == *v, "{what}: {k} differs from the plain build");
    }
}

/// A fresh copy of a source tree. Like a real checkout, it is not edited in the
/// same instant the build starts: farm records nothing for inputs changed within a
/// clock tick of a compile (their content may not be what the compiler read).
pub fn copy_tree(src: &Path, dst: &Path) {
    let _ = fs::remove_dir_all(dst);
    sh(
        Path::new("/"),
        &format!("cp -a '{}' '{}'", src.display(), dst.display()),
    );
    // The dfsg tarball drops win32/, which zlib's CMakeLists lists (unused on Linux).
    if dst.join("CMakeLists.txt").exists() && !dst.join("win32").exists() {
        fs::create_dir_all(dst.join("win32")).unwrap();
        fs::write(dst.join("win32/zlib1.rc"), "").unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
}

/// `make -jJOBS linux` of lua's tree with `CC=<cc> -std=gnu99`, through the agent at
/// `agent` when given (a farm), asserting success.
pub fn lua_make_j(env: &Env, tree: &Path, cc: &str, agent: Option<&Path>, jobs: u32) {
    let mut c = env.cmd("make");
    c.current_dir(tree.join("src")).args([
        &format!("-j{jobs}"),
        "linux",
        &format!("CC={cc} -std=gnu99"),
    ]);
    if let Some(a) = agent {
        c.env("FARM_AGENT", a);
    }
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "make failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `make -jJOBS linux` of lua's tree through farm-cc and the agent at `agent`, in the
/// background (stderr piped, for a failing build's message).
pub fn spawn_lua_make_j(env: &Env, tree: &Path, agent: &Path, jobs: u32) -> std::process::Child {
    let farm_cc = farm_cc_bin().display().to_string();
    env.cmd("make")
        .current_dir(tree.join("src"))
        .args([
            &format!("-j{jobs}"),
            "linux",
            &format!("CC={farm_cc} -std=gnu99"),
        ])
        .env("FARM_AGENT", agent)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}
