//! `farm report JOURNAL [-o OUT.html] [--gap SECONDS]`: one self-contained HTML page
//! from a build journal (docs/journal.md): the builds it holds (split where nothing
//! ran for `--gap` seconds), a timeline of each, the slowest compiles, hit rate by
//! directory, time saved, what ran where, and the reasons for pass-throughs and
//! fallbacks. The journal is read line by line: memory grows with the compiles
//! shown on timelines (capped), never with the file.

use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use super::{err, out};
use crate::journal::{self, Kind, Line};

#[path = "report_html.rs"]
mod html;

/// The longest journal line read; a longer one is a bad line.
const MAX_READ_LINE: usize = 4 * journal::MAX_LINE;
/// Compiles kept for timelines and per-build figures; past this, the longest are kept.
const MAX_BARS: usize = 200_000;
/// Bars drawn on one build's timeline (its longest compiles).
pub(super) const MAX_DRAWN: usize = 20_000;
/// Rows of the slowest-compiles table.
const SLOWEST: usize = 25;
/// Directories tracked for the hit rate; later ones count under "(other)".
const MAX_DIRS: usize = 20_000;

pub fn run(journal: Option<PathBuf>, output: Option<PathBuf>, gap: f64) -> i32 {
    if !(gap.is_finite() && gap >= 0.0) {
        return err("report: --gap needs a number of seconds");
    }
    let gap_ms = (gap * 1000.0) as u64;
    let Some(journal) = journal else {
        return err("report: which journal? (usage: farm report JOURNAL [-o OUT.html])");
    };
    let output = output.unwrap_or_else(|| journal.with_extension("html"));
    let file = match std::fs::File::open(&journal) {
        Ok(f) => f,
        Err(e) => return err(format!("report: cannot read {}: {e}", journal.display())),
    };
    let report = match Report::read(file, gap_ms) {
        Ok(r) => r,
        Err(e) => return err(format!("report: cannot read {}: {e}", journal.display())),
    };
    if let Some(line) = report.first_bad {
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            format!(
                "farm: report: {}: {} bad line(s) skipped, the first at line {line}\n",
                journal.display(),
                report.bad
            )
            .as_bytes(),
        );
    }
    let page = html::render(&report, &journal);
    if let Err(e) = crate::fsutil::write_atomic(&output, page.as_bytes()) {
        return err(format!("report: cannot write {}: {e}", output.display()));
    }
    out(&format!("{}\n", output.display()));
    0
}

/// Counts by outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub hit: u64,
    pub miss: u64,
    pub passthrough: u64,
    pub error: u64,
    pub saved_ms: u64,
}

impl Counts {
    fn add(&mut self, kind: Kind, saved_ms: u64) {
        match kind {
            Kind::Hit => self.hit += 1,
            Kind::Miss => self.miss += 1,
            Kind::Passthrough => self.passthrough += 1,
            Kind::Error => self.error += 1,
        }
        self.saved_ms = self.saved_ms.saturating_add(saved_ms);
    }

    pub fn total(&self) -> u64 {
        self.hit + self.miss + self.passthrough + self.error
    }

    /// Hits over hits and misses (as `farm stats`), in percent; `None` without either.
    pub fn hit_rate(&self) -> Option<f64> {
        let n = self.hit + self.miss;
        (n > 0).then(|| 100.0 * self.hit as f64 / n as f64)
    }
}

/// One compile as timelines and tables show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bar {
    pub start_ms: u64,
    pub ms: u64,
    pub kind: Kind,
    /// Index into [`Report::places`]: where it ran (or was answered).
    pub place: usize,
    /// The source (as given), else the compiler.
    pub label: String,
    /// Outcome in words: `hit.direct from local`, `passthrough.link`, …
    pub detail: String,
    pub compile_ms: u64,
    pub saved_ms: u64,
}

impl Bar {
    pub fn end_ms(&self) -> u64 {
        self.start_ms + self.ms
    }
}

impl PartialOrd for Bar {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Longest first (a min-heap of `Reverse<Bar>` keeps the longest).
impl Ord for Bar {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.ms, self.start_ms, &self.label).cmp(&(other.ms, other.start_ms, &other.label))
    }
}

/// A place compiles ran: a machine (shims there, hits restored there, home and warm
/// compiles) or a peer that compiled for others.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Place {
    pub name: String,
    /// Hits answered on this machine.
    pub hits: u64,
    /// Compiles run here (misses and failed compiles).
    pub compiles: u64,
    /// Of those, in farmd's warm compiler.
    pub warm: u64,
    /// Of those, for another machine (this place is a peer's worker).
    pub for_others: u64,
    pub compile_ms: u64,
    pub passthrough: u64,
}

/// One build: compiles with no gap longer than the report's between them.
#[derive(Clone, Debug, Default)]
pub struct Build {
    pub start_ms: u64,
    pub end_ms: u64,
    pub counts: Counts,
    /// Its compiles, by start (at most [`MAX_DRAWN`] of them: the longest).
    pub bars: Vec<Bar>,
    /// Compiles not drawn.
    pub undrawn: u64,
}

/// Everything `farm report` shows, gathered in one pass over the journal.
#[derive(Debug, Default)]
pub struct Report {
    /// Lines read (blank ones left out).
    pub lines: u64,
    pub bad: u64,
    /// The first bad line's number in the file.
    pub first_bad: Option<u64>,
    pub counts: Counts,
    pub gap_ms: u64,
    pub builds: Vec<Build>,
    /// Compiles left off timelines and per-build figures past [`MAX_BARS`].
    pub dropped: u64,
    pub places: Vec<Place>,
    /// Directory of the source → counts.
    pub dirs: BTreeMap<String, Counts>,
    /// Longest compiles first (pass-throughs left out: their time is the compiler's).
    pub slowest: Vec<Bar>,
    /// `passthrough.<reason>` and error reasons → compiles.
    pub reasons: BTreeMap<String, u64>,
    /// Fallback, sent-home, not-stored and error counters → compiles that counted one.
    pub events: BTreeMap<String, u64>,
}

impl Report {
    /// Reads a journal line by line. Lines that do not parse are counted (the first's
    /// number kept), never fatal; only a read error is.
    pub fn read(input: impl Read, gap_ms: u64) -> std::io::Result<Report> {
        let mut r = Report {
            gap_ms,
            ..Report::default()
        };
        let mut place_of: HashMap<String, usize> = HashMap::new();
        let mut bars: BinaryHeap<std::cmp::Reverse<Bar>> = BinaryHeap::new();
        let mut slowest: BinaryHeap<std::cmp::Reverse<Bar>> = BinaryHeap::new();
        let mut reader = BufReader::with_capacity(64 << 10, input);
        let mut buf = Vec::with_capacity(MAX_READ_LINE);
        let mut number = 0;
        while let Some(fits) = read_line(&mut reader, &mut buf, MAX_READ_LINE)? {
            number += 1;
            // A blank line is no compile and no damage.
            if fits && buf.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            r.lines += 1;
            let parsed = std::str::from_utf8(&buf)
                .ok()
                .filter(|_| fits)
                .map(|t| t.trim())
                .filter(|t| !t.is_empty())
                .map(journal::parse_line);
            match parsed {
                Some(Ok(line)) => r.add(line, &mut place_of, &mut bars, &mut slowest),
                _ => {
                    r.bad += 1;
                    r.first_bad.get_or_insert(number);
                }
            }
        }
        r.slowest = slowest.into_sorted_vec().into_iter().map(|b| b.0).collect();
        r.split_builds(bars.into_vec().into_iter().map(|b| b.0).collect());
        Ok(r)
    }

    fn place(&mut self, name: &str, place_of: &mut HashMap<String, usize>) -> usize {
        if let Some(&i) = place_of.get(name) {
            return i;
        }
        self.places.push(Place {
            name: name.to_string(),
            ..Place::default()
        });
        place_of.insert(name.to_string(), self.places.len() - 1);
        self.places.len() - 1
    }

    fn add(
        &mut self,
        line: Line,
        place_of: &mut HashMap<String, usize>,
        bars: &mut BinaryHeap<std::cmp::Reverse<Bar>>,
        slowest: &mut BinaryHeap<std::cmp::Reverse<Bar>>,
    ) {
        let saved = line.saved_ms.unwrap_or(0);
        self.counts.add(line.outcome, saved);
        let host = if line.host.is_empty() {
            "(this machine)"
        } else {
            &line.host
        };
        let on_peer = line.ran.as_deref() == Some("peer");
        let at = match (&line.peer, on_peer) {
            (Some(peer), true) => peer.as_str(),
            (None, true) => "(a peer)",
            _ => host,
        };
        let i = self.place(at, place_of);
        let compile_ms = line.compile_ms.unwrap_or(0);
        let p = &mut self.places[i];
        match line.outcome {
            Kind::Hit => p.hits += 1,
            Kind::Passthrough => p.passthrough += 1,
            Kind::Miss | Kind::Error if line.ran.is_some() => {
                p.compiles += 1;
                p.compile_ms = p.compile_ms.saturating_add(compile_ms);
                p.warm += u64::from(line.ran.as_deref() == Some("warm"));
                p.for_others += u64::from(on_peer);
            }
            _ => {}
        }
        let dir = line
            .source_abs
            .as_deref()
            .map(|s| Path::new(s).parent().unwrap_or(Path::new("/")))
            .map(|d| d.to_string_lossy().into_owned())
            .unwrap_or_else(|| format!("{} (no source)", line.cwd));
        let dirs_full = self.dirs.len() >= MAX_DIRS && !self.dirs.contains_key(&dir);
        let dir = if dirs_full { "(other)".into() } else { dir };
        self.dirs.entry(dir).or_default().add(line.outcome, saved);
        if let Some(reason) = &line.reason {
            *self.reasons.entry(reason.clone()).or_default() += 1;
        }
        for e in &line.events {
            *self.events.entry(e.clone()).or_default() += 1;
        }
        let bar = Bar {
            start_ms: line.start_ms,
            ms: line.ms,
            kind: line.outcome,
            place: i,
            detail: detail(&line),
            label: line
                .source
                .clone()
                .unwrap_or_else(|| format!("({})", line.compiler)),
            compile_ms,
            saved_ms: saved,
        };
        if line.outcome != Kind::Passthrough {
            keep_longest(slowest, bar.clone(), SLOWEST);
        }
        if bars.len() >= MAX_BARS {
            self.dropped += 1;
        }
        keep_longest(bars, bar, MAX_BARS);
    }

    /// Splits the kept compiles into builds at every gap longer than `gap_ms` in
    /// which nothing ran, and keeps each build's longest for its timeline.
    fn split_builds(&mut self, mut bars: Vec<Bar>) {
        bars.sort_by_key(|b| (b.start_ms, b.ms));
        let mut current: Option<(Build, Vec<Bar>)> = None;
        for bar in bars {
            let starts_new = match &current {
                Some((b, _)) => bar.start_ms > b.end_ms.saturating_add(self.gap_ms),
                None => true,
            };
            if starts_new {
                if let Some(done) = current.take() {
                    self.builds.push(finish_build(done));
                }
                current = Some((
                    Build {
                        start_ms: bar.start_ms,
                        end_ms: bar.end_ms(),
                        ..Build::default()
                    },
                    Vec::new(),
                ));
            }
            let (b, list) = current.as_mut().expect("a build is open");
            b.end_ms = b.end_ms.max(bar.end_ms());
            b.counts.add(bar.kind, bar.saved_ms);
            list.push(bar);
        }
        if let Some(done) = current.take() {
            self.builds.push(finish_build(done));
        }
    }
}

fn finish_build((mut build, mut bars): (Build, Vec<Bar>)) -> Build {
    if bars.len() > MAX_DRAWN {
        build.undrawn = (bars.len() - MAX_DRAWN) as u64;
        bars.sort_by(|a, b| b.cmp(a));
        bars.truncate(MAX_DRAWN);
        bars.sort_by_key(|b| (b.start_ms, b.ms));
    }
    build.bars = bars;
    build
}

fn keep_longest(heap: &mut BinaryHeap<std::cmp::Reverse<Bar>>, bar: Bar, cap: usize) {
    if heap.len() < cap {
        heap.push(std::cmp::Reverse(bar));
    } else if heap.peek().is_some_and(|least| bar > least.0) {
        heap.pop();
        heap.push(std::cmp::Reverse(bar));
    }
}

/// A compile's outcome in a few words, for hovers and tables.
fn detail(l: &Line) -> String {
    let mut s = String::from(l.outcome.name());
    match l.outcome {
        Kind::Hit => {
            if let Some(tier) = &l.tier {
                s += &format!(" from {tier}");
            }
        }
        Kind::Miss | Kind::Error => match (l.ran.as_deref(), &l.peer) {
            (Some("peer"), Some(p)) => s += &format!(" on {p}"),
            (Some(r), _) => s += &format!(" ({r})"),
            _ => {}
        },
        Kind::Passthrough => {}
    }
    if let Some(r) = &l.reason {
        s += &format!(": {r}");
    }
    if !l.events.is_empty() {
        s += &format!(" [{}]", l.events.join(", "));
    }
    s
}

/// Reads one line into `buf` (without its newline), keeping at most `cap` bytes.
/// `Some(false)`: the line was longer (the rest is skipped); `None` at the end.
fn read_line(r: &mut impl BufRead, buf: &mut Vec<u8>, cap: usize) -> std::io::Result<Option<bool>> {
    buf.clear();
    let mut fits = true;
    let mut any = false;
    loop {
        let chunk = match r.fill_buf() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            return Ok(any.then_some(fits));
        }
        any = true;
        let (part, done, found_end) = match memchr::memchr(b'\n', chunk) {
            Some(i) => (&chunk[..i], i + 1, true),
            None => (chunk, chunk.len(), false),
        };
        if buf.len() + part.len() <= cap {
            buf.extend_from_slice(part);
        } else {
            fits = false;
        }
        r.consume(done);
        if found_end {
            return Ok(Some(fits));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(start: u64, ms: u64, src: &str, outcome: Kind) -> Line {
        let mut l = Line::begin(std::time::Instant::now(), Path::new("gcc"));
        l.host = "home".into();
        l.cwd = "/w".into();
        l.start_ms = start;
        l.ms = ms;
        l.set_source(Path::new(src));
        l.outcome = outcome;
        l
    }

    fn journal(lines: &[Line]) -> Vec<u8> {
        lines.iter().flat_map(|l| l.encode()).collect()
    }

    #[test]
    fn builds_split_at_gaps_with_hit_rates() {
        let mut lines = Vec::new();
        for i in 0..4 {
            let mut l = line(1_000 + i * 10, 50, &format!("src/f{i}.c"), Kind::Miss);
            l.ran = Some("home".into());
            l.compile_ms = Some(45);
            lines.push(l);
        }
        for i in 0..4 {
            let mut l = line(100_000 + i, 1, &format!("src/f{i}.c"), Kind::Hit);
            l.saved_ms = Some(44);
            l.tier = Some("local".into());
            lines.push(l);
        }
        let mut p = line(100_010, 0, "", Kind::Passthrough);
        p.reason = Some("passthrough.link".into());
        lines.push(p);
        let r = Report::read(&journal(&lines)[..], 10_000).unwrap();
        assert_eq!(r.builds.len(), 2);
        assert_eq!(r.builds[0].counts.hit_rate(), Some(0.0));
        assert_eq!(r.builds[1].counts.hit_rate(), Some(100.0));
        assert_eq!(r.counts.hit_rate(), Some(50.0));
        assert_eq!(r.counts.saved_ms, 4 * 44);
        assert_eq!(r.dirs["/w/src"].hit, 4);
        assert_eq!(r.reasons["passthrough.link"], 1);
        assert_eq!(r.places.len(), 1);
        assert_eq!(r.places[0].compiles, 4);
        assert_eq!(r.places[0].compile_ms, 180);
        assert_eq!(r.slowest[0].ms, 50);
        assert!(r.slowest.iter().all(|b| b.kind != Kind::Passthrough));
        // One build when the gap allowed is longer than the pause.
        let r = Report::read(&journal(&lines)[..], 200_000).unwrap();
        assert_eq!(r.builds.len(), 1);
    }

    #[test]
    fn peers_are_places_and_bad_lines_are_counted() {
        let mut l = line(5, 30, "a.c", Kind::Miss);
        l.ran = Some("peer".into());
        l.peer = Some("node-b".into());
        l.compile_ms = Some(20);
        l.events = vec!["fallback.timeout".into()];
        let mut text = b"not json\n\n".to_vec();
        text.extend(journal(&[l]));
        text.extend(b"{\"v\":1}\n");
        text.extend(vec![b'x'; 3 * MAX_READ_LINE]);
        let r = Report::read(&text[..], 10_000).unwrap();
        assert_eq!(r.bad, 3);
        assert_eq!(r.first_bad, Some(1));
        assert_eq!(r.counts.miss, 1);
        let peer = r.places.iter().find(|p| p.name == "node-b").unwrap();
        assert_eq!(
            (peer.compiles, peer.for_others, peer.compile_ms),
            (1, 1, 20)
        );
        assert_eq!(r.events["fallback.timeout"], 1);
    }

    #[test]
    fn long_lines_are_skipped_without_holding_them() {
        let mut r = BufReader::with_capacity(16, &b"abcdefghij\nxy\nlast"[..]);
        let mut buf = Vec::new();
        assert_eq!(read_line(&mut r, &mut buf, 4).unwrap(), Some(false));
        assert!(buf.len() <= 4);
        assert_eq!(read_line(&mut r, &mut buf, 4).unwrap(), Some(true));
        assert_eq!(buf, b"xy");
        assert_eq!(read_line(&mut r, &mut buf, 4).unwrap(), Some(true));
        assert_eq!(buf, b"last");
        assert_eq!(read_line(&mut r, &mut buf, 4).unwrap(), None);
    }

    #[test]
    fn timelines_keep_the_longest_compiles() {
        let lines: Vec<Line> = (0..(MAX_DRAWN as u64 + 10))
            .map(|i| line(i, i % 1000, "a.c", Kind::Miss))
            .collect();
        let r = Report::read(&journal(&lines)[..], 10_000).unwrap();
        assert_eq!(r.builds.len(), 1);
        assert_eq!(r.builds[0].bars.len(), MAX_DRAWN);
        assert_eq!(r.builds[0].undrawn, 10);
        assert_eq!(r.builds[0].counts.miss, MAX_DRAWN as u64 + 10);
    }
}
