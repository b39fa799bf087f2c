//! `farm cache clear | dir | remotes | ping`.

use super::args::CacheCommand;
use super::{err, load, out};
use crate::config::Config;
use crate::store::remote::RemoteTier;
use crate::store::LocalStore;

/// `farm cache remotes`: the remote tiers in the order a local miss asks them, each
/// with its attributes in force, where the list was set, and whether this machine
/// is skipping it after a failure. Asks no server.
fn remotes(cfg: &Config) -> i32 {
    let list = &cfg.remote_storage;
    if list.value.is_empty() {
        out(&format!("no remote storage configured ({})\n", list.source));
        return 0;
    }
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let mut t = format!(
        "remote storage ({}), asked in this order after a local miss:\n",
        list.source
    );
    for (i, spec) in list.value.iter().enumerate() {
        let attrs: Vec<String> = super::config::remote_attributes(spec, &env)
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        t.push_str(&format!(
            "  {}. {}\n     {}\n",
            i + 1,
            spec.url,
            attrs.join(" ")
        ));
        let tier = RemoteTier::new(spec.clone(), &cfg.dir.value);
        if let Some((until, what)) = tier.skipped_until() {
            let left = until
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default();
            t.push_str(&format!(
                "     skipped ({what}) for {} s more after a failure (`farm cache ping` tries it now)\n",
                left.as_secs()
            ));
        }
    }
    out(&t);
    0
}

/// `farm cache ping`: each remote tier, tried now (its skip after a failure reset):
/// one line per remote; exit 1 when one failed.
fn ping(cfg: &Config) -> i32 {
    if cfg.remote_storage.value.is_empty() {
        out(&format!(
            "no remote storage configured ({})\n",
            cfg.remote_storage.source
        ));
        return 0;
    }
    let mut failed = false;
    for spec in &cfg.remote_storage.value {
        let tier = RemoteTier::new(spec.clone(), &cfg.dir.value);
        let ro = if spec.read_only { " (read-only)" } else { "" };
        match tier.ping() {
            Ok(steps) => {
                let times: Vec<String> = steps
                    .iter()
                    .map(|(what, d)| format!("{what} {:.1} ms", d.as_secs_f64() * 1000.0))
                    .collect();
                out(&format!("{}{ro}: ok ({})\n", spec.url, times.join(", ")));
            }
            Err(e) => {
                failed = true;
                out(&format!("{}{ro}: FAILED: {e}\n", spec.url));
            }
        }
    }
    i32::from(failed)
}

pub(super) fn run(command: CacheCommand) -> i32 {
    let cfg = match load() {
        Ok(c) => c,
        Err(c) => return c,
    };
    match command {
        CacheCommand::Clear => {
            let store = LocalStore::new(&cfg.dir.value, cfg.max_size.value);
            // The records `farm why` keeps go with the entries they explain.
            let _ = std::fs::remove_dir_all(cfg.dir.value.join("why"));
            match store.clear() {
                Ok(n) => {
                    out(&format!(
                        "removed {n} entries from {}\n",
                        store.root().display()
                    ));
                    0
                }
                Err(e) => err(format!("cannot clear {}: {e}", store.root().display())),
            }
        }
        CacheCommand::Dir => {
            out(&format!("{}\n", cfg.dir.value.display()));
            0
        }
        CacheCommand::Ping => ping(&cfg),
        CacheCommand::Remotes => remotes(&cfg),
    }
}
