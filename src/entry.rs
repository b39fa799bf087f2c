//! Entry points: `farm-cc`, `farm-c++`, `farm <compiler> …` (launcher), a symlink
//! named like a compiler (masquerade), and `farm <command>`.
//!
//! All binaries run this same code and decide by the name they were started as.

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::{cli, shim};

/// Names farm's own binaries have; never taken for a real compiler.
const FARM_NAMES: &[&str] = &[
    "farm",
    "farm-cc",
    "farm-c++",
    "farm-cxx",
    "farm-javac",
    "farm-csc",
];

#[derive(Debug, PartialEq, Eq)]
enum Role {
    Cc,
    Cxx,
    Javac,
    Csc,
    Farm,
    Masquerade(String),
}

fn role_of(argv0: &OsStr) -> Role {
    let name = Path::new(argv0)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match name.as_str() {
        "farm-cc" => Role::Cc,
        "farm-c++" | "farm-cxx" => Role::Cxx,
        "farm-javac" => Role::Javac,
        "farm-csc" => Role::Csc,
        "farm" | "" => Role::Farm,
        other => Role::Masquerade(other.to_string()),
    }
}

/// Is this canonical path one of farm's binaries?
fn is_farm_canonical(canon: &Path) -> bool {
    // /proc/self/exe is already canonical.
    if let Ok(me) = std::env::current_exe() {
        if canon == me {
            return true;
        }
    }
    canon
        .file_name()
        .and_then(|n| n.to_str())
        .map(|n| FARM_NAMES.contains(&n))
        .unwrap_or(false)
}

/// Is this path (after following links) one of farm's binaries?
pub fn is_farm_binary(p: &Path) -> bool {
    std::fs::canonicalize(p)
        .map(|c| is_farm_canonical(&c))
        .unwrap_or(false)
}

/// A real compiler: the path it is run by, the file it resolves to, and whether a
/// farm binary came before it on PATH.
pub struct Resolved {
    pub path: PathBuf,
    pub canonical: PathBuf,
    pub skipped_farm: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("compiler `{0}` not found on PATH (farm's own binaries are skipped)")]
    NotFound(String),
    #[error("compiler {0} is farm itself; set FARM_CC/FARM_CXX/FARM_JAVAC/FARM_CSC or `cc`/`cxx`/`javac`/`csc` in the config to the real compiler")]
    IsFarm(PathBuf),
}

/// Finds the real compiler for `name`: a path is taken as is (unless it is farm), a
/// bare name is looked up on PATH, skipping every entry that is farm itself.
pub fn resolve_compiler(name: &OsStr) -> Result<Resolved, ResolveError> {
    let p = Path::new(name);
    if p.components().count() > 1 {
        let canonical = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        if is_farm_canonical(&canonical) {
            return Err(ResolveError::IsFarm(p.to_path_buf()));
        }
        return Ok(Resolved {
            path: p.to_path_buf(),
            canonical,
            skipped_farm: false,
        });
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let cwd = std::env::current_dir().unwrap_or_default();
    if let Ok(found) = which::which_in_all(name, Some(path), cwd) {
        let mut skipped_farm = false;
        for c in found {
            let Ok(canonical) = std::fs::canonicalize(&c) else {
                continue;
            };
            if is_farm_canonical(&canonical) {
                skipped_farm = true;
                continue;
            }
            return Ok(Resolved {
                path: c,
                canonical,
                skipped_farm,
            });
        }
    }
    Err(ResolveError::NotFound(name.to_string_lossy().into_owned()))
}

fn fail(msg: impl std::fmt::Display) -> i32 {
    let _ = writeln!(std::io::stderr(), "farm: {msg}");
    1
}

/// The log file's writer: a failed write (`/dev/full`, a full disk, a FIFO nobody
/// reads) is dropped silently. Nothing farm logs may reach the compiler's stderr.
struct SwallowErrors(std::fs::File);

impl Write for SwallowErrors {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = self.0.write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = self.0.flush();
        Ok(())
    }
}

fn init_logging(cfg: &Config) {
    use std::os::unix::fs::OpenOptionsExt;
    let Some(path) = &cfg.log.value else { return };
    // Non-blocking: a FIFO without a reader is no log rather than a hang.
    let Ok(file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
    else {
        return;
    };
    let _ = tracing_subscriber::fmt()
        .with_writer(std::sync::Mutex::new(SwallowErrors(file)))
        .with_ansi(false)
        .with_target(false)
        .try_init();
}

fn disabled_by_env() -> bool {
    matches!(
        std::env::var("FARM_DISABLE").as_deref(),
        Ok("1" | "true" | "yes" | "on")
    )
}

/// Which compiler a compile names.
enum Requested {
    /// A path or a name on PATH (launcher form, masquerade).
    Named(OsString),
    /// `farm-cc` / `farm-c++`: FARM_CC/FARM_CXX, the config, else cc / c++.
    Default { cxx: bool },
    /// `farm-javac`: FARM_JAVAC, the config, JAVA_HOME's javac, else javac.
    Javac,
    /// `farm-csc`: FARM_CSC, the config, else mcs (or csc) on PATH.
    Csc,
}

/// The C# compiler `farm-csc` stands for.
fn default_csc(cfg: Option<&Config>) -> OsString {
    if let Some(v) = std::env::var_os("FARM_CSC").filter(|v| !v.is_empty()) {
        return v;
    }
    if let Some(p) = cfg.and_then(|c| c.csc.value.as_ref()) {
        return p.clone().into_os_string();
    }
    // Mono's compiler where it is installed, Roslyn's otherwise.
    match resolve_compiler(OsStr::new("mcs")) {
        Ok(_) => OsString::from("mcs"),
        Err(_) => OsString::from("csc"),
    }
}

/// The javac `farm-javac` stands for.
fn default_javac(cfg: Option<&Config>) -> OsString {
    if let Some(v) = std::env::var_os("FARM_JAVAC").filter(|v| !v.is_empty()) {
        return v;
    }
    if let Some(p) = cfg.and_then(|c| c.javac.value.as_ref()) {
        return p.clone().into_os_string();
    }
    if let Some(home) = std::env::var_os("JAVA_HOME").filter(|v| !v.is_empty()) {
        let javac = Path::new(&home).join("bin/javac");
        if javac.is_file() && !is_farm_binary(&javac) {
            return javac.into_os_string();
        }
    }
    OsString::from("javac")
}

/// The compiler `farm-cc`/`farm-c++` stand for.
fn default_compiler(cxx: bool, cfg: Option<&Config>) -> OsString {
    let var = if cxx { "FARM_CXX" } else { "FARM_CC" };
    if let Some(v) = std::env::var_os(var).filter(|v| !v.is_empty()) {
        return v;
    }
    let loaded;
    let cfg = match cfg {
        Some(c) => Some(c),
        None => {
            loaded = Config::load().ok();
            loaded.as_ref()
        }
    };
    if let Some(cfg) = cfg {
        let s = if cxx { &cfg.cxx.value } else { &cfg.cc.value };
        if let Some(p) = s {
            return p.clone().into_os_string();
        }
    }
    OsString::from(if cxx { "c++" } else { "cc" })
}

/// Journals a compile that never reached the shim (farm disabled, a broken
/// configuration, no compiler), when a journal is named.
fn journal_unrun(
    journal: Option<&Path>,
    t0: std::time::Instant,
    compiler: &Path,
    args: &[OsString],
    kind: crate::journal::Kind,
    reason: &str,
    exit: Option<i32>,
) {
    let Some(path) = journal else { return };
    let mut line = crate::journal::Line::begin(t0, compiler);
    line.family = crate::lang::family_for(&line.compiler).map(|f| f.name().to_string());
    line.guess_source(args);
    line.outcome = kind;
    line.reason = Some(reason.to_string());
    line.exit = exit;
    crate::journal::append(path, &line);
}

/// Runs a compile through the shim.
fn compile(requested: Requested, args: Vec<OsString>) -> i32 {
    use crate::journal::Kind;
    let t0 = std::time::Instant::now();
    let disabled = disabled_by_env();
    // Loaded once: the hit path reads the config file a single time.
    let cfg = (!disabled).then(Config::load);
    let requested = match requested {
        Requested::Named(n) => n,
        Requested::Default { cxx } => {
            default_compiler(cxx, cfg.as_ref().and_then(|c| c.as_ref().ok()))
        }
        Requested::Javac => default_javac(cfg.as_ref().and_then(|c| c.as_ref().ok())),
        Requested::Csc => default_csc(cfg.as_ref().and_then(|c| c.as_ref().ok())),
    };
    let Resolved {
        path: compiler,
        canonical,
        skipped_farm,
    } = match resolve_compiler(&requested) {
        Ok(c) => c,
        Err(e) => {
            let journal = match &cfg {
                Some(Ok(c)) => c.journal.value.clone(),
                _ => crate::journal::path_from_env(),
            };
            // As the shell answers a command it cannot find (127): a masquerade link
            // without a real compiler behind it must read as "no such compiler" to the
            // scripts that probe for one.
            let code = match e {
                ResolveError::NotFound(_) => {
                    fail(&e);
                    127
                }
                ResolveError::IsFarm(_) => fail(&e),
            };
            let name = Path::new(&requested);
            let (kind, why) = (Kind::Error, "compiler_not_found");
            journal_unrun(journal.as_deref(), t0, name, &args, kind, why, Some(code));
            return code;
        }
    };
    // argv[0] stays what the user typed, except when farm itself comes first on PATH
    // under that name: gcc locates its own installation from argv[0] via PATH and
    // would find farm there, so it gets its real path instead.
    let arg0 = if skipped_farm {
        compiler.clone().into_os_string()
    } else {
        requested
    };
    let pass = Kind::Passthrough;
    let cfg = match cfg {
        None => {
            let journal = crate::journal::path_from_env();
            let why = "passthrough.disabled";
            journal_unrun(journal.as_deref(), t0, &compiler, &args, pass, why, None);
            return shim::exec_compiler(&compiler, &arg0, &args);
        }
        Some(Err(e)) => {
            // A broken config must not break the build: say so once, compile plainly.
            let _ = writeln!(std::io::stderr(), "farm: {e}; compiling without the cache");
            let journal = crate::journal::path_from_env();
            let why = "passthrough.config_error";
            journal_unrun(journal.as_deref(), t0, &compiler, &args, pass, why, None);
            return shim::exec_compiler(&compiler, &arg0, &args);
        }
        Some(Ok(c)) => c,
    };
    if cfg.disable.value {
        let why = "passthrough.disabled";
        journal_unrun(
            cfg.journal.value.as_deref(),
            t0,
            &compiler,
            &args,
            pass,
            why,
            None,
        );
        return shim::exec_compiler(&compiler, &arg0, &args);
    }
    init_logging(&cfg);
    crate::fsutil::set_cache_shared(cfg.cache_shared.value);
    shim::run(&cfg, &compiler, &canonical, arg0, args)
}

/// The process entry point of every farm binary.
pub fn main() -> i32 {
    let mut argv: Vec<OsString> = std::env::args_os().collect();
    if argv.is_empty() {
        argv.push(OsString::from("farm"));
    }
    let rest = argv.split_off(1);
    match role_of(&argv[0]) {
        Role::Cc => compile(Requested::Default { cxx: false }, rest),
        Role::Cxx => compile(Requested::Default { cxx: true }, rest),
        Role::Javac => compile(Requested::Javac, rest),
        Role::Csc => compile(Requested::Csc, rest),
        Role::Masquerade(name) => compile(Requested::Named(name.into()), rest),
        Role::Farm => {
            let Some(first) = rest.first() else {
                return cli::run(&[]);
            };
            let first_s = first.to_string_lossy();
            if cli::is_command(&first_s) {
                return cli::run(&rest);
            }
            // Launcher form: `farm gcc -c x.c`, `farm /usr/bin/clang++ …`.
            let mut rest = rest;
            let compiler = rest.remove(0);
            compile(Requested::Named(compiler), rest)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles() {
        assert_eq!(role_of(OsStr::new("/usr/local/bin/farm-cc")), Role::Cc);
        assert_eq!(role_of(OsStr::new("farm-c++")), Role::Cxx);
        assert_eq!(role_of(OsStr::new("./farm")), Role::Farm);
        assert_eq!(
            role_of(OsStr::new("/x/masq/gcc")),
            Role::Masquerade("gcc".into())
        );
    }
}
