//! gcc and clang: the only code in farm that knows their command lines.
//!
//! Cacheable: exactly one C, C++, Objective-C/C++, `.i`/`.ii` or assembler-with-cpp
//! source compiled with `-c`, and only flags this module knows. Anything else runs the
//! real compiler untouched (a [`Passthrough`] with a reason).
//!
//! By concern:
//! - `names`: which drivers are gcc's, and a source's language (`-x`, extension);
//! - `rsp`: response files (`@file`);
//! - `flags`: flag tables (key material, refused, input files, assembler options);
//! - `args`: the parse of one command line into an [`Invocation`];
//! - `depfile`: dependency files (the user's, farm's observation);
//! - `scan`: include, time-macro and code-directive scanning of source text;
//! - `lookups`: the include search list and every lookup a compile made;
//! - `remote`: what a farm worker may run, and the text a job ships;
//! - `env`: environment in the key or keeping a compile home, `native` CPU identity.

mod args;
mod depfile;
mod env;
mod flags;
mod lookups;
mod names;
mod paths;
mod remote;
mod rsp;
mod scan;

pub use depfile::parse_depfile;
pub use lookups::{parse_search_list, SearchList};
pub use names::is_gcc_like;
pub use remote::{worker_arg_ok, worker_args};
pub use rsp::expand_response_files;
pub use scan::{check_code_directives, code_directive};

use rustc_hash::FxHashSet as HashSet;
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{
    CompileRun, DepSource, DependencyFacts, Family, Invocation, Keying, NotRecordable, Observed,
    Passthrough, TextJob, TextJobs,
};
use crate::fsutil;
use depfile::read_deps;
use env::{KEY_ENV, UNSAFE_ENV};
use lookups::{preprocessed_text, record_lookups, scan_deps, search_list};

pub struct Gcc;
pub static GCC: Gcc = Gcc;

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
    /// The name `-x` takes.
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

/// The gcc plan of an invocation this family parsed.
fn plan(inv: &Invocation) -> &GccPlan {
    inv.plan.get().expect("gcc invocation without a gcc plan")
}

impl Family for Gcc {
    fn name(&self) -> &'static str {
        "gcc"
    }

    fn recognizes(&self, compiler_name: &str) -> bool {
        is_gcc_like(compiler_name)
    }

    fn identity_probe(&self, _canonical: &Path) -> super::IdentityProbe {
        super::IdentityProbe {
            files: Vec::new(),
            version_args: vec!["-v"],
            programs: Some(paths::toolchain_files),
        }
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

    fn path_jobs(&self) -> Option<&dyn super::PathJobs> {
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
        watch: &[Vec<u8>],
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
        let facts = match record_lookups(
            &files,
            &inv.source,
            &p.forced_includes,
            &sl,
            !complete,
            watch,
        ) {
            // -MMD output with a computed include among the system headers: only a
            // dependency scan can list them.
            Err(nr) if !complete && nr.reason == "computed_include" => {
                tracing::info!(file = %nr.detail, "computed #include among headers -MMD leaves out: dependency scan");
                if source == DepSource::CompileOnly {
                    return Err(NotRecordable {
                        reason: "depend_mode_mmd",
                        detail: nr.detail,
                        preprocessor_ok: false,
                        uses_time: false,
                    });
                }
                let files = tidy(scan_deps(inv)?);
                record_lookups(&files, &inv.source, &p.forced_includes, &sl, false, watch)
            }
            other => other,
        };
        facts.map(|f| path_facts(f, &sl, &p.search_args))
    }

    fn text_names_paths(&self, text: &[u8]) -> bool {
        ["__builtin_FILE", "__builtin_source_location"]
            .iter()
            .any(|b| memchr::memmem::find(text, b.as_bytes()).is_some())
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

/// What `base_dir` needs beyond the lookups: which path macros matter and which
/// include directories the compiler may name by their real path.
///
/// A header of the compiler's own include directories (glibc's `assert`, libstdc++)
/// names `__FILE__` only to pass it on as a string, which a compile that expands it
/// leaves in its object, where farm looks for paths anyway: those files are dropped
/// from `path_macros`. Any other file naming one stays (it may compute with the
/// path: `sizeof(__FILE__)`).
fn path_facts(
    mut f: DependencyFacts,
    sl: &SearchList,
    search_args: &[OsString],
) -> DependencyFacts {
    let (user_dirs, user_system_dirs) = user_include_dirs(search_args);
    let builtin: Vec<&Path> = sl
        .angle
        .iter()
        .filter(|d| d.is_absolute() && !user_dirs.contains(&fsutil::clean_path(d)))
        .map(|d| d.as_path())
        .collect();
    f.path_macros
        .retain(|p| !builtin.iter().any(|d| p.starts_with(d)));
    // gcc names headers of system directories by their real path
    // (-fcanonical-system-headers); those of `-I` and `-iquote` as written.
    let system = sl.angle.iter().filter(|d| {
        let clean = fsutil::clean_path(d);
        user_system_dirs.contains(&clean) || !user_dirs.contains(&clean)
    });
    for d in system {
        if let Ok(real) = std::fs::canonicalize(d) {
            if real != fsutil::clean_path(d) {
                f.resolved_dirs.push((d.clone(), real));
            }
        }
    }
    f
}

/// The include directories the command line names (`-I`, `-isystem`, `-idirafter`,
/// `-iquote`, joined or not), cleaned; and those of them that are system
/// directories (`-isystem`, `-idirafter`).
fn user_include_dirs(search_args: &[OsString]) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let mut dirs = Vec::new();
    let mut system = Vec::new();
    let mut it = search_args.iter().filter_map(|a| a.to_str());
    while let Some(a) = it.next() {
        match a {
            "-I" | "-isystem" | "-idirafter" | "-iquote" => {
                if let Some(v) = it.next() {
                    let d = fsutil::clean_path(Path::new(v));
                    if a == "-isystem" || a == "-idirafter" {
                        system.push(d.clone());
                    }
                    dirs.push(d);
                }
            }
            _ => {
                if let Some(v) = a.strip_prefix("-I").filter(|v| !v.is_empty()) {
                    dirs.push(fsutil::clean_path(Path::new(v)));
                }
            }
        }
    }
    (dirs, system)
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
        let (lang, object) = remote::worker_job_files(input, outputs)?;
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
mod test_util {
    use super::GCC;
    use crate::lang::{Family, Invocation, Passthrough};
    use std::ffi::OsString;
    use std::path::Path;

    pub(super) fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    pub(super) fn parse(v: &[&str]) -> Result<Invocation, Passthrough> {
        GCC.parse(
            Path::new("/usr/bin/gcc"),
            &OsString::from("gcc"),
            &os(v),
            false,
        )
    }
}
