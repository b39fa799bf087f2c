//! The page `farm report` writes: one HTML file with its CSS, SVG and script inline
//! (nothing fetched, opens offline).

use std::fmt::Write as _;
use std::path::Path;

use super::{Build, Counts, Report, MAX_DRAWN};
use crate::journal::Kind;

/// The plot's width in pixels, and its label column's.
const PLOT_W: f64 = 1000.0;
const LABEL_W: f64 = 150.0;
const LANE_H: f64 = 10.0;
const PLACE_GAP: f64 = 6.0;
const AXIS_H: f64 = 18.0;
/// Rows of the directory table.
const MAX_DIR_ROWS: usize = 100;

const STYLE: &str = "
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;max-width:1300px}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0}td,th{padding:2px 10px;text-align:right;border-bottom:1px solid #eee}
td:first-child,th:first-child,td.l{text-align:left}th{background:#f4f4f4}
.note{color:#666}.bad{color:#b00}
svg{background:#fafafa;border:1px solid #ddd}
rect.hit{fill:#2e9e44}rect.miss{fill:#3b6fd6}rect.passthrough{fill:#aaa}rect.error{fill:#d33}
.key span{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;vertical-align:middle}
text{font:11px system-ui,sans-serif;fill:#444}
";

const SCRIPT: &str = "
var pal=['#1b9e77','#d95f02','#7570b3','#e7298a','#66a61e','#e6ab02','#a6761d','#666','#1f78b4','#b15928'];
function colour(byHost){document.querySelectorAll('rect[data-p]').forEach(function(r){
r.style.fill=byHost?pal[r.getAttribute('data-p')%pal.length]:'';});
document.querySelectorAll('button.by').forEach(function(b){
b.textContent=byHost?'colour by outcome':'colour by host';});window.byHost=byHost;}
";

/// Escapes text for HTML (element content and quoted attributes).
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

fn secs(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}

/// `s` cut to `n` characters (a label in the timeline's left column).
fn short(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

fn rate(c: &Counts) -> String {
    c.hit_rate()
        .map(|r| format!("{r:.0}%"))
        .unwrap_or_else(|| "–".into())
}

/// A Unix time in ms as UTC `YYYY-MM-DD HH:MM:SS`.
fn utc(ms: u64) -> String {
    let s = ms / 1000;
    let (days, rem) = (s / 86_400, s % 86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

pub fn render(r: &Report, journal: &Path) -> String {
    let mut h = String::with_capacity(64 << 10);
    let title = format!("farm report: {}", journal.display());
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{}</title><style>{STYLE}</style><script>{SCRIPT}</script></head><body>\n<h1>{}</h1>\n",
        esc(&title),
        esc(&title)
    );
    let c = &r.counts;
    let _ = writeln!(
        h,
        "<p>{} compiles in {} build(s) (a new build starts after {} with no compile). \
         Hit rate <b id=\"hit-rate\">{}</b> ({} hits, {} misses), {} pass-through(s), {} error(s). \
         Time saved <b id=\"time-saved\">{}</b>.</p>",
        c.total(),
        r.builds.len(),
        secs(r.gap_ms),
        rate(c),
        c.hit,
        c.miss,
        c.passthrough,
        c.error,
        secs(c.saved_ms)
    );
    if let Some(first) = r.first_bad {
        let _ = writeln!(
            h,
            "<p class=\"bad\">{} bad line(s) in {} skipped, the first at line {first}.</p>",
            r.bad,
            esc(&journal.display().to_string())
        );
    }
    if r.dropped > 0 {
        let _ = writeln!(
            h,
            "<p class=\"note\">{} compiles left off the builds below (only the longest {} are kept for them); the totals count every line.</p>",
            r.dropped,
            super::MAX_BARS
        );
    }
    builds_table(&mut h, r);
    for (i, b) in r.builds.iter().enumerate() {
        timeline(&mut h, r, i, b);
    }
    slowest(&mut h, r);
    dirs(&mut h, r);
    places(&mut h, r);
    reasons(&mut h, r);
    h.push_str("</body></html>\n");
    h
}

fn builds_table(h: &mut String, r: &Report) {
    h.push_str(
        "<h2>Builds</h2><table id=\"builds\"><tr><th>build</th><th>started</th><th>wall</th>\
         <th>compiles</th><th>hits</th><th>misses</th><th>pass-through</th><th>errors</th>\
         <th>hit rate</th><th>time saved</th></tr>\n",
    );
    for (i, b) in r.builds.iter().enumerate() {
        let c = &b.counts;
        let _ = writeln!(
            h,
            "<tr><td><a href=\"#build-{n}\">{n}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td class=\"rate\">{}</td><td>{}</td></tr>",
            utc(b.start_ms),
            secs(b.end_ms - b.start_ms),
            c.total(),
            c.hit,
            c.miss,
            c.passthrough,
            c.error,
            rate(c),
            secs(c.saved_ms),
            n = i + 1,
        );
    }
    let c = &r.counts;
    let _ = writeln!(
        h,
        "<tr><th>all</th><th></th><th></th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th>\
         <th>{}</th><th>{}</th></tr></table>",
        c.total(),
        c.hit,
        c.miss,
        c.passthrough,
        c.error,
        rate(c),
        secs(c.saved_ms)
    );
}

/// One build's timeline: a lane group per place, compiles packed into lanes (a
/// lane holds compiles that did not overlap: a slot), one bar each.
fn timeline(h: &mut String, r: &Report, index: usize, b: &Build) {
    let span = (b.end_ms - b.start_ms).max(1) as f64;
    // Lanes per place: the end of the last bar in each.
    let mut lanes: Vec<Vec<u64>> = vec![Vec::new(); r.places.len()];
    let mut lane_of = Vec::with_capacity(b.bars.len());
    for bar in &b.bars {
        let ends = &mut lanes[bar.place];
        let lane = match ends.iter().position(|&e| e <= bar.start_ms) {
            Some(l) => l,
            None => {
                ends.push(0);
                ends.len() - 1
            }
        };
        ends[lane] = bar.end_ms();
        lane_of.push(lane);
    }
    let mut top = vec![0.0; r.places.len()];
    let mut y = AXIS_H;
    let mut labels = String::new();
    for (p, ends) in lanes.iter().enumerate() {
        if ends.is_empty() {
            continue;
        }
        top[p] = y;
        let _ = write!(
            labels,
            "<text x=\"4\" y=\"{:.0}\">{} ({})</text>",
            y + LANE_H,
            esc(&short(&r.places[p].name, 18)),
            ends.len()
        );
        y += ends.len() as f64 * LANE_H + PLACE_GAP;
    }
    let height = y + 4.0;
    let width = LABEL_W + PLOT_W + 10.0;
    let _ = write!(
        h,
        "<h2 id=\"build-{n}\">Build {n}: timeline</h2>\n<p class=\"key\">{} over {}; one bar per compile, \
         one row per slot, grouped by where it ran (hits: where they were restored). \
         <span style=\"background:#2e9e44\"></span>hit<span style=\"background:#3b6fd6\"></span>miss\
         <span style=\"background:#aaa\"></span>pass-through<span style=\"background:#d33\"></span>error \
         <button class=\"by\" onclick=\"colour(!window.byHost)\">colour by host</button></p>\n",
        if b.undrawn > 0 {
            format!("The {MAX_DRAWN} longest compiles ({} not drawn)", b.undrawn)
        } else {
            format!("{} compiles", b.bars.len())
        },
        secs(b.end_ms - b.start_ms),
        n = index + 1,
    );
    let _ = write!(
        h,
        "<svg class=\"timeline\" width=\"{width:.0}\" height=\"{height:.0}\" viewBox=\"0 0 {width:.0} {height:.0}\">{labels}"
    );
    for t in 0..=5 {
        let x = LABEL_W + PLOT_W * t as f64 / 5.0;
        let _ = write!(
            h,
            "<line x1=\"{x:.1}\" y1=\"{AXIS_H}\" x2=\"{x:.1}\" y2=\"{height:.0}\" stroke=\"#e4e4e4\"/>\
             <text x=\"{:.1}\" y=\"12\">{}</text>",
            x - 10.0,
            secs((span * t as f64 / 5.0) as u64)
        );
    }
    for (bar, lane) in b.bars.iter().zip(lane_of) {
        let x = LABEL_W + (bar.start_ms - b.start_ms) as f64 / span * PLOT_W;
        let w = (bar.ms as f64 / span * PLOT_W).max(1.0);
        let y = top[bar.place] + lane as f64 * LANE_H;
        let mut tip = format!("{}\n{}\n{} ms", bar.label, bar.detail, bar.ms);
        if bar.compile_ms > 0 {
            let _ = write!(tip, ", compile {} ms", bar.compile_ms);
        }
        if bar.saved_ms > 0 {
            let _ = write!(tip, ", saved {} ms", bar.saved_ms);
        }
        let _ = write!(
            h,
            "<rect class=\"{}\" data-p=\"{}\" x=\"{x:.1}\" y=\"{y:.0}\" width=\"{w:.1}\" height=\"{:.0}\"><title>{}</title></rect>",
            bar.kind.name(),
            bar.place,
            LANE_H - 1.0,
            esc(&tip)
        );
    }
    h.push_str("</svg>\n");
}

fn slowest(h: &mut String, r: &Report) {
    h.push_str(
        "<h2>Slowest compiles</h2><table id=\"slowest\"><tr><th>source</th><th>outcome</th>\
         <th>where</th><th>wall ms</th><th>compile ms</th></tr>\n",
    );
    for b in &r.slowest {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td class=\"l\">{}</td><td class=\"l\">{}</td><td>{}</td><td>{}</td></tr>",
            esc(&b.label),
            esc(&b.detail),
            esc(&r.places[b.place].name),
            b.ms,
            b.compile_ms
        );
    }
    h.push_str("</table>\n");
}

fn dirs(h: &mut String, r: &Report) {
    let mut rows: Vec<(&String, &Counts)> = r.dirs.iter().collect();
    rows.sort_by(|a, b| b.1.total().cmp(&a.1.total()).then(a.0.cmp(b.0)));
    h.push_str(
        "<h2>Hit rate by directory</h2><table id=\"dirs\"><tr><th>directory</th><th>compiles</th>\
         <th>hits</th><th>misses</th><th>hit rate</th><th>pass-through</th><th>errors</th>\
         <th>time saved</th></tr>\n",
    );
    for (d, c) in rows.iter().take(MAX_DIR_ROWS) {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(d),
            c.total(),
            c.hit,
            c.miss,
            rate(c),
            c.passthrough,
            c.error,
            secs(c.saved_ms)
        );
    }
    h.push_str("</table>\n");
    if rows.len() > MAX_DIR_ROWS {
        let _ = writeln!(
            h,
            "<p class=\"note\">{} more directories.</p>",
            rows.len() - MAX_DIR_ROWS
        );
    }
}

fn places(h: &mut String, r: &Report) {
    h.push_str(
        "<h2>What ran where</h2><table id=\"where\"><tr><th>machine</th><th>compiles</th>\
         <th>compile time</th><th>of which for other machines</th><th>in a warm compiler</th>\
         <th>hits restored</th><th>pass-through</th></tr>\n",
    );
    let mut rows: Vec<_> = r.places.iter().collect();
    rows.sort_by(|a, b| b.compile_ms.cmp(&a.compile_ms).then(a.name.cmp(&b.name)));
    for p in rows {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&p.name),
            p.compiles,
            secs(p.compile_ms),
            p.for_others,
            p.warm,
            p.hits,
            p.passthrough
        );
    }
    h.push_str("</table>\n");
}

fn reasons(h: &mut String, r: &Report) {
    for (id, title, map) in [
        ("reasons", "Pass-through and error reasons", &r.reasons),
        (
            "events",
            "Fallbacks, compiles sent home, results not stored, cache errors",
            &r.events,
        ),
    ] {
        let _ = writeln!(
            h,
            "<h2>{title}</h2><table id=\"{id}\"><tr><th>counter</th><th>compiles</th></tr>"
        );
        let mut rows: Vec<_> = map.iter().collect();
        rows.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        for (k, n) in rows {
            let _ = writeln!(h, "<tr><td>{}</td><td>{n}</td></tr>", esc(k));
        }
        if map.is_empty() {
            h.push_str("<tr><td class=\"note\">none</td><td></td></tr>\n");
        }
        h.push_str("</table>\n");
    }
    let _ = writeln!(
        h,
        "<p class=\"note\">Counter names are those of <code>farm stats</code> (docs/stats.md). \
         Outcomes: {}.</p>",
        Kind::ALL.map(Kind::name).join(", ")
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_dates() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_700_000_000_000), "2023-11-14 22:13:20 UTC");
    }

    #[test]
    fn page_is_self_contained_and_names_sources() {
        let mut text = Vec::new();
        for (i, kind) in [Kind::Miss, Kind::Hit, Kind::Passthrough]
            .iter()
            .enumerate()
        {
            let mut l = crate::journal::Line::begin(std::time::Instant::now(), Path::new("gcc"));
            l.cwd = "/w".into();
            l.start_ms = 1000 + i as u64;
            l.ms = 5;
            l.set_source(Path::new(&format!("<b>{i}.c")));
            l.outcome = *kind;
            text.extend(l.encode());
        }
        let r = Report::read(&text[..], 10_000).unwrap();
        let page = render(&r, Path::new("j.jsonl"));
        assert!(!page.contains("http://") && !page.contains("https://"));
        assert!(page.contains("&lt;b&gt;0.c") && page.contains("&lt;b&gt;1.c"));
        assert!(!page.contains("<b>0.c"));
        assert!(page.contains("<b id=\"hit-rate\">50%</b>"), "{page}");
        assert_eq!(page.matches("<rect class=").count(), 3);
    }
}
