//! Direct-mode manifests, decoded from a cache entry's payload, and merged as a
//! store merges another machine's manifest into its own. Input: the payload. A
//! decoded manifest encodes and decodes to itself; a merge keeps the incoming
//! entries first, without stat stamps, within the cap, and keeps the stored
//! preprocessor-only marker; what does not decode is never merged.

#![no_main]

use farm::key::manifest::{self, MAX_MANIFEST_ENTRIES};
use farm::key::{Manifest, ManifestEntry};
use farm::store::CacheKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(m) = Manifest::decode(data) else {
        assert!(manifest::merge(None, data).is_none());
        assert!(manifest::merge(Some(data), data).is_none());
        return;
    };
    let bytes = m.encode();
    assert_eq!(Manifest::decode(&bytes).as_ref(), Some(&m));
    assert!(Manifest::decode(&bytes[..bytes.len() - 1]).is_none());
    for e in &m.entries {
        let _ = e.expected_result(&CacheKey([7; 32]));
    }

    let mut want: Vec<ManifestEntry> = Vec::new();
    for e in m.entries.iter().cloned().map(ManifestEntry::portable) {
        if !want.contains(&e) {
            want.push(e);
        }
    }
    want.truncate(MAX_MANIFEST_ENTRIES);
    for stored in [None, Some(data)] {
        let merged = manifest::merge(stored, data).expect("a manifest merges");
        let merged = Manifest::decode(&merged).expect("a merge decodes");
        assert!(merged.entries.len() <= MAX_MANIFEST_ENTRIES);
        assert_eq!(&merged.entries[..want.len()], &want[..]);
        let marker = stored.and(m.preprocessor_only.as_ref());
        assert_eq!(merged.preprocessor_only.as_ref(), marker);
    }
});
