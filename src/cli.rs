//! `farm <command>`: the commands people run by hand.

use std::ffi::OsString;
use std::io::Write;

use crate::cache::LocalStore;
use crate::config::{format_size, Config};
use crate::stats::{Outcome, ReasonFamily, Stats, Summary};

const COMMANDS: &[&str] = &[
    "stats",
    "cache",
    "config",
    "status",
    "cluster",
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
  farm config [--json]           effective configuration and where each value came from
  farm status [--json] [--watch] the farm as this machine's farmd sees it
  farm cluster init DIR          make a cluster CA (see `farm cluster help`)
  farm cluster issue NAME        make a node certificate signed by the cluster CA
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
  FARM_DISABLE=1  every entry point runs the real compiler untouched
  FARM_CONFIG     config file (default ~/.config/farm/config.toml)
  FARM_AGENT      farmd's agent socket (default /run/farm/agent.sock; off = local only)

See docs/ for recipes (Make, CMake, Ninja), the configuration reference and how to
read `farm stats`.
";

fn out(s: &str) {
    let _ = std::io::stdout().lock().write_all(s.as_bytes());
}

fn err(msg: impl std::fmt::Display) -> i32 {
    let _ = writeln!(std::io::stderr(), "farm: {msg}");
    2
}

fn load() -> Result<Config, i32> {
    let cfg = Config::load().map_err(err)?;
    crate::fsutil::set_cache_shared(cfg.cache_shared.value);
    Ok(cfg)
}

pub fn run(args: &[OsString]) -> i32 {
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
        "stats" => stats(rest),
        "cache" => cache(rest),
        "config" => config(rest),
        "status" => crate::farmcli::status(rest),
        "cluster" => crate::farmcli::cluster(rest),
        "gradle-init" => crate::buildtools::gradle_init(rest),
        "maven-init" => crate::buildtools::maven_init(rest),
        other => err(format!("unknown command `{other}` (try `farm help`)")),
    }
}

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

fn stats(rest: &[String]) -> i32 {
    let f = match flags(rest, &["--json", "--zero", "-z"], "stats") {
        Ok(f) => f,
        Err(c) => return c,
    };
    let cfg = match load() {
        Ok(c) => c,
        Err(c) => return c,
    };
    let st = Stats::new(&cfg.dir.value);
    if f.contains(&"--zero") || f.contains(&"-z") {
        if let Err(e) = st.zero() {
            return err(format!(
                "cannot zero statistics in {}: {e}",
                cfg.dir.value.display()
            ));
        }
        if !f.contains(&"--json") {
            out("statistics zeroed\n");
            return 0;
        }
    }
    let s = Summary {
        counters: st.read(),
    };
    let store = LocalStore::new(&cfg.dir.value, cfg.max_size.value);
    let (bytes, files) = store.usage();
    let passthrough = s.group(ReasonFamily::Passthrough);
    let not_stored = s.group(ReasonFamily::NotStored);
    let errors = s.get(&Outcome::CacheError);
    let hits = s.hits();
    let misses = s.get(&Outcome::Miss);
    if f.contains(&"--json") {
        let j = serde_json::json!({
            "cache_dir": cfg.dir.value,
            "hits": {
                "direct": s.get(&Outcome::HitDirect),
                "preprocessor": s.get(&Outcome::HitPreprocessor),
                "depend": s.get(&Outcome::HitDepend),
                "declared": s.get(&Outcome::HitDeclared),
                "farm": s.get(&Outcome::HitFarm),
                "total": hits,
            },
            "farm": {
                "remote": s.get(&Outcome::FarmRemote),
                "home": s.group(ReasonFamily::FarmHome),
                "fallback": s.group(ReasonFamily::Fallback),
            },
            "misses": misses,
            "warm": {
                "compiled": s.get(&Outcome::WarmCompiled),
                "declined": s.group(ReasonFamily::WarmDeclined),
            },
            "passthrough": passthrough,
            "not_stored": not_stored,
            "compile_failed": s.get(&Outcome::CompileFailed),
            "errors": { "cache": errors, "corrupt_entries": s.get(&Outcome::CorruptEntry) },
            "evicted_files": s.get(&Outcome::EvictedFiles),
            "cleanups": s.get(&Outcome::Cleanups),
            "entries": files,
            "size_bytes": bytes,
            "max_size_bytes": cfg.max_size.value,
            "time_saved_ms": s.get(&Outcome::TimeSavedMs),
            "compile_ms": s.get(&Outcome::CompileMs),
        });
        out(&format!(
            "{}\n",
            serde_json::to_string_pretty(&j).expect("json")
        ));
        return 0;
    }
    let mut t = String::new();
    let line = |t: &mut String, k: &str, v: String| t.push_str(&format!("  {k:<24}{v:>12}\n"));
    t.push_str(&format!(
        "farm statistics  (cache {})\n",
        cfg.dir.value.display()
    ));
    line(&mut t, "hits", hits.to_string());
    line(&mut t, "  direct", s.get(&Outcome::HitDirect).to_string());
    line(
        &mut t,
        "  preprocessor",
        s.get(&Outcome::HitPreprocessor).to_string(),
    );
    line(&mut t, "  depend", s.get(&Outcome::HitDepend).to_string());
    line(
        &mut t,
        "  declared",
        s.get(&Outcome::HitDeclared).to_string(),
    );
    line(&mut t, "  farm", s.get(&Outcome::HitFarm).to_string());
    line(&mut t, "misses", misses.to_string());
    line(
        &mut t,
        "  compiled by peers",
        s.get(&Outcome::FarmRemote).to_string(),
    );
    line(
        &mut t,
        "  in a warm JVM",
        s.get(&Outcome::WarmCompiled).to_string(),
    );
    for (k, v) in &s.group(ReasonFamily::WarmDeclined) {
        line(&mut t, &format!("    cold: {k}"), v.to_string());
    }
    let home = s.group(ReasonFamily::FarmHome);
    if !home.is_empty() {
        line(
            &mut t,
            "  compiled at home",
            home.values().sum::<u64>().to_string(),
        );
        for (k, v) in &home {
            line(&mut t, &format!("    {k}"), v.to_string());
        }
    }
    let fallback = s.group(ReasonFamily::Fallback);
    line(
        &mut t,
        "farm fallbacks",
        fallback.values().sum::<u64>().to_string(),
    );
    for (k, v) in &fallback {
        line(&mut t, &format!("  {k}"), v.to_string());
    }
    if hits + misses > 0 {
        line(
            &mut t,
            "hit rate",
            format!("{:.1} %", 100.0 * hits as f64 / (hits + misses) as f64),
        );
    }
    line(
        &mut t,
        "pass-through",
        passthrough.values().sum::<u64>().to_string(),
    );
    for (k, v) in &passthrough {
        line(&mut t, &format!("  {k}"), v.to_string());
    }
    line(
        &mut t,
        "compiled, not stored",
        not_stored.values().sum::<u64>().to_string(),
    );
    for (k, v) in &not_stored {
        line(&mut t, &format!("  {k}"), v.to_string());
    }
    line(
        &mut t,
        "compile failed",
        s.get(&Outcome::CompileFailed).to_string(),
    );
    line(&mut t, "cache errors", errors.to_string());
    line(
        &mut t,
        "corrupt entries",
        s.get(&Outcome::CorruptEntry).to_string(),
    );
    line(
        &mut t,
        "evicted files",
        s.get(&Outcome::EvictedFiles).to_string(),
    );
    line(&mut t, "entries", files.to_string());
    line(
        &mut t,
        "size",
        format!(
            "{} / {}",
            format_size(bytes),
            format_size(cfg.max_size.value)
        ),
    );
    line(
        &mut t,
        "time saved (est.)",
        format!("{:.1} s", s.get(&Outcome::TimeSavedMs) as f64 / 1000.0),
    );
    t.push_str(&format!(
        "summary: hits={hits} misses={misses} passthrough={} errors={errors}\n",
        passthrough.values().sum::<u64>()
    ));
    out(&t);
    0
}

fn cache(rest: &[String]) -> i32 {
    let cfg = match load() {
        Ok(c) => c,
        Err(c) => return c,
    };
    match rest.first().map(String::as_str) {
        Some("clear") if rest.len() == 1 => {
            let store = LocalStore::new(&cfg.dir.value, cfg.max_size.value);
            match store.clear() {
                Ok(n) => {
                    out(&format!(
                        "removed {n} entries from {}\n",
                        store.root().display()
                    ));
                    0
                }
                Err(e) => err(format!("cannot clear {}: {e}", store.root().display())),
            }
        }
        Some("dir") if rest.len() == 1 => {
            out(&format!("{}\n", cfg.dir.value.display()));
            0
        }
        _ => err("usage: farm cache clear | farm cache dir"),
    }
}

fn config(rest: &[String]) -> i32 {
    let f = match flags(rest, &["--json"], "config") {
        Ok(f) => f,
        Err(c) => return c,
    };
    let cfg = match load() {
        Ok(c) => c,
        Err(c) => return c,
    };
    let rows = cfg.describe();
    if f.contains(&"--json") {
        let mut m = serde_json::Map::new();
        for (k, v, src) in rows {
            m.insert(k.into(), serde_json::json!({ "value": v, "source": src }));
        }
        m.insert(
            "config_file".into(),
            serde_json::json!({ "path": cfg.file, "exists": cfg.file_exists }),
        );
        out(&format!(
            "{}\n",
            serde_json::to_string_pretty(&m).expect("json")
        ));
        return 0;
    }
    let mut t = format!(
        "config file: {}{}\n",
        cfg.file.display(),
        if cfg.file_exists {
            ""
        } else {
            " (not present)"
        }
    );
    for (k, v, src) in rows {
        t.push_str(&format!("  {k:<10} {v:<40} ({src})\n"));
    }
    out(&t);
    0
}
