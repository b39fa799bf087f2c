//! `base_dir`: hits across checkouts. An absolute path under a base directory enters
//! keys and manifests as a *relative* path: a marker naming which base directory (its
//! position in the configuration) followed by the rest of the path. The same project
//! built in `/home/a/src` and `/ci/build/1234` then computes the same keys.
//!
//! Relative keys are only sound while the outputs do not depend on where the checkout
//! is. Where they do, the entry is *pinned*: it also records this checkout's base
//! directories and matches only where they are the same (docs/cache-key.md, "Hits
//! across checkouts"). Text outputs that are lists of paths (a make dependency file)
//! are stored relative too and written back with this checkout's directories.
//!
//! The marker is a NUL byte and a digit: no path, argument or dependency file can hold
//! a NUL, so a relative key can never equal one written with real paths.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use crate::lang::DepfileWrap;

/// At most this many base directories (the marker's digit).
pub const MAX_BASE_DIRS: usize = 10;

/// The configured base directories, cleaned, without a trailing `/`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BaseDirs {
    dirs: Vec<Vec<u8>>,
    /// Each as a make dependency file writes it (spaces, `#`, `$` escaped).
    escaped: Vec<Vec<u8>>,
}

/// Characters a make dependency file may put before a path.
fn path_boundary(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | b':')
}

impl BaseDirs {
    /// Base directories from the configuration (absolute and cleaned already, see
    /// `config`); at most [`MAX_BASE_DIRS`] are used.
    pub fn new(dirs: &[PathBuf]) -> BaseDirs {
        use std::os::unix::ffi::OsStrExt;
        let dirs: Vec<Vec<u8>> = dirs
            .iter()
            .take(MAX_BASE_DIRS)
            .map(|d| d.as_os_str().as_bytes().to_vec())
            .collect();
        let escaped = dirs.iter().map(|d| make_escaped(d)).collect();
        BaseDirs { dirs, escaped }
    }

    pub fn is_empty(&self) -> bool {
        self.dirs.is_empty()
    }

    /// What a file's text would hold for a line of it, quoted in a compiler's
    /// message, to look like one of the locations [`BaseDirs::template_messages`]
    /// rewrites: a base directory first on a line, or after `from `.
    pub fn location_lookalikes(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::with_capacity(self.dirs.len() * 2);
        for d in &self.dirs {
            out.push([&b"\n"[..], d].concat());
            out.push([&b"from "[..], d].concat());
        }
        out
    }

    /// The base directory `p` lies under (the longest when they nest).
    fn under(&self, p: &[u8]) -> Option<usize> {
        let mut best: Option<usize> = None;
        for (i, d) in self.dirs.iter().enumerate() {
            let inside = p.starts_with(d) && (p.len() == d.len() || p[d.len()] == b'/');
            if inside && best.map_or(true, |b| self.dirs[b].len() < d.len()) {
                best = Some(i);
            }
        }
        best
    }

    /// Whether an absolute path lies under a base directory.
    pub fn contains(&self, p: &Path) -> bool {
        use std::os::unix::ffi::OsStrExt;
        self.under(p.as_os_str().as_bytes()).is_some()
    }

    /// `p` relative to its base directory (marker, then the rest), or `p` itself when
    /// it lies under none.
    pub fn relative<'a>(&self, p: &'a [u8]) -> Cow<'a, [u8]> {
        match self.under(p) {
            Some(i) => {
                let rest = &p[self.dirs[i].len()..];
                let mut out = Vec::with_capacity(rest.len() + 2);
                out.extend_from_slice(&[0, b'0' + i as u8]);
                out.extend_from_slice(rest);
                Cow::Owned(out)
            }
            None => Cow::Borrowed(p),
        }
    }

    /// A path from a key or manifest, with this checkout's base directory put back;
    /// `None` when it names a base directory this configuration lacks.
    pub fn absolute<'a>(&self, p: &'a [u8]) -> Option<Cow<'a, [u8]>> {
        if p.first() != Some(&0) {
            return Some(Cow::Borrowed(p));
        }
        let i = p.get(1)?.checked_sub(b'0')? as usize;
        let dir = self.dirs.get(i)?;
        let rest = &p[2..];
        let mut out = Vec::with_capacity(dir.len() + rest.len());
        out.extend_from_slice(dir);
        out.extend_from_slice(rest);
        Some(Cow::Owned(out))
    }

    /// This checkout's base directories, for a pinned entry's key.
    pub fn pin(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for d in &self.dirs {
            out.extend_from_slice(&(d.len() as u64).to_le_bytes());
            out.extend_from_slice(d);
        }
        out
    }

    /// Whether every base directory is the old side of one of a compiler's prefix
    /// maps (`prefixes`): then each path under one reaches the output as the map's
    /// new side (the same in every checkout, it is in the key as written) and the
    /// rest of the path. A map of a directory *above* a base directory would leave
    /// the part between them in the output: that covers nothing.
    pub fn covered_by(&self, prefixes: &[PathBuf]) -> bool {
        use std::os::unix::ffi::OsStrExt;
        self.dirs.iter().all(|d| {
            prefixes.iter().any(|p| {
                let p = p.as_os_str().as_bytes();
                let p = p.strip_suffix(b"/").unwrap_or(p);
                !p.is_empty() && d.as_slice() == p
            })
        })
    }

    /// A make dependency file with each path under a base directory made relative,
    /// or `None`: nothing changed, or it cannot be written back exactly (then it is
    /// stored as it is, and [`BaseDirs::appears_in`] pins the result). Paths of
    /// another length move the compiler's line breaks, so the file is stored on one
    /// line (the same in every checkout) with how `wrap` breaks lines, and
    /// [`BaseDirs::fill`] breaks them that way again: a restored file is the one the
    /// compiler writes in this checkout, byte for byte. When the driver's name does
    /// not say how it wraps, the file must: one way that reproduces it, or both,
    /// and then a fill where they differ is no hit.
    pub fn template(&self, text: &[u8], wrap: DepfileWrap) -> Option<Vec<u8>> {
        let relative = self.relative_in(text, &self.escaped)?;
        let candidates: &[Wrap] = match wrap {
            DepfileWrap::Gcc => &[Wrap::Gcc],
            DepfileWrap::Clang => &[Wrap::Clang],
            DepfileWrap::Unknown => &Wrap::ALL,
        };
        let fits: Vec<Wrap> = candidates
            .iter()
            .copied()
            .filter(|w| w.rewrap(text).as_deref() == Some(text))
            .collect();
        let style = match fits[..] {
            [w] => w as u8,
            [_, _] => EITHER,
            _ => return None,
        };
        let (names, rest) = first_rule(&relative)?;
        let mut out = vec![0, b'w', style];
        out.extend_from_slice(&names.join(&b' '));
        out.push(b'\n');
        out.extend_from_slice(rest);
        Some(out)
    }

    /// A text with every path under a base directory that starts a word (after a
    /// space or `:`, as in an input's label) made relative; `None` when none does.
    pub fn relative_in_text(&self, text: &[u8]) -> Option<Vec<u8>> {
        self.relative_in(text, &self.dirs)
    }

    /// [`BaseDirs::relative_in_text`] with the base directories written as `forms`.
    fn relative_in(&self, text: &[u8], forms: &[Vec<u8>]) -> Option<Vec<u8>> {
        if forms.is_empty() {
            return None;
        }
        let mut out: Option<Vec<u8>> = None;
        let mut copied = 0;
        let mut i = 0;
        while i < text.len() {
            if text[i] == b'/' && (i == 0 || path_boundary(text[i - 1])) {
                if let Some(d) = under_at(forms, text, i) {
                    let o = out.get_or_insert_with(|| Vec::with_capacity(text.len()));
                    o.extend_from_slice(&text[copied..i]);
                    o.extend_from_slice(&[0, b'0' + d as u8]);
                    i += forms[d].len();
                    copied = i;
                    continue;
                }
            }
            i += 1;
        }
        let mut o = out?;
        o.extend_from_slice(&text[copied..]);
        Some(o)
    }

    /// A text made by [`BaseDirs::template`] with this checkout's base directories
    /// (escaped as make files write them) put back (and wrapped again as the compiler wraps); `None` when it names one
    /// this configuration lacks.
    pub fn fill<'a>(&self, text: &'a [u8]) -> Option<Cow<'a, [u8]>> {
        if memchr::memchr(0, text).is_none() {
            return Some(Cow::Borrowed(text));
        }
        let (wrap, text) = match text {
            [0, b'w', EITHER, rest @ ..] => (None, rest),
            [0, b'w', style, rest @ ..] => (Some(Wrap::from_byte(*style)?), rest),
            _ => return None,
        };
        let out = put_back(text, &self.escaped)?;
        match wrap {
            Some(w) => w.rewrap(&out).map(Cow::Owned),
            // Either way: only where both agree.
            None => {
                let gcc = Wrap::Gcc.rewrap(&out)?;
                (Wrap::Clang.rewrap(&out)? == gcc).then_some(Cow::Owned(gcc))
            }
        }
    }

    /// A compiler's messages with the paths at their locations (`/x/a.c:3:5: warning`,
    /// `In file included from /x/a.h:2`, colours allowed around them) made relative;
    /// `None` when no base directory appears, or one still does elsewhere (in a
    /// message's text: then the messages cannot be written for another checkout).
    pub fn template_messages(&self, text: &[u8]) -> Option<Vec<u8>> {
        if self.dirs.is_empty() || !self.appears_in(text) {
            return None;
        }
        let mut out = vec![0, b'm'];
        let mut copied = 0;
        let mut i = 0;
        while i < text.len() {
            if text[i] == b'/' && at_location(text, i) {
                if let Some(d) = under_at(&self.dirs, text, i) {
                    out.extend_from_slice(&text[copied..i]);
                    out.extend_from_slice(&[0, b'0' + d as u8]);
                    i += self.dirs[d].len();
                    copied = i;
                    continue;
                }
            }
            i += 1;
        }
        out.extend_from_slice(&text[copied..]);
        (!self.appears_in(&out)).then_some(out)
    }

    /// Messages as stored: made by [`BaseDirs::template_messages`] (written with
    /// this checkout's directories; `None` when one is missing here), or as printed.
    pub fn fill_messages<'a>(&self, text: &'a [u8]) -> Option<Cow<'a, [u8]>> {
        let Some(rest) = text.strip_prefix(&[0, b'm'][..]) else {
            return Some(Cow::Borrowed(text));
        };
        put_back(rest, &self.dirs).map(Cow::Owned)
    }

    /// Whether messages are stored with relative paths.
    pub fn messages_relative(text: &[u8]) -> bool {
        text.starts_with(&[0, b'm'])
    }

    /// Whether `data` holds a base directory's name: as UTF-8, as a make file
    /// escapes it, as UTF-16 (.NET strings, Windows' `wchar_t`) or UTF-32 (Linux's
    /// `wchar_t`). An output that does depends on where the checkout is.
    pub fn appears_in(&self, data: &[u8]) -> bool {
        self.dirs.iter().any(|d| {
            let text = String::from_utf8_lossy(d);
            let utf16: Vec<u8> = text.encode_utf16().flat_map(|u| u.to_le_bytes()).collect();
            let utf32: Vec<u8> = text
                .chars()
                .flat_map(|c| (c as u32).to_le_bytes())
                .collect();
            [d.clone(), make_escaped(d), utf16, utf32]
                .iter()
                .any(|form| memchr::memmem::find(data, form).is_some())
        })
    }

    /// A preprocessed text with the file names of its line markers (`# 12 "/x/a.h"`)
    /// made relative. Only the markers: a path the code itself holds (an expanded
    /// `__FILE__`) stays as it is, so it keeps the key apart.
    pub fn line_markers<'a>(&self, text: &'a [u8]) -> Cow<'a, [u8]> {
        if self.dirs.is_empty() {
            return Cow::Borrowed(text);
        }
        let mut out: Option<Vec<u8>> = None;
        let mut copied = 0;
        let mut line = 0;
        while line < text.len() {
            let end = memchr::memchr(b'\n', &text[line..])
                .map(|e| line + e)
                .unwrap_or(text.len());
            let l = &text[line..end];
            if let Some(q) = marker_name_at(l) {
                let at = line + q;
                if let Some(d) = self.under(&text[at..end]) {
                    let o = out.get_or_insert_with(|| Vec::with_capacity(text.len()));
                    o.extend_from_slice(&text[copied..at]);
                    o.extend_from_slice(&[0, b'0' + d as u8]);
                    copied = at + self.dirs[d].len();
                }
            }
            line = end + 1;
        }
        match out {
            Some(mut o) => {
                o.extend_from_slice(&text[copied..]);
                Cow::Owned(o)
            }
            None => Cow::Borrowed(text),
        }
    }
}

/// The base directory (of `forms`) whose path starts at `text[i..]` and ends where a
/// path component or the path does.
fn under_at(forms: &[Vec<u8>], text: &[u8], i: usize) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (n, d) in forms.iter().enumerate() {
        let end = i + d.len();
        let fits = text[i..].starts_with(d)
            && (end == text.len() || text[end] == b'/' || path_boundary(text[end]));
        if fits && best.map_or(true, |b| forms[b].len() < d.len()) {
            best = Some(n);
        }
    }
    best
}

/// Whether a path starting at `text[i]` is a message's location: first on its line,
/// or after `from ` (`In file included from`, gcc's `                 from`), with
/// terminal colour sequences (`ESC [ 01 m`, `ESC [ K`) allowed in between.
fn at_location(text: &[u8], i: usize) -> bool {
    let mut j = i;
    // Back over colour sequences: ESC '[' digits/';' then a letter.
    while j >= 3 && text[j - 1].is_ascii_alphabetic() {
        let mut k = j - 1;
        while k > 0 && (text[k - 1].is_ascii_digit() || text[k - 1] == b';') {
            k -= 1;
        }
        if k >= 2 && text[k - 1] == b'[' && text[k - 2] == 0x1b {
            j = k - 2;
        } else {
            break;
        }
    }
    j == 0 || text[j - 1] == b'\n' || text[..j].ends_with(b"from ")
}

/// A text with each marker (NUL, digit) replaced by that base directory written as
/// `forms` has it; `None` when one names a directory `forms` lacks.
fn put_back(text: &[u8], forms: &[Vec<u8>]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() + 64);
    let mut rest = text;
    while let Some(z) = memchr::memchr(0, rest) {
        out.extend_from_slice(&rest[..z]);
        let i = rest.get(z + 1)?.checked_sub(b'0')? as usize;
        out.extend_from_slice(forms.get(i)?);
        rest = &rest[z + 2..];
    }
    out.extend_from_slice(rest);
    Some(out)
}

/// The stored form's wrap byte for a file both ways reproduce.
const EITHER: u8 = 3;

/// A path as a make dependency file writes it (space, `#` and `$` escaped).
fn make_escaped(d: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(d.len() + 4);
    for &c in d {
        match c {
            b' ' | b'\t' | b'#' => out.extend_from_slice(&[b'\\', c]),
            b'$' => out.extend_from_slice(b"$$"),
            _ => out.push(c),
        }
    }
    out
}

/// The length of a name before make escaping (`\ `, `\#`, `$$` count one).
fn unescaped_len(name: &[u8]) -> usize {
    let mut n = 0;
    let mut i = 0;
    while i < name.len() {
        let pair = matches!(
            (name[i], name.get(i + 1)),
            (b'\\', Some(b' ' | b'#')) | (b'$', Some(b'$'))
        );
        i += if pair { 2 } else { 1 };
        n += 1;
    }
    n
}

/// How a compiler breaks the lines of a make dependency file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wrap {
    /// gcc's libcpp: a name goes on a new line when it would pass column 72.
    Gcc = 1,
    /// clang: lines kept under 75 columns, leaving room for a trailing ` \`.
    Clang = 2,
}

impl Wrap {
    const ALL: [Wrap; 2] = [Wrap::Gcc, Wrap::Clang];

    fn from_byte(b: u8) -> Option<Wrap> {
        Wrap::ALL.into_iter().find(|w| *w as u8 == b)
    }

    /// The file with its first rule (`targets: prerequisites`) wrapped this way;
    /// what follows it (`-MP`'s `header:` lines) as it is. `None` when the text is
    /// not one rule of names followed by such lines.
    fn rewrap(self, text: &[u8]) -> Option<Vec<u8>> {
        let (names, rest) = first_rule(text)?;
        let colon = names.iter().position(|n| n.ends_with(b":"))?;
        let (targets, deps) = names.split_at(colon + 1);
        let mut out = Vec::with_capacity(text.len() + 16);
        let mut col: usize = 0;
        match self {
            Wrap::Gcc => {
                for (i, t) in targets.iter().enumerate() {
                    // The colon is written after the last target, not counted in it.
                    let t = if i == colon { &t[..t.len() - 1] } else { t };
                    col = gcc_name(&mut out, t, col);
                }
                out.push(b':');
                col += 1;
                for d in deps {
                    col = gcc_name(&mut out, d, col);
                }
            }
            Wrap::Clang => {
                for (i, t) in targets.iter().enumerate() {
                    let t = if i == colon { &t[..t.len() - 1] } else { t };
                    if col == 0 {
                        col = t.len();
                    } else if col + t.len() + 2 > 75 {
                        col = t.len() + 2;
                        out.extend_from_slice(b" \\\n  ");
                    } else {
                        col += t.len() + 1;
                        out.push(b' ');
                    }
                    out.extend_from_slice(t);
                }
                out.push(b':');
                col += 1;
                // clang measures a prerequisite before it escapes it.
                for d in deps {
                    let n = unescaped_len(d);
                    if col + n + 1 + 2 > 75 {
                        out.extend_from_slice(b" \\\n ");
                        col = 2;
                    }
                    out.push(b' ');
                    out.extend_from_slice(d);
                    col += n + 1;
                }
            }
        }
        out.push(b'\n');
        out.extend_from_slice(rest);
        Some(out)
    }
}

/// gcc's `make_write_name`: one name at column `col`, on a new line when it would
/// pass column 72; the column after it.
fn gcc_name(out: &mut Vec<u8>, name: &[u8], mut col: usize) -> usize {
    if col > 0 {
        if col + name.len() > 72 {
            out.extend_from_slice(b" \\\n");
            col = 0;
        }
        col += 1;
        out.push(b' ');
    }
    out.extend_from_slice(name);
    col + name.len()
}

/// The names of a make file's first rule (lines joined at ` \`, split at spaces no
/// backslash escapes) and the text after it.
fn first_rule(text: &[u8]) -> Option<(Vec<&[u8]>, &[u8])> {
    let mut names = Vec::new();
    let mut line_start = 0;
    loop {
        let end = line_start + memchr::memchr(b'\n', &text[line_start..])?;
        let line = &text[line_start..end];
        let (body, continued) = match line.strip_suffix(b"\\") {
            Some(b) => (b, true),
            None => (line, false),
        };
        let mut start = 0;
        for i in 0..=body.len() {
            let split = i == body.len() || (body[i] == b' ' && (i == 0 || body[i - 1] != b'\\'));
            if split {
                if i > start {
                    names.push(&body[start..i]);
                }
                start = i + 1;
            }
        }
        line_start = end + 1;
        if !continued {
            return Some((names, &text[line_start..]));
        }
    }
}

/// In a line marker (`# 12 "name" 1 3`, or `#line 12 "name"`), where the name starts.
fn marker_name_at(l: &[u8]) -> Option<usize> {
    let mut i = 0;
    if l.first() != Some(&b'#') {
        return None;
    }
    i += 1;
    if l[i..].starts_with(b"line") {
        i += 4;
    }
    let digits_from = {
        while l.get(i) == Some(&b' ') {
            i += 1;
        }
        i
    };
    while l.get(i).is_some_and(|c| c.is_ascii_digit()) {
        i += 1;
    }
    if i == digits_from || l.get(i) != Some(&b' ') || l.get(i + 1) != Some(&b'"') {
        return None;
    }
    Some(i + 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirs(d: &[&str]) -> BaseDirs {
        BaseDirs::new(&d.iter().map(PathBuf::from).collect::<Vec<_>>())
    }

    #[test]
    fn relative_and_back() {
        let a = dirs(&["/home/a/src", "/home/a/src/sub"]);
        let b = dirs(&["/ci/1234", "/ci/1234/sub"]);
        for p in ["/home/a/src/x.h", "/home/a/src", "/home/a/src/sub/y.h"] {
            let rel = a.relative(p.as_bytes()).into_owned();
            assert_eq!(rel[0], 0, "{p}");
            assert_eq!(a.absolute(&rel).unwrap(), p.as_bytes());
            let there = b.absolute(&rel).unwrap().into_owned();
            assert!(there.starts_with(b"/ci/1234"), "{p}");
            assert_eq!(b.relative(&there), rel);
        }
        // The longest base directory wins.
        assert_eq!(a.relative(b"/home/a/src/sub/y.h").as_ref(), b"\x001/y.h");
        // Not under a base directory: unchanged, also for a name sharing a prefix.
        for p in ["/home/a/srcx/x.h", "/usr/include/stdio.h", "rel/x.h"] {
            assert_eq!(a.relative(p.as_bytes()).as_ref(), p.as_bytes());
        }
        // A marker this configuration lacks.
        assert_eq!(dirs(&["/x"]).absolute(b"\x001/y.h"), None);
    }

    #[test]
    fn dependency_files_round_trip() {
        let a = dirs(&["/home/a/src"]);
        let b = dirs(&["/ci/b"]);
        let one_line = b"o/x.o: /home/a/src/x.c /home/a/src/inc/x.h /usr/include/stdio.h /x/home/a/src/y.h /home/a/src/inc/z.h\n/home/a/src/inc/x.h:\n";
        let d = Wrap::Gcc.rewrap(one_line).unwrap();
        assert_ne!(&d[..], &one_line[..]);
        let t = a.template(&d, DepfileWrap::Gcc).unwrap();
        assert_eq!(a.fill(&t).unwrap(), &d[..]);
        let there = b.fill(&t).unwrap();
        let want = Wrap::Gcc
            .rewrap(b"o/x.o: /ci/b/x.c /ci/b/inc/x.h /usr/include/stdio.h /x/home/a/src/y.h /ci/b/inc/z.h\n/ci/b/inc/x.h:\n")
            .unwrap();
        assert_eq!(there.as_ref(), &want[..]);
        // Nothing to make relative; or not wrapped the way the compiler wraps (so
        // it cannot be written back exactly): stored as it is.
        assert_eq!(
            a.template(b"x.o: x.c /usr/include/a.h\n", DepfileWrap::Gcc),
            None
        );
        assert_eq!(a.template(one_line, DepfileWrap::Gcc), None);
        // A stored form names a base directory this configuration lacks.
        assert_eq!(dirs(&[]).fill(&t), None);
    }

    #[test]
    fn dependency_files_are_wrapped_again_as_the_compiler_wraps() {
        // What gcc 12 writes for one compile in two checkouts (paths of different
        // lengths break lines elsewhere), with -MP.
        let a = dirs(&["/tmp/.tmpaZRY52/home/a/proj"]);
        let b = dirs(&["/tmp/.tmpaZRY52/ci/build/1234/proj"]);
        let in_a = b"o.o: /tmp/.tmpaZRY52/home/a/proj/src/x.c /usr/include/stdc-predef.h \\\n /tmp/.tmpaZRY52/home/a/proj/inc/h.h\n/usr/include/stdc-predef.h:\n/tmp/.tmpaZRY52/home/a/proj/inc/h.h:\n";
        let in_b = b"o.o: /tmp/.tmpaZRY52/ci/build/1234/proj/src/x.c \\\n /usr/include/stdc-predef.h /tmp/.tmpaZRY52/ci/build/1234/proj/inc/h.h\n/usr/include/stdc-predef.h:\n/tmp/.tmpaZRY52/ci/build/1234/proj/inc/h.h:\n";
        assert_eq!(Wrap::Gcc.rewrap(in_a).unwrap(), in_a);
        assert_eq!(Wrap::Gcc.rewrap(in_b).unwrap(), in_b);
        let stored = a.template(in_a, DepfileWrap::Gcc).unwrap();
        assert_eq!(b.template(in_b, DepfileWrap::Gcc).unwrap(), stored);
        // The driver's name did not say: gcc's way is the only one that fits A's.
        assert_eq!(a.template(in_a, DepfileWrap::Unknown).unwrap(), stored);
        assert_eq!(b.fill(&stored).unwrap().as_ref(), in_b);
        assert_eq!(a.fill(&stored).unwrap().as_ref(), in_a);
        // clang's wrapping.
        let clang =
            b"o.o: /tmp/.tmpaZRY52/home/a/proj/src/x.c \\\n  /tmp/.tmpaZRY52/home/a/proj/inc/h.h\n";
        assert_eq!(Wrap::Clang.rewrap(clang).unwrap(), clang);
        assert_ne!(Wrap::Gcc.rewrap(clang).unwrap(), clang);
        // clang measures names unescaped.
        assert_eq!(unescaped_len(br"a\ b$$c\#d"), 7);
        // One short line: either way fits, and a fill where they part is no hit.
        let short = b"o.o: /a/x.c\n";
        let t = dirs(&["/a"]).template(short, DepfileWrap::Unknown).unwrap();
        assert_eq!(t[2], EITHER);
        assert_eq!(dirs(&["/b"]).fill(&t).unwrap().as_ref(), b"o.o: /b/x.c\n");
        let long = format!("/{}", "l".repeat(80));
        assert_eq!(dirs(&[&long]).fill(&t), None);
    }

    #[test]
    fn escaped_and_wide_forms_are_found() {
        let a = dirs(&["/home/my dir/p$"]);
        assert!(a.appears_in(br"x.o: /home/my\ dir/p$$/x.c"));
        let wide: Vec<u8> = "/home/my dir/p$/x"
            .chars()
            .flat_map(|c| (c as u32).to_le_bytes())
            .collect();
        assert!(a.appears_in(&wide));
    }

    #[test]
    fn messages_are_relative_at_their_locations_only() {
        let a = dirs(&["/home/a/src"]);
        let b = dirs(&["/ci/b"]);
        let msg = b"In file included from /home/a/src/x.c:1:\n                 from /home/a/src/y.c:2:\n/home/a/src/h.h:3:5: warning: unused [-Wunused]\n    3 |   int unused;\n\x1b[01m\x1b[K/home/a/src/x.c:4:1:\x1b[m\x1b[K note: here\n";
        let t = a.template_messages(msg).unwrap();
        assert!(BaseDirs::messages_relative(&t));
        assert_eq!(a.fill_messages(&t).unwrap().as_ref(), &msg[..]);
        let there = b.fill_messages(&t).unwrap();
        assert_eq!(
            there.as_ref(),
            &b"In file included from /ci/b/x.c:1:\n                 from /ci/b/y.c:2:\n/ci/b/h.h:3:5: warning: unused [-Wunused]\n    3 |   int unused;\n\x1b[01m\x1b[K/ci/b/x.c:4:1:\x1b[m\x1b[K note: here\n"[..]
        );
        // A base directory in a message's text (a quoted source line, a path the
        // message names): not for another checkout.
        assert_eq!(
            a.template_messages(b"/home/a/src/x.c:1: warning: see /home/a/src/y\n"),
            None
        );
        assert_eq!(a.template_messages(b"x.c:1: warning: w\n"), None);
        // Messages as printed are written as they are.
        assert_eq!(b.fill_messages(b"plain\n").unwrap().as_ref(), b"plain\n");
    }

    #[test]
    fn appears_in_utf8_and_utf16() {
        let a = dirs(&["/home/a/src"]);
        assert!(a.appears_in(b"..\x00/home/a/src/x.c\x00"));
        let wide: Vec<u8> = "/home/a/src/P.cs"
            .encode_utf16()
            .flat_map(|u| u.to_le_bytes())
            .collect();
        assert!(a.appears_in(&wide));
        assert!(!a.appears_in(b"/home/a/sr"));
    }

    #[test]
    fn covered_by_prefix_maps() {
        let a = dirs(&["/home/a/src", "/home/a/build"]);
        // A map above the base directories leaves `src`/`build` in the output.
        assert!(!a.covered_by(&[PathBuf::from("/home/a")]));
        assert!(!a.covered_by(&[PathBuf::from("/home/a/src")]));
        assert!(!a.covered_by(&[PathBuf::from("/home/a/sr")]));
        assert!(a.covered_by(&[
            PathBuf::from("/home/a/src/"),
            PathBuf::from("/home/a/build")
        ]));
        assert!(a.covered_by(&[PathBuf::from("/home/a/src"), PathBuf::from("/home/a/build")]));
    }

    #[test]
    fn only_line_markers_are_made_relative() {
        let a = dirs(&["/home/a/src"]);
        let t = b"# 1 \"/home/a/src/x.c\"\n# 1 \"<built-in>\"\nconst char *f = \"/home/a/src/x.c\";\n# 3 \"/home/a/src/x.h\" 2\n#line 7 \"/home/a/src/y.h\"\n";
        let n = a.line_markers(t);
        assert_eq!(
            n.as_ref(),
            &b"# 1 \"\x000/x.c\"\n# 1 \"<built-in>\"\nconst char *f = \"/home/a/src/x.c\";\n# 3 \"\x000/x.h\" 2\n#line 7 \"\x000/y.h\"\n"[..]
        );
    }
}
