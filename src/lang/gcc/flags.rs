//! Flag tables: which gcc and clang flags are key material, which take a separate
//! value, which make a compile uncacheable, which name files the compiler reads, and
//! the checks built on them.

use crate::lang::Passthrough;

/// Flags that take a separate argument and enter the key as they are.
pub(super) const WITH_ARG: &[&str] = &[
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
pub(super) const INPUT_FILE_FLAGS: &[&str] = &[
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
pub(super) const ASM_OK: &[&str] = &[
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

/// The pass-through reason when `flag` is in [`REFUSE`].
pub(super) fn refused(flag: &str) -> Option<&'static str> {
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

/// `-march=native`, `-mtune=native`, `-mcpu=native` (and `native+ext` forms): any
/// `-m` flag whose value is `native`.
pub(super) fn is_native_cpu_flag(a: &str) -> bool {
    a.starts_with("-m")
        && a.split_once('=').is_some_and(|(_, v)| {
            v == "native" || v.starts_with("native+") || v.starts_with("native,")
        })
}

/// `-Wa,`, `-Wp,` and `-Wl,` options checked (`None` for any other flag): assembler
/// options must only change code generation, preprocessor options only define.
pub(super) fn tool_option(a: &str) -> Option<Result<(), Passthrough>> {
    if let Some(rest) = a.strip_prefix("-Wa,") {
        for opt in rest.split(',') {
            if !ASM_OK.iter().any(|ok| opt.starts_with(ok)) {
                return Some(Err(Passthrough::new("assembler_option", a)));
            }
        }
        return Some(Ok(()));
    }
    if let Some(rest) = a.strip_prefix("-Wp,") {
        for opt in rest.split(',') {
            if !(opt.starts_with("-D") || opt.starts_with("-U")) {
                return Some(Err(Passthrough::new("preprocessor_option", a)));
            }
        }
        return Some(Ok(()));
    }
    // Linker options do nothing with -c.
    a.starts_with("-Wl,").then_some(Ok(()))
}

/// Flags that enter the key as they are and change nothing else.
pub(super) fn plain_key_material(a: &str) -> bool {
    EXACT_OK.contains(&a)
        || JOINED_OK
            .iter()
            .any(|p| a.starts_with(p) && a.len() > p.len())
        || PREFIX_OK
            .iter()
            .any(|p| a.starts_with(p) && a.len() > p.len())
}

/// Flags that change the include search list (given to `-E -v`).
pub(super) fn shapes_search(a: &str) -> bool {
    a.starts_with("-I")
        || a.starts_with("-i")
        || a.starts_with("-nostdinc")
        || a.starts_with("--sysroot")
        || a.starts_with("-m")
        || a.starts_with("-std")
        || a.starts_with("--target")
        || a.starts_with("-stdlib")
        || a.starts_with("--gcc-toolchain")
        || a.starts_with("-f")
}
