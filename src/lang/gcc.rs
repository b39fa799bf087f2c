//! gcc and clang: the only code in farm that knows their command lines.
//!
//! Cacheable: exactly one C, C++, Objective-C/C++, `.i`/`.ii` or assembler-with-cpp
//! source compiled with `-c`, and only flags this module knows. Anything else runs the
//! real compiler untouched (a [`Passthrough`] with a reason).

use crate::lang::{TextJob, TextOutput};
use rustc_hash::FxHashSet as HashSet;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{
    CompileRun, DepSource, DependencyFacts, Family, Invocation, Keying, NotRecordable, Observed,
    Output, Passthrough, Plan, TextJobs, UNSUPPORTED_CODE_DIRECTIVE,
};
use crate::fsutil::{self, DirCache, PathKind};

pub struct Gcc;
pub static GCC: Gcc = Gcc;

/// Is this binary name a gcc or clang driver (`gcc`, `x86_64-linux-gnu-g++-12`,
/// `clang++-14`, `cc`, `c++`)?
pub fn is_gcc_like(name: &str) -> bool {
    fn version_suffix(rest: &str) -> bool {
        rest.is_empty()
            || rest
                .strip_prefix('-')
                .map(|v| !v.is_empty() && v.chars().all(|c| c.is_ascii_digit() || c == '.'))
                .unwrap_or(false)
    }
    if matches!(name, "cc" | "c++" | "c89" | "c99") {
        return true;
    }
    if let Some(rest) = name.strip_prefix("clang") {
        let rest = rest.strip_prefix("++").unwrap_or(rest);
        return version_suffix(rest);
    }
    for tool in ["gcc", "g++"] {
        if let Some(pos) = name.rfind(tool) {
            let before = &name[..pos];
            if before.is_empty() || before.ends_with('-') {
                return version_suffix(&name[pos + tool.len()..]);
            }
        }
    }
    false
}

/// Source language as gcc names it for `-x`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    C,
    Cxx,
    ObjC,
    ObjCxx,
    CPreprocessed,
    CxxPreprocessed,
    ObjCPreprocessed,
    ObjCxxPreprocessed,
    AsmCpp,
}

impl Lang {
    fn x_name(self) -> &'static str {
        match self {
            Lang::C => "c",
            Lang::Cxx => "c++",
            Lang::ObjC => "objective-c",
            Lang::ObjCxx => "objective-c++",
            Lang::CPreprocessed => "cpp-output",
            Lang::CxxPreprocessed => "c++-cpp-output",
            Lang::ObjCPreprocessed => "objective-c-cpp-output",
            Lang::ObjCxxPreprocessed => "objective-c++-cpp-output",
            Lang::AsmCpp => "assembler-with-cpp",
        }
    }
    /// Already preprocessed: no includes to track.
    fn preprocessed(self) -> bool {
        matches!(
            self,
            Lang::CPreprocessed
                | Lang::CxxPreprocessed
                | Lang::ObjCPreprocessed
                | Lang::ObjCxxPreprocessed
        )
    }
}

enum LangOf {
    Source(Lang),
    Reject(&'static str),
}

fn lang_from_x(x: &str) -> LangOf {
    match x {
        "c" => LangOf::Source(Lang::C),
        "c++" => LangOf::Source(Lang::Cxx),
        "objective-c" => LangOf::Source(Lang::ObjC),
        "objective-c++" => LangOf::Source(Lang::ObjCxx),
        "cpp-output" => LangOf::Source(Lang::CPreprocessed),
        "c++-cpp-output" => LangOf::Source(Lang::CxxPreprocessed),
        "objective-c-cpp-output" | "objc-cpp-output" => LangOf::Source(Lang::ObjCPreprocessed),
        "objective-c++-cpp-output" | "objc++-cpp-output" => {
            LangOf::Source(Lang::ObjCxxPreprocessed)
        }
        "assembler-with-cpp" => LangOf::Source(Lang::AsmCpp),
        "assembler" => LangOf::Reject("assembler_source"),
        x if x.ends_with("-header") => LangOf::Reject("pch_create"),
        _ => LangOf::Reject("unsupported_language"),
    }
}

fn lang_from_ext(path: &str) -> Option<LangOf> {
    let ext = Path::new(path).extension()?.to_str()?;
    Some(match ext {
        "c" => LangOf::Source(Lang::C),
        "cc" | "cp" | "cxx" | "cpp" | "CPP" | "c++" | "C" => LangOf::Source(Lang::Cxx),
        "m" => LangOf::Source(Lang::ObjC),
        "mm" | "M" => LangOf::Source(Lang::ObjCxx),
        "i" => LangOf::Source(Lang::CPreprocessed),
        "ii" => LangOf::Source(Lang::CxxPreprocessed),
        "mi" => LangOf::Source(Lang::ObjCPreprocessed),
        "mii" => LangOf::Source(Lang::ObjCxxPreprocessed),
        "S" | "sx" => LangOf::Source(Lang::AsmCpp),
        "s" => LangOf::Reject("assembler_source"),
        "h" | "hh" | "hpp" | "hxx" | "H" | "h++" | "tcc" => LangOf::Reject("pch_create"),
        "gch" | "pch" => LangOf::Reject("pch_use"),
        _ => return None,
    })
}

/// Dependency-file flags the user gave.
#[derive(Clone, Debug, Default)]
pub struct UserDeps {
    /// `-MD` (true) or `-MMD` (false), if any.
    pub md: Option<bool>,
    /// The dependency file the compile writes.
    pub file: Option<PathBuf>,
    /// `-MT`/`-MQ` given (the target does not derive from the object path).
    pub explicit_target: bool,
}

/// What the gcc family remembers between parse and run.
#[derive(Clone, Debug)]
pub struct GccPlan {
    pub lang: Lang,
    pub deps: UserDeps,
    /// Our own dependency file when the user asked for none.
    pub observe_depfile: Option<PathBuf>,
    /// Arguments for a preprocessor-only run (`-E` to stdout), response files expanded.
    pub pp_args: Vec<OsString>,
    /// Arguments that shape the include search list (for `-E -v`).
    pub search_args: Vec<OsString>,
    /// `-include`/`-imacros` names, looked up like `#include "name"` from the cwd.
    pub forced_includes: Vec<String>,
    /// `-o` was given (the dependency rule's target then derives from it).
    pub output_given: bool,
    /// The user's `-MT`/`-MQ`/`-MP` arguments, as given.
    pub dep_args: Vec<OsString>,
    /// Why this compile must run at home rather than on a worker, if it must.
    pub remote_block: Option<(&'static str, String)>,
}

// ------------------------------------------------------------------ response files

/// Expands `@file` arguments the way gcc's libiberty does (whitespace separated,
/// single/double quotes, backslash escapes, nested files). A file that cannot be read
/// stays a literal argument, as gcc leaves it.
pub fn expand_response_files(args: &[OsString]) -> Result<Vec<OsString>, Passthrough> {
    let mut out = Vec::with_capacity(args.len());
    let mut budget = Budget::default();
    expand_into(args, &mut out, 0, &mut budget)?;
    Ok(out)
}

/// Bounds on what `@file` expansion may read: nested files can fan out (40 files of 40
/// references, 5 deep, is 10^8 arguments). Past them the compiler gets argv unchanged.
const RESPONSE_FILES_MAX: usize = 1000;
const RESPONSE_ARGS_MAX: usize = 1_000_000;
const RESPONSE_BYTES_MAX: u64 = 64 << 20;

#[derive(Default)]
struct Budget {
    files: usize,
    bytes: u64,
}

fn expand_into(
    args: &[OsString],
    out: &mut Vec<OsString>,
    depth: u32,
    budget: &mut Budget,
) -> Result<(), Passthrough> {
    for a in args {
        let b = a.as_bytes();
        if b.len() > 1 && b[0] == b'@' {
            if depth > 16 {
                return Err(Passthrough::new(
                    "response_file_nesting",
                    a.to_string_lossy(),
                ));
            }
            budget.files += 1;
            if budget.files > RESPONSE_FILES_MAX {
                return Err(Passthrough::new(
                    "response_file_limit",
                    format!("more than {RESPONSE_FILES_MAX} response files"),
                ));
            }
            let path = Path::new(OsStr::from_bytes(&b[1..]));
            // A FIFO or device would block farm, or be consumed before the compiler
            // reads it: the compiler alone reads it.
            if std::fs::metadata(path).is_ok_and(|m| !m.is_file()) {
                return Err(Passthrough::new("source_not_regular", a.to_string_lossy()));
            }
            let mut data = Vec::new();
            let left = RESPONSE_BYTES_MAX - budget.bytes;
            let read = std::fs::File::open(path).and_then(|f| {
                use std::io::Read;
                f.take(left + 1).read_to_end(&mut data)
            });
            match read {
                Ok(n) => {
                    if n as u64 > left {
                        return Err(Passthrough::new(
                            "response_file_limit",
                            format!("more than {RESPONSE_BYTES_MAX} bytes of response files"),
                        ));
                    }
                    budget.bytes += n as u64;
                    let inner = split_response_file(&data);
                    drop(data);
                    expand_into(&inner, out, depth + 1, budget)?;
                }
                Err(_) => {
                    return Err(Passthrough::new(
                        "response_file_unreadable",
                        a.to_string_lossy(),
                    ))
                }
            }
        } else {
            if out.len() >= RESPONSE_ARGS_MAX {
                return Err(Passthrough::new(
                    "response_file_limit",
                    format!("more than {RESPONSE_ARGS_MAX} arguments"),
                ));
            }
            out.push(a.clone());
        }
    }
    Ok(())
}

fn split_response_file(data: &[u8]) -> Vec<OsString> {
    let mut args = Vec::new();
    let mut cur = Vec::new();
    let mut in_arg = false;
    let mut quote: Option<u8> = None;
    let mut i = 0;
    while i < data.len() {
        let c = data[i];
        match (quote, c) {
            (None, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c) => {
                if in_arg {
                    args.push(OsString::from_vec(std::mem::take(&mut cur)));
                    in_arg = false;
                }
            }
            (_, b'\\') if i + 1 < data.len() => {
                cur.push(data[i + 1]);
                in_arg = true;
                i += 1;
            }
            (None, b'\'' | b'"') => {
                quote = Some(c);
                in_arg = true;
            }
            (Some(q), c) if c == q => quote = None,
            _ => {
                cur.push(c);
                in_arg = true;
            }
        }
        i += 1;
    }
    if in_arg {
        args.push(OsString::from_vec(cur));
    }
    args
}

// ------------------------------------------------------------------ flag tables

/// Flags that take a separate argument and enter the key as they are.
const WITH_ARG: &[&str] = &[
    "-D",
    "-U",
    "-I",
    "-isystem",
    "-idirafter",
    "-iquote",
    "-iprefix",
    "-iwithprefix",
    "-iwithprefixbefore",
    "-isysroot",
    "--sysroot",
    "-imultilib",
    "-imultiarch",
    "--param",
    "-target",
    "-Xlinker",
    "-l",
    "-L",
    "-arch",
    "-include",
    "-imacros",
    "-MT",
    "-MQ",
    "-x",
    "-o",
    "-MF",
    "-specs",
    "--specs",
];

/// Flags with a joined value (`-DX`, `-Iinc`) that are plain key material.
const JOINED_OK: &[&str] = &[
    "-D", "-U", "-I", "-l", "-L", "-std=", "--std=", "-O", "--param=",
];

/// Exact flags that are plain key material.
const EXACT_OK: &[&str] = &[
    "-c",
    "-ansi",
    "-w",
    "-p",
    "-pg",
    "-pthread",
    "-pipe",
    "-nostdinc",
    "-nostdinc++",
    "-nostdlib",
    "-nostdlib++",
    "-nodefaultlibs",
    "-nostartfiles",
    "-undef",
    "-trigraphs",
    "-shared",
    "-static",
    "-static-libgcc",
    "-static-libstdc++",
    "-rdynamic",
    "-s",
    "-C",
    "-CC",
    "-P",
    "-pie",
    "-no-pie",
    "-traditional-cpp",
    "-g",
    "-MP",
    "-pedantic",
    "-pedantic-errors",
    "--pedantic",
    "-Qunused-arguments",
    "-integrated-as",
    "-no-integrated-as",
    "-fPIC",
    "-fpic",
    "-fPIE",
    "-fpie",
    "--coverage",
    "-O",
];

/// Prefixes that are plain key material, with the exceptions below.
const PREFIX_OK: &[&str] = &[
    "-f",
    "-m",
    "-W",
    "-g",
    "-O",
    "--target=",
    "-stdlib=",
    "-rtlib=",
    "--gcc-toolchain=",
];

/// Flags (or prefixes, with a trailing `*`) that make a compile uncacheable, with the
/// counter name. Checked before the permissive prefixes above.
const REFUSE: &[(&str, &str)] = &[
    ("-E", "preprocess_only"),
    ("-S", "assemble_only"),
    ("-M", "dependencies_only"),
    ("-MM", "dependencies_only"),
    ("-MG", "missing_headers_as_generated"),
    ("-v", "verbose"),
    ("-###", "verbose"),
    ("--version", "version_query"),
    ("--help", "version_query"),
    ("-dumpversion", "version_query"),
    ("-dumpfullversion", "version_query"),
    ("-dumpmachine", "version_query"),
    ("-dumpspecs", "version_query"),
    ("-dumpbase*", "aux_output_names"),
    ("-dumpdir*", "aux_output_names"),
    ("-print-*", "version_query"),
    ("--print-*", "version_query"),
    ("-save-temps*", "save_temps"),
    ("--save-temps*", "save_temps"),
    ("-time*", "timing_report"),
    ("-ftime-report*", "timing_report"),
    ("-ftime-trace*", "timing_report"),
    ("-H", "header_trace"),
    ("-B*", "compiler_prefix"),
    ("-Xclang", "xclang"),
    ("-Xpreprocessor", "preprocessor_option"),
    ("-Xassembler", "assembler_option"),
    ("-fplugin*", "plugin"),
    ("-fdump-*", "dump_files"),
    ("-fcallgraph-info*", "dump_files"),
    ("-fstack-usage", "dump_files"),
    ("-fsave-optimization-record*", "dump_files"),
    ("-aux-info", "dump_files"),
    ("-fmodules*", "modules"),
    ("-fmodule-*", "modules"),
    ("-fcxx-modules", "modules"),
    ("-fimplicit-modules", "modules"),
    ("-fpch-preprocess", "pch_use"),
    ("-include-pch", "pch_use"),
    ("-fsyntax-only", "no_output"),
    ("-frecord-gcc-switches", "records_command_line"),
    ("-frecord-command-line", "records_command_line"),
    ("-grecord-command-line", "records_command_line"),
    ("-grecord-gcc-switches", "records_command_line"),
    ("-fcompare-debug*", "compare_debug"),
    ("-gsplit-dwarf=*", "split_dwarf_variant"),
    ("-fprofile-use", "profile_use_implicit"),
    // Read a profile at a derived path (`<object>.gcda`, `fbdata.afdo`,
    // `default.profdata`) that is in no key.
    ("-fbranch-probabilities", "profile_use_implicit"),
    ("-fauto-profile", "profile_use_implicit"),
    ("-fprofile-instr-use", "profile_use_implicit"),
    ("-fprofile-sample-use", "profile_use_implicit"),
    ("-fopt-info*=*", "dump_files"),
    ("-MJ*", "compilation_database"),
    ("--", "end_of_options"),
    ("-", "stdin"),
];

/// Flags whose `=` value names a file the compiler reads: hashed by content.
const INPUT_FILE_FLAGS: &[&str] = &[
    "-fprofile-use=",
    "-fauto-profile=",
    "-fprofile-sample-use=",
    "-fprofile-instr-use=",
    "-fsanitize-blacklist=",
    "-fsanitize-ignorelist=",
    "-fsanitize-coverage-allowlist=",
    "-fsanitize-coverage-blocklist=",
    "-fsanitize-coverage-ignorelist=",
    "-fprofile-list=",
    "-fprofile-remapping-file=",
    "-fmemory-profile-use=",
    "-fsanitize-system-ignorelist=",
    "-fsanitize-system-blacklist=",
    "-fthinlto-index=",
    "-fxray-attr-list=",
    "-fxray-always-instrument=",
    "-fxray-never-instrument=",
    "-specs=",
    "--specs=",
];

/// Assembler options (`-Wa,`) that only change code generation.
const ASM_OK: &[&str] = &[
    "--noexecstack",
    "--execstack",
    "-mrelax-relocations=",
    "-mbig-obj",
    "--compress-debug-sections",
    "--nocompress-debug-sections",
    "--gdwarf",
    "-g",
    "--64",
    "--32",
    "-march=",
    "-mtune=",
    "-mno-",
    "-mx86-used-note=",
];

fn refused(flag: &str) -> Option<&'static str> {
    for (pat, reason) in REFUSE {
        if let Some(prefix) = pat.strip_suffix('*') {
            if let Some((pre, post)) = prefix.split_once('*') {
                // "a*=*": starts with a, contains the rest later
                if flag.starts_with(pre) && flag[pre.len()..].contains(post) {
                    return Some(reason);
                }
            } else if flag.starts_with(prefix) {
                return Some(reason);
            }
        } else if flag == *pat {
            return Some(reason);
        }
    }
    None
}

/// `obj/a.o` → `obj/a.EXT`; the name the driver gives side outputs.
fn with_ext(p: &Path, ext: &str) -> PathBuf {
    p.with_extension(ext)
}

/// Default object name for a source without `-o`: its basename, `.o`, in the cwd.
fn default_object(src: &Path) -> PathBuf {
    let stem = src.file_stem().unwrap_or(src.as_os_str());
    let mut s = stem.to_os_string();
    s.push(".o");
    PathBuf::from(s)
}

/// Applies `-fdebug-prefix-map=old=new` style maps (last match wins, like gcc).
fn apply_prefix_maps(path: &Path, maps: &[(String, String)]) -> PathBuf {
    let s = path.to_string_lossy();
    for (old, new) in maps.iter().rev() {
        if let Some(rest) = s.strip_prefix(old.as_str()) {
            return PathBuf::from(format!("{new}{rest}"));
        }
    }
    path.to_path_buf()
}

/// `-march=native`, `-mtune=native`, `-mcpu=native` (and `native+ext` forms): any
/// `-m` flag whose value is `native`.
fn is_native_cpu_flag(a: &str) -> bool {
    a.starts_with("-m")
        && a.split_once('=').is_some_and(|(_, v)| {
            v == "native" || v.starts_with("native+") || v.starts_with("native,")
        })
}

/// Lines of the first processor block of `/proc/cpuinfo` that say what `native`
/// expands to (model, features, caches), without those that change at run time.
const CPUINFO_FIELDS: &[&str] = &[
    "vendor_id",
    "cpu family",
    "model",
    "model name",
    "stepping",
    "flags",
    "cache size",
    "cache_alignment",
    "address sizes",
    "Features",
    "CPU implementer",
    "CPU architecture",
    "CPU variant",
    "CPU part",
    "CPU revision",
    "isa",
    "uarch",
    "cpu",
];

/// The digest of this CPU's identity as `native` sees it, from `/proc/cpuinfo`.
fn native_cpu_digest() -> Option<String> {
    use std::io::Read;
    let mut data = Vec::new();
    std::fs::File::open("/proc/cpuinfo")
        .ok()?
        .take(256 << 10)
        .read_to_end(&mut data)
        .ok()?;
    Some(cpuinfo_digest(&data))
}

fn cpuinfo_digest(data: &[u8]) -> String {
    let text = String::from_utf8_lossy(data);
    let mut h = blake3::Hasher::new();
    h.update(b"farm-native-cpu-1\0");
    let mut seen_field = false;
    for line in text.lines() {
        if line.trim().is_empty() {
            if seen_field {
                break; // the end of the first processor block
            }
            continue;
        }
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let k = k.trim();
        if CPUINFO_FIELDS.contains(&k) {
            seen_field = true;
            h.update(k.as_bytes());
            h.update(b"=");
            h.update(v.trim().as_bytes());
            h.update(b"\n");
        }
    }
    fsutil::hex(&h.finalize().as_bytes()[..16])
}

fn tmp_depfile() -> PathBuf {
    let seq = {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        N.fetch_add(1, Ordering::Relaxed)
    };
    // Only named here (the hit path creates nothing): the file is created, with
    // O_EXCL in a private 0700 directory, when the compile is observed.
    fsutil::private_temp_dir().join(format!("{}-{seq}.d", std::process::id()))
}

impl Gcc {
    fn parse_args(
        &self,
        compiler: &Path,
        arg0: &OsString,
        args: &[OsString],
        stderr_is_tty: bool,
    ) -> Result<Invocation, Passthrough> {
        let expanded = expand_response_files(args)?;
        let mut has_c = false;
        let mut output: Option<PathBuf> = None;
        let mut deps = UserDeps::default();
        let mut forced_lang: Option<LangOf> = None;
        let mut source: Option<(PathBuf, Lang)> = None;
        let mut extra_inputs = Vec::new();
        let mut key_args: Vec<OsString> = Vec::with_capacity(expanded.len());
        let mut pp_args: Vec<OsString> = Vec::with_capacity(expanded.len() + 1);
        let mut search_args: Vec<OsString> = Vec::new();
        let mut forced_includes = Vec::new();
        let mut debug = false;
        let mut split_dwarf = false;
        let mut coverage = false;
        let mut profile_paths = false;
        let mut color_explicit = false;
        let mut prefix_maps: Vec<(String, String)> = Vec::new();
        let mut arch_count = 0;
        let mut other_input: Option<String> = None;
        let mut dep_args: Vec<OsString> = Vec::new();
        let mut native: Option<String> = None;

        let mut i = 0;
        while i < expanded.len() {
            let raw = &expanded[i];
            let Some(a) = raw.to_str() else {
                return Err(Passthrough::new("non_utf8_argument", raw.to_string_lossy()));
            };
            i += 1;
            if !a.starts_with('-') || a == "-" {
                if a == "-" {
                    return Err(Passthrough::new("stdin", "-"));
                }
                // An input file.
                let lang = match &forced_lang {
                    Some(LangOf::Source(l)) => LangOf::Source(*l),
                    Some(LangOf::Reject(r)) => LangOf::Reject(r),
                    None => match lang_from_ext(a) {
                        Some(l) => l,
                        None => {
                            // An object or library: a link unless -c, decided below.
                            other_input.get_or_insert_with(|| a.to_string());
                            continue;
                        }
                    },
                };
                match lang {
                    LangOf::Reject(r) => return Err(Passthrough::new(r, a)),
                    LangOf::Source(l) => {
                        if source.is_some() {
                            return Err(Passthrough::new("multiple_sources", a));
                        }
                        source = Some((PathBuf::from(a), l));
                    }
                }
                key_args.push(raw.clone());
                pp_args.push(raw.clone());
                continue;
            }
            if let Some(r) = refused(a) {
                return Err(Passthrough::new(r, a));
            }
            if is_native_cpu_flag(a) {
                native.get_or_insert_with(|| a.to_string());
            }
            // Separate-argument flags.
            if WITH_ARG.contains(&a) {
                let Some(val) = expanded.get(i) else {
                    return Err(Passthrough::new("missing_argument", a));
                };
                i += 1;
                let v = val.to_string_lossy();
                match a {
                    "-o" => {
                        output = Some(PathBuf::from(val));
                        continue;
                    }
                    "-MF" => {
                        deps.file = Some(PathBuf::from(val));
                        continue;
                    }
                    "-x" => {
                        forced_lang = if v == "none" {
                            None
                        } else {
                            Some(lang_from_x(&v))
                        };
                        key_args.push(raw.clone());
                        key_args.push(val.clone());
                        pp_args.push(raw.clone());
                        pp_args.push(val.clone());
                        continue;
                    }
                    "-MT" | "-MQ" => {
                        deps.explicit_target = true;
                        key_args.push(raw.clone());
                        key_args.push(val.clone());
                        dep_args.push(raw.clone());
                        dep_args.push(val.clone());
                        continue;
                    }
                    "-specs" | "--specs" => extra_inputs.push(PathBuf::from(val)),
                    "-arch" => arch_count += 1,
                    "-include" | "-imacros" => forced_includes.push(v.to_string()),
                    _ => {}
                }
                key_args.push(raw.clone());
                key_args.push(val.clone());
                pp_args.push(raw.clone());
                pp_args.push(val.clone());
                if !matches!(
                    a,
                    "-D" | "-U" | "-Xlinker" | "-l" | "-L" | "-include" | "-imacros"
                ) {
                    search_args.push(raw.clone());
                    search_args.push(val.clone());
                }
                continue;
            }
            // Joined forms of output and dependency flags.
            if let Some(v) = a.strip_prefix("-o") {
                output = Some(PathBuf::from(v));
                continue;
            }
            if let Some(v) = a.strip_prefix("-MF") {
                deps.file = Some(PathBuf::from(v));
                continue;
            }
            if a.starts_with("-MT") || a.starts_with("-MQ") {
                deps.explicit_target = true;
                key_args.push(raw.clone());
                dep_args.push(raw.clone());
                continue;
            }
            match a {
                "-MD" => {
                    deps.md = Some(true);
                    key_args.push(raw.clone());
                    continue;
                }
                "-MMD" => {
                    deps.md = Some(false);
                    key_args.push(raw.clone());
                    continue;
                }
                "-MP" => {
                    key_args.push(raw.clone());
                    dep_args.push(raw.clone());
                    continue;
                }
                "-c" => has_c = true,
                "--coverage" => coverage = true,
                _ => {}
            }
            if let Some(v) = a.strip_prefix("-x") {
                forced_lang = if v == "none" {
                    None
                } else {
                    Some(lang_from_x(v))
                };
            } else if let Some(rest) = a.strip_prefix("-Wa,") {
                for opt in rest.split(',') {
                    if !ASM_OK.iter().any(|ok| opt.starts_with(ok)) {
                        return Err(Passthrough::new("assembler_option", a));
                    }
                }
            } else if let Some(rest) = a.strip_prefix("-Wp,") {
                for opt in rest.split(',') {
                    if !(opt.starts_with("-D") || opt.starts_with("-U")) {
                        return Err(Passthrough::new("preprocessor_option", a));
                    }
                }
            } else if a.starts_with("-Wl,") {
                // Linker options do nothing with -c.
            } else if let Some(f) = INPUT_FILE_FLAGS.iter().find(|f| a.starts_with(**f)) {
                let p = PathBuf::from(&a[f.len()..]);
                if p.is_dir() {
                    return Err(Passthrough::new("profile_directory", a));
                }
                extra_inputs.push(p);
            } else if a == "-gsplit-dwarf" {
                split_dwarf = true;
                debug = true;
            } else if a.starts_with("-fdiagnostics-color")
                || a.starts_with("-fno-diagnostics-color")
                || a == "-fcolor-diagnostics"
                || a == "-fno-color-diagnostics"
            {
                color_explicit = true;
            } else if let Some(m) = a
                .strip_prefix("-fdebug-prefix-map=")
                .or_else(|| a.strip_prefix("-ffile-prefix-map="))
            {
                if let Some((old, new)) = m.split_once('=') {
                    prefix_maps.push((old.to_string(), new.to_string()));
                }
            } else if a == "-ftest-coverage" || a == "-fprofile-arcs" {
                coverage |= a == "-ftest-coverage";
                profile_paths = true;
            } else if a.starts_with("-fprofile-generate")
                || a.starts_with("-fprofile-instr-generate")
                || a.starts_with("-fcs-profile-generate")
            {
                profile_paths = true;
            } else if a.starts_with("-g") {
                if !matches!(
                    a,
                    "-g0" | "-gno-record-gcc-switches" | "-gcolumn-info" | "-gno-column-info"
                ) {
                    debug = true;
                }
            } else if EXACT_OK.contains(&a)
                || JOINED_OK
                    .iter()
                    .any(|p| a.starts_with(p) && a.len() > p.len())
                || PREFIX_OK
                    .iter()
                    .any(|p| a.starts_with(p) && a.len() > p.len())
            {
                // plain key material
            } else {
                return Err(Passthrough::new("unknown_option", a));
            }
            if a == "-c" {
                key_args.push(raw.clone());
                continue;
            }
            key_args.push(raw.clone());
            pp_args.push(raw.clone());
            let shapes_search = a.starts_with("-I")
                || a.starts_with("-i")
                || a.starts_with("-nostdinc")
                || a.starts_with("--sysroot")
                || a.starts_with("-m")
                || a.starts_with("-std")
                || a.starts_with("--target")
                || a.starts_with("-stdlib")
                || a.starts_with("--gcc-toolchain")
                || a.starts_with("-f");
            if shapes_search {
                search_args.push(raw.clone());
            }
        }

        if !has_c {
            return Err(Passthrough::new("link", ""));
        }
        if let Some(a) = other_input {
            return Err(Passthrough::new("non_source_input", a));
        }
        let Some((src, lang)) = source else {
            return Err(Passthrough::new("no_source", ""));
        };
        if arch_count > 1 {
            return Err(Passthrough::new("multiple_arch", ""));
        }
        // A pipe (`<(…)`, a FIFO) or a device can be read once: by the compiler. A
        // missing source is the compiler's to report (`source_unreadable` later).
        // The same for files named by flags, which the key hashes.
        for p in std::iter::once(&src).chain(&extra_inputs) {
            if let Ok(m) = std::fs::metadata(p) {
                if !m.is_file() {
                    return Err(Passthrough::new(
                        "source_not_regular",
                        p.display().to_string(),
                    ));
                }
            }
        }
        let object = output.clone().unwrap_or_else(|| default_object(&src));
        if object.as_os_str() == "-" {
            return Err(Passthrough::new("output_to_stdout", "-o -"));
        }
        let mut outputs = vec![Output {
            role: "object",
            path: object.clone(),
        }];
        let mut key_extra = Vec::new();
        let mut observe_args = Vec::new();
        let mut observe_depfile = None;
        if let Some(md) = deps.md {
            let file = deps.file.clone().unwrap_or_else(|| match &output {
                Some(o) => with_ext(o, "d"),
                None => with_ext(&default_object(&src), "d"),
            });
            deps.file = Some(file.clone());
            outputs.push(Output {
                role: "depfile",
                path: file,
            });
            if !deps.explicit_target {
                // The rule's target derives from the object path: it is output content.
                key_extra.push(format!("dep-target={}", object.display()));
            }
            let _ = md;
        } else if !lang.preprocessed() {
            let f = tmp_depfile();
            observe_args = vec![
                OsString::from("-MD"),
                OsString::from("-MF"),
                f.clone().into_os_string(),
            ];
            observe_depfile = Some(f);
        }
        if split_dwarf {
            outputs.push(Output {
                role: "dwo",
                path: with_ext(&object, "dwo"),
            });
            key_extra.push(format!("object-path={}", object.display()));
        }
        if coverage {
            outputs.push(Output {
                role: "gcno",
                path: with_ext(&object, "gcno"),
            });
        }
        let mut cwd_in_key = None;
        if coverage || profile_paths {
            // The .gcno records the cwd; the object embeds the .gcda path.
            key_extra.push(format!("object-path={}", object.display()));
            cwd_in_key = std::env::current_dir().ok();
        } else if debug {
            cwd_in_key = std::env::current_dir()
                .ok()
                .map(|d| apply_prefix_maps(&d, &prefix_maps));
        }
        // Preprocessed-source distribution changes debug info (column numbers and
        // file digests differ from a compile of the source itself, checked with cmp),
        // and coverage/profiling record paths of the machine that compiles.
        // What `native` means is this machine's CPU: it enters the key, and no other
        // machine compiles it.
        if let Some(flag) = &native {
            let Some(cpu) = native_cpu_digest() else {
                return Err(Passthrough::new("native_cpu_unknown", flag.clone()));
            };
            key_extra.push(format!("native-cpu={cpu}"));
        }
        let remote_block = if let Some(flag) = native {
            Some(("native_cpu", flag))
        } else if debug {
            Some(("debug_info", String::new()))
        } else if coverage || profile_paths {
            Some(("coverage_or_profile", String::new()))
        } else if let Some(p) = extra_inputs.first() {
            Some(("input_file_flag", p.display().to_string()))
        } else if !matches!(lang, Lang::C | Lang::Cxx | Lang::ObjC | Lang::ObjCxx) {
            Some(("language", lang.x_name().to_string()))
        } else {
            None
        };
        let mut args_out = args.to_vec();
        if stderr_is_tty && !color_explicit {
            // The compiler sees a pipe; ask for the colours it would give a terminal.
            args_out.push(OsString::from("-fdiagnostics-color=always"));
            key_extra.push("stderr-color".into());
        }
        key_extra.sort();
        key_extra.dedup();
        pp_args.push(OsString::from("-E"));
        search_args.retain(|a| a != "-c");
        Ok(Invocation {
            compiler: compiler.to_path_buf(),
            arg0: arg0.clone(),
            args: args_out,
            key_args,
            key_extra,
            source: src,
            extra_inputs,
            outputs,
            cwd_in_key,
            observe_args,
            plan: Plan::Gcc(GccPlan {
                lang,
                deps,
                observe_depfile,
                pp_args,
                search_args,
                forced_includes,
                output_given: output.is_some(),
                dep_args,
                remote_block,
            }),
        })
    }
}

fn plan(inv: &Invocation) -> &GccPlan {
    match &inv.plan {
        Plan::Gcc(p) => p,
        _ => unreachable!("gcc invocation without a gcc plan"),
    }
}

// ------------------------------------------------------------------ dependency files

/// Parses the first rule of a Make dependency file: the prerequisites, unescaped.
pub fn parse_depfile(text: &[u8]) -> Vec<PathBuf> {
    // Join continuation lines, keep escapes for the tokenizer.
    let mut deps = Vec::new();
    let mut i = 0;
    // Skip the targets: up to the first ':' that is followed by whitespace or the end.
    while i < text.len() {
        if text[i] == b'\\' {
            i += 2;
            continue;
        }
        if text[i] == b':' && (i + 1 == text.len() || text[i + 1].is_ascii_whitespace()) {
            i += 1;
            break;
        }
        i += 1;
    }
    let mut cur: Vec<u8> = Vec::new();
    while i < text.len() {
        let c = text[i];
        match c {
            b'\\' if i + 1 < text.len() && text[i + 1] == b'\n' => i += 1,
            b'\\' if i + 2 < text.len() && text[i + 1] == b'\r' && text[i + 2] == b'\n' => i += 2,
            b'\\' if i + 1 < text.len() && matches!(text[i + 1], b' ' | b'#' | b'\\') => {
                cur.push(text[i + 1]);
                i += 1;
            }
            b'$' if i + 1 < text.len() && text[i + 1] == b'$' => {
                cur.push(b'$');
                i += 1;
            }
            b' ' | b'\t' | b'\r' => {
                if !cur.is_empty() {
                    deps.push(PathBuf::from(OsString::from_vec(std::mem::take(&mut cur))));
                }
            }
            b'\n' => break,
            _ => cur.push(c),
        }
        i += 1;
    }
    if !cur.is_empty() {
        deps.push(PathBuf::from(OsString::from_vec(cur)));
    }
    deps
}

// ------------------------------------------------------------------ include scanning

#[derive(Debug, PartialEq, Eq, Clone)]
struct Directive {
    quoted: bool,
    next: bool,
    name: String,
}

#[derive(Debug, Default)]
struct Scan {
    directives: Vec<Directive>,
    computed_include: bool,
    computed_has_include: bool,
    time_macro: Option<&'static str>,
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
fn scan_text(t: &[u8]) -> Scan {
    let mut s = Scan::default();
    for m in ["__TIMESTAMP__", "__DATE__", "__TIME__"] {
        if memchr::memmem::find(t, m.as_bytes()).is_some() {
            s.time_macro = Some(m);
            break;
        }
    }
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

fn search_list(inv: &Invocation, scratch: &Path) -> Result<SearchList, NotRecordable> {
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
        })?;
    let sl = parse_search_list(&out.stderr)
        .filter(|_| out.status.success())
        .ok_or(NotRecordable {
            reason: "search_list_failed",
            detail: "no search list in `-E -v` output".into(),
            preprocessor_ok: true,
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

fn join_include(dir: &Path, name: &str) -> PathBuf {
    if dir.as_os_str().is_empty() {
        PathBuf::from(name)
    } else {
        dir.join(name)
    }
}

fn pch_path(p: &Path) -> PathBuf {
    let mut s = p.as_os_str().to_os_string();
    s.push(".gch");
    PathBuf::from(s)
}

/// The first `.gch` beside a file named in `-E` line markers, if any: `gcc -E`
/// ignores precompiled headers, so its text would not show what the compile used.
/// The text of a preprocessor run, or why it cannot stand for the source: it failed
/// (the compiler reports that in its own words), or it used a precompiled header.
fn preprocessed_text(inv: &Invocation, out: std::process::Output) -> Result<Vec<u8>, Passthrough> {
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
fn record_lookups(
    read: &[PathBuf],
    source: &Path,
    forced: &[String],
    sl: &SearchList,
    closure: bool,
) -> Result<DependencyFacts, NotRecordable> {
    let mut rec = Recorder {
        read_set: read.iter().map(|p| path_key(p)).collect(),
        closure,
        ..Recorder::default()
    };
    rec.work.push(source.to_path_buf());
    rec.work.extend(read.iter().cloned());
    // Nonexistent directories first: the compiler may start searching them any time.
    let chain_angle: Vec<&Path> = sl
        .missing
        .iter()
        .chain(sl.angle.iter())
        .map(|p| p.as_path())
        .collect();
    let chain_quote: Vec<&Path> = sl
        .missing
        .iter()
        .chain(sl.quote.iter())
        .chain(sl.angle.iter())
        .map(|p| p.as_path())
        .collect();
    let mut computed_dirs: Vec<PathBuf> = Vec::new();
    // Forced includes are looked up from the cwd first, then like "name".
    for name in forced {
        let mut it = std::iter::once(PathBuf::from(name))
            .chain(chain_quote.iter().map(|d| join_include(d, name)));
        rec.visit(&mut it, false);
    }
    if closure {
        // gcc's implicit include, absent from -MMD output.
        let mut it = chain_angle.iter().map(|d| join_include(d, "stdc-predef.h"));
        rec.visit(&mut it, false);
    }
    let mut scanned: HashSet<Vec<u8>> = HashSet::default();
    while let Some(f) = rec.work.pop() {
        if !scanned.insert(path_key(&f)) {
            continue;
        }
        let Ok(text) = fsutil::read_file(&f) else {
            continue;
        };
        if let Err(p) = check_code_directives(&text, &f.display().to_string()) {
            return Err(NotRecordable {
                reason: p.reason,
                detail: p.detail,
                preprocessor_ok: false,
            });
        }
        let scan = scan_text(&text);
        if let Some(m) = scan.time_macro {
            return Err(NotRecordable {
                reason: "time_macro",
                detail: format!("{m} in {}", f.display()),
                preprocessor_ok: true,
            });
        }
        if scan.computed_has_include {
            return Err(NotRecordable {
                reason: "computed_has_include",
                detail: f.display().to_string(),
                preprocessor_ok: true,
            });
        }
        let dir = f.parent().unwrap_or(Path::new("")).to_path_buf();
        if scan.computed_include {
            if closure {
                return Err(NotRecordable {
                    reason: "computed_include",
                    detail: f.display().to_string(),
                    preprocessor_ok: true,
                });
            }
            computed_dirs.push(dir.clone());
        }
        for d in &scan.directives {
            if Path::new(&d.name).is_absolute() {
                rec.visit(&mut std::iter::once(PathBuf::from(&d.name)), false);
            } else if d.quoted {
                let mut it = std::iter::once(join_include(&dir, &d.name))
                    .chain(chain_quote.iter().map(|s| join_include(s, &d.name)));
                rec.visit(&mut it, d.next);
            } else {
                let mut it = chain_angle.iter().map(|s| join_include(s, &d.name));
                rec.visit(&mut it, d.next);
            }
        }
    }
    // Backstop for lookups no directive names (implicit stdc-predef.h, computed
    // includes): for each file read from a search directory, every earlier directory
    // that could shadow it.
    let dirs: Vec<PathBuf> = computed_dirs
        .iter()
        .cloned()
        .chain(chain_quote.iter().map(|p| p.to_path_buf()))
        .collect();
    let all_read: Vec<PathBuf> = read.iter().chain(rec.extra.iter()).cloned().collect();
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
            rec.visit(&mut it, true);
        }
    }
    if let Some(p) = rec.pch {
        return Err(NotRecordable {
            reason: "pch_use",
            detail: p.display().to_string(),
            preprocessor_ok: false,
        });
    }
    let (missing, not_file) = rec.classify();
    let mut files = read.to_vec();
    files.append(&mut rec.extra);
    Ok(DependencyFacts {
        files,
        missing,
        not_file,
    })
}

/// What [`record_lookups`] gathers while it walks include lookups. Path sets are
/// keyed by cleaned bytes: this runs for tens of thousands of candidates.
#[derive(Default)]
struct Recorder {
    read_set: HashSet<Vec<u8>>,
    closure: bool,
    /// Files still to scan for directives.
    work: Vec<PathBuf>,
    seen: HashSet<Vec<u8>>,
    /// Lookup paths without a regular file, with what is there.
    probes: Vec<(PathBuf, PathKind)>,
    extra: Vec<PathBuf>,
    pch: Option<PathBuf>,
    dirs: DirCache,
}

fn path_key(p: &Path) -> Vec<u8> {
    fsutil::clean_bytes(p.as_os_str().as_bytes()).into_owned()
}

impl Recorder {
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

/// The dependency list of this compile: `(files, complete)`; `complete` is false for
/// `-MMD` output, which leaves system headers out.
fn read_deps(inv: &Invocation) -> Result<(Vec<PathBuf>, bool), NotRecordable> {
    let p = plan(inv);
    let (path, complete) = match (&p.observe_depfile, p.deps.md, &p.deps.file) {
        (Some(f), _, _) => (f.clone(), true),
        (None, Some(md), Some(f)) => (f.clone(), md),
        _ => {
            return Err(NotRecordable {
                reason: "no_dependency_file",
                detail: String::new(),
                preprocessor_ok: false,
            })
        }
    };
    // A missing file is possibly transient (TMPDIR): not stored this time, nothing
    // remembered.
    let text = std::fs::read(&path).map_err(|e| NotRecordable {
        reason: "no_dependency_file",
        detail: format!("{}: {e}", path.display()),
        preprocessor_ok: false,
    })?;
    Ok((parse_depfile(&text), complete))
}

/// A full dependency list from a separate `-M` run (system headers included).
fn scan_deps(inv: &Invocation) -> Result<Vec<PathBuf>, NotRecordable> {
    let p = plan(inv);
    let f = tmp_depfile();
    if fsutil::create_private_file(&f).is_err() {
        return Err(NotRecordable {
            reason: "dependency_scan_failed",
            detail: f.display().to_string(),
            preprocessor_ok: false,
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
        }),
    }
}

// ------------------------------------------------------------------ distribution

/// Flags that only steer preprocessing or linking: a worker compiling preprocessed
/// source does not get them.
const HOME_ONLY_EXACT: &[&str] = &[
    "-c",
    "-MD",
    "-MMD",
    "-MP",
    "-nostdinc",
    "-nostdinc++",
    "-C",
    "-CC",
    "-P",
    "-undef",
    "-trigraphs",
    "-traditional-cpp",
    "-pipe",
    "-shared",
    "-static",
    "-static-libgcc",
    "-static-libstdc++",
    "-rdynamic",
    "-s",
    "-pie",
    "-no-pie",
    "-nostdlib",
    "-nostdlib++",
    "-nodefaultlibs",
    "-nostartfiles",
];
const HOME_ONLY_PREFIX: &[&str] = &[
    "-D",
    "-U",
    "-I",
    "-i",
    "-MT",
    "-MQ",
    "-l",
    "-L",
    "-Wp,",
    "-Wl,",
    "--sysroot",
];
/// Separate-argument flags a worker accepts, with a plain value.
const WORKER_PAIRS: &[&str] = &["--param", "-target"];
/// Flags a worker never runs: they load code, read files that exist only on the
/// client, or write files beside the object.
const WORKER_DENY_PREFIX: &[&str] = &[
    "-fplugin",
    "-fpass-plugin",
    "-fprofile",
    "-fauto-profile",
    "-fcoverage",
    "-ftest-coverage",
    "-fsanitize-blacklist",
    "-fsanitize-ignorelist",
    "-fsanitize-coverage-",
    "-fxray-attr-list",
    "-fxray-always",
    "-fxray-never",
    "-fdump",
    "-fopt-info",
    "-fsave-optimization-record",
    "-fstack-usage",
    "-fcallgraph-info",
    "-fdiagnostics-format",
    "-fcrash-diagnostics",
    "-fmodule",
    "-fbuild-session",
    "-fvtv",
    "-fself-test",
    "-fltrans",
    "-fresolution",
    "-fuse-ld",
    "-fdebug-compilation-dir",
    "-fcompare-debug",
    "-mllvm",
    "-specs",
    "--specs",
    "-wrapper",
    "-B",
    "-o",
    "-x",
    "-E",
    "-S",
    "-M",
    "-save-temps",
    "--save-temps",
    "-dump",
    "-print",
    "--print",
    "-gsplit-dwarf",
    "--coverage",
    "-Wl,",
    "-Wp,",
    "-Xlinker",
    "@",
];
/// Words (between `-`, `=`, `,`, `:`) of a `-f`/`-m` flag a worker refuses, besides
/// any word ending in `list` (`=list=`, sanitizer and xray lists): the flag reads or
/// writes a file, turns preprocessing back on, or depends on the machine.
const WORKER_DENY_WORDS: &[&str] = &[
    "file",
    "files",
    "dir",
    "directory",
    "path",
    "prefix",
    "map",
    "record",
    "report",
    "trace",
    "stat",
    "stats",
    "profile",
    "probabilities",
    "afdo",
    "gcda",
    "preprocessed",
    "directives",
    "include",
    "pch",
    "plugin",
    "load",
    "dump",
    "coverage",
    "crash",
    "diagnostics",
    "output",
    "temps",
    "index",
    "session",
    "native",
];
const WORKER_EXACT_OK: &[&str] = &[
    "-ansi",
    "-w",
    "-p",
    "-pg",
    "-pthread",
    "-pedantic",
    "-pedantic-errors",
    "--pedantic",
    "-Qunused-arguments",
    "-integrated-as",
    "-no-integrated-as",
    "-O",
];
const WORKER_PREFIX_OK: &[&str] = &[
    "-f",
    "-m",
    "-W",
    "-O",
    "-std=",
    "--std=",
    "--param=",
    "--target=",
];
/// Languages a worker compiles: preprocessed C, C++, Objective-C and Objective-C++.
const WORKER_LANGS: &[&str] = &[
    "cpp-output",
    "c++-cpp-output",
    "objective-c-cpp-output",
    "objective-c++-cpp-output",
];
/// The language of a shipped text by the extension of its file name in the job
/// directory: the client names the file so, the worker passes that `-x` language.
const JOB_INPUT_EXT: &[(&str, &str)] = &[
    ("cpp-output", "i"),
    ("c++-cpp-output", "ii"),
    ("objective-c-cpp-output", "mi"),
    ("objective-c++-cpp-output", "mii"),
];
/// The stem of a text job's files: `job.i` compiles into `job.o`.
const JOB_STEM: &str = "job";

/// A file name of a text job: one plain name that cannot pass for a flag or a path
/// (it reaches the compiler as an argument).
fn job_file_name_ok(name: &str) -> bool {
    name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._".contains(&b))
}

/// Worker side of a text job's names: the `-x` language of `input`, and the one
/// object file it compiles into.
fn worker_job_files<'a>(
    input: &str,
    outputs: &'a [String],
) -> Result<(&'static str, &'a str), Passthrough> {
    let lang = Path::new(input)
        .extension()
        .and_then(|e| e.to_str())
        .and_then(|e| JOB_INPUT_EXT.iter().find(|(_, x)| *x == e))
        .filter(|_| job_file_name_ok(input))
        .map(|(lang, _)| *lang)
        .ok_or_else(|| Passthrough::new("language", input))?;
    match outputs {
        [o] if job_file_name_ok(o) && o.ends_with(".o") && o != input => Ok((lang, o)),
        _ => Err(Passthrough::new("outputs", outputs.join(" "))),
    }
}

/// Environment under which a compile must stay at home: it changes which programs
/// the driver runs or how, and a worker runs with a clean environment.
/// (`LD_LIBRARY_PATH` is in the key but does not keep a compile home: build tools set
/// it routinely, and a worker's compiler has the same identity digest.)
const HOME_ENV: &[&str] = &[
    "GCC_EXEC_PREFIX",
    "COMPILER_PATH",
    "GCC_COMPARE_DEBUG",
    "LD_PRELOAD",
];

/// Whether a worker may pass `a` to a compile of preprocessed source. The worker
/// calls this on every argument it receives; the client calls it first, so a job it
/// sends is never refused for a flag it could have foreseen.
pub fn worker_arg_ok(a: &str) -> bool {
    if !a.starts_with('-') || a.len() > 1024 || a.bytes().any(|b| b < 0x20) {
        return false;
    }
    if refused(a).is_some()
        || INPUT_FILE_FLAGS.iter().any(|f| a.starts_with(f))
        || WORKER_DENY_PREFIX.iter().any(|f| a.starts_with(f))
    {
        return false;
    }
    if let Some(rest) = a.strip_prefix("-Wa,") {
        return rest
            .split(',')
            .all(|opt| ASM_OK.iter().any(|ok| opt.starts_with(ok)));
    }
    if a.starts_with("-g") {
        // Debug info is never made by a worker (see `remote_block`).
        return false;
    }
    // Fail closed on the open-ended `-f`/`-m` families: any word that names a file,
    // a directory, a list, a profile, a report or preprocessing, any `native` value
    // (what it means differs per machine), and any path at all.
    if a.contains('/') {
        return false;
    }
    if (a.starts_with("-f") || a.starts_with("-m"))
        && a[2..]
            .split(['-', '=', ',', ':'])
            .any(|w| WORKER_DENY_WORDS.contains(&w) || w.ends_with("list"))
    {
        return false;
    }
    WORKER_EXACT_OK.contains(&a)
        || WORKER_PREFIX_OK
            .iter()
            .any(|p| a.starts_with(p) && a.len() > p.len())
}

fn worker_pair_value_ok(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 256
        && !v.starts_with('-')
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"=_-.,+".contains(&b))
}

/// The arguments a worker gets: the key arguments without the source, outputs,
/// dependency, preprocessing and link flags. `Err` names the flag that keeps this
/// compile at home.
fn remote_args(key_args: &[OsString], source: &Path) -> Result<Vec<String>, Passthrough> {
    let mut out = Vec::with_capacity(key_args.len());
    let mut i = 0;
    while i < key_args.len() {
        let raw = &key_args[i];
        i += 1;
        if Path::new(raw) == source {
            continue;
        }
        let Some(a) = raw.to_str() else {
            return Err(Passthrough::new("flag", raw.to_string_lossy()));
        };
        if WITH_ARG.contains(&a) {
            let v = key_args.get(i).and_then(|v| v.to_str()).unwrap_or("");
            i += 1;
            if WORKER_PAIRS.contains(&a) {
                if !worker_pair_value_ok(v) {
                    return Err(Passthrough::new("flag", format!("{a} {v}")));
                }
                out.push(a.to_string());
                out.push(v.to_string());
                continue;
            }
            if matches!(a, "-specs" | "--specs" | "-arch") {
                return Err(Passthrough::new("flag", a));
            }
            continue;
        }
        if HOME_ONLY_EXACT.contains(&a) || HOME_ONLY_PREFIX.iter().any(|p| a.starts_with(p)) {
            continue;
        }
        if !worker_arg_ok(a) {
            return Err(Passthrough::new("flag", a));
        }
        out.push(a.to_string());
    }
    Ok(out)
}

/// Worker side: checks a job's language and arguments and builds the compiler's
/// arguments for `input` (the preprocessed source) and `output` in the job directory.
pub fn worker_args(
    lang: &str,
    args: &[String],
    input: &Path,
    output: &Path,
) -> Result<Vec<OsString>, Passthrough> {
    if !WORKER_LANGS.contains(&lang) {
        return Err(Passthrough::new("language", lang));
    }
    if args.len() > 512 {
        return Err(Passthrough::new(
            "too_many_arguments",
            args.len().to_string(),
        ));
    }
    let mut out: Vec<OsString> = vec!["-x".into(), lang.into()];
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        i += 1;
        if WORKER_PAIRS.contains(&a) {
            let v = args.get(i).map(String::as_str).unwrap_or("");
            i += 1;
            if !worker_pair_value_ok(v) {
                return Err(Passthrough::new("flag", format!("{a} {v}")));
            }
            out.push(a.into());
            out.push(v.into());
            continue;
        }
        if !worker_arg_ok(a) {
            return Err(Passthrough::new("flag", a));
        }
        out.push(a.into());
    }
    out.push("-c".into());
    out.push(input.into());
    out.push("-o".into());
    out.push(output.into());
    Ok(out)
}

impl Gcc {
    /// The worker's language (`-x` name) and arguments, or why no worker may compile
    /// this.
    fn remote_plan(&self, inv: &Invocation) -> Result<(&'static str, Vec<String>), Passthrough> {
        let p = plan(inv);
        let lang = match p.lang {
            Lang::C => "cpp-output",
            Lang::Cxx => "c++-cpp-output",
            Lang::ObjC => "objective-c-cpp-output",
            Lang::ObjCxx => "objective-c++-cpp-output",
            other => return Err(Passthrough::new("language", other.x_name())),
        };
        if let Some((reason, detail)) = &p.remote_block {
            return Err(Passthrough::new(reason, detail.clone()));
        }
        if let Some(var) = HOME_ENV.iter().find(|v| std::env::var_os(v).is_some()) {
            return Err(Passthrough::new("environment", *var));
        }
        Ok((lang, remote_args(&inv.key_args, &inv.source)?))
    }

    fn remote_prepare_impl(
        &self,
        inv: &Invocation,
    ) -> std::io::Result<Result<TextJob, Passthrough>> {
        let (lang, args) = match self.remote_plan(inv) {
            Ok(x) => x,
            Err(p) => return Ok(Err(p)),
        };
        let p = plan(inv);
        // One preprocessor run gives the text to ship and writes the dependency file
        // the compile would have written (the user's, or farm's own observation).
        let mut cmd = Command::new(&inv.compiler);
        // `-C` keeps comments: gcc reads `/* FALLTHROUGH */` and its kin when it warns,
        // so without them a worker's compile warns where the local one does not.
        cmd.arg0(&inv.arg0).args(&p.pp_args).arg("-C");
        if let Some(md) = p.deps.md {
            cmd.arg(if md { "-MD" } else { "-MMD" });
            if let Some(f) = &p.deps.file {
                cmd.arg("-MF").arg(f);
            }
            cmd.args(&p.dep_args);
            if !p.deps.explicit_target && p.output_given {
                cmd.arg("-MQ").arg(&inv.outputs[0].path);
            }
        } else if let Some(f) = &p.observe_depfile {
            if fsutil::create_private_file(f).is_err() {
                return Ok(Err(Passthrough::new(
                    "observation_file",
                    f.display().to_string(),
                )));
            }
            cmd.args(&inv.observe_args);
        }
        let out = cmd.stdin(Stdio::null()).output()?;
        let Some((_, ext)) = JOB_INPUT_EXT.iter().find(|(l, _)| *l == lang) else {
            return Ok(Err(Passthrough::new("language", lang)));
        };
        Ok(preprocessed_text(inv, out).map(|text| TextJob {
            input: format!("{JOB_STEM}.{ext}"),
            args,
            text,
            outputs: vec![TextOutput {
                name: format!("{JOB_STEM}.o"),
                path: inv.outputs[0].path.clone(),
            }],
        }))
    }
}

const KEY_ENV: &[&str] = &[
    "CPATH",
    "C_INCLUDE_PATH",
    "CPLUS_INCLUDE_PATH",
    "OBJC_INCLUDE_PATH",
    "OBJCPLUS_INCLUDE_PATH",
    "SOURCE_DATE_EPOCH",
    "GCC_EXEC_PREFIX",
    "COMPILER_PATH",
    "LIBRARY_PATH",
    "GCC_COMPARE_DEBUG",
    "GCC_COLORS",
    "GCC_URLS",
    "TERM_URLS",
    "COLUMNS",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "LC_MESSAGES",
    "LD_PRELOAD",
    "LD_LIBRARY_PATH",
    "MACOSX_DEPLOYMENT_TARGET",
    "SDKROOT",
];

const UNSAFE_ENV: &[&str] = &[
    "DEPENDENCIES_OUTPUT",
    "SUNPRO_DEPENDENCIES",
    "CCC_OVERRIDE_OPTIONS",
    "CC_PRINT_OPTIONS",
    "CC_PRINT_HEADERS",
    "CC_LOG_DIAGNOSTICS",
];

impl Family for Gcc {
    fn name(&self) -> &'static str {
        "gcc"
    }

    fn key_env(&self) -> &'static [&'static str] {
        KEY_ENV
    }

    fn unsafe_env(&self) -> &'static [&'static str] {
        UNSAFE_ENV
    }

    fn parse(
        &self,
        compiler: &Path,
        arg0: &OsString,
        args: &[OsString],
        stderr_is_tty: bool,
    ) -> Result<Invocation, Passthrough> {
        self.parse_args(compiler, arg0, args, stderr_is_tty)
    }

    fn keying(&self) -> Keying<'_> {
        Keying::Observed(self)
    }

    fn text_jobs(&self) -> Option<&dyn TextJobs> {
        Some(self)
    }
}

impl Observed for Gcc {
    fn preprocess(&self, inv: &Invocation) -> std::io::Result<Result<Vec<u8>, Passthrough>> {
        let out = Command::new(&inv.compiler)
            .arg0(&inv.arg0)
            .args(&plan(inv).pp_args)
            .stdin(Stdio::null())
            .output()?;
        Ok(preprocessed_text(inv, out))
    }

    fn compile(&self, inv: &Invocation, observe: bool) -> std::io::Result<CompileRun> {
        // The observation must never be why a compile fails: if its file cannot be
        // created (unwritable TMPDIR), the compile runs unobserved and is not stored.
        let observe = observe
            && match &plan(inv).observe_depfile {
                Some(f) => fsutil::create_private_file(f).is_ok(),
                None => true,
            };
        let extra: &[OsString] = if observe { &inv.observe_args } else { &[] };
        super::run_compiler(inv, inv.args.iter().chain(extra))
    }

    fn dependencies(
        &self,
        inv: &Invocation,
        source: DepSource,
        scratch: &Path,
    ) -> Result<DependencyFacts, NotRecordable> {
        let p = plan(inv);
        if p.lang.preprocessed() {
            // Nothing is included: the key needs only the source.
            return Ok(DependencyFacts::default());
        }
        let (files, complete) = read_deps(inv)?;
        let src_clean = fsutil::clean_path(&inv.source);
        let tidy = |mut files: Vec<PathBuf>| {
            files.retain(|f| fsutil::clean_path(f) != src_clean);
            let mut uniq = HashSet::default();
            files.retain(|f| uniq.insert(fsutil::clean_path(f)));
            files
        };
        let files = tidy(files);
        let sl = search_list(inv, scratch)?;
        match record_lookups(&files, &inv.source, &p.forced_includes, &sl, !complete) {
            // -MMD output with a computed include among the system headers: only a
            // dependency scan can list them.
            Err(nr) if !complete && nr.reason == "computed_include" => {
                tracing::info!(file = %nr.detail, "computed #include among headers -MMD leaves out: dependency scan");
                if source == DepSource::CompileOnly {
                    return Err(NotRecordable {
                        reason: "depend_mode_mmd",
                        detail: nr.detail,
                        preprocessor_ok: false,
                    });
                }
                let files = tidy(scan_deps(inv)?);
                record_lookups(&files, &inv.source, &p.forced_includes, &sl, false)
            }
            other => other,
        }
    }

    fn source_check(&self, source: &[u8]) -> Result<(), Passthrough> {
        check_code_directives(source, "")
    }

    fn cleanup(&self, inv: &Invocation) {
        if let Some(f) = &plan(inv).observe_depfile {
            let _ = std::fs::remove_file(f);
        }
    }
}

impl TextJobs for Gcc {
    fn allowed(&self, inv: &Invocation) -> Result<(), Passthrough> {
        self.remote_plan(inv).map(|_| ())
    }

    fn prepare(&self, inv: &Invocation) -> std::io::Result<Result<TextJob, Passthrough>> {
        self.remote_prepare_impl(inv)
    }

    fn worker_text_check(&self, text: &[u8]) -> Result<(), Passthrough> {
        check_code_directives(text, "")
    }

    fn worker_text_args(
        &self,
        input: &str,
        args: &[String],
        outputs: &[String],
    ) -> Result<Vec<String>, Passthrough> {
        let (lang, object) = worker_job_files(input, outputs)?;
        worker_args(lang, args, Path::new(input), Path::new(object))?
            .into_iter()
            .map(|a| {
                a.into_string()
                    .map_err(|a| Passthrough::new("flag", a.to_string_lossy()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    fn parse(v: &[&str]) -> Result<Invocation, Passthrough> {
        GCC.parse(
            Path::new("/usr/bin/gcc"),
            &OsString::from("gcc"),
            &os(v),
            false,
        )
    }

    #[test]
    fn names() {
        for n in [
            "gcc",
            "g++",
            "cc",
            "c++",
            "clang",
            "clang++",
            "clang-14",
            "clang++-14",
            "gcc-12",
            "x86_64-linux-gnu-gcc-12",
            "x86_64-linux-gnu-g++",
        ] {
            assert!(is_gcc_like(n), "{n}");
        }
        for n in [
            "clang-format",
            "clang-tidy",
            "gcc-ar",
            "gcc-nm-12",
            "javac",
            "ld",
            "cpp",
            "clang-cl",
        ] {
            assert!(!is_gcc_like(n), "{n}");
        }
    }

    #[test]
    fn simple_compile() {
        let inv = parse(&["-c", "-O2", "-Iinc", "-DX=1", "src/a.c", "-o", "obj/a.o"]).unwrap();
        assert_eq!(inv.source, PathBuf::from("src/a.c"));
        assert_eq!(inv.outputs[0].path, PathBuf::from("obj/a.o"));
        assert_eq!(
            inv.key_args,
            os(&["-c", "-O2", "-Iinc", "-DX=1", "src/a.c"])
        );
        assert!(inv.cwd_in_key.is_none());
        assert_eq!(inv.observe_args.len(), 3);
    }

    #[test]
    fn default_object_name() {
        let inv = parse(&["-c", "dir/x.cpp"]).unwrap();
        assert_eq!(inv.outputs[0].path, PathBuf::from("x.o"));
    }

    #[test]
    fn passthrough_reasons() {
        let cases: &[(&[&str], &str)] = &[
            (&["a.c", "-o", "a"], "link"),
            (&["-E", "a.c"], "preprocess_only"),
            (&["-S", "a.c"], "assemble_only"),
            (&["-c", "a.c", "b.c"], "multiple_sources"),
            (&["-c", "-"], "stdin"),
            (&["-c", "-x", "c", "-"], "stdin"),
            (&["-c", "a.c", "-save-temps"], "save_temps"),
            (&["-c", "a.c", "-fplugin=x.so"], "plugin"),
            (&["-c", "a.c", "--frobnicate"], "unknown_option"),
            (&["-c", "a.s"], "assembler_source"),
            (&["-c", "a.h"], "pch_create"),
            (
                &["-c", "a.c", "-arch", "x86_64", "-arch", "arm64"],
                "multiple_arch",
            ),
            (&["-c", "a.c", "-M"], "dependencies_only"),
            (&["-c", "a.c", "-Wa,-adhln=x.lst"], "assembler_option"),
            (&["-c", "a.c", "-B/tmp/x"], "compiler_prefix"),
            (&["-c", "a.c", "-include-pch", "x.pch"], "pch_use"),
            (
                &["-c", "a.c", "-frecord-gcc-switches"],
                "records_command_line",
            ),
            (&["-c", "a.c", "-fdump-tree-all"], "dump_files"),
            (&["-c", "a.c", "-o", "-"], "output_to_stdout"),
            (&["-c", "a.c", "-o"], "missing_argument"),
            (&["-c", "a.c", "x.o"], "non_source_input"),
            (
                &["-c", "a.c", "-fbranch-probabilities"],
                "profile_use_implicit",
            ),
            (&["-c", "a.c", "-fauto-profile"], "profile_use_implicit"),
            (
                &["-c", "a.c", "-fprofile-instr-use"],
                "profile_use_implicit",
            ),
        ];
        for (args, reason) in cases {
            let r = parse(args).unwrap_err();
            assert_eq!(r.reason, *reason, "{args:?}");
        }
    }

    #[test]
    fn dependency_outputs() {
        let inv = parse(&["-c", "a.c", "-o", "o/a.o", "-MD"]).unwrap();
        assert_eq!(inv.outputs[1].path, PathBuf::from("o/a.d"));
        assert!(inv.key_extra.iter().any(|e| e == "dep-target=o/a.o"));
        assert!(inv.observe_args.is_empty());
        let inv = parse(&[
            "-c",
            "a.c",
            "-o",
            "o/a.o",
            "-MMD",
            "-MF",
            "deps/a.dep",
            "-MT",
            "o/a.o",
        ])
        .unwrap();
        assert_eq!(inv.outputs[1].path, PathBuf::from("deps/a.dep"));
        assert!(!inv.key_extra.iter().any(|e| e.starts_with("dep-target")));
        assert!(!inv.key_args.iter().any(|a| a == "deps/a.dep"));
    }

    #[test]
    fn side_outputs_and_cwd() {
        let inv = parse(&["-c", "a.c", "-o", "o/a.o", "-g", "-gsplit-dwarf"]).unwrap();
        assert_eq!(inv.outputs[1].path, PathBuf::from("o/a.dwo"));
        assert!(inv.cwd_in_key.is_some());
        let inv = parse(&["-c", "a.c", "--coverage"]).unwrap();
        assert_eq!(inv.outputs[1].path, PathBuf::from("a.gcno"));
        let inv = parse(&["-c", "a.c", "-g", "-fdebug-prefix-map=/=/x/"]).unwrap();
        assert!(inv.cwd_in_key.unwrap().starts_with("/x/"));
    }

    #[test]
    fn response_files() {
        let d = tempfile::tempdir().unwrap();
        let rsp = d.path().join("args.rsp");
        std::fs::write(&rsp, "-c 'a b.c' \"-DX=1 2\" -O\\ 2\n").unwrap();
        let got = expand_response_files(&os(&[&format!("@{}", rsp.display()), "-g"])).unwrap();
        assert_eq!(got, os(&["-c", "a b.c", "-DX=1 2", "-O 2", "-g"]));
        assert_eq!(
            expand_response_files(&os(&["@/nonexistent/farm.rsp"]))
                .unwrap_err()
                .reason,
            "response_file_unreadable"
        );
    }

    #[test]
    fn depfile_parsing() {
        let t = b"obj/a.o: src/a.c /usr/include/stdio.h \\\n inc/my\\ file.h a$$b.h\ninc/x.h:\n";
        let d = parse_depfile(t);
        assert_eq!(
            d,
            vec![
                PathBuf::from("src/a.c"),
                PathBuf::from("/usr/include/stdio.h"),
                PathBuf::from("inc/my file.h"),
                PathBuf::from("a$b.h")
            ]
        );
    }

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
            scan_text(b"const char *d = __DATE__;").time_macro,
            Some("__DATE__")
        );
    }

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
    fn remote_args_keep_compile_flags_only() {
        let inv = parse(&[
            "-O2",
            "-Iinc",
            "-I",
            "x",
            "-DA=1",
            "-include",
            "cfg.h",
            "-MD",
            "-MF",
            "a.d",
            "-MT",
            "t",
            "-Wall",
            "-fPIC",
            "-std=c11",
            "-c",
            "a.c",
            "-o",
            "a.o",
            "--param",
            "max-inline-insns-single=10",
        ])
        .unwrap();
        let args = remote_args(&inv.key_args, &inv.source).unwrap();
        assert_eq!(
            args,
            [
                "-O2",
                "-Wall",
                "-fPIC",
                "-std=c11",
                "--param",
                "max-inline-insns-single=10"
            ]
        );
        let w = worker_args("cpp-output", &args, Path::new("job.i"), Path::new("job.o")).unwrap();
        assert_eq!(w.first().unwrap(), "-x");
        assert_eq!(&w[w.len() - 4..], ["-c", "job.i", "-o", "job.o"]);
    }

    #[test]
    fn debug_and_profiles_stay_home() {
        for v in [
            &["-g", "-c", "a.c"][..],
            &["--coverage", "-c", "a.c"],
            &["-fprofile-generate", "-c", "a.c"],
        ] {
            let inv = parse(v).unwrap();
            assert!(plan(&inv).remote_block.is_some(), "{v:?}");
        }
        assert!(plan(&parse(&["-O2", "-c", "a.c"]).unwrap())
            .remote_block
            .is_none());
    }

    #[test]
    fn worker_refuses_what_loads_code_or_writes_elsewhere() {
        let io = |a: &[&str]| {
            let v: Vec<String> = a.iter().map(|s| s.to_string()).collect();
            worker_args("cpp-output", &v, Path::new("job.i"), Path::new("job.o"))
        };
        for bad in [
            &["-fplugin=/x.so"][..],
            &["-fplugin-arg-x-y=z"],
            &["-fpass-plugin=/x.so"],
            &["-B/tmp"],
            &["-B", "/tmp"],
            &["-specs=/x"],
            &["-wrapper", "gdb"],
            &["-o", "/etc/x"],
            &["-o/etc/x"],
            &["-save-temps"],
            &["-fdump-tree-all"],
            &["-fstack-usage"],
            &["-mllvm", "-load=/x.so"],
            &["-Xclang", "-load"],
            &["-Wl,-rpath,/x"],
            &["-Wa,-adhln=/tmp/listing"],
            &["-fprofile-generate=/tmp"],
            &["-fsanitize-ignorelist=/etc/x"],
            &["-x", "c"],
            &["-E"],
            &["-S"],
            &["-MD"],
            &["-I/etc"],
            &["-include", "/etc/passwd"],
            &["@/etc/passwd"],
            &["/etc/passwd"],
            &["-g"],
            &["-gsplit-dwarf"],
            &["--param", "/x"],
            &["-O2\n-fplugin=x"],
        ] {
            assert!(io(bad).is_err(), "{bad:?} accepted");
        }
        // Preprocessing turned back on, files read or written, machine-dependent.
        for bad in [
            "-fno-preprocessed",
            "-fdirectives-only",
            "-foptimization-record-file=x",
            "-fsave-optimization-record",
            "-fsave-optimization-record=yaml",
            "-fproc-stat-report",
            "-fproc-stat-report=x",
            "-fbasic-block-sections=list=x",
            "-fbasic-block-sections=list=/etc/x",
            "-ftime-trace",
            "-ftime-trace=x",
            "-ftime-trace-granularity=1",
            "-fcrash-diagnostics-dir=x",
            "-fcrash-diagnostics",
            "-fprofile-use",
            "-fprofile-arcs",
            "-fprofile-sample-use=x",
            "-fbranch-probabilities",
            "-fauto-profile",
            "-fauto-profile=x",
            "-fcoverage-mapping",
            "-fcoverage-compilation-dir=x",
            "-fdebug-compilation-dir=x",
            "-fdebug-compilation-dir",
            "-fsanitize-ignorelist=x",
            "-fsanitize-system-ignorelist=x",
            "-fsanitize-coverage-allowlist=x",
            "-fxray-attr-list=x",
            "-finstrument-functions-exclude-file-list=x",
            "-fmacro-prefix-map=a=b",
            "-fdiagnostics-format=sarif-file",
            "-fdiagnostics-add-output=sarif",
            "-fmem-report",
            "-march=native",
            "-mtune=native",
            "-mcpu=native",
            "-fprofile-remapping-file=x",
            "-fthinlto-index=x",
            "-fpch-preprocess",
            "-fmax-include-depth=5",
        ] {
            assert!(!worker_arg_ok(bad), "{bad} accepted");
            assert!(io(&[bad]).is_err(), "{bad} accepted by worker_args");
        }
        for good in [
            "-O2",
            "-fPIC",
            "-fno-plt",
            "-fstack-protector-strong",
            "-fcf-protection=full",
            "-fbasic-block-sections=all",
            "-ffunction-sections",
            "-fsanitize=address",
            "-mstack-protector-guard=global",
            "-mindirect-branch=thunk",
            "-march=x86-64-v3",
            "-mtune=generic",
            "-Wall",
            "-std=c11",
        ] {
            assert!(worker_arg_ok(good), "{good} refused");
        }
        assert!(worker_args("c", &[], Path::new("j.i"), Path::new("j.o")).is_err());
        assert!(io(&["-O2", "-march=x86-64-v2", "-Wa,--noexecstack", "-fno-plt"]).is_ok());
    }

    /// A text job names its files; the worker takes only plain names it can pass to
    /// the compiler as files, the language from the input's extension, one object.
    #[test]
    fn worker_takes_file_names_from_the_job() {
        let args = |input: &str, outputs: &[&str]| {
            let outputs: Vec<String> = outputs.iter().map(|s| s.to_string()).collect();
            GCC.worker_text_args(input, &["-O2".to_string()], &outputs)
        };
        let w = args("job.ii", &["job.o"]).unwrap();
        assert_eq!(w[..2], ["-x", "c++-cpp-output"]);
        assert_eq!(w[w.len() - 4..], ["-c", "job.ii", "-o", "job.o"]);
        for (lang, ext) in JOB_INPUT_EXT {
            let w = args(&format!("job.{ext}"), &["job.o"]).unwrap();
            assert_eq!(w[1], *lang);
        }
        for (input, outputs) in [
            ("job.c", &["job.o"][..]),
            ("job", &["job.o"]),
            ("-fdump-tree-all.i", &["job.o"]),
            (".i", &["job.o"]),
            ("a/job.i", &["job.o"]),
            ("job.i", &[]),
            ("job.i", &["job.o", "job.d"]),
            ("job.i", &["job.s"]),
            ("job.i", &["-o.o"]),
            ("job.i", &["../x.o"]),
            ("job.i", &["job.i"]),
        ] {
            assert!(args(input, outputs).is_err(), "{input} {outputs:?}");
        }
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

    #[test]
    fn response_file_fan_out_is_bounded() {
        // 5 levels of 40 files, each naming all 40 of the next level: 10^8 arguments
        // if expanded; refused after the file budget instead.
        let dir = tempfile::tempdir().unwrap();
        for level in 0..5 {
            for i in 0..40 {
                let body: String = if level == 4 {
                    "-DX=1 ".repeat(10)
                } else {
                    (0..40)
                        .map(|j| format!("@{}/r{}_{j} ", dir.path().display(), level + 1))
                        .collect()
                };
                std::fs::write(dir.path().join(format!("r{level}_{i}")), body).unwrap();
            }
        }
        let top = format!("@{}/r0_0", dir.path().display());
        let err = expand_response_files(&os(&["-c", &top, "a.c"])).unwrap_err();
        assert_eq!(err.reason, "response_file_limit");
        // Many arguments in one file: the argument budget.
        let big = dir.path().join("big");
        std::fs::write(&big, "-DX ".repeat(RESPONSE_ARGS_MAX + 1)).unwrap();
        let err = expand_response_files(&os(&[&format!("@{}", big.display())])).unwrap_err();
        assert_eq!(err.reason, "response_file_limit");
        // A normal nested pair still expands.
        std::fs::write(dir.path().join("inner"), "-O2 -DA=1").unwrap();
        std::fs::write(
            dir.path().join("outer"),
            format!("-c @{}/inner", dir.path().display()),
        )
        .unwrap();
        let got = expand_response_files(&os(&[&format!("@{}/outer", dir.path().display())]));
        assert_eq!(got.unwrap(), os(&["-c", "-O2", "-DA=1"]));
    }

    #[test]
    fn native_cpu_enters_the_key_and_stays_home() {
        for flag in ["-march=native", "-mtune=native", "-mcpu=native"] {
            let inv = parse(&["-c", flag, "a.c"]).unwrap();
            let extra: Vec<_> = inv
                .key_extra
                .iter()
                .filter(|e| e.starts_with("native-cpu="))
                .collect();
            assert_eq!(extra.len(), 1, "{flag}");
            assert_eq!(
                plan(&inv).remote_block.as_ref().map(|b| b.0),
                Some("native_cpu"),
                "{flag}"
            );
            assert!(GCC.allowed(&inv).is_err());
        }
        let inv = parse(&["-c", "-march=x86-64-v2", "a.c"]).unwrap();
        assert!(inv.key_extra.iter().all(|e| !e.starts_with("native-cpu=")));
        // Another CPU model or feature set is another key; MHz and core ids are not.
        let a = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel\t\t: 85\ncpu MHz\t\t: 2000.1\nflags\t\t: fpu sse avx2\n\nprocessor\t: 1\nflags\t: other\n";
        let b = a
            .replace("2000.1", "3100.7")
            .replace("flags\t: other", "flags\t: x");
        let c = a.replace("avx2", "avx512f");
        let d = a.replace("model\t\t: 85", "model\t\t: 86");
        assert_eq!(cpuinfo_digest(a.as_bytes()), cpuinfo_digest(b.as_bytes()));
        assert_ne!(cpuinfo_digest(a.as_bytes()), cpuinfo_digest(c.as_bytes()));
        assert_ne!(cpuinfo_digest(a.as_bytes()), cpuinfo_digest(d.as_bytes()));
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
}
