//! Raw QUIC clients of farmd built from the library, for what a shim never sends: a
//! cluster member's requests, garbage, and clients without a certificate.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use farm::protocol::{self, JobResult, PeerRequest, PeerResponse};

/// The files a text job sent back, one after another: a gcc job's object.
pub fn job_output(r: &JobResult) -> Vec<u8> {
    r.outputs
        .iter()
        .flat_map(|o| o.data.iter().copied())
        .collect()
}

/// A text job's file names for a language as gcc names it for `-x`, as a shim names
/// them: the input `job.i` (`job.ii`, ...), the object `job.o`.
pub fn job_files(lang: &str) -> (String, Vec<String>) {
    let ext = match lang {
        "cpp-output" => "i",
        "c++-cpp-output" => "ii",
        "objective-c-cpp-output" => "mi",
        "objective-c++-cpp-output" => "mii",
        other => other,
    };
    (format!("job.{ext}"), vec!["job.o".to_string()])
}

/// A cluster member: a client holding a node certificate of the cluster CA.
pub struct RawPeer {
    pub rt: tokio::runtime::Runtime,
    pub conn: quinn::Connection,
}

impl RawPeer {
    pub fn connect(ca: &Path, cert: &Path, key: &Path, addr: &str) -> Result<RawPeer, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let tls = farm::net::load_node_tls(ca, cert, key, Duration::from_secs(5))
            .map_err(|e| e.to_string())?;
        let conn = rt.block_on(async {
            let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
            ep.set_default_client_config(tls.client);
            let c = ep
                .connect(addr.parse().unwrap(), farm::net::SERVER_NAME)
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(c)
        })?;
        Ok(RawPeer { rt, conn })
    }

    pub fn ask(&self, req: &PeerRequest) -> Result<PeerResponse, String> {
        self.rt.block_on(async {
            let (mut s, mut r) = self.conn.open_bi().await.map_err(|e| e.to_string())?;
            protocol::write_async(&mut s, req)
                .await
                .map_err(|e| e.to_string())?;
            s.finish().map_err(|e| e.to_string())?;
            protocol::read_async(&mut r, protocol::MAX_FRAME)
                .await
                .map_err(|e| e.to_string())
        })
    }

    pub fn raw(&self, bytes: &[u8]) -> Result<PeerResponse, String> {
        self.rt.block_on(async {
            let (mut s, mut r) = self.conn.open_bi().await.map_err(|e| e.to_string())?;
            s.write_all(bytes).await.map_err(|e| e.to_string())?;
            s.finish().map_err(|e| e.to_string())?;
            protocol::read_async(&mut r, protocol::MAX_FRAME)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// A QUIC client configuration that trusts the cluster CA at `ca` but offers no
/// certificate of its own: a stranger to the cluster.
pub fn client_without_certificate(ca: &Path) -> quinn::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).unwrap();
    use rustls::pki_types::pem::PemObject;
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![protocol::ALPN.to_vec()];
    let qc = quinn::crypto::rustls::QuicClientConfig::try_from(cfg).unwrap();
    quinn::ClientConfig::new(Arc::new(qc))
}
