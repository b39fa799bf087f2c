//! `farm <command>`: the commands people run by hand, one file each; this file
//! dispatches on the command's name and holds what they share.

use std::ffi::OsString;
use std::io::Write;

use crate::config::Config;

mod cache;
mod cluster;
mod config;
mod monitor;
mod report;
mod stats;
mod status;
mod why;

const COMMANDS: &[&str] = &[
    "stats",
    "cache",
    "config",
    "status",
    "monitor",
    "cluster",
    "why",
    "report",
    "gradle-init",
    "maven-init",
    "help",
    "--help",
    "-h",
    "--version",
    "-V",
    "version",
];

pub fn is_command(s: &str) -> bool {
    COMMANDS.contains(&s)
}

pub const HELP: &str = "\
farm - a drop-in compiler cache and farm for gcc, clang, javac and C#

USAGE
  farm-cc ARGS...            use as CC (the real compiler: FARM_CC, config `cc`, else cc on PATH)
  farm-c++ ARGS...           use as CXX (FARM_CXX, config `cxx`, else c++ on PATH)
  farm-javac ARGS...         use as javac (FARM_JAVAC, config `javac`, $JAVA_HOME/bin/javac, else javac)
  farm-csc ARGS...           use as mcs/csc (FARM_CSC, config `csc`, else mcs or csc on PATH)
  farm COMPILER ARGS...      launcher form: `farm gcc -c x.c`, CMAKE_<LANG>_COMPILER_LAUNCHER=farm
  ln -s $(command -v farm) DIR/gcc
                             masquerade: put DIR first on PATH

COMMANDS
  farm stats [--json] [--zero]   hits by mode, misses, pass-throughs by reason, errors, size
  farm cache clear               remove every cache entry (statistics are kept)
  farm cache dir                 print the cache directory
  farm cache remotes             list the remote tiers (remote_storage) and their attributes
  farm cache ping                try each remote tier now (remote_storage)
  farm config [--json]           effective configuration and where each value came from
  farm status [--json] [--watch] the farm as this machine's farmd sees it
  farm why SOURCE [--json]       why the last compile of SOURCE missed: what differs from
                                 the nearest earlier compile (a header, an argument, ...)
  farm why -- COMPILER ARGS...   would this compile hit? if not, what differs
  farm monitor [--no-open]       the live monitor's URL (farmd serves it), opened in a browser
  farm cluster init DIR          make a cluster CA (see `farm cluster help`)
  farm cluster issue NAME        make a node certificate signed by the cluster CA
  farm report JOURNAL [-o OUT.html] [--gap SECONDS]
                                 one HTML page from a build journal (FARM_JOURNAL):
                                 timeline, slowest compiles, hit rate by directory,
                                 time saved, what ran where
  farm gradle-init [--install]   Gradle init script: javac through farm-javac when FARM_GRADLE=1
  farm maven-init [--install]    Maven settings profile: the same when FARM_MAVEN is set
  farm help | --version

ENVIRONMENT
  FARM_DIR        cache directory (default ~/.cache/farm)
  FARM_MAX_SIZE   cache size cap, e.g. 5G (default 5 GiB)
  FARM_MODE       direct (default) | preprocessor | depend
  FARM_CC, FARM_CXX   real compilers behind farm-cc / farm-c++
  FARM_JAVAC      real javac behind farm-javac
  FARM_CSC        real C# compiler behind farm-csc
  FARM_LOG        log file (nothing is ever logged to the compiler's stderr)
  FARM_JOURNAL    build journal: one JSON line per compile appended here (docs/journal.md)
  FARM_DISABLE=1  every entry point runs the real compiler untouched
  FARM_CONFIG     config file (default ~/.config/farm/config.toml)
  FARM_AGENT      farmd's agent socket (default /run/farm/agent.sock; off = local only)
  FARM_REMOTE_STORAGE  remote tiers after the local cache: space-separated URLs with
                  |attributes (redis://, s3://, http(s)://, webdav://, gha; docs/remote-storage.md)

See docs/ for recipes (Make, CMake, Ninja), the configuration reference and how to
read `farm stats`.
";

/// Writes to stdout, flushed: the binary is `no_main`, so nothing flushes stdout at
/// exit, and `farm status --watch` redraws in place.
fn out(s: &str) {
    let mut o = std::io::stdout().lock();
    let _ = o.write_all(s.as_bytes());
    let _ = o.flush();
}

/// Reports a usage or setup error; its exit code.
fn err(msg: impl std::fmt::Display) -> i32 {
    let _ = writeln!(std::io::stderr(), "farm: {msg}");
    2
}

/// The configuration, for commands that read the cache directory.
fn load() -> Result<Config, i32> {
    let cfg = Config::load().map_err(err)?;
    crate::fsutil::set_cache_shared(cfg.cache_shared.value);
    Ok(cfg)
}

pub fn run(args: &[OsString]) -> i32 {
    // Its command line is a compile's: kept as it is, not made text.
    if args.first().is_some_and(|a| a == "why") {
        return why::run(&args[1..]);
    }
    let args: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let cmd = args.first().map(String::as_str).unwrap_or("help");
    let rest = &args[args.len().min(1)..];
    match cmd {
        "help" | "--help" | "-h" => {
            out(HELP);
            0
        }
        "--version" | "-V" | "version" => {
            out(&format!("farm {}\n", env!("CARGO_PKG_VERSION")));
            0
        }
        "stats" => stats::run(rest),
        "cache" => cache::run(rest),
        "config" => config::run(rest),
        "status" => status::run(rest),
        "monitor" => monitor::run(rest),
        "cluster" => cluster::run(rest),
        "report" => report::run(rest),
        "gradle-init" => crate::buildtools::gradle_init(rest),
        "maven-init" => crate::buildtools::maven_init(rest),
        other => err(format!("unknown command `{other}` (try `farm help`)")),
    }
}

/// The flags in `rest`, each one of `allowed`; else the exit code of the error.
fn flags<'a>(rest: &'a [String], allowed: &[&str], cmd: &str) -> Result<Vec<&'a str>, i32> {
    let mut v = Vec::new();
    for a in rest {
        if !allowed.contains(&a.as_str()) {
            return Err(err(format!("{cmd}: unknown argument `{a}`")));
        }
        v.push(a.as_str());
    }
    Ok(v)
}
