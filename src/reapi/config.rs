//! How to reach a REAPI server: address, TLS, instance name, credentials, deadlines.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where a credential comes from. The value itself is read only when a connection
/// is made (after a local miss), and never shown.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthSource {
    /// `authorization: Bearer <file content, trimmed>`.
    TokenFile(PathBuf),
    /// `authorization: Bearer <the variable's value>`.
    TokenEnv(String),
    /// A header of its own (`x-buildbuddy-api-key`, say) from a variable.
    HeaderEnv { header: String, var: String },
    /// A header of its own from a file (trimmed).
    HeaderFile { header: String, path: PathBuf },
    /// A header and its value, resolved already (for a process that must not read
    /// this one's files or environment: farmd's agent).
    Resolved { header: String, value: String },
}

impl std::fmt::Debug for AuthSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl AuthSource {
    /// The header the credential goes in.
    pub fn header(&self) -> &str {
        match self {
            AuthSource::TokenFile(_) | AuthSource::TokenEnv(_) => "authorization",
            AuthSource::HeaderEnv { header, .. }
            | AuthSource::HeaderFile { header, .. }
            | AuthSource::Resolved { header, .. } => header,
        }
    }

    /// Where the credential comes from, for `farm config` and messages: never its
    /// value.
    pub fn describe(&self) -> String {
        match self {
            AuthSource::TokenFile(p) => format!("bearer(file:{})", p.display()),
            AuthSource::TokenEnv(v) => format!("bearer(env:{v})"),
            AuthSource::HeaderEnv { header, var } => format!("{header}(env:{var})"),
            AuthSource::HeaderFile { header, path } => {
                format!("{header}(file:{})", path.display())
            }
            AuthSource::Resolved { header, .. } => format!("{header}(***)"),
        }
    }

    /// The header's value, read now.
    pub fn resolve(&self) -> Result<(String, String), String> {
        let read = |p: &PathBuf| {
            std::fs::read_to_string(p)
                .map(|s| s.trim().to_string())
                .map_err(|e| format!("credential file {}: {e}", p.display()))
        };
        let env = |v: &str| {
            std::env::var(v)
                .ok()
                .filter(|s| !s.is_empty())
                .ok_or_else(|| format!("credential variable {v} is not set"))
        };
        let value = match self {
            AuthSource::TokenFile(p) => format!("Bearer {}", read(p)?),
            AuthSource::TokenEnv(v) => format!("Bearer {}", env(v)?),
            AuthSource::HeaderEnv { var, .. } => env(var)?,
            AuthSource::HeaderFile { path, .. } => read(path)?,
            AuthSource::Resolved { value, .. } => value.clone(),
        };
        Ok((self.header().to_ascii_lowercase(), value))
    }
}

/// One REAPI server as configured.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReapiConfig {
    /// `host:port`.
    pub authority: String,
    /// `grpcs://`: TLS (webpki roots, plus `ca_file` when given).
    pub tls: bool,
    /// The instance name (`""` is the default instance of most servers).
    pub instance: String,
    pub auth: Option<AuthSource>,
    /// A PEM file of CA certificates to trust besides the webpki roots.
    pub ca_file: Option<PathBuf>,
    pub connect_timeout: Duration,
    /// The deadline of one call (a retry after UNAVAILABLE gets its own).
    pub call_timeout: Duration,
}

impl std::fmt::Debug for ReapiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReapiConfig")
            .field("server", &self.server())
            .field("instance", &self.instance)
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

impl ReapiConfig {
    /// A plaintext server at `host:port`, default instance, no credentials.
    pub fn plain(authority: &str) -> ReapiConfig {
        ReapiConfig {
            authority: authority.to_string(),
            tls: false,
            instance: String::new(),
            auth: None,
            ca_file: None,
            connect_timeout: Duration::from_secs(2),
            call_timeout: Duration::from_secs(10),
        }
    }

    /// The server as messages name it (`reapi://host:port`, `grpcs://host:port`).
    pub fn server(&self) -> String {
        let scheme = if self.tls { "grpcs" } else { "reapi" };
        format!("{scheme}://{}", self.authority)
    }

    /// The prefix of ByteStream resource names: `""` or `"instance/"`.
    pub(crate) fn resource_prefix(&self) -> String {
        if self.instance.is_empty() {
            String::new()
        } else {
            format!("{}/", self.instance.trim_matches('/'))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_resolve_from_files_and_variables_and_never_show() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "  s3cret\n").unwrap();
        let file = AuthSource::TokenFile(token.clone());
        assert_eq!(
            file.resolve().unwrap(),
            ("authorization".to_string(), "Bearer s3cret".to_string())
        );
        let header = AuthSource::HeaderFile {
            header: "X-BuildBuddy-API-Key".into(),
            path: token,
        };
        assert_eq!(header.resolve().unwrap().0, "x-buildbuddy-api-key");
        let missing = AuthSource::HeaderEnv {
            header: "x-key".into(),
            var: "FARM_TEST_SURELY_UNSET_VARIABLE".into(),
        };
        let e = missing.resolve().unwrap_err();
        assert!(e.contains("FARM_TEST_SURELY_UNSET_VARIABLE"), "{e}");
        let gone = AuthSource::TokenFile(dir.path().join("nope"));
        assert!(gone.resolve().unwrap_err().contains("nope"));
        let mut cfg = ReapiConfig::plain("h:1");
        cfg.auth = Some(AuthSource::Resolved {
            header: "authorization".into(),
            value: "Bearer s3cret".into(),
        });
        assert!(!format!("{cfg:?}").contains("s3cret"));
        assert_eq!(cfg.server(), "reapi://h:1");
        cfg.instance = "/main/".into();
        assert_eq!(cfg.resource_prefix(), "main/");
    }
}
