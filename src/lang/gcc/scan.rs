//! Include and code-directive scanning of source text: which headers a file names
//! (`#include`, `#include_next`, `#import`, `__has_include`), which time macros it
//! uses, and which directives make the compiler read files no dependency output names.

use crate::lang::{Passthrough, UNSUPPORTED_CODE_DIRECTIVE};

/// One header lookup a file asks for: `"name"` (quoted) or `<name>`, and whether it is
/// an `_next` form (the search continues after the directory of the current file).
#[derive(Debug, PartialEq, Eq, Clone)]
pub(super) struct Directive {
    pub(super) quoted: bool,
    pub(super) next: bool,
    pub(super) name: String,
}

/// The time macros, in the order the first one found is reported.
pub(super) const TIME_MACROS: [&str; 3] = ["__TIMESTAMP__", "__DATE__", "__TIME__"];

/// What expands to the path of the file being compiled: `__FILE__`, `__BASE_FILE__`,
/// gcc's and clang's builtins, and C++'s `source_location` (which uses them).
/// `__FILE_NAME__` is only the last component: not among them.
pub(super) const PATH_MACROS: [&str; 4] = [
    "__FILE__",
    "__BASE_FILE__",
    "__builtin_FILE",
    "source_location",
];

/// What [`scan_text`] found in one file.
#[derive(Debug, Default)]
pub(super) struct Scan {
    pub(super) directives: Vec<Directive>,
    pub(super) computed_include: bool,
    pub(super) computed_has_include: bool,
    /// Every time macro the text names, in [`TIME_MACROS`] order.
    pub(super) time_macros: Vec<&'static str>,
    /// The text names a macro or builtin that expands to a file's path.
    pub(super) path_macro: bool,
}

impl Scan {
    /// The time macro a manifest marker names for this file: the first found.
    pub(super) fn first_time_macro(&self) -> Option<&'static str> {
        self.time_macros.first().copied()
    }

    /// Whether the text names `__TIME__` (a compile of it differs every second).
    pub(super) fn uses_time(&self) -> bool {
        self.time_macros.contains(&"__TIME__")
    }
}

fn skip_ws(t: &[u8], mut i: usize) -> usize {
    while i < t.len() && (t[i] == b' ' || t[i] == b'\t') {
        i += 1;
    }
    i
}

/// Reads `"name"` or `<name>` at `i`.
fn header_name(t: &[u8], i: usize) -> Option<(bool, String)> {
    let (close, quoted) = match t.get(i)? {
        b'"' => (b'"', true),
        b'<' => (b'>', false),
        _ => return None,
    };
    let rest = &t[i + 1..];
    let end = rest.iter().position(|&c| c == close || c == b'\n')?;
    if rest[end] != close {
        return None;
    }
    Some((quoted, String::from_utf8_lossy(&rest[..end]).into_owned()))
}

/// Finds every include-like directive and `__has_include` probe in a file's text,
/// whether or not it sits in a live `#if` branch: that over-approximates the lookups
/// the compiler made, which only ever costs a miss, never a wrong hit.
pub(super) fn scan_text(t: &[u8]) -> Scan {
    let mut s = Scan::default();
    for m in TIME_MACROS {
        if memchr::memmem::find(t, m.as_bytes()).is_some() {
            s.time_macros.push(m);
        }
    }
    s.path_macro = PATH_MACROS
        .iter()
        .any(|m| memchr::memmem::find(t, m.as_bytes()).is_some());
    // Directives: '#' first on a line, then include / include_next / import.
    let mut line_start = 0;
    while line_start < t.len() {
        let end = memchr::memchr(b'\n', &t[line_start..])
            .map(|e| line_start + e)
            .unwrap_or(t.len());
        let mut i = skip_ws(t, line_start);
        if i < end && t[i] == b'#' {
            i = skip_ws(t, i + 1);
            let word_end = t[i..end]
                .iter()
                .position(|c| !(c.is_ascii_alphanumeric() || *c == b'_'))
                .map(|p| i + p)
                .unwrap_or(end);
            let word = &t[i..word_end];
            let next = word == b"include_next";
            if word == b"include" || next || word == b"import" {
                let j = skip_ws(t, word_end);
                match header_name(&t[..end], j) {
                    Some((quoted, name)) => s.directives.push(Directive { quoted, next, name }),
                    // `#include MACRO`; anything else (`#include's` in a comment) is no
                    // directive at all.
                    None if j < end && (t[j].is_ascii_alphabetic() || t[j] == b'_') => {
                        s.computed_include = true
                    }
                    None => {}
                }
            }
        }
        line_start = end + 1;
    }
    // __has_include / __has_include_next probes anywhere.
    for pos in memchr::memmem::find_iter(t, b"__has_include") {
        let mut i = pos + "__has_include".len();
        let next = t[i..].starts_with(b"_next");
        if next {
            i += 5;
        }
        if t[i..].starts_with(b"__") {
            i += 2;
        }
        if i < t.len() && (t[i].is_ascii_alphanumeric() || t[i] == b'_') {
            continue; // a longer identifier
        }
        let i = skip_ws(t, i);
        if t.get(i) != Some(&b'(') {
            continue; // `#ifdef __has_include`, `defined(__has_include)`
        }
        let i = skip_ws(t, i + 1);
        match header_name(t, i) {
            Some((quoted, name)) => s.directives.push(Directive { quoted, next, name }),
            None => s.computed_has_include = true,
        }
    }
    s
}

/// Code directives that make the compiler or assembler read a file no dependency
/// output names: asm `.incbin`/`.include`, `#pragma GCC pch_preprocess`, C23 `#embed`
/// and `__has_embed`. Their file is in no key, so such a compile is never cached, never
/// shipped. Over-approximates (a struct member named `include` reached as `s.include`
/// also matches): that only costs a pass-through.
pub fn code_directive(t: &[u8]) -> Option<&'static str> {
    fn ident(c: u8) -> bool {
        c.is_ascii_alphanumeric() || c == b'_'
    }
    for (pat, name) in [
        (&b".incbin"[..], ".incbin"),
        (b".include", ".include"),
        (b"__has_embed", "__has_embed"),
    ] {
        for pos in memchr::memmem::find_iter(t, pat) {
            if t.get(pos + pat.len()).map_or(true, |&c| !ident(c)) {
                return Some(name);
            }
        }
    }
    if memchr::memmem::find(t, b"pch_preprocess").is_some() {
        return Some("#pragma GCC pch_preprocess");
    }
    // `#embed`: a directive, `#` first on its line.
    for pos in memchr::memmem::find_iter(t, b"embed") {
        if t.get(pos + 5).is_some_and(|&c| ident(c)) {
            continue;
        }
        let mut i = pos;
        while i > 0 && matches!(t[i - 1], b' ' | b'\t') {
            i -= 1;
        }
        if i == 0 || t[i - 1] != b'#' {
            continue;
        }
        i -= 1;
        while i > 0 && matches!(t[i - 1], b' ' | b'\t') {
            i -= 1;
        }
        if i == 0 || t[i - 1] == b'\n' {
            return Some("#embed");
        }
    }
    None
}

/// [`code_directive`] as a pass-through: for a source, a header, preprocessed text
/// about to be keyed or shipped, and shipped text a worker received.
pub fn check_code_directives(text: &[u8], file: &str) -> Result<(), Passthrough> {
    match code_directive(text) {
        Some(d) => Err(Passthrough::new(
            UNSUPPORTED_CODE_DIRECTIVE,
            if file.is_empty() {
                d.to_string()
            } else {
                format!("{d} in {file}")
            },
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lang::gcc::GCC;
    use crate::lang::TextJobs;

    #[test]
    fn scanning() {
        let t = b"  #  include \"a.h\"\n#include_next <b.h>\n#if __has_include(<c.h>) && __has_include_next(\"d.h\")\n#endif\n#ifdef __has_include\n#endif\n#include FOO\n";
        let s = scan_text(t);
        assert_eq!(s.directives.len(), 4);
        assert!(s.directives.contains(&Directive {
            quoted: true,
            next: false,
            name: "a.h".into()
        }));
        assert!(s.directives.contains(&Directive {
            quoted: false,
            next: true,
            name: "b.h".into()
        }));
        assert!(s.directives.contains(&Directive {
            quoted: false,
            next: false,
            name: "c.h".into()
        }));
        assert!(s.directives.contains(&Directive {
            quoted: true,
            next: true,
            name: "d.h".into()
        }));
        assert!(s.computed_include);
        assert!(!s.computed_has_include);
        assert!(scan_text(b"#if __has_include(X)\n").computed_has_include);
        // A comment that starts with `#include's` is not a computed include.
        assert!(!scan_text(b"   #include's protect themselves\n").computed_include);
        assert_eq!(
            scan_text(b"const char *d = __DATE__;").first_time_macro(),
            Some("__DATE__")
        );
    }

    #[test]
    fn every_time_macro_is_recorded() {
        let s = scan_text(b"const char *d = __DATE__, *t = __TIME__, *s = __TIMESTAMP__;");
        assert_eq!(s.time_macros, ["__TIMESTAMP__", "__DATE__", "__TIME__"]);
        assert_eq!(s.first_time_macro(), Some("__TIMESTAMP__"));
        assert!(s.uses_time());
        let s = scan_text(b"const char *d = __DATE__, *s = __TIMESTAMP__;");
        assert_eq!(s.time_macros, ["__TIMESTAMP__", "__DATE__"]);
        assert!(!s.uses_time());
        assert!(scan_text(b"int x;").time_macros.is_empty());
    }

    #[test]
    fn code_directives_are_found() {
        for (text, what) in [
            (&b"asm(\".incbin \\\"data.bin\\\"\");"[..], ".incbin"),
            (b"__asm__(\".include \\\"x.s\\\"\");", ".include"),
            (
                b"#pragma GCC pch_preprocess \"x.gch\"\n",
                "#pragma GCC pch_preprocess",
            ),
            (b"int a[] = {\n  #  embed \"x\"\n};", "#embed"),
            (b"#embed <x>\n", "#embed"),
            (b"#if __has_embed(\"x\")\n#endif\n", "__has_embed"),
        ] {
            assert_eq!(
                code_directive(text),
                Some(what),
                "{}",
                String::from_utf8_lossy(text)
            );
            assert!(GCC.worker_text_check(text).is_err());
        }
        for text in [
            &b"int incbin; int include_dirs; s.included = 1;"[..],
            b"#include <stdio.h>\nint embed(void); int x = embed();\n",
            b"/* embedded */ int embedded;",
        ] {
            assert_eq!(
                code_directive(text),
                None,
                "{}",
                String::from_utf8_lossy(text)
            );
            assert!(GCC.worker_text_check(text).is_ok());
        }
    }
}
