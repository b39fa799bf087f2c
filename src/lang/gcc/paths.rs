//! Same-path jobs for gcc and clang: the compile runs on a worker as it would here,
//! the source and every header it can reach laid out at their paths, so `-g`,
//! coverage, split DWARF and the compiler's messages come out as at home. The inputs
//! are found without running the preprocessor: every include any file can reach is
//! followed, dead `#if` branches included (a superset of what the compile reads); an
//! include computed by a macro keeps the compile off this path.

use super::env::{HOME_ENV, KEY_ENV};
use super::flags::{is_native_cpu_flag, ASM_OK};
use super::lookups::{reachable_inputs, search_list};
use super::{plan, Gcc};
use crate::lang::{Family, Invocation, Passthrough, PathJobSpec, PathJobs};
use std::ffi::{OsStr, OsString};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Flags that keep a compile off a worker even at the same paths: they load code,
/// run other programs, write files no output names, or read files the include walk
/// cannot find (a missing one would change the output without failing the compile).
const PATH_DENY_PREFIX: &[&str] = &[
    "@",
    "-fplugin",
    "-fpass-plugin",
    "-Xclang",
    "-mllvm",
    "-B",
    "-wrapper",
    "-specs",
    "--specs",
    "-save-temps",
    "--save-temps",
    "-fdump",
    "-fopt-info",
    "-fsave-optimization-record",
    "-fstack-usage",
    "-fcallgraph-info",
    "-fcrash-diagnostics",
    "-fdiagnostics-format",
    "-fmodule",
    "-fbuild-session",
    "-fprebuilt-module",
    "-ftime-trace",
    "-ftime-report",
    "-fproc-stat-report",
    "-fprofile-use",
    "-fprofile-sample-use",
    "-fprofile-instr-use",
    "-fprofile-remapping-file",
    "-fauto-profile",
    "-fcs-profile",
    "-fuse-ld",
    "-print",
    "--print",
    "-dump",
    "-Wl,",
    "-Xlinker",
    "-Xassembler",
    "-Xpreprocessor",
    "-Wp,",
    "--param=ggc",
    // The toolchain is probed without the compile's arguments: a flag that picks
    // another target, multilib or GCC installation would need files it did not pack.
    "--target",
    "-target",
    "-m32",
    "-mx32",
    "-m16",
    "--gcc-toolchain",
    "--sysroot",
    "-isysroot",
    "-b",
    "-V",
    // clang reads its default sanitizer ignore lists from its resource directory,
    // and skips a missing one silently.
    "-fsanitize",
];

/// Environment variables a worker never takes from a job (the loader's).
const NOT_SENT_ENV: &[&str] = &["LD_LIBRARY_PATH", "LD_PRELOAD"];

/// The first argument that keeps a compile off a worker, if any.
fn denied_arg(args: &[String]) -> Option<&str> {
    args.iter().map(String::as_str).find(|a| {
        // What `native` means differs from machine to machine.
        if is_native_cpu_flag(a) {
            return true;
        }
        if let Some(rest) = a.strip_prefix("-Wa,") {
            return !rest
                .split(',')
                .all(|opt| ASM_OK.iter().any(|ok| opt.starts_with(ok)));
        }
        PATH_DENY_PREFIX.iter().any(|p| a.starts_with(p)) || a.len() > 4096
    })
}

/// `p` made absolute against `cwd` (no cleaning: `..` keeps its meaning).
fn absolute(cwd: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        cwd.join(p)
    }
}

fn utf8_args(
    args: impl IntoIterator<Item = impl AsRef<OsStr>>,
) -> Result<Vec<String>, Passthrough> {
    args.into_iter()
        .map(|a| {
            a.as_ref()
                .to_str()
                .map(str::to_string)
                .ok_or_else(|| Passthrough::new("flag", a.as_ref().to_string_lossy()))
        })
        .collect()
}

/// The file `prog` (`-print-prog-name`) is for this driver: as the driver names it,
/// else as PATH finds it; `None` when neither has it.
fn program_file(compiler: &Path, arg0: &OsStr, prog: &str) -> std::io::Result<Option<PathBuf>> {
    let out = Command::new(compiler)
        .arg0(arg0)
        .arg(format!("-print-prog-name={prog}"))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()?;
    let name = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if name.is_empty() {
        return Ok(None);
    }
    let p = PathBuf::from(&name);
    if p.is_absolute() {
        return Ok(p.is_file().then_some(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    Ok(std::env::split_paths(&path)
        .filter(|d| d.is_absolute())
        .map(|d| d.join(&name))
        .find(|c| c.is_file()))
}

impl PathJobs for Gcc {
    fn path_allowed(&self, inv: &Invocation) -> Result<(), Passthrough> {
        let p = plan(inv);
        if p.lang.preprocessed() {
            return Err(Passthrough::new("language", p.lang.x_name()));
        }
        if let Some((reason @ "native_cpu", detail)) = &p.remote_block {
            return Err(Passthrough::new(reason, detail.clone()));
        }
        if let Some(var) = HOME_ENV.iter().find(|v| std::env::var_os(v).is_some()) {
            return Err(Passthrough::new("environment", *var));
        }
        let args = utf8_args(&inv.args)?;
        if let Some(a) = denied_arg(&args) {
            return Err(Passthrough::new("flag", a));
        }
        // The worker sets PWD to the working directory: a logical one here (a link
        // on the way) would put another name in the debug information.
        if let (Some(pwd), Ok(cwd)) = (std::env::var_os("PWD"), std::env::current_dir()) {
            if Path::new(&pwd) != cwd && same_file(Path::new(&pwd), &cwd) {
                return Err(Passthrough::new("logical_pwd", pwd.to_string_lossy()));
            }
        }
        Ok(())
    }

    fn path_job(&self, inv: &Invocation, scratch: &Path) -> Result<PathJobSpec, Passthrough> {
        self.path_allowed(inv)?;
        let p = plan(inv);
        let cwd = std::env::current_dir().map_err(|e| Passthrough::new("cwd", e.to_string()))?;
        let sl = search_list(inv, scratch).map_err(|nr| Passthrough::new(nr.reason, nr.detail))?;
        // A directory the compiler dropped when the search list was memoized may be
        // there now (a generated-headers directory made mid-build): the list is stale,
        // and the set of inputs would not be closed under shadowing.
        if let Some(d) = sl.missing.iter().find(|d| d.exists()) {
            return Err(Passthrough::new(
                "search_list_changed",
                d.display().to_string(),
            ));
        }
        let facts = reachable_inputs(&inv.source, &p.forced_includes, &sl)
            .map_err(|nr| Passthrough::new(nr.reason, nr.detail))?;
        let mut inputs: Vec<PathBuf> = std::iter::once(&inv.source)
            .chain(&facts.files)
            .chain(&inv.extra_inputs)
            .map(|f| absolute(&cwd, f))
            .collect();
        inputs.sort();
        inputs.dedup();
        let dirs = sl
            .quote
            .iter()
            .chain(&sl.angle)
            .map(|d| absolute(&cwd, d))
            .filter(|d| d.is_dir())
            .collect();
        let mut args: Vec<OsString> = inv.args.clone();
        if let Some(f) = &p.observe_depfile {
            if crate::fsutil::create_private_file(f).is_err() {
                return Err(Passthrough::new(
                    "observation_file",
                    f.display().to_string(),
                ));
            }
            args.extend(inv.observe_args.iter().cloned());
        }
        let mut outputs: Vec<PathBuf> = inv
            .outputs
            .iter()
            .map(|o| absolute(&cwd, &o.path))
            .collect();
        if let Some(f) = &p.observe_depfile {
            outputs.push(absolute(&cwd, f));
        }
        let mut env = Vec::new();
        for var in KEY_ENV.iter().chain(&["PATH"]) {
            if NOT_SENT_ENV.contains(var) {
                continue;
            }
            if let Some(v) = std::env::var_os(var) {
                let v = v
                    .into_string()
                    .map_err(|v| Passthrough::new("environment", v.to_string_lossy()))?;
                env.push((var.to_string(), v));
            }
        }
        Ok(PathJobSpec {
            args: utf8_args(&args)?,
            env,
            inputs,
            dirs,
            outputs,
        })
    }

    fn toolchain_files(&self, compiler: &Path, arg0: &OsStr) -> std::io::Result<Vec<PathBuf>> {
        toolchain_files(compiler, arg0)
    }

    fn worker_path_check(
        &self,
        driver: &Path,
        arg0: &str,
        args: &[String],
        cwd: &Path,
        outputs: &[String],
        env: &[(String, String)],
    ) -> Result<(), Passthrough> {
        if args.len() > 4096 {
            return Err(Passthrough::new(
                "too_many_arguments",
                args.len().to_string(),
            ));
        }
        if let Some(a) = denied_arg(args) {
            return Err(Passthrough::new("flag", a));
        }
        for (k, v) in env {
            let known = KEY_ENV.contains(&k.as_str()) || k == "PATH";
            if !known
                || NOT_SENT_ENV.contains(&k.as_str())
                || HOME_ENV.contains(&k.as_str())
                || v.contains('\0')
            {
                return Err(Passthrough::new("environment", k));
            }
        }
        let name = Path::new(arg0)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("");
        if !self.recognizes(name) {
            return Err(Passthrough::new("compiler", arg0));
        }
        let argv: Vec<OsString> = args.iter().map(OsString::from).collect();
        let inv = self.parse_args(driver, &OsString::from(arg0), &argv, false)?;
        let p = plan(&inv);
        if p.lang.preprocessed() {
            return Err(Passthrough::new("language", p.lang.x_name()));
        }
        let allowed: Vec<PathBuf> = inv
            .outputs
            .iter()
            .map(|o| absolute(cwd, &o.path))
            .chain(p.deps.file.iter().map(|f| absolute(cwd, f)))
            .collect();
        for o in outputs {
            if !allowed.iter().any(|a| a.as_os_str() == OsStr::new(o)) {
                return Err(Passthrough::new("output", o));
            }
        }
        Ok(())
    }
}

/// The programs gcc or clang starts for a compile and the files it probes to decide
/// how (see [`PathJobs::toolchain_files`]).
pub(super) fn toolchain_files(compiler: &Path, arg0: &OsStr) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    // objcopy splits the DWARF of `-gsplit-dwarf` out of the object.
    for prog in ["cc1", "cc1plus", "as", "objcopy"] {
        if let Some(f) = program_file(compiler, arg0, prog)? {
            files.push(f);
        }
    }
    // clang picks the GCC installation whose C++ headers and start files it uses
    // by finding `crtbegin.o` there; without it the search list would differ.
    let out = Command::new(compiler)
        .arg0(arg0)
        .arg("-v")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()?;
    for line in String::from_utf8_lossy(&out.stderr).lines() {
        // Files that change how the driver runs the compile: clang's configuration
        // files, gcc's specs.
        for prefix in ["Configuration file: ", "Reading specs from "] {
            if let Some(f) = line.strip_prefix(prefix) {
                let f = Path::new(f.trim());
                if f.is_file() {
                    files.push(f.to_path_buf());
                }
            }
        }
        if let Some(dir) = line.strip_prefix("Selected GCC installation: ") {
            let crt = Path::new(dir.trim()).join("crtbegin.o");
            if crt.is_file() {
                files.push(crt);
            }
        }
    }
    Ok(files)
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_that_load_code_or_write_files_keep_a_compile_home() {
        for a in [
            "@args.rsp",
            "-fplugin=x.so",
            "-B/tmp/evil",
            "-Xclang",
            "-save-temps",
            "-fdump-tree-all",
            "-fprofile-use=x",
            "-Wa,-adhln=listing.txt",
            "-Wl,-z,now",
            "-ftime-trace",
        ] {
            assert!(denied_arg(&[a.to_string()]).is_some(), "{a}");
        }
        for a in [
            "-g",
            "-gsplit-dwarf",
            "--coverage",
            "-O2",
            "-fprofile-arcs",
            "-Wa,--noexecstack",
        ] {
            assert!(denied_arg(&[a.to_string()]).is_none(), "{a}");
        }
    }
}
