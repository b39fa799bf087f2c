//! The `farm <command>` command line, declared once (clap derive): parsing, `--help`,
//! usage errors, shell completions (`farm completions SHELL`) and man pages
//! (`farm manpages DIR`) all come from these definitions.
//!
//! Only `farm <command>` reaches this parser: `entry::main` decides by argv[0] and the
//! first argument (`cli::is_command`) before any parsing, so `farm gcc …`, `farm-cc`
//! and masquerade links never pass through here.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Shared by every command's `--help`: farm's lower-case `usage:` line first.
const TEMPLATE: &str = "\
usage: {usage}

{about-with-newline}
{all-args}{after-help}";

const BEFORE_HELP: &str = "\
farm - a drop-in compiler cache and farm for gcc, clang, javac and C#

COMPILING (never parsed as commands: the arguments go to the compiler as they are)
  farm-cc ARGS...            use as CC (the real compiler: FARM_CC, config `cc`, else cc on PATH)
  farm-c++ ARGS...           use as CXX (FARM_CXX, config `cxx`, else c++ on PATH)
  farm-javac ARGS...         use as javac (FARM_JAVAC, config `javac`, $JAVA_HOME/bin/javac, else javac)
  farm-csc ARGS...           use as mcs/csc (FARM_CSC, config `csc`, else mcs or csc on PATH)
  farm COMPILER ARGS...      launcher form: `farm gcc -c x.c`, CMAKE_<LANG>_COMPILER_LAUNCHER=farm
  ln -s $(command -v farm) DIR/gcc
                             masquerade: put DIR first on PATH";

/// The man page's description (`farm --help` shows BEFORE_HELP instead).
pub const LONG_ABOUT: &str = "\
A drop-in compiler cache and farm for gcc, clang, javac and C#.

As a compiler: farm-cc ARGS... (use as CC), farm-c++ ARGS... (CXX), farm-javac ARGS..., \
farm-csc ARGS..., the launcher form farm COMPILER ARGS... (farm gcc -c x.c; \
CMAKE_<LANG>_COMPILER_LAUNCHER=farm), or a symbolic link to farm named like the compiler \
in a directory first on PATH (masquerade). Those arguments are never read as farm's own: \
they go to the compiler as they are, and what farm does not understand runs as the real \
compiler untouched.

As a command: farm COMMAND, one of those below; farm COMMAND --help tells more.";

const AFTER_HELP: &str = "\
ENVIRONMENT
  FARM_DIR        cache directory (default ~/.cache/farm)
  FARM_MAX_SIZE   cache size cap, e.g. 5G (default 5 GiB)
  FARM_MODE       direct (default) | preprocessor | depend
  FARM_CC, FARM_CXX   real compilers behind farm-cc / farm-c++
  FARM_JAVAC      real javac behind farm-javac
  FARM_CSC        real C# compiler behind farm-csc
  FARM_LOG        log file (nothing is ever logged to the compiler's stderr)
  FARM_JOURNAL    build journal: one JSON line per compile appended here (docs/journal.md)
  FARM_DISABLE=1  every entry point runs the real compiler untouched
  FARM_CONFIG     config file (default ~/.config/farm/config.toml)
  FARM_AGENT      farmd's agent socket (default /run/farm/agent.sock; off = local only)
  FARM_REMOTE_STORAGE  remote tiers after the local cache: space-separated URLs with
                  |attributes (redis://, s3://, http(s)://, webdav://, gha; docs/remote-storage.md)

See docs/ for recipes (Make, CMake, Ninja), the configuration reference and how to
read `farm stats`.";

#[derive(Debug, Parser)]
#[command(
    name = "farm",
    bin_name = "farm",
    version,
    about = "A drop-in compiler cache and farm for gcc, clang, javac and C#",
    override_usage = "farm COMMAND [OPTIONS]\n       farm COMPILER ARGS...",
    before_help = BEFORE_HELP,
    after_help = AFTER_HELP,
    help_template = "{before-help}usage: {usage}\n\n{all-args}{after-help}"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
#[command(help_template = TEMPLATE)]
pub enum Command {
    /// Hits by mode, misses, pass-throughs by reason, errors, size
    #[command(help_template = TEMPLATE)]
    Stats {
        /// The counters as JSON
        #[arg(long)]
        json: bool,
        /// Zero the counters (then print them with --json)
        #[arg(short, long)]
        zero: bool,
    },
    /// The local cache: clear it, print its directory, list or try the remote tiers
    #[command(subcommand, help_template = TEMPLATE)]
    Cache(CacheCommand),
    /// Effective configuration and where each value came from
    #[command(help_template = TEMPLATE)]
    Config {
        /// The configuration as JSON
        #[arg(long)]
        json: bool,
    },
    /// The farm as this machine's farmd sees it
    #[command(help_template = TEMPLATE)]
    Status {
        /// The status as JSON
        #[arg(long)]
        json: bool,
        /// Redraw every second, like top
        #[arg(short, long)]
        watch: bool,
    },
    /// Why the last compile of SOURCE missed, or whether a compile command would hit
    #[command(
        help_template = TEMPLATE,
        override_usage = "farm why [--json] SOURCE\n       farm why [--json] -- COMPILER ARGS...",
        after_help = "Records are kept for misses only (the last 4 per source) under <cache>/why.\n\
                      Exit 0 when explained; 1 when there is nothing to explain."
    )]
    Why(WhyArgs),
    /// The live monitor's URL (farmd serves it), opened in a browser
    #[command(
        help_template = TEMPLATE,
        long_about = "Prints the URL of the live monitor this machine's farmd serves (its peers, \
                      the jobs it places and serves as they happen, a timeline per machine, hit \
                      rate and time saved) and opens it with xdg-open when a display is available."
    )]
    Monitor {
        /// Only print the URL
        #[arg(long)]
        no_open: bool,
    },
    /// The cluster CA and node certificates
    #[command(help_template = TEMPLATE)]
    Cluster {
        #[command(subcommand)]
        command: Option<ClusterCommand>,
    },
    /// One HTML page from a build journal (FARM_JOURNAL)
    #[command(
        help_template = TEMPLATE,
        override_usage = "farm report JOURNAL [-o OUT.html] [--gap SECONDS]",
        long_about = "Writes one self-contained HTML page (no network needed to open it) from a \
                      build journal (FARM_JOURNAL=FILE during a build): a timeline of each build, \
                      the slowest compiles, hit rate by directory, time saved, what ran where, and \
                      why compiles passed through or fell back. Builds are split where no compile \
                      ran for SECONDS (default 10). OUT defaults to JOURNAL with the extension \
                      .html; its path is printed."
    )]
    Report {
        /// The build journal (JSON lines)
        #[arg(value_name = "JOURNAL")]
        journal: Option<PathBuf>,
        /// The HTML file written (default: JOURNAL with the extension .html)
        #[arg(short, long, value_name = "OUT.html")]
        output: Option<PathBuf>,
        /// Split builds where no compile ran for this many seconds
        #[arg(
            long,
            value_name = "SECONDS",
            default_value_t = 10.0,
            allow_negative_numbers = true
        )]
        gap: f64,
    },
    /// Gradle init script: javac through farm-javac when FARM_GRADLE=1
    #[command(help_template = TEMPLATE)]
    GradleInit {
        /// Write it to ~/.gradle/init.d/farm.gradle instead of printing it
        #[arg(long)]
        install: bool,
    },
    /// Maven settings profile: javac through farm-javac when FARM_MAVEN is set
    #[command(help_template = TEMPLATE)]
    MavenInit {
        /// Write it to ~/.m2/settings.xml (when there is none yet) instead of printing it
        #[arg(long)]
        install: bool,
    },
    /// Print farm's version
    #[command(hide = true, help_template = TEMPLATE)]
    Version,
    /// Print a shell completion script for farm's commands
    #[command(hide = true, help_template = TEMPLATE)]
    Completions {
        /// bash, zsh, fish, elvish or powershell
        shell: clap_complete::Shell,
    },
    /// Write man pages (farm.1, farm-stats.1, ...) into DIR
    #[command(hide = true, help_template = TEMPLATE)]
    Manpages {
        /// The directory written (made when missing)
        dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Remove every cache entry (statistics are kept)
    #[command(help_template = TEMPLATE)]
    Clear,
    /// Print the cache directory
    #[command(help_template = TEMPLATE)]
    Dir,
    /// List the remote tiers (remote_storage) and their attributes
    #[command(help_template = TEMPLATE)]
    Remotes,
    /// Try each remote tier now (remote_storage)
    #[command(help_template = TEMPLATE)]
    Ping,
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Make a cluster CA in DIR (ca.crt, and ca.key readable by you only)
    #[command(help_template = TEMPLATE)]
    Init {
        /// The directory written
        dir: PathBuf,
        /// The cluster's name
        #[arg(long, value_name = "CLUSTER", default_value = "farm")]
        name: String,
    },
    /// Make NAME.crt and NAME.key (0600) for one node, signed by the cluster CA
    #[command(help_template = TEMPLATE)]
    Issue {
        /// The node's name
        name: String,
        /// The CA's directory (default: $FARM_CLUSTER_DIR, else the current directory)
        #[arg(long, value_name = "DIR")]
        ca: Option<PathBuf>,
        /// Where NAME.crt and NAME.key go (default: the CA directory)
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct WhyArgs {
    /// The answer as JSON
    #[arg(long)]
    pub json: bool,
    /// Explain the last miss of this source (compiled from any directory): what
    /// differs from the nearest earlier compile of it
    #[arg(value_name = "SOURCE")]
    pub source: Option<PathBuf>,
    /// Key this compile command now, as run from this directory, without compiling:
    /// would it hit the local cache, and if not, what differs
    #[arg(last = true, value_name = "COMPILER ARGS")]
    pub command: Vec<OsString>,
}

/// The whole command tree, for completions and man pages.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}
