//! Headless Chromium for the tests that look at farm's pages (the live monitor,
//! `farm report`): the DOM after the page's scripts ran, and screenshots kept as test
//! artifacts under target/test-artifacts/.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Headless Chromium: installed from Debian's archive when missing. In CI (`CI` set) a
/// Chromium that cannot be installed fails the test; on a developer's machine the test
/// says why it skips.
pub fn chromium() -> Option<PathBuf> {
    if let Ok(p) = which::which("chromium") {
        return Some(p);
    }
    let _ = Command::new("apt-get")
        .args(["update", "-qq"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let installed = Command::new("apt-get")
        .args(["install", "-y", "-qq", "chromium"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output();
    match which::which("chromium") {
        Ok(p) => Some(p),
        Err(_) => {
            let why = match installed {
                Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
                Err(e) => format!("apt-get: {e}"),
            };
            assert!(
                std::env::var_os("CI").is_none(),
                "Chromium is not installed and `apt-get install chromium` failed: {why}"
            );
            eprintln!("SKIPPED: the monitor's browser test needs Chromium (apt-get install chromium): {why}");
            None
        }
    }
}

/// Headless, and quiet on a closed network.
pub const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
];

/// Runs headless Chromium on `url` with `extra` flags; its stdout.
pub fn run_chromium(chromium: &Path, url: &str, extra: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new(chromium)
        .args(CHROMIUM_FLAGS)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        // The page paints the snapshot farmd puts in it before its load event, and
        // its event stream never ends: a real-time limit, not a virtual-time budget
        // (which waits for the network to go quiet, forever here).
        .arg("--timeout=5000")
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = String::new();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let _ = stdout.read_to_string(&mut out);
        out
    });
    let t0 = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium on {url} did not finish in 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    reader.join().unwrap()
}

/// Where the test keeps what a person may want to look at (CI keeps target/).
pub fn artifacts() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The page on a laptop's screen, as `name` in the artifacts.
pub fn screenshot(chromium: &Path, url: &str, name: &str) {
    let shot = artifacts().join(name);
    let _ = std::fs::remove_file(&shot);
    run_chromium(
        chromium,
        url,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,800",
            "--hide-scrollbars",
        ],
    );
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000);
    eprintln!("screenshot: {}", shot.display());
}
