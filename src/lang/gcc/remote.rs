//! What a farm worker may run: the arguments a compile ships (`remote_args`), the
//! worker's own check of them (`worker_args`), and the preprocessor run that makes a
//! job's text.

use super::env::HOME_ENV;
use super::flags::{refused, ASM_OK, INPUT_FILE_FLAGS, WITH_ARG};
use super::lookups::preprocessed_text;
use super::{plan, Gcc, Lang};
use crate::fsutil;
use crate::lang::{Invocation, Passthrough, TextJob, TextOutput};
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

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
pub(super) const JOB_INPUT_EXT: &[(&str, &str)] = &[
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
pub(super) fn worker_job_files<'a>(
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
    /// The worker's language and arguments, or why no worker may compile this.
    pub(super) fn remote_plan(
        &self,
        inv: &Invocation,
    ) -> Result<(&'static str, Vec<String>), Passthrough> {
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

    pub(super) fn remote_prepare_impl(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lang::gcc::test_util::parse;
    use crate::lang::gcc::GCC;
    use crate::lang::TextJobs;

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
}
