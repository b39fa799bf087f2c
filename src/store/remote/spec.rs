//! `remote_storage`: a space-separated list of remote tiers, each a URL with
//! `|attribute` suffixes, as ccache writes them:
//! `redis://cache:6379/2|read-only s3://bucket/farm|endpoint=http://minio:9000|region=eu`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What kind of server a remote tier is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Scheme {
    Redis,
    Rediss,
    S3,
    /// WebDAV (PUT, MKCOL): nginx's dav module, Apache mod_dav.
    WebDav,
    /// Plain HTTP(S): GET and PUT, as bazel-remote serves; `|layout=bazel` for its
    /// `ac/` + `cas/` paths.
    Http,
    /// The GitHub Actions cache (from the runner's environment).
    Gha,
    /// A REAPI server's Action Cache and CAS (`reapi://`/`grpc://` plaintext,
    /// `grpcs://` TLS): docs/reapi.md.
    Reapi,
}

/// How entries are named on the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Layout {
    /// `<prefix>/<kind>/<xx>/<hex key>`.
    Farm,
    /// The Bazel remote-cache layout: results and manifests under `ac/<hex>`, blobs
    /// under `cas/<hex>`.
    Bazel,
}

/// One remote tier, as configured. (It travels to this machine's agent, credentials
/// included, when the agent asks the remote for the shim: docs/protocol.md.)
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteSpec {
    /// The URL as written (without attributes), for messages and `farm config`.
    pub url: String,
    pub scheme: Scheme,
    /// Host and port (or S3 endpoint), as the server's client wants it.
    pub endpoint: String,
    /// The path inside the server: an S3 bucket's prefix, a WebDAV directory, a
    /// Redis database number.
    pub path: String,
    /// S3: the bucket.
    pub bucket: String,
    pub read_only: bool,
    pub connect_timeout: Duration,
    /// Per-operation limit (a read or a write).
    pub op_timeout: Duration,
    /// Prepended to every key (teams sharing one bucket, say).
    pub key_prefix: String,
    pub layout: Layout,
    /// S3: region and an explicit endpoint (MinIO, moto, Ceph).
    pub region: Option<String>,
    pub s3_endpoint: Option<String>,
    /// Credentials from `user:password@` (Redis, WebDAV/HTTP); never shown (`url`
    /// has the password replaced by `***`).
    pub username: Option<String>,
    pub password: Option<String>,
    /// S3 keys the shim took from its own environment for the agent, which must use
    /// these and nothing from its own environment or files (`None` when parsed: the
    /// shim's own S3 client finds credentials as AWS tools do).
    pub s3_keys: Option<S3Keys>,
    /// REAPI: the server, instance name, TLS and credential source (its timeouts are
    /// `connect_timeout` and `op_timeout`).
    pub reapi: Option<crate::reapi::ReapiConfig>,
}

/// Debug output never shows a password or a secret key.
impl std::fmt::Debug for RemoteSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteSpec")
            .field("url", &self.url)
            .field("scheme", &self.scheme)
            .field("read_only", &self.read_only)
            .field("key_prefix", &self.key_prefix)
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}

/// Explicit S3 credentials (for the agent's S3 client).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct S3Keys {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for S3Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("S3Keys(***)")
    }
}

/// A configuration error, naming the URL and what is wrong with it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("remote storage {url:?}: {msg}")]
pub struct SpecError {
    pub url: String,
    pub msg: String,
}

fn duration(v: &str) -> Option<Duration> {
    let v = v.trim();
    let (num, mult) = if let Some(n) = v.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000)
    } else {
        (v, 1)
    };
    let n: u64 = num.trim().parse().ok()?;
    let ms = n.checked_mul(mult)?;
    (ms > 0 && ms <= 600_000).then(|| Duration::from_millis(ms))
}

/// A `remote_storage` value with every password replaced by `***` (for messages).
pub fn redact_list(value: &str) -> String {
    value
        .split_whitespace()
        .map(|item| match item.split_once('|') {
            Some((u, attrs)) => format!("{}|{attrs}", redact(u)),
            None => redact(item),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `scheme://user:password@host/...` with the password replaced by `***`.
fn redact(raw: &str) -> String {
    let Some((scheme, rest)) = raw.split_once("://") else {
        return raw.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rsplit_once('@') {
        Some((creds, _)) if creds.contains(':') => {
            let user = creds.split_once(':').map(|c| c.0).unwrap_or("");
            let host_and_path = &rest[creds.len() + 1..];
            format!("{scheme}://{user}:***@{host_and_path}")
        }
        _ => raw.to_string(),
    }
}

/// Parses a `remote_storage` value: empty means none.
pub fn parse_list(value: &str) -> Result<Vec<RemoteSpec>, SpecError> {
    value.split_whitespace().map(parse_one).collect()
}

/// Parses one `URL|attr|attr=value` item.
pub fn parse_one(item: &str) -> Result<RemoteSpec, SpecError> {
    let mut parts = item.split('|');
    let raw = parts.next().unwrap_or_default().to_string();
    // The URL as shown anywhere: a password replaced by `***`.
    let url = redact(&raw);
    let err = |msg: String| SpecError {
        url: url.clone(),
        msg,
    };
    let (scheme_name, rest) = match raw.split_once("://") {
        Some(x) => x,
        None if raw == "gha" => ("gha", ""),
        None => {
            return Err(err(
                "not a URL (redis://, rediss://, s3://, http(s)://, webdav(s)://, reapi://, grpcs://, gha)".into(),
            ))
        }
    };
    let scheme = match scheme_name {
        "redis" => Scheme::Redis,
        "rediss" => Scheme::Rediss,
        "s3" => Scheme::S3,
        "http" | "https" => Scheme::Http,
        "webdav" | "webdavs" | "dav" | "davs" => Scheme::WebDav,
        "gha" => Scheme::Gha,
        "reapi" | "grpc" | "grpcs" => Scheme::Reapi,
        other => return Err(err(format!("unknown scheme {other:?}"))),
    };
    let (authority, path) = match rest.split_once('/') {
        Some((a, p)) => (a, p.trim_end_matches('/')),
        None => (rest, ""),
    };
    if path.contains(['?', '#']) {
        return Err(err("a query or fragment has no meaning here".into()));
    }
    // `user:password@host`: kept apart, and kept out of every message.
    let (username, password, authority) = match authority.rsplit_once('@') {
        Some((creds, host)) => {
            if scheme == Scheme::S3 || scheme == Scheme::Gha {
                return Err(err(
                    "credentials in the URL: use the AWS_* variables for S3".into(),
                ));
            }
            if scheme == Scheme::Reapi {
                return Err(err(
                    "credentials in the URL: use |token-file=, |token-env=, |header= or |header-file="
                        .into(),
                ));
            }
            let (u, p) = match creds.split_once(':') {
                Some((u, p)) => (u, Some(p.to_string())),
                None => (creds, None),
            };
            ((!u.is_empty()).then(|| u.to_string()), p, host)
        }
        None => (None, None, authority),
    };
    if authority.is_empty() && scheme != Scheme::Gha {
        return Err(err("no host".into()));
    }
    let mut spec = RemoteSpec {
        url: url.clone(),
        scheme,
        endpoint: match scheme {
            Scheme::Redis => format!("redis://{authority}"),
            Scheme::Rediss => format!("rediss://{authority}"),
            Scheme::Http => format!("{scheme_name}://{authority}"),
            Scheme::WebDav if scheme_name.ends_with('s') => format!("https://{authority}"),
            Scheme::WebDav => format!("http://{authority}"),
            Scheme::S3 | Scheme::Gha => String::new(),
            Scheme::Reapi => authority.to_string(),
        },
        path: path.to_string(),
        bucket: if scheme == Scheme::S3 {
            authority.to_string()
        } else {
            String::new()
        },
        read_only: false,
        connect_timeout: Duration::from_millis(100),
        op_timeout: Duration::from_millis(2000),
        key_prefix: String::new(),
        layout: Layout::Farm,
        region: None,
        s3_endpoint: None,
        username,
        password,
        s3_keys: None,
        reapi: None,
    };
    let mut reapi = (scheme == Scheme::Reapi)
        .then(|| reapi_config(scheme_name, authority, path))
        .transpose()
        .map_err(err)?;
    if reapi.is_some() {
        // A gRPC connect and TLS handshake over a WAN take longer than Redis's.
        spec.connect_timeout = Duration::from_millis(500);
    }
    let redis = scheme == Scheme::Redis || scheme == Scheme::Rediss;
    if redis && !path.is_empty() && path.parse::<u32>().is_err() {
        return Err(err(format!("Redis database {path:?} is not a number")));
    }
    for attr in parts {
        let (name, value) = match attr.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim())),
            None => (attr.trim(), None),
        };
        let need = |v: Option<&str>| {
            v.filter(|v| !v.is_empty())
                .map(str::to_string)
                .ok_or_else(|| err(format!("attribute {name:?} needs a value")))
        };
        match name {
            "read-only" => {
                spec.read_only = match value {
                    None | Some("true" | "yes" | "1") => true,
                    Some("false" | "no" | "0") => false,
                    Some(v) => return Err(err(format!("read-only={v:?}: true or false"))),
                }
            }
            "connect-timeout" => {
                spec.connect_timeout = duration(&need(value)?).ok_or_else(|| {
                    err(format!(
                        "connect-timeout {value:?}: use milliseconds, e.g. 100ms"
                    ))
                })?
            }
            "operation-timeout" | "timeout" => {
                spec.op_timeout = duration(&need(value)?).ok_or_else(|| {
                    err(format!(
                        "{name} {value:?}: use milliseconds or seconds, e.g. 2s"
                    ))
                })?
            }
            "key-prefix" => {
                let p = need(value)?;
                spec.key_prefix = format!("{}/", p.trim_end_matches('/'));
            }
            "layout" => {
                spec.layout = match need(value)?.as_str() {
                    "farm" => Layout::Farm,
                    "bazel" => Layout::Bazel,
                    other => return Err(err(format!("layout {other:?}: farm or bazel"))),
                }
            }
            "region" if scheme == Scheme::S3 => spec.region = Some(need(value)?),
            "endpoint" if scheme == Scheme::S3 => spec.s3_endpoint = Some(need(value)?),
            "region" | "endpoint" => return Err(err(format!("{name} is for s3:// only"))),
            "instance" | "token-file" | "token-env" | "header" | "header-file" | "ca-file" => {
                let Some(r) = reapi.as_mut() else {
                    return Err(err(format!("{name} is for reapi:// and grpcs:// only")));
                };
                reapi_attribute(r, name, value).map_err(err)?
            }
            "" => {}
            other => return Err(err(format!("unknown attribute {other:?}"))),
        }
    }
    if let Some(mut r) = reapi {
        if !spec.key_prefix.is_empty() || spec.layout != Layout::Farm {
            return Err(err(
                "key-prefix and layout have no meaning for a REAPI server: keep teams apart with |instance="
                    .into(),
            ));
        }
        r.connect_timeout = spec.connect_timeout;
        r.call_timeout = spec.op_timeout;
        spec.reapi = Some(r);
    }
    Ok(spec)
}

/// A REAPI server from `reapi://host:port` (`grpc://`) or `grpcs://host[:port]`
/// (443 by default).
fn reapi_config(
    scheme_name: &str,
    authority: &str,
    path: &str,
) -> Result<crate::reapi::ReapiConfig, String> {
    if !path.is_empty() {
        return Err(format!(
            "a path has no meaning here: name the instance with |instance={path}"
        ));
    }
    let tls = scheme_name == "grpcs";
    let has_port = authority
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && !p.contains(']') && p.parse::<u16>().is_ok());
    let authority = match (has_port, tls) {
        (true, _) => authority.to_string(),
        (false, true) => format!("{authority}:443"),
        (false, false) => return Err("needs a port (reapi://HOST:PORT)".into()),
    };
    let mut c = crate::reapi::ReapiConfig::plain(&authority);
    c.tls = tls;
    Ok(c)
}

/// One REAPI attribute: `instance=NAME`, `token-file=PATH`, `token-env=VAR`,
/// `header=NAME:VAR`, `header-file=NAME:PATH`, `ca-file=PATH`.
fn reapi_attribute(
    r: &mut crate::reapi::ReapiConfig,
    name: &str,
    value: Option<&str>,
) -> Result<(), String> {
    use crate::reapi::AuthSource;
    let value = value.unwrap_or_default();
    if value.is_empty() && name != "instance" {
        return Err(format!("attribute {name:?} needs a value"));
    }
    let pair = || {
        value
            .split_once(':')
            .filter(|(h, v)| !h.is_empty() && !v.is_empty())
            .map(|(h, v)| (h.to_string(), v.to_string()))
            .ok_or_else(|| {
                format!(
                    "{name}={value:?}: use HEADER:{}",
                    if name == "header" { "VARIABLE" } else { "PATH" }
                )
            })
    };
    let auth = match name {
        "instance" => {
            r.instance = value.trim_matches('/').to_string();
            return Ok(());
        }
        "ca-file" => {
            r.ca_file = Some(value.into());
            return Ok(());
        }
        "token-file" => AuthSource::TokenFile(value.into()),
        "token-env" => AuthSource::TokenEnv(value.into()),
        "header" => {
            let (header, var) = pair()?;
            AuthSource::HeaderEnv { header, var }
        }
        _ => {
            let (header, path) = pair()?;
            AuthSource::HeaderFile {
                header,
                path: path.into(),
            }
        }
    };
    if r.auth.is_some() {
        return Err(
            "one credential per server (token-file, token-env, header or header-file)".into(),
        );
    }
    r.auth = Some(auth);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_attributes() {
        let l = parse_list(
            "redis://127.0.0.1:6379/2|read-only  s3://bucket/team/farm|endpoint=http://127.0.0.1:9000|region=eu-west-1 \
             https://cache.example/farm|layout=bazel|connect-timeout=50ms|timeout=3s gha",
        )
        .unwrap();
        assert_eq!(l.len(), 4);
        assert_eq!(
            (
                l[0].scheme,
                l[0].endpoint.as_str(),
                l[0].path.as_str(),
                l[0].read_only
            ),
            (Scheme::Redis, "redis://127.0.0.1:6379", "2", true)
        );
        assert_eq!(
            (
                l[1].bucket.as_str(),
                l[1].path.as_str(),
                l[1].s3_endpoint.as_deref()
            ),
            ("bucket", "team/farm", Some("http://127.0.0.1:9000"))
        );
        assert_eq!(l[1].region.as_deref(), Some("eu-west-1"));
        assert_eq!(
            (l[2].layout, l[2].connect_timeout, l[2].op_timeout),
            (
                Layout::Bazel,
                Duration::from_millis(50),
                Duration::from_secs(3)
            )
        );
        assert_eq!(l[3].scheme, Scheme::Gha);
        assert!(parse_list("").unwrap().is_empty());
    }

    #[test]
    fn credentials_are_kept_apart_and_never_shown() {
        let r = parse_one("redis://farm:s3cret@127.0.0.1:6379/1|read-only=false").unwrap();
        assert_eq!(
            (
                r.username.as_deref(),
                r.password.as_deref(),
                r.endpoint.as_str()
            ),
            (Some("farm"), Some("s3cret"), "redis://127.0.0.1:6379")
        );
        assert_eq!(r.url, "redis://farm:***@127.0.0.1:6379/1");
        assert!(!r.read_only);
        let e = parse_one("redis://u:s3cret@h|bogus")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("s3cret"), "{e}");
        assert!(!format!("{r:?}").contains("s3cret"), "{r:?}");
        assert!(parse_one("s3://k:s@bucket").is_err());
        assert_eq!(
            parse_one("redis://h|key-prefix=team").unwrap().key_prefix,
            "team/"
        );
    }

    #[test]
    fn reapi_servers_and_their_attributes() {
        use crate::reapi::AuthSource;
        let r = parse_one("reapi://127.0.0.1:8980|instance=main|timeout=3s").unwrap();
        assert_eq!(r.scheme, Scheme::Reapi);
        let c = r.reapi.as_ref().unwrap();
        assert_eq!(
            (
                c.authority.as_str(),
                c.tls,
                c.instance.as_str(),
                c.call_timeout
            ),
            ("127.0.0.1:8980", false, "main", Duration::from_secs(3))
        );
        assert_eq!(c.connect_timeout, Duration::from_millis(500));
        let b =
            parse_one("grpcs://remote.buildbuddy.io|header=x-buildbuddy-api-key:BB_KEY").unwrap();
        let c = b.reapi.as_ref().unwrap();
        assert_eq!(
            (c.authority.as_str(), c.tls),
            ("remote.buildbuddy.io:443", true)
        );
        assert_eq!(
            c.auth,
            Some(AuthSource::HeaderEnv {
                header: "x-buildbuddy-api-key".into(),
                var: "BB_KEY".into()
            })
        );
        let t = parse_one("grpc://h:1|token-file=/etc/farm/token|ca-file=/etc/ca.pem").unwrap();
        let c = t.reapi.unwrap();
        assert_eq!(
            c.auth.as_ref().unwrap().describe(),
            "bearer(file:/etc/farm/token)"
        );
        assert_eq!(
            c.ca_file.as_deref(),
            Some(std::path::Path::new("/etc/ca.pem"))
        );
        // A resolved credential never shows.
        let secret = AuthSource::Resolved {
            header: "authorization".into(),
            value: "Bearer s3cret".into(),
        };
        assert!(!format!("{secret:?}").contains("s3cret"));
    }

    #[test]
    fn errors_name_the_url_and_the_problem() {
        for (item, want) in [
            ("ftp://x", "unknown scheme"),
            ("redis://x/abc", "not a number"),
            ("redis://x|bogus", "unknown attribute"),
            ("redis://x|connect-timeout=soon", "connect-timeout"),
            ("redis://x|key-prefix", "needs a value"),
            ("cache.example", "not a URL"),
            ("redis://", "no host"),
            ("https://x|layout=flat", "layout"),
            ("reapi://x", "needs a port"),
            ("reapi://x:1/main", "|instance=main"),
            ("reapi://u@x:1", "credentials in the URL"),
            ("redis://x|instance=a", "for reapi:// and grpcs:// only"),
            ("grpcs://x|header=foo", "HEADER:VARIABLE"),
            ("grpcs://x|token-env=A|token-file=/t", "one credential"),
            ("reapi://x:1|key-prefix=team", "|instance="),
        ] {
            let e = parse_one(item).unwrap_err();
            assert!(e.to_string().contains(want), "{item}: {e}");
            assert!(
                e.to_string().contains(item.split('|').next().unwrap()),
                "{item}: {e}"
            );
        }
    }
}
