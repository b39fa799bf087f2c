//! farmd: one per machine. Worker for peers' compiles, cache peer (store) and local
//! agent for this machine's shims (docs/architecture.md).

mod activity;
mod agent;
mod audit;
mod blobs;
mod config;
mod exec;
mod farm_cache;
mod http;
mod metrics;
mod monitor;
mod node;
mod peers;
mod placement;
mod reapi_bot;
mod remote_pool;
mod server;
mod shapes;
mod store_role;
mod toolchains;
mod warm;
mod worker;

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};

use crate::config::DaemonConfig;
use crate::node::{AllowedCompiler, Node};

const HELP: &str = "\
farmd - the farm daemon (worker, cache peer, local agent)

USAGE
  farmd --config FILE     run the daemon with this configuration
  farmd --check FILE      load the configuration and certificates, then exit
  farmd --help | --version

Set-up, configuration keys and the systemd unit: docs/farm-setup.md.
Without a running farmd, farm-cc/farm-c++ work as a local cache.
";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.first().map(String::as_str) {
        None | Some("--help") | Some("-h") => {
            print!("{HELP}");
            0
        }
        Some("--version") | Some("-V") => {
            println!(
                "farmd {} (protocol {})",
                env!("CARGO_PKG_VERSION"),
                farm::protocol::VERSION
            );
            0
        }
        Some(flag @ ("--config" | "--check")) => match args.get(1) {
            Some(f) => match start(PathBuf::from(f), flag == "--check") {
                Ok(()) => 0,
                Err(e) => {
                    let _ = writeln!(std::io::stderr(), "farmd: {e:#}");
                    1
                }
            },
            None => {
                let _ = writeln!(std::io::stderr(), "farmd: {flag} needs a file");
                2
            }
        },
        Some(other) => {
            let _ = writeln!(
                std::io::stderr(),
                "farmd: unknown argument `{other}` (try --help)"
            );
            2
        }
    };
    std::process::exit(code);
}

fn init_log(cfg: &DaemonConfig) -> Result<()> {
    let filter = tracing_subscriber::filter::LevelFilter::INFO;
    match &cfg.log {
        Some(path) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("log file {}", path.display()))?;
            tracing_subscriber::fmt()
                .with_max_level(filter)
                .with_ansi(false)
                .with_writer(Mutex::new(f))
                .init();
        }
        None => {
            tracing_subscriber::fmt()
                .with_max_level(filter)
                .with_writer(std::io::stderr)
                .init();
        }
    }
    Ok(())
}

fn allowed_compilers(cfg: &DaemonConfig) -> Vec<AllowedCompiler> {
    let memo = cfg.state_dir.join("memo");
    let mut out = Vec::new();
    for path in &cfg.compilers {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let canonical = match std::fs::canonicalize(path) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(compiler = %path.display(), error = %e, "allow-listed compiler missing");
                continue;
            }
        };
        let probe = match farm::lang::family_for(name) {
            Some(f) => f.identity_probe(&canonical),
            None => farm::lang::IdentityProbe::default(),
        };
        match farm::key::compiler_identity(&canonical, &probe, &memo) {
            Ok(identity) => out.push(AllowedCompiler {
                name: name.to_string(),
                path: path.clone(),
                identity,
            }),
            Err(e) => {
                tracing::warn!(compiler = %path.display(), error = %e, "cannot identify compiler")
            }
        }
    }
    out
}

/// What farmd keeps under its state directory (all of it private to its user).
const STATE_SUBDIRS: [&str; 5] = ["jobs", "store", "blobs", "memo", "jvm"];

/// Creates `dir` (and missing parents) 0700 whatever the umask, and takes group and
/// other access away from it if it already exists: sources, objects and cache
/// entries of the whole farm pass through farmd's state directory.
fn private_dir(dir: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let ctx = || format!("state directory {}", dir.display());
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(ctx)?;
    let mode = std::fs::metadata(dir)
        .with_context(ctx)?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & 0o700))
            .with_context(ctx)?;
    }
    Ok(())
}

/// Refuses a node key that anyone but its owner may read, as ssh does: whoever reads it
/// is this node to the whole cluster (docs/security.md). The usual slip is a key in
/// group `farm`, which every build user of the machine joins to reach the agent.
fn private_key(file: &std::path::Path, key: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(key)
        .with_context(|| format!("{}: key {}", file.display(), key.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(anyhow!(
            "{}: key {} is readable by others (mode {:04o}): make it 0600 and owned by farmd's user",
            file.display(),
            key.display(),
            mode & 0o7777
        ));
    }
    Ok(())
}

fn start(file: PathBuf, check_only: bool) -> Result<()> {
    let cfg = DaemonConfig::load(&file)?;
    let tls = farm::net::load_node_tls(&cfg.ca, &cfg.cert, &cfg.key, cfg.idle_timeout)
        .with_context(|| format!("{}: certificates", file.display()))?;
    private_key(&file, &cfg.key)?;
    if let Some(n) = &cfg.name {
        if *n != tls.name {
            return Err(anyhow!(
                "{}: `name` is {n:?} but certificate {} is for {:?}",
                file.display(),
                cfg.cert.display(),
                tls.name
            ));
        }
    }
    if check_only {
        println!("farmd: {} ok (node {})", file.display(), tls.name);
        return Ok(());
    }
    init_log(&cfg)?;
    private_dir(&cfg.state_dir)?;
    // Job directories of a previous run are leftovers.
    let _ = std::fs::remove_dir_all(cfg.state_dir.join("jobs"));
    for sub in STATE_SUBDIRS {
        private_dir(&cfg.state_dir.join(sub))?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(run(cfg, tls))
}

async fn run(cfg: DaemonConfig, tls: farm::net::NodeTls) -> Result<()> {
    let compilers = allowed_compilers(&cfg);
    let sandbox = match worker::sandbox::Sandbox::probe(&cfg.sandbox_paths).await {
        Ok(s) => Some(s),
        Err(e) => {
            // Fail closed: without a sandbox no peer's job runs here.
            tracing::error!(error = %e, "no job sandbox: this node runs no jobs for peers");
            None
        }
    };
    let limits = worker::spawn::job_limits(&cfg);
    // Memory is limited per process, not per job (no cgroups): say so when the jobs
    // this node may run at once could together exceed the machine.
    if let Some(total) = mem_total_bytes() {
        let worst = cfg.job_memory.saturating_mul(cfg.slots as u64);
        if worst > total {
            tracing::warn!(
                job_memory = cfg.job_memory,
                slots = cfg.slots,
                mem_total = total,
                "slots × job_memory exceeds this machine's memory"
            );
        }
    }
    let mut endpoint = quinn::Endpoint::server(tls.server, cfg.listen)
        .with_context(|| format!("cannot listen on udp {}", cfg.listen))?;
    endpoint.set_default_client_config(tls.client);
    let http = http::bind(&cfg.http)?;
    let http_addr = http.as_ref().and_then(|l| l.local_addr().ok());
    let audit = cfg
        .audit_log
        .clone()
        .map(|p| audit::AuditLog::new(p, cfg.audit_log_max_size, cfg.audit_log_keep));
    let store = farm::store::LocalStore::new(&cfg.state_dir.join("store"), cfg.store_max_size);
    let reapi = match &cfg.reapi_execute {
        None => None,
        Some(r) => {
            Some(exec::reapi::ReapiService::new(r, cfg.job_timeout).context("reapi_execute")?)
        }
    };
    let node = Arc::new(Node {
        reapi,
        name: tls.name.clone(),
        host: node::host_id(),
        compilers,
        warm: warm::WarmPool::new(
            &cfg.state_dir,
            cfg.local_slots.max(cfg.slots) as usize,
            sandbox.clone().map(|s| (s, limits)),
        ),
        sandbox,
        blobs: blobs::BlobStore::new(&cfg.state_dir, cfg.store_max_size / 2),
        shapes: Default::default(),
        toolchains: toolchains::Toolchains::new(
            &cfg.state_dir,
            cfg.accept_toolchains,
            cfg.store_max_size / 4,
        ),
        store,
        endpoint,
        slots: Arc::new(tokio::sync::Semaphore::new(cfg.slots as usize)),
        queue: 0.into(),
        running: 0.into(),
        peers: Mutex::new(Default::default()),
        local_running: 0.into(),
        local_ms: Mutex::new(0.0),
        local_base_ms: Mutex::new(0.0),
        local_last: Mutex::new(None),
        ms_per_mib: Mutex::new(0.0),
        stopping: false.into(),
        disk_full: false.into(),
        started: Instant::now(),
        jobs_served: 0.into(),
        jobs_refused: 0.into(),
        job_seq: 0.into(),
        agent_busy: 0.into(),
        changed: tokio::sync::Notify::new(),
        manifest_lock: Mutex::new(()),
        peer_conns: Arc::new(tokio::sync::Semaphore::new(
            cfg.max_peer_connections as usize,
        )),
        read_budget: farm::protocol::ReadBudget::new(cfg.peer_read_budget),
        agent_read_budget: farm::protocol::ReadBudget::new(cfg.peer_read_budget),
        activity: activity::Activity::new(audit),
        http: http_addr,
        cfg,
    });
    let listener = agent::bind(&node)?;
    tracing::info!(
        node = %node.name,
        listen = %node.cfg.listen,
        socket = %node.cfg.socket.display(),
        compilers = node.compilers.len(),
        slots = node.cfg.slots,
        http = ?node.http,
        reapi_execute = node.reapi.as_ref().map(|r| r.name.as_str()),
        "farmd started"
    );
    {
        // The packages of this node's own compilers: hashed off the async threads.
        let node = node.clone();
        tokio::task::spawn_blocking(move || {
            let own: Vec<_> = node
                .compilers
                .iter()
                .filter_map(|c| {
                    let f = farm::lang::family_for(&c.name)?;
                    Some((f, c.path.clone(), c.name.clone()))
                })
                .collect();
            node.toolchains.add_own(&own);
        });
    }
    tokio::spawn(server::serve(node.clone()));
    tokio::spawn(peers::gossip(node.clone()));
    tokio::spawn(agent::serve(node.clone(), listener));
    tokio::spawn(reapi_bot::serve(node.clone()));
    if let Some(l) = http {
        tokio::spawn(http::serve(node.clone(), l));
    }

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    // Graceful stop: refuse new work, finish what runs (shims waiting on this agent
    // get their answers), then close.
    tracing::info!("stopping: finishing running jobs");
    node.stopping.store(true, Ordering::Relaxed);
    let _ = std::fs::remove_file(&node.cfg.socket);
    let until = Instant::now() + node.cfg.job_timeout.min(Duration::from_secs(60));
    while (node.running.load(Ordering::Relaxed) > 0
        || node.queue.load(Ordering::Relaxed) > 0
        || node.agent_busy.load(Ordering::Relaxed) > 0
        || reapi_bot::UNREPORTED.load(Ordering::Relaxed) > 0)
        && Instant::now() < until
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    node.endpoint.close(0u32.into(), b"stopping");
    let _ = tokio::time::timeout(Duration::from_secs(2), node.endpoint.wait_idle()).await;
    tracing::info!("stopped");
    Ok(())
}

/// The machine's memory (`MemTotal` of /proc/meminfo).
fn mem_total_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb * 1024)
}
