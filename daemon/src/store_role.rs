//! The store role: this node's share of the farm's cache, as other nodes (and this
//! node's own agent, for keys whose home it is) read and write it. Entries by key
//! (get, have, put: results checked, manifests merged) and the blobs of tree jobs.

use farm::key::manifest;
use farm::protocol::{Blob, Item, PeerResponse};
use farm::store::{CacheKey, EntryKind, Tier};

use crate::node::Node;

/// A peer's `Get`: the entry, or none.
pub fn get(node: &Node, kind: EntryKind, key: [u8; 32]) -> PeerResponse {
    // Blobs are not cache items: they are asked for and sent with tree jobs only.
    if kind == EntryKind::Blob {
        return PeerResponse::Entry(None);
    }
    let m = crate::metrics::get();
    match node.store.get(kind, &CacheKey(key)) {
        Ok(v) => {
            match &v {
                Some(data) => {
                    m.count_store("get", "hit");
                    m.count_store_bytes("out", data.len());
                }
                None => m.count_store("get", "miss"),
            }
            PeerResponse::Entry(v.map(serde_bytes::ByteBuf::from))
        }
        Err(e) => {
            m.count_store("get", "error");
            tracing::warn!(error = %e, "store read failed");
            PeerResponse::Entry(None)
        }
    }
}

/// A peer's `Have`: whether the entry is stored.
pub fn have(node: &Node, kind: EntryKind, key: [u8; 32]) -> PeerResponse {
    if kind == EntryKind::Blob {
        return PeerResponse::Have(false);
    }
    PeerResponse::Have(node.store.have(kind, &CacheKey(key)).unwrap_or(false))
}

/// A peer's `Put`.
pub fn put(node: &Node, item: Item) -> PeerResponse {
    let m = crate::metrics::get();
    let size = item.data.len();
    match store_item(node, item) {
        Ok(()) => {
            m.count_store("put", "stored");
            m.count_store_bytes("in", size);
            PeerResponse::Stored
        }
        Err(why) => {
            m.count_store("put", "refused");
            PeerResponse::Refused(format!("{}: {why}", node.name))
        }
    }
}

/// A peer's `HaveBlobs`: those of `digests` this node lacks.
pub fn have_blobs(node: &Node, digests: &[[u8; 32]]) -> PeerResponse {
    PeerResponse::MissingBlobs(missing_blobs(node, digests))
}

/// Those of `digests` neither the blob store nor this node's own toolchains hold.
pub fn missing_blobs(node: &Node, digests: &[[u8; 32]]) -> Vec<[u8; 32]> {
    let mut m = node.blobs.missing(digests);
    m.retain(|d| !node.toolchains.has_file(d));
    m
}

/// A peer's `PutBlobs`.
/// Blobs come before the job that reads them: a full disk refuses them as it would
/// the job (logged and counted as the worker's refusal), and so does a failed write.
pub fn put_blobs(node: &Node, blobs: &[Blob]) -> PeerResponse {
    use crate::worker::{refuse, Refusal};
    if let Err(why) = node.disk_room() {
        return refuse(node, Refusal::Disk, why);
    }
    match node.blobs.put(blobs) {
        Ok(()) => PeerResponse::Stored,
        // A blob that is not what its digest says is the sender's fault, not the disk's.
        Err(e @ farm::store::CacheError::Mismatch { .. }) => refuse(
            node,
            Refusal::Request,
            format!("{}: refused blobs: {e}", node.name),
        ),
        Err(e) => refuse(
            node,
            Refusal::Disk,
            format!("{}: cannot store blobs: {e}", node.name),
        ),
    }
}

/// Stores an entry for the farm's cache. Results must decode as result entries;
/// manifests are merged with the one stored (newest entries first, capped), so every
/// machine's recordings of one source are kept.
pub fn store_item(node: &Node, item: Item) -> Result<(), String> {
    let key = CacheKey(item.key);
    match item.kind {
        // Blobs travel with the tree jobs that read them, never as cache items.
        EntryKind::Blob => return Err("a blob is not a cache item".into()),
        EntryKind::Result => {
            if farm::key::ResultEntry::decode(&item.data).is_none() {
                return Err("not a result entry".into());
            }
            node.store
                .put(EntryKind::Result, &key, &item.data)
                .map_err(|e| format!("store: {e}"))?;
        }
        EntryKind::Manifest => {
            // One writer at a time per node: merges must not lose entries.
            let _guard = node.manifest_lock.lock().unwrap();
            let stored = node.store.get(EntryKind::Manifest, &key).ok().flatten();
            let Some(merged) = manifest::merge(stored.as_deref(), &item.data) else {
                return Err("not a manifest".into());
            };
            node.store
                .put(EntryKind::Manifest, &key, &merged)
                .map_err(|e| format!("store: {e}"))?;
        }
    }
    Ok(())
}
