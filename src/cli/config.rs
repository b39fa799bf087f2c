//! `farm config [--json]`: the effective configuration and where each value came from.
//! The remote tiers get a block of their own: each URL (password hidden), every
//! attribute in force (defaults included) and where the list was set.

use super::{load, out};
use crate::config::Config;
use crate::stats::TierKind;
use crate::store::remote::{Layout, RemoteSpec, Scheme};

pub(super) fn run(json: bool) -> i32 {
    let cfg = match load() {
        Ok(c) => c,
        Err(c) => return c,
    };
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let rows = cfg.describe();
    if json {
        let mut m = serde_json::Map::new();
        for (k, v, src) in rows {
            let mut entry = serde_json::json!({ "value": v, "source": src });
            if k == "remote_storage" {
                entry["tiers"] = cfg
                    .remote_storage
                    .value
                    .iter()
                    .map(|spec| {
                        let attrs: serde_json::Map<String, serde_json::Value> =
                            remote_attributes(spec, &env)
                                .into_iter()
                                .map(|(k, v)| (k.to_string(), v.into()))
                                .collect();
                        serde_json::json!({ "url": spec.url, "attributes": attrs, "source": src })
                    })
                    .collect();
            }
            m.insert(k.into(), entry);
        }
        m.insert(
            "config_file".into(),
            serde_json::json!({ "path": cfg.file, "exists": cfg.file_exists }),
        );
        out(&format!(
            "{}\n",
            serde_json::to_string_pretty(&m).expect("json")
        ));
        return 0;
    }
    let mut t = format!(
        "config file: {}{}\n",
        cfg.file.display(),
        if cfg.file_exists {
            ""
        } else {
            " (not present)"
        }
    );
    for (k, v, src) in rows {
        if k == "remote_storage" && !cfg.remote_storage.value.is_empty() {
            let n = cfg.remote_storage.value.len();
            let tiers = format!("{n} tier{}", if n == 1 { "" } else { "s" });
            t.push_str(&format!("  {k:<14} {tiers:<40} ({src})\n"));
            t.push_str(&remote_lines(&cfg, "    ", &env));
        } else {
            t.push_str(&format!("  {k:<14} {v:<40} ({src})\n"));
        }
    }
    out(&t);
    0
}

/// Two lines per remote tier, in the order they are asked: the URL (password
/// hidden), then every attribute in force as `name=value`.
pub(super) fn remote_lines(
    cfg: &Config,
    indent: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> String {
    let mut t = String::new();
    for (i, spec) in cfg.remote_storage.value.iter().enumerate() {
        let attrs: Vec<String> = remote_attributes(spec, env)
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        t.push_str(&format!("{indent}{}. {}\n", i + 1, spec.url));
        t.push_str(&format!("{indent}   {}\n", attrs.join(" ")));
    }
    t
}

/// Every attribute of a remote tier in force, defaults included, and for an S3
/// tier where its region and keys come from; credentials are named, never shown.
pub(super) fn remote_attributes(
    spec: &RemoteSpec,
    env: &dyn Fn(&str) -> Option<String>,
) -> Vec<(&'static str, String)> {
    let mut a = vec![
        ("kind", TierKind::of_remote(spec.scheme).name().to_string()),
        (
            "access",
            if spec.read_only {
                "read-only"
            } else {
                "read-write"
            }
            .to_string(),
        ),
    ];
    match spec.scheme {
        Scheme::Redis | Scheme::Rediss => {
            a.push(("server", spec.endpoint.clone()));
            let db = if spec.path.is_empty() {
                "0"
            } else {
                &spec.path
            };
            a.push(("db", db.to_string()));
        }
        Scheme::S3 => {
            a.push(("bucket", spec.bucket.clone()));
            a.push(("prefix", format!("/{}", spec.path)));
            let region = match &spec.region {
                Some(r) => format!("{r}(url)"),
                None => ["AWS_REGION", "AWS_DEFAULT_REGION"]
                    .iter()
                    .find_map(|v| env(v).map(|r| format!("{r}(env:{v})")))
                    .unwrap_or_else(|| "us-east-1(default)".into()),
            };
            a.push(("region", region));
            a.push((
                "endpoint",
                spec.s3_endpoint
                    .clone()
                    .unwrap_or_else(|| "AWS(default)".into()),
            ));
            let keys = if env("AWS_ACCESS_KEY_ID").is_some() {
                "env:AWS_ACCESS_KEY_ID"
            } else {
                "AWS-default-chain(no AWS_ACCESS_KEY_ID)"
            };
            a.push(("credentials", keys.into()));
        }
        Scheme::Http | Scheme::WebDav => {
            a.push(("server", spec.endpoint.clone()));
            a.push(("path", format!("/{}", spec.path)));
        }
        Scheme::Gha => {
            let found = env("ACTIONS_CACHE_URL").is_some() || env("ACTIONS_RESULTS_URL").is_some();
            a.push((
                "runner",
                if found {
                    "found(ACTIONS_*)"
                } else {
                    "not-found(no ACTIONS_CACHE_URL/ACTIONS_RESULTS_URL)"
                }
                .into(),
            ));
        }
        // Its server, instance and credential source follow.
        Scheme::Reapi => {}
    }
    if let Some(r) = &spec.reapi {
        a.push(("server", r.server()));
        a.push(("instance", format!("{:?}", r.instance)));
        a.push((
            "credentials",
            r.auth
                .as_ref()
                .map_or_else(|| "none".into(), |s| s.describe()),
        ));
        if let Some(ca) = &r.ca_file {
            a.push(("ca-file", ca.display().to_string()));
        }
    } else if spec.scheme != Scheme::S3 && spec.scheme != Scheme::Gha {
        let creds = match (&spec.username, &spec.password) {
            (Some(u), Some(_)) => format!("user:{u},password:hidden"),
            (Some(u), None) => format!("user:{u}"),
            (None, Some(_)) => "password:hidden".into(),
            (None, None) => "none".into(),
        };
        a.push(("credentials", creds));
    }
    a.push((
        "connect-timeout",
        format!("{}ms", spec.connect_timeout.as_millis()),
    ));
    a.push(("timeout", format!("{}ms", spec.op_timeout.as_millis())));
    if spec.scheme == Scheme::Reapi {
        // Entries are named by their Action (docs/reapi.md): no prefix, no layout.
        return a;
    }
    let prefix = spec.key_prefix.trim_end_matches('/');
    a.push((
        "key-prefix",
        if prefix.is_empty() {
            "(none)".into()
        } else {
            prefix.to_string()
        },
    ));
    a.push((
        "layout",
        match spec.layout {
            Layout::Farm => "farm",
            Layout::Bazel => "bazel",
        }
        .into(),
    ));
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_in_force_without_secrets() {
        let no_env = |_: &str| None;
        let r = crate::store::remote::spec::parse_one(
            "redis://farm:s3cret@cache:6379/2|read-only|key-prefix=team|connect-timeout=50ms",
        )
        .unwrap();
        let a = remote_attributes(&r, &no_env);
        let text = format!("{a:?}");
        assert!(!text.contains("s3cret"), "{text}");
        for want in [
            ("kind", "redis"),
            ("access", "read-only"),
            ("db", "2"),
            ("credentials", "user:farm,password:hidden"),
            ("connect-timeout", "50ms"),
            ("timeout", "2000ms"),
            ("key-prefix", "team"),
            ("layout", "farm"),
        ] {
            assert!(
                a.contains(&(want.0, want.1.to_string())),
                "{want:?} in {a:?}"
            );
        }
        let r = crate::store::remote::spec::parse_one(
            "grpcs://bb.example|instance=main|header=x-api-key:BB_KEY",
        )
        .unwrap();
        let a = remote_attributes(&r, &no_env);
        let shown: Vec<String> = a.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(
            shown,
            [
                "kind=reapi",
                "access=read-write",
                "server=grpcs://bb.example:443",
                "instance=\"main\"",
                "credentials=x-api-key(env:BB_KEY)",
                "connect-timeout=500ms",
                "timeout=2000ms",
            ]
        );
        let s3 = crate::store::remote::spec::parse_one("s3://bucket/farm|layout=bazel").unwrap();
        let env = |k: &str| (k == "AWS_DEFAULT_REGION").then(|| "eu-west-3".to_string());
        let a = remote_attributes(&s3, &env);
        assert!(
            a.contains(&("region", "eu-west-3(env:AWS_DEFAULT_REGION)".into())),
            "{a:?}"
        );
        assert!(a.contains(&("prefix", "/farm".into())), "{a:?}");
        assert!(a.contains(&("layout", "bazel".into())), "{a:?}");
    }
}
