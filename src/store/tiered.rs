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
/// compile never waits twice on a tier that already failed it.
pub struct Tiered<'a> {
    tiers: Vec<&'a dyn Tier>,
    failed: Vec<bool>,
}

impl<'a> Tiered<'a> {
    pub fn new(tiers: Vec<&'a dyn Tier>) -> Tiered<'a> {
        let failed = vec![false; tiers.len()];
        Tiered { tiers, failed }
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

    /// Whether tier `i` has not failed yet.
    pub fn usable(&self, i: usize) -> bool {
        !self.failed[i]
    }

    /// Marks tier `i` failed: it is skipped from now on.
    pub fn fail(&mut self, i: usize) {
        self.failed[i] = true;
    }

    /// One tier's entry; a failure marks the tier failed and is passed to `on_error`.
    pub fn get_from(
        &mut self,
        i: usize,
        kind: EntryKind,
        key: &CacheKey,
        on_error: &mut dyn FnMut(usize, &CacheError),
    ) -> Option<Vec<u8>> {
        if self.failed[i] {
            return None;
        }
        match self.tiers[i].get(kind, key) {
            Ok(v) => v,
            Err(e) => {
                // A tier that is down is skipped from now on; a damaged entry or a
                // file the disk would not give is that entry's fault alone.
                if matches!(e, CacheError::Unavailable { .. }) {
                    self.failed[i] = true;
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
        if self.failed[i] {
            return false;
        }
        match self.tiers[i].put(kind, key, data) {
            Ok(_) => true,
            Err(e) => {
                if matches!(e, CacheError::Unavailable { .. }) {
                    self.failed[i] = true;
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
    }
}
