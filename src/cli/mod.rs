//! `farm <command>`: the commands people run by hand, one file each; this file
//! dispatches on the command's name and holds what they share.

use std::ffi::OsString;
use std::io::Write;

use crate::config::Config;
use args::{Cli, Command};
use clap::Parser;

pub mod args;
mod cache;
mod cluster;
mod config;
mod monitor;
mod report;
mod stats;
mod status;
mod why;

/// The first arguments `farm` takes for a command of its own; anything else is a
/// compiler (`farm gcc -c x.c`). Decided here, before any parsing, so a compile's
/// argv never reaches the command-line parser.
const COMMANDS: &[&str] = &[
    "stats",
    "cache",
    "config",
    "status",
    "monitor",
    "cluster",
    "why",
    "report",
    "gradle-init",
    "maven-init",
    "completions",
    "manpages",
    "help",
    "--help",
    "-h",
    "--version",
    "-V",
    "version",
];

pub fn is_command(s: &str) -> bool {
    COMMANDS.contains(&s)
}

/// Writes to stdout, flushed: the binary is `no_main`, so nothing flushes stdout at
/// exit, and `farm status --watch` redraws in place.
fn out(s: &str) {
    let mut o = std::io::stdout().lock();
    let _ = o.write_all(s.as_bytes());
    let _ = o.flush();
}

/// Reports a usage or setup error; its exit code.
fn err(msg: impl std::fmt::Display) -> i32 {
    let _ = writeln!(std::io::stderr(), "farm: {msg}");
    2
}

/// The configuration, for commands that read the cache directory.
fn load() -> Result<Config, i32> {
    let cfg = Config::load().map_err(err)?;
    crate::fsutil::set_cache_shared(cfg.cache_shared.value);
    Ok(cfg)
}

/// `farm <command> ...`: `args` without argv[0].
pub fn run(args: &[OsString]) -> i32 {
    let argv = std::iter::once(OsString::from("farm")).chain(args.iter().cloned());
    let cli = match Cli::try_parse_from(argv) {
        Ok(c) => c,
        Err(e) => return clap_error(&e, args),
    };
    let Some(command) = cli.command else {
        // `farm` alone: the overview.
        return print_help(args::command());
    };
    match command {
        Command::Stats { json, zero } => stats::run(json, zero),
        Command::Cache(c) => cache::run(c),
        Command::Config { json } => config::run(json),
        Command::Status { json, watch } => status::run(json, watch),
        Command::Monitor { no_open } => monitor::run(no_open),
        Command::Cluster { command } => cluster::run(command),
        Command::Why(w) => why::run(w),
        Command::Report {
            journal,
            output,
            gap,
        } => report::run(journal, output, gap),
        Command::GradleInit { install } => crate::buildtools::gradle_init(install),
        Command::MavenInit { install } => crate::buildtools::maven_init(install),
        Command::Version => {
            out(&format!("farm {}\n", env!("CARGO_PKG_VERSION")));
            0
        }
        Command::Completions { shell } => {
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut args::command(), "farm", &mut buf);
            let script = String::from_utf8_lossy(&buf);
            match shell {
                clap_complete::Shell::Bash => out(&bash_launcher_form(&script)),
                _ => out(&script),
            }
            0
        }
        Command::Manpages { dir } => manpages(&dir),
    }
}

/// clap's bash completion, made to hand `farm COMPILER ARGS...` to the compiler's own
/// completion (bash-completion's `_command_offset`, else file names): clap would offer
/// farm's commands after `farm gcc -c`.
fn bash_launcher_form(script: &str) -> String {
    let commands: Vec<&str> = COMMANDS
        .iter()
        .copied()
        .filter(|c| !c.starts_with('-'))
        .collect();
    format!(
        r#"{}
# The launcher form: after `farm COMPILER`, the compiler's own completion.
_farm_launcher() {{
    if [[ ${{COMP_CWORD}} -gt 1 && ${{COMP_WORDS[1]}} != -* ]]; then
        case "${{COMP_WORDS[1]}}" in
            {}) ;;
            *)
                if declare -F _command_offset >/dev/null; then
                    _command_offset 1
                else
                    compopt -o filenames 2>/dev/null
                    local IFS=$'\n'
                    COMPREPLY=($(compgen -f -- "${{COMP_WORDS[COMP_CWORD]}}"))
                fi
                return 0
                ;;
        esac
    fi
    _farm "$@"
}}
"#,
        script.replace("complete -F _farm ", "complete -F _farm_launcher "),
        commands.join("|")
    )
}

/// `farm manpages DIR`: farm.1 and one page per command (farm-stats.1, ...).
fn manpages(dir: &std::path::Path) -> i32 {
    if let Err(e) = std::fs::create_dir_all(dir) {
        return err(format!("manpages: cannot make {}: {e}", dir.display()));
    }
    match clap_mangen::generate_to(args::command().long_about(args::LONG_ABOUT), dir) {
        Ok(()) => {
            out(&format!("man pages written to {}\n", dir.display()));
            0
        }
        Err(e) => err(format!(
            "manpages: cannot write into {}: {e}",
            dir.display()
        )),
    }
}

/// `cmd`'s help on stdout; exit 0.
fn print_help(mut cmd: clap::Command) -> i32 {
    let help = cmd.render_help().to_string();
    out(&format!("{}\n", help.trim_end()));
    0
}

/// `--help` and `--version` (exit 0, on stdout); a usage error in one line on stderr,
/// naming the command it is about, exit 2.
fn clap_error(e: &clap::Error, args: &[OsString]) -> i32 {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        out(&e.render().to_string());
        return 0;
    }
    let (path, cmd) = command_path(args);
    let first = if matches!(
        e.kind(),
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand | ErrorKind::MissingSubcommand
    ) {
        let subs: Vec<&str> = cmd
            .get_subcommands()
            .filter(|s| !s.is_hide_set() && s.get_name() != "help")
            .map(|s| s.get_name())
            .collect();
        format!("a subcommand is needed: {}", subs.join(", "))
    } else {
        // clap's first paragraph, in one line: "unexpected argument '--x' found",
        // "the following required arguments were not provided: <NAME>".
        let rendered = e.render().to_string();
        rendered
            .trim_start_matches("error: ")
            .lines()
            .take_while(|l| !l.trim().is_empty())
            .map(str::trim)
            .collect::<Vec<_>>()
            .join(" ")
    };
    let what = if path.is_empty() {
        String::new()
    } else {
        format!("{path}: ")
    };
    let help = if path.is_empty() {
        "farm --help".to_string()
    } else {
        format!("farm {path} --help")
    };
    err(format!("{what}{first} (try `{help}`)"))
}

/// The (sub)command named at the front of `args` ("stats", "cache ping", "" when
/// none) and its definition.
fn command_path(args: &[OsString]) -> (String, clap::Command) {
    let mut cmd = args::command();
    let mut path = Vec::new();
    for a in args {
        let Some(name) = a.to_str() else { break };
        let Some(sub) = cmd.find_subcommand(name).cloned() else {
            break;
        };
        path.push(sub.get_name().to_string());
        cmd = sub;
    }
    (path.join(" "), cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_definitions_are_consistent() {
        args::command().debug_assert();
    }

    /// Every command clap knows is one `entry::main` hands to it, and nothing else:
    /// a name missing here would run as a compiler, an extra one would shadow one.
    #[test]
    fn dispatch_and_parser_agree_on_the_commands() {
        let cmd = args::command();
        let mut names: Vec<&str> = cmd.get_subcommands().map(|s| s.get_name()).collect();
        names.push("help");
        for n in &names {
            assert!(is_command(n), "{n} is parsed but dispatched as a compiler");
        }
        for c in COMMANDS.iter().filter(|c| !c.starts_with('-')) {
            assert!(names.contains(c), "{c} is dispatched but not parsed");
        }
        for compiler in ["gcc", "cc", "clang++", "javac", "mcs", "/usr/bin/gcc", "--"] {
            assert!(!is_command(compiler), "{compiler}");
        }
    }
}
