//! The parse of one compile's command line into an [`Invocation`]: its source, its
//! outputs, the arguments that enter the key, and whether a worker may compile it.

use super::depfile::tmp_depfile;
use super::env::native_cpu_digest;
use super::flags::{
    is_native_cpu_flag, plain_key_material, refused, shapes_search, tool_option, INPUT_FILE_FLAGS,
    WITH_ARG,
};
use super::names::{depfile_wrap, lang_from_ext, lang_from_x, LangOf};
use super::rsp::expand_response_files;
use super::{Gcc, GccPlan, Lang, UserDeps};
use crate::lang::{DepfileWrap, Invocation, KeyPath, Output, Passthrough, PathFacts, Plan};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

impl Gcc {
    /// Parses one compile's command line into an [`Invocation`], or the reason it
    /// runs uncached. Decisions are made argument by argument, in order, then on the
    /// whole ([`Parsed::finish`]).
    pub(super) fn parse_args(
        &self,
        compiler: &Path,
        arg0: &OsString,
        args: &[OsString],
        stderr_is_tty: bool,
    ) -> Result<Invocation, Passthrough> {
        let expanded = expand_response_files(args)?;
        let mut parsed = Parsed::with_capacity(expanded.len());
        let name = compiler.file_name().and_then(|n| n.to_str()).unwrap_or("");
        parsed.depfile_wrap = depfile_wrap(name);
        let mut i = 0;
        while i < expanded.len() {
            let raw = &expanded[i];
            let Some(a) = raw.to_str() else {
                return Err(Passthrough::new("non_utf8_argument", raw.to_string_lossy()));
            };
            i += 1;
            if !a.starts_with('-') || a == "-" {
                parsed.input(raw, a)?;
                continue;
            }
            if let Some(r) = refused(a) {
                return Err(Passthrough::new(r, a));
            }
            if is_native_cpu_flag(a) {
                parsed.native.get_or_insert_with(|| a.to_string());
            }
            // Separate-argument flags.
            if WITH_ARG.contains(&a) {
                let Some(val) = expanded.get(i) else {
                    return Err(Passthrough::new("missing_argument", a));
                };
                i += 1;
                parsed.flag_with_value(raw, a, val);
                continue;
            }
            parsed.flag(raw, a)?;
        }
        parsed.finish(compiler, arg0, args, stderr_is_tty)
    }
}

/// What the walk over a command line has gathered so far.
#[derive(Default)]
struct Parsed {
    has_c: bool,
    output: Option<PathBuf>,
    deps: UserDeps,
    /// The last `-x`, until `-x none`.
    forced_lang: Option<LangOf>,
    source: Option<(PathBuf, Lang)>,
    /// An object or library among the inputs (a link, unless `-c`).
    other_input: Option<String>,
    /// Files named by flags, hashed by content.
    extra_inputs: Vec<PathBuf>,
    key_args: Vec<OsString>,
    pp_args: Vec<OsString>,
    search_args: Vec<OsString>,
    forced_includes: Vec<String>,
    dep_args: Vec<OsString>,
    debug: bool,
    split_dwarf: bool,
    coverage: bool,
    profile_paths: bool,
    color_explicit: bool,
    prefix_maps: Vec<(String, String)>,
    /// `-fmacro-prefix-map` and `-ffile-prefix-map` old sides.
    macro_maps: Vec<PathBuf>,
    /// The paths among `key_args`.
    key_paths: Vec<KeyPath>,
    /// How this driver wraps dependency files.
    depfile_wrap: DepfileWrap,
    /// `-flto`: the object carries the compiler's intermediate form, which records
    /// source locations and the cwd.
    lto: bool,
    arch_count: u32,
    /// The first `-m…=native` flag.
    native: Option<String>,
    outputs: Vec<Output>,
    key_extra: Vec<String>,
}

impl Parsed {
    fn with_capacity(args: usize) -> Parsed {
        Parsed {
            key_args: Vec::with_capacity(args),
            pp_args: Vec::with_capacity(args + 1),
            ..Parsed::default()
        }
    }

    /// An input file: the source, or an object or library.
    fn input(&mut self, raw: &OsString, a: &str) -> Result<(), Passthrough> {
        if a == "-" {
            return Err(Passthrough::new("stdin", "-"));
        }
        let lang = match self.forced_lang {
            Some(l) => l,
            None => match lang_from_ext(a) {
                Some(l) => l,
                None => {
                    // An object or library: a link unless -c, decided below.
                    self.other_input.get_or_insert_with(|| a.to_string());
                    return Ok(());
                }
            },
        };
        match lang {
            LangOf::Reject(r) => return Err(Passthrough::new(r, a)),
            LangOf::Source(l) => {
                if self.source.is_some() {
                    return Err(Passthrough::new("multiple_sources", a));
                }
                self.source = Some((PathBuf::from(a), l));
            }
        }
        self.key_path(0, None);
        self.key_args.push(raw.clone());
        self.pp_args.push(raw.clone());
        Ok(())
    }

    /// The next argument pushed to `key_args` is a path from byte `start` on (up to
    /// the first `until`).
    fn key_path(&mut self, start: usize, until: Option<u8>) {
        let mut k = KeyPath::at(self.key_args.len(), start);
        k.until = until;
        self.key_paths.push(k);
    }

    /// A flag of [`WITH_ARG`] and its separate value.
    fn flag_with_value(&mut self, raw: &OsString, a: &str, val: &OsString) {
        let v = val.to_string_lossy();
        match a {
            "-o" => {
                self.output = Some(PathBuf::from(val));
                return;
            }
            "-MF" => {
                self.deps.file = Some(PathBuf::from(val));
                return;
            }
            "-x" => {
                self.forced_lang = forced_lang(&v);
                push_pair(&mut self.key_args, raw, val);
                push_pair(&mut self.pp_args, raw, val);
                return;
            }
            "-MT" | "-MQ" => {
                self.deps.explicit_target = true;
                self.key_paths.push(KeyPath::at(self.key_args.len() + 1, 0));
                push_pair(&mut self.key_args, raw, val);
                push_pair(&mut self.dep_args, raw, val);
                return;
            }
            "-specs" | "--specs" => self.extra_inputs.push(PathBuf::from(val)),
            "-arch" => self.arch_count += 1,
            "-include" | "-imacros" => self.forced_includes.push(v.to_string()),
            _ => {}
        }
        if PATH_VALUED.contains(&a) {
            self.key_paths.push(KeyPath::at(self.key_args.len() + 1, 0));
        }
        push_pair(&mut self.key_args, raw, val);
        push_pair(&mut self.pp_args, raw, val);
        if !matches!(
            a,
            "-D" | "-U" | "-Xlinker" | "-l" | "-L" | "-include" | "-imacros"
        ) {
            push_pair(&mut self.search_args, raw, val);
        }
    }

    /// A flag without a separate value.
    fn flag(&mut self, raw: &OsString, a: &str) -> Result<(), Passthrough> {
        if self.output_or_dependency_flag(raw, a) {
            return Ok(());
        }
        match a {
            "-c" => self.has_c = true,
            "--coverage" => self.coverage = true,
            _ => {}
        }
        self.option(a)?;
        if let Some((start, until)) = joined_path_start(a) {
            self.key_path(start, until);
        }
        self.key_args.push(raw.clone());
        if a == "-c" {
            return Ok(());
        }
        self.pp_args.push(raw.clone());
        if shapes_search(a) {
            self.search_args.push(raw.clone());
        }
        Ok(())
    }

    /// Joined forms of output and dependency flags, and `-MD`/`-MMD`/`-MP`: true when
    /// `a` is one.
    fn output_or_dependency_flag(&mut self, raw: &OsString, a: &str) -> bool {
        if let Some(v) = a.strip_prefix("-o") {
            self.output = Some(PathBuf::from(v));
        } else if let Some(v) = a.strip_prefix("-MF") {
            self.deps.file = Some(PathBuf::from(v));
        } else if a.starts_with("-MT") || a.starts_with("-MQ") {
            self.deps.explicit_target = true;
            self.key_path(3, None);
            self.key_args.push(raw.clone());
            self.dep_args.push(raw.clone());
        } else if a == "-MD" || a == "-MMD" {
            self.deps.md = Some(a == "-MD");
            self.key_args.push(raw.clone());
        } else if a == "-MP" {
            self.key_args.push(raw.clone());
            self.dep_args.push(raw.clone());
        } else {
            return false;
        }
        true
    }

    /// Any other option: notes what it changes, or refuses it as unknown.
    fn option(&mut self, a: &str) -> Result<(), Passthrough> {
        if let Some(v) = a.strip_prefix("-x") {
            self.forced_lang = forced_lang(v);
        } else if let Some(checked) = tool_option(a) {
            checked?;
        } else if let Some(f) = INPUT_FILE_FLAGS.iter().find(|f| a.starts_with(**f)) {
            let p = PathBuf::from(&a[f.len()..]);
            if p.is_dir() {
                return Err(Passthrough::new("profile_directory", a));
            }
            self.extra_inputs.push(p);
        } else if self.output_shaping_option(a) || plain_key_material(a) {
            // noted, or plain key material
        } else {
            return Err(Passthrough::new("unknown_option", a));
        }
        Ok(())
    }

    /// Options that shape outputs beyond the object's code: debug info, coverage and
    /// profile paths, diagnostics colour. False for any other.
    fn output_shaping_option(&mut self, a: &str) -> bool {
        if a == "-gsplit-dwarf" {
            self.split_dwarf = true;
            self.debug = true;
        } else if a.starts_with("-fdiagnostics-color")
            || a.starts_with("-fno-diagnostics-color")
            || a == "-fcolor-diagnostics"
            || a == "-fno-color-diagnostics"
        {
            self.color_explicit = true;
        } else if let Some(m) = a
            .strip_prefix("-fdebug-prefix-map=")
            .or_else(|| a.strip_prefix("-ffile-prefix-map="))
        {
            if let Some((old, new)) = m.split_once('=') {
                self.prefix_maps.push((old.to_string(), new.to_string()));
                if a.starts_with("-ffile") {
                    self.macro_maps.push(PathBuf::from(old));
                }
            }
        } else if let Some(m) = a.strip_prefix("-fmacro-prefix-map=") {
            if let Some((old, _)) = m.split_once('=') {
                self.macro_maps.push(PathBuf::from(old));
            }
        } else if a.starts_with("-flto") {
            // Key material as it is; noted, because the object then carries the
            // compiler's intermediate form, which records locations and the cwd.
            self.lto = a != "-flto=none";
            return false;
        } else if a == "-fno-lto" {
            self.lto = false;
            return false;
        } else if a == "-ftest-coverage" || a == "-fprofile-arcs" {
            self.coverage |= a == "-ftest-coverage";
            self.profile_paths = true;
        } else if a.starts_with("-fprofile-generate")
            || a.starts_with("-fprofile-instr-generate")
            || a.starts_with("-fcs-profile-generate")
        {
            self.profile_paths = true;
        } else if a.starts_with("-g") {
            if !matches!(
                a,
                "-g0" | "-gno-record-gcc-switches" | "-gcolumn-info" | "-gno-column-info"
            ) {
                self.debug = true;
            }
        } else {
            return false;
        }
        true
    }

    /// After the last argument: the checks that need the whole command line, the
    /// outputs, and the invocation.
    fn finish(
        mut self,
        compiler: &Path,
        arg0: &OsString,
        args: &[OsString],
        stderr_is_tty: bool,
    ) -> Result<Invocation, Passthrough> {
        let (src, lang) = self.compiled_source()?;
        let object = self.output.clone().unwrap_or_else(|| default_object(&src));
        if object.as_os_str() == "-" {
            return Err(Passthrough::new("output_to_stdout", "-o -"));
        }
        self.outputs.push(Output {
            role: "object",
            path: object.clone(),
            lists_paths: None,
        });
        let (observe_args, observe_depfile) = self.dependency_output(&src, &object, lang);
        let cwd_in_key = self.side_outputs(&object);
        // What `native` means is this machine's CPU: it enters the key, and no other
        // machine compiles it.
        if let Some(flag) = &self.native {
            let Some(cpu) = native_cpu_digest() else {
                return Err(Passthrough::new("native_cpu_unknown", flag.clone()));
            };
            self.key_extra.push(format!("native-cpu={cpu}"));
        }
        let remote_block = self.remote_block(lang);
        let mut args_out = args.to_vec();
        if stderr_is_tty && !self.color_explicit {
            // The compiler sees a pipe; ask for the colours it would give a terminal.
            args_out.push(OsString::from("-fdiagnostics-color=always"));
            self.key_extra.push("stderr-color".into());
        }
        self.key_extra.sort();
        self.key_extra.dedup();
        let paths = self.path_facts();
        self.pp_args.push(OsString::from("-E"));
        self.search_args.retain(|a| a != "-c");
        Ok(Invocation {
            compiler: compiler.to_path_buf(),
            arg0: arg0.clone(),
            args: args_out,
            key_args: self.key_args,
            key_extra: self.key_extra,
            source: src,
            extra_inputs: self.extra_inputs,
            outputs: self.outputs,
            cwd_in_key,
            observe_args,
            paths,
            plan: Plan::new(GccPlan {
                lang,
                deps: self.deps,
                observe_depfile,
                pp_args: self.pp_args,
                search_args: self.search_args,
                forced_includes: self.forced_includes,
                output_given: self.output.is_some(),
                dep_args: self.dep_args,
                remote_block,
            }),
        })
    }

    /// The one source this command compiles, or why it is no cacheable compile.
    fn compiled_source(&mut self) -> Result<(PathBuf, Lang), Passthrough> {
        if !self.has_c {
            return Err(Passthrough::new("link", ""));
        }
        if let Some(a) = self.other_input.take() {
            return Err(Passthrough::new("non_source_input", a));
        }
        let Some((src, lang)) = self.source.take() else {
            return Err(Passthrough::new("no_source", ""));
        };
        if self.arch_count > 1 {
            return Err(Passthrough::new("multiple_arch", ""));
        }
        // A pipe (`<(…)`, a FIFO) or a device can be read once: by the compiler. A
        // missing source is the compiler's to report (`source_unreadable` later).
        // The same for files named by flags, which the key hashes.
        for p in std::iter::once(&src).chain(&self.extra_inputs) {
            if let Ok(m) = std::fs::metadata(p) {
                if !m.is_file() {
                    return Err(Passthrough::new(
                        "source_not_regular",
                        p.display().to_string(),
                    ));
                }
            }
        }
        Ok((src, lang))
    }

    /// The user's dependency file as an output, or farm's own observation of what the
    /// compile reads: `(observe_args, observe_depfile)`.
    fn dependency_output(
        &mut self,
        src: &Path,
        object: &Path,
        lang: Lang,
    ) -> (Vec<OsString>, Option<PathBuf>) {
        if self.deps.md.is_some() {
            let file = self
                .deps
                .file
                .clone()
                .unwrap_or_else(|| match &self.output {
                    Some(o) => with_ext(o, "d"),
                    None => with_ext(&default_object(src), "d"),
                });
            self.deps.file = Some(file.clone());
            self.outputs.push(Output {
                role: "depfile",
                path: file,
                lists_paths: Some(self.depfile_wrap),
            });
            if !self.deps.explicit_target {
                // The rule's target derives from the object path: it is output content.
                self.key_extra
                    .push(format!("dep-target={}", object.display()));
            }
            (Vec::new(), None)
        } else if !lang.preprocessed() {
            let f = tmp_depfile();
            let observe_args = vec![
                OsString::from("-MD"),
                OsString::from("-MF"),
                f.clone().into_os_string(),
            ];
            (observe_args, Some(f))
        } else {
            (Vec::new(), None)
        }
    }

    /// Split DWARF and coverage outputs beside the object, and the cwd when the
    /// outputs record it (returned, for the key).
    fn side_outputs(&mut self, object: &Path) -> Option<PathBuf> {
        if self.split_dwarf {
            self.outputs.push(Output {
                role: "dwo",
                path: with_ext(object, "dwo"),
                lists_paths: None,
            });
            self.key_extra
                .push(format!("object-path={}", object.display()));
        }
        if self.coverage {
            self.outputs.push(Output {
                role: "gcno",
                path: with_ext(object, "gcno"),
                lists_paths: None,
            });
        }
        if self.coverage || self.profile_paths {
            // The .gcno records the cwd; the object embeds the .gcda path.
            self.key_extra
                .push(format!("object-path={}", object.display()));
            std::env::current_dir().ok()
        } else if self.lto {
            // LTO data records source locations, relative names with the cwd.
            std::env::current_dir().ok()
        } else if self.debug {
            std::env::current_dir()
                .ok()
                .map(|d| apply_prefix_maps(&d, &self.prefix_maps))
        } else {
            None
        }
    }

    /// Where the key holds paths, and where paths reach the outputs: debug info and
    /// coverage notes record the compiled files' paths (those a prefix map rewrites
    /// aside); `__FILE__` expands to one unless a macro prefix map rewrites it.
    fn path_facts(&mut self) -> PathFacts {
        let key_extra = self
            .key_extra
            .iter()
            .enumerate()
            .filter(|(_, e)| e.starts_with("dep-target=") || e.starts_with("object-path="))
            .map(|(i, _)| i)
            .collect();
        let recorded = if self.coverage || self.profile_paths || self.lto {
            Some(Vec::new())
        } else if self.debug {
            Some(
                self.prefix_maps
                    .iter()
                    .map(|(old, _)| PathBuf::from(old))
                    .collect(),
            )
        } else {
            None
        };
        PathFacts {
            key_args: std::mem::take(&mut self.key_paths),
            key_extra,
            recorded,
            macro_maps: std::mem::take(&mut self.macro_maps),
        }
    }

    /// Why this compile must run at home, if it must. Preprocessed-source
    /// distribution changes debug info (column numbers and file digests differ from a
    /// compile of the source itself, checked with cmp), and coverage/profiling record
    /// paths of the machine that compiles.
    fn remote_block(&mut self, lang: Lang) -> Option<(&'static str, String)> {
        if let Some(flag) = self.native.take() {
            Some(("native_cpu", flag))
        } else if self.debug {
            Some(("debug_info", String::new()))
        } else if self.coverage || self.profile_paths {
            Some(("coverage_or_profile", String::new()))
        } else if let Some(p) = self.extra_inputs.first() {
            Some(("input_file_flag", p.display().to_string()))
        } else if !matches!(lang, Lang::C | Lang::Cxx | Lang::ObjC | Lang::ObjCxx) {
            Some(("language", lang.x_name().to_string()))
        } else {
            None
        }
    }
}

/// Flags with a separate value that is a path where the compiler looks for files
/// (their content is in the key through what the compile reads).
const PATH_VALUED: &[&str] = &[
    "-I",
    "-isystem",
    "-idirafter",
    "-iquote",
    "-include",
    "-imacros",
];

/// Where the path starts in a joined flag that names one: `-I/x`, and the old side
/// of a prefix map (`-ffile-prefix-map=/x=.`: the new side is output as written).
fn joined_path_start(a: &str) -> Option<(usize, Option<u8>)> {
    if a.starts_with("-I") && a.len() > 2 {
        return Some((2, None));
    }
    [
        "-fdebug-prefix-map=",
        "-ffile-prefix-map=",
        "-fmacro-prefix-map=",
    ]
    .iter()
    .find(|p| a.starts_with(**p))
    .map(|p| (p.len(), Some(b'=')))
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

/// The language `-x v` forces on the inputs after it (`none`: back to extensions).
fn forced_lang(v: &str) -> Option<LangOf> {
    if v == "none" {
        None
    } else {
        Some(lang_from_x(v))
    }
}

fn push_pair(args: &mut Vec<OsString>, flag: &OsString, value: &OsString) {
    args.push(flag.clone());
    args.push(value.clone());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lang::gcc::plan;
    use crate::lang::gcc::test_util::{os, parse};
    use crate::lang::gcc::GCC;
    use crate::lang::TextJobs;

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
    }
}
