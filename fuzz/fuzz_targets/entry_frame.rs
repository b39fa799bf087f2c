//! The cache's entry frame (magic, BLAKE3 of the payload, zstd), as a local or remote
//! tier reads it back. Input: a stored entry's bytes. A frame that decodes holds
//! exactly its payload; any payload framed decodes to itself.

#![no_main]

use farm::store::{decode_entry, encode_entry};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(payload) = decode_entry(data) {
        let framed = encode_entry(&payload).unwrap();
        assert_eq!(decode_entry(&framed).unwrap(), payload);
    }
    let framed = encode_entry(data).unwrap();
    assert_eq!(decode_entry(&framed).unwrap(), data);
    // Cut short, never read as something else.
    assert!(decode_entry(&framed[..framed.len() - 1]).is_err());
});
