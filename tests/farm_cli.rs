//! `farm <command>`'s command line (clap): `--help` for every command, one-line usage
//! errors naming the flag and the command (exit 2), `--version`, completions and man
//! pages from the same definitions; and the compiler forms (`farm gcc …`, `farm-cc`,
//! masquerade links) never read by that parser.

mod common;

use common::*;
use std::fs;
use std::process::{Command, Output};

/// Every command and subcommand a user can name, as typed after `farm`.
const COMMANDS: &[&str] = &[
    "stats",
    "cache",
    "cache clear",
    "cache dir",
    "cache remotes",
    "cache ping",
    "config",
    "status",
    "why",
    "monitor",
    "cluster",
    "cluster init",
    "cluster issue",
    "report",
    "gradle-init",
    "maven-init",
    "completions",
    "manpages",
];

fn words(cmd: &str) -> Vec<&str> {
    cmd.split(' ').collect()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn run(env: &Env, args: &[&str]) -> Output {
    env.farm(args)
}

#[test]
fn every_command_answers_help_with_its_usage() {
    let env = Env::new("direct");
    for cmd in COMMANDS {
        for flag in ["--help", "-h"] {
            let mut args = words(cmd);
            args.push(flag);
            let o = run(&env, &args);
            let out = text(&o.stdout);
            assert_eq!(o.status.code(), Some(0), "farm {cmd} {flag}: {o:?}");
            assert!(
                o.stderr.is_empty(),
                "farm {cmd} {flag}: {}",
                text(&o.stderr)
            );
            assert!(
                out.starts_with(&format!("usage: farm {cmd}")),
                "farm {cmd} {flag}:\n{out}"
            );
            assert!(out.contains("--help"), "farm {cmd} {flag}:\n{out}");
        }
        // `farm help CMD` is the same page.
        let mut args = vec!["help"];
        args.extend(words(cmd));
        let o = run(&env, &args);
        assert_eq!(o.status.code(), Some(0), "farm help {cmd}");
        let mut long = words(cmd);
        long.push("--help");
        assert_eq!(
            text(&o.stdout),
            text(&run(&env, &long).stdout),
            "farm help {cmd}"
        );
    }
    // Flags each command had before keep their meaning.
    let stats = text(&run(&env, &["stats", "--help"]).stdout);
    for flag in ["--json", "-z, --zero"] {
        assert!(stats.contains(flag), "{stats}");
    }
    let report = text(&run(&env, &["report", "--help"]).stdout);
    for flag in ["-o, --output", "--gap <SECONDS>"] {
        assert!(report.contains(flag), "{report}");
    }
    // No cache was made by asking for help.
    assert!(!env.cache.exists());
}

#[test]
fn the_overview_lists_the_commands_and_the_compiler_forms() {
    let env = Env::new("direct");
    let help = run(&env, &["--help"]);
    assert_eq!(help.status.code(), Some(0));
    let out = text(&help.stdout);
    for shown in [
        "farm-cc ARGS",
        "farm COMPILER ARGS",
        "masquerade",
        "FARM_DISABLE",
    ] {
        assert!(out.contains(shown), "{shown} missing:\n{out}");
    }
    for cmd in COMMANDS.iter().filter(|c| !c.contains(' ')) {
        let listed = out.lines().any(|l| l.trim_start().starts_with(cmd));
        // The generators are hidden: the package ships what they make.
        assert_eq!(
            listed,
            !matches!(*cmd, "completions" | "manpages"),
            "{cmd} in:\n{out}"
        );
    }
    // `farm`, `farm help` and `farm -h` show the same overview.
    for args in [&[][..], &["help"][..], &["-h"][..]] {
        let o = run(&env, args);
        assert_eq!(o.status.code(), Some(0), "farm {args:?}");
        assert_eq!(text(&o.stdout), out, "farm {args:?}");
    }
    let want = format!("farm {}\n", env!("CARGO_PKG_VERSION"));
    for args in [["--version"], ["-V"], ["version"]] {
        let o = run(&env, &args);
        assert_eq!(o.status.code(), Some(0), "farm {args:?}");
        assert_eq!(text(&o.stdout), want, "farm {args:?}");
    }
}

#[test]
fn an_unknown_flag_is_one_line_naming_it_and_the_command() {
    let env = Env::new("direct");
    for cmd in COMMANDS {
        let mut args = words(cmd);
        args.push("--no-such-flag");
        let o = run(&env, &args);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "farm {cmd}: {o:?}");
        assert!(o.stdout.is_empty(), "farm {cmd}: {}", text(&o.stdout));
        assert_eq!(err.lines().count(), 1, "farm {cmd}:\n{err}");
        let lead = format!("farm: {cmd}: ");
        assert!(err.starts_with(&lead), "farm {cmd}:\n{err}");
        assert!(err.contains("'--no-such-flag'"), "farm {cmd}:\n{err}");
        assert!(err.contains(&format!("farm {cmd} --help")), "{err}");
    }
    // Other usage errors: the same shape.
    for (args, needle) in [
        (
            &["cache"][..],
            "a subcommand is needed: clear, dir, remotes, ping",
        ),
        (&["cache", "purge"][..], "'purge'"),
        (&["cluster", "issue"][..], "<NAME>"),
        (&["stats", "extra"][..], "'extra'"),
        (&["report", "j.jsonl", "--gap"][..], "--gap"),
        (&["completions", "tcsh"][..], "'tcsh'"),
    ] {
        let o = run(&env, args);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "farm {args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "farm {args:?}:\n{err}");
        assert!(err.starts_with("farm: "), "farm {args:?}:\n{err}");
        assert!(err.contains(needle), "farm {args:?}:\n{err}");
    }
}

#[test]
fn a_bad_flag_changes_nothing() {
    require("gcc");
    let env = Env::new("direct");
    env.write("a.c", "int a(void) { return 1; }\n");
    env.farm_ok(&["gcc", "-c", "a.c", "-o", "a.o"]);
    assert_eq!(env.misses(), 1);
    // Neither the entry nor the counters go when the flag is not understood.
    assert_eq!(
        run(&env, &["cache", "clear", "--force"]).status.code(),
        Some(2)
    );
    assert_eq!(
        run(&env, &["stats", "--zero", "--all"]).status.code(),
        Some(2)
    );
    assert_eq!(env.misses(), 1);
    env.farm_ok(&["gcc", "-c", "a.c", "-o", "a.o"]);
    assert_eq!(env.hits(), 1);
}

#[test]
fn compiler_arguments_never_reach_the_command_parser() {
    let gcc = require("gcc");
    let env = Env::new("direct");
    let plain_help = Command::new(&gcc).arg("--help").output().unwrap();
    assert!(plain_help.status.success());
    assert!(text(&plain_help.stdout).contains("Usage: gcc"));
    // Launcher form, farm-cc, and a masquerade link named gcc: gcc's own help.
    let masq = env.root.path().join("masq");
    fs::create_dir_all(&masq).unwrap();
    std::os::unix::fs::symlink(farm_bin(), masq.join("gcc")).unwrap();
    let launcher = env
        .cmd(farm_bin())
        .args(["gcc", "--help"])
        .output()
        .unwrap();
    let cc = env
        .cmd(farm_cc_bin())
        .env("FARM_CC", &gcc)
        .arg("--help")
        .output()
        .unwrap();
    let masqueraded = env.cmd(masq.join("gcc")).arg("--help").output().unwrap();
    for (form, o) in [
        ("farm gcc --help", &launcher),
        ("farm-cc --help", &cc),
        ("masquerade gcc --help", &masqueraded),
    ] {
        assert_eq!(o.status.code(), Some(0), "{form}: {}", text(&o.stderr));
        assert_eq!(text(&o.stdout), text(&plain_help.stdout), "{form}");
        assert!(!text(&o.stdout).contains("usage: farm"), "{form}");
    }
    let version = env
        .cmd(farm_bin())
        .args(["gcc", "--version"])
        .output()
        .unwrap();
    let plain_version = Command::new(&gcc).arg("--version").output().unwrap();
    assert_eq!(text(&version.stdout), text(&plain_version.stdout));
    // A compile whose arguments look like farm's flags (and a define spelled
    // `--help`) is compiled and cached as gcc's, byte for byte.
    env.write(
        "x.c",
        "#include <string.h>\nint x(void) { return (int)strlen(FLAG); }\n",
    );
    let args = ["gcc", "-c", "x.c", "-DFLAG=\"--help\"", "-o", "x.o"];
    env.farm_ok(&args);
    let first = env.read("x.o");
    fs::remove_file(env.work.join("x.o")).unwrap();
    env.farm_ok(&args);
    assert_eq!(env.read("x.o"), first);
    assert_eq!((env.misses(), env.hits()), (1, 1));
    env.plain(&["gcc", "-c", "x.c", "-DFLAG=\"--help\"", "-o", "plain.o"]);
    assert_eq!(env.read("plain.o"), first);
    // A compiler gets `--json` and `-z` as they are: gcc rejects them itself.
    let o = env
        .cmd(farm_bin())
        .args(["gcc", "-c", "x.c", "--json"])
        .output()
        .unwrap();
    let plain = Command::new(&gcc)
        .args(["-c", "x.c", "--json"])
        .current_dir(&env.work)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), plain.status.code());
    assert!(text(&o.stderr).contains("--json"), "{}", text(&o.stderr));
    assert!(!text(&o.stderr).contains("farm:"), "{}", text(&o.stderr));

    // A masquerade link with no real compiler behind it answers as the shell does for
    // a command it cannot find (127), in one line naming the compiler.
    std::os::unix::fs::symlink(farm_bin(), masq.join("farm-no-such-cc")).unwrap();
    for o in [
        env.cmd(masq.join("farm-no-such-cc"))
            .arg("-c")
            .arg("x.c")
            .output()
            .unwrap(),
        env.cmd(farm_bin())
            .args(["farm-no-such-cc", "-c", "x.c"])
            .output()
            .unwrap(),
    ] {
        assert_eq!(o.status.code(), Some(127), "{}", text(&o.stderr));
        let err = text(&o.stderr);
        assert!(
            err.contains("`farm-no-such-cc` not found") && err.lines().count() == 1,
            "{err}"
        );
    }
}

#[test]
fn completions_for_bash_zsh_and_fish_name_every_command() {
    let env = Env::new("direct");
    for shell in ["bash", "zsh", "fish"] {
        let o = run(&env, &["completions", shell]);
        assert_eq!(o.status.code(), Some(0), "{shell}: {}", text(&o.stderr));
        let script = text(&o.stdout);
        for cmd in [
            "stats",
            "cache",
            "cluster",
            "gradle-init",
            // fish spells long flags `-l no-open`.
            "no-open",
            "gap",
        ] {
            assert!(script.contains(cmd), "{shell} completion lacks {cmd}");
        }
    }
    // The bash script loads, and completes `farm st` and `farm cache c`.
    let script = env.root.path().join("farm.bash");
    fs::write(&script, run(&env, &["completions", "bash"]).stdout).unwrap();
    let o = Command::new("bash")
        .arg("-c")
        .arg(format!(
            r#"set -e; source '{}'
COMP_WORDS=(farm st); COMP_CWORD=1; _farm farm st farm; echo "${{COMPREPLY[*]}}"
COMP_WORDS=(farm cache c); COMP_CWORD=2; _farm farm c cache; echo "${{COMPREPLY[*]}}"
COMP_WORDS=(farm stats --j); COMP_CWORD=2; _farm farm --j stats; echo "${{COMPREPLY[*]}}""#,
            script.display()
        ))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let lines: Vec<String> = text(&o.stdout).lines().map(String::from).collect();
    assert_eq!(lines, ["stats status", "clear", "--json"], "{lines:?}");

    // The launcher form completes as the compiler would: files after `farm gcc -c`
    // (here without bash-completion loaded: file names), and after `farm cc` farm's
    // commands are not offered.
    env.write("code.c", "int x;\n");
    env.write("core.h", "int y;\n");
    let words = |line: &str| {
        let o = Command::new("bash")
            .current_dir(&env.work)
            .arg("-c")
            .arg(format!(
                r#"set -e; source '{}'; complete -p farm; set +e; COMP_WORDS=({line}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); _farm_launcher farm "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"; printf '%s\n' "${{COMPREPLY[@]}}" | sort | tr '\n' '|'"#,
                script.display()
            ))
            .output()
            .unwrap();
        assert!(o.status.success(), "{line}: {}", text(&o.stderr));
        text(&o.stdout)
    };
    let gcc = words("farm gcc -c co");
    assert!(gcc.contains("-F _farm_launcher farm"), "{gcc}");
    assert!(gcc.ends_with("\ncode.c|core.h|"), "{gcc}");
    let cc = words("farm cc st");
    assert!(!cc.contains("stats"), "{cc}");
    assert!(words("farm st").ends_with("\nstats|status|"));
    // farm's own commands still complete through the wrapper; a file name with a
    // space stays one word.
    assert!(words("farm cache c").ends_with("\nclear|"));
    assert!(words("farm stats --j").ends_with("\n--json|"));
    env.write("two words.c", "int z;\n");
    let spaced = words("farm gcc -c tw");
    assert!(spaced.ends_with("\ntwo words.c|"), "{spaced}");
}

#[test]
fn man_pages_for_farm_and_each_command() {
    let env = Env::new("direct");
    let dir = env.root.path().join("man/man1");
    let o = run(&env, &["manpages", dir.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let mut pages: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    let mut want: Vec<String> = std::iter::once("farm.1".to_string())
        .chain(
            COMMANDS
                .iter()
                .filter(|c| !matches!(**c, "completions" | "manpages"))
                .map(|c| format!("farm-{}.1", c.replace(' ', "-"))),
        )
        .collect();
    want.sort();
    assert_eq!(pages, want);
    for p in &pages {
        let roff = fs::read_to_string(dir.join(p)).unwrap();
        assert!(roff.contains(".TH "), "{p}");
    }
    // Rendered by the system's man, the page says what the flags do.
    let o = Command::new("man")
        .arg("-l")
        .arg(dir.join("farm-stats.1"))
        .env("MANWIDTH", "80")
        .env("MANPAGER", "cat")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let page = text(&o.stdout);
    assert!(page.contains("--zero"), "{page}");
    assert!(page.contains("Zero the counters"), "{page}");
    let farm1 = fs::read_to_string(dir.join("farm.1")).unwrap();
    assert!(farm1.contains("masquerade"), "{farm1}");
    // A directory that cannot be made is a one-line error.
    let o = run(&env, &["manpages", "/proc/farm-man"]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(text(&o.stderr).lines().count(), 1, "{}", text(&o.stderr));
}
