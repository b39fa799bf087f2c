//! `farm cache clear | dir | ping`.

use super::{err, load, out};
use crate::config::Config;
use crate::store::remote::RemoteTier;
use crate::store::LocalStore;

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

pub(super) fn run(rest: &[String]) -> i32 {
    let cfg = match load() {
        Ok(c) => c,
        Err(c) => return c,
    };
    match rest.first().map(String::as_str) {
        Some("clear") if rest.len() == 1 => {
            let store = LocalStore::new(&cfg.dir.value, cfg.max_size.value);
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
        Some("dir") if rest.len() == 1 => {
            out(&format!("{}\n", cfg.dir.value.display()));
            0
        }
        Some("ping") if rest.len() == 1 => ping(&cfg),
        _ => err("usage: farm cache clear | farm cache dir | farm cache ping"),
    }
}
