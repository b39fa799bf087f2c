//! The farm's network identity: the cluster CA, node certificates, and the QUIC
//! endpoint configuration with mutual TLS (docs/security.md).
//!
//! Every node certificate carries its node name as common name and as a DNS name, plus
//! the shared DNS name [`SERVER_NAME`]: a node dials a peer by address and verifies that
//! the peer holds *a* certificate of the cluster CA; the peer's own name is read from the
//! certificate afterwards, for the revoked-names list and for `farm status`.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::protocol::ALPN;

/// The DNS name every node certificate carries, and the name a node verifies when it
/// dials a peer by address.
pub const SERVER_NAME: &str = "farm-node";
pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{path}: {err}")]
    File { path: PathBuf, err: std::io::Error },
    #[error("{path}: {what}")]
    Bad { path: PathBuf, what: String },
    #[error("certificate generation: {0}")]
    Gen(#[from] rcgen::Error),
    #[error("tls configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("{0}")]
    Other(String),
}

fn read(path: &Path) -> Result<Vec<u8>, NetError> {
    fs::read(path).map_err(|err| NetError::File {
        path: path.to_path_buf(),
        err,
    })
}

/// Writes a file readable by its owner only (keys), or world-readable (certificates),
/// refusing to replace an existing one.
fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<(), NetError> {
    let err = |err| NetError::File {
        path: path.to_path_buf(),
        err,
    };
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(err)?;
    f.write_all(data).map_err(err)?;
    f.sync_all().map_err(err)
}

/// A node name: a DNS label or dotted labels, so it can sit in a certificate.
pub fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name != SERVER_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !name.starts_with(['-', '.'])
        && !name.ends_with(['-', '.'])
}

/// `farm cluster init DIR`: a new cluster CA (`ca.crt`, `ca.key` 0600) in `dir`.
pub fn cluster_init(dir: &Path, cluster: &str) -> Result<(), NetError> {
    fs::create_dir_all(dir).map_err(|err| NetError::File {
        path: dir.to_path_buf(),
        err,
    })?;
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("farm cluster CA {cluster}"),
    );
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2100, 1, 1);
    let cert = params.self_signed(&key)?;
    write_new(&dir.join(CA_KEY), key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&dir.join(CA_CERT), cert.pem().as_bytes(), 0o644)?;
    Ok(())
}

/// `farm cluster issue NAME`: `NAME.crt` and `NAME.key` (both 0600) signed by the CA in
/// `ca_dir`, written to `out_dir`. Returns the two paths.
pub fn cluster_issue(
    ca_dir: &Path,
    name: &str,
    out_dir: &Path,
) -> Result<(PathBuf, PathBuf), NetError> {
    if !valid_node_name(name) {
        return Err(NetError::Other(format!(
            "node name {name:?}: use lowercase letters, digits, '-' and '.' (at most 63), not {SERVER_NAME:?}"
        )));
    }
    let ca_key_path = ca_dir.join(CA_KEY);
    let ca_cert_path = ca_dir.join(CA_CERT);
    let ca_key_pem = String::from_utf8(read(&ca_key_path)?).map_err(|_| NetError::Bad {
        path: ca_key_path.clone(),
        what: "not a PEM file".into(),
    })?;
    let ca_cert_pem = String::from_utf8(read(&ca_cert_path)?).map_err(|_| NetError::Bad {
        path: ca_cert_path.clone(),
        what: "not a PEM file".into(),
    })?;
    let ca_key = rcgen::KeyPair::from_pem(&ca_key_pem).map_err(|e| NetError::Bad {
        path: ca_key_path.clone(),
        what: e.to_string(),
    })?;
    let ca_params =
        rcgen::CertificateParams::from_ca_cert_pem(&ca_cert_pem).map_err(|e| NetError::Bad {
            path: ca_cert_path.clone(),
            what: e.to_string(),
        })?;
    // Re-signing the CA's own parameters with its key gives an issuer with the same
    // name and key as the file on disk, which is all a chain check looks at.
    let ca = ca_params.self_signed(&ca_key)?;
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec![name.to_string(), SERVER_NAME.into()])?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2100, 1, 1);
    let cert = params.signed_by(&key, &ca, &ca_key)?;
    fs::create_dir_all(out_dir).map_err(|err| NetError::File {
        path: out_dir.to_path_buf(),
        err,
    })?;
    let crt = out_dir.join(format!("{name}.crt"));
    let keyp = out_dir.join(format!("{name}.key"));
    write_new(&keyp, key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&crt, cert.pem().as_bytes(), 0o600)?;
    Ok((crt, keyp))
}

/// The node name in a DER certificate (its common name).
pub fn cert_node_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

/// The node name of the peer at the other end of an authenticated connection.
pub fn peer_name(conn: &quinn::Connection) -> Option<String> {
    let id = conn.peer_identity()?;
    let certs = id.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    certs.first().and_then(|c| cert_node_name(c))
}

/// TLS material of one node, ready for a QUIC endpoint.
pub struct NodeTls {
    pub name: String,
    pub server: quinn::ServerConfig,
    pub client: quinn::ClientConfig,
}

/// Concurrent request streams one connection may open.
pub const MAX_STREAMS_PER_PEER: u32 = 64;
/// Bytes one connection may have in flight to this side and not yet read.
pub const CONNECTION_WINDOW: u32 = 16 << 20;

fn transport(idle: Duration) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    // A peer that vanishes (kill -9, cable) is noticed within `idle`.
    t.keep_alive_interval(Some(Duration::from_millis(500)));
    t.max_idle_timeout(Some(idle.try_into().expect("idle timeout in range")));
    // What one peer may have open and unread at once (docs/security.md): requests
    // beyond the stream limit wait for a free stream, and data beyond the
    // connection's window waits for this side to read.
    t.max_concurrent_bidi_streams(MAX_STREAMS_PER_PEER.into());
    t.max_concurrent_uni_streams(0u32.into());
    t.receive_window(CONNECTION_WINDOW.into());
    Arc::new(t)
}

/// Loads the cluster CA and this node's certificate and key, and builds the server and
/// client sides: TLS 1.3 only, ALPN `farm/<version>` (`protocol::ALPN`), client certificates required and checked
/// against the cluster CA, server certificates checked against the same CA.
pub fn load_node_tls(
    ca: &Path,
    cert: &Path,
    key: &Path,
    idle: Duration,
) -> Result<NodeTls, NetError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let bad = |path: &Path, what: String| NetError::Bad {
        path: path.to_path_buf(),
        what,
    };
    let ca_der = CertificateDer::pem_slice_iter(&read(ca)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(ca, e.to_string()))?;
    if ca_der.is_empty() {
        return Err(bad(ca, "no certificate in file".into()));
    }
    let mut roots = rustls::RootCertStore::empty();
    for c in ca_der {
        roots
            .add(c)
            .map_err(|e| bad(ca, format!("not a usable CA certificate: {e}")))?;
    }
    let roots = Arc::new(roots);
    let chain = CertificateDer::pem_slice_iter(&read(cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(cert, e.to_string()))?;
    let Some(first) = chain.first() else {
        return Err(bad(cert, "no certificate in file".into()));
    };
    let name = cert_node_name(first).ok_or_else(|| bad(cert, "no common name".into()))?;
    let key_der =
        PrivateKeyDer::from_pem_slice(&read(key)?).map_err(|e| bad(key, e.to_string()))?;

    let client_verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots.clone(),
        provider.clone(),
    )
    .build()
    .map_err(|e| NetError::Other(format!("client verifier: {e}")))?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain.clone(), key_der.clone_key())
        .map_err(|e| bad(cert, format!("does not match key {}: {e}", key.display())))?;
    server.alpn_protocols = vec![ALPN.to_vec()];
    server.max_early_data_size = 0;
    let server_crypto = quinn::crypto::rustls::QuicServerConfig::try_from(server)
        .map_err(|e| NetError::Other(format!("quic server config: {e}")))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
    server.transport_config(transport(idle));

    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key_der)
        .map_err(|e| bad(cert, format!("does not match key {}: {e}", key.display())))?;
    client.alpn_protocols = vec![ALPN.to_vec()];
    let client_crypto = quinn::crypto::rustls::QuicClientConfig::try_from(client)
        .map_err(|e| NetError::Other(format!("quic client config: {e}")))?;
    let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
    client.transport_config(transport(idle));
    Ok(NodeTls {
        name,
        server,
        client,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names() {
        assert!(valid_node_name("node-a"));
        assert!(valid_node_name("b1.lab"));
        assert!(!valid_node_name("Node"));
        assert!(!valid_node_name(""));
        assert!(!valid_node_name("-x"));
        assert!(!valid_node_name("farm-node"));
        assert!(!valid_node_name("a/b"));
    }

    #[test]
    fn issue_and_load() {
        let d = tempfile::tempdir().unwrap();
        cluster_init(d.path(), "t").unwrap();
        assert!(
            cluster_init(d.path(), "t").is_err(),
            "never overwrites a CA"
        );
        let (crt, key) = cluster_issue(d.path(), "node-a", d.path()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::metadata(&crt).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let tls =
            load_node_tls(&d.path().join(CA_CERT), &crt, &key, Duration::from_secs(3)).unwrap();
        assert_eq!(tls.name, "node-a");
        assert!(cluster_issue(d.path(), "Bad Name", d.path()).is_err());
    }
}
