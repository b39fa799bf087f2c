//! `farm why SOURCE` and `farm why -- COMPILER ARGS...`: why a compile missed (or
//! would), in words: what differs from the nearest earlier compile of the source.

use std::ffi::OsString;
use std::path::Path;

use serde_json::json;

use super::{err, load, out};
use crate::config::Config;
use crate::why::diff::{self, Finding};
use crate::why::{self, Outcome, Record};

/// Fails with a one-line message: nothing to explain.
fn nothing(msg: impl std::fmt::Display) -> i32 {
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!("farm why: {msg}\n").as_bytes(),
    );
    1
}

pub(super) fn run(args: super::args::WhyArgs) -> i32 {
    let json = args.json;
    let source = args.source;
    let command = Some(args.command).filter(|c| !c.is_empty());
    let cfg = match load() {
        Ok(c) => c,
        Err(c) => return c,
    };
    match (source, command) {
        (None, Some(cmd)) => predict(&cfg, cmd, json),
        (Some(src), None) => last_miss(&cfg, &src, json),
        (Some(_), Some(_)) => {
            err("why: a source or a command after `--`, not both (try `farm why --help`)")
        }
        (None, None) => err("why: name a source or a command after `--` (try `farm why --help`)"),
    }
}

fn ago(t: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let s = now.saturating_sub(t);
    match s {
        0..=119 => format!("{s} s ago"),
        120..=7199 => format!("{} min ago", s / 60),
        7200..=172_799 => format!("{} h ago", s / 3600),
        _ => format!("{} days ago", s / 86400),
    }
}

fn outcome_text(o: &Outcome) -> String {
    match o {
        Outcome::Stored => "a miss, stored".into(),
        Outcome::NotStored(r) => format!("a miss, nothing stored ({r})"),
        Outcome::Passthrough { reason, detail } if detail.is_empty() => {
            format!("not cacheable ({reason})")
        }
        Outcome::Passthrough { reason, detail } => format!("not cacheable ({reason}: {detail})"),
    }
}

/// "12 s ago, direct mode, a miss, stored\n    in DIR: CMD"
fn describe(r: &Record) -> String {
    let mode = if r.mode == "none" {
        String::new()
    } else {
        format!("{} mode, ", r.mode)
    };
    format!(
        "{}, {mode}{}:\n    in {}: {}",
        ago(r.time_s),
        outcome_text(&r.outcome),
        r.cwd,
        r.argv.join(" ")
    )
}

fn summary(r: &Record) -> serde_json::Value {
    json!({
        "time": r.time_s,
        "cwd": r.cwd,
        "argv": r.argv,
        "mode": r.mode,
        "outcome": outcome_text(&r.outcome),
        "compiler": r.compiler.path,
        "truncated": r.truncated,
    })
}

fn findings_text(f: &[Finding]) -> String {
    f.iter().map(|x| format!("  - {}\n", x.text)).collect()
}

/// Records that were keyed (a pass-through decided before keying has no fields).
fn keyed(records: &[Record]) -> Vec<Record> {
    records
        .iter()
        .filter(|r| !r.fields.is_empty())
        .cloned()
        .collect()
}

fn no_difference(nearest: &Record) -> String {
    match &nearest.outcome {
        Outcome::Stored => "no key input farm records differs from that compile, whose result was \
             stored: the entry is no longer in the local cache (evicted to stay under max_size, \
             `farm cache clear`, or stored under another cache directory or base_dir)"
            .into(),
        Outcome::NotStored(r) => format!(
            "no key input farm records differs from that compile, but it stored nothing ({r}), \
             so there was nothing to hit"
        ),
        Outcome::Passthrough { reason, .. } => format!(
            "no key input farm records differs from that compile, but it was not cacheable ({reason})"
        ),
    }
}

fn last_miss(cfg: &Config, src: &Path, json: bool) -> i32 {
    let cwd = std::env::current_dir().unwrap_or_default();
    let source = why::absolute_source(&cwd, src);
    let records = match why::load_checked(&cfg.dir.value, &source) {
        Ok(r) => r,
        Err(e) => return nothing(format!("{}: {e}", source.display())),
    };
    let Some(last) = records.first() else {
        return nothing(format!(
            "no miss of {} is recorded (records are kept for misses, in {}; `farm cache clear` removes them)",
            source.display(),
            cfg.dir.value.join("why").display()
        ));
    };
    let mut text = format!(
        "{}: last compiled {}\n",
        diff::show_path(&source.to_string_lossy(), &cwd.to_string_lossy()),
        describe(last)
    );
    let mut doc = json!({"source": source, "last": summary(last)});
    if let Outcome::Passthrough { reason, detail } = &last.outcome {
        text.push_str(&format!(
            "it was not cacheable, so farm ran the compiler untouched: {reason}{}\n",
            if detail.is_empty() {
                String::new()
            } else {
                format!(" ({detail})")
            }
        ));
        doc["verdict"] = json!("not_cacheable");
        doc["reason"] = json!(reason);
        doc["detail"] = json!(detail);
        return answer(json, &text, doc);
    }
    let earlier = keyed(&records[1..]);
    let Some((nearest, findings)) = diff::nearest(last, &earlier) else {
        text.push_str("no earlier record of this source: the first compile of it farm saw (or older records were dropped)\n");
        doc["verdict"] = json!("first");
        return answer(json, &text, doc);
    };
    text.push_str(&format!(
        "compared with the nearest earlier compile, {}\n",
        describe(nearest)
    ));
    doc["nearest"] = summary(nearest);
    if findings.is_empty() {
        text.push_str(&format!("{}\n", no_difference(nearest)));
        doc["verdict"] = json!("no_difference");
    } else {
        text.push_str("what differs:\n");
        text.push_str(&findings_text(&findings));
        doc["verdict"] = json!("explained");
    }
    if last.truncated || nearest.truncated {
        text.push_str("(a record was truncated: it had more fields or inputs than farm keeps)\n");
    }
    doc["findings"] = json!(findings);
    answer(json, &text, doc)
}

fn answer(json: bool, text: &str, doc: serde_json::Value) -> i32 {
    if json {
        out(&format!("{doc}\n"));
    } else {
        out(text);
    }
    0
}

fn predict(cfg: &Config, mut cmd: Vec<OsString>, json: bool) -> i32 {
    // A command from a build log may start with farm's launcher.
    if cmd.len() > 1 && Path::new(&cmd[0]).file_name().is_some_and(|n| n == "farm") {
        cmd.remove(0);
    }
    let requested = cmd.remove(0);
    let resolved = match crate::entry::resolve_compiler(&requested) {
        Ok(r) => r,
        Err(e) => return nothing(e),
    };
    let arg0 = if resolved.skipped_farm {
        resolved.path.clone().into_os_string()
    } else {
        requested
    };
    let p = match crate::shim::predict(cfg, &resolved.path, &resolved.canonical, arg0, cmd) {
        Ok(p) => p,
        Err(e) => return nothing(e),
    };
    let cwd = std::env::current_dir().unwrap_or_default();
    let shown = p
        .source
        .as_ref()
        .map(|s| diff::show_path(&s.to_string_lossy(), &cwd.to_string_lossy()))
        .unwrap_or_else(|| "this command".into());
    let mut doc = json!({"source": p.source});
    if let Some((reason, detail)) = &p.passthrough {
        doc["verdict"] = json!("not_cacheable");
        doc["reason"] = json!(reason);
        doc["detail"] = json!(detail);
        let text = format!(
            "{shown}: would not be cached; farm would run the compiler untouched: {reason}{}\n",
            if detail.is_empty() {
                String::new()
            } else {
                format!(" ({detail})")
            }
        );
        return answer(json, &text, doc);
    }
    let (Some(source), Some(mut now)) = (p.source, p.now) else {
        return nothing("the command names no source");
    };
    if let Some(hit) = &p.hit {
        doc["verdict"] = json!("would_hit");
        doc["entry"] = json!(hit);
        let text = format!(
            "{shown}: would hit the local cache ({} mode, {hit})\n",
            now.mode
        );
        return answer(json, &text, doc);
    }
    let records = keyed(&why::load(&cfg.dir.value, &source));
    let mut text = format!("{shown}: would miss the local cache ({} mode)\n", now.mode);
    doc["verdict"] = json!("would_miss");
    let Some((nearest, _)) = diff::nearest(&now, &records) else {
        text.push_str("no earlier record of this source: farm has not seen it miss before (or the records were dropped)\n");
        doc["reason"] = json!("first");
        return answer(json, &text, doc);
    };
    // What the nearest compile read, as it is on disk now.
    if nearest.content.inputs_known {
        let source_digest = now.content.source;
        now.content = why::probe(&nearest.content);
        now.content.source = source_digest;
    }
    let findings = diff::diff(nearest, &now);
    text.push_str(&format!(
        "compared with the nearest earlier compile, {}\n",
        describe(nearest)
    ));
    doc["nearest"] = summary(nearest);
    if findings.is_empty() {
        text.push_str(&format!("{}\n", no_difference(nearest)));
    } else {
        text.push_str("what differs:\n");
        text.push_str(&findings_text(&findings));
    }
    doc["findings"] = json!(findings);
    answer(json, &text, doc)
}
