//! A client of the Bazel Remote Execution API (REAPI v2): Capabilities, the CAS
//! (FindMissingBlobs, batched and ByteStream transfers), the Action Cache, and Merkle
//! trees of input files. Knows nothing of compilers or of farm's cache: the store's
//! REAPI tier (src/store/remote/reapi_tier.rs) and farmd's REAPI executor build on it;
//! `action` maps a same-path job onto a rootfs Action.
//!
//! gRPC through tonic, TLS through rustls on `ring`; the protos come pre-generated
//! from the `bazel-remote-apis` crate (re-exported as [`proto`]). Digests are SHA-256,
//! the function every server speaks.

pub mod action;
mod blocking;
mod client;
mod config;
pub mod merkle;

pub use bazel_remote_apis::build::bazel::remote::execution::v2 as proto;
pub use blocking::BlockingClient;
pub use client::{Capabilities, Client};
pub use config::{AuthSource, ReapiConfig};

use proto::Digest;
use sha2::{Digest as _, Sha256};

/// What went wrong talking to a REAPI server; every message names the server.
#[derive(Debug, thiserror::Error)]
pub enum ReapiError {
    /// The configuration cannot work (a CA file that does not read, a header that is
    /// not ASCII, a server without SHA-256).
    #[error("REAPI {server}: {detail}")]
    Setup { server: String, detail: String },
    /// A call failed or did not answer in time.
    #[error("REAPI {server}: {call}: {detail}")]
    Call {
        server: String,
        call: &'static str,
        detail: String,
        /// The gRPC status code, when the server answered one.
        code: Option<tonic::Code>,
    },
    /// The server returned bytes that do not match their digest.
    #[error("REAPI {server}: blob {hash}/{size}: {what}")]
    Corrupt {
        server: String,
        hash: String,
        size: i64,
        what: &'static str,
    },
}

/// The SHA-256 digest of `data`, as REAPI names a blob.
pub fn digest_of(data: &[u8]) -> Digest {
    Digest {
        hash: crate::fsutil::hex(&Sha256::digest(data)),
        size_bytes: data.len() as i64,
    }
}

/// A message's digest and its serialized bytes (prost writes fields in tag order,
/// so equal messages give equal bytes and equal digests).
pub fn message_digest<M: prost::Message>(m: &M) -> (Digest, Vec<u8>) {
    let bytes = m.encode_to_vec();
    (digest_of(&bytes), bytes)
}

/// A duration as protobuf's `Duration`.
pub fn proto_duration(d: std::time::Duration) -> bazel_remote_apis::google::protobuf::Duration {
    bazel_remote_apis::google::protobuf::Duration {
        seconds: d.as_secs().min(i64::MAX as u64) as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// Whether `data` is the blob `d` names.
pub fn matches(d: &Digest, data: &[u8]) -> bool {
    d.size_bytes == data.len() as i64 && d.hash == crate::fsutil::hex(&Sha256::digest(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_digests() {
        let d = digest_of(b"");
        assert_eq!(
            d.hash,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(d.size_bytes, 0);
        assert!(matches(&digest_of(b"abc"), b"abc"));
        assert!(!matches(&digest_of(b"abc"), b"abd"));
    }
}
