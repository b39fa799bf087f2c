//! The bot's side of the CAS: blobs a lease needs are read (batched when small,
//! through ByteStream when large) and checked against their SHA-256 digest; outputs
//! are written back (FindMissingBlobs first, then batched or ByteStream writes).
//! Every read is bounded: a blob larger than the caller's cap is refused before it is
//! fetched.

use std::collections::HashMap;

use super::Svc as Channel;
use bazel_remote_apis::build::bazel::remote::execution::v2::{
    batch_update_blobs_request,
    content_addressable_storage_client::ContentAddressableStorageClient, digest_function,
    BatchReadBlobsRequest, BatchUpdateBlobsRequest, Digest, FindMissingBlobsRequest,
};
use bazel_remote_apis::google::bytestream::{
    byte_stream_client::ByteStreamClient, ReadRequest, WriteRequest,
};
use sha2::{Digest as _, Sha256};

/// Blobs up to this size travel in batches; larger ones through ByteStream. Below
/// BuildGrid's `maxBatchTotalSizeBytes` (4 MiB less framing) and most servers'.
const BATCH_BYTES: usize = 2 << 20;
/// One ByteStream write message.
const CHUNK: usize = 1 << 20;

pub fn sha256_digest(data: &[u8]) -> Digest {
    Digest {
        hash: farm::fsutil::hex(&Sha256::digest(data)),
        size_bytes: data.len() as i64,
    }
}

/// A digest as `hash/size` for messages.
pub fn show(d: &Digest) -> String {
    format!("{}/{}", d.hash, d.size_bytes)
}

/// A digest that is a SHA-256 (64 lower-case hex digits) of a sane size.
pub fn valid(d: &Digest) -> bool {
    d.hash.len() == 64
        && d.hash
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && d.size_bytes >= 0
}

#[derive(Clone)]
pub struct Cas {
    cas: ContentAddressableStorageClient<Channel>,
    bytestream: ByteStreamClient<Channel>,
    instance: String,
}

impl Cas {
    pub fn new(channel: Channel, instance: &str) -> Cas {
        Cas {
            cas: ContentAddressableStorageClient::new(channel.clone())
                .max_decoding_message_size(64 << 20),
            bytestream: ByteStreamClient::new(channel).max_decoding_message_size(64 << 20),
            instance: instance.to_string(),
        }
    }

    fn resource_prefix(&self) -> String {
        if self.instance.is_empty() {
            String::new()
        } else {
            format!("{}/", self.instance)
        }
    }

    /// Reads `digests` (each at most `cap` bytes), checking every blob's content
    /// against its digest.
    pub async fn read_many(
        &self,
        digests: &[Digest],
        cap: u64,
    ) -> Result<HashMap<String, Vec<u8>>, String> {
        let mut out = HashMap::new();
        let mut batch: Vec<Digest> = Vec::new();
        let mut batch_bytes = 0usize;
        for d in digests {
            if !valid(d) {
                return Err(format!("invalid digest {}", show(d)));
            }
            if d.size_bytes as u64 > cap {
                return Err(format!(
                    "blob {} is larger than the {cap} bytes allowed",
                    show(d)
                ));
            }
            if out.contains_key(&d.hash) || batch.iter().any(|b| b.hash == d.hash) {
                continue;
            }
            let size = d.size_bytes as usize;
            if size > BATCH_BYTES {
                let data = self.read_stream(d).await?;
                out.insert(d.hash.clone(), data);
                continue;
            }
            if batch_bytes + size > BATCH_BYTES {
                self.read_batch(std::mem::take(&mut batch), &mut out)
                    .await?;
                batch_bytes = 0;
            }
            batch_bytes += size;
            batch.push(d.clone());
        }
        if !batch.is_empty() {
            self.read_batch(batch, &mut out).await?;
        }
        Ok(out)
    }

    pub async fn read_one(&self, d: &Digest, cap: u64) -> Result<Vec<u8>, String> {
        let mut m = self.read_many(std::slice::from_ref(d), cap).await?;
        m.remove(&d.hash)
            .ok_or_else(|| format!("blob {} missing", show(d)))
    }

    async fn read_batch(
        &self,
        digests: Vec<Digest>,
        out: &mut HashMap<String, Vec<u8>>,
    ) -> Result<(), String> {
        let req = BatchReadBlobsRequest {
            instance_name: self.instance.clone(),
            digests: digests.clone(),
            acceptable_compressors: vec![],
            digest_function: digest_function::Value::Sha256 as i32,
        };
        let resp = self
            .cas
            .clone()
            .batch_read_blobs(req)
            .await
            .map_err(|e| format!("BatchReadBlobs: {}", e.message()))?
            .into_inner();
        for r in resp.responses {
            let Some(d) = r.digest else { continue };
            if let Some(s) = r.status.filter(|s| s.code != 0) {
                return Err(format!("blob {}: {}", show(&d), s.message));
            }
            let Some(want) = digests.iter().find(|w| w.hash == d.hash) else {
                continue;
            };
            check(want, &r.data)?;
            out.insert(d.hash, r.data);
        }
        for d in &digests {
            if !out.contains_key(&d.hash) {
                return Err(format!("blob {} missing from the CAS", show(d)));
            }
        }
        Ok(())
    }

    async fn read_stream(&self, d: &Digest) -> Result<Vec<u8>, String> {
        let req = ReadRequest {
            resource_name: format!(
                "{}blobs/{}/{}",
                self.resource_prefix(),
                d.hash,
                d.size_bytes
            ),
            read_offset: 0,
            read_limit: 0,
        };
        let mut stream = self
            .bytestream
            .clone()
            .read(req)
            .await
            .map_err(|e| format!("ByteStream read of {}: {}", show(d), e.message()))?
            .into_inner();
        let size = d.size_bytes as usize;
        let mut data = Vec::with_capacity(size);
        while let Some(chunk) = stream
            .message()
            .await
            .map_err(|e| format!("ByteStream read of {}: {}", show(d), e.message()))?
        {
            if data.len() + chunk.data.len() > size {
                return Err(format!("blob {} is longer than its digest says", show(d)));
            }
            data.extend_from_slice(&chunk.data);
        }
        check(d, &data)?;
        Ok(data)
    }

    /// Writes `blobs` the CAS does not have yet.
    pub async fn write_many(&self, blobs: Vec<(Digest, Vec<u8>)>) -> Result<(), String> {
        if blobs.is_empty() {
            return Ok(());
        }
        let missing = self
            .cas
            .clone()
            .find_missing_blobs(FindMissingBlobsRequest {
                instance_name: self.instance.clone(),
                blob_digests: blobs.iter().map(|(d, _)| d.clone()).collect(),
                digest_function: digest_function::Value::Sha256 as i32,
            })
            .await
            .map_err(|e| format!("FindMissingBlobs: {}", e.message()))?
            .into_inner()
            .missing_blob_digests;
        let mut batch = Vec::new();
        let mut batch_bytes = 0usize;
        let mut sent = std::collections::HashSet::new();
        for (d, data) in blobs {
            if !missing.iter().any(|m| m.hash == d.hash) || !sent.insert(d.hash.clone()) {
                continue;
            }
            if data.len() > BATCH_BYTES {
                self.write_stream(&d, data).await?;
                continue;
            }
            if batch_bytes + data.len() > BATCH_BYTES {
                self.write_batch(std::mem::take(&mut batch)).await?;
                batch_bytes = 0;
            }
            batch_bytes += data.len();
            batch.push(batch_update_blobs_request::Request {
                digest: Some(d),
                data,
                compressor: 0,
            });
        }
        if !batch.is_empty() {
            self.write_batch(batch).await?;
        }
        Ok(())
    }

    async fn write_batch(
        &self,
        requests: Vec<batch_update_blobs_request::Request>,
    ) -> Result<(), String> {
        let resp = self
            .cas
            .clone()
            .batch_update_blobs(BatchUpdateBlobsRequest {
                instance_name: self.instance.clone(),
                requests,
                digest_function: digest_function::Value::Sha256 as i32,
            })
            .await
            .map_err(|e| format!("BatchUpdateBlobs: {}", e.message()))?
            .into_inner();
        for r in resp.responses {
            if let Some(s) = r.status.filter(|s| s.code != 0) {
                let d = r.digest.map(|d| show(&d)).unwrap_or_default();
                return Err(format!("BatchUpdateBlobs {d}: {}", s.message));
            }
        }
        Ok(())
    }

    async fn write_stream(&self, d: &Digest, data: Vec<u8>) -> Result<(), String> {
        let resource = format!(
            "{}uploads/{}/blobs/{}/{}",
            self.resource_prefix(),
            upload_id(),
            d.hash,
            d.size_bytes
        );
        let total = data.len();
        let mut msgs = Vec::new();
        let mut off = 0;
        loop {
            let end = (off + CHUNK).min(total);
            msgs.push(WriteRequest {
                resource_name: if off == 0 {
                    resource.clone()
                } else {
                    String::new()
                },
                write_offset: off as i64,
                finish_write: end == total,
                data: data[off..end].to_vec(),
            });
            off = end;
            if off == total {
                break;
            }
        }
        self.bytestream
            .clone()
            .write(tonic::codegen::tokio_stream::iter(msgs))
            .await
            .map_err(|e| format!("ByteStream write of {}: {}", show(d), e.message()))?;
        Ok(())
    }
}

fn check(want: &Digest, data: &[u8]) -> Result<(), String> {
    let got = sha256_digest(data);
    if got.hash != want.hash || got.size_bytes != want.size_bytes {
        return Err(format!(
            "blob {} from the CAS has digest {}",
            show(want),
            show(&got)
        ));
    }
    Ok(())
}

/// A fresh upload id (ByteStream wants a UUID-like name; uniqueness is what counts).
fn upload_id() -> String {
    let mut b = [0u8; 16];
    let _ = getrandom(&mut b);
    let h = farm::fsutil::hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read as _;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_sha256_and_checked() {
        let d = sha256_digest(b"abc");
        assert_eq!(
            d.hash,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(valid(&d));
        assert!(check(&d, b"abc").is_ok());
        assert!(check(&d, b"abd").is_err());
        assert!(!valid(&Digest {
            hash: "../../etc".into(),
            size_bytes: 1
        }));
        assert_eq!(upload_id().len(), 36);
    }
}
