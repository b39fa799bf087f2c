//! javac: the only code in farm that knows javac's command line.
//!
//! Cacheable: `.java` sources compiled with `-d`, every option known here, and every
//! search path enumerable (jars by content, class directories by the files javac could
//! read there). Annotation processors (they can read anything), module-source mode,
//! plugins, and options that write elsewhere run the real javac untouched.
//!
//! Outputs are never guessed from source names: the compile runs with `-d`, `-s` and
//! `-h` sent to fresh directories, and whatever appears there is the result.

pub mod args;
pub mod inputs;
mod remote;
mod warm;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::{
    CompileRun, Declared, DeclaredInputs, Family, IdentityProbe, Invocation, KeyInput, KeyPath,
    Keying, Output, OutputDir, Passthrough, PathFacts, Plan, TreeJobs, WarmCompiler,
};
use crate::fsutil;
use args::Arg;
use inputs::DirRole;

pub struct Javac;
pub static JAVAC: Javac = Javac;

/// `javac`, or a versioned name (`javac-17`).
pub fn is_javac(name: &str) -> bool {
    name == "javac"
        || name
            .strip_prefix("javac-")
            .map(|v| !v.is_empty() && v.chars().all(|c| c.is_ascii_digit() || c == '.'))
            .unwrap_or(false)
}

/// Environment that changes javac's outputs or messages: the default class path,
/// extra options, the JVM's options, and the locale (messages; the source encoding
/// when `-encoding` is absent).
const KEY_ENV: &[&str] = &[
    "CLASSPATH",
    "JDK_JAVAC_OPTIONS",
    "JAVA_TOOL_OPTIONS",
    "_JAVA_OPTIONS",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "LC_MESSAGES",
];

/// JVM options that load code into javac's JVM.
const JVM_CODE_LOADING: &[&str] = &["-javaagent", "-agentlib", "-agentpath", "-Xbootclasspath"];

/// A search path javac reads classes (or sources) from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Search {
    Class,
    Boot,
    Source,
    Processor,
    Module,
}

impl Search {
    fn label(self) -> &'static str {
        match self {
            Search::Class => "classpath",
            Search::Boot => "bootclasspath",
            Search::Source => "sourcepath",
            Search::Processor => "processorpath",
            Search::Module => "modulepath",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Opt {
    /// No value; enters the key as written.
    Flag,
    /// One value that enters the key as written.
    Value,
    /// A path list.
    Paths(Search),
    /// An output directory with this role.
    Out(&'static str),
    /// Not cacheable: the reason.
    Refuse(&'static str),
    /// Version or help: the real javac answers.
    Info,
}

/// Options taking a separate value (long ones also `--opt=value`).
const OPTIONS: &[(&str, Opt)] = &[
    ("-classpath", Opt::Paths(Search::Class)),
    ("-cp", Opt::Paths(Search::Class)),
    ("--class-path", Opt::Paths(Search::Class)),
    ("-bootclasspath", Opt::Paths(Search::Boot)),
    ("--boot-class-path", Opt::Paths(Search::Boot)),
    ("-sourcepath", Opt::Paths(Search::Source)),
    ("--source-path", Opt::Paths(Search::Source)),
    ("-processorpath", Opt::Paths(Search::Processor)),
    ("--processor-path", Opt::Paths(Search::Processor)),
    ("-p", Opt::Paths(Search::Module)),
    ("--module-path", Opt::Paths(Search::Module)),
    ("--upgrade-module-path", Opt::Paths(Search::Module)),
    ("-d", Opt::Out("classes")),
    ("-s", Opt::Out("sources")),
    ("-h", Opt::Out("headers")),
    ("-source", Opt::Value),
    ("--source", Opt::Value),
    ("-target", Opt::Value),
    ("--target", Opt::Value),
    ("--release", Opt::Value),
    ("-encoding", Opt::Value),
    ("--add-modules", Opt::Value),
    ("--limit-modules", Opt::Value),
    ("--add-exports", Opt::Value),
    ("--add-reads", Opt::Value),
    ("--module-version", Opt::Value),
    ("--default-module-for-created-files", Opt::Value),
    ("-profile", Opt::Value),
    ("-Xmaxerrs", Opt::Value),
    ("-Xmaxwarns", Opt::Value),
    ("-processor", Opt::Refuse("annotation_processors")),
    (
        "--processor-module-path",
        Opt::Refuse("annotation_processors"),
    ),
    ("--module-source-path", Opt::Refuse("module_source_path")),
    ("-m", Opt::Refuse("module_mode")),
    ("--module", Opt::Refuse("module_mode")),
    ("--system", Opt::Refuse("system_image")),
    ("--patch-module", Opt::Refuse("patch_module")),
    ("-extdirs", Opt::Refuse("extension_dirs")),
    ("--extension-directories", Opt::Refuse("extension_dirs")),
    ("-endorseddirs", Opt::Refuse("extension_dirs")),
    ("--endorsed-directories", Opt::Refuse("extension_dirs")),
    ("-Xstdout", Opt::Refuse("writes_elsewhere")),
];

/// Options without a value.
const FLAGS: &[(&str, Opt)] = &[
    ("-g", Opt::Flag),
    ("-nowarn", Opt::Flag),
    ("-deprecation", Opt::Flag),
    ("--deprecation", Opt::Flag),
    ("-Werror", Opt::Flag),
    ("-parameters", Opt::Flag),
    ("--parameters", Opt::Flag),
    ("-proc:none", Opt::Flag),
    ("--enable-preview", Opt::Flag),
    ("-Xlint", Opt::Flag),
    ("-Xdoclint", Opt::Flag),
    ("-proc:only", Opt::Refuse("annotation_processors")),
    ("-proc:full", Opt::Refuse("annotation_processors")),
    ("-verbose", Opt::Refuse("verbose")),
    ("--verbose", Opt::Refuse("verbose")),
    ("-Xprint", Opt::Refuse("print")),
    ("-version", Opt::Info),
    ("--version", Opt::Info),
    ("-fullversion", Opt::Info),
    ("--full-version", Opt::Info),
    ("-help", Opt::Info),
    ("--help", Opt::Info),
    ("-?", Opt::Info),
    ("-X", Opt::Info),
    ("--help-extra", Opt::Info),
    ("--help-lint", Opt::Info),
];

/// Options written as one token with a suffix (`-g:lines`, `-Xlint:all`, `-Akey=v`).
const PREFIXED: &[(&str, Opt)] = &[
    ("-g:", Opt::Flag),
    ("-Xlint:", Opt::Flag),
    ("-Xdoclint:", Opt::Flag),
    ("-Xdoclint/package:", Opt::Flag),
    ("-Xdiags:", Opt::Flag),
    ("-Xpkginfo:", Opt::Flag),
    ("-Xprefer:", Opt::Flag),
    ("-implicit:", Opt::Flag),
    // Any option for javac's internals: plugins, processors, files written anywhere.
    ("-XD", Opt::Refuse("javac_internal_option")),
    ("-A", Opt::Flag),
    ("-Xplugin:", Opt::Refuse("compiler_plugin")),
    ("-Xbootclasspath", Opt::Refuse("bootclasspath_override")),
];

/// `-XD` options build tools add that change nothing javac writes or prints, taken
/// exactly as written. Gradle adds `-XDuseUnsharedTable=true` to every compile: it
/// selects the implementation of javac's name table (`Names.createTable`), nothing
/// else. These are cached, run in a warm JVM and shipped to workers; every other
/// `-XD` runs the real javac untouched.
const HARMLESS_XD: &[&str] = &["-XDuseUnsharedTable=true"];

/// A `-XD` option that is not on [`HARMLESS_XD`].
fn internal_option(arg: &str) -> bool {
    arg.starts_with("-XD") && !HARMLESS_XD.contains(&arg)
}

fn lookup(arg: &str) -> Option<(Opt, Option<&str>)> {
    if HARMLESS_XD.contains(&arg) {
        return Some((Opt::Flag, None));
    }
    if let Some((_, o)) = OPTIONS.iter().find(|(n, _)| *n == arg) {
        return Some((*o, None));
    }
    if let Some((_, o)) = FLAGS.iter().find(|(n, _)| *n == arg) {
        return Some((*o, None));
    }
    if let Some((name, value)) = arg.split_once('=') {
        if name.starts_with("--") {
            if let Some((_, o)) = OPTIONS.iter().find(|(n, _)| *n == name) {
                return Some((*o, Some(value)));
            }
        }
    }
    PREFIXED
        .iter()
        .find(|(p, _)| arg.starts_with(p))
        .map(|(_, o)| (*o, None))
}

/// A token of the argument list and what it is.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    /// Passed on as is.
    Plain,
    /// A source file the compile reads.
    Source,
    /// A search path's value (`true` for the source path).
    PathList(bool),
    /// An output directory's value: index into the output list.
    OutValue(usize),
    /// A `--opt=value` for an output directory.
    OutJoined(usize, String),
    /// A `--opt=value` for a path list.
    PathsJoined(String),
    /// A `-J` option: the JVM's, never in an argument file.
    Jvm,
}

/// What javac's parse leaves for the run.
#[derive(Clone, Debug)]
pub struct JavacPlan {
    /// The command line with argfiles expanded, and what each token is.
    user_args: Vec<(String, Token)>,
    /// Output directories: role and path.
    outs: Vec<(&'static str, PathBuf)>,
    /// Sources as written.
    sources: Vec<String>,
    /// Search paths as (kind, entries); empty entries already mean `.`.
    search: Vec<(Search, Vec<PathBuf>)>,
    /// Annotation processing is not switched off.
    processing: bool,
    /// No `-sourcepath`: the class path is searched for sources too.
    sources_on_classpath: bool,
    /// The JDK this javac belongs to.
    java_home: PathBuf,
}

fn plan(inv: &Invocation) -> &JavacPlan {
    inv.plan
        .get()
        .expect("javac invocation without a javac plan")
}

fn split_path_list(value: &str) -> Vec<PathBuf> {
    // javac reads an empty element (and an empty list) as the current directory.
    value
        .split(':')
        .map(|s| PathBuf::from(if s.is_empty() { "." } else { s }))
        .collect()
}

/// The JDK home of a javac binary (`…/bin/javac`, links resolved).
pub fn java_home_of(canonical: &Path) -> PathBuf {
    canonical
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

impl Javac {
    fn parse_args(
        &self,
        compiler: &Path,
        arg0: &OsString,
        args: &[OsString],
    ) -> Result<Invocation, Passthrough> {
        let env_args = match std::env::var("JDK_JAVAC_OPTIONS") {
            Ok(v) => args::tokenize(&v),
            Err(std::env::VarError::NotPresent) => Vec::new(),
            Err(_) => return Err(Passthrough::new("non_utf8_argument", "JDK_JAVAC_OPTIONS")),
        };
        for var in ["JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS"] {
            if let Ok(v) = std::env::var(var) {
                if JVM_CODE_LOADING.iter().any(|o| v.contains(o)) {
                    return Err(Passthrough::new("jvm_agent", var));
                }
            }
        }
        let expanded = args::expand(args)?;
        let env = env_args.iter().map(|t| Arg {
            text: t.clone(),
            from_file: false,
        });
        let n_env = env_args.len();
        let all: Vec<Arg> = env.chain(expanded).collect();

        let mut user_args = Vec::with_capacity(all.len());
        let mut outs: Vec<(&'static str, PathBuf)> = Vec::new();
        let mut sources = Vec::new();
        let mut search: Vec<(Search, Vec<PathBuf>)> = Vec::new();
        let mut processing = true;
        let mut sourcepath_given = false;
        let mut key_args: Vec<OsString> = Vec::with_capacity(all.len());
        let mut key_paths: Vec<KeyPath> = Vec::new();
        let mut i = 0;
        while i < all.len() {
            let a = &all[i];
            let in_env = i < n_env;
            let text = a.text.as_str();
            i += 1;
            let mut push = |t: &str, tok: Token, key: &str| {
                // Where the key holds paths (for base_dir): sources and search paths.
                let at = key_args.len();
                match &tok {
                    Token::Source => key_paths.push(KeyPath::at(at, 0)),
                    Token::PathList(_) => key_paths.push(KeyPath {
                        list: Some(b':'),
                        ..KeyPath::at(at, 0)
                    }),
                    Token::PathsJoined(name) => key_paths.push(KeyPath {
                        list: Some(b':'),
                        ..KeyPath::at(at, name.len() + 1)
                    }),
                    _ => {}
                }
                if !in_env {
                    user_args.push((t.to_string(), tok));
                }
                key_args.push(OsString::from(key));
            };
            if let Some(jvm) = text.strip_prefix("-J") {
                if a.from_file {
                    // javac refuses -J in an argument file; let it say so.
                    return Err(Passthrough::new("jvm_option_in_argfile", text));
                }
                if JVM_CODE_LOADING.iter().any(|o| jvm.starts_with(o)) {
                    return Err(Passthrough::new("jvm_agent", text));
                }
                push(text, Token::Jvm, text);
                continue;
            }
            if !text.starts_with('-') || text == "-" {
                if text.ends_with(".java") {
                    sources.push(text.to_string());
                    push(text, Token::Source, text);
                    continue;
                }
                return Err(Passthrough::new("non_source_operand", text));
            }
            let Some((opt, joined)) = lookup(text) else {
                return Err(Passthrough::new("unknown_option", text));
            };
            match opt {
                Opt::Flag => {
                    if text == "-proc:none" {
                        processing = false;
                    }
                    push(text, Token::Plain, text);
                }
                Opt::Info => return Err(Passthrough::new("information", text)),
                Opt::Refuse(reason) => return Err(Passthrough::new(reason, text)),
                Opt::Value | Opt::Paths(_) | Opt::Out(_) => {
                    let value = match joined {
                        Some(v) => v.to_string(),
                        None => {
                            let Some(v) = all.get(i) else {
                                return Err(Passthrough::new("missing_value", text));
                            };
                            i += 1;
                            v.text.clone()
                        }
                    };
                    let name = text.split('=').next().unwrap_or(text);
                    match opt {
                        Opt::Value => {
                            push(text, Token::Plain, text);
                            if joined.is_none() {
                                push(&value, Token::Plain, &value);
                            }
                        }
                        Opt::Paths(kind) => {
                            if search.iter().any(|(k, _)| *k == kind) {
                                return Err(Passthrough::new("repeated_option", name));
                            }
                            if value.contains('*') {
                                return Err(Passthrough::new("classpath_wildcard", value));
                            }
                            if kind == Search::Source {
                                sourcepath_given = true;
                            }
                            // An empty -sourcepath means none; elsewhere it means `.`.
                            let entries = if kind == Search::Source && value.is_empty() {
                                Vec::new()
                            } else {
                                split_path_list(&value)
                            };
                            search.push((kind, entries));
                            if joined.is_some() {
                                push(text, Token::PathsJoined(name.to_string()), text);
                            } else {
                                push(text, Token::Plain, text);
                                push(&value, Token::PathList(kind == Search::Source), &value);
                            }
                        }
                        Opt::Out(role) => {
                            if in_env {
                                return Err(Passthrough::new("output_in_environment", text));
                            }
                            if outs.iter().any(|(r, _)| *r == role) {
                                return Err(Passthrough::new("repeated_option", name));
                            }
                            let idx = outs.len();
                            outs.push((role, PathBuf::from(&value)));
                            let placeholder = format!("<{role}>");
                            if joined.is_some() {
                                push(
                                    text,
                                    Token::OutJoined(idx, name.to_string()),
                                    &format!("{name}={placeholder}"),
                                );
                            } else {
                                push(text, Token::Plain, text);
                                push(&value, Token::OutValue(idx), &placeholder);
                            }
                        }
                        _ => unreachable!(),
                    }
                }
            }
        }
        if sources.is_empty() {
            return Err(Passthrough::new("no_sources", ""));
        }
        if !outs.iter().any(|(r, _)| *r == "classes") {
            // Without -d, classes land beside their sources: not enumerable up front.
            return Err(Passthrough::new("no_output_dir", ""));
        }
        if !search.iter().any(|(k, _)| *k == Search::Class) {
            let value = std::env::var("CLASSPATH").unwrap_or_default();
            if value.contains('*') {
                return Err(Passthrough::new("classpath_wildcard", value));
            }
            // No class path anywhere: javac uses the current directory.
            search.push((Search::Class, split_path_list(&value)));
        }
        let canonical = std::fs::canonicalize(compiler).unwrap_or_else(|_| compiler.to_path_buf());
        let outputs = outs
            .iter()
            .map(|(role, path)| Output {
                role,
                path: path.clone(),
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
            cwd_in_key: None,
            observe_args: Vec::new(),
            paths: PathFacts {
                key_args: key_paths,
                ..PathFacts::default()
            },
            plan: Plan::new(JavacPlan {
                user_args,
                outs,
                sources,
                search,
                processing,
                sources_on_classpath: !sourcepath_given,
                java_home: java_home_of(&canonical),
            }),
        })
    }

    /// The user's arguments with output directories replaced by `dirs`, `-J` options
    /// apart (they must stay on the command line), and paths made absolute when
    /// `absolute` (for a process with another working directory). Also says whether
    /// a source path or a search path was rewritten.
    fn rewritten(
        &self,
        p: &JavacPlan,
        dirs: &[PathBuf],
        absolute: Option<&Path>,
    ) -> (Vec<String>, Vec<String>, bool, bool) {
        let abs = |s: &str| -> Option<String> {
            let cwd = absolute?;
            (!Path::new(s).is_absolute()).then(|| cwd.join(s).to_string_lossy().into_owned())
        };
        let abs_list = |s: &str| -> Option<String> {
            let cwd = absolute?;
            let parts: Vec<String> = split_path_list(s)
                .into_iter()
                .map(|e| {
                    if e.is_absolute() {
                        e.to_string_lossy().into_owned()
                    } else {
                        fsutil::clean_path(&cwd.join(e))
                            .to_string_lossy()
                            .into_owned()
                    }
                })
                .collect();
            let joined = parts.join(":");
            (joined != s).then_some(joined)
        };
        let mut out = Vec::with_capacity(p.user_args.len());
        let mut jvm = Vec::new();
        let (mut sources_moved, mut paths_moved) = (false, false);
        for (text, tok) in &p.user_args {
            match tok {
                Token::Plain => out.push(text.clone()),
                Token::Jvm => jvm.push(text.clone()),
                Token::OutValue(i) => out.push(dirs[*i].to_string_lossy().into_owned()),
                Token::OutJoined(i, name) => {
                    out.push(format!("{name}={}", dirs[*i].to_string_lossy()))
                }
                Token::Source => match abs(text) {
                    Some(n) => {
                        sources_moved = true;
                        out.push(n);
                    }
                    None => out.push(text.clone()),
                },
                Token::PathList(is_sourcepath) => {
                    // An empty -sourcepath stays empty: it means "none".
                    let new = if text.is_empty() && *is_sourcepath {
                        None
                    } else {
                        abs_list(text)
                    };
                    match new {
                        Some(n) => {
                            paths_moved = true;
                            out.push(n);
                        }
                        None => out.push(text.clone()),
                    }
                }
                Token::PathsJoined(name) => {
                    let value = &text[name.len() + 1..];
                    match abs_list(value) {
                        Some(n) if !(value.is_empty() && name == "--source-path") => {
                            paths_moved = true;
                            out.push(format!("{name}={n}"));
                        }
                        _ => out.push(text.clone()),
                    }
                }
            }
        }
        (out, jvm, sources_moved, paths_moved)
    }
}

/// The character set javac would read sources in without `-encoding`, from the
/// locale (what the JVM's `file.encoding` becomes), if farm knows it.
fn locale_codeset() -> Option<String> {
    // SAFETY: setlocale/nl_langinfo with valid constant arguments; the shim is single
    // threaded and uses the result at once.
    unsafe {
        libc::setlocale(libc::LC_CTYPE, c"".as_ptr());
        let p = libc::nl_langinfo(libc::CODESET);
        let s = (!p.is_null()).then(|| std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned());
        libc::setlocale(libc::LC_CTYPE, c"C".as_ptr());
        s
    }
}

/// Messages are English (what a warm JVM started with the C locale prints).
fn messages_english() -> bool {
    let v = ["LC_ALL", "LC_MESSAGES", "LANG"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        .unwrap_or_default();
    v.is_empty() || v == "C" || v == "POSIX" || v.starts_with("C.") || v.starts_with("en")
}

impl Declared for Javac {
    fn output_dirs(&self, inv: &Invocation) -> Vec<OutputDir> {
        plan(inv)
            .outs
            .iter()
            .map(|(role, path)| OutputDir {
                role,
                path: path.clone(),
            })
            .collect()
    }

    fn inputs(&self, inv: &Invocation, memo: &Path) -> Result<DeclaredInputs, Passthrough> {
        let p = plan(inv);
        let mut out = DeclaredInputs::default();
        for s in &p.sources {
            let digest = fsutil::hash_file(Path::new(s))
                .map_err(|e| Passthrough::new("source_unreadable", format!("{s}: {e}")))?;
            out.key.push(KeyInput {
                label: format!("source {s}"),
                digest,
            });
            out.files.push((PathBuf::from(s), digest));
        }
        let mut processors = false;
        let mut seen = Vec::new();
        for (kind, entries) in &p.search {
            let role = match kind {
                Search::Class | Search::Boot => DirRole::Classes {
                    sources: p.sources_on_classpath && *kind == Search::Class,
                },
                Search::Source => DirRole::Sources,
                Search::Module => DirRole::Everything,
                Search::Processor => {
                    if !p.processing {
                        // Not keyed (no processor runs), but javac still loads
                        // plugins from it.
                        for e in entries {
                            inputs::refuse_plugins(e, memo)?;
                        }
                        continue;
                    }
                    DirRole::Classes { sources: false }
                }
            };
            seen.clear();
            let follow = matches!(kind, Search::Class | Search::Boot | Search::Processor);
            for e in entries {
                let found =
                    inputs::add_entry(kind.label(), e, role, follow, memo, &mut seen, &mut out)?;
                // javac looks for processors on the processor path if one is given,
                // else on the class path.
                let searched = match kind {
                    Search::Processor => true,
                    Search::Class => !p.search.iter().any(|(k, _)| *k == Search::Processor),
                    _ => false,
                };
                processors |= found && searched;
            }
        }
        if p.processing && processors {
            return Err(Passthrough::new(
                "annotation_processors",
                "a processor is declared on the search path",
            ));
        }
        Ok(out)
    }

    fn compile_into(
        &self,
        inv: &Invocation,
        dirs: &[PathBuf],
        scratch: &Path,
    ) -> std::io::Result<CompileRun> {
        let p = plan(inv);
        let (args, jvm, _, _) = self.rewritten(p, dirs, None);
        let mut text = String::new();
        for a in &args {
            text.push_str(&args::quote(a));
            text.push('\n');
        }
        let argfile = scratch.join("javac.args");
        std::fs::write(&argfile, text)?;
        let mut at = OsString::from("@");
        at.push(&argfile);
        // JDK_JAVAC_OPTIONS stays in the environment: javac prepends it itself.
        let mut all: Vec<OsString> = jvm.into_iter().map(OsString::from).collect();
        all.push(at);
        super::run_compiler(inv, all)
    }
}

impl Family for Javac {
    fn name(&self) -> &'static str {
        "javac"
    }

    fn recognizes(&self, compiler_name: &str) -> bool {
        is_javac(compiler_name)
    }

    fn key_env(&self) -> &'static [&'static str] {
        KEY_ENV
    }

    fn unsafe_env(&self) -> &'static [&'static str] {
        &[]
    }

    fn identity_probe(&self, canonical: &Path) -> IdentityProbe {
        let home = java_home_of(canonical);
        // The class library javac compiles against (`lib/modules`), the `--release`
        // signatures (`lib/ct.sym`) and the version stamp.
        let files = ["release", "lib/modules", "lib/ct.sym"]
            .iter()
            .map(|f| home.join(f))
            .filter(|f| f.exists())
            .collect();
        IdentityProbe {
            files,
            programs: None,
            version_args: vec!["-version"],
        }
    }

    fn keying(&self) -> Keying<'_> {
        Keying::Declared(self)
    }

    fn toolchain_config(&self) -> Vec<PathBuf> {
        // The JDKs' configuration lives in /etc/java-N-openjdk (linked from the JDK).
        let Ok(rd) = std::fs::read_dir("/etc") else {
            return Vec::new();
        };
        let mut java: Vec<PathBuf> = rd
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.starts_with("java-"))
            })
            .map(|e| e.path())
            .collect();
        java.sort();
        java
    }

    fn tree_jobs(&self) -> Option<&dyn TreeJobs> {
        Some(self)
    }

    fn warm(&self) -> Option<&dyn WarmCompiler> {
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

    fn parse(args: &[&str]) -> Result<Invocation, Passthrough> {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        JAVAC.parse_args(Path::new("/usr/bin/javac"), &OsString::from("javac"), &args)
    }

    #[test]
    fn names() {
        assert!(is_javac("javac"));
        assert!(is_javac("javac-17"));
        assert!(!is_javac("javacc"));
        assert!(!is_javac("farm-javac"));
    }

    #[test]
    fn gradle_style_command_line() {
        let inv = parse(&[
            "-source",
            "1.8",
            "-target",
            "1.8",
            "-d",
            "/p/build/classes",
            "-g",
            "-sourcepath",
            "",
            "-proc:none",
            "-XDuseUnsharedTable=true",
            "-classpath",
            "",
            "/p/src/A.java",
        ])
        .unwrap();
        let p = plan(&inv);
        assert_eq!(p.sources, vec!["/p/src/A.java"]);
        assert_eq!(p.outs, vec![("classes", PathBuf::from("/p/build/classes"))]);
        assert!(!p.processing);
        assert!(!p.sources_on_classpath);
        // An empty class path is the working directory; an empty source path is none.
        assert!(p
            .search
            .contains(&(Search::Class, vec![PathBuf::from(".")])));
        assert!(p.search.contains(&(Search::Source, vec![])));
        // The output directory is not in the key; its role is.
        assert!(inv.key_args.contains(&OsString::from("<classes>")));
        assert!(!inv.key_args.contains(&OsString::from("/p/build/classes")));
        let (args, jvm, _, _) = JAVAC.rewritten(p, &[PathBuf::from("/tmp/x")], None);
        assert!(jvm.is_empty());
        assert_eq!(args[5], "/tmp/x");
        assert_eq!(args[8], "");
    }

    #[test]
    fn refusals_name_the_reason() {
        let reason = |a: &[&str]| parse(a).unwrap_err().reason;
        assert_eq!(
            reason(&["-d", "o", "-processor", "X", "A.java"]),
            "annotation_processors"
        );
        assert_eq!(
            reason(&["-d", "o", "-Xplugin:P", "A.java"]),
            "compiler_plugin"
        );
        assert_eq!(reason(&["-version"]), "information");
        assert_eq!(reason(&["--help"]), "information");
        assert_eq!(reason(&["A.java"]), "no_output_dir");
        assert_eq!(reason(&["-d", "o"]), "no_sources");
        assert_eq!(reason(&["-d", "o", "com.x.A"]), "non_source_operand");
        assert_eq!(
            reason(&["-d", "o", "-frobnicate", "A.java"]),
            "unknown_option"
        );
        assert_eq!(
            reason(&["-d", "o", "-cp", "lib/*", "A.java"]),
            "classpath_wildcard"
        );
        assert_eq!(
            reason(&["-d", "o", "-J-javaagent:x.jar", "A.java"]),
            "jvm_agent"
        );
        assert_eq!(reason(&["-d", "o", "-d", "p", "A.java"]), "repeated_option");
        assert_eq!(
            reason(&["-d", "o", "-Xstdout", "f", "A.java"]),
            "writes_elsewhere"
        );
        assert_eq!(
            reason(&["-d", "o", "--module-source-path", "m", "A.java"]),
            "module_source_path"
        );
        assert_eq!(reason(&["-d", "o", "-verbose", "A.java"]), "verbose");
        assert_eq!(reason(&["-d"]), "missing_value");
        for xd in [
            "-XD-Xplugin:=Evil",
            "-XD-processor=x.P",
            "-XDdebug.dumpInferenceGraphsTo=/tmp/x",
            "-XDrawDiagnostics",
            "-XDuseUnsharedTable",
        ] {
            assert_eq!(
                reason(&["-d", "o", xd, "A.java"]),
                "javac_internal_option",
                "{xd}"
            );
        }
        assert!(parse(&["-d", "o", "-XDuseUnsharedTable=true", "A.java"]).is_ok());
    }

    #[test]
    fn warm_job_never_carries_an_internal_option() {
        let mut inv = parse(&["-d", "o", "-XDuseUnsharedTable=true", "A.java"]).unwrap();
        let dirs = [PathBuf::from("/t/c")];
        if std::env::var_os("JDK_JAVAC_OPTIONS").is_none() {
            let job = JAVAC.warm_job(&inv, &dirs);
            if let Ok(job) = job {
                assert!(job.args.contains(&"-XDuseUnsharedTable=true".to_string()));
            }
        }
        // Whatever reached the plan, the warm JVM (and a worker) never gets it.
        let p: &mut JavacPlan = inv.plan.get_mut().unwrap();
        p.user_args
            .insert(0, ("-XD-Xplugin:=Evil".to_string(), Token::Plain));
        assert_eq!(
            JAVAC.warm_job(&inv, &dirs).unwrap_err().reason,
            "javac_internal_option"
        );
    }

    #[test]
    fn long_options_with_equals_and_outputs() {
        let inv = parse(&[
            "--class-path=a.jar:b",
            "-d",
            "out",
            "-s",
            "gen",
            "-h",
            "hdr",
            "--release=11",
            "-Xlint:all",
            "-J-Xmx512m",
            "A.java",
        ])
        .unwrap();
        let p = plan(&inv);
        assert_eq!(p.outs.len(), 3);
        assert!(p.sources_on_classpath);
        assert!(p.search.contains(&(
            Search::Class,
            vec![PathBuf::from("a.jar"), PathBuf::from("b")]
        )));
        let dirs = [
            PathBuf::from("/t/c"),
            PathBuf::from("/t/s"),
            PathBuf::from("/t/h"),
        ];
        let (args, jvm, _, _) = JAVAC.rewritten(p, &dirs, None);
        assert_eq!(jvm, vec!["-J-Xmx512m"]);
        assert!(args.contains(&"/t/s".to_string()) && args.contains(&"/t/h".to_string()));
        let (args, _, sources_moved, paths_moved) =
            JAVAC.rewritten(p, &dirs, Some(Path::new("/w")));
        assert_eq!(args[0], "--class-path=/w/a.jar:/w/b");
        assert_eq!(args.last().unwrap(), "/w/A.java");
        assert!(sources_moved && paths_moved);
    }

    #[test]
    fn worker_never_searches_a_shipped_path_for_plugins() {
        let outputs = vec![("classes".to_string(), "/o".to_string())];
        let args: Vec<String> = ["-processorpath", "/p/evil.jar", "-d", "/o", "/s/A.java"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let got = JAVAC
            .worker_tree_args(&args, &outputs, Path::new("/r"), Path::new("/out"))
            .unwrap();
        assert_eq!(
            got,
            [
                "-classpath",
                "",
                "-processorpath",
                "",
                "-proc:none",
                "-d",
                "/out/classes",
                "/r/s/A.java"
            ]
        );
    }

    #[test]
    fn worker_rebuilds_args_under_its_job_directory_and_refuses_the_rest() {
        let root = Path::new("/job/root");
        let out = Path::new("/job/out");
        let outputs = vec![("classes".to_string(), "/home/u/o".to_string())];
        let args: Vec<String> = [
            "-d",
            "/home/u/o",
            "-classpath",
            "/usr/share/java/a.jar:/home/u/c",
            "-sourcepath",
            "",
            "--release=8",
            "/home/u/src/A.java",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let got = JAVAC.worker_tree_args(&args, &outputs, root, out).unwrap();
        assert_eq!(
            got,
            vec![
                "-processorpath",
                "",
                "-proc:none",
                "-d",
                "/job/out/classes",
                "-classpath",
                "/job/root/usr/share/java/a.jar:/job/root/home/u/c",
                "-sourcepath",
                "",
                "--release=8",
                "/job/root/home/u/src/A.java",
            ]
        );
        let refused = |extra: &[&str]| {
            let mut a = args.clone();
            a.extend(extra.iter().map(|s| s.to_string()));
            JAVAC
                .worker_tree_args(&a, &outputs, root, out)
                .unwrap_err()
                .reason
        };
        for bad in [
            &["../../etc/x.java"][..],
            &["/home/u/../../../etc/passwd.java"],
            &["-J-Xmx1g"],
            &["@/etc/args"],
            &["-Xplugin:Evil"],
            &["-processor", "x.P"],
            &["-s", "/tmp/elsewhere"],
            &["-Xstdout", "/tmp/log"],
            &["relative/A.java"],
            &["-cp", "lib.jar"],
            &["Foo.class"],
            &["-d", "/somewhere/else"],
            &["-XD-Xplugin:=Evil"],
            &["-XD-processor=x.P"],
            &["-XDdebug.dumpInferenceGraphsTo=/tmp/x"],
            &["-XDuseUnsharedTable"],
        ] {
            assert_eq!(refused(bad), "refused", "{bad:?}");
        }
        // Gradle's own -XD is harmless and ships.
        let mut gradle = args.clone();
        gradle.insert(0, "-XDuseUnsharedTable=true".into());
        let got = JAVAC
            .worker_tree_args(&gradle, &outputs, root, out)
            .unwrap();
        assert_eq!(got[3], "-XDuseUnsharedTable=true");
    }

    #[test]
    fn worker_refuses_a_tree_job_without_an_output_directory() {
        let root = Path::new("/job/root");
        let out = Path::new("/job/out");
        let without_d = |args: &[&str], outputs: &[(&str, &str)]| {
            let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            let outputs: Vec<(String, String)> = outputs
                .iter()
                .map(|(r, p)| (r.to_string(), p.to_string()))
                .collect();
            JAVAC.worker_tree_args(&args, &outputs, root, out)
        };
        // Classes would be written through the sources' links into the blob store.
        for (args, outputs) in [
            (&["/home/u/src/A.java"][..], &[][..]),
            (
                &["-sourcepath", "/home/u/src", "/home/u/src/A.java"],
                &[("classes", "/home/u/o")],
            ),
            (
                &["-implicit:none", "-s", "/home/u/gen", "/home/u/src/A.java"],
                &[("sources", "/home/u/gen")],
            ),
            (
                &["-h", "/home/u/h", "/home/u/src/A.java"],
                &[("headers", "/home/u/h"), ("classes", "/home/u/o")],
            ),
        ] {
            let r = without_d(args, outputs);
            assert_eq!(r.unwrap_err().reason, "refused", "{args:?}");
        }
        let r = without_d(
            &[
                "-sourcepath",
                "/home/u/src",
                "-d",
                "/home/u/o",
                "/home/u/src/A.java",
            ],
            &[("classes", "/home/u/o")],
        );
        assert!(r.is_ok(), "{r:?}");
    }
}
