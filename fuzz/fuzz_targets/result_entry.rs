//! Result entries (a compile's outputs, stdout, stderr), decoded from a cache
//! entry's payload. Input: the payload. A decoded result encodes and decodes to
//! itself, and its encoding cut short is refused.

#![no_main]

use farm::key::ResultEntry;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(r) = ResultEntry::decode(data) else {
        return;
    };
    let bytes = r.encode();
    let back = ResultEntry::decode(&bytes).expect("an encoded result decodes");
    assert_eq!(back.stdout, r.stdout);
    assert_eq!(back.stderr, r.stderr);
    assert_eq!(back.compile_ms, r.compile_ms);
    assert_eq!(back.outputs.len(), r.outputs.len());
    for (b, o) in back.outputs.iter().zip(&r.outputs) {
        assert_eq!(b.role, o.role);
        assert_eq!(b.data, o.data);
    }
    assert!(ResultEntry::decode(&bytes[..bytes.len() - 1]).is_none());
});
