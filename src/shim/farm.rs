//! This machine's farmd, as the shim sees it: a cache tier (the farm's cache, through
//! the agent) and the door to the farm's executors (placement, peers, warm
//! compilers). Connected on first use after a local miss; when no farmd answers, farm
//! is a local cache, silently. A failed agent is left alone for the rest of the
//! compile, and every failure is counted once, as the flow's fallback.

use std::cell::{Cell, RefCell};
use std::path::Path;
use std::rc::Rc;

use crate::agent_client::AgentClient;
use crate::protocol::{AgentRequest, AgentResponse, Item};
use crate::stats::Outcome;
use crate::store::{CacheError, CacheKey, EntryKind, PutReport, Tier};

pub(crate) struct Farm<'a> {
    socket: Option<&'a Path>,
    agent: RefCell<Option<AgentClient>>,
    /// A connect was tried (or the agent failed): no second try in this compile.
    tried: Cell<bool>,
    /// The agent counts this compile against home's slots until told it is done.
    reserved: Cell<bool>,
    /// Counts made inside tier calls: the compile's own list, which goes into its
    /// tally before the counts are written (also when the shim becomes the compiler).
    counts: Rc<RefCell<Vec<Outcome>>>,
}

impl<'a> Farm<'a> {
    pub fn new(socket: Option<&'a Path>, counts: Rc<RefCell<Vec<Outcome>>>) -> Farm<'a> {
        Farm {
            socket,
            agent: RefCell::new(None),
            tried: Cell::new(false),
            reserved: Cell::new(false),
            counts,
        }
    }

    /// Whether an agent answers (connecting on first use).
    pub fn up(&self) -> bool {
        if !self.tried.replace(true) {
            if let Some(path) = self.socket {
                match AgentClient::connect(path) {
                    Ok(a) => *self.agent.borrow_mut() = Some(a),
                    Err(e) => {
                        // No farmd here: farm is a local cache, silently.
                        tracing::debug!(socket = %path.display(), error = %e, "no agent");
                    }
                }
            }
        }
        self.agent.borrow().is_some()
    }

    pub fn count(&self, o: Outcome) {
        self.counts.borrow_mut().push(o);
    }

    /// The agent now counts this compile against home's slots (or not).
    pub fn set_reserved(&self, reserved: bool) {
        self.reserved.set(reserved);
    }

    /// The agent answered something its protocol does not allow here: left alone.
    pub fn off_protocol(&self) {
        self.count(Outcome::Fallback("agent_protocol".into()));
        *self.agent.borrow_mut() = None;
    }

    fn failed(&self, e: &dyn std::fmt::Display) {
        tracing::warn!(error = %e, "agent failed");
        self.count(Outcome::Fallback("agent_error".into()));
        *self.agent.borrow_mut() = None;
    }

    /// One request to the agent; `None` when there is none or the call failed
    /// (counted; the agent is then left alone).
    pub fn ask(&self, req: &AgentRequest) -> Option<AgentResponse> {
        if !self.up() {
            return None;
        }
        let r = self.agent.borrow_mut().as_mut()?.call(req);
        match r {
            Ok(r) => Some(r),
            Err(e) => {
                self.failed(&e);
                None
            }
        }
    }

    /// Publishes what the compile stored (if anything) and releases home's slot.
    pub fn done(&self, items: Vec<Item>, ms: u64) {
        let mut agent = self.agent.borrow_mut();
        let Some(a) = agent.as_mut() else { return };
        let reserved = self.reserved.get();
        let local_ms = if reserved { ms } else { 0 };
        if !items.is_empty() {
            a.tell(&AgentRequest::Publish { items, local_ms });
        } else if reserved {
            a.tell(&AgentRequest::LocalDone { local_ms });
        }
    }
}

impl Tier for Farm<'_> {
    fn name(&self) -> &str {
        "farm"
    }

    /// The farm's cache. `Err` when the agent failed (the farm is then left alone).
    fn get(&self, kind: EntryKind, key: &CacheKey) -> Result<Option<Vec<u8>>, CacheError> {
        let unavailable = |detail: &str| CacheError::Unavailable {
            tier: "farm".into(),
            detail: detail.into(),
        };
        match self.ask(&AgentRequest::Fetch { kind, key: key.0 }) {
            Some(AgentResponse::Cached { entry, peer }) => {
                tracing::debug!(peer, ?kind, "farm cache entry");
                Ok(Some(entry))
            }
            Some(AgentResponse::Missing) => Ok(None),
            Some(_) => {
                self.off_protocol();
                Err(unavailable("answered off protocol"))
            }
            // No agent (silently a local cache), or it just failed (counted, and left
            // alone from now on).
            None => Ok(None),
        }
    }

    /// Entries reach the farm's cache in one publication when the compile is done
    /// ([`Farm::done`]), with home's slot released in the same message.
    fn put(&self, _: EntryKind, _: &CacheKey, _: &[u8]) -> Result<PutReport, CacheError> {
        Ok(PutReport::default())
    }

    fn remove(&self, _: EntryKind, _: &CacheKey) -> Result<(), CacheError> {
        Ok(())
    }
}
