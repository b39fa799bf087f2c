//! A remote tier asked through this machine's farmd agent when one answers: the
//! agent keeps warm connections to the remote across compiles and takes writes in
//! the background, so a compile neither connects to the remote nor waits for its
//! writes. Without an agent, or when it fails, is slow, refuses, or is too old to
//! know these requests, the tier asks the remote itself as before
//! ([`RemoteTier`]): nothing gets worse.
//!
//! The agent is trusted no more than the remote: its objects are checked here exactly
//! as the remote's own (kind, key, checksum). The machine's breaker for the remote
//! (the file under the cache directory) is checked before the agent is asked and is
//! tripped by a failure the agent reports, so a dead remote costs one failure either
//! way, and the compiles after it skip the remote without asking anyone.
//!
//! Depend mode uses this too: it asks the agent for nothing but the same remote tiers
//! it would ask itself (never the farm's cache or peers), and runs nothing.

use std::cell::{Cell, OnceCell, RefCell};
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use crate::agent_client::AgentClient;
use crate::protocol::{AgentRequest, AgentResponse};
use crate::stats::Outcome;
use crate::store::remote::{default_region, RemoteSpec, RemoteTier, S3Keys, Scheme};
use crate::store::{CacheError, CacheKey, EntryKind, PutReport, Tier};

/// What the agent may take past a remote call's own limit to answer (it applies the
/// limit itself; this covers a busy machine).
const GRACE: Duration = Duration::from_millis(500);
/// A write is queued by the agent and answered at once.
const QUEUE_WAIT: Duration = Duration::from_secs(1);

/// The compile's one connection to the agent for its remote tiers (apart from the
/// farm's: a request an older agent does not know closes the connection it came on).
pub(crate) struct AgentLink<'a> {
    socket: Option<&'a Path>,
    client: RefCell<Option<AgentClient>>,
    tried: Cell<bool>,
    counts: Rc<RefCell<Vec<Outcome>>>,
}

impl<'a> AgentLink<'a> {
    pub fn new(socket: Option<&'a Path>, counts: Rc<RefCell<Vec<Outcome>>>) -> AgentLink<'a> {
        AgentLink {
            socket,
            client: RefCell::new(None),
            tried: Cell::new(false),
            counts,
        }
    }

    /// One request, answered within `wait`; `None` when there is no agent, or it
    /// failed (then counted once and left alone for the rest of the compile).
    fn call(&self, req: &AgentRequest, wait: Duration) -> Option<AgentResponse> {
        if !self.tried.replace(true) {
            if let Some(path) = self.socket {
                match AgentClient::connect(path) {
                    Ok(c) => *self.client.borrow_mut() = Some(c),
                    Err(e) => tracing::debug!(socket = %path.display(), error = %e, "no agent"),
                }
            }
        }
        let r = self.client.borrow_mut().as_mut()?.call_within(req, wait);
        match r {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::info!(error = %e, "agent failed a remote request: asking the remote directly");
                self.fail();
                None
            }
        }
    }

    fn fail(&self) {
        if self.client.borrow_mut().take().is_some() {
            self.counts
                .borrow_mut()
                .push(Outcome::Fallback("agent_remote".into()));
        }
    }

    fn count(&self, o: Outcome) {
        self.counts.borrow_mut().push(o);
    }
}

/// The spec as the agent gets it: `None` when only this process may ask the remote.
/// The agent never uses anything of its own, so the credentials a remote needs must
/// be in the spec: the GitHub Actions cache (the runner's environment) stays here,
/// and S3 goes to the agent only with keys from this process's environment (with the
/// region and endpoint resolved here, as this process's client would).
pub(crate) fn spec_for_agent(spec: &RemoteSpec) -> Option<RemoteSpec> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    match spec.scheme {
        Scheme::Gha => None,
        Scheme::S3 => {
            let mut s = spec.clone();
            s.s3_keys = Some(S3Keys {
                access_key_id: var("AWS_ACCESS_KEY_ID")?,
                secret_access_key: var("AWS_SECRET_ACCESS_KEY")?,
                session_token: var("AWS_SESSION_TOKEN"),
            });
            s.region = Some(s.region.unwrap_or_else(default_region));
            if s.s3_endpoint.is_none() {
                s.s3_endpoint = var("AWS_ENDPOINT_URL").or_else(|| var("AWS_ENDPOINT"));
            }
            Some(s)
        }
        // The credential read here (this process's files and environment), resolved.
        Scheme::Reapi => {
            let mut s = spec.clone();
            if let Some(r) = s.reapi.as_mut() {
                if let Some(a) = &r.auth {
                    let (header, value) = a.resolve().ok()?;
                    r.auth = Some(crate::reapi::AuthSource::Resolved { header, value });
                }
            }
            Some(s)
        }
        _ => Some(spec.clone()),
    }
}

/// One remote tier: through the agent when it can, else directly.
pub(crate) struct AgentRemote<'a> {
    direct: RemoteTier,
    /// The spec the agent gets; `None`: asked directly only. Made on first use, after
    /// a local miss (the hit path makes nothing here).
    wire: OnceCell<Option<Box<RemoteSpec>>>,
    link: &'a AgentLink<'a>,
    /// The agent will not ask this remote: directly for the rest of the compile.
    direct_only: Cell<bool>,
}

/// How one request through the agent ended.
enum Via<T> {
    Done(Result<T, CacheError>),
    /// Ask the remote directly.
    Direct,
}

impl<'a> AgentRemote<'a> {
    pub fn new(direct: RemoteTier, link: &'a AgentLink<'a>) -> AgentRemote<'a> {
        AgentRemote {
            direct,
            wire: OnceCell::new(),
            link,
            direct_only: Cell::new(false),
        }
    }

    /// Whether the agent may be asked for this remote now.
    fn wire(&self) -> Option<&RemoteSpec> {
        if self.direct_only.get() {
            return None;
        }
        self.wire
            .get_or_init(|| {
                self.link
                    .socket
                    .and_then(|_| spec_for_agent(self.direct.spec()))
                    .map(Box::new)
            })
            .as_deref()
    }

    /// Asks the agent; `make` builds the request from the spec.
    fn via<T>(
        &self,
        write: bool,
        wait: Duration,
        make: impl FnOnce(Box<RemoteSpec>) -> AgentRequest,
        take: impl FnOnce(AgentResponse) -> Option<Result<T, CacheError>>,
    ) -> Via<T> {
        let Some(wire) = self.wire() else {
            return Via::Direct;
        };
        // The machine's breaker first, as the direct path does: a skipped remote
        // costs one stat, and no agent round trip.
        if let Err(e) = self.direct.check_skip(write) {
            return Via::Done(Err(e));
        }
        let Some(resp) = self.link.call(&make(Box::new(wire.clone())), wait) else {
            return Via::Direct;
        };
        match resp {
            AgentResponse::RemoteFailed(why) => {
                let what = if write { "write" } else { "read" };
                Via::Done(Err(self.direct.record_failure(
                    &format!("{what} through farmd"),
                    write,
                    &why,
                )))
            }
            AgentResponse::Local(reason) => {
                tracing::debug!(remote = %self.direct.spec().url, %reason, "agent does not ask this remote");
                self.direct_only.set(true);
                Via::Direct
            }
            other => match take(other) {
                Some(r) => {
                    if r.is_ok() {
                        self.direct.record_success();
                    }
                    Via::Done(r)
                }
                None => {
                    // Off protocol: the agent is left alone (counted once).
                    self.link.fail();
                    Via::Direct
                }
            },
        }
    }

    fn read_wait(&self) -> Duration {
        self.direct.call_limit() + GRACE
    }
}

impl Tier for AgentRemote<'_> {
    fn name(&self) -> &str {
        self.direct.name()
    }

    fn writable(&self) -> bool {
        self.direct.writable()
    }

    fn budget(&self) -> Option<Duration> {
        self.direct.budget()
    }

    fn over_budget(&self, spent: Duration) -> CacheError {
        self.direct.over_budget(spent)
    }

    fn get(&self, kind: EntryKind, key: &CacheKey) -> Result<Option<Vec<u8>>, CacheError> {
        let r = self.via(
            false,
            self.read_wait(),
            |spec| AgentRequest::RemoteGet {
                spec,
                kind,
                key: key.0,
            },
            |resp| match resp {
                AgentResponse::RemoteObject(Some(data)) => Some(
                    self.direct
                        .verify_stored(kind, key, data.into_vec())
                        .map(Some),
                ),
                AgentResponse::RemoteObject(None) => Some(Ok(None)),
                _ => None,
            },
        );
        match r {
            Via::Done(r) => r,
            Via::Direct => self.direct.get(kind, key),
        }
    }

    fn have(&self, kind: EntryKind, key: &CacheKey) -> Result<bool, CacheError> {
        let r = self.via(
            false,
            self.read_wait(),
            |spec| AgentRequest::RemoteHave {
                spec,
                kind,
                key: key.0,
            },
            |resp| match resp {
                AgentResponse::RemoteHas(has) => Some(Ok(has)),
                _ => None,
            },
        );
        match r {
            Via::Done(r) => r,
            Via::Direct => self.direct.have(kind, key),
        }
    }

    /// Queued by the agent (answered at once); a write its queue had no room for is
    /// dropped and counted, never waited for.
    fn put(&self, kind: EntryKind, key: &CacheKey, data: &[u8]) -> Result<PutReport, CacheError> {
        if !self.writable() {
            return Ok(PutReport::default());
        }
        if self.wire().is_some() {
            let body = self.direct.stored_form(kind, key, data)?;
            let r = self.via(
                true,
                QUEUE_WAIT,
                |spec| AgentRequest::RemotePut {
                    spec,
                    kind,
                    key: key.0,
                    body,
                },
                |resp| match resp {
                    AgentResponse::RemoteQueued(queued) => {
                        if !queued {
                            self.link.count(Outcome::RemoteWriteDropped);
                        }
                        Some(Ok(PutReport::default()))
                    }
                    _ => None,
                },
            );
            if let Via::Done(r) = r {
                return r;
            }
        }
        self.direct.put(kind, key, data)
    }

    fn remove(&self, kind: EntryKind, key: &CacheKey) -> Result<(), CacheError> {
        self.direct.remove(kind, key)
    }
}
