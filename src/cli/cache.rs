//! `farm cache clear | dir`.

use super::{err, load, out};
use crate::store::LocalStore;

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
        _ => err("usage: farm cache clear | farm cache dir"),
    }
}
