//! C# compiler arguments: response files as Mono's mcs reads them (nested; split on
//! spaces; `"` or `'` quote), and the option syntax both mcs and Roslyn's csc accept
//! (`-opt`, `/opt`, `/opt:value`, `/opt+`, `/opt-`).

use std::ffi::OsString;
use std::path::Path;

use crate::lang::Passthrough;

/// Response files read for one command line: a file that names itself would
/// otherwise never end.
const MAX_FILES: usize = 256;

/// Splits one line of a response file: spaces separate, `"` or `'` quote (the quote
/// itself is dropped), nothing escapes. Lines starting with `#` are comments (csc).
pub fn split_line(line: &str) -> Vec<String> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    if line.trim_start().starts_with('#') {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' => {
                for d in chars.by_ref() {
                    if d == c {
                        break;
                    }
                    cur.push(d);
                }
            }
            ' ' => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            _ => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Where a compiler puts a response file's arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expansion {
    /// Mono's mcs appends them after every argument still to come (so `@a.rsp B.cs`
    /// compiles B.cs before a.rsp's sources); nested files likewise.
    Append,
    /// Roslyn's csc puts them in place.
    InPlace,
}

/// Expands `@file` arguments, nested, relative to the working directory, in the
/// order the compiler reads them.
pub fn expand(args: &[OsString], how: Expansion) -> Result<Vec<String>, Passthrough> {
    let mut list: Vec<String> = args
        .iter()
        .map(|a| {
            a.to_str()
                .map(str::to_string)
                .ok_or_else(|| Passthrough::new("non_utf8_argument", a.to_string_lossy()))
        })
        .collect::<Result<_, _>>()?;
    let mut out = Vec::with_capacity(list.len());
    let mut files = 0usize;
    let mut i = 0;
    while i < list.len() {
        let a = list[i].clone();
        i += 1;
        let Some(file) = a.strip_prefix('@').filter(|f| !f.is_empty()) else {
            out.push(a);
            continue;
        };
        files += 1;
        if files > MAX_FILES {
            return Err(Passthrough::new("response_file_nesting", file));
        }
        let text = std::fs::read(Path::new(file))
            .map_err(|e| Passthrough::new("response_file_unreadable", format!("{file}: {e}")))?;
        let text = String::from_utf8(text)
            .map_err(|_| Passthrough::new("non_utf8_argument", file.to_string()))?;
        let inner: Vec<String> = text.lines().flat_map(split_line).collect();
        match how {
            Expansion::Append => list.extend(inner),
            Expansion::InPlace => {
                list.splice(i..i, inner);
            }
        }
    }
    Ok(out)
}

/// An option split into its lower-cased name, and its value after `:` if any.
/// `None` for a non-option (a source file). After a leading `/`, a name with another
/// `/` in it is an absolute path (`/src/A.cs`), not an option (`/out:dir/A.dll`).
pub fn split_option(arg: &str) -> Option<(String, Option<&str>)> {
    let (rest, slash) = if let Some(r) = arg.strip_prefix('-') {
        (r.strip_prefix('-').unwrap_or(r), false)
    } else if let Some(r) = arg.strip_prefix('/') {
        (r, true)
    } else {
        return None;
    };
    let (name, value) = match rest.split_once(':') {
        Some((name, value)) => (name, Some(value)),
        None => (rest, None),
    };
    if slash && (name.contains('/') || name.is_empty()) {
        return None;
    }
    Some((name.to_ascii_lowercase(), value))
}

/// A list value (`/r:a.dll,b.dll`, `/define:A;B`): items separated by `,` or `;`.
pub fn list(value: &str) -> Vec<&str> {
    value.split([',', ';']).filter(|s| !s.is_empty()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_lines_split_like_mcs() {
        assert_eq!(
            split_line("/out:a.dll  \"my dir/x.cs\" 'y z.cs' /r:b.dll\r"),
            vec!["/out:a.dll", "my dir/x.cs", "y z.cs", "/r:b.dll"]
        );
        assert!(split_line("# a comment /r:x.dll").is_empty());
        assert_eq!(split_line("/define:\"A;B\""), vec!["/define:A;B"]);
    }

    #[test]
    fn nested_response_files_expand() {
        let d = tempfile::tempdir().unwrap();
        let inner = d.path().join("inner.rsp");
        let outer = d.path().join("outer.rsp");
        std::fs::write(&inner, "/r:x.dll\nB.cs\n").unwrap();
        std::fs::write(&outer, format!("/t:library\n@{}\nA.cs\n", inner.display())).unwrap();
        let arg = |p: &std::path::Path| OsString::from(format!("@{}", p.display()));
        // Roslyn's csc reads them in place; mcs appends each file's arguments last.
        let got = expand(&[arg(&outer), "C.cs".into()], Expansion::InPlace).unwrap();
        assert_eq!(got, vec!["/t:library", "/r:x.dll", "B.cs", "A.cs", "C.cs"]);
        let got = expand(&[arg(&outer), "C.cs".into()], Expansion::Append).unwrap();
        assert_eq!(got, vec!["C.cs", "/t:library", "A.cs", "/r:x.dll", "B.cs"]);
        std::fs::write(&inner, format!("@{}\n", inner.display())).unwrap();
        let e = expand(&[arg(&inner)], Expansion::Append).unwrap_err();
        assert_eq!(e.reason, "response_file_nesting");
    }

    #[test]
    fn options_in_both_dialects() {
        assert_eq!(
            split_option("/out:a.dll"),
            Some(("out".into(), Some("a.dll")))
        );
        assert_eq!(
            split_option("-OUT:a.dll"),
            Some(("out".into(), Some("a.dll")))
        );
        assert_eq!(split_option("/debug+"), Some(("debug+".into(), None)));
        assert_eq!(split_option("--version"), Some(("version".into(), None)));
        assert_eq!(split_option("/usr/src/A.cs"), None);
        assert_eq!(
            split_option("/out:dir/A.dll"),
            Some(("out".into(), Some("dir/A.dll")))
        );
        assert_eq!(split_option("A.cs"), None);
        assert_eq!(list("a.dll,b.dll;c.dll"), vec!["a.dll", "b.dll", "c.dll"]);
    }
}
