//! Compares two compiles' key inputs ([`Record`]s) and says what differed, most
//! telling first: the compiler, the key's scheme, the arguments, the environment, the
//! working directory, files named by flags, then what the compile read (the source,
//! headers whose content changed, lookups that now find another file, files no longer
//! read). Pure: no I/O.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::{Digest, Record};

/// What kind of key input a finding is about.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Compiler,
    Scheme,
    Argument,
    Environment,
    Directory,
    FlagInput,
    Source,
    Header,
    Lookup,
    Text,
    Declared,
}

/// One difference between two compiles, in words, with the values on each side.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub kind: Kind,
    /// What differs: the argument, variable, file or lookup.
    pub subject: String,
    pub before: Option<String>,
    pub after: Option<String>,
    /// The finding as a sentence.
    pub text: String,
}

impl Finding {
    fn new(
        kind: Kind,
        subject: impl Into<String>,
        before: Option<String>,
        after: Option<String>,
        text: String,
    ) -> Finding {
        Finding {
            kind,
            subject: subject.into(),
            before,
            after,
            text,
        }
    }
}

/// The base key's fields, read back by what they are.
#[derive(Default, Debug, PartialEq, Eq)]
struct View {
    scheme: Vec<(String, String)>,
    invoked_as: Option<String>,
    args: Vec<String>,
    extra: Vec<String>,
    env: BTreeMap<String, Option<String>>,
    cwd: Option<String>,
    flag_inputs: BTreeMap<String, String>,
}

fn view(r: &Record) -> View {
    let mut v = View::default();
    let mut last_env: Option<String> = None;
    let mut last_input: Option<String> = None;
    for (tag, value) in &r.fields {
        match tag.as_str() {
            "schema" | "class" | "family" => v.scheme.push((tag.clone(), value.clone())),
            "invoked-as" => v.invoked_as = Some(value.clone()),
            "arg" => v.args.push(value.clone()),
            "extra" => v.extra.push(value.clone()),
            "env" => {
                v.env.insert(value.clone(), Some(String::new()));
                last_env = Some(value.clone());
            }
            "=" => {
                if let Some(name) = last_env.take() {
                    v.env.insert(name, Some(value.clone()));
                }
            }
            "noenv" => {
                v.env.insert(value.clone(), None);
            }
            "cwd" => v.cwd = Some(value.clone()),
            "input" => last_input = Some(value.clone()),
            "content" => {
                if let Some(p) = last_input.take() {
                    v.flag_inputs.insert(p, value.clone());
                }
            }
            _ => {}
        }
    }
    v
}

/// A path as people read it: relative to `cwd` when under it.
pub fn show_path(p: &str, cwd: &str) -> String {
    let cwd = cwd.trim_end_matches('/');
    match p.strip_prefix(cwd).and_then(|r| r.strip_prefix('/')) {
        Some(rel) if !cwd.is_empty() && !rel.is_empty() => rel.to_string(),
        _ => p.to_string(),
    }
}

fn file_name(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

/// What differs from `old` to `new`, most telling first.
pub fn diff(old: &Record, new: &Record) -> Vec<Finding> {
    let mut out = Vec::new();
    compiler(old, new, &mut out);
    let (a, b) = (view(old), view(new));
    for (tag, value) in &b.scheme {
        let before = a.scheme.iter().find(|(t, _)| t == tag).map(|(_, v)| v);
        if before != Some(value) {
            let what = match tag.as_str() {
                "class" => "keyed in mode",
                "family" => "compiler family",
                _ => "key schema",
            };
            out.push(Finding::new(
                Kind::Scheme,
                tag.clone(),
                before.cloned(),
                Some(value.clone()),
                format!(
                    "{what} {value} (before: {})",
                    before.map_or("none", |s| s.as_str())
                ),
            ));
        }
    }
    if a.invoked_as != b.invoked_as && a.invoked_as.is_some() && b.invoked_as.is_some() {
        let (x, y) = (a.invoked_as.clone(), b.invoked_as.clone());
        out.push(Finding::new(
            Kind::Compiler,
            "invoked as",
            x.clone(),
            y.clone(),
            format!(
                "the compiler is invoked as `{}` (before: `{}`)",
                y.unwrap_or_default(),
                x.unwrap_or_default()
            ),
        ));
    }
    list_diff(&a.args, &b.args, "argument", &mut out);
    list_diff(&a.extra, &b.extra, "key fact", &mut out);
    environment(&a.env, &b.env, &mut out);
    if a.cwd != b.cwd {
        let show = |c: &Option<String>| c.clone().unwrap_or_else(|| "not in the key".into());
        out.push(Finding::new(
            Kind::Directory,
            "working directory",
            a.cwd.clone(),
            b.cwd.clone(),
            format!(
                "the working directory (it reaches the outputs, e.g. through -g) is {} (before: {})",
                show(&b.cwd),
                show(&a.cwd)
            ),
        ));
    }
    for (p, d) in &b.flag_inputs {
        match a.flag_inputs.get(p) {
            Some(od) if od != d => out.push(Finding::new(
                Kind::FlagInput,
                p.clone(),
                None,
                None,
                format!(
                    "{} (a file named by a flag) changed content",
                    show_path(p, &new.cwd)
                ),
            )),
            _ => {}
        }
    }
    content(old, new, &mut out);
    out
}

fn compiler(old: &Record, new: &Record, out: &mut Vec<Finding>) {
    let (o, n) = (&old.compiler, &new.compiler);
    if o.identity == n.identity || o.identity == [0; 32] || n.identity == [0; 32] {
        return;
    }
    let mut what = Vec::new();
    if o.canonical != n.canonical {
        what.push(format!(
            "it is now {} (before: {})",
            n.canonical, o.canonical
        ));
    }
    match (&o.facts, &n.facts) {
        (Some(a), Some(b)) => {
            if a.binary != b.binary {
                what.push("its binary's content differs".into());
            }
            if a.version != b.version {
                what.push(format!(
                    "its version reads `{}` (before: `{}`)",
                    b.version, a.version
                ));
            } else if a.version_digest != b.version_digest {
                what.push("its `-v` output differs".into());
            }
            if a.toolchain != b.toolchain {
                what.push(
                    "its toolchain (the programs it starts, the libraries they load) differs"
                        .into(),
                );
            }
        }
        _ => what.push("its identity differs (its binary, `-v` output or toolchain)".into()),
    }
    out.push(Finding::new(
        Kind::Compiler,
        n.path.clone(),
        Some(o.canonical.clone()),
        Some(n.canonical.clone()),
        format!("the compiler {} changed: {}", n.path, what.join("; ")),
    ));
}

/// The name two versions of one argument share: a macro's (`-DNAME=…`, `-UNAME`),
/// an option's before `=` (`-std=…`), the optimization level.
fn arg_name(a: &str) -> Option<String> {
    if let Some(m) = a.strip_prefix("-D").or_else(|| a.strip_prefix("-U")) {
        return Some(format!("macro {}", m.split('=').next().unwrap_or(m)));
    }
    if a.starts_with("-O") && a.len() <= 3 {
        return Some("-O".into());
    }
    a.find('=').map(|i| a[..i].to_string())
}

/// The longest common subsequence's complement: what `b` removed and added, in order.
fn removed_added<'a>(a: &'a [String], b: &'a [String]) -> (Vec<&'a str>, Vec<&'a str>) {
    // Common prefix and suffix first: argument lists differ in a few places.
    let pre = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let suf = a[pre..]
        .iter()
        .rev()
        .zip(b[pre..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let (a, b) = (&a[pre..a.len() - suf], &b[pre..b.len() - suf]);
    if a.len() * b.len() > 4_000_000 {
        let sa: BTreeSet<&String> = a.iter().collect();
        let sb: BTreeSet<&String> = b.iter().collect();
        return (
            a.iter()
                .filter(|x| !sb.contains(x))
                .map(String::as_str)
                .collect(),
            b.iter()
                .filter(|x| !sa.contains(x))
                .map(String::as_str)
                .collect(),
        );
    }
    let (n, m) = (a.len(), b.len());
    let mut l = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            l[i][j] = if a[i] == b[j] {
                l[i + 1][j + 1] + 1
            } else {
                l[i + 1][j].max(l[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let (mut rem, mut add) = (Vec::new(), Vec::new());
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            i += 1;
            j += 1;
        } else if j < m && (i == n || l[i][j + 1] >= l[i + 1][j]) {
            add.push(b[j].as_str());
            j += 1;
        } else {
            rem.push(a[i].as_str());
            i += 1;
        }
    }
    (rem, add)
}

fn list_diff(a: &[String], b: &[String], what: &str, out: &mut Vec<Finding>) {
    let (removed, added) = removed_added(a, b);
    let mut used = vec![false; added.len()];
    for r in &removed {
        let pair = arg_name(r).and_then(|name| {
            (0..added.len()).find(|&k| !used[k] && arg_name(added[k]).as_ref() == Some(&name))
        });
        match pair {
            Some(k) => {
                used[k] = true;
                out.push(Finding::new(
                    Kind::Argument,
                    arg_name(r).unwrap_or_default(),
                    Some(r.to_string()),
                    Some(added[k].to_string()),
                    format!("{what} `{r}` became `{}`", added[k]),
                ));
            }
            None => out.push(Finding::new(
                Kind::Argument,
                r.to_string(),
                Some(r.to_string()),
                None,
                format!("{what} `{r}` was removed"),
            )),
        }
    }
    for (k, ad) in added.iter().enumerate() {
        if !used[k] {
            out.push(Finding::new(
                Kind::Argument,
                ad.to_string(),
                None,
                Some(ad.to_string()),
                format!("{what} `{ad}` was added"),
            ));
        }
    }
}

fn environment(
    a: &BTreeMap<String, Option<String>>,
    b: &BTreeMap<String, Option<String>>,
    out: &mut Vec<Finding>,
) {
    for (name, now) in b {
        let before = a.get(name).cloned().flatten();
        if a.get(name).is_none() || before == *now {
            // A variable only one side's family keys on says nothing by itself.
            continue;
        }
        let show = |v: &Option<String>| match v {
            Some(v) => format!("`{v}`"),
            None => "unset".into(),
        };
        out.push(Finding::new(
            Kind::Environment,
            name.clone(),
            before.clone(),
            now.clone(),
            format!(
                "environment variable {name} is {} (before: {})",
                show(now),
                show(&before)
            ),
        ));
    }
}

fn content(old: &Record, new: &Record, out: &mut Vec<Finding>) {
    let (o, n) = (&old.content, &new.content);
    let cwd = &new.cwd;
    if let (Some(a), Some(b)) = (o.source, n.source) {
        if a != b {
            out.push(Finding::new(
                Kind::Source,
                new.source.clone(),
                None,
                None,
                format!("the source {} changed content", show_path(&new.source, cwd)),
            ));
        }
    }
    if o.inputs_known && n.inputs_known {
        read_files(old, new, out);
    } else if let (Some(a), Some(b)) = (o.key, n.key) {
        if a != b && out.is_empty() {
            out.push(Finding::new(
                Kind::Text,
                "preprocessed text",
                None,
                None,
                "the preprocessed text differs: the source or a header it includes changed \
                 (preprocessor mode keeps no list of headers; direct mode would name the file)"
                    .into(),
            ));
        }
    }
    declared(&o.declared, &n.declared, out);
}

fn read_files(old: &Record, new: &Record, out: &mut Vec<Finding>) {
    let (o, n) = (&old.content, &new.content);
    let cwd = &new.cwd;
    let before: BTreeMap<&str, &Digest> = o.files.iter().map(|(p, d)| (p.as_str(), d)).collect();
    let now: BTreeMap<&str, &Digest> = n.files.iter().map(|(p, d)| (p.as_str(), d)).collect();
    let mut added = Vec::new();
    for (p, d) in &now {
        match before.get(p) {
            Some(od) if od != d => out.push(Finding::new(
                Kind::Header,
                p.to_string(),
                None,
                None,
                format!("{} changed content", show_path(p, cwd)),
            )),
            Some(_) => {}
            None => added.push(*p),
        }
    }
    let mut removed: Vec<&str> = before
        .keys()
        .filter(|p| !now.contains_key(*p))
        .copied()
        .collect();
    let was_missing = |p: &str| {
        o.missing
            .iter()
            .any(|m| p == m || (p.starts_with(m.as_str()) && p[m.len()..].starts_with('/')))
    };
    for p in added {
        let name = file_name(p);
        // The file the same lookup found before: one of the same name no longer read,
        // else one still read (the new one came first on the search list).
        let instead = removed
            .iter()
            .position(|r| file_name(r) == name)
            .map(|i| removed.remove(i))
            .or_else(|| before.keys().find(|r| file_name(r) == name).copied());
        let shown = show_path(p, cwd);
        let text = match (was_missing(p), instead) {
            (true, Some(b)) => format!(
                "#include \"{name}\" now finds {shown} (before: {}): a new file where the lookup found nothing",
                show_path(b, cwd)
            ),
            (true, None) => {
                format!("{shown} now exists where an include lookup found nothing before, and is read")
            }
            (false, Some(b)) => format!(
                "#include \"{name}\" now finds {shown} (before: {})",
                show_path(b, cwd)
            ),
            (false, None) => format!("{shown} is now read (it was not before)"),
        };
        out.push(Finding::new(
            Kind::Lookup,
            p.to_string(),
            instead.map(str::to_string),
            Some(p.to_string()),
            text,
        ));
    }
    for r in removed {
        out.push(Finding::new(
            Kind::Header,
            r.to_string(),
            Some(r.to_string()),
            None,
            format!("{} is no longer read", show_path(r, cwd)),
        ));
    }
    for (list_a, list_b, what) in [
        (&o.present, &n.present, "a file a lookup finds"),
        (
            &o.not_file,
            &n.not_file,
            "something that is not a file where a lookup looks",
        ),
    ] {
        let sa: BTreeSet<&String> = list_a.iter().collect();
        let sb: BTreeSet<&String> = list_b.iter().collect();
        for p in sb.difference(&sa) {
            out.push(Finding::new(
                Kind::Lookup,
                p.to_string(),
                None,
                Some(p.to_string()),
                format!("{} is now {what}", show_path(p, cwd)),
            ));
        }
        for p in sa.difference(&sb) {
            out.push(Finding::new(
                Kind::Lookup,
                p.to_string(),
                Some(p.to_string()),
                None,
                format!("{} is no longer {what}", show_path(p, cwd)),
            ));
        }
    }
}

fn declared(a: &[(String, Digest)], b: &[(String, Digest)], out: &mut Vec<Finding>) {
    let before: BTreeMap<&str, &Digest> = a.iter().map(|(p, d)| (p.as_str(), d)).collect();
    let now: BTreeMap<&str, &Digest> = b.iter().map(|(p, d)| (p.as_str(), d)).collect();
    for (l, d) in &now {
        let text = match before.get(l) {
            Some(od) if od != d => format!("input {l} changed content"),
            Some(_) => continue,
            None => format!("input {l} was added"),
        };
        out.push(Finding::new(
            Kind::Declared,
            l.to_string(),
            None,
            None,
            text,
        ));
    }
    for l in before.keys().filter(|l| !now.contains_key(*l)) {
        out.push(Finding::new(
            Kind::Declared,
            l.to_string(),
            None,
            None,
            format!("input {l} was removed"),
        ));
    }
}

/// The earlier record nearest to `target`: the fewest differences in the key's base
/// (compiler, arguments, environment) first, then in all; the newest among equals.
pub fn nearest<'a>(target: &Record, earlier: &'a [Record]) -> Option<(&'a Record, Vec<Finding>)> {
    earlier
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let f = diff(r, target);
            let base = f.iter().filter(|x| x.kind < Kind::FlagInput).count();
            ((base, f.len(), i), r, f)
        })
        .min_by_key(|(k, _, _)| *k)
        .map(|(_, r, f)| (r, f))
}

#[cfg(test)]
mod tests {
    use super::super::{Compiler, Content, Outcome};
    use super::*;
    use crate::key::IdentityFacts;

    fn record(
        args: &[&str],
        env: &[(&str, Option<&str>)],
        files: &[(&str, u8)],
        missing: &[&str],
    ) -> Record {
        let mut fields = vec![
            ("schema".to_string(), "4".to_string()),
            ("class".into(), "direct".into()),
            ("family".into(), "gcc".into()),
            ("compiler".into(), "ab".into()),
            ("invoked-as".into(), "gcc".into()),
            ("argc".into(), args.len().to_string()),
        ];
        fields.extend(args.iter().map(|a| ("arg".to_string(), a.to_string())));
        for (k, v) in env {
            match v {
                Some(v) => {
                    fields.push(("env".into(), k.to_string()));
                    fields.push(("=".into(), v.to_string()));
                }
                None => fields.push(("noenv".into(), k.to_string())),
            }
        }
        Record {
            time_s: 1,
            source: "/w/a.c".into(),
            cwd: "/w".into(),
            argv: vec![],
            mode: "direct".into(),
            outcome: Outcome::Stored,
            compiler: Compiler {
                path: "/usr/bin/gcc".into(),
                canonical: "/usr/bin/gcc-12".into(),
                identity: [1; 32],
                facts: Some(IdentityFacts {
                    binary: [1; 32],
                    version: "gcc version 12.2.0".into(),
                    version_digest: [1; 32],
                    toolchain: Some([1; 32]),
                }),
            },
            fields,
            content: Content {
                source: Some([7; 16]),
                files: files
                    .iter()
                    .map(|(p, d)| (p.to_string(), [*d; 16]))
                    .collect(),
                missing: missing.iter().map(|s| s.to_string()).collect(),
                inputs_known: true,
                ..Content::default()
            },
            truncated: false,
        }
    }

    fn base() -> Record {
        record(
            &["-c", "-DLEVEL=1", "-O2"],
            &[("LANG", Some("C")), ("SOURCE_DATE_EPOCH", None)],
            &[("/w/include/foo.h", 1), ("/usr/include/config.h", 2)],
            &["/w/config.h", "/w/src"],
        )
    }

    #[test]
    fn identical_records_have_no_findings() {
        assert!(diff(&base(), &base()).is_empty());
    }

    #[test]
    fn a_changed_define_is_one_finding_naming_both() {
        let mut n = base();
        for f in &mut n.fields {
            if f.1 == "-DLEVEL=1" {
                f.1 = "-DLEVEL=2".into();
            }
        }
        n.fields.push(("arg".into(), "-g".into()));
        let f = diff(&base(), &n);
        assert_eq!(f.len(), 2, "{f:?}");
        assert_eq!(f[0].text, "argument `-DLEVEL=1` became `-DLEVEL=2`");
        assert_eq!(f[1].text, "argument `-g` was added");
    }

    #[test]
    fn headers_lookups_environment_and_compiler() {
        let mut n = record(
            &["-c", "-DLEVEL=1", "-O2"],
            &[("LANG", Some("C")), ("SOURCE_DATE_EPOCH", Some("5"))],
            &[("/w/include/foo.h", 9), ("/w/src/config.h", 3)],
            &["/w/config.h"],
        );
        n.compiler.identity = [2; 32];
        n.compiler.facts.as_mut().unwrap().version = "gcc version 13.1.0".into();
        let f = diff(&base(), &n);
        let texts: Vec<&str> = f.iter().map(|x| x.text.as_str()).collect();
        assert_eq!(f[0].kind, Kind::Compiler);
        assert!(texts[0].contains("gcc version 13.1.0"), "{texts:?}");
        assert!(texts.contains(&"environment variable SOURCE_DATE_EPOCH is `5` (before: unset)"));
        assert!(
            texts.contains(&"include/foo.h changed content"),
            "{texts:?}"
        );
        assert!(
            texts.iter().any(|t| t.starts_with(
                "#include \"config.h\" now finds src/config.h (before: /usr/include/config.h)"
            )),
            "{texts:?}"
        );
        // The shadowed file is named in the lookup's finding, not again as removed.
        assert!(
            !texts.iter().any(|t| t.contains("no longer read")),
            "{texts:?}"
        );
        // Ordered: compiler, environment, then what was read.
        let kinds: Vec<Kind> = f.iter().map(|x| x.kind).collect();
        let mut sorted = kinds.clone();
        sorted.sort();
        assert_eq!(kinds, sorted);
    }

    #[test]
    fn nearest_prefers_the_same_arguments() {
        let mut other = base();
        other.fields.push(("arg".into(), "-g".into()));
        let mut target = base();
        target.content.files[0].1 = [5; 16];
        let earlier = vec![other, base()];
        let (r, f) = nearest(&target, &earlier).unwrap();
        assert_eq!(r, &earlier[1]);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].text, "include/foo.h changed content");
    }
}
