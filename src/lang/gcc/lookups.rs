//! Every include lookup a compile made: the compiler's search list (asked with
//! `-E -v`, memoized), each path where a lookup could land given the files the compile
//! read, precompiled headers that would shadow them, and the dependency scan for when
//! the compile's own list is incomplete.

use super::depfile::{parse_depfile, tmp_depfile};
use super::scan::{check_code_directives, scan_text, Scan};
use super::{plan, Lang};
use crate::fsutil::{self, DirCache, PathKind};
use crate::lang::{DependencyFacts, Invocation, NotRecordable, Passthrough};
use rustc_hash::FxHashSet as HashSet;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The include search list the compiler uses for these arguments.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SearchList {
    pub quote: Vec<PathBuf>,
    pub angle: Vec<PathBuf>,
    /// Directories the compiler dropped because they do not exist (yet).
    pub missing: Vec<PathBuf>,
}

/// Parses `cc -E -v` output.
pub fn parse_search_list(stderr: &[u8]) -> Option<SearchList> {
    let text = String::from_utf8_lossy(stderr);
    let mut sl = SearchList::default();
    let mut section = 0;
    let mut ended = false;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("ignoring nonexistent directory \"") {
            if let Some(d) = rest.strip_suffix('"') {
                sl.missing.push(PathBuf::from(d));
            }
        } else if line.starts_with("#include \"...\" search starts here") {
            section = 1;
        } else if line.starts_with("#include <...> search starts here") {
            section = 2;
        } else if line.starts_with("End of search list") {
            ended = true;
            section = 0;
        } else if let Some(d) = line.strip_prefix(' ') {
            let d = d.trim_end_matches(" (framework directory)").trim();
            match section {
                1 => sl.quote.push(PathBuf::from(d)),
                2 => sl.angle.push(PathBuf::from(d)),
                _ => {}
            }
        }
    }
    ended.then_some(sl)
}

/// The search list for this compile, from the memo in `scratch` when it has one.
pub(super) fn search_list(inv: &Invocation, scratch: &Path) -> Result<SearchList, NotRecordable> {
    let p = plan(inv);
    let cwd = std::env::current_dir().unwrap_or_default();
    let mut h = blake3::Hasher::new();
    h.update(b"farm-searchlist-1\0");
    h.update(inv.compiler.as_os_str().as_bytes());
    if let Ok(m) = std::fs::metadata(&inv.compiler) {
        use std::os::unix::fs::MetadataExt;
        h.update(&m.size().to_le_bytes());
        h.update(&m.mtime().to_le_bytes());
        h.update(&m.ino().to_le_bytes());
    }
    h.update(b"\0");
    h.update(cwd.as_os_str().as_bytes());
    h.update(b"\0");
    h.update(p.lang.x_name().as_bytes());
    for a in &p.search_args {
        h.update(b"\0");
        h.update(a.as_bytes());
    }
    for v in [
        "CPATH",
        "C_INCLUDE_PATH",
        "CPLUS_INCLUDE_PATH",
        "OBJC_INCLUDE_PATH",
        "GCC_EXEC_PREFIX",
        "COMPILER_PATH",
    ] {
        h.update(b"\0");
        if let Some(val) = std::env::var_os(v) {
            h.update(val.as_bytes());
        }
    }
    let memo = scratch.join(format!(
        "{}.search",
        fsutil::hex(&h.finalize().as_bytes()[..16])
    ));
    if let Some(sl) = read_search_memo(&memo) {
        return Ok(sl);
    }
    let lang = match p.lang {
        Lang::CPreprocessed => "c",
        Lang::CxxPreprocessed => "c++",
        other => other.x_name(),
    };
    let out = Command::new(&inv.compiler)
        .arg0(&inv.arg0)
        .args(&p.search_args)
        .args(["-E", "-v", "-x", lang, "/dev/null", "-o", "/dev/null"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| NotRecordable {
            reason: "search_list_failed",
            detail: e.to_string(),
            preprocessor_ok: true,
            uses_time: false,
        })?;
    let sl = parse_search_list(&out.stderr)
        .filter(|_| out.status.success())
        .ok_or(NotRecordable {
            reason: "search_list_failed",
            detail: "no search list in `-E -v` output".into(),
            preprocessor_ok: true,
            uses_time: false,
        })?;
    // Memo: only the lines we parse. A failed write just means asking again.
    let text = search_memo_text(&sl);
    let _ = fsutil::create_cache_dir_all(scratch);
    let _ = fsutil::write_cache_atomic(&memo, &text);
    Ok(sl)
}

const SEARCH_MEMO_MAGIC: &str = "farm-search-1 ";

/// A search-list memo: a first line with the blake3 of the rest, then the lines of
/// `-E -v` output farm parses.
fn search_memo_text(sl: &SearchList) -> Vec<u8> {
    let mut text = String::new();
    for d in &sl.missing {
        text.push_str(&format!(
            "ignoring nonexistent directory \"{}\"\n",
            d.display()
        ));
    }
    text.push_str("#include \"...\" search starts here:\n");
    for d in &sl.quote {
        text.push_str(&format!(" {}\n", d.display()));
    }
    text.push_str("#include <...> search starts here:\n");
    for d in &sl.angle {
        text.push_str(&format!(" {}\n", d.display()));
    }
    text.push_str("End of search list.\n");
    let sum = blake3::hash(text.as_bytes());
    format!("{SEARCH_MEMO_MAGIC}{}\n{text}", sum.to_hex()).into_bytes()
}

/// The memoized search list, unless the memo is missing, from an older farm, or does
/// not match its checksum (then it is computed again and rewritten).
fn read_search_memo(memo: &Path) -> Option<SearchList> {
    let data = fsutil::read_file(memo).ok()?;
    let nl = memchr::memchr(b'\n', &data)?;
    let sum = data[..nl].strip_prefix(SEARCH_MEMO_MAGIC.as_bytes())?;
    let body = &data[nl + 1..];
    if sum != blake3::hash(body).to_hex().as_bytes() {
        return None;
    }
    parse_search_list(body)
}

/// Where `#include "name"` looks in `dir` (the cwd when `dir` is empty).
fn join_include(dir: &Path, name: &str) -> PathBuf {
    if dir.as_os_str().is_empty() {
        PathBuf::from(name)
    } else {
        dir.join(name)
    }
}

/// `name.gch`: the precompiled header gcc takes before `name`.
fn pch_path(p: &Path) -> PathBuf {
    let mut s = p.as_os_str().to_os_string();
    s.push(".gch");
    PathBuf::from(s)
}

/// The text of a preprocessor run, or why it cannot stand for the source: it failed
/// (the compiler reports that in its own words), or it used a precompiled header.
pub(super) fn preprocessed_text(
    inv: &Invocation,
    out: std::process::Output,
) -> Result<Vec<u8>, Passthrough> {
    if !out.status.success() {
        return Err(Passthrough::new(
            "preprocessor_error",
            inv.source.display().to_string(),
        ));
    }
    if let Some(gch) = pch_beside_preprocessed(&out.stdout) {
        return Err(Passthrough::new("pch_use", gch.display().to_string()));
    }
    check_code_directives(&out.stdout, &inv.source.display().to_string())?;
    Ok(out.stdout)
}

/// The first `.gch` beside a file named in `-E` line markers, if any: `gcc -E`
/// ignores precompiled headers, so its text would not show what the compile used.
fn pch_beside_preprocessed(text: &[u8]) -> Option<PathBuf> {
    let mut seen = HashSet::default();
    for line in text.split(|&c| c == b'\n') {
        // # 12 "path" flags
        if line.first() != Some(&b'#') {
            continue;
        }
        let Some(q1) = memchr::memchr(b'"', line) else {
            continue;
        };
        let Some(q2) = memchr::memrchr(b'"', line) else {
            continue;
        };
        if q2 <= q1 + 1 {
            continue;
        }
        let name = &line[q1 + 1..q2];
        if name.starts_with(b"<") || !seen.insert(name.to_vec()) {
            continue;
        }
        let gch = pch_path(Path::new(OsStr::from_bytes(name)));
        if std::fs::metadata(&gch).is_ok() {
            return Some(gch);
        }
    }
    None
}

/// Records every path where an include lookup of this compile could land, given the
/// files it read (`read`) and the search list. Paths that hold no file now go to
/// `probes`; files found there that the compile did not read go to `extra` (their
/// content then becomes part of the manifest too).
///
/// `closure`: `read` lacks system headers (the compiler wrote `-MMD` output). Every
/// file an include could reach is then followed as well, dead `#if` branches included:
/// a superset of what the compiler read, as long as no include is computed by a macro
/// (refused as `computed_include`, since such a lookup cannot be followed).
pub(super) fn record_lookups(
    read: &[PathBuf],
    source: &Path,
    forced: &[String],
    sl: &SearchList,
    closure: bool,
    watch: &[Vec<u8>],
) -> Result<DependencyFacts, NotRecordable> {
    walk_lookups(read, source, forced, sl, closure, false, watch)
}

/// Every file a compile of `source` could read, for a same-path job: the closure of
/// [`record_lookups`], where an include a macro computes is allowed. Its name is
/// unknown, so the set is made closed under shadowing instead: for each file found in
/// a search directory, the same name in every earlier directory (and in the
/// directories of files with computed includes) is taken too. A computed include then
/// finds on a worker the file it finds here, or no file at all (a failed compile,
/// which is done again here).
pub(super) fn reachable_inputs(
    source: &Path,
    forced: &[String],
    sl: &SearchList,
) -> Result<DependencyFacts, NotRecordable> {
    walk_lookups(&[], source, forced, sl, true, true, &[])
}

fn walk_lookups(
    read: &[PathBuf],
    source: &Path,
    forced: &[String],
    sl: &SearchList,
    closure: bool,
    computed_ok: bool,
    watch: &[Vec<u8>],
) -> Result<DependencyFacts, NotRecordable> {
    let mut rec = Recorder {
        read_set: read.iter().map(|p| path_key(p)).collect(),
        closure,
        computed_ok,
        watch: watch.to_vec(),
        ..Recorder::default()
    };
    rec.work.push(source.to_path_buf());
    rec.work.extend(read.iter().cloned());
    let chains = SearchChains::new(sl);
    // Forced includes are looked up from the cwd first, then like "name".
    for name in forced {
        let mut it = std::iter::once(PathBuf::from(name))
            .chain(chains.quote.iter().map(|d| join_include(d, name)));
        rec.visit(&mut it, false);
    }
    if closure {
        // gcc's implicit include, absent from -MMD output.
        let mut it = chains
            .angle
            .iter()
            .map(|d| join_include(d, "stdc-predef.h"));
        rec.visit(&mut it, false);
    }
    let mut computed_dirs = rec.walk(&chains)?;
    rec.visit_shadowing(read, computed_dirs.clone(), &chains.quote);
    // A closure follows what shadowing found too, until nothing new turns up.
    while rec.closure && !rec.work.is_empty() {
        computed_dirs.extend(rec.walk(&chains)?);
        computed_dirs.sort();
        computed_dirs.dedup();
        rec.visit_shadowing(read, computed_dirs.clone(), &chains.quote);
    }
    if let Some(p) = rec.pch {
        return Err(NotRecordable {
            reason: "pch_use",
            detail: p.display().to_string(),
            preprocessor_ok: false,
            uses_time: false,
        });
    }
    let (missing, not_file) = rec.classify();
    let mut files = read.to_vec();
    // With complete dependency output a file found but not read only has to stay
    // there (a `__has_include` answer); without, it may be a system header the
    // compile read, so its content counts.
    let present = if closure {
        files.append(&mut rec.extra);
        Vec::new()
    } else {
        std::mem::take(&mut rec.extra)
    };
    Ok(DependencyFacts {
        files,
        missing,
        not_file,
        present,
        path_macros: rec.path_macros,
        absolute_includes: rec.absolute_includes,
        computed_includes: rec.computed_includes,
        files_naming: rec.files_naming,
        resolved_dirs: Vec::new(),
    })
}

/// The directories an include lookup walks, in the compiler's order.
struct SearchChains<'a> {
    /// For `<name>`.
    angle: Vec<&'a Path>,
    /// For `"name"`, after the including file's own directory.
    quote: Vec<&'a Path>,
}

impl<'a> SearchChains<'a> {
    fn new(sl: &'a SearchList) -> SearchChains<'a> {
        // Nonexistent directories first: the compiler may start searching them any time.
        let angle = sl
            .missing
            .iter()
            .chain(sl.angle.iter())
            .map(|p| p.as_path())
            .collect();
        let quote = sl
            .missing
            .iter()
            .chain(sl.quote.iter())
            .chain(sl.angle.iter())
            .map(|p| p.as_path())
            .collect();
        SearchChains { angle, quote }
    }
}

/// What [`record_lookups`] gathers while it walks include lookups. Path sets are
/// keyed by cleaned bytes: this runs for tens of thousands of candidates.
#[derive(Default)]
struct Recorder {
    read_set: HashSet<Vec<u8>>,
    closure: bool,
    /// Computed includes are followed by shadowing rather than refused.
    computed_ok: bool,
    /// Files still to scan for directives.
    work: Vec<PathBuf>,
    seen: HashSet<Vec<u8>>,
    /// Lookup paths without a regular file, with what is there.
    probes: Vec<(PathBuf, PathKind)>,
    extra: Vec<PathBuf>,
    pch: Option<PathBuf>,
    dirs: DirCache,
    /// Files scanned that name a path macro (`__FILE__`, ...).
    path_macros: Vec<PathBuf>,
    /// Absolute names include directives gave.
    absolute_includes: Vec<PathBuf>,
    /// Files with an include a macro computes.
    computed_includes: Vec<PathBuf>,
    /// Strings to look for in every file scanned, and the files holding one.
    watch: Vec<Vec<u8>>,
    files_naming: Vec<PathBuf>,
}

fn path_key(p: &Path) -> Vec<u8> {
    fsutil::clean_bytes(p.as_os_str().as_bytes()).into_owned()
}

impl Recorder {
    /// Scans each file of the work list and follows the lookups its directives make.
    /// Returns the directories of files whose includes are computed by a macro.
    ///
    /// A time macro decides the outcome (`time_macro`, the first file found is
    /// named); the walk then goes on only to learn whether any file expands
    /// `__TIME__`, with nothing else refused.
    fn walk(&mut self, chains: &SearchChains) -> Result<Vec<PathBuf>, NotRecordable> {
        let mut computed_dirs: Vec<PathBuf> = Vec::new();
        let mut time_macro: Option<NotRecordable> = None;
        let mut scanned: HashSet<Vec<u8>> = HashSet::default();
        while let Some(f) = self.work.pop() {
            if !scanned.insert(path_key(&f)) {
                continue;
            }
            let Ok(text) = fsutil::read_file(&f) else {
                continue;
            };
            let dir = f.parent().unwrap_or(Path::new("")).to_path_buf();
            if let Some(nr) = &mut time_macro {
                let scan = scan_text(&text);
                if scan.uses_time() {
                    nr.uses_time = true;
                    break;
                }
                // Without `closure` the work list already holds every file read.
                if self.closure {
                    self.follow(&scan, &dir, chains);
                }
                continue;
            }
            if let Err(p) = check_code_directives(&text, &f.display().to_string()) {
                return Err(NotRecordable {
                    reason: p.reason,
                    detail: p.detail,
                    preprocessor_ok: false,
                    uses_time: false,
                });
            }
            let scan = scan_text(&text);
            if let Some(m) = scan.first_time_macro() {
                let nr = NotRecordable {
                    reason: "time_macro",
                    detail: format!("{m} in {}", f.display()),
                    preprocessor_ok: true,
                    uses_time: scan.uses_time(),
                };
                if nr.uses_time {
                    return Err(nr);
                }
                time_macro = Some(nr);
                if self.closure {
                    self.follow(&scan, &dir, chains);
                }
                continue;
            }
            if scan.path_macro {
                self.path_macros.push(f.clone());
            }
            let watched = |w: &Vec<u8>| {
                memchr::memmem::find(&text, w).is_some()
                    || (w.first() == Some(&b'\n') && text.starts_with(&w[1..]))
            };
            if self.watch.iter().any(watched) {
                self.files_naming.push(f.clone());
            }
            if scan.computed_has_include {
                return Err(NotRecordable {
                    reason: "computed_has_include",
                    detail: f.display().to_string(),
                    preprocessor_ok: true,
                    uses_time: false,
                });
            }
            if scan.computed_include {
                if self.closure && !self.computed_ok {
                    return Err(NotRecordable {
                        reason: "computed_include",
                        detail: f.display().to_string(),
                        preprocessor_ok: true,
                        uses_time: false,
                    });
                }
                computed_dirs.push(dir.clone());
                self.computed_includes.push(f.clone());
            }
            self.follow(&scan, &dir, chains);
        }
        match time_macro {
            Some(nr) => Err(nr),
            None => Ok(computed_dirs),
        }
    }

    /// Visits the candidates of every lookup `scan` found in a file of `dir`.
    fn follow(&mut self, scan: &Scan, dir: &Path, chains: &SearchChains) {
        for d in &scan.directives {
            if Path::new(&d.name).is_absolute() {
                self.absolute_includes.push(PathBuf::from(&d.name));
                self.visit(&mut std::iter::once(PathBuf::from(&d.name)), false);
            } else if d.quoted {
                let mut it = std::iter::once(join_include(dir, &d.name))
                    .chain(chains.quote.iter().map(|s| join_include(s, &d.name)));
                self.visit(&mut it, d.next);
            } else {
                let mut it = chains.angle.iter().map(|s| join_include(s, &d.name));
                self.visit(&mut it, d.next);
            }
        }
    }

    /// Backstop for lookups no directive names (implicit stdc-predef.h, computed
    /// includes): for each file read from a search directory, every earlier directory
    /// that could shadow it.
    fn visit_shadowing(&mut self, read: &[PathBuf], computed_dirs: Vec<PathBuf>, quote: &[&Path]) {
        let dirs: Vec<PathBuf> = computed_dirs
            .into_iter()
            .chain(quote.iter().map(|p| p.to_path_buf()))
            .collect();
        let all_read: Vec<PathBuf> = read.iter().chain(self.extra.iter()).cloned().collect();
        let dir_keys: Vec<Vec<u8>> = dirs
            .iter()
            .map(|d| {
                let mut k = path_key(d);
                if !k.ends_with(b"/") {
                    k.push(b'/');
                }
                k
            })
            .collect();
        for r in &all_read {
            let clean = path_key(r);
            for (k, dk) in dir_keys.iter().enumerate() {
                let Some(rel) = clean.strip_prefix(dk.as_slice()) else {
                    continue;
                };
                if rel.is_empty() {
                    continue;
                }
                let rel = Path::new(OsStr::from_bytes(rel));
                let mut it = dirs[..k].iter().map(|e| e.join(rel));
                self.visit(&mut it, true);
            }
        }
    }

    /// Walks one lookup's candidates in the compiler's order. `all`: record every
    /// candidate (`_next` forms), else stop at the first file found.
    fn visit(&mut self, cands: &mut dyn Iterator<Item = PathBuf>, all: bool) {
        for c in cands {
            let clean = path_key(&c);
            let was_new = !self.seen.contains(&clean);
            if was_new {
                self.seen.insert(clean.clone());
                // gcc silently takes `name.gch` (file or directory) before `name`, and
                // its dependency output then names neither.
                let gch = pch_path(&c);
                match self.dirs.kind(&gch) {
                    PathKind::Missing => self.probes.push((gch, PathKind::Missing)),
                    _ => {
                        self.pch.get_or_insert(gch);
                    }
                }
            } else {
                // Recorded before: only where this walk stops matters.
                if !all && self.dirs.kind(&c) == PathKind::File {
                    break;
                }
                continue;
            }
            let kind = self.dirs.kind(&c);
            if kind == PathKind::File {
                if !self.read_set.contains(&clean) {
                    if self.closure {
                        self.read_set.insert(clean);
                        self.work.push(c.clone());
                    }
                    self.extra.push(c);
                }
                if !all {
                    break;
                }
            } else {
                self.probes.push((c, kind));
            }
        }
    }

    /// Missing paths reduced to their topmost missing component, and the rest.
    fn classify(&mut self) -> (Vec<PathBuf>, Vec<PathBuf>) {
        let mut missing = Vec::new();
        let mut not_file = Vec::new();
        for (p, kind) in std::mem::take(&mut self.probes) {
            if kind == PathKind::Missing {
                missing.push(self.dirs.topmost_missing(&p).to_path_buf());
            } else {
                not_file.push(p);
            }
        }
        // Byte order: comparing `Path`s walks components, and there are thousands.
        missing.sort_unstable_by(|a, b| a.as_os_str().as_bytes().cmp(b.as_os_str().as_bytes()));
        missing.dedup();
        (missing, not_file)
    }
}

/// A full dependency list from a separate `-M` run (system headers included).
pub(super) fn scan_deps(inv: &Invocation) -> Result<Vec<PathBuf>, NotRecordable> {
    let p = plan(inv);
    let f = tmp_depfile();
    if fsutil::create_private_file(&f).is_err() {
        return Err(NotRecordable {
            reason: "dependency_scan_failed",
            detail: f.display().to_string(),
            preprocessor_ok: false,
            uses_time: false,
        });
    }
    let mut scan_args: Vec<OsString> = p.pp_args.clone();
    scan_args.pop(); // -E
    let status = Command::new(&inv.compiler)
        .arg0(&inv.arg0)
        .args(&scan_args)
        .args([OsStr::new("-M"), OsStr::new("-MF"), f.as_os_str()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let text = std::fs::read(&f);
    let _ = std::fs::remove_file(&f);
    match (status, text) {
        (Ok(s), Ok(t)) if s.success() => Ok(parse_depfile(&t)),
        // Possibly transient (TMPDIR): not stored this time, nothing remembered.
        _ => Err(NotRecordable {
            reason: "dependency_scan_failed",
            detail: inv.source.display().to_string(),
            preprocessor_ok: false,
            uses_time: false,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_list_parsing() {
        let t = b"ignoring nonexistent directory \"missing\"\n#include \"...\" search starts here:\n q\n#include <...> search starts here:\n inc\n /usr/include\nEnd of search list.\n";
        let sl = parse_search_list(t).unwrap();
        assert_eq!(sl.missing, vec![PathBuf::from("missing")]);
        assert_eq!(sl.quote, vec![PathBuf::from("q")]);
        assert_eq!(
            sl.angle,
            vec![PathBuf::from("inc"), PathBuf::from("/usr/include")]
        );
        assert!(parse_search_list(b"garbage").is_none());
    }

    #[test]
    fn search_memo_is_checksummed() {
        let dir = tempfile::tempdir().unwrap();
        let memo = dir.path().join("x.search");
        let sl = SearchList {
            quote: vec![PathBuf::from("inc")],
            angle: vec![
                PathBuf::from("/usr/include"),
                PathBuf::from("/usr/local/include"),
            ],
            missing: vec![PathBuf::from("/nonexistent")],
        };
        let text = search_memo_text(&sl);
        std::fs::write(&memo, &text).unwrap();
        assert_eq!(read_search_memo(&memo), Some(sl));
        // Any flipped byte: the memo is not used.
        for i in [
            0,
            SEARCH_MEMO_MAGIC.len() + 3,
            text.len() / 2,
            text.len() - 3,
        ] {
            let mut bad = text.clone();
            bad[i] ^= 0x01;
            std::fs::write(&memo, &bad).unwrap();
            assert_eq!(read_search_memo(&memo), None, "byte {i}");
        }
        // A memo of an older farm (no checksum line) is not used either.
        std::fs::write(
            &memo,
            &text[text.iter().position(|&c| c == b'\n').unwrap() + 1..],
        )
        .unwrap();
        assert_eq!(read_search_memo(&memo), None);
    }

    #[test]
    fn reachable_inputs_are_closed_under_shadowing() {
        // src.c computes an include; `a/` comes before `b/` in the search list. The
        // file `b/x.h` is reached from `b/y.h`'s own directory; `a/x.h`, which would shadow it
        // for the computed one, must be taken too, and what it includes.
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for sub in ["a", "b", "c"] {
            std::fs::create_dir(d.join(sub)).unwrap();
        }
        let w = |p: &str, t: &str| std::fs::write(d.join(p), t).unwrap();
        w("src.c", "#define H <x.h>\n#include H\n#include \"y.h\"\n");
        w("b/y.h", "#include \"x.h\"\n");
        w("b/x.h", "int b;\n");
        w("a/x.h", "#include <z.h>\n");
        w("c/z.h", "int z;\n");
        w("c/unrelated.h", "int u;\n");
        let sl = SearchList {
            quote: vec![],
            angle: vec![d.join("a"), d.join("b"), d.join("c")],
            missing: vec![],
        };
        let facts = reachable_inputs(&d.join("src.c"), &[], &sl).unwrap();
        let mut names: Vec<String> = facts
            .files
            .iter()
            .map(|p| p.strip_prefix(d).unwrap().display().to_string())
            .collect();
        names.sort();
        assert_eq!(names, ["a/x.h", "b/x.h", "b/y.h", "c/z.h"]);
        // A computed `__has_include` answers silently: still refused.
        w("src.c", "#define H <q.h>\n#if __has_include(H)\n#endif\n");
        let nr = reachable_inputs(&d.join("src.c"), &[], &sl).unwrap_err();
        assert_eq!(nr.reason, "computed_has_include");
    }

    /// `record_lookups` over files written to a temporary directory: `read` are the
    /// files the compile read besides `src`.
    fn lookups_of(files: &[(&str, &str)], read: &[&str], closure: bool) -> NotRecordable {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let read: Vec<PathBuf> = read.iter().map(|n| dir.path().join(n)).collect();
        let src = dir.path().join("src.c");
        record_lookups(&read, &src, &[], &SearchList::default(), closure, &[]).unwrap_err()
    }

    #[test]
    fn time_macros_are_typed_facts() {
        // __DATE__ and __TIME__ in one source: the first found is named, and the
        // source uses the time.
        let nr = lookups_of(
            &[("src.c", "const char *d = __DATE__, *t = __TIME__;\n")],
            &[],
            false,
        );
        assert_eq!(nr.reason, "time_macro");
        assert!(nr.detail.starts_with("__DATE__ in "), "{}", nr.detail);
        assert!(nr.preprocessor_ok && nr.uses_time);
        // __DATE__ only: the preprocessor mode may key it.
        let nr = lookups_of(&[("src.c", "const char *d = __DATE__;\n")], &[], false);
        assert_eq!(nr.reason, "time_macro");
        assert!(nr.detail.starts_with("__DATE__ in "), "{}", nr.detail);
        assert!(nr.preprocessor_ok && !nr.uses_time);
        // __TIMESTAMP__ is not __TIME__.
        let nr = lookups_of(&[("src.c", "const char *s = __TIMESTAMP__;\n")], &[], false);
        assert!(nr.detail.starts_with("__TIMESTAMP__ in "), "{}", nr.detail);
        assert!(!nr.uses_time);
        // __TIME__ in a file scanned after the first time macro was found.
        let nr = lookups_of(
            &[
                ("src.c", "#include \"d.h\"\nconst char *t = __TIME__;\n"),
                ("d.h", "static const char *d = __DATE__;\n"),
            ],
            &["d.h"],
            false,
        );
        assert!(nr.detail.starts_with("__DATE__ in "), "{}", nr.detail);
        assert!(nr.detail.ends_with("d.h"), "{}", nr.detail);
        assert!(nr.uses_time);
        // A header only the closure walk reaches (-MMD output leaves it out).
        let nr = lookups_of(
            &[
                ("src.c", "#include \"t.h\"\nconst char *d = __DATE__;\n"),
                ("t.h", "static const char *t = __TIME__;\n"),
            ],
            &[],
            true,
        );
        assert!(nr.detail.starts_with("__DATE__ in "), "{}", nr.detail);
        assert!(nr.uses_time);
    }
}
