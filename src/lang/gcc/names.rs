//! Which program names are gcc or clang drivers, and which language a source is, from
//! `-x` or its extension.

use super::Lang;
use crate::lang::DepfileWrap;
use std::path::Path;

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

/// How the driver of this name wraps dependency files: clang's or gcc's way, or not
/// known from the name (`cc`, `c++`: either, through alternatives).
pub(super) fn depfile_wrap(name: &str) -> DepfileWrap {
    if name.starts_with("clang") {
        DepfileWrap::Clang
    } else if name.contains("gcc") || name.contains("g++") {
        DepfileWrap::Gcc
    } else {
        DepfileWrap::Unknown
    }
}

#[derive(Clone, Copy)]
pub(super) enum LangOf {
    Source(Lang),
    Reject(&'static str),
}

pub(super) fn lang_from_x(x: &str) -> LangOf {
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

pub(super) fn lang_from_ext(path: &str) -> Option<LangOf> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
