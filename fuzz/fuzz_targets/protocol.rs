//! farmd's wire protocol: frames (length, flags, postcard, zstd) read off a stream,
//! each body decoded as every message type a peer or a shim sends or answers. Input:
//! the stream's bytes. Every message that decodes frames and decodes to itself;
//! nothing is allocated past the reader's cap.

#![no_main]

use farm::protocol::{
    body_len, decode, encode, read_sync, AgentRequest, AgentResponse, PeerRequest, PeerResponse,
    MAX_CONTROL_FRAME, MAX_FRAME,
};
use libfuzzer_sys::fuzz_target;
use serde::{de::DeserializeOwned, Serialize};

/// The reader's cap here: a control stream's (a frame's declared length and its
/// inflated payload are both checked against it).
const CAP: usize = MAX_CONTROL_FRAME;

fn roundtrip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(body: &[u8]) {
    let Ok(msg) = decode::<T>(body, CAP) else {
        return;
    };
    let frame = encode(&msg);
    let n = body_len(frame[..4].try_into().unwrap(), MAX_FRAME).unwrap();
    assert_eq!(n, frame.len() - 4);
    assert_eq!(decode::<T>(&frame[4..], MAX_FRAME).unwrap(), msg);
}

fuzz_target!(|data: &[u8]| {
    // Frame by frame, as a reader delimits them.
    let mut rest = data;
    while rest.len() >= 4 {
        let Ok(n) = body_len(rest[..4].try_into().unwrap(), CAP) else {
            break;
        };
        let Some(body) = rest.get(4..4 + n) else {
            break;
        };
        roundtrip::<PeerRequest>(body);
        roundtrip::<PeerResponse>(body);
        roundtrip::<AgentRequest>(body);
        roundtrip::<AgentResponse>(body);
        rest = &rest[4 + n..];
    }
    // The blocking reader on the same stream: it ends with an error, never a panic.
    let mut r = std::io::Cursor::new(data);
    while read_sync::<PeerRequest>(&mut r, CAP).is_ok() {}
});
