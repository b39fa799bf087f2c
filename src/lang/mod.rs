//! Compiler families. Each module is the only code that knows its compiler's flags;
//! everything else sees an [`Invocation`] or a [`Passthrough`] reason.
//!
//! A family parses argv into an invocation (inputs, outputs, the normalized arguments
//! that enter the key, how to run it) and says how it is keyed ([`Keying`]): by
//! observing a real compile ([`Observed`]: gcc) or from the inputs its command line
//! declares ([`Declared`]: javac, csc). What may run elsewhere is a capability of its
//! own, used by the shim and farmd without naming the family: a job from one shipped
//! text ([`TextJobs`]), a job from a shipped input tree ([`TreeJobs`]), a compiler
//! farmd keeps warm ([`WarmCompiler`]). The key, the cache, the shim and the daemon
//! stay family-agnostic; the registry at the bottom is the only list of families.

pub mod csc;
pub mod gcc;
pub mod javac;

use std::any::Any;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why an invocation is not cached: it runs as the real compiler, untouched, and is
/// counted under this name in `farm stats`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Passthrough {
    /// Stable counter name, e.g. `link`, `unknown_option`.
    pub reason: &'static str,
    /// What triggered it (the flag or file), for the log.
    pub detail: String,
}

impl Passthrough {
    pub fn new(reason: &'static str, detail: impl Into<String>) -> Passthrough {
        Passthrough {
            reason,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Passthrough {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.detail.is_empty() {
            write!(f, "{}", self.reason)
        } else {
            write!(f, "{} ({})", self.reason, self.detail)
        }
    }
}

/// The pass-through reason for source text that makes the compiler read files no key
/// covers (asm `.incbin`, `#embed`, ...). A header found so after the compile is
/// counted under it too.
pub const UNSUPPORTED_CODE_DIRECTIVE: &str = "unsupported_code_directive";

/// One file the compile produces, with a stable role name stored in the cache entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output {
    pub role: &'static str,
    pub path: PathBuf,
    /// `Some` when the file is a make dependency file, wrapped as this compiler
    /// wraps it: with `base_dir` it is stored with relative paths and written back
    /// with this checkout's.
    pub lists_paths: Option<DepfileWrap>,
}

/// Where a compiler breaks the lines of a make dependency file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DepfileWrap {
    Gcc,
    Clang,
    /// The driver's name does not say (`cc`): the file itself must.
    #[default]
    Unknown,
}

/// A path in the key's arguments: `key_args[arg][start..]` up to the first `until`
/// byte (the old side of `old=new`), or each element of it when it is a list joined
/// by `list` (a class path).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyPath {
    pub arg: usize,
    pub start: usize,
    pub until: Option<u8>,
    pub list: Option<u8>,
}

impl KeyPath {
    /// The whole argument from `start` on is one path.
    pub fn at(arg: usize, start: usize) -> KeyPath {
        KeyPath {
            arg,
            start,
            until: None,
            list: None,
        }
    }
}

/// Where paths sit in an invocation's key material, and where they reach its outputs
/// in ways no key text shows: what `base_dir` needs to make keys relative without
/// ever giving one checkout another's output. Only what a family marks here is
/// made relative; every other argument stays as written (a `-D` value may end up in
/// the object as it is).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PathFacts {
    /// The paths among [`Invocation::key_args`].
    pub key_args: Vec<KeyPath>,
    /// Indices of [`Invocation::key_extra`] entries whose text after the first `=`
    /// is a path.
    pub key_extra: Vec<usize>,
    /// `Some` when the outputs record the paths of what was compiled beyond any text
    /// (debug info, coverage notes): the prefixes the compiler rewrites in them
    /// (`-fdebug-prefix-map` old sides). `None`: they record none.
    pub recorded: Option<Vec<PathBuf>>,
    /// The prefixes the compiler rewrites where `__FILE__` and kin expand
    /// (`-fmacro-prefix-map` old sides).
    pub macro_maps: Vec<PathBuf>,
}

/// A compile farm understands well enough to cache.
#[derive(Clone, Debug)]
pub struct Invocation {
    /// The real compiler binary.
    pub compiler: PathBuf,
    /// argv[0] the compiler is started with (what the user typed).
    pub arg0: OsString,
    /// The arguments exactly as given (response files unexpanded): what runs.
    pub args: Vec<OsString>,
    /// Normalized arguments for the key: output paths removed, response files expanded.
    pub key_args: Vec<OsString>,
    /// Key-only facts that are not arguments (e.g. "dep-target=obj/a.o", "tty-color").
    pub key_extra: Vec<String>,
    /// The primary source file as written on the command line.
    pub source: PathBuf,
    /// Files named by flags whose content changes the output (profiles, ignore lists).
    pub extra_inputs: Vec<PathBuf>,
    /// Every output file, the object first.
    pub outputs: Vec<Output>,
    /// The working directory as it reaches the outputs (prefix maps applied), when it does.
    pub cwd_in_key: Option<PathBuf>,
    /// Arguments added to the executed command to observe dependencies, when the user's
    /// own flags do not produce a complete dependency file.
    pub observe_args: Vec<OsString>,
    /// Where paths sit in the key and reach the outputs (for `base_dir`).
    pub paths: PathFacts,
    /// Family-specific plan.
    pub plan: Plan,
}

/// What a family needs to remember between parse and run: its own type, opaque to
/// everything but that family (which gets it back with [`Plan::get`]).
#[derive(Debug)]
pub struct Plan(Box<dyn FamilyPlan>);

/// A family's plan type: anything cloneable, printable and shareable.
trait FamilyPlan: Any + fmt::Debug + Send + Sync {
    fn clone_box(&self) -> Box<dyn FamilyPlan>;
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

impl<T: Any + fmt::Debug + Clone + Send + Sync> FamilyPlan for T {
    fn clone_box(&self) -> Box<dyn FamilyPlan> {
        Box::new(self.clone())
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

impl Clone for Plan {
    fn clone(&self) -> Plan {
        Plan(self.0.clone_box())
    }
}

impl Plan {
    pub fn new<T: Any + fmt::Debug + Clone + Send + Sync>(plan: T) -> Plan {
        Plan(Box::new(plan))
    }

    /// The plan, when it is a `T` (the family that made it knows its type).
    pub fn get<T: Any>(&self) -> Option<&T> {
        self.0.as_any().downcast_ref()
    }

    pub fn get_mut<T: Any>(&mut self) -> Option<&mut T> {
        self.0.as_any_mut().downcast_mut()
    }
}

/// A finished run of the real compiler.
#[derive(Debug)]
pub struct CompileRun {
    pub status: std::process::ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub elapsed: Duration,
    /// Wall-clock start, ns since the epoch: inputs changed after it are "too new".
    pub started_ns: i128,
}

/// What a compile read, for a direct-mode manifest.
#[derive(Clone, Debug, Default)]
pub struct DependencyFacts {
    /// Every file the compile read (besides the primary source), as opened.
    pub files: Vec<PathBuf>,
    /// Where an include lookup found nothing: the topmost missing component of each
    /// such path (nothing exists there now).
    pub missing: Vec<PathBuf>,
    /// Where a lookup found something that is not a regular file (a directory).
    pub not_file: Vec<PathBuf>,
    /// Files a lookup finds that the compile did not read (a dead `#if` branch's
    /// include, a `__has_include` probe): only that each is there matters.
    pub present: Vec<PathBuf>,
    /// Files read (the source among them) that name `__FILE__` or kin: compiled,
    /// these put the path of the file they expand in into the output.
    pub path_macros: Vec<PathBuf>,
    /// Absolute names in include directives: the compiler reads them wherever the
    /// checkout is.
    pub absolute_includes: Vec<PathBuf>,
    /// Files with an include computed by a macro (it may name an absolute path).
    pub computed_includes: Vec<PathBuf>,
    /// Files read whose text holds one of the strings the caller watched for.
    pub files_naming: Vec<PathBuf>,
    /// Include directories whose real path is not their name (a symlink or `..` on
    /// the way): the compiler may name system headers there by their real path.
    pub resolved_dirs: Vec<(PathBuf, PathBuf)>,
}

/// Why a direct-mode manifest cannot be recorded for this compile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotRecordable {
    pub reason: &'static str,
    pub detail: String,
    /// True when the preprocessor mode is still safe for this source (e.g. `__DATE__`).
    pub preprocessor_ok: bool,
    /// True when the source or a header it reads expands `__TIME__` (whatever other
    /// time macros it also uses): its output changes every second, so it is not cached
    /// in the preprocessor mode either.
    pub uses_time: bool,
}

/// How a family answers "what did this compile read".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DepSource {
    /// Trust only the compile's own dependency output; never run anything else.
    CompileOnly,
    /// May run a dependency scan when the compile's own output is incomplete.
    ScanIfNeeded,
}

/// What identifies a compiler installation beyond its driver binary.
#[derive(Clone, Debug, Default)]
pub struct IdentityProbe {
    /// Files hashed by content with the driver (a JDK's `release` and class library).
    pub files: Vec<PathBuf>,
    /// Arguments that make the driver print its version.
    pub version_args: Vec<&'static str>,
    /// The programs the driver starts and the files it probes (the toolchain
    /// package's files besides the driver): their content, and that of the libraries
    /// they load, is part of the identity.
    pub programs: Option<ToolchainFiles>,
}

/// Lists a compiler's toolchain files (driver path, argv[0]).
pub type ToolchainFiles = fn(&Path, &OsStr) -> std::io::Result<Vec<PathBuf>>;

/// One input of a declared-input compile, for the key: a label naming what it is
/// (`source path`, `classpath entry`) and the digest of its content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyInput {
    pub label: String,
    pub digest: [u8; 32],
}

/// An output directory a declared-input compile writes a tree of files into.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputDir {
    /// Stable role name (`classes`, `sources`, `headers`), stored in the cache entry.
    pub role: &'static str,
    pub path: PathBuf,
}

/// Families whose every input is named on the command line (javac, csc): keyed up
/// front from those inputs' content, and writing trees of files, found by compiling
/// into fresh directories. How such a compile may run elsewhere is a separate
/// capability ([`TreeJobs`], [`WarmCompiler`]).
pub trait Declared: Sync {
    /// The output directories of this invocation (possibly none for some roles).
    fn output_dirs(&self, inv: &Invocation) -> Vec<OutputDir>;

    /// Every input that decides the outputs, in a stable order; or why they cannot all
    /// be enumerated safely. `memo` is a directory for digests memoized by stat.
    fn inputs(&self, inv: &Invocation, memo: &Path) -> Result<DeclaredInputs, Passthrough>;

    /// Runs the real compiler with its outputs sent to `dirs` (same order as
    /// [`Declared::output_dirs`]); `scratch` is a private directory for argument files.
    fn compile_into(
        &self,
        inv: &Invocation,
        dirs: &[PathBuf],
        scratch: &Path,
    ) -> std::io::Result<CompileRun>;
}

/// Families keyed by observing the compile (gcc): by its preprocessed text, or by
/// what it read (direct and depend modes).
pub trait Observed: Sync {
    /// The preprocessed text of the source (preprocessor mode), or why this compile
    /// cannot be keyed by it.
    fn preprocess(&self, inv: &Invocation) -> std::io::Result<Result<Vec<u8>, Passthrough>>;

    /// Runs the compile for real, with the observation arguments when `observe`.
    fn compile(&self, inv: &Invocation, observe: bool) -> std::io::Result<CompileRun>;

    /// After a successful observed compile: what it read and which lookups found
    /// nothing. `scratch` is a directory the family may use for memo files; `watch`:
    /// strings to look for in the text of every file read (one that starts with a
    /// newline also matches at the start of a file;
    /// [`DependencyFacts::files_naming`]).
    fn dependencies(
        &self,
        inv: &Invocation,
        source: DepSource,
        scratch: &Path,
        watch: &[Vec<u8>],
    ) -> Result<DependencyFacts, NotRecordable>;

    /// Removes files the observation wrote.
    fn cleanup(&self, inv: &Invocation);

    /// Whether preprocessed text asks the compiler for a file's path (a builtin the
    /// preprocessor leaves for the compiler, which takes the path from the line
    /// markers).
    fn text_names_paths(&self, text: &[u8]) -> bool {
        let _ = text;
        false
    }

    /// Checks source text before it is keyed or compiled: the primary source (direct
    /// and depend modes). `Err`: text that makes the compiler read files no key
    /// covers (asm `.incbin`, `#embed`, ...): never cached, never shipped.
    fn source_check(&self, source: &[u8]) -> Result<(), Passthrough> {
        let _ = source;
        Ok(())
    }
}

/// How a family's compiles are keyed: the shim takes one flow or the other.
#[derive(Clone, Copy)]
pub enum Keying<'a> {
    /// By observing the compile (gcc): direct, depend and preprocessor modes.
    Observed(&'a dyn Observed),
    /// By the inputs the command line declares (javac, csc): the declared flow.
    Declared(&'a dyn Declared),
}

/// A compile prepared for a worker as one text (gcc's preprocessed source): the
/// worker writes `text` to `input` in an empty job directory, runs the compiler with
/// the arguments its family rebuilds from `args`, and sends back the files named in
/// `outputs`.
#[derive(Clone, Debug)]
pub struct TextJob {
    /// The text's file name in the job directory, one plain name chosen by the family
    /// (its extension names the language: `job.i`, `job.ii`).
    pub input: String,
    /// What the worker's family module rebuilds the compiler's arguments from (it
    /// re-validates every one).
    pub args: Vec<String>,
    /// The source the worker compiles.
    pub text: Vec<u8>,
    /// The files the compile writes.
    pub outputs: Vec<TextOutput>,
}

/// One file a text job writes: its plain name in the worker's job directory, and the
/// path it is written to here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TextOutput {
    pub name: String,
    pub path: PathBuf,
}

/// Families whose compiles a worker can run from one shipped text (gcc).
pub trait TextJobs: Sync {
    /// Client: whether a worker may compile this invocation (a cheap check: nothing
    /// runs).
    fn allowed(&self, inv: &Invocation) -> Result<(), Passthrough>;

    /// Client: prepares the job: runs what must run here (gcc's preprocessor, which
    /// also writes the dependency file the compile would write) and returns the job,
    /// or why this compile stays at home.
    fn prepare(&self, inv: &Invocation) -> std::io::Result<Result<TextJob, Passthrough>>;

    /// Worker: checks shipped text before it is compiled. `Err`: text that makes the
    /// compiler read files (asm `.incbin`, `#embed`, ...); such a job is refused.
    fn worker_text_check(&self, text: &[u8]) -> Result<(), Passthrough>;

    /// Worker: validates a job's file names (`input`, `outputs`: plain names in the
    /// job directory, already checked with [`valid_output_role`]) and arguments, and
    /// builds the compiler's arguments. Nothing from the wire reaches the compiler
    /// unless this accepts it.
    fn worker_text_args(
        &self,
        input: &str,
        args: &[String],
        outputs: &[String],
    ) -> Result<Vec<String>, Passthrough>;
}

/// A compile that a worker runs at the same absolute paths as here, inside a sandbox
/// holding only its inputs and the compiler's toolchain (gcc, clang): what the job
/// carries besides the toolchain.
#[derive(Clone, Debug, Default)]
pub struct PathJobSpec {
    /// The arguments exactly as they run here (observation arguments included).
    pub args: Vec<String>,
    /// Environment variables the worker sets (those that change outputs or messages).
    pub env: Vec<(String, String)>,
    /// Every file the compile can read (absolute): the source, each header any
    /// include of it or of a header can reach, files named by flags.
    pub inputs: Vec<PathBuf>,
    /// Directories of the include search list (absolute).
    pub dirs: Vec<PathBuf>,
    /// Every file the compile may write (absolute).
    pub outputs: Vec<PathBuf>,
}

/// Families whose compiles can run elsewhere at the same paths (`PathJob`): outputs,
/// debug information and messages are then the ones a home compile gives.
pub trait PathJobs: Sync {
    /// Client, cheap (nothing runs): whether this compile may run elsewhere.
    fn path_allowed(&self, inv: &Invocation) -> Result<(), Passthrough>;

    /// Client: the job, its inputs found by following every include the source can
    /// reach (dead branches too), or why it stays here. `scratch` holds memos.
    fn path_job(&self, inv: &Invocation, scratch: &Path) -> Result<PathJobSpec, Passthrough>;

    /// The files of the compiler's toolchain besides the driver (`compiler`, started
    /// as `arg0`): the programs it starts and the files it probes to decide how to
    /// run. Their libraries are added by the package builder.
    fn toolchain_files(&self, compiler: &Path, arg0: &OsStr) -> std::io::Result<Vec<PathBuf>>;

    /// Worker: checks a job from the wire by the rules the client applied: its
    /// arguments parse to a compile farm understands, free of flags that load code
    /// or write files beyond `outputs`, each output one the compile writes. `driver`
    /// is the package's driver, `cwd` absolute.
    fn worker_path_check(
        &self,
        driver: &Path,
        arg0: &str,
        args: &[String],
        cwd: &Path,
        outputs: &[String],
        env: &[(String, String)],
    ) -> Result<(), Passthrough>;
}

/// The arguments of a compile that runs elsewhere into directories of its own.
#[derive(Clone, Debug)]
pub struct TreeArgs {
    /// The complete argument list, with this machine's absolute paths and the output
    /// directories replaced by the fresh ones.
    pub args: Vec<String>,
    /// Paths were made absolute: diagnostics would name them differently, so a remote
    /// or warm run that prints anything is not used.
    pub paths_rewritten: bool,
}

/// Families whose compiles a worker can run from an input tree (javac, csc): every
/// input travels as a blob by digest and is re-rooted under the job directory; every
/// output directory becomes one under the job's `out/`.
pub trait TreeJobs: Sync {
    /// Client: the compile's arguments for a tree job that writes into `dirs` (same
    /// order as [`Declared::output_dirs`]), or why no worker may run it.
    fn tree_args(&self, inv: &Invocation, dirs: &[PathBuf]) -> Result<TreeArgs, Passthrough>;

    /// Worker: validates arguments from the wire and rebuilds them with every input
    /// path re-rooted under `root` and each output directory (role, path as named)
    /// replaced by `out/<role>`. Nothing from the wire reaches the compiler unless
    /// this accepts it.
    fn worker_tree_args(
        &self,
        args: &[String],
        outputs: &[(String, String)],
        root: &Path,
        out: &Path,
    ) -> Result<Vec<String>, Passthrough>;
}

/// A compile for a warm compiler process of this machine's farmd.
#[derive(Clone, Debug)]
pub struct WarmJob {
    /// The installation the warm process must be (a JDK's home).
    pub installation: PathBuf,
    /// The complete argument list, output directories already replaced.
    pub args: Vec<String>,
    /// See [`TreeArgs::paths_rewritten`].
    pub paths_rewritten: bool,
}

/// A program farmd runs for a warm compiler: to build its server, or to start it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WarmCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
}

/// What one compile in a warm server printed and returned, and the server's memory
/// after it (farmd retires a server whose memory stays high).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WarmReply {
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub memory_used: u64,
    pub memory_max: u64,
}

/// A future of the warm-server exchange (boxed: the trait is used as `dyn`).
pub type WarmFuture<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<T>> + Send + 'a>>;
/// The warm server's stdout, as farmd reads it.
pub type WarmReader<'a> = &'a mut (dyn tokio::io::AsyncRead + Unpin + Send);
/// The warm server's stdin, as farmd writes it.
pub type WarmWriter<'a> = &'a mut (dyn tokio::io::AsyncWrite + Unpin + Send);

/// Families whose compiler farmd keeps loaded in a long-lived server process (javac's
/// JVM). The family supplies the server (its source, how to build and start it with
/// an installation's own tools) and the byte protocol on its stdin/stdout; farmd owns
/// the pools, the sandbox, the limits and recycling. A worker runs this family's tree
/// jobs in a warm server rather than starting the allow-listed compiler.
pub trait WarmCompiler: Sync {
    /// Client: the compile for a warm server of this machine's farmd, or why it must
    /// run as a fresh process.
    fn warm_job(&self, inv: &Invocation, dirs: &[PathBuf]) -> Result<WarmJob, Passthrough>;

    /// The installation a compiler binary (links resolved) belongs to: one warm pool
    /// per installation.
    fn installation_of(&self, canonical: &Path) -> PathBuf;

    /// The server's source files as (file name, text); farmd writes them into an
    /// empty directory and builds them once per installation.
    fn server_sources(&self) -> &'static [(&'static str, &'static str)];

    /// A file the build leaves in its output directory: there, the server is built.
    fn server_built(&self) -> &'static str;

    /// Builds the server from the sources in `src` into `out` with the
    /// installation's own tools.
    fn server_build(&self, installation: &Path, src: &Path, out: &Path) -> WarmCommand;

    /// Starts the server built into `built`. `tmp`: its private temporary directory
    /// when it runs sandboxed.
    fn server_command(&self, installation: &Path, built: &Path, tmp: Option<&Path>) -> WarmCommand;

    /// Reads the greeting a started server sends when it is ready.
    fn ready<'a>(&'a self, from: WarmReader<'a>) -> WarmFuture<'a, ()>;

    /// One compile: sends `args` to the server and reads its reply. Any error leaves
    /// the server in an unknown state (farmd stops it).
    fn exchange<'a>(
        &'a self,
        to: WarmWriter<'a>,
        from: WarmReader<'a>,
        args: &'a [String],
    ) -> WarmFuture<'a, WarmReply>;
}

/// What a declared-input compile reads: the key's inputs, and every file by path as
/// opened and content digest (what a worker needs to run the same compile).
#[derive(Clone, Debug, Default)]
pub struct DeclaredInputs {
    pub key: Vec<KeyInput>,
    pub files: Vec<(PathBuf, [u8; 32])>,
}

/// An output role from the wire (`classes`, `sources`, ...): a name a job directory's
/// `out/` may hold, one plain path component. Anything else (`/etc/farm`, `//x`, `.`,
/// `a/b`) would make `out.join(role)` leave the job directory.
pub fn valid_output_role(role: &str) -> bool {
    let mut parts = Path::new(role).components();
    matches!(
        (parts.next(), parts.next()),
        (Some(std::path::Component::Normal(_)), None)
    ) && !role.contains('/')
        && !role.contains('\0')
}

/// An absolute path from the wire re-rooted under `root`, or `None` when it is not
/// absolute. `..` is resolved lexically first, so the result stays under `root`.
pub fn reroot(root: &Path, wire: &str) -> Option<PathBuf> {
    let p = Path::new(wire);
    if !p.is_absolute() || wire.contains('\0') {
        return None;
    }
    let clean = crate::fsutil::clean_path(p);
    let rel = clean.strip_prefix("/").ok()?;
    let ok = rel
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)));
    ok.then(|| root.join(rel))
}

/// A compiler family: what it is and how it parses, how its compiles are keyed
/// ([`Keying`]), and which kinds of remote work it can describe (capabilities a
/// worker and farmd use without knowing the family).
pub trait Family: Sync {
    fn name(&self) -> &'static str;

    /// Whether a compiler binary of this name (its basename) is this family's.
    fn recognizes(&self, compiler_name: &str) -> bool;

    /// What identifies this compiler beyond the binary at `canonical`.
    fn identity_probe(&self, canonical: &Path) -> IdentityProbe {
        let _ = canonical;
        IdentityProbe {
            files: Vec::new(),
            version_args: vec!["-v"],
            programs: None,
        }
    }

    /// Environment variables that change this family's outputs or diagnostics.
    fn key_env(&self) -> &'static [&'static str];

    /// Environment variables whose presence makes a compile unsafe to cache
    /// (they make the compiler write files farm does not know about).
    fn unsafe_env(&self) -> &'static [&'static str];

    /// Parses argv (without argv[0]) for the compiler at `compiler`.
    fn parse(
        &self,
        compiler: &Path,
        arg0: &OsString,
        args: &[OsString],
        stderr_is_tty: bool,
    ) -> Result<Invocation, Passthrough>;

    /// How this family's compiles are keyed (and so which flow the shim takes).
    fn keying(&self) -> Keying<'_>;

    /// Configuration this family's compilers read outside their installation (under
    /// `/etc`), where present: a worker's job sandbox shows it read-only.
    fn toolchain_config(&self) -> Vec<PathBuf> {
        Vec::new()
    }

    /// `Some` when a worker can compile one shipped text (gcc).
    fn text_jobs(&self) -> Option<&dyn TextJobs> {
        None
    }

    /// `Some` when a worker can compile a shipped input tree (javac, csc).
    fn tree_jobs(&self) -> Option<&dyn TreeJobs> {
        None
    }

    /// Same-path jobs, if this family's compiles can run elsewhere at the same paths.
    fn path_jobs(&self) -> Option<&dyn PathJobs> {
        None
    }

    /// `Some` when farmd keeps this compiler warm (javac).
    fn warm(&self) -> Option<&dyn WarmCompiler> {
        None
    }
}

/// Runs the real compiler of `inv` (argv[0] as the user typed it) with `args`, stdin
/// inherited, and collects what it printed.
pub fn run_compiler(
    inv: &Invocation,
    args: impl IntoIterator<Item = impl AsRef<std::ffi::OsStr>>,
) -> std::io::Result<CompileRun> {
    use std::os::unix::process::CommandExt;
    let started_ns = crate::fsutil::now_ns();
    let t0 = std::time::Instant::now();
    let out = std::process::Command::new(&inv.compiler)
        .arg0(&inv.arg0)
        .args(args)
        .stdin(std::process::Stdio::inherit())
        .output()?;
    Ok(CompileRun {
        status: out.status,
        stdout: out.stdout,
        stderr: out.stderr,
        elapsed: t0.elapsed(),
        started_ns,
    })
}

/// Every family farm knows: the registry, the one list a new family joins (order
/// matters only where two could claim one compiler name: the first wins).
pub fn families() -> [&'static dyn Family; 3] {
    [&gcc::GCC, &javac::JAVAC, &csc::CSC]
}

/// The family a job names, for a worker.
pub fn family_by_name(name: &str) -> Option<&'static dyn Family> {
    families().into_iter().find(|f| f.name() == name)
}

/// The family for a compiler name (basename of the binary), if farm knows it; the
/// first in [`families`] that recognizes it.
pub fn family_for(compiler_name: &str) -> Option<&'static dyn Family> {
    families().into_iter().find(|f| f.recognizes(compiler_name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_roles_are_one_plain_name() {
        for ok in ["classes", "sources", "headers", "out"] {
            assert!(valid_output_role(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "/etc/farm",
            "//etc",
            "a/b",
            "classes/",
            "a\0b",
        ] {
            assert!(!valid_output_role(bad), "{bad:?}");
        }
    }
}
