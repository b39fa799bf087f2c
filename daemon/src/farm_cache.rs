//! The farm's cache from this node's side: every key has one home (rendezvous
//! hashing over this node and its live peers); the agent looks entries up there and
//! publishes them there.

use std::time::{Duration, Instant};

use farm::protocol::{EntryKind, Item, PeerRequest, PeerResponse, MAX_CONTROL_FRAME, MAX_FRAME};
use farm::store::{CacheKey, Tier};

use crate::exec::peer::request;
use crate::node::Node;
use crate::store_role::store_item;

/// Remote cache lookups give up after this (plus the peer's RTT).
const LOOKUP_WAIT: Duration = Duration::from_millis(1500);

/// The node that holds `key` in the farm's cache: rendezvous hashing over this
/// node and its live peers. `None` means this node.
fn home_of(node: &Node, key: &[u8; 32]) -> Option<(String, quinn::Connection)> {
    let score = |name: &str| {
        let mut h = blake3::Hasher::new();
        h.update(key);
        h.update(name.as_bytes());
        u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().unwrap())
    };
    let now = Instant::now();
    let mut best = score(&node.name);
    let mut home = None;
    for p in node.peers.lock().unwrap().values() {
        if !p.live(now) {
            continue;
        }
        let s = score(&p.node);
        if s > best {
            best = s;
            home = p.conn.clone().map(|c| (p.node.clone(), c));
        }
    }
    home
}

/// The entry under `key` from its home (this node or a peer), and who that is.
pub async fn lookup(node: &Node, kind: EntryKind, key: &[u8; 32]) -> Option<(Vec<u8>, String)> {
    match home_of(node, key) {
        None => match node.store.get(kind, &CacheKey(*key)) {
            Ok(Some(e)) => Some((e, node.name.clone())),
            _ => None,
        },
        Some((name, conn)) => {
            let wait = LOOKUP_WAIT + conn.rtt() * 2;
            let req = PeerRequest::Get { kind, key: *key };
            match request(&conn, &req, MAX_FRAME, wait).await {
                Ok(PeerResponse::Entry(Some(e))) => Some((e.into_vec(), name)),
                Ok(_) => None,
                Err(e) => {
                    tracing::info!(peer = %name, error = %e, "remote cache lookup failed");
                    None
                }
            }
        }
    }
}

/// Stores an entry at its key's home. A result the home already has is not sent
/// again; a manifest is always sent (the home merges it).
pub async fn publish(node: &Node, item: Item) {
    match home_of(node, &item.key) {
        None => {
            if let Err(e) = store_item(node, item) {
                tracing::warn!(error = %e, "store write failed");
            }
        }
        Some((name, conn)) => {
            if item.kind == EntryKind::Result {
                let have = PeerRequest::Have {
                    kind: item.kind,
                    key: item.key,
                };
                match request(&conn, &have, MAX_CONTROL_FRAME, Duration::from_secs(5)).await {
                    Ok(PeerResponse::Have(true)) => return,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::info!(peer = %name, error = %e, "publish: have failed");
                        return;
                    }
                }
            }
            let put = PeerRequest::Put(item);
            if let Err(e) = request(&conn, &put, MAX_CONTROL_FRAME, Duration::from_secs(30)).await {
                tracing::info!(peer = %name, error = %e, "publish failed");
            }
        }
    }
}
