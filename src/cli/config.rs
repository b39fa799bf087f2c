//! `farm config [--json]`: the effective configuration and where each value came from.

use super::{flags, load, out};

pub(super) fn run(rest: &[String]) -> i32 {
    let f = match flags(rest, &["--json"], "config") {
        Ok(f) => f,
        Err(c) => return c,
    };
    let cfg = match load() {
        Ok(c) => c,
        Err(c) => return c,
    };
    let rows = cfg.describe();
    if f.contains(&"--json") {
        let mut m = serde_json::Map::new();
        for (k, v, src) in rows {
            m.insert(k.into(), serde_json::json!({ "value": v, "source": src }));
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
        t.push_str(&format!("  {k:<10} {v:<40} ({src})\n"));
    }
    out(&t);
    0
}
