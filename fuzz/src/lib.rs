//! What the fuzz targets share: how an input becomes a command line, and a scratch
//! directory per process.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// A command line from fuzz input: arguments separated by NUL bytes (as in
/// `/proc/<pid>/cmdline`, without the trailing NUL). The seeds are real command lines
/// written so.
pub fn argv(data: &[u8]) -> Vec<OsString> {
    if data.is_empty() {
        return Vec::new();
    }
    data.split(|&b| b == 0)
        .map(|a| OsString::from_vec(a.to_vec()))
        .collect()
}

/// Whether `needle` occurs in `hay` (bytes, not characters: arguments need not be
/// UTF-8).
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

/// A directory of this process's own, made on first use and left for the OS's
/// temporary-file cleanup (a fuzzer is killed rather than ended).
pub fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("farm-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("scratch directory");
        d
    })
}
