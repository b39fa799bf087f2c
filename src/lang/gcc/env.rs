//! The environment: what enters the key, what makes a compile uncacheable or keeps
//! it at home, and what `native` CPU flags mean on this machine.

use crate::fsutil;

/// Environment variables that change gcc's or clang's outputs or diagnostics: in the
/// key.
pub(super) const KEY_ENV: &[&str] = &[
    "CPATH",
    "C_INCLUDE_PATH",
    "CPLUS_INCLUDE_PATH",
    "OBJC_INCLUDE_PATH",
    "OBJCPLUS_INCLUDE_PATH",
    "SOURCE_DATE_EPOCH",
    "GCC_EXEC_PREFIX",
    "COMPILER_PATH",
    "LIBRARY_PATH",
    "GCC_COMPARE_DEBUG",
    "GCC_COLORS",
    "GCC_URLS",
    "TERM_URLS",
    "COLUMNS",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "LC_MESSAGES",
    "LD_PRELOAD",
    "LD_LIBRARY_PATH",
    "MACOSX_DEPLOYMENT_TARGET",
    "SDKROOT",
];

/// Environment variables whose presence makes a compile unsafe to cache (the compiler
/// writes files farm does not know about, or takes options from them).
pub(super) const UNSAFE_ENV: &[&str] = &[
    "DEPENDENCIES_OUTPUT",
    "SUNPRO_DEPENDENCIES",
    "CCC_OVERRIDE_OPTIONS",
    "CC_PRINT_OPTIONS",
    "CC_PRINT_HEADERS",
    "CC_LOG_DIAGNOSTICS",
];

/// Environment under which a compile must stay at home: it changes which programs
/// the driver runs or how, and a worker runs with a clean environment.
/// (`LD_LIBRARY_PATH` is in the key but does not keep a compile home: build tools set
/// it routinely, and a worker's compiler has the same identity digest.)
pub(super) const HOME_ENV: &[&str] = &[
    "GCC_EXEC_PREFIX",
    "COMPILER_PATH",
    "GCC_COMPARE_DEBUG",
    "LD_PRELOAD",
];

/// Lines of the first processor block of `/proc/cpuinfo` that say what `native`
/// expands to (model, features, caches), without those that change at run time.
const CPUINFO_FIELDS: &[&str] = &[
    "vendor_id",
    "cpu family",
    "model",
    "model name",
    "stepping",
    "flags",
    "cache size",
    "cache_alignment",
    "address sizes",
    "Features",
    "CPU implementer",
    "CPU architecture",
    "CPU variant",
    "CPU part",
    "CPU revision",
    "isa",
    "uarch",
    "cpu",
];

/// The digest of this CPU's identity as `native` sees it, from `/proc/cpuinfo`.
pub(super) fn native_cpu_digest() -> Option<String> {
    use std::io::Read;
    let mut data = Vec::new();
    std::fs::File::open("/proc/cpuinfo")
        .ok()?
        .take(256 << 10)
        .read_to_end(&mut data)
        .ok()?;
    Some(cpuinfo_digest(&data))
}

fn cpuinfo_digest(data: &[u8]) -> String {
    let text = String::from_utf8_lossy(data);
    let mut h = blake3::Hasher::new();
    h.update(b"farm-native-cpu-1\0");
    let mut seen_field = false;
    for line in text.lines() {
        if line.trim().is_empty() {
            if seen_field {
                break; // the end of the first processor block
            }
            continue;
        }
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let k = k.trim();
        if CPUINFO_FIELDS.contains(&k) {
            seen_field = true;
            h.update(k.as_bytes());
            h.update(b"=");
            h.update(v.trim().as_bytes());
            h.update(b"\n");
        }
    }
    fsutil::hex(&h.finalize().as_bytes()[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_cpu_digest_follows_model_and_features_only() {
        // Another CPU model or feature set is another key; MHz and core ids are not.
        let a = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel\t\t: 85\ncpu MHz\t\t: 2000.1\nflags\t\t: fpu sse avx2\n\nprocessor\t: 1\nflags\t: other\n";
        let b = a
            .replace("2000.1", "3100.7")
            .replace("flags\t: other", "flags\t: x");
        let c = a.replace("avx2", "avx512f");
        let d = a.replace("model\t\t: 85", "model\t\t: 86");
        assert_eq!(cpuinfo_digest(a.as_bytes()), cpuinfo_digest(b.as_bytes()));
        assert_ne!(cpuinfo_digest(a.as_bytes()), cpuinfo_digest(c.as_bytes()));
        assert_ne!(cpuinfo_digest(a.as_bytes()), cpuinfo_digest(d.as_bytes()));
    }
}
