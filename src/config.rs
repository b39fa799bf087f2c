//! Effective configuration: built-in defaults, then the TOML file, then `FARM_*`
//! environment variables. Each value remembers where it came from, for `farm config`.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// How C/C++ compiles are keyed (docs/cache-key.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Source + manifest of every header read and every include lookup that found nothing.
    Direct,
    /// Key from the preprocessed text; a preprocessor run on every compile.
    Preprocessor,
    /// Like direct, but a miss never runs the preprocessor: the manifest comes from
    /// the compile's own dependency output only.
    Depend,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "direct" => Some(Mode::Direct),
            "preprocessor" | "pp" => Some(Mode::Preprocessor),
            "depend" => Some(Mode::Depend),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Preprocessor => "preprocessor",
            Mode::Depend => "depend",
        }
    }
}

/// Where a value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Default,
    File(PathBuf),
    Env(&'static str),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => write!(f, "default"),
            Source::File(p) => write!(f, "file {}", p.display()),
            Source::Env(v) => write!(f, "env {v}"),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Setting<T> {
    pub value: T,
    pub source: Source,
}

impl<T> Setting<T> {
    fn default(value: T) -> Self {
        Setting {
            value,
            source: Source::Default,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: line {line}: {msg}")]
    File {
        file: PathBuf,
        line: usize,
        msg: String,
    },
    #[error("{file}: cannot read: {err}")]
    Read { file: PathBuf, err: std::io::Error },
    #[error("environment variable {var}={value:?}: {msg}")]
    Env {
        var: &'static str,
        value: String,
        msg: String,
    },
}

/// The effective configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub file: PathBuf,
    pub file_exists: bool,
    pub dir: Setting<PathBuf>,
    pub max_size: Setting<u64>,
    pub mode: Setting<Mode>,
    pub cc: Setting<Option<PathBuf>>,
    pub cxx: Setting<Option<PathBuf>>,
    /// The real javac behind `farm-javac`.
    pub javac: Setting<Option<PathBuf>>,
    /// The real C# compiler behind `farm-csc`.
    pub csc: Setting<Option<PathBuf>>,
    pub log: Setting<Option<PathBuf>>,
    /// The build journal: one JSON line per compile appended here (`journal`,
    /// `FARM_JOURNAL`; docs/journal.md).
    pub journal: Setting<Option<PathBuf>>,
    pub disable: Setting<bool>,
    /// The cache is shared by a group: directories 0770 and files 0660, not 0700/0600.
    pub cache_shared: Setting<bool>,
    /// The local farmd's agent socket; `None` ("off") keeps every miss at home.
    pub agent: Setting<Option<PathBuf>>,
    /// Remote tiers after the local cache (`remote_storage`, `FARM_REMOTE_STORAGE`).
    pub remote_storage: Setting<Vec<crate::store::remote::RemoteSpec>>,
    /// Directories whose absolute paths enter keys relative to them (`base_dir`,
    /// `FARM_BASE_DIR`): absolute, cleaned, never `/`.
    pub base_dir: Setting<Vec<PathBuf>>,
}

/// Parses a `base_dir` value: directories separated by `:` (like `PATH`), each
/// absolute and not `/`, at most [`crate::key::relocate::MAX_BASE_DIRS`].
pub fn parse_base_dirs(v: &str) -> Result<Vec<PathBuf>, String> {
    let mut dirs = Vec::new();
    for part in v.split(':').filter(|p| !p.is_empty()) {
        let p = Path::new(part);
        if !p.is_absolute() {
            return Err(format!("`{part}` is not an absolute path"));
        }
        let clean = crate::fsutil::clean_path(p);
        if clean == Path::new("/") {
            return Err(
                "`/` would make every path relative: name the directories that hold checkouts"
                    .into(),
            );
        }
        if !dirs.contains(&clean) {
            dirs.push(clean);
        }
    }
    if dirs.len() > crate::key::relocate::MAX_BASE_DIRS {
        return Err(format!(
            "{} directories; at most {} are supported",
            dirs.len(),
            crate::key::relocate::MAX_BASE_DIRS
        ));
    }
    Ok(dirs)
}

/// Where farmd listens for its machine's shims unless configured otherwise.
pub const DEFAULT_AGENT_SOCKET: &str = "/run/farm/agent.sock";

fn agent_value(v: &str) -> Option<PathBuf> {
    (v != "off").then(|| expand_home(v))
}

pub const DEFAULT_MAX_SIZE: u64 = 5 << 30;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    dir: Option<toml::Spanned<String>>,
    max_size: Option<toml::Spanned<toml::Value>>,
    mode: Option<toml::Spanned<String>>,
    cc: Option<toml::Spanned<String>>,
    cxx: Option<toml::Spanned<String>>,
    javac: Option<toml::Spanned<String>>,
    csc: Option<toml::Spanned<String>>,
    log: Option<toml::Spanned<String>>,
    journal: Option<toml::Spanned<String>>,
    disable: Option<toml::Spanned<bool>>,
    cache_shared: Option<toml::Spanned<bool>>,
    agent: Option<toml::Spanned<String>>,
    remote_storage: Option<toml::Spanned<String>>,
    base_dir: Option<toml::Spanned<toml::Value>>,
}

/// Parses "5G", "500MiB", "10 GB", "1048576" into bytes. K/M/G/T and KiB/MiB/GiB/TiB
/// are binary units; KB/MB/GB/TB decimal.
pub fn parse_size(s: &str) -> Option<u64> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num.parse().ok()?;
    let mult: f64 = match unit.trim() {
        "" | "B" => 1.0,
        "K" | "KiB" | "k" => 1024.0,
        "M" | "MiB" => 1024.0 * 1024.0,
        "G" | "GiB" => 1024.0 * 1024.0 * 1024.0,
        "T" | "TiB" => 1024.0f64.powi(4),
        "KB" | "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        _ => return None,
    };
    let v = num * mult;
    if !v.is_finite() || v < 0.0 {
        return None;
    }
    Some(v as u64)
}

pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

fn expand_home(s: &str) -> PathBuf {
    if let Some(rest) = s.strip_prefix("~/") {
        if let Some(h) = dirs::home_dir() {
            return h.join(rest);
        }
    }
    PathBuf::from(s)
}

/// The most a config file may hold.
pub const CONFIG_MAX_BYTES: u64 = 1 << 20;

/// Reads a config file: a regular file of at most [`CONFIG_MAX_BYTES`], UTF-8. Opened
/// non-blocking, so a FIFO or a device named by `FARM_CONFIG` is an error, not a hang.
fn read_config_file(file: &Path) -> std::io::Result<String> {
    use std::io::{Error, ErrorKind, Read};
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(file)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(Error::new(ErrorKind::InvalidInput, "not a regular file"));
    }
    if meta.len() > CONFIG_MAX_BYTES {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("larger than {CONFIG_MAX_BYTES} bytes"),
        ));
    }
    let mut data = Vec::new();
    f.take(CONFIG_MAX_BYTES + 1).read_to_end(&mut data)?;
    if data.len() as u64 > CONFIG_MAX_BYTES {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("larger than {CONFIG_MAX_BYTES} bytes"),
        ));
    }
    String::from_utf8(data).map_err(|_| Error::new(ErrorKind::InvalidData, "not UTF-8"))
}

/// Default location of the config file.
pub fn default_config_file() -> PathBuf {
    dirs::config_dir()
        .unwrap_or_else(|| PathBuf::from("/etc"))
        .join("farm")
        .join("config.toml")
}

fn default_cache_dir() -> PathBuf {
    dirs::cache_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("farm")
}

impl Config {
    /// Loads the configuration from the process environment.
    pub fn load() -> Result<Config, ConfigError> {
        Self::load_with(|k| std::env::var_os(k).map(|v| v.to_string_lossy().into_owned()))
    }

    /// Loads with an explicit environment lookup (tests).
    pub fn load_with(env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let file = env("FARM_CONFIG")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(default_config_file);
        let mut cfg = Config {
            file: file.clone(),
            file_exists: false,
            dir: Setting::default(default_cache_dir()),
            max_size: Setting::default(DEFAULT_MAX_SIZE),
            mode: Setting::default(Mode::Direct),
            cc: Setting::default(None),
            cxx: Setting::default(None),
            javac: Setting::default(None),
            csc: Setting::default(None),
            log: Setting::default(None),
            journal: Setting::default(None),
            disable: Setting::default(false),
            cache_shared: Setting::default(false),
            agent: Setting::default(Some(PathBuf::from(DEFAULT_AGENT_SOCKET))),
            remote_storage: Setting::default(Vec::new()),
            base_dir: Setting::default(Vec::new()),
        };
        match read_config_file(&file) {
            Ok(text) => {
                cfg.file_exists = true;
                cfg.apply_file(&file, &text)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(ConfigError::Read { file, err }),
        }
        cfg.apply_env(env)?;
        Ok(cfg)
    }

    fn apply_file(&mut self, file: &Path, text: &str) -> Result<(), ConfigError> {
        let err_at = |offset: usize, msg: String| ConfigError::File {
            file: file.to_path_buf(),
            line: line_of(text, offset),
            msg,
        };
        let fc: FileConfig = toml::from_str(text).map_err(|e| {
            let off = e.span().map(|s| s.start).unwrap_or(0);
            err_at(off, e.message().trim().replace('\n', " "))
        })?;
        let src = || Source::File(file.to_path_buf());
        if let Some(v) = fc.dir {
            self.dir = Setting {
                value: expand_home(v.get_ref()),
                source: src(),
            };
        }
        if let Some(v) = fc.max_size {
            let bytes = match v.get_ref() {
                toml::Value::Integer(i) if *i >= 0 => Some(*i as u64),
                toml::Value::String(s) => parse_size(s),
                _ => None,
            };
            let bytes = bytes.ok_or_else(|| {
                err_at(
                    v.span().start,
                    format!(
                        "key `max_size`: invalid size {} (use bytes or a number with K, M, G, T)",
                        v.get_ref()
                    ),
                )
            })?;
            self.max_size = Setting {
                value: bytes,
                source: src(),
            };
        }
        if let Some(v) = fc.mode {
            let m = Mode::parse(v.get_ref()).ok_or_else(|| {
                err_at(
                    v.span().start,
                    format!(
                        "key `mode`: unknown mode {:?} (direct, preprocessor or depend)",
                        v.get_ref()
                    ),
                )
            })?;
            self.mode = Setting {
                value: m,
                source: src(),
            };
        }
        for (slot, v) in [
            (&mut self.cc, fc.cc),
            (&mut self.cxx, fc.cxx),
            (&mut self.javac, fc.javac),
            (&mut self.csc, fc.csc),
        ] {
            if let Some(v) = v {
                *slot = Setting {
                    value: Some(expand_home(v.get_ref())),
                    source: src(),
                };
            }
        }
        for (slot, v) in [(&mut self.log, fc.log), (&mut self.journal, fc.journal)] {
            if let Some(v) = v {
                *slot = Setting {
                    value: Some(expand_home(v.get_ref())),
                    source: src(),
                };
            }
        }
        if let Some(v) = fc.agent {
            self.agent = Setting {
                value: agent_value(v.get_ref()),
                source: src(),
            };
        }
        if let Some(v) = fc.disable {
            self.disable = Setting {
                value: *v.get_ref(),
                source: src(),
            };
        }
        if let Some(v) = fc.cache_shared {
            self.cache_shared = Setting {
                value: *v.get_ref(),
                source: src(),
            };
        }
        if let Some(v) = fc.remote_storage {
            let list = crate::store::remote::spec::parse_list(v.get_ref())
                .map_err(|e| err_at(v.span().start, format!("key `remote_storage`: {e}")))?;
            self.remote_storage = Setting {
                value: list,
                source: src(),
            };
        }
        if let Some(v) = fc.base_dir {
            let text = match v.get_ref() {
                toml::Value::String(s) => Some(s.clone()),
                toml::Value::Array(a) => a
                    .iter()
                    .map(|x| x.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()
                    .map(|parts| parts.join(":")),
                _ => None,
            };
            let dirs = text
                .ok_or_else(|| "a string or an array of strings".to_string())
                .and_then(|t| parse_base_dirs(&t))
                .map_err(|e| err_at(v.span().start, format!("key `base_dir`: {e}")))?;
            self.base_dir = Setting {
                value: dirs,
                source: src(),
            };
        }
        Ok(())
    }

    fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let get = |k: &str| env(k).filter(|v| !v.is_empty());
        // FARM_CACHE_DIR is what benchmark harnesses (shared/bench) export.
        for var in ["FARM_CACHE_DIR", "FARM_DIR"] {
            if let Some(v) = get(var) {
                self.dir = Setting {
                    value: PathBuf::from(v),
                    source: Source::Env(var),
                };
            }
        }
        if let Some(v) = env("FARM_REMOTE_STORAGE") {
            // Set but empty: no remote tiers (overrides the file).
            let list =
                crate::store::remote::spec::parse_list(&v).map_err(|e| ConfigError::Env {
                    var: "FARM_REMOTE_STORAGE",
                    value: crate::store::remote::spec::redact_list(&v),
                    msg: e.to_string(),
                })?;
            self.remote_storage = Setting {
                value: list,
                source: Source::Env("FARM_REMOTE_STORAGE"),
            };
        }
        if let Some(v) = env("FARM_BASE_DIR") {
            // Set but empty: no base directories (overrides the file).
            let dirs = parse_base_dirs(&v).map_err(|msg| ConfigError::Env {
                var: "FARM_BASE_DIR",
                value: v.clone(),
                msg,
            })?;
            self.base_dir = Setting {
                value: dirs,
                source: Source::Env("FARM_BASE_DIR"),
            };
        }
        if let Some(v) = get("FARM_MAX_SIZE") {
            let bytes = parse_size(&v).ok_or_else(|| ConfigError::Env {
                var: "FARM_MAX_SIZE",
                value: v.clone(),
                msg: "invalid size (use bytes or a number with K, M, G, T)".into(),
            })?;
            self.max_size = Setting {
                value: bytes,
                source: Source::Env("FARM_MAX_SIZE"),
            };
        }
        if let Some(v) = get("FARM_MODE") {
            let m = Mode::parse(&v).ok_or_else(|| ConfigError::Env {
                var: "FARM_MODE",
                value: v.clone(),
                msg: "unknown mode (direct, preprocessor or depend)".into(),
            })?;
            self.mode = Setting {
                value: m,
                source: Source::Env("FARM_MODE"),
            };
        }
        for (slot, var) in [
            (&mut self.cc, "FARM_CC"),
            (&mut self.cxx, "FARM_CXX"),
            (&mut self.javac, "FARM_JAVAC"),
            (&mut self.csc, "FARM_CSC"),
            (&mut self.log, "FARM_LOG"),
            (&mut self.journal, "FARM_JOURNAL"),
        ] {
            if let Some(v) = get(var) {
                *slot = Setting {
                    value: Some(PathBuf::from(v)),
                    source: Source::Env(var),
                };
            }
        }
        if let Some(v) = get("FARM_AGENT") {
            self.agent = Setting {
                value: agent_value(&v),
                source: Source::Env("FARM_AGENT"),
            };
        }
        if let Some(v) = get("FARM_DISABLE") {
            let on = match v.as_str() {
                "1" | "true" | "yes" | "on" => true,
                "0" | "false" | "no" | "off" => false,
                _ => {
                    return Err(ConfigError::Env {
                        var: "FARM_DISABLE",
                        value: v,
                        msg: "expected 1/0, true/false, yes/no or on/off".into(),
                    })
                }
            };
            self.disable = Setting {
                value: on,
                source: Source::Env("FARM_DISABLE"),
            };
        }
        if let Some(v) = get("FARM_CACHE_SHARED") {
            let on = match v.as_str() {
                "1" | "true" | "yes" | "on" => true,
                "0" | "false" | "no" | "off" => false,
                _ => {
                    return Err(ConfigError::Env {
                        var: "FARM_CACHE_SHARED",
                        value: v,
                        msg: "expected 1/0, true/false, yes/no or on/off".into(),
                    })
                }
            };
            self.cache_shared = Setting {
                value: on,
                source: Source::Env("FARM_CACHE_SHARED"),
            };
        }
        Ok(())
    }

    /// `farm config` output: one line per key, value and where it came from.
    pub fn describe(&self) -> Vec<(&'static str, String, String)> {
        let opt = |p: &Option<PathBuf>| {
            p.as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "(unset)".into())
        };
        vec![
            (
                "dir",
                self.dir.value.display().to_string(),
                self.dir.source.to_string(),
            ),
            (
                "max_size",
                format_size(self.max_size.value),
                self.max_size.source.to_string(),
            ),
            (
                "mode",
                self.mode.value.as_str().into(),
                self.mode.source.to_string(),
            ),
            ("cc", opt(&self.cc.value), self.cc.source.to_string()),
            ("cxx", opt(&self.cxx.value), self.cxx.source.to_string()),
            (
                "javac",
                opt(&self.javac.value),
                self.javac.source.to_string(),
            ),
            ("log", opt(&self.log.value), self.log.source.to_string()),
            (
                "journal",
                opt(&self.journal.value),
                self.journal.source.to_string(),
            ),
            (
                "agent",
                self.agent
                    .value
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "off".into()),
                self.agent.source.to_string(),
            ),
            (
                "remote_storage",
                if self.remote_storage.value.is_empty() {
                    "(none)".into()
                } else {
                    self.remote_storage
                        .value
                        .iter()
                        .map(|r| {
                            let ro = if r.read_only { "|read-only" } else { "" };
                            format!("{}{ro}", r.url)
                        })
                        .collect::<Vec<_>>()
                        .join(" ")
                },
                self.remote_storage.source.to_string(),
            ),
            (
                "base_dir",
                if self.base_dir.value.is_empty() {
                    "(none)".into()
                } else {
                    self.base_dir
                        .value
                        .iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(":")
                },
                self.base_dir.source.to_string(),
            ),
            (
                "disable",
                self.disable.value.to_string(),
                self.disable.source.to_string(),
            ),
            (
                "cache_shared",
                self.cache_shared.value.to_string(),
                self.cache_shared.source.to_string(),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(file_text: Option<&str>, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("config.toml");
        if let Some(t) = file_text {
            std::fs::write(&f, t).unwrap();
        }
        let mut m: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        m.insert("FARM_CONFIG".into(), f.display().to_string());
        Config::load_with(|k| m.get(k).cloned())
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("5G"), Some(5 << 30));
        assert_eq!(parse_size("5GiB"), Some(5 << 30));
        assert_eq!(parse_size("10 MB"), Some(10_000_000));
        assert_eq!(parse_size("123"), Some(123));
        assert_eq!(parse_size("5X"), None);
        assert_eq!(parse_size(""), None);
    }

    #[test]
    fn file_then_env_with_sources() {
        let c = load(
            Some("max_size = \"1G\"\nmode = \"preprocessor\"\n"),
            &[("FARM_MODE", "depend")],
        )
        .unwrap();
        assert_eq!(c.max_size.value, 1 << 30);
        assert!(matches!(c.max_size.source, Source::File(_)));
        assert_eq!(c.mode.value, Mode::Depend);
        assert_eq!(c.mode.source, Source::Env("FARM_MODE"));
    }

    #[test]
    fn bad_value_names_file_key_and_line() {
        let e = load(Some("# comment\n\nmax_size = \"lots\"\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("config.toml: line 3"), "{e}");
        assert!(e.contains("max_size"), "{e}");
        assert!(!e.contains('\n'));
    }

    #[test]
    fn unknown_key_is_an_error_with_line() {
        let e = load(Some("mode = \"direct\"\ncolour = 1\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2"), "{e}");
        assert!(e.contains("colour"), "{e}");
    }

    #[test]
    fn journal_from_file_then_env() {
        let c = load(Some("journal = \"/tmp/a.jsonl\"\n"), &[]).unwrap();
        assert_eq!(c.journal.value, Some(PathBuf::from("/tmp/a.jsonl")));
        assert!(matches!(c.journal.source, Source::File(_)));
        let c = load(
            Some("journal = \"/tmp/a.jsonl\"\n"),
            &[("FARM_JOURNAL", "/tmp/b.jsonl")],
        )
        .unwrap();
        assert_eq!(c.journal.value, Some(PathBuf::from("/tmp/b.jsonl")));
        assert_eq!(c.journal.source, Source::Env("FARM_JOURNAL"));
    }

    #[test]
    fn bad_env_names_variable() {
        let e = load(None, &[("FARM_MODE", "fast")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("FARM_MODE"), "{e}");
    }
}
