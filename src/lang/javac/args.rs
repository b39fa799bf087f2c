//! javac's argument reading: `@argfiles` and `JDK_JAVAC_OPTIONS`, tokenized exactly
//! as JDK 17's `com.sun.tools.javac.main.CommandLine` does.

use std::ffi::OsString;
use std::path::Path;

use crate::lang::Passthrough;

/// Splits argfile (or `JDK_JAVAC_OPTIONS`) text into tokens: whitespace separates;
/// `'` and `"` quote (a newline still ends the token); inside quotes a backslash
/// escapes the next character (`\n`, `\r`, `\t`, `\f` by name; a backslash-newline
/// continues the token after the next line's indentation); `#` at the start of a
/// token comments out the rest of the line.
pub fn tokenize(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        // Skip white space and comments.
        while i < chars.len() {
            match chars[i] {
                ' ' | '\t' | '\n' | '\r' | '\x0c' => i += 1,
                '#' => {
                    while i < chars.len() && chars[i] != '\n' && chars[i] != '\r' {
                        i += 1;
                    }
                }
                _ => break,
            }
        }
        if i >= chars.len() {
            return out;
        }
        let mut tok = String::new();
        let mut quote: Option<char> = None;
        while i < chars.len() {
            let c = chars[i];
            match c {
                ' ' | '\t' | '\x0c' if quote.is_none() => break,
                '\n' | '\r' => break,
                '\'' | '"' => match quote {
                    None => quote = Some(c),
                    Some(q) if q == c => quote = None,
                    Some(_) => tok.push(c),
                },
                '\\' if quote.is_some() => {
                    i += 1;
                    let Some(&n) = chars.get(i) else { break };
                    match n {
                        '\n' | '\r' => {
                            while i < chars.len()
                                && matches!(chars[i], ' ' | '\n' | '\r' | '\t' | '\x0c')
                            {
                                i += 1;
                            }
                            continue;
                        }
                        'n' => tok.push('\n'),
                        'r' => tok.push('\r'),
                        't' => tok.push('\t'),
                        'f' => tok.push('\x0c'),
                        other => tok.push(other),
                    }
                }
                _ => tok.push(c),
            }
            i += 1;
        }
        out.push(tok);
    }
}

/// Quotes a token so that [`tokenize`] reads it back unchanged.
pub fn quote(token: &str) -> String {
    let mut s = String::with_capacity(token.len() + 2);
    s.push('"');
    for c in token.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            '\x0c' => s.push_str("\\f"),
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

/// One argument after expansion, and whether it came from an argfile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arg {
    pub text: String,
    pub from_file: bool,
}

/// Expands `@file` arguments one level deep (javac does not nest them); `@@x` is the
/// literal argument `@x`. An unreadable argfile or a non-UTF-8 argument is javac's
/// to report.
pub fn expand(args: &[OsString]) -> Result<Vec<Arg>, Passthrough> {
    let mut out = Vec::with_capacity(args.len());
    for a in args {
        let Some(s) = a.to_str() else {
            return Err(Passthrough::new("non_utf8_argument", a.to_string_lossy()));
        };
        match s.strip_prefix('@') {
            Some(rest) if !rest.is_empty() => {
                if rest.starts_with('@') {
                    out.push(Arg {
                        text: rest.to_string(),
                        from_file: false,
                    });
                    continue;
                }
                let text = std::fs::read(Path::new(rest))
                    .map_err(|e| Passthrough::new("argfile_unreadable", format!("{rest}: {e}")))?;
                let text = String::from_utf8(text)
                    .map_err(|_| Passthrough::new("non_utf8_argument", rest.to_string()))?;
                out.extend(tokenize(&text).into_iter().map(|text| Arg {
                    text,
                    from_file: true,
                }));
            }
            _ => out.push(Arg {
                text: s.to_string(),
                from_file: false,
            }),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizes_like_javac() {
        assert_eq!(
            tokenize("-d /out\n# comment -x\n  \"a b\" 'c\"d' e#f\n"),
            vec!["-d", "/out", "a b", "c\"d", "e#f"]
        );
        // Gradle writes `""` for an empty value; Maven quotes every token.
        assert_eq!(tokenize("-sourcepath\n\"\"\n"), vec!["-sourcepath", ""]);
        assert_eq!(
            tokenize("\"C:\\\\x\" \"tab\\there\""),
            vec!["C:\\x", "tab\there"]
        );
        // Outside quotes a backslash is literal; a newline ends even a quoted token.
        assert_eq!(tokenize("a\\b \"x\ny\""), vec!["a\\b", "x", "y"]);
        // A backslash-newline inside quotes continues after the indentation.
        assert_eq!(tokenize("\"ab\\\n    cd\""), vec!["abcd"]);
        assert!(tokenize("  \n# only a comment").is_empty());
    }

    #[test]
    fn quote_roundtrips() {
        for t in [
            "",
            "plain",
            "a b",
            "q\"uo'te",
            "back\\slash",
            "nl\nx",
            "tab\t",
        ] {
            assert_eq!(tokenize(&quote(t)), vec![t.to_string()], "{t:?}");
        }
    }

    #[test]
    fn expands_one_level() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("args");
        std::fs::write(&f, "-d out\n@inner A.java").unwrap();
        let args = vec![
            OsString::from("-g"),
            OsString::from(format!("@{}", f.display())),
            OsString::from("@@lit"),
        ];
        let got: Vec<(String, bool)> = expand(&args)
            .unwrap()
            .into_iter()
            .map(|a| (a.text, a.from_file))
            .collect();
        assert_eq!(
            got,
            vec![
                ("-g".into(), false),
                ("-d".into(), true),
                ("out".into(), true),
                ("@inner".into(), true),
                ("A.java".into(), true),
                ("@lit".into(), false),
            ]
        );
        let missing = expand(&[OsString::from("@/nonexistent/args")]).unwrap_err();
        assert_eq!(missing.reason, "argfile_unreadable");
    }
}
