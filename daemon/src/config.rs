//! farmd's configuration file (docs/farm-setup.md lists every key).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    name: Option<String>,
    listen: String,
    advertise: Option<String>,
    #[serde(default)]
    peers: Vec<String>,
    ca: String,
    cert: String,
    key: String,
    socket: Option<String>,
    socket_mode: Option<String>,
    state_dir: String,
    slots: Option<u32>,
    local_slots: Option<u32>,
    store_max_size: Option<String>,
    job_timeout: Option<u64>,
    #[serde(default)]
    revoked: Vec<String>,
    compilers: Option<Vec<String>>,
    log: Option<String>,
    idle_timeout_ms: Option<u64>,
    same_host_jobs: Option<bool>,
    job_memory: Option<String>,
    job_file_size: Option<String>,
    job_output_max: Option<String>,
    #[serde(default)]
    sandbox_paths: Vec<String>,
    #[serde(default)]
    trusted_publishers: Vec<String>,
    max_peer_connections: Option<u32>,
    peer_read_budget: Option<String>,
    accept_toolchains: Option<bool>,
    http: Option<String>,
    audit_log: Option<String>,
    audit_log_max_size: Option<String>,
    audit_log_keep: Option<u32>,
    #[serde(default)]
    shim_stats: Vec<String>,
    reapi_bot: Option<FileReapiBot>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileReapiBot {
    endpoint: String,
    #[serde(default)]
    instance: String,
    bot_id: Option<String>,
    properties: Option<std::collections::BTreeMap<String, String>>,
    auth_token_file: Option<String>,
}

/// farmd as a bot of a REAPI service's Execute (`reapi_bot = { … }`).
#[derive(Clone, Debug)]
pub struct ReapiBotConfig {
    /// As configured (`reapi://host:port`, `grpcs://…`), for messages.
    pub endpoint: String,
    /// What tonic dials: `http://host:port` or `https://host:port`.
    pub url: String,
    pub instance: String,
    /// Defaults to the node's name.
    pub bot_id: Option<String>,
    /// The device properties the service matches Actions' platforms against.
    pub properties: Vec<(String, String)>,
    /// A file holding a token sent as `authorization: Bearer <token>`.
    pub auth_token_file: Option<PathBuf>,
}

/// `reapi://` and `grpc://` (and `http://`) are plaintext; `reapis://`, `grpcs://` and
/// `https://` are TLS with the web PKI's roots.
fn reapi_url(endpoint: &str) -> Option<String> {
    let (scheme, rest) = endpoint.split_once("://")?;
    let tls = match scheme {
        "reapi" | "grpc" | "http" => false,
        "reapis" | "grpcs" | "https" => true,
        _ => return None,
    };
    let host_port = rest.trim_end_matches('/');
    if host_port.is_empty() || host_port.contains(['/', '?', '#', ' ']) {
        return None;
    }
    Some(format!(
        "{}://{host_port}",
        if tls { "https" } else { "http" }
    ))
}

/// This machine's REAPI `ISA` (x86-64, aarch64, …).
fn default_isa() -> String {
    std::env::consts::ARCH.replace('_', "-")
}

#[derive(Clone, Debug)]
pub struct DaemonConfig {
    /// The node name the certificate must carry, if given.
    pub name: Option<String>,
    pub listen: SocketAddr,
    pub advertise: String,
    pub peers: Vec<String>,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub socket: PathBuf,
    pub socket_mode: u32,
    pub state_dir: PathBuf,
    /// Jobs this node runs for peers at once.
    pub slots: u32,
    /// CPUs home offers its own misses (0: home only when no peer can take one).
    pub local_slots: u32,
    pub store_max_size: u64,
    /// Ceiling of every job's deadline, and a worker's limit on one job.
    pub job_timeout: Duration,
    pub revoked: Vec<String>,
    /// Compiler drivers this node runs for peers.
    pub compilers: Vec<PathBuf>,
    pub log: Option<PathBuf>,
    /// How long a silent connection lives (keep-alives go every 500 ms).
    pub idle_timeout: Duration,
    /// Send jobs to peers on this same machine too (they add no CPUs: tests, demos).
    pub same_host_jobs: bool,
    /// Address space of one sandboxed job (bytes).
    pub job_memory: u64,
    /// Largest file a sandboxed job may write (bytes).
    pub job_file_size: u64,
    /// Bytes a job may write to stdout, and to stderr.
    pub job_output_max: usize,
    /// More read-only paths every sandboxed job sees (toolchains outside /usr, /opt).
    pub sandbox_paths: Vec<PathBuf>,
    /// Users of this machine whose published entries every user is served.
    pub trusted_publishers: Vec<String>,
    /// Peer connections (handshakes included) served at once.
    pub max_peer_connections: u32,
    /// Bytes of peers' request frames read and decoded at once, all peers together.
    pub peer_read_budget: usize,
    /// Runs same-path jobs on toolchains peers send (in the sandbox), not only on
    /// its own compilers'.
    pub accept_toolchains: bool,
    /// Where `/metrics`, `/healthz`, `/readyz` and the monitor are served (TCP).
    pub http: HttpListen,
    /// The audit log (JSON lines, one per remote job); `None`: off.
    pub audit_log: Option<PathBuf>,
    /// Size at which the audit log is rotated.
    pub audit_log_max_size: u64,
    /// Rotated audit logs kept (`audit.jsonl.1` … `.N`).
    pub audit_log_keep: u32,
    /// Cache directories whose shims' counters (`farm stats`) `/metrics` shows.
    pub shim_stats: Vec<PathBuf>,
    /// Serve a REAPI service's Execute as its bot; `None`: off.
    pub reapi_bot: Option<ReapiBotConfig>,
}

/// Where farmd serves HTTP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HttpListen {
    /// Not configured: loopback on the QUIC `listen` port (TCP and UDP ports are
    /// apart); when that is taken farmd runs without HTTP and says so in its log.
    Default(SocketAddr),
    /// Configured: farmd does not start when it cannot listen there.
    Configured(SocketAddr),
    /// `http = "off"`.
    Off,
}

/// A job's ceiling: one day.
const MAX_JOB_TIMEOUT_S: u64 = 86_400;
/// Half a second (keep-alives go every 500 ms) to an hour.
const IDLE_TIMEOUT_MS: std::ops::RangeInclusive<u64> = 500..=3_600_000;
const PEER_READ_BUDGET: std::ops::RangeInclusive<u64> = (64 << 20)..=(2 << 30);

fn cores() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
}

/// Every gcc/clang driver in the usual places: the default allow-list.
fn default_compilers() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in ["/usr/bin", "/usr/local/bin"] {
        let Ok(rd) = std::fs::read_dir(dir) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name();
            let Some(n) = name.to_str() else { continue };
            if farm::lang::family_for(n).is_some() && !n.starts_with("farm") {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

impl DaemonConfig {
    pub fn load(file: &Path) -> Result<DaemonConfig> {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let fc: FileConfig = toml::from_str(&text).map_err(|e| {
            let msg = e.to_string().replace('\n', " ");
            anyhow!(
                "{}: {}",
                file.display(),
                msg.split_whitespace().collect::<Vec<_>>().join(" ")
            )
        })?;
        let base = file.parent().unwrap_or(Path::new("."));
        let rel = |s: &str| {
            let p = PathBuf::from(s);
            if p.is_absolute() {
                p
            } else {
                base.join(p)
            }
        };
        let bad = |key: &str, msg: String| anyhow!("{}: key `{key}`: {msg}", file.display());
        let listen: SocketAddr = fc
            .listen
            .parse()
            .map_err(|e| bad("listen", format!("{:?} is not host:port ({e})", fc.listen)))?;
        let advertise = match fc.advertise {
            Some(a) => a,
            None if listen.ip().is_unspecified() => {
                return Err(bad(
                    "advertise",
                    "required when `listen` is a wildcard address".into(),
                ))
            }
            None => listen.to_string(),
        };
        for p in &fc.peers {
            if !p.contains(':') {
                bail!("{}: key `peers`: {p:?} is not host:port", file.display());
            }
        }
        if let Some(n) = &fc.name {
            if !farm::net::valid_node_name(n) {
                return Err(bad("name", format!("{n:?} is not a valid node name")));
            }
        }
        let socket_mode = match &fc.socket_mode {
            Some(m) => u32::from_str_radix(m.trim_start_matches("0o"), 8)
                .ok()
                .filter(|m| *m <= 0o777)
                .ok_or_else(|| bad("socket_mode", format!("{m:?} is not an octal mode")))?,
            None => 0o660,
        };
        let store_max_size = match &fc.store_max_size {
            Some(s) => farm::config::parse_size(s)
                .ok_or_else(|| bad("store_max_size", format!("{s:?} is not a size")))?,
            None => 10 << 30,
        };
        let slots = fc.slots.unwrap_or_else(cores);
        if slots == 0 || slots > 1024 {
            return Err(bad("slots", format!("{slots} is not between 1 and 1024")));
        }
        let job_timeout = fc.job_timeout.unwrap_or(120);
        if job_timeout == 0 {
            return Err(bad("job_timeout", "must be at least 1 second".into()));
        }
        let size = |key: &str, v: &Option<String>, default: u64, min: u64| -> Result<u64> {
            match v {
                None => Ok(default),
                Some(s) => farm::config::parse_size(s)
                    .filter(|n| *n >= min)
                    .ok_or_else(|| {
                        bad(key, format!("{s:?} is not a size of at least {min} bytes"))
                    }),
            }
        };
        let job_memory = size("job_memory", &fc.job_memory, 8 << 30, 64 << 20)?;
        let job_file_size = size("job_file_size", &fc.job_file_size, 4 << 30, 1 << 20)?;
        let job_output_max = size("job_output_max", &fc.job_output_max, 8 << 20, 4096)?
            .min(farm::protocol::MAX_FRAME as u64 / 4) as usize;
        let mut sandbox_paths = Vec::new();
        for s in &fc.sandbox_paths {
            let p = PathBuf::from(s);
            if !p.is_absolute() {
                return Err(bad(
                    "sandbox_paths",
                    format!("{s:?} is not an absolute path"),
                ));
            }
            sandbox_paths.push(p);
        }
        if job_timeout > MAX_JOB_TIMEOUT_S {
            return Err(bad(
                "job_timeout",
                format!("{job_timeout} is more than {MAX_JOB_TIMEOUT_S} seconds"),
            ));
        }
        let local_slots = fc.local_slots.unwrap_or_else(cores);
        if local_slots > 1024 {
            return Err(bad(
                "local_slots",
                format!("{local_slots} is not between 0 and 1024"),
            ));
        }
        let idle_timeout_ms = fc.idle_timeout_ms.unwrap_or(1500);
        if !IDLE_TIMEOUT_MS.contains(&idle_timeout_ms) {
            return Err(bad(
                "idle_timeout_ms",
                format!(
                    "{idle_timeout_ms} is not between {} and {}",
                    IDLE_TIMEOUT_MS.start(),
                    IDLE_TIMEOUT_MS.end()
                ),
            ));
        }
        let max_peer_connections = fc.max_peer_connections.unwrap_or(256);
        if max_peer_connections == 0 || max_peer_connections > 65536 {
            return Err(bad(
                "max_peer_connections",
                format!("{max_peer_connections} is not between 1 and 65536"),
            ));
        }
        let peer_read_budget = match &fc.peer_read_budget {
            Some(s) => farm::config::parse_size(s)
                .filter(|n| PEER_READ_BUDGET.contains(n))
                .ok_or_else(|| {
                    bad(
                        "peer_read_budget",
                        format!("{s:?} is not a size between 64M and 2G"),
                    )
                })?,
            None => 512 << 20,
        } as usize;
        let http = match fc.http.as_deref() {
            None => HttpListen::Default(SocketAddr::from(([127, 0, 0, 1], listen.port()))),
            Some("off") => HttpListen::Off,
            Some(a) => HttpListen::Configured(a.parse().map_err(|e| {
                bad(
                    "http",
                    format!("{a:?} is neither host:port nor \"off\" ({e})"),
                )
            })?),
        };
        let audit_log = match fc.audit_log.as_deref() {
            Some("off") => None,
            Some(p) => Some(rel(p)),
            None => Some(rel(&fc.state_dir).join("audit.jsonl")),
        };
        let audit_log_max_size =
            size("audit_log_max_size", &fc.audit_log_max_size, 16 << 20, 4096)?;
        let audit_log_keep = fc.audit_log_keep.unwrap_or(4);
        if audit_log_keep > 100 {
            return Err(bad(
                "audit_log_keep",
                format!("{audit_log_keep} is not between 0 and 100"),
            ));
        }
        let shim_stats = if fc.shim_stats.is_empty() {
            // This user's own cache: where the shims of farmd's user count.
            farm::config::Config::load()
                .map(|c| vec![c.dir.value])
                .unwrap_or_default()
        } else {
            fc.shim_stats.iter().map(|s| rel(s)).collect()
        };
        let compilers = match fc.compilers {
            Some(list) => list.iter().map(|s| rel(s)).collect(),
            None => default_compilers(),
        };
        let reapi_bot = match fc.reapi_bot {
            None => None,
            Some(b) => {
                let url = reapi_url(&b.endpoint).ok_or_else(|| {
                    bad(
                        "reapi_bot.endpoint",
                        format!(
                            "{:?} is not reapi://HOST:PORT or grpcs://HOST:PORT",
                            b.endpoint
                        ),
                    )
                })?;
                if let Some(id) = &b.bot_id {
                    if id.is_empty() || id.len() > 256 || id.chars().any(char::is_control) {
                        return Err(bad("reapi_bot.bot_id", format!("{id:?} is not a bot id")));
                    }
                }
                let properties = match b.properties {
                    Some(p) => p.into_iter().collect(),
                    None => {
                        let mut p = vec![
                            ("ISA".to_string(), default_isa()),
                            ("OSFamily".to_string(), std::env::consts::OS.to_string()),
                        ];
                        // Rootfs leases run the submitter's toolchain: only where
                        // shipped toolchains are.
                        if fc.accept_toolchains.unwrap_or(true) {
                            p.push(("farm-layout".to_string(), "rootfs".to_string()));
                        }
                        p
                    }
                };
                Some(ReapiBotConfig {
                    endpoint: b.endpoint,
                    url,
                    instance: b.instance,
                    bot_id: b.bot_id,
                    properties,
                    auth_token_file: b.auth_token_file.map(|f| rel(&f)),
                })
            }
        };
        Ok(DaemonConfig {
            reapi_bot,
            name: fc.name,
            listen,
            advertise,
            peers: fc.peers,
            ca: rel(&fc.ca),
            cert: rel(&fc.cert),
            key: rel(&fc.key),
            socket: fc
                .socket
                .map(|s| rel(&s))
                .unwrap_or_else(|| PathBuf::from(farm::config::DEFAULT_AGENT_SOCKET)),
            socket_mode,
            state_dir: rel(&fc.state_dir),
            slots,
            local_slots,
            store_max_size,
            job_timeout: Duration::from_secs(job_timeout),
            revoked: fc.revoked,
            compilers,
            log: fc.log.map(|s| rel(&s)),
            idle_timeout: Duration::from_millis(idle_timeout_ms),
            same_host_jobs: fc.same_host_jobs.unwrap_or(false),
            job_memory,
            job_file_size,
            job_output_max,
            sandbox_paths,
            trusted_publishers: fc.trusted_publishers,
            max_peer_connections,
            peer_read_budget,
            accept_toolchains: fc.accept_toolchains.unwrap_or(true),
            http,
            audit_log,
            audit_log_max_size,
            audit_log_keep,
            shim_stats,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reapi_endpoints_map_to_plaintext_or_tls() {
        assert_eq!(reapi_url("reapi://h:1").as_deref(), Some("http://h:1"));
        assert_eq!(reapi_url("grpc://h:1/").as_deref(), Some("http://h:1"));
        assert_eq!(reapi_url("grpcs://h:443").as_deref(), Some("https://h:443"));
        assert_eq!(
            reapi_url("reapis://h:443").as_deref(),
            Some("https://h:443")
        );
        for bad in ["h:1", "ftp://h:1", "reapi://", "reapi://h:1/x"] {
            assert_eq!(reapi_url(bad), None, "{bad}");
        }
    }

    fn load(extra: &str) -> Result<DaemonConfig> {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("farmd.toml");
        std::fs::write(
            &f,
            format!(
                "listen = \"127.0.0.1:1\"\nca = \"ca\"\ncert = \"c\"\nkey = \"k\"\n\
                 state_dir = \"s\"\ncompilers = []\nshim_stats = [\"x\"]\n{extra}\n"
            ),
        )
        .unwrap();
        DaemonConfig::load(&f)
    }

    #[test]
    fn reapi_bot_is_off_by_default_and_checked() {
        assert!(load("").unwrap().reapi_bot.is_none());
        let c = load("reapi_bot = { endpoint = \"reapi://127.0.0.1:9\" }")
            .unwrap()
            .reapi_bot
            .unwrap();
        assert_eq!(c.url, "http://127.0.0.1:9");
        assert_eq!(c.instance, "");
        assert!(c.bot_id.is_none());
        assert!(c
            .properties
            .iter()
            .any(|(k, v)| k == "OSFamily" && v == "linux"));
        assert!(c
            .properties
            .iter()
            .any(|(k, v)| k == "farm-layout" && v == "rootfs"));
        let own_only =
            load("accept_toolchains = false\nreapi_bot = { endpoint = \"reapi://127.0.0.1:9\" }")
                .unwrap()
                .reapi_bot
                .unwrap();
        assert!(!own_only.properties.iter().any(|(k, _)| k == "farm-layout"));
        let c = load(
            "reapi_bot = { endpoint = \"grpcs://r:443\", instance = \"main\", \
             bot_id = \"b1\", properties = { OSFamily = \"Linux\" } }",
        )
        .unwrap()
        .reapi_bot
        .unwrap();
        assert_eq!(
            c.properties,
            [("OSFamily".to_string(), "Linux".to_string())]
        );
        assert_eq!(c.bot_id.as_deref(), Some("b1"));
        let e = load("reapi_bot = { endpoint = \"http//x\" }")
            .err()
            .unwrap();
        assert!(e.to_string().contains("reapi_bot.endpoint"), "{e}");
        let e = load("reapi_bot = { endpoint = \"reapi://x:1\", tls = true }")
            .err()
            .unwrap();
        assert!(e.to_string().contains("tls"), "{e}");
    }
}
