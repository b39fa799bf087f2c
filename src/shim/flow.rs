//! The one compile flow: key, look up through the tiers (local, then the farm's
//! cache), execute the miss (a peer, a warm compiler or home, see [`super::exec`]),
//! store it here and publish it to the farm. Modes supply keys, restores and records;
//! none has its own flow.

use super::agent_remote::{AgentLink, AgentRemote};
use super::farm::Farm;
use super::{Ctx, Restored};
use crate::lang::CompileRun;
use crate::protocol::Item;
use crate::stats::{Outcome, TierKind, TierMeasure};
use crate::store::remote::RemoteTier;
use crate::store::{CacheError, CacheKey, EntryKind, LocalStore, Tier, Tiered};

/// The local tier's position in a compile's [`Tiered`]; shared tiers (the remote
/// tiers, then the farm's cache) follow it in order.
pub(super) const LOCAL: usize = 0;

/// What a lookup in one tier found.
pub(super) enum Lookup {
    Hit,
    Miss,
    /// The compile already finished another way (it ran uncached, or another mode
    /// took it): its exit code.
    Done(i32),
}

/// A miss that ran: what to store, and home's share of its time.
pub(super) struct Ran {
    /// The result entry to store; `None` when nothing may be stored.
    pub payload: Option<Vec<u8>>,
    /// Milliseconds it kept home busy, for the agent's placement (0 when a peer ran it).
    pub local_ms: u64,
    /// A peer compiled it (its recording must not trust this compile's start time).
    pub remote: bool,
    /// When the compile started, ns since the epoch.
    pub started_ns: i128,
}

impl Ran {
    /// A compile that ran here: home's time, and what it left to store.
    pub fn home(run: &CompileRun, payload: Option<Vec<u8>>) -> Ran {
        Ran {
            payload,
            local_ms: run.elapsed.as_millis() as u64,
            remote: false,
            started_ns: run.started_ns,
        }
    }

    /// A compile a peer ran, for a key computed at `keyed_ns`.
    pub fn remote(payload: Vec<u8>, keyed_ns: i128) -> Ran {
        Ran {
            payload: Some(payload),
            local_ms: 0,
            remote: true,
            started_ns: keyed_ns,
        }
    }
}

/// What one mode supplies to the flow.
pub(super) trait Mode {
    /// Computes this compile's key. `Err`: it already ran another way (exit code).
    fn key(&mut self, ctx: &mut Ctx, tiers: &mut Tiered) -> Result<(), i32>;

    /// Looks the key up in tier `i` and restores a hit there, backfilling the tiers
    /// before it.
    fn lookup(&mut self, ctx: &mut Ctx, tiers: &mut Tiered, i: usize) -> Lookup;

    /// Checks before a miss is compiled or shipped. `Err`: it ran uncached.
    fn before_miss(&mut self, ctx: &mut Ctx) -> Result<(), i32> {
        let _ = ctx;
        Ok(())
    }

    /// After every tier missed: another way to look the compile up (direct mode's
    /// lookup by preprocessed text, with `base_dir`), and the tier that answered.
    /// `Miss` by default.
    fn fallback(&mut self, ctx: &mut Ctx, tiers: &mut Tiered) -> (Lookup, usize) {
        let _ = (ctx, tiers);
        (Lookup::Miss, LOCAL)
    }

    /// Whether the farm's cache takes part (looked up, published to).
    fn uses_farm(&self) -> bool {
        true
    }

    /// Whether the farm's peers may compile a miss.
    fn uses_peers(&self) -> bool {
        self.uses_farm()
    }

    /// Runs the miss through the executors. `Err`: the compile finished without a
    /// result to store (failed, or ran as the real compiler): its exit code.
    fn execute(&mut self, ctx: &mut Ctx, farm: &Farm) -> Result<Ran, i32>;

    /// Stores what the miss produced in the local tier; the items for the farm.
    fn store(&mut self, ctx: &mut Ctx, tiers: &mut Tiered, ran: &Ran) -> Vec<Item>;

    /// After a miss was stored, for `farm why`: the key class and what keyed the
    /// compile besides the base fields.
    fn why_content(&self, ctx: &Ctx) -> (&'static str, crate::why::Content);
}

/// Runs one compile through the cache in `mode`.
pub(super) fn run(ctx: &mut Ctx, mode: &mut dyn Mode) -> i32 {
    let local = LocalStore::new(&ctx.cfg.dir.value, ctx.cfg.max_size.value);
    // A mode without the farm's cache and peers never connects to the agent for
    // them (depend mode uses peers, never the farm's cache).
    let socket = ctx
        .cfg
        .agent
        .value
        .as_deref()
        .filter(|_| mode.uses_farm() || mode.uses_peers());
    let farm = Farm::new(socket, ctx.farm_counts.clone());
    // Local disk, then the remote tiers in the configured order (through the agent
    // when one answers, in every mode: it asks the same remotes; see agent_remote),
    // then the farm.
    let link = AgentLink::new(ctx.cfg.agent.value.as_deref(), ctx.farm_counts.clone());
    let remotes: Vec<AgentRemote> = ctx
        .cfg
        .remote_storage
        .value
        .iter()
        .map(|spec| AgentRemote::new(RemoteTier::new(spec.clone(), &ctx.cfg.dir.value), &link))
        .collect();
    let mut order: Vec<&dyn Tier> = Vec::with_capacity(2 + remotes.len());
    order.push(&local);
    order.extend(remotes.iter().map(|r| r as &dyn Tier));
    if mode.uses_farm() {
        ctx.farm_at = order.len();
        order.push(&farm);
    }
    let mut tiers = Tiered::new(order);
    let code = run_tiers(ctx, mode, &mut tiers, &farm);
    count_traffic(ctx, &tiers);
    ctx.take_farm_counts();
    code
}

fn run_tiers(ctx: &mut Ctx, mode: &mut dyn Mode, tiers: &mut Tiered, farm: &Farm) -> i32 {
    if let Err(code) = mode.key(ctx, tiers) {
        return code;
    }
    let looked = mode.lookup(ctx, tiers, LOCAL);
    count_lookup(ctx, tiers, farm, LOCAL, &looked);
    match looked {
        Lookup::Hit => return 0,
        Lookup::Done(code) => return code,
        Lookup::Miss => {}
    }
    if let Err(code) = mode.before_miss(ctx) {
        return code;
    }
    for i in 1..tiers.len() {
        if !tiers.usable(i) {
            continue;
        }
        let looked = mode.lookup(ctx, tiers, i);
        count_lookup(ctx, tiers, farm, i, &looked);
        match looked {
            Lookup::Hit => return 0,
            Lookup::Done(code) => return code,
            Lookup::Miss => {}
        }
    }
    match mode.fallback(ctx, tiers) {
        (Lookup::Hit, i) => {
            count_lookup(ctx, tiers, farm, i, &Lookup::Hit);
            return 0;
        }
        (Lookup::Done(code), _) => return code,
        (Lookup::Miss, _) => {}
    }
    let ran = match mode.execute(ctx, farm) {
        Ok(r) => r,
        Err(code) => {
            farm.done(Vec::new(), 0);
            return code;
        }
    };
    let items = mode.store(ctx, tiers, &ran);
    let (class, content) = mode.why_content(ctx);
    ctx.note_miss(class, content, !items.is_empty());
    store_remote(ctx, tiers, &items);
    if farm.up() && ctx.farm_at < tiers.len() {
        let published: usize = items.iter().map(|i| i.data.len()).sum();
        tiers.note_written(ctx.farm_at, published);
    }
    if mode.uses_farm() {
        farm.done(items, ran.local_ms);
    } else {
        farm.done(Vec::new(), ran.local_ms);
    }
    0
}

/// The kind of tier `i`, for its counters: the remote tiers are found by name among
/// the configured ones (a tier not configured there is not counted per kind).
fn tier_kind(ctx: &Ctx, tiers: &Tiered, i: usize) -> Option<TierKind> {
    if i == LOCAL {
        return Some(TierKind::Local);
    }
    if i == ctx.farm_at {
        return Some(TierKind::Farm);
    }
    let name = tiers.tier(i).name();
    let spec = ctx
        .cfg
        .remote_storage
        .value
        .iter()
        .find(|s| s.url == name)?;
    Some(TierKind::of_remote(spec.scheme))
}

/// Counts a lookup in tier `i`: a hit, or a miss that goes on to the next tier
/// (not the farm's when no farmd answers: there was no farm to ask).
fn count_lookup(ctx: &mut Ctx, tiers: &Tiered, farm: &Farm, i: usize, looked: &Lookup) {
    let measure = match looked {
        Lookup::Hit => TierMeasure::Hits,
        Lookup::Miss if i == ctx.farm_at && !farm.up() => return,
        Lookup::Miss => TierMeasure::Misses,
        Lookup::Done(_) => return,
    };
    if let Some(kind) = tier_kind(ctx, tiers, i) {
        ctx.tally.count(Outcome::Tier(kind, measure));
    }
}

/// Adds what each tier moved in this compile (bytes, failed calls) to its kind's
/// counters: counted in memory, written with the compile's other counts.
fn count_traffic(ctx: &mut Ctx, tiers: &Tiered) {
    for i in 0..tiers.len() {
        let moved = tiers.traffic(i);
        if moved == Default::default() {
            continue;
        }
        let Some(kind) = tier_kind(ctx, tiers, i) else {
            continue;
        };
        for (measure, n) in [
            (TierMeasure::BytesRead, moved.read),
            (TierMeasure::BytesWritten, moved.written),
            (TierMeasure::Errors, moved.errors),
        ] {
            if n > 0 {
                ctx.tally.add(Outcome::Tier(kind, measure), n);
            }
        }
    }
}

/// Counts a tier's error: the local disk's by kind, the farm's as its agent failing.
pub(super) fn count_error(ctx: &mut Ctx, tier: usize, e: &CacheError) {
    if tier == LOCAL {
        ctx.cache_error(e);
    } else if tier == ctx.farm_at {
        tracing::warn!(error = %e, "farm cache failed");
    } else if let CacheError::Skipped { .. } = e {
        ctx.tally.count(Outcome::RemoteSkipped);
    } else if let CacheError::Corrupt { .. } = e {
        // A damaged or truncated remote entry: a miss, counted, never served.
        tracing::warn!(error = %e, "corrupt remote entry");
        ctx.tally.count(Outcome::CorruptEntry);
    } else {
        // (The remote's breaker logged the failure that tripped it.)
        tracing::debug!(error = %e, "remote storage");
        ctx.tally.count(Outcome::RemoteError);
    }
}

/// The hit counter of tier `i` in `mode_hit`'s mode.
pub(super) fn hit_outcome(ctx: &Ctx, tier: usize, mode_hit: Outcome) -> Outcome {
    if tier == LOCAL {
        mode_hit
    } else if tier == ctx.farm_at {
        Outcome::HitFarm
    } else {
        Outcome::HitRemote
    }
}

/// Writes what a miss stored into the writable remote tiers (not the farm's, which
/// takes them in one publication). A manifest is merged with the one the remote
/// holds, so every machine's recordings of a source are kept.
fn store_remote(ctx: &mut Ctx, tiers: &mut Tiered, items: &[Item]) {
    for t in LOCAL + 1..tiers.len() {
        if t == ctx.farm_at || !tiers.usable(t) || !tiers.tier(t).writable() {
            continue;
        }
        for item in items {
            let key = CacheKey(item.key);
            match item.kind {
                EntryKind::Manifest => merge_manifest(ctx, tiers, t, &key, &item.data),
                _ => {
                    tiers.put_to(t, item.kind, &key, &item.data, &mut |t, e| {
                        count_error(ctx, t, e)
                    });
                }
            }
        }
    }
}

/// Looks up a result entry by its key in tier `i` and restores it with `restore`.
/// A damaged local entry is counted and removed; a farm entry that cannot be used is
/// counted as a bad entry; an entry whose outputs cannot be written here is the
/// user's error: the real compiler runs and reports it, and the entry stays.
pub(super) fn lookup_result(
    ctx: &mut Ctx,
    tiers: &mut Tiered,
    i: usize,
    key: &CacheKey,
    unwritable_runs_real: bool,
    restore: &mut dyn FnMut(&mut Ctx, &[u8], usize) -> Restored,
) -> Lookup {
    let Some(data) = tiers.get_from(i, EntryKind::Result, key, &mut |t, e| {
        count_error(ctx, t, e)
    }) else {
        return Lookup::Miss;
    };
    match restore(ctx, &data, i) {
        Restored::Hit => {
            let _ = backfill(ctx, tiers, i, EntryKind::Result, key, &data);
            Lookup::Hit
        }
        Restored::Unwritable if unwritable_runs_real => {
            Lookup::Done(ctx.uncached("output directory unwritable", "output_unwritable"))
        }
        Restored::Unwritable | Restored::NotThis if i == LOCAL => Lookup::Miss,
        Restored::Unwritable => Lookup::Miss,
        Restored::Corrupt if i == LOCAL => {
            ctx.tally.count(Outcome::CorruptEntry);
            tiers.note_error(LOCAL);
            let _ = tiers.tier(LOCAL).remove(EntryKind::Result, key);
            Lookup::Miss
        }
        _ => {
            ctx.tally.count(Outcome::Fallback("bad_entry".into()));
            Lookup::Miss
        }
    }
}

/// Writes an entry found in tier `found` into the tiers before it (the local one
/// counting what the write did). `false` when the local tier did not take it.
pub(super) fn backfill(
    ctx: &mut Ctx,
    tiers: &mut Tiered,
    found: usize,
    kind: EntryKind,
    key: &CacheKey,
    data: &[u8],
) -> bool {
    let mut local = true;
    for t in 0..found {
        if t == LOCAL {
            local = put_local(ctx, tiers, kind, key, data);
        } else if t != ctx.farm_at && tiers.tier(t).writable() {
            tiers.put_to(t, kind, key, data, &mut |t, e| count_error(ctx, t, e));
        }
    }
    local
}

/// Merges a manifest (encoded) into the writable shared tiers before `found`.
pub(super) fn merge_into_shared(
    ctx: &mut Ctx,
    tiers: &mut Tiered,
    found: usize,
    mkey: &CacheKey,
    manifest: &[u8],
) {
    for t in LOCAL + 1..found {
        merge_manifest(ctx, tiers, t, mkey, manifest);
    }
}

/// Merges a manifest into the one shared tier `t` holds (read, merge, write: two
/// writers at once may lose one entry, which only costs a later miss).
fn merge_manifest(ctx: &mut Ctx, tiers: &mut Tiered, t: usize, mkey: &CacheKey, manifest: &[u8]) {
    if t == ctx.farm_at || !tiers.usable(t) || !tiers.tier(t).writable() {
        return;
    }
    let stored = tiers.get_from(t, EntryKind::Manifest, mkey, &mut |t, e| {
        count_error(ctx, t, e)
    });
    if let Some(m) = crate::key::manifest::merge(stored.as_deref(), manifest) {
        tiers.put_to(t, EntryKind::Manifest, mkey, &m, &mut |t, e| {
            count_error(ctx, t, e)
        });
    }
}

/// Puts an entry in the local tier, counting what the write did.
pub(super) fn put_local(
    ctx: &mut Ctx,
    tiers: &mut Tiered,
    kind: EntryKind,
    key: &CacheKey,
    data: &[u8],
) -> bool {
    match tiers.tier(LOCAL).put(kind, key, data) {
        Ok(r) => {
            tiers.note_written(LOCAL, data.len());
            ctx.put_report(&r);
            true
        }
        Err(e) => {
            tiers.note_error(LOCAL);
            ctx.cache_error(&e);
            false
        }
    }
}
