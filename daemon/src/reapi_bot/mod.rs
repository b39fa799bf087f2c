//! farmd as a bot of a REAPI service's Execute (the Remote Workers API,
//! `google.devtools.remoteworkers.v1test2.Bots`, as BuildGrid serves it): it opens a
//! bot session advertising its job slots and device properties, long-polls
//! `UpdateBotSession` (which is also the heartbeat of the leases it holds), runs each
//! ACTIVE lease's Action in the job sandbox ([`run`]) and completes the lease with an
//! ActionResult; the server then answers the Execute call and writes the Action Cache.
//!
//! Off unless `reapi_bot` is configured. The REAPI service never stalls farmd: every
//! call has a deadline, a service that is down is retried with a growing pause, and
//! a lost session is opened again (the server re-queues what the old one held).

mod cas;
mod input;
pub mod proto;
mod rootfs;
mod run;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bazel_remote_apis::google::rpc::Status;
use tokio::sync::mpsc;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::config::ReapiBotConfig;
use crate::node::Node;
use proto::{
    BotSession, BotStatus, BotsClient, CreateBotSessionRequest, Device, Lease, LeaseState,
    Property, UpdateBotSessionRequest, Worker,
};

/// The long poll: BuildGrid waits 80 % of the call's deadline for work (and assigns
/// nothing under 3 s), and a session must call again within its keep-alive (30 s by
/// default), so 20 s is both.
const POLL: Duration = Duration::from_secs(20);
/// The shortest time between two polls that brought nothing new.
const MIN_POLL: Duration = Duration::from_millis(200);
/// Deadline of CreateBotSession.
const CREATE: Duration = Duration::from_secs(20);
/// After this long without a successful update the session is opened anew.
const SESSION_LOST: Duration = Duration::from_secs(30);

/// Leases started and not yet reported to the server: a stopping farmd waits for
/// them (within its stop deadline) so that their results are not lost.
pub static UNREPORTED: AtomicU32 = AtomicU32::new(0);

const ACTION_RESULT: &str = "build.bazel.remote.execution.v2.ActionResult";

/// Adds `authorization: Bearer <token>` to every call when a token is configured.
#[derive(Clone)]
pub struct Auth(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// The channel every call of the bot goes through.
pub type Svc = tonic::service::interceptor::InterceptedService<Channel, Auth>;

fn auth(cfg: &ReapiBotConfig) -> Result<Auth, String> {
    let Some(file) = &cfg.auth_token_file else {
        return Ok(Auth(None));
    };
    let token = std::fs::read_to_string(file)
        .map_err(|e| format!("reapi_bot auth_token_file {}: {e}", file.display()))?;
    let v = format!("Bearer {}", token.trim()).parse().map_err(|_| {
        format!(
            "reapi_bot auth_token_file {}: not a header value",
            file.display()
        )
    })?;
    Ok(Auth(Some(v)))
}

/// The channel to the REAPI service (lazy: nothing is dialled until the first call).
fn channel(cfg: &ReapiBotConfig) -> Result<Svc, String> {
    let mut ep = Endpoint::from_shared(cfg.url.clone())
        .map_err(|e| format!("reapi_bot endpoint {:?}: {e}", cfg.endpoint))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(15))
        .keep_alive_timeout(Duration::from_secs(10));
    if cfg.url.starts_with("https://") {
        ep = ep
            .tls_config(ClientTlsConfig::new().with_webpki_roots())
            .map_err(|e| format!("reapi_bot endpoint {:?}: TLS: {e}", cfg.endpoint))?;
    }
    Ok(Svc::new(ep.connect_lazy(), auth(cfg)?))
}

/// Runs the bot for as long as farmd runs.
pub async fn serve(node: Arc<Node>) {
    let Some(cfg) = node.cfg.reapi_bot.clone() else {
        return;
    };
    let channel = match channel(&cfg) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "REAPI bot not started");
            return;
        }
    };
    let bot_id = cfg.bot_id.clone().unwrap_or_else(|| node.name.clone());
    let bot = Bot {
        bots: BotsClient::new(channel.clone()),
        cas: cas::Cas::new(channel, &cfg.instance),
        worker: worker(&cfg, node.cfg.slots),
        bot_id,
        instance: cfg.instance.clone(),
        node,
    };
    let mut pause = Duration::from_millis(500);
    let mut logged = false;
    while !bot.node.stopping.load(Ordering::Relaxed) {
        match bot.create().await {
            Ok(session) => {
                tracing::info!(endpoint = %cfg.endpoint, session = %session.name, bot_id = %bot.bot_id, "REAPI bot session open");
                logged = false;
                pause = Duration::from_millis(500);
                bot.run_session(session).await;
                // A server that drops each new session at once is not hammered.
                tokio::time::sleep(pause).await;
            }
            Err(e) => {
                // Once per outage, not once per retry.
                if !logged {
                    tracing::warn!(endpoint = %cfg.endpoint, error = %e.message(), "REAPI bot: cannot open a session; retrying");
                    logged = true;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// What the bot advertises: its slots as capacity, the properties on its one device.
fn worker(cfg: &ReapiBotConfig, slots: u32) -> Worker {
    let props = cfg
        .properties
        .iter()
        .map(|(k, v)| Property {
            key: k.clone(),
            value: v.clone(),
        })
        .collect::<Vec<_>>();
    Worker {
        devices: vec![Device {
            handle: "farmd".into(),
            properties: props.clone(),
        }],
        properties: props,
        configs: vec![Property {
            key: "capacity".into(),
            value: slots.to_string(),
        }],
    }
}

struct Bot {
    bots: BotsClient,
    cas: cas::Cas,
    worker: Worker,
    bot_id: String,
    instance: String,
    node: Arc<Node>,
}

/// A lease this bot holds: its task while it runs, its outcome once done.
struct Held {
    lease: Lease,
    task: tokio::task::JoinHandle<()>,
    done: Option<(Status, Option<bazel_remote_apis::google::protobuf::Any>)>,
}

type Outcome = (
    String,
    Status,
    Option<bazel_remote_apis::google::protobuf::Any>,
);

impl Bot {
    async fn create(&self) -> Result<BotSession, tonic::Status> {
        let mut req = tonic::Request::new(CreateBotSessionRequest {
            parent: self.instance.clone(),
            bot_session: Some(BotSession {
                bot_id: self.bot_id.clone(),
                status: BotStatus::Ok as i32,
                worker: Some(self.worker.clone()),
                ..Default::default()
            }),
        });
        req.set_timeout(CREATE);
        self.bots.clone().create(req).await
    }

    /// Holds one session until it is lost (or farmd stops): reports finished leases
    /// at once, starts new ones, heartbeats the rest.
    async fn run_session(&self, mut session: BotSession) {
        let (tx, mut rx) = mpsc::unbounded_channel::<Outcome>();
        let mut held: HashMap<String, Held> = HashMap::new();
        let mut last_ok = Instant::now();
        let mut pause = Duration::from_millis(200);
        self.start_leases(&session, &mut held, &tx);
        loop {
            while let Ok(o) = rx.try_recv() {
                record(&mut held, o);
            }
            let stopping = self.node.stopping.load(Ordering::Relaxed);
            if stopping && held.is_empty() {
                return;
            }
            let mut out = session.clone();
            out.status = if stopping {
                BotStatus::BotTerminating
            } else {
                BotStatus::Ok
            } as i32;
            out.worker = Some(self.worker.clone());
            let mut reported = Vec::new();
            out.leases = held
                .iter()
                .map(|(id, h)| {
                    let mut l = h.lease.clone();
                    // The server knows what it assigned: no need to send it back.
                    l.payload = None;
                    if let Some((status, result)) = &h.done {
                        reported.push(id.clone());
                        l.state = LeaseState::Completed as i32;
                        l.status = Some(status.clone());
                        l.result = result.clone();
                    }
                    l
                })
                .collect();
            let mut req = tonic::Request::new(UpdateBotSessionRequest {
                name: session.name.clone(),
                bot_session: Some(out),
                update_mask: None,
            });
            // Short polls while stopping (nothing new is wanted).
            req.set_timeout(if stopping {
                Duration::from_secs(5)
            } else {
                POLL
            });
            let mut bots = self.bots.clone();
            let polled = Instant::now();
            let resp = tokio::select! {
                r = bots.update(req) => r,
                // A lease finished: drop the poll and report it now (the server
                // re-sends whatever it assigned in a poll the bot did not read).
                Some(o) = rx.recv() => {
                    record(&mut held, o);
                    continue;
                }
            };
            match resp {
                Ok(s) => {
                    // A server that answers at once with nothing new (no long poll)
                    // is not polled in a tight loop.
                    let nothing_new =
                        reported.is_empty() && s.leases.iter().all(|l| held.contains_key(&l.id));
                    if nothing_new && polled.elapsed() < MIN_POLL {
                        tokio::time::sleep(MIN_POLL).await;
                    }
                    last_ok = Instant::now();
                    pause = Duration::from_millis(200);
                    for id in reported {
                        if held.remove(&id).is_some() {
                            UNREPORTED.fetch_sub(1, Ordering::Relaxed);
                        }
                    }
                    let listed: HashSet<&str> = s.leases.iter().map(|l| l.id.as_str()).collect();
                    // A running lease the server no longer lists was cancelled or
                    // given to another bot: stop it (the sandbox dies with the task).
                    held.retain(|id, h| {
                        let keep = listed.contains(id.as_str()) || h.done.is_some();
                        if !keep {
                            tracing::info!(lease = %id, "REAPI lease withdrawn by the server");
                            h.task.abort();
                            UNREPORTED.fetch_sub(1, Ordering::Relaxed);
                        }
                        keep
                    });
                    self.start_leases(&s, &mut held, &tx);
                    session = s;
                }
                Err(e) => {
                    use tonic::Code;
                    match e.code() {
                        Code::DeadlineExceeded => {}
                        Code::NotFound
                        | Code::InvalidArgument
                        | Code::FailedPrecondition
                        | Code::PermissionDenied
                        | Code::Unauthenticated
                        | Code::Aborted => {
                            tracing::warn!(error = %e.message(), code = ?e.code(), "REAPI bot session lost; opening a new one");
                            abort_all(held);
                            return;
                        }
                        _ => {
                            tokio::time::sleep(pause).await;
                            pause = (pause * 2).min(Duration::from_secs(5));
                        }
                    }
                    if last_ok.elapsed() > SESSION_LOST {
                        tracing::warn!(error = %e.message(), "REAPI service unreachable; opening a new session when it is back");
                        abort_all(held);
                        return;
                    }
                }
            }
        }
    }

    /// Starts a task for every ACTIVE lease of `s` not yet held.
    fn start_leases(
        &self,
        s: &BotSession,
        held: &mut HashMap<String, Held>,
        tx: &mpsc::UnboundedSender<Outcome>,
    ) {
        for l in &s.leases {
            if l.state != LeaseState::Active as i32 || held.contains_key(&l.id) {
                continue;
            }
            let (node, cas, tx) = (self.node.clone(), self.cas.clone(), tx.clone());
            let (id, payload, bot_id) = (l.id.clone(), l.payload.clone(), self.bot_id.clone());
            tracing::info!(lease = %l.id, "REAPI lease started");
            UNREPORTED.fetch_add(1, Ordering::Relaxed);
            let task = tokio::spawn(async move {
                let t0 = Instant::now();
                let r = if node.stopping.load(Ordering::Relaxed) {
                    // UNAVAILABLE: the server gives the job to another bot.
                    Err(run::Failure {
                        code: run::code::UNAVAILABLE,
                        message: format!("farmd {} is stopping", node.name),
                    })
                } else {
                    run::run_lease(&node, &cas, &bot_id, payload.as_ref()).await
                };
                let ms = t0.elapsed().as_millis() as u64;
                let (status, result) = match r {
                    Ok(ar) => {
                        crate::metrics::get().count_reapi_lease("done");
                        tracing::info!(lease = %id, exit = ar.exit_code, ms, "REAPI lease done");
                        let any = proto::pack(&ar, ACTION_RESULT);
                        (ok(), Some(any))
                    }
                    Err(f) => {
                        crate::metrics::get().count_reapi_lease(run::code::name(f.code));
                        tracing::warn!(lease = %id, code = f.code, reason = %f.message, ms, "REAPI lease failed");
                        let st = Status {
                            code: f.code,
                            message: f.message,
                            details: vec![],
                        };
                        (st, None)
                    }
                };
                let _ = tx.send((id, status, result));
            });
            held.insert(
                l.id.clone(),
                Held {
                    lease: l.clone(),
                    task,
                    done: None,
                },
            );
        }
    }
}

fn ok() -> Status {
    Status {
        code: run::code::OK,
        message: String::new(),
        details: vec![],
    }
}

fn record(held: &mut HashMap<String, Held>, (id, status, result): Outcome) {
    if let Some(h) = held.get_mut(&id) {
        h.done = Some((status, result));
    }
}

fn abort_all(held: HashMap<String, Held>) {
    for (_, h) in held {
        h.task.abort();
        UNREPORTED.fetch_sub(1, Ordering::Relaxed);
    }
}
