//! Tiers in order, with backfill: the composition every reader of the cache uses.

use super::{CacheError, CacheKey, EntryKind, Tier};

/// A hit: the entry and the position of the tier that held it.
#[derive(Debug)]
pub struct Found {
    pub data: Vec<u8>,
    pub tier: usize,
}

/// Tiers asked in order (nearest first). A tier that fails is reported through the
/// caller's `on_error` and then skipped for the rest of this composition's life: one
/// compile never waits twice on a tier that already failed it. What each tier did
/// (entry bytes read and written, failed calls) is added up in memory, for the
/// caller's statistics.
pub struct Tiered<'a> {
    tiers: Vec<&'a dyn Tier>,
    state: Vec<TierState>,
}

/// One tier's state in a composition.
#[derive(Clone, Copy, Default)]
struct TierState {
    failed: bool,
    traffic: TierTraffic,
    /// The tier's [`Tier::budget`] and the time its calls took so far.
    budget: Option<std::time::Duration>,
    spent: std::time::Duration,
}

/// What one tier did in a composition.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TierTraffic {
    /// Entry bytes read from the tier (payloads, before the tier's own framing).
    pub read: u64,
    /// Entry bytes written to the tier.
    pub written: u64,
    /// Calls that failed (reported to `on_error`, or noted by the caller).
    pub errors: u64,
}

impl<'a> Tiered<'a> {
    pub fn new(tiers: Vec<&'a dyn Tier>) -> Tiered<'a> {
        let state = tiers
            .iter()
            .map(|t| TierState {
                budget: t.budget(),
                ..TierState::default()
            })
            .collect();
        Tiered { tiers, state }
    }

    /// What tier `i` did so far.
    pub fn traffic(&self, i: usize) -> TierTraffic {
        self.state[i].traffic
    }

    /// Adds a write the caller made to tier `i` directly (the local tier's writes,
    /// whose own report the caller needs).
    pub fn note_written(&mut self, i: usize, bytes: usize) {
        self.state[i].traffic.written += bytes as u64;
    }

    /// Adds a failure the caller found in tier `i` (an entry it could not use).
    pub fn note_error(&mut self, i: usize) {
        self.state[i].traffic.errors += 1;
    }

    pub fn len(&self) -> usize {
        self.tiers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tiers.is_empty()
    }

    pub fn tier(&self, i: usize) -> &'a dyn Tier {
        self.tiers[i]
    }

    /// Adds a call's time to tier `i`'s spending (timed when it has a budget): past
    /// its budget, the tier is too slow for this compile and skipped from now on
    /// (the tier decides what that means beyond it: a remote skips itself a while).
    fn charge(
        &mut self,
        i: usize,
        t0: Option<std::time::Instant>,
        on_error: &mut dyn FnMut(usize, &CacheError),
    ) {
        let (Some(t0), Some(budget)) = (t0, self.state[i].budget) else {
            return;
        };
        let st = &mut self.state[i];
        st.spent += t0.elapsed();
        if st.spent > budget && !st.failed {
            st.failed = true;
            st.traffic.errors += 1;
            let e = self.tiers[i].over_budget(st.spent);
            on_error(i, &e);
        }
    }

    /// Whether tier `i` has not failed yet.
    pub fn usable(&self, i: usize) -> bool {
        !self.state[i].failed
    }

    /// Marks tier `i` failed: it is skipped from now on.
    pub fn fail(&mut self, i: usize) {
        self.state[i].failed = true;
    }

    /// One tier's entry; a failure marks the tier failed and is passed to `on_error`.
    pub fn get_from(
        &mut self,
        i: usize,
        kind: EntryKind,
        key: &CacheKey,
        on_error: &mut dyn FnMut(usize, &CacheError),
    ) -> Option<Vec<u8>> {
        if self.state[i].failed {
            return None;
        }
        let t0 = self.state[i].budget.map(|_| std::time::Instant::now());
        let got = self.tiers[i].get(kind, key);
        self.charge(i, t0, on_error);
        match got {
            Ok(v) => {
                self.state[i].traffic.read += v.as_ref().map_or(0, |d| d.len() as u64);
                v
            }
            Err(e) => {
                self.state[i].traffic.errors += 1;
                // A tier that is down is skipped from now on; a damaged entry or a
                // file the disk would not give is that entry's fault alone.
                if matches!(
                    e,
                    CacheError::Unavailable { .. } | CacheError::Skipped { .. }
                ) {
                    self.state[i].failed = true;
                }
                on_error(i, &e);
                None
            }
        }
    }

    /// The first entry under `key`, from `from` on, that `accept` takes (a restore
    /// that succeeded, say), backfilled into the tiers before the one that held it.
    pub fn get(
        &mut self,
        from: usize,
        kind: EntryKind,
        key: &CacheKey,
        accept: &mut dyn FnMut(usize, &[u8]) -> bool,
        on_error: &mut dyn FnMut(usize, &CacheError),
    ) -> Option<Found> {
        for i in from..self.tiers.len() {
            let Some(data) = self.get_from(i, kind, key, on_error) else {
                continue;
            };
            if accept(i, &data) {
                self.backfill(i, kind, key, &data, on_error);
                return Some(Found { data, tier: i });
            }
        }
        None
    }

    /// Writes an entry found in tier `found` into every usable tier before it.
    pub fn backfill(
        &mut self,
        found: usize,
        kind: EntryKind,
        key: &CacheKey,
        data: &[u8],
        on_error: &mut dyn FnMut(usize, &CacheError),
    ) {
        for i in 0..found {
            self.put_to(i, kind, key, data, on_error);
        }
    }

    /// Writes an entry into tier `i` when it is usable. `false` when it was not written.
    pub fn put_to(
        &mut self,
        i: usize,
        kind: EntryKind,
        key: &CacheKey,
        data: &[u8],
        on_error: &mut dyn FnMut(usize, &CacheError),
    ) -> bool {
        if self.state[i].failed {
            return false;
        }
        let t0 = self.state[i].budget.map(|_| std::time::Instant::now());
        let put = self.tiers[i].put(kind, key, data);
        self.charge(i, t0, on_error);
        match put {
            Ok(_) => {
                // (A read-only tier takes the call and writes nothing.)
                if self.tiers[i].writable() {
                    self.state[i].traffic.written += data.len() as u64;
                }
                true
            }
            Err(e) => {
                self.state[i].traffic.errors += 1;
                if matches!(
                    e,
                    CacheError::Unavailable { .. } | CacheError::Skipped { .. }
                ) {
                    self.state[i].failed = true;
                }
                on_error(i, &e);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{LocalStore, PutReport};
    use std::cell::RefCell;

    /// A tier that fails every call, for the failure path only.
    struct Broken(RefCell<u32>);

    impl Tier for Broken {
        fn name(&self) -> &str {
            "broken"
        }
        fn get(&self, _: EntryKind, _: &CacheKey) -> Result<Option<Vec<u8>>, CacheError> {
            *self.0.borrow_mut() += 1;
            Err(CacheError::Unavailable {
                tier: "broken".into(),
                detail: "down".into(),
            })
        }
        fn put(&self, _: EntryKind, _: &CacheKey, _: &[u8]) -> Result<PutReport, CacheError> {
            *self.0.borrow_mut() += 1;
            Err(CacheError::Unavailable {
                tier: "broken".into(),
                detail: "down".into(),
            })
        }
        fn remove(&self, _: EntryKind, _: &CacheKey) -> Result<(), CacheError> {
            Ok(())
        }
    }

    fn key(n: u8) -> CacheKey {
        CacheKey(*blake3::hash(&[n]).as_bytes())
    }

    #[test]
    fn hit_in_a_later_tier_is_backfilled() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let near = LocalStore::new(a.path(), 1 << 30);
        let far = LocalStore::new(b.path(), 1 << 30);
        far.put(EntryKind::Result, &key(1), b"far").unwrap();
        let mut t = Tiered::new(vec![&near, &far]);
        let mut errors = 0;
        let found = t
            .get(
                0,
                EntryKind::Result,
                &key(1),
                &mut |_, _| true,
                &mut |_, _| errors += 1,
            )
            .unwrap();
        assert_eq!((found.tier, found.data.as_slice()), (1, &b"far"[..]));
        assert_eq!(errors, 0);
        assert_eq!(
            near.get(EntryKind::Result, &key(1)).unwrap().unwrap(),
            b"far"
        );
        // The bytes each tier moved: read from the far one, backfilled to the near.
        let moved = |read, written| TierTraffic {
            read,
            written,
            errors: 0,
        };
        assert_eq!((t.traffic(0), t.traffic(1)), (moved(0, 3), moved(3, 0)));
    }

    #[test]
    fn rejected_entries_are_not_hits() {
        let a = tempfile::tempdir().unwrap();
        let near = LocalStore::new(a.path(), 1 << 30);
        near.put(EntryKind::Result, &key(2), b"x").unwrap();
        let mut t = Tiered::new(vec![&near]);
        let got = t.get(
            0,
            EntryKind::Result,
            &key(2),
            &mut |_, _| false,
            &mut |_, _| {},
        );
        assert!(got.is_none());
    }

    #[test]
    fn a_failed_tier_is_asked_once() {
        let broken = Broken(RefCell::new(0));
        let mut t = Tiered::new(vec![&broken]);
        let mut errors = 0;
        for _ in 0..3 {
            let got = t.get(
                0,
                EntryKind::Result,
                &key(3),
                &mut |_, _| true,
                &mut |_, _| errors += 1,
            );
            assert!(got.is_none());
        }
        assert!(!t.put_to(0, EntryKind::Result, &key(3), b"y", &mut |_, _| errors += 1));
        assert_eq!((errors, *broken.0.borrow()), (1, 1));
        assert_eq!(t.traffic(0).errors, 1);
    }
}
