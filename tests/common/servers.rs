//! Real cache servers on loopback for the remote-tier tests: Debian's redis-server and
//! nginx with its WebDAV modules (../shared/ENGINES.md). Each binds a free port in a
//! temporary directory and is killed when dropped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::require;

/// A free TCP port on loopback (bound, then released for the server to take).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16, what: &str, child: &mut Child) {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(10) {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!("{what} exited at start: {st}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{what} did not listen on {port} within 10 s");
}

pub struct Server {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Stops the server now (a remote that dies mid-build).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// redis-server with `maxmemory` (and the policy for when it is full).
pub fn redis(maxmemory: &str, policy: &str) -> Server {
    let bin = require("redis-server");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = Command::new(bin)
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "no"])
        .args(["--maxmemory", maxmemory, "--maxmemory-policy", policy])
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(port, "redis-server", &mut child);
    Server {
        child,
        port,
        _dir: dir,
    }
}

/// nginx serving WebDAV (PUT, MKCOL, PROPFIND) from a temporary directory.
pub fn nginx_webdav() -> (Server, PathBuf) {
    let bin = require("nginx");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let d = dir.path();
    let root = d.join("root");
    std::fs::create_dir_all(&root).unwrap();
    let conf = format!(
        r#"load_module /usr/lib/nginx/modules/ngx_http_dav_ext_module.so;
daemon off;
master_process off;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 256; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  server {{
    listen 127.0.0.1:{port};
    location / {{
      root {root};
      dav_methods PUT DELETE MKCOL COPY MOVE;
      dav_ext_methods PROPFIND OPTIONS;
      create_full_put_path on;
      client_max_body_size 0;
    }}
  }}
}}
"#,
        d = d.display(),
        root = root.display(),
    );
    std::fs::write(d.join("nginx.conf"), conf).unwrap();
    let mut child = Command::new(bin)
        .arg("-c")
        .arg(d.join("nginx.conf"))
        .arg("-p")
        .arg(d)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(port, "nginx", &mut child);
    (
        Server {
            child,
            port,
            _dir: dir,
        },
        root,
    )
}

/// A TCP server that accepts connections and never answers (a hung remote); the
/// count of connections it accepted.
pub fn silent() -> (std::sync::Arc<std::sync::atomic::AtomicUsize>, u16) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming().flatten() {
            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(s);
            if held.len() > 1000 {
                break;
            }
        }
    });
    (count, port)
}

/// A proxy to `target` on loopback that holds each answer back `delay` (a remote
/// that answers, but slowly: a fault no real server here can be made to show); the
/// count of answers it passed on.
pub fn slow_proxy(
    target: u16,
    delay: Duration,
) -> (std::sync::Arc<std::sync::atomic::AtomicUsize>, u16) {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let answers = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = answers.clone();
    std::thread::spawn(move || {
        for client in l.incoming().flatten() {
            let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", target)) else {
                continue;
            };
            let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c_in, &mut s_out);
            });
            let (mut s_in, mut c_out) = (server, client);
            let counted = counted.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                while let Ok(n) = s_in.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    std::thread::sleep(delay);
                    counted.fetch_add(1, Ordering::SeqCst);
                    if c_out.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    (answers, port)
}

/// Every file under `dir` (a WebDAV root), by path.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    fn walk(d: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(rd) = std::fs::read_dir(d) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else {
                    out.push(p);
                }
            }
        }
    }
    walk(dir, &mut out);
    out
}

/// moto's S3 server (from PyPI, installed by scripts/install-deps.sh into
/// target/test-venv) with one bucket, `farm-cache`. Signed requests with any key.
pub fn moto_s3() -> Server {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-venv/bin");
    let bin = venv.join("moto_server");
    assert!(
        bin.exists(),
        "{} missing: run scripts/install-deps.sh",
        bin.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = Command::new(&bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(port, "moto_server", &mut child);
    let made = Command::new(venv.join("python"))
        .arg("-c")
        .arg(format!(
            "import boto3; boto3.client('s3', endpoint_url='http://127.0.0.1:{port}', \
             aws_access_key_id='farm', aws_secret_access_key='farm', region_name='us-east-1')\
             .create_bucket(Bucket='farm-cache')"
        ))
        .status()
        .unwrap();
    assert!(made.success(), "creating the bucket on moto failed");
    Server {
        child,
        port,
        _dir: dir,
    }
}

/// Prometheus (Debian's `prometheus`) scraping `targets` (host:port) every second,
/// its database in a temporary directory.
pub fn prometheus(targets: &[String]) -> Server {
    let bin = require("prometheus");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let list = targets
        .iter()
        .map(|t| format!("'{t}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: farmd\n    static_configs:\n      - targets: [{list}]\n"
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let mut child = Command::new(bin)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    wait_for_port(port, "prometheus", &mut child);
    // Owned first, so that a panic below kills it.
    let mut server = Server {
        child,
        port,
        _dir: dir,
    };
    // Prometheus listens while its TSDB is still opening, answering 503 until ready.
    let t0 = Instant::now();
    while super::http::get(&format!("http://127.0.0.1:{port}/-/ready")).0 != 200 {
        if let Ok(Some(st)) = server.child.try_wait() {
            panic!("prometheus exited at start: {st}");
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "prometheus on {port} not ready within 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    server
}

/// The BuildGrid configuration of the REAPI cache tests: CAS, ByteStream and Action
/// Cache in memory, instance `""`, plaintext (../shared/engines/, beside the clone).
fn buildgrid_config(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/engines")
        .join(name);
    assert!(
        p.exists(),
        "{} missing: the shared engine configurations sit beside the clone (../shared)",
        p.display()
    );
    p
}

/// BuildGrid 0.9.1 (from PyPI, installed by scripts/install-deps.sh into
/// target/buildgrid-venv) serving a CAS and an Action Cache in memory on loopback:
/// `reapi://127.0.0.1:<port>`, instance `""`. Killed on drop.
pub fn buildgrid_cas_ac() -> Server {
    start_buildgrid(
        &buildgrid_config("buildgrid-cas-ac.yml"),
        tempfile::tempdir().unwrap(),
    )
}

/// [`buildgrid_cas_ac`] over TLS with this certificate and key (PEM):
/// `grpcs://localhost:<port>`.
pub fn buildgrid_cas_ac_tls(cert_pem: &str, key_pem: &str) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("server.crt"), dir.path().join("server.key"));
    std::fs::write(&cert, cert_pem).unwrap();
    std::fs::write(&key, key_pem).unwrap();
    let plain = std::fs::read_to_string(buildgrid_config("buildgrid-cas-ac.yml")).unwrap();
    let tls = edited(
        &plain,
        "    insecure-mode: true\n",
        &format!(
            "    insecure-mode: false\n    credentials:\n      tls-server-key: {}\n      tls-server-cert: {}\n",
            key.display(),
            cert.display()
        ),
    );
    let config = dir.path().join("buildgrid-cas-ac-tls.yml");
    std::fs::write(&config, tls).unwrap();
    start_buildgrid(&config, dir)
}

/// [`buildgrid_cas_ac`] whose Action Cache clients may read but not write
/// (`allow-updates: false`, as many shared deployments run for developers).
pub fn buildgrid_cas_ac_no_updates() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let plain = std::fs::read_to_string(buildgrid_config("buildgrid-cas-ac.yml")).unwrap();
    let locked = edited(&plain, "allow-updates: true", "allow-updates: false");
    let config = dir.path().join("buildgrid-cas-ac-no-updates.yml");
    std::fs::write(&config, locked).unwrap();
    start_buildgrid(&config, dir)
}

/// `yaml` with `from` replaced by `to`; `from` must be there (the shared
/// configuration changed otherwise, and the edit would silently do nothing).
pub fn edited(yaml: &str, from: &str, to: &str) -> String {
    assert!(
        yaml.contains(from),
        "the shared BuildGrid configuration changed: no {from:?} in it"
    );
    yaml.replace(from, to)
}

fn start_buildgrid(config: &Path, dir: tempfile::TempDir) -> Server {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/buildgrid-venv/bin/bgd");
    assert!(
        bin.exists(),
        "{} missing: run scripts/install-deps.sh (it needs Python 3.13)",
        bin.display()
    );
    let port = free_port();
    let child = spawn_bgd(&bin, config, dir.path(), &[("BG_PORT", port)]);
    Server {
        child,
        port,
        _dir: dir,
    }
}

/// Starts `bgd server start <config>` with `ports` in its environment (`BG_PORT`
/// the one it listens on), its output appended to `<dir>/bgd.log`, and waits until it
/// listens (Python takes a few seconds to import BuildGrid); panics with the log if
/// it exits or does not listen within 60 s.
fn spawn_bgd(bin: &Path, config: &Path, dir: &Path, ports: &[(&str, u16)]) -> Child {
    let log_path = dir.join("bgd.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .unwrap();
    let mut cmd = Command::new(bin);
    cmd.args(["server", "start"]).arg(config);
    for (k, v) in ports {
        cmd.env(k, v.to_string());
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let port = ports.iter().find(|(k, _)| *k == "BG_PORT").unwrap().1;
    let t0 = Instant::now();
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(st)) = child.try_wait() {
            panic!("bgd exited at start ({st}): {}", log());
        }
        if t0.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("bgd did not listen on {port} within 60 s: {}", log());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// BuildGrid with its Execute service (and the Bots service its bots talk to), CAS,
/// Action Cache and ByteStream, on loopback, instance name `""`: BuildGrid 0.9.1 from
/// target/buildgrid-venv (scripts/install-deps.sh) with ../shared/engines/buildgrid-exec.yml,
/// its scheduler on a throwaway PostgreSQL cluster (15 on Debian 12) (Debian's `postgresql`, run as
/// the `postgres` user in a temporary directory, fsync off). Both stop when dropped.
pub struct BuildGridExec {
    bgd: Option<Child>,
    pub port: u16,
    pub pg_port: u16,
    pub venv: PathBuf,
    dir: tempfile::TempDir,
    config: PathBuf,
}

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

fn as_postgres(tool: &str) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--"])
        .arg(Path::new(PG_BIN).join(tool));
    c
}

fn ok(c: &mut Command, what: &str) {
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

pub fn buildgrid_exec() -> BuildGridExec {
    buildgrid_exec_with(|yaml, _| yaml.to_string())
}

/// [`buildgrid_exec`] with JWT authorization (HS256 with `secret`): every call needs
/// `authorization: Bearer <a token signed with secret>`.
pub fn buildgrid_exec_jwt(secret: &str) -> BuildGridExec {
    let secret = secret.to_string();
    buildgrid_exec_with(move |yaml, dir| {
        let file = dir.join("auth.secret");
        std::fs::write(&file, &secret).unwrap();
        let jwt = format!(
            "authorization:\n  method: jwt\n  secret: {}\n  algorithm: hs256\n",
            file.display()
        );
        edited(yaml, "authorization:\n  method: none\n", &jwt)
    })
}

/// [`buildgrid_exec`] with the shared config as `edit` rewrites it (written into the
/// server's temporary directory; ../shared stays as it is).
pub fn buildgrid_exec_with(edit: impl Fn(&str, &Path) -> String) -> BuildGridExec {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/buildgrid-venv");
    assert!(
        venv.join("bin/bgd").exists(),
        "{} missing: run scripts/install-deps.sh (BuildGrid needs Python 3.13)",
        venv.join("bin/bgd").display()
    );
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/engines/buildgrid-exec.yml");
    let yaml =
        std::fs::read_to_string(&shared).unwrap_or_else(|e| panic!("{}: {e}", shared.display()));
    let dir = tempfile::Builder::new()
        .prefix("farm-buildgrid")
        .tempdir()
        .unwrap();
    ok(
        Command::new("chown")
            .arg("postgres:postgres")
            .arg(dir.path()),
        "chown",
    );
    let data = dir.path().join("data");
    let pg_port = free_port();
    ok(
        as_postgres("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", "bgd", "--auth=trust"]),
        "initdb",
    );
    ok(
        as_postgres("pg_ctl")
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(dir.path().join("pg.log"))
            .arg("-w")
            .arg("-o")
            .arg(format!(
                "-c listen_addresses=127.0.0.1 -p {pg_port} -k {} -c fsync=off",
                dir.path().display()
            ))
            .arg("start"),
        "pg_ctl start",
    );
    let config = dir.path().join("buildgrid-exec.yml");
    std::fs::write(&config, edit(&yaml, dir.path())).unwrap();
    let mut bg = BuildGridExec {
        bgd: None,
        port: free_port(),
        pg_port,
        venv,
        dir,
        config,
    };
    ok(
        as_postgres("createdb").args([
            "-h",
            "127.0.0.1",
            "-p",
            &pg_port.to_string(),
            "-U",
            "bgd",
            "bgd",
        ]),
        "createdb",
    );
    ok(
        Command::new(bg.venv.join("bin/bgd"))
            .args(["migrate", "apply"])
            .arg(format!("postgresql://bgd@127.0.0.1:{pg_port}/bgd")),
        "bgd migrate apply",
    );
    bg.start();
    bg
}

impl BuildGridExec {
    /// Starts `bgd server` with `config` on this server's ports and waits until it
    /// listens.
    fn start(&mut self) {
        let child = spawn_bgd(
            &self.venv.join("bin/bgd"),
            &self.config,
            self.dir.path(),
            &[("BG_PORT", self.port), ("PG_PORT", self.pg_port)],
        );
        self.bgd = Some(child);
    }

    /// Kills BuildGrid (its database stays): a REAPI service that goes away.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.bgd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts BuildGrid again on the same port and database after [`kill`](Self::kill).
    pub fn restart(&mut self) {
        self.kill();
        self.start();
    }

    /// What REAPI clients dial.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// BuildGrid's own client (`bgd …`) from its venv.
    pub fn bgd(&self) -> Command {
        Command::new(self.venv.join("bin/bgd"))
    }

    /// The server's log so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("bgd.log")).unwrap_or_default()
    }
}

impl Drop for BuildGridExec {
    fn drop(&mut self) {
        if let Some(mut c) = self.bgd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = as_postgres("pg_ctl")
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}
