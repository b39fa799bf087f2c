//! C#: Mono's mcs (and Roslyn's csc where it exists): the only code in farm that knows
//! their command lines.
//!
//! Cacheable: `.cs` sources compiled with `/out:`, every option known here, every
//! reference resolvable the way the compiler resolves it. The outputs (assembly,
//! `.pdb`/`.mdb`, `/doc:` XML, `/refout:`) are found by compiling into fresh
//! directories. Analyzers, `/pkg:` (runs pkg-config), `/recurse:` wildcards and key
//! containers run the real compiler untouched. mcs output is not deterministic (the
//! module's MVID is random); that does not matter for caching: a hit restores one
//! real compile's bytes.

pub mod args;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::{
    reroot, CompileRun, Declared, DeclaredInputs, Family, IdentityProbe, Invocation, KeyInput,
    KeyPath, Keying, Output, OutputDir, Passthrough, PathFacts, Plan, TreeArgs, TreeJobs,
};
use crate::fsutil;

pub struct Csc;
pub static CSC: Csc = Csc;

/// Mono's `mcs` (also `mono-csc`, `dmcs`, `gmcs`) or Roslyn's `csc`.
pub fn is_csc(name: &str) -> bool {
    matches!(name, "mcs" | "csc" | "mono-csc" | "dmcs" | "gmcs")
}

/// Environment that changes what the compiler loads or prints.
const KEY_ENV: &[&str] = &[
    "MONO_OPTIONS",
    "MONO_PATH",
    "MONO_CFG_DIR",
    "MONO_CONFIG",
    "MONO_ENV_OPTIONS",
    "MONO_GAC_PREFIX",
    "LANG",
    "LC_ALL",
    "LC_MESSAGES",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Opt {
    /// Enters the key as written.
    Plain,
    /// `/reference:` items (`[alias=]name-or-path`).
    Reference,
    /// `/lib:` directories searched for references.
    Lib,
    /// A file read by content (the part before a `,` for resources).
    InFile,
    /// An output file with this role.
    Out(&'static str),
    /// Not cacheable: the reason.
    Refuse(&'static str),
    /// Version or help: the real compiler answers.
    Info,
}

/// Options by lower-case name (without `/` or `-`, without `+`/`-` and value).
const OPTIONS: &[(&str, Opt)] = &[
    ("target", Opt::Plain),
    ("t", Opt::Plain),
    ("define", Opt::Plain),
    ("d", Opt::Plain),
    ("debug", Opt::Plain),
    ("optimize", Opt::Plain),
    ("o", Opt::Plain),
    ("warn", Opt::Plain),
    ("w", Opt::Plain),
    ("nowarn", Opt::Plain),
    ("warnaserror", Opt::Plain),
    ("unsafe", Opt::Plain),
    ("checked", Opt::Plain),
    ("nostdlib", Opt::Plain),
    ("noconfig", Opt::Plain),
    ("nologo", Opt::Plain),
    ("langversion", Opt::Plain),
    ("sdk", Opt::Plain),
    ("platform", Opt::Plain),
    ("main", Opt::Plain),
    ("m", Opt::Plain),
    ("codepage", Opt::Plain),
    ("utf8output", Opt::Plain),
    ("fullpaths", Opt::Plain),
    ("deterministic", Opt::Plain),
    ("pathmap", Opt::Plain),
    ("delaysign", Opt::Plain),
    ("publicsign", Opt::Plain),
    ("highentropyva", Opt::Plain),
    ("filealign", Opt::Plain),
    ("subsystemversion", Opt::Plain),
    ("errorreport", Opt::Plain),
    ("features", Opt::Plain),
    ("nullable", Opt::Plain),
    ("checksumalgorithm", Opt::Plain),
    ("moduleassemblyname", Opt::Plain),
    ("modulename", Opt::Plain),
    ("runtimemetadataversion", Opt::Plain),
    ("refonly", Opt::Plain),
    ("reference", Opt::Reference),
    ("r", Opt::Reference),
    ("lib", Opt::Lib),
    ("keyfile", Opt::InFile),
    ("resource", Opt::InFile),
    ("res", Opt::InFile),
    ("linkresource", Opt::InFile),
    ("linkres", Opt::InFile),
    ("win32res", Opt::InFile),
    ("win32icon", Opt::InFile),
    ("win32manifest", Opt::InFile),
    ("addmodule", Opt::InFile),
    ("out", Opt::Out("out")),
    ("doc", Opt::Out("doc")),
    ("refout", Opt::Out("refout")),
    ("pdb", Opt::Out("pdb")),
    ("pkg", Opt::Refuse("pkg_config")),
    ("recurse", Opt::Refuse("wildcard_sources")),
    ("keycontainer", Opt::Refuse("key_container")),
    ("analyzer", Opt::Refuse("analyzers")),
    ("a", Opt::Refuse("analyzers")),
    ("additionalfile", Opt::Refuse("analyzers")),
    ("ruleset", Opt::Refuse("analyzers")),
    ("generatedfilesout", Opt::Refuse("writes_elsewhere")),
    ("errorlog", Opt::Refuse("writes_elsewhere")),
    ("embed", Opt::Refuse("embedded_sources")),
    ("sourcelink", Opt::Refuse("embedded_sources")),
    ("instrument", Opt::Refuse("instrument")),
    ("shared", Opt::Refuse("compiler_server")),
    ("parallel", Opt::Plain),
    ("v", Opt::Refuse("verbose")),
    ("help", Opt::Info),
    ("h", Opt::Info),
    ("?", Opt::Info),
    ("version", Opt::Info),
    ("about", Opt::Info),
];

/// Options a worker passes on as written: each changes only how the shipped sources
/// are compiled, names no file and loads no code. Everything else a worker refuses
/// unless its own rule below re-roots or checks it: `/errorreport:` (may send reports),
/// `/features:` (the compiler's internal switches, anything at all), `/addmodule:`
/// (merges and loads a module), and any option added to [`OPTIONS`] later.
const WORKER_PLAIN: &[&str] = &[
    "target",
    "t",
    "define",
    "d",
    "debug",
    "optimize",
    "o",
    "warn",
    "w",
    "nowarn",
    "warnaserror",
    "unsafe",
    "checked",
    "nostdlib",
    "noconfig",
    "nologo",
    "langversion",
    "platform",
    "main",
    "m",
    "codepage",
    "utf8output",
    "fullpaths",
    "deterministic",
    "pathmap",
    "delaysign",
    "publicsign",
    "highentropyva",
    "filealign",
    "subsystemversion",
    "nullable",
    "checksumalgorithm",
    "moduleassemblyname",
    "modulename",
    "runtimemetadataversion",
    "refonly",
    "parallel",
];

/// File options a worker accepts, each file re-rooted under the job (read only).
const WORKER_IN_FILE: &[&str] = &[
    "keyfile",
    "resource",
    "res",
    "linkresource",
    "linkres",
    "win32res",
    "win32icon",
    "win32manifest",
];

/// A name the worker may pass on where the compiler looks it up in directories
/// (`/r:System.Xml.dll`, `/sdk:4.5`): no separator, no leading dot, nothing odd.
fn plain_name(v: &str) -> bool {
    !v.is_empty()
        && !v.starts_with(['.', '-'])
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn lookup(name: &str) -> Option<Opt> {
    let base = name.trim_end_matches(['+', '-']);
    OPTIONS.iter().find(|(n, _)| *n == base).map(|(_, o)| *o)
}

/// A token and what it is.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Plain,
    Source,
    /// `/r:` with its items (`alias=` kept apart).
    Reference(Vec<(Option<String>, String)>),
    Lib(Vec<String>),
    /// A file option: its spelling up to the value, the file, and the rest (`,name`).
    InFile(String, String, String),
    /// An output option: its spelling up to the value, and the output's index.
    Out(String, usize),
}

#[derive(Clone, Debug)]
pub struct CscPlan {
    /// The arguments with response files expanded, and what each is.
    tokens: Vec<(String, Token)>,
    /// Outputs: role, the file as named.
    outs: Vec<(&'static str, PathBuf)>,
}

fn plan(inv: &Invocation) -> &CscPlan {
    inv.plan.get().expect("csc invocation without a csc plan")
}

/// The assembly the `mcs`/`csc` launcher script runs (`…/lib/mono/4.5/mcs.exe`), and
/// the runtime it runs it with.
fn launcher_targets(canonical: &Path) -> (Option<PathBuf>, Option<PathBuf>) {
    let Ok(text) = std::fs::read(canonical) else {
        return (None, None);
    };
    if text.len() > 64 * 1024 || !text.starts_with(b"#!") {
        return (None, None);
    }
    let text = String::from_utf8_lossy(&text);
    let mut exe = None;
    let mut runtime = None;
    for tok in text.split(|c: char| c.is_whitespace() || c == '"' || c == '\'') {
        if tok.ends_with("mcs.exe") || tok.ends_with("csc.exe") {
            exe.get_or_insert_with(|| PathBuf::from(tok));
        } else if tok.ends_with("/mono") && tok.starts_with('/') {
            runtime.get_or_insert_with(|| PathBuf::from(tok));
        }
    }
    (exe, runtime)
}

/// The directory the compiler's own assemblies and class library are in.
fn sdk_dir(canonical: &Path) -> Option<PathBuf> {
    let (exe, _) = launcher_targets(canonical);
    exe.and_then(|e| e.parent().map(Path::to_path_buf))
}

fn out_role_dir(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

impl Csc {
    fn parse_args(
        &self,
        compiler: &Path,
        arg0: &OsString,
        args: &[OsString],
    ) -> Result<Invocation, Passthrough> {
        let canonical = std::fs::canonicalize(compiler).unwrap_or_else(|_| compiler.to_path_buf());
        // Without its class library directory (`lib/mono/4.5`) the identity probe
        // would miss the assemblies the compiler loads: not cached.
        if sdk_dir(&canonical).is_none() {
            return Err(Passthrough::new(
                "compiler_layout",
                canonical.display().to_string(),
            ));
        }
        // Roslyn's csc reads response files in place, Mono's mcs appends them.
        let how = match canonical.file_name().and_then(|n| n.to_str()) {
            Some("csc") => args::Expansion::InPlace,
            _ => args::Expansion::Append,
        };
        let expanded = args::expand(args, how)?;
        let mut tokens = Vec::with_capacity(expanded.len());
        let mut outs: Vec<(&'static str, PathBuf)> = Vec::new();
        let mut key_args = Vec::with_capacity(expanded.len());
        let mut key_paths: Vec<KeyPath> = Vec::new();
        let mut sources = Vec::new();
        let mut debug = false;
        for a in &expanded {
            let Some((name, value)) = args::split_option(a) else {
                if a.contains(['*', '?']) {
                    return Err(Passthrough::new("wildcard_sources", a.as_str()));
                }
                if !a.to_ascii_lowercase().ends_with(".cs") {
                    return Err(Passthrough::new("non_source_operand", a.as_str()));
                }
                sources.push(a.clone());
                tokens.push((a.clone(), Token::Source));
                key_paths.push(KeyPath::at(key_args.len(), 0));
                key_args.push(OsString::from(a));
                continue;
            };
            let Some(opt) = lookup(&name) else {
                return Err(Passthrough::new("unknown_option", a.as_str()));
            };
            let need = |v: Option<&str>| {
                v.filter(|v| !v.is_empty())
                    .map(str::to_string)
                    .ok_or_else(|| Passthrough::new("missing_value", a.as_str()))
            };
            // The option as written up to its value (`/out:`, `-r:`).
            let spelling = &a[..a.len() - value.map(str::len).unwrap_or(0)];
            let tok = match opt {
                Opt::Plain => {
                    if name.trim_end_matches('+') == "debug" && !name.ends_with('-') {
                        debug = value.map(|v| v != "-").unwrap_or(true);
                    }
                    Token::Plain
                }
                Opt::Info => return Err(Passthrough::new("information", a.as_str())),
                Opt::Refuse(r) => return Err(Passthrough::new(r, a.as_str())),
                Opt::Reference => {
                    let v = need(value)?;
                    let items = args::list(&v)
                        .into_iter()
                        .map(|it| match it.split_once('=') {
                            Some((alias, path)) => (Some(alias.to_string()), path.to_string()),
                            None => (None, it.to_string()),
                        })
                        .collect();
                    Token::Reference(items)
                }
                Opt::Lib => Token::Lib(
                    args::list(&need(value)?)
                        .into_iter()
                        .map(str::to_string)
                        .collect(),
                ),
                Opt::InFile => {
                    let v = need(value)?;
                    let (file, rest) = match v.split_once(',') {
                        Some((f, r)) => (f.to_string(), format!(",{r}")),
                        None => (v.clone(), String::new()),
                    };
                    Token::InFile(spelling.to_string(), file, rest)
                }
                Opt::Out(role) => {
                    let v = need(value)?;
                    if outs.iter().any(|(r, _)| *r == role) {
                        return Err(Passthrough::new("repeated_option", a.as_str()));
                    }
                    outs.push((role, PathBuf::from(&v)));
                    Token::Out(spelling.to_string(), outs.len() - 1)
                }
            };
            // Output directories are not in the key; output file names are (the
            // assembly's name comes from its file name).
            let key = match &tok {
                Token::Out(sp, i) => format!("{sp}<{}>/{}", outs[*i].0, file_name(&outs[*i].1)),
                _ => a.clone(),
            };
            // Where the key holds paths (for base_dir): a file a flag names, a lone
            // reference by path (sources are marked above).
            let at = key_args.len();
            match &tok {
                Token::InFile(sp, _, _) => key_paths.push(KeyPath {
                    until: Some(b','),
                    ..KeyPath::at(at, sp.len())
                }),
                Token::Reference(items) if items.len() == 1 && items[0].0.is_none() => {
                    key_paths.push(KeyPath::at(at, spelling.len()))
                }
                _ => {}
            }
            key_args.push(OsString::from(key));
            tokens.push((a.clone(), tok));
        }
        if sources.is_empty() {
            return Err(Passthrough::new("no_sources", ""));
        }
        if !outs.iter().any(|(r, _)| *r == "out") {
            // The default output name comes from a source's name: not guessed here.
            return Err(Passthrough::new("no_output_file", ""));
        }
        for (_, p) in &outs {
            // mcs does not create directories: it reports a missing one itself.
            if !out_role_dir(p).is_dir() {
                return Err(Passthrough::new(
                    "output_dir_missing",
                    p.display().to_string(),
                ));
            }
        }
        let outputs = outs
            .iter()
            .map(|(role, p)| Output {
                role,
                path: out_role_dir(p),
                lists_paths: None,
            })
            .collect();
        Ok(Invocation {
            compiler: compiler.to_path_buf(),
            arg0: arg0.clone(),
            args: args.to_vec(),
            key_args,
            key_extra: Vec::new(),
            source: PathBuf::from(&sources[0]),
            extra_inputs: Vec::new(),
            outputs,
            // Debug information records where the sources were, and so does a
            // `[CallerFilePath]` argument: the compiler makes a relative source's
            // path absolute with the cwd.
            cwd_in_key: if debug || sources.iter().any(|s| !Path::new(s).is_absolute()) {
                std::env::current_dir().ok()
            } else {
                None
            },
            observe_args: Vec::new(),
            // Debug symbols record the sources' paths.
            paths: PathFacts {
                key_args: key_paths,
                recorded: debug.then(Vec::new),
                ..PathFacts::default()
            },
            plan: Plan::new(CscPlan { tokens, outs }),
        })
    }

    /// Directories a bare reference name is looked for in, in the compiler's order:
    /// each `/lib:` directory, then the working directory (the class library comes
    /// after, and is part of the compiler's identity).
    fn lib_dirs(p: &CscPlan) -> Vec<PathBuf> {
        let mut dirs = Vec::new();
        for (_, t) in &p.tokens {
            if let Token::Lib(l) = t {
                dirs.extend(l.iter().map(PathBuf::from));
            }
        }
        dirs.push(PathBuf::from("."));
        dirs
    }

    /// The arguments with outputs sent to `dirs`, and paths made absolute against
    /// `cwd` when given (for a process elsewhere); says whether a source path moved.
    fn rewritten(&self, p: &CscPlan, dirs: &[PathBuf], cwd: Option<&Path>) -> (Vec<String>, bool) {
        let abs = |s: &str| -> String {
            match cwd {
                Some(c) if !Path::new(s).is_absolute() => fsutil::clean_path(&c.join(s))
                    .to_string_lossy()
                    .into_owned(),
                _ => s.to_string(),
            }
        };
        let mut out = Vec::with_capacity(p.tokens.len() + 1);
        let mut moved = false;
        for (text, tok) in &p.tokens {
            match tok {
                Token::Plain => out.push(text.clone()),
                Token::Source => {
                    let a = abs(text);
                    moved |= a != *text;
                    out.push(a);
                }
                Token::Reference(items) => {
                    let (spelling, _) = text.split_at(text.find(':').map(|i| i + 1).unwrap_or(0));
                    let items: Vec<String> = items
                        .iter()
                        .map(|(alias, r)| {
                            let r = if r.contains('/') { abs(r) } else { r.clone() };
                            match alias {
                                Some(a) => format!("{a}={r}"),
                                None => r,
                            }
                        })
                        .collect();
                    out.push(format!("{spelling}{}", items.join(",")));
                }
                Token::Lib(l) => {
                    let (spelling, _) = text.split_at(text.find(':').map(|i| i + 1).unwrap_or(0));
                    let l: Vec<String> = l.iter().map(|d| abs(d)).collect();
                    out.push(format!("{spelling}{}", l.join(",")));
                }
                Token::InFile(sp, f, rest) => out.push(format!("{sp}{}{rest}", abs(f))),
                Token::Out(sp, i) => {
                    let name = file_name(&p.outs[*i].1);
                    out.push(format!("{sp}{}", dirs[*i].join(name).to_string_lossy()));
                }
            }
        }
        if let Some(c) = cwd {
            // The working directory is searched for references after every /lib:.
            out.push(format!("/lib:{}", c.to_string_lossy()));
        }
        (out, moved)
    }
}

impl Declared for Csc {
    fn output_dirs(&self, inv: &Invocation) -> Vec<OutputDir> {
        plan(inv)
            .outs
            .iter()
            .map(|(role, p)| OutputDir {
                role,
                path: out_role_dir(p),
            })
            .collect()
    }

    fn inputs(&self, inv: &Invocation, memo: &Path) -> Result<DeclaredInputs, Passthrough> {
        let p = plan(inv);
        let mut out = DeclaredInputs::default();
        let mut add = |label: String, path: &Path, required: bool| -> Result<(), Passthrough> {
            match crate::digest::digest_memo(path, memo) {
                Ok(d) => {
                    out.key.push(KeyInput { label, digest: d });
                    out.files.push((path.to_path_buf(), d));
                    Ok(())
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                    out.key.push(KeyInput {
                        label: format!("{label} (missing)"),
                        digest: [0; 32],
                    });
                    Ok(())
                }
                // The compiler reports a missing or unreadable input in its words.
                Err(e) => Err(Passthrough::new(
                    "input_unreadable",
                    format!("{}: {e}", path.display()),
                )),
            }
        };
        let dirs = Self::lib_dirs(p);
        for (text, tok) in &p.tokens {
            match tok {
                Token::Source => add(format!("source {text}"), Path::new(text), true)?,
                Token::InFile(sp, f, _) => add(format!("{sp}{f}"), Path::new(f), true)?,
                Token::Reference(items) => {
                    for (_, r) in items {
                        if r.contains('/') {
                            add(format!("reference {r}"), Path::new(r), true)?;
                            continue;
                        }
                        // Every place the compiler may look, found or not.
                        let ext = r.ends_with(".dll") || r.ends_with(".exe");
                        for d in &dirs {
                            let mut names = vec![d.join(r)];
                            if !ext {
                                names.push(d.join(format!("{r}.dll")));
                            }
                            for n in names {
                                add(format!("reference {r} as {}", n.display()), &n, false)?;
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(out)
    }

    fn compile_into(
        &self,
        inv: &Invocation,
        dirs: &[PathBuf],
        _scratch: &Path,
    ) -> std::io::Result<CompileRun> {
        let (args, _) = self.rewritten(plan(inv), dirs, None);
        super::run_compiler(inv, args)
    }
}

impl TreeJobs for Csc {
    fn tree_args(&self, inv: &Invocation, dirs: &[PathBuf]) -> Result<TreeArgs, Passthrough> {
        let p = plan(inv);
        let cwd = std::env::current_dir()
            .map_err(|e| Passthrough::new("working_directory", e.to_string()))?;
        let (args, moved) = self.rewritten(p, dirs, Some(&cwd));
        // Only a compile a worker accepts is shipped: the rest compiles here, not
        // refused by a peer after its inputs crossed the wire.
        let outputs: Vec<(String, String)> = p
            .outs
            .iter()
            .zip(dirs)
            .map(|((role, _), d)| (role.to_string(), d.to_string_lossy().into_owned()))
            .collect();
        if let Err(why) = self.worker_tree_args(&args, &outputs, Path::new("/"), Path::new("/")) {
            return Err(Passthrough::new("flag", why.detail));
        }
        Ok(TreeArgs {
            args,
            paths_rewritten: moved,
        })
    }

    fn worker_tree_args(
        &self,
        args: &[String],
        outputs: &[(String, String)],
        root: &Path,
        out: &Path,
    ) -> Result<Vec<String>, Passthrough> {
        let refuse = |what: &str, v: &str| Passthrough::new("refused", format!("{what} {v:?}"));
        let rooted = |v: &str| -> Result<String, Passthrough> {
            if v.contains('\\') {
                // Mono maps `\` to `/` when asked to (MONO_IOMAP): never a path here.
                return Err(refuse("path", v));
            }
            reroot(root, v)
                .map(|p| p.to_string_lossy().into_owned())
                .ok_or_else(|| refuse("path", v))
        };
        let mut res = Vec::with_capacity(args.len());
        for a in args {
            if a.chars().any(|c| c.is_control()) || a.starts_with('@') {
                return Err(refuse("argument", a));
            }
            let Some((name, value)) = args::split_option(a) else {
                if !a.to_ascii_lowercase().ends_with(".cs") || a.contains(['*', '?']) {
                    return Err(refuse("operand", a));
                }
                res.push(rooted(a)?);
                continue;
            };
            let spelling = &a[..a.len() - value.map(str::len).unwrap_or(0)];
            let v = value.unwrap_or("");
            let base = name.trim_end_matches(['+', '-']);
            let new = match lookup(&name) {
                Some(Opt::Plain) if WORKER_PLAIN.contains(&base) => a.clone(),
                // The class library's version: a directory next to the compiler's.
                Some(Opt::Plain) if base == "sdk" && plain_name(v) => a.clone(),
                Some(Opt::Reference) => {
                    let mut items = Vec::new();
                    for it in args::list(v) {
                        let (alias, r) = match it.split_once('=') {
                            Some((al, r)) => (Some(al), r),
                            None => (None, it),
                        };
                        // A bare name resolves in the class library (or the rooted
                        // /lib: directories); a path must be one that was shipped.
                        let r = if r.contains('/') {
                            rooted(r)?
                        } else if plain_name(r) {
                            r.to_string()
                        } else {
                            return Err(refuse("reference", r));
                        };
                        items.push(match alias {
                            Some(al) => format!("{al}={r}"),
                            None => r,
                        });
                    }
                    format!("{spelling}{}", items.join(","))
                }
                Some(Opt::Lib) => {
                    let mut l = Vec::new();
                    for d in args::list(v) {
                        l.push(rooted(d)?);
                    }
                    format!("{spelling}{}", l.join(","))
                }
                Some(Opt::InFile) if WORKER_IN_FILE.contains(&base) => {
                    let (f, rest) = match v.split_once(',') {
                        Some((f, r)) => (f, format!(",{r}")),
                        None => (v, String::new()),
                    };
                    format!("{spelling}{}{rest}", rooted(f)?)
                }
                Some(Opt::Out(role)) => {
                    let declared = outputs
                        .iter()
                        .any(|(r, d)| r == role && Path::new(v).parent() == Some(Path::new(d)));
                    let name = Path::new(v).file_name().map(|n| n.to_string_lossy());
                    match (declared, name) {
                        (true, Some(n)) if !n.contains(['/', '\\']) => {
                            format!("{spelling}{}", out.join(role).join(&*n).to_string_lossy())
                        }
                        _ => return Err(refuse("output", a)),
                    }
                }
                _ => return Err(refuse("option", a)),
            };
            res.push(new);
        }
        Ok(res)
    }
}

impl Family for Csc {
    fn name(&self) -> &'static str {
        "csc"
    }

    fn recognizes(&self, compiler_name: &str) -> bool {
        is_csc(compiler_name)
    }

    fn key_env(&self) -> &'static [&'static str] {
        KEY_ENV
    }

    fn unsafe_env(&self) -> &'static [&'static str] {
        &[]
    }

    fn identity_probe(&self, canonical: &Path) -> IdentityProbe {
        // The launcher script, the compiler assembly, the runtime, the default
        // response file and the class library (every assembly the compiler may load
        // without being told where): a Mono update changes some of them.
        let (exe, runtime) = launcher_targets(canonical);
        let mut files: Vec<PathBuf> = exe.iter().chain(runtime.iter()).cloned().collect();
        if let Some(sdk) = exe.as_deref().and_then(Path::parent) {
            for dir in [sdk.to_path_buf(), sdk.join("Facades")] {
                if let Ok(rd) = std::fs::read_dir(&dir) {
                    let mut v: Vec<PathBuf> = rd
                        .flatten()
                        .map(|e| e.path())
                        .filter(|p| {
                            p.extension().map(|x| x == "dll").unwrap_or(false)
                                || p.file_name().map(|n| n == "mcs.rsp").unwrap_or(false)
                        })
                        .collect();
                    v.sort();
                    files.extend(v);
                }
            }
        }
        files.retain(|f| f.is_file());
        let name = canonical
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        IdentityProbe {
            files,
            programs: None,
            version_args: if name.as_deref() == Some("csc") {
                vec!["-version"]
            } else {
                vec!["--version"]
            },
        }
    }

    fn keying(&self) -> Keying<'_> {
        Keying::Declared(self)
    }

    fn toolchain_config(&self) -> Vec<PathBuf> {
        let mono = PathBuf::from("/etc/mono");
        if mono.exists() {
            vec![mono]
        } else {
            Vec::new()
        }
    }

    fn tree_jobs(&self) -> Option<&dyn TreeJobs> {
        Some(self)
    }

    fn parse(
        &self,
        compiler: &Path,
        arg0: &OsString,
        args: &[OsString],
        _stderr_is_tty: bool,
    ) -> Result<Invocation, Passthrough> {
        self.parse_args(compiler, arg0, args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_csc("mcs") && is_csc("csc") && is_csc("mono-csc"));
        assert!(!is_csc("farm-csc") && !is_csc("mcs2"));
    }

    #[test]
    fn launcher_script_names_the_compiler_and_runtime() {
        let d = tempfile::tempdir().unwrap();
        let s = d.path().join("mcs");
        std::fs::write(
            &s,
            "#!/bin/sh\nexec /usr/bin/mono $MONO_OPTIONS /usr/lib/mono/4.5/mcs.exe \"$@\"\n",
        )
        .unwrap();
        let (exe, rt) = launcher_targets(&s);
        assert_eq!(exe.unwrap(), Path::new("/usr/lib/mono/4.5/mcs.exe"));
        assert_eq!(rt.unwrap(), Path::new("/usr/bin/mono"));
        assert_eq!(sdk_dir(&s).unwrap(), Path::new("/usr/lib/mono/4.5"));
        std::fs::write(&s, b"\x7fELF not a script").unwrap();
        assert!(sdk_dir(&s).is_none());
    }

    #[test]
    fn worker_reroots_paths_and_refuses_the_rest() {
        let root = Path::new("/job/root");
        let out = Path::new("/job/out");
        let outputs = vec![("out".to_string(), "/home/u/bin".to_string())];
        let args: Vec<String> = [
            "/t:library",
            "/out:/home/u/bin/L.dll",
            "/r:System.Xml.dll",
            "-r:x=/home/u/libs/A.dll",
            "/lib:/home/u/libs",
            "/resource:/home/u/r.txt,Name",
            "/define:A;B",
            "/home/u/src/G.cs",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let got = CSC.worker_tree_args(&args, &outputs, root, out).unwrap();
        assert_eq!(
            got,
            vec![
                "/t:library",
                "/out:/job/out/out/L.dll",
                "/r:System.Xml.dll",
                "-r:x=/job/root/home/u/libs/A.dll",
                "/lib:/job/root/home/u/libs",
                "/resource:/job/root/home/u/r.txt,Name",
                "/define:A;B",
                "/job/root/home/u/src/G.cs",
            ]
        );
        for bad in [
            "@/etc/args",
            "/pkg:gtk-sharp",
            "/analyzer:Evil.dll",
            "/out:/elsewhere/L.dll",
            "/doc:/home/u/bin/L.xml",
            "relative/G.cs",
            "/r:../../etc/x.dll",
            "/lib:libs",
            "/home/u/../../etc/x.cs",
            "/keycontainer:k",
            "/errorlog:/tmp/log",
            "G.il",
            // Options that smuggle anything, load code or name files elsewhere.
            "/errorreport:send",
            "/features:anything",
            "/addmodule:/home/u/M.netmodule",
            "/appconfig:/home/u/app.config",
            "/link:/home/u/libs/I.dll",
            "/analyzerconfig:/home/u/a.cfg",
            "/sdk:../../../tmp/evil",
            "/sdk:/tmp/evil",
            "/r:..",
            "/r:.evil.dll",
            "/r:..\\..\\tmp\\x.dll",
            "/resource:/home/u\\..\\..\\etc\\passwd",
            "/out:/home/u/bin/..\\L.dll",
        ] {
            let mut a = args.clone();
            a.push(bad.to_string());
            let r = CSC.worker_tree_args(&a, &outputs, root, out);
            assert!(r.is_err(), "{bad} must be refused: {r:?}");
        }
        for good in [
            "/sdk:4.5",
            "/debug+",
            "/optimize-",
            "/keyfile:/home/u/k.snk",
        ] {
            let mut a = args.clone();
            a.push(good.to_string());
            let r = CSC.worker_tree_args(&a, &outputs, root, out).unwrap();
            let last = r.last().unwrap();
            assert!(
                last == good || last == "/keyfile:/job/root/home/u/k.snk",
                "{good}: {last}"
            );
        }
    }

    #[test]
    fn what_a_worker_refuses_is_not_shipped() {
        let d = tempfile::tempdir().unwrap();
        let mcs = d.path().join("mcs");
        std::fs::write(
            &mcs,
            "#!/bin/sh\nexec /usr/bin/mono /usr/lib/mono/4.5/mcs.exe \"$@\"\n",
        )
        .unwrap();
        std::fs::create_dir(d.path().join("bin")).unwrap();
        let out = format!("/out:{}/bin/L.dll", d.path().display());
        let job = |extra: &str| {
            let mut a = vec!["/t:library", &out, "/home/u/G.cs"];
            if !extra.is_empty() {
                a.push(extra);
            }
            let a: Vec<OsString> = a.iter().map(OsString::from).collect();
            let inv = CSC.parse_args(&mcs, &OsString::from("mcs"), &a).unwrap();
            CSC.tree_args(&inv, &[PathBuf::from("/tmp/fresh")])
        };
        let shipped = job("/optimize+").unwrap();
        assert!(shipped.args.contains(&"/out:/tmp/fresh/L.dll".to_string()));
        for home_only in ["/features:x", "/errorreport:send", "/sdk:../x"] {
            assert_eq!(job(home_only).unwrap_err().reason, "flag", "{home_only}");
        }
    }
}
