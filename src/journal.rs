//! The build journal: one JSON line per compile, appended to the file `FARM_JOURNAL`
//! (or the config's `journal`) names, for `farm report` (docs/journal.md).
//!
//! A line is written with one `write(2)` on a file opened `O_APPEND`, and is never
//! longer than [`MAX_LINE`] (`PIPE_BUF`), so the shims of a `make -j` never
//! interleave their lines, even into a FIFO. A journal that cannot be opened or
//! written is logged and forgotten: it never changes a compile.

use std::borrow::Cow;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::stats::{Outcome, TierKind, TierMeasure};

/// The journal line format's version (`v`).
pub const VERSION: u32 = 1;

/// The longest line written, newline included: `PIPE_BUF`, so that a write of one
/// line is atomic even on a pipe.
pub const MAX_LINE: usize = 4096;

/// The longest a text field starts out before the line is fitted into [`MAX_LINE`].
const MAX_FIELD: usize = 1024;

/// The most reason counters a line lists.
const MAX_EVENTS: usize = 16;

/// What became of one compile.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Answered by a cache tier.
    Hit,
    /// The compiler ran (here, in a warm compiler or on a peer) and succeeded.
    Miss,
    /// farm did not cache it and ran the compiler untouched.
    Passthrough,
    /// The compile failed, or farm could not run it.
    Error,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Hit, Kind::Miss, Kind::Passthrough, Kind::Error];

    pub const fn name(self) -> &'static str {
        match self {
            Kind::Hit => "hit",
            Kind::Miss => "miss",
            Kind::Passthrough => "passthrough",
            Kind::Error => "error",
        }
    }
}

/// One journal line. Optional fields are left out when they do not apply.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// [`VERSION`].
    pub v: u32,
    /// When the shim started, ms since the Unix epoch.
    pub start_ms: u64,
    /// The shim's whole run, ms (for a pass-through: until it handed over to the
    /// compiler).
    pub ms: u64,
    pub pid: u32,
    /// The machine the shim ran on.
    pub host: String,
    pub cwd: String,
    /// The source as the command line gives it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The source made absolute against `cwd`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_abs: Option<String>,
    /// The compiler's file name (`gcc`, `javac`).
    pub compiler: String,
    /// The compiler family (`gcc`, `javac`, `csc`); absent for an unknown compiler.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<String>,
    pub outcome: Kind,
    /// The `farm stats` counter of the hit or miss (`hit.direct`, `hit.farm`, `miss`,
    /// `farm.remote`, `warm.compiled`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub how: Option<String>,
    /// Why a pass-through or error: its counter (`passthrough.link`,
    /// `compile_failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The tier that answered a hit: `local`, `farm`, `redis`, `s3`, `http`, …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// Where a miss compiled: `home`, `warm` (farmd's warm compiler) or `peer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ran: Option<String>,
    /// The peer that compiled it (its node name), when `ran` is `peer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// The compile's own time, ms (a peer's: its worker's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compile_ms: Option<u64>,
    /// On a hit: the original compile's time minus this hit's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saved_ms: Option<u64>,
    /// Bytes of the outputs (objects, dependency files, classes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_bytes: Option<u64>,
    /// Bytes that came from elsewhere: remote tiers', the farm's cache's, a peer's
    /// outputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetched_bytes: Option<u64>,
    /// The exit code farm returned (absent when it handed over to the compiler).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<i32>,
    /// Every fallback, sent-home, not-stored and error counter this compile counted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
    /// A field was cut to keep the line under [`MAX_LINE`] (it ends in `…`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// Where a finished compile's miss ran, as the shim learned it.
pub enum Ran<'a> {
    /// Not known to have run elsewhere: home (or nothing ran).
    Here,
    /// A peer's worker, by its node name.
    Peer(&'a str),
}

impl Line {
    /// A line for a compile by `compiler` that started at `t0`: time, process,
    /// machine and directory filled in; the outcome an error until set.
    pub fn begin(t0: Instant, compiler: &Path) -> Line {
        let ms = t0.elapsed();
        let start = SystemTime::now()
            .checked_sub(ms)
            .unwrap_or(UNIX_EPOCH)
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Line {
            v: VERSION,
            start_ms: start.as_millis() as u64,
            ms: ms.as_millis() as u64,
            pid: std::process::id(),
            host: hostname(),
            cwd: std::env::current_dir()
                .map(|d| d.to_string_lossy().into_owned())
                .unwrap_or_default(),
            source: None,
            source_abs: None,
            compiler: compiler
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            family: None,
            outcome: Kind::Error,
            how: None,
            reason: None,
            tier: None,
            ran: None,
            peer: None,
            compile_ms: None,
            saved_ms: None,
            out_bytes: None,
            fetched_bytes: None,
            exit: None,
            events: Vec::new(),
            truncated: false,
        }
    }

    /// Sets the source (as given) and its absolute path.
    pub fn set_source(&mut self, source: &Path) {
        if source.as_os_str().is_empty() {
            return;
        }
        let abs = crate::fsutil::clean_path(&Path::new(&self.cwd).join(source));
        self.source = Some(source.to_string_lossy().into_owned());
        self.source_abs = Some(abs.to_string_lossy().into_owned());
    }

    /// Guesses the source of a compile farm did not parse: the first argument that is
    /// no option and ends like a source file.
    pub fn guess_source<S: AsRef<std::ffi::OsStr>>(&mut self, args: &[S]) {
        const EXTS: &[&str] = &[
            "c", "cc", "cpp", "cxx", "c++", "cp", "C", "m", "mm", "i", "ii", "s", "S", "java", "cs",
        ];
        let mut after_o = false;
        for a in args {
            let p = Path::new(a.as_ref());
            if std::mem::take(&mut after_o) {
                continue;
            }
            if p.as_os_str() == "-o" {
                after_o = true;
                continue;
            }
            let is_source = p
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| EXTS.contains(&e));
            if is_source && !p.to_string_lossy().starts_with('-') {
                self.set_source(p);
                return;
            }
        }
    }

    /// Fills the outcome from what the compile counted for `farm stats` (in the
    /// order counted), where it ran, its outputs' size and farm's exit code.
    pub fn set_outcomes(
        &mut self,
        outcomes: &[(Outcome, u64)],
        ran: Ran,
        out_bytes: Option<u64>,
        exit: Option<i32>,
    ) {
        let mut hit: Option<&Outcome> = None;
        let (mut miss, mut remote, mut warm) = (false, false, false);
        let (mut passthrough, mut failed) = (None, false);
        let mut tier = None;
        let (mut compile_ms, mut saved_ms, mut fetched) = (None, None, 0u64);
        for (o, n) in outcomes {
            match o {
                Outcome::HitDirect
                | Outcome::HitPreprocessor
                | Outcome::HitDepend
                | Outcome::HitDeclared
                | Outcome::HitFarm
                | Outcome::HitRemote => hit = Some(o),
                Outcome::Miss => miss = true,
                Outcome::FarmRemote => remote = true,
                Outcome::WarmCompiled => warm = true,
                Outcome::CompileFailed => failed = true,
                Outcome::Passthrough(_) => passthrough = Some(o),
                Outcome::CompileMs => compile_ms = Some(compile_ms.unwrap_or(0) + n),
                Outcome::TimeSavedMs => saved_ms = Some(saved_ms.unwrap_or(0) + n),
                Outcome::Tier(kind, TierMeasure::Hits) => tier = Some(*kind),
                Outcome::Tier(kind, TierMeasure::BytesRead) if *kind != TierKind::Local => {
                    fetched += n
                }
                _ => {}
            }
            let event = matches!(
                o,
                Outcome::NotStored(_)
                    | Outcome::FarmHome(_)
                    | Outcome::Fallback(_)
                    | Outcome::WarmDeclined(_)
                    | Outcome::RemoteError
                    | Outcome::RemoteSkipped
                    | Outcome::RemoteWriteDropped
                    | Outcome::CacheError
                    | Outcome::CorruptEntry
            );
            if event && self.events.len() < MAX_EVENTS {
                let name = o.counter().into_owned();
                if !self.events.contains(&name) {
                    self.events.push(name);
                }
            }
        }
        self.exit = exit;
        self.out_bytes = out_bytes;
        if let Some(h) = hit {
            self.outcome = Kind::Hit;
            self.how = Some(h.counter().into_owned());
            let kind = tier.unwrap_or(match h {
                Outcome::HitFarm => TierKind::Farm,
                _ => TierKind::Local,
            });
            self.tier = Some(kind.name().to_string());
            self.saved_ms = Some(saved_ms.unwrap_or(0));
        } else if miss {
            self.outcome = Kind::Miss;
            self.compile_ms = compile_ms;
            let (how, ran_where) = if remote {
                ("farm.remote", "peer")
            } else if warm {
                ("warm.compiled", "warm")
            } else {
                ("miss", "home")
            };
            self.how = Some(how.to_string());
            self.ran = Some(ran_where.to_string());
            if let (true, Ran::Peer(name)) = (remote, ran) {
                self.peer = Some(name.to_string());
                fetched += out_bytes.unwrap_or(0);
            }
        } else if let Some(p) = passthrough {
            self.outcome = Kind::Passthrough;
            self.reason = Some(p.counter().into_owned());
        } else {
            self.outcome = Kind::Error;
            self.compile_ms = compile_ms;
            self.reason = Some(if failed {
                "compile_failed".to_string()
            } else {
                self.events
                    .first()
                    .cloned()
                    .unwrap_or_else(|| "unknown".to_string())
            });
            if failed {
                self.ran = Some("home".to_string());
            }
        }
        if fetched > 0 {
            self.fetched_bytes = Some(fetched);
        }
    }

    /// The line as written: JSON and a newline, at most [`MAX_LINE`] bytes. Long
    /// text fields are cut (ending in `…`, `truncated` set) until it fits.
    pub fn encode(&self) -> Vec<u8> {
        let mut limit = MAX_FIELD;
        loop {
            let mut fitted = self.clone();
            fitted.fit(limit);
            if let Ok(mut v) = serde_json::to_vec(&fitted) {
                v.push(b'\n');
                if v.len() <= MAX_LINE || limit <= 8 {
                    return v;
                }
            }
            limit /= 2;
        }
    }

    /// Cuts every text field to `limit` bytes.
    fn fit(&mut self, limit: usize) {
        let mut cut = false;
        for f in [&mut self.host, &mut self.cwd, &mut self.compiler] {
            cut |= cut_to(f, limit);
        }
        for f in [
            &mut self.source,
            &mut self.source_abs,
            &mut self.family,
            &mut self.how,
            &mut self.reason,
            &mut self.tier,
            &mut self.ran,
            &mut self.peer,
        ]
        .into_iter()
        .flatten()
        {
            cut |= cut_to(f, limit);
        }
        for e in &mut self.events {
            cut |= cut_to(e, limit);
        }
        self.truncated |= cut;
    }
}

/// Cuts `s` to at most `limit` bytes (on a character boundary) and marks it with `…`.
fn cut_to(s: &mut String, limit: usize) -> bool {
    if s.len() <= limit {
        return false;
    }
    let mut end = limit.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push('…');
    true
}

/// This machine's name.
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within
    // it or truncates, and we stop at the first NUL either way.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// `FARM_JOURNAL` from the environment, for the entry points that run before (or
/// without) a configuration.
pub fn path_from_env() -> Option<PathBuf> {
    std::env::var_os("FARM_JOURNAL")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// Appends `line` to the journal at `path` in one write. A failure is logged (this
/// process writes one line: once) and never reaches the compile.
pub fn append(path: &Path, line: &Line) {
    if let Err(e) = try_append(path, &line.encode()) {
        tracing::warn!(journal = %path.display(), error = %e, "cannot write the build journal");
    }
}

fn try_append(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    // Non-blocking: a FIFO nobody reads is no journal rather than a hung build.
    let open = |follow: bool| {
        let nofollow = if follow { 0 } else { libc::O_NOFOLLOW };
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o644)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC | nofollow)
            .open(path)
    };
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    let other = |what: &str| {
        std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("{what} another user's (the journal must be this user's own)"),
        )
    };
    // The journal is often named in a directory others can write (/tmp, a shared
    // build tree): a link another user planted there is not followed (into this
    // user's own files), and another user's file or FIFO is not written (they would
    // read the build's source paths). The kernel's protected_symlinks/fifos/regular
    // do this for sticky directories where they are on; this holds everywhere.
    let mut f = match open(false) {
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            if std::fs::symlink_metadata(path)?.uid() != me {
                return Err(other("is a link that is"));
            }
            open(true)?
        }
        r => r?,
    };
    if f.metadata()?.uid() != me {
        return Err(other("is"));
    }
    // One write(2): a short write is reported, never completed by a second write
    // that another shim's line could come between.
    let n = f.write(bytes)?;
    if n != bytes.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::WriteZero,
            format!("short write: {n} of {} bytes", bytes.len()),
        ));
    }
    Ok(())
}

/// A journal line read back: parsed, or why not.
pub fn parse_line(text: &str) -> Result<Line, Cow<'static, str>> {
    let line: Line = serde_json::from_str(text).map_err(|e| Cow::Owned(e.to_string()))?;
    if line.v != VERSION {
        return Err(Cow::Owned(format!("unknown version {}", line.v)));
    }
    // A journal may come from anyone (a CI artifact): times past the year 9999 and
    // durations over a year are not a compile's, and summing them could overflow.
    const MAX_START_MS: u64 = 253_402_300_800_000;
    const MAX_MS: u64 = 366 * 86_400_000;
    if line.start_ms > MAX_START_MS {
        return Err(Cow::Borrowed("start_ms is past the year 9999"));
    }
    for (name, v) in [
        ("ms", Some(line.ms)),
        ("compile_ms", line.compile_ms),
        ("saved_ms", line.saved_ms),
    ] {
        if v.is_some_and(|v| v > MAX_MS) {
            return Err(Cow::Owned(format!("{name} is over a year")));
        }
    }
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line() -> Line {
        let mut l = Line::begin(Instant::now(), Path::new("/usr/bin/gcc"));
        l.cwd = "/src/lua".into();
        l
    }

    #[test]
    fn hit_line_names_tier_and_time_saved() {
        let mut l = line();
        l.set_source(Path::new("./src/lapi.c"));
        l.family = Some("gcc".into());
        let outcomes = [
            (Outcome::Tier(TierKind::Local, TierMeasure::Misses), 1),
            (Outcome::Tier(TierKind::Redis, TierMeasure::Hits), 1),
            (Outcome::HitRemote, 1),
            (Outcome::TimeSavedMs, 120),
            (Outcome::Tier(TierKind::Redis, TierMeasure::BytesRead), 3000),
            (
                Outcome::Tier(TierKind::Local, TierMeasure::BytesWritten),
                3000,
            ),
        ];
        l.set_outcomes(&outcomes, Ran::Here, Some(2900), Some(0));
        assert_eq!(l.outcome, Kind::Hit);
        assert_eq!(l.how.as_deref(), Some("hit.remote"));
        assert_eq!(l.tier.as_deref(), Some("redis"));
        assert_eq!(l.saved_ms, Some(120));
        assert_eq!(l.fetched_bytes, Some(3000));
        assert_eq!(l.source_abs.as_deref(), Some("/src/lua/src/lapi.c"));
        assert_eq!(l.compiler, "gcc");
        let text = String::from_utf8(l.encode()).unwrap();
        assert!(text.ends_with("}\n") && text.matches('\n').count() == 1);
        assert_eq!(parse_line(text.trim_end()).unwrap(), l);
        assert!(
            !text.contains("\"peer\""),
            "absent fields are left out: {text}"
        );
    }

    #[test]
    fn remote_miss_names_the_peer_and_fallbacks() {
        let mut l = line();
        let outcomes = [
            (Outcome::Fallback("timeout".into()), 1),
            (Outcome::Miss, 1),
            (Outcome::FarmRemote, 1),
            (Outcome::CompileMs, 40),
        ];
        l.set_outcomes(&outcomes, Ran::Peer("node-b"), Some(100), Some(0));
        assert_eq!(l.outcome, Kind::Miss);
        assert_eq!(l.ran.as_deref(), Some("peer"));
        assert_eq!(l.peer.as_deref(), Some("node-b"));
        assert_eq!(l.compile_ms, Some(40));
        assert_eq!(l.fetched_bytes, Some(100));
        assert_eq!(l.events, vec!["fallback.timeout".to_string()]);
    }

    #[test]
    fn passthrough_and_failure() {
        let mut l = line();
        l.guess_source(&["-o", "x.c", "-O2", "main.c"]);
        assert_eq!(l.source.as_deref(), Some("main.c"));
        l.set_outcomes(
            &[(Outcome::Passthrough("link".into()), 1)],
            Ran::Here,
            None,
            None,
        );
        assert_eq!(l.outcome, Kind::Passthrough);
        assert_eq!(l.reason.as_deref(), Some("passthrough.link"));
        let mut f = line();
        f.set_outcomes(&[(Outcome::CompileFailed, 1)], Ran::Here, None, Some(1));
        assert_eq!(f.outcome, Kind::Error);
        assert_eq!(f.reason.as_deref(), Some("compile_failed"));
        assert_eq!(f.exit, Some(1));
    }

    #[test]
    fn long_fields_are_cut_to_fit_one_atomic_line() {
        let mut l = line();
        l.set_source(Path::new(&"é/\u{1}\"".repeat(3000)));
        l.cwd = "x".repeat(10_000);
        for i in 0..100 {
            l.events.push(format!("fallback.{i}"));
        }
        let v = l.encode();
        assert!(v.len() <= MAX_LINE, "{}", v.len());
        let back = parse_line(std::str::from_utf8(&v).unwrap().trim_end()).unwrap();
        assert!(back.truncated);
        assert!(back.source.unwrap().ends_with('…'));
    }

    #[test]
    fn concurrent_appends_never_interleave() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("j.jsonl");
        std::thread::scope(|s| {
            for t in 0..8 {
                let path = &path;
                s.spawn(move || {
                    for i in 0..200 {
                        let mut l = line();
                        l.source = Some(format!("t{t}-{i}-{}", "y".repeat(900)));
                        append(path, &l);
                    }
                });
            }
        });
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1600);
        for l in text.lines() {
            parse_line(l).unwrap();
        }
    }

    #[test]
    fn unwritable_journal_is_no_error() {
        let d = tempfile::tempdir().unwrap();
        append(d.path(), &line());
        append(&d.path().join("no/such/dir/j"), &line());
    }
}
