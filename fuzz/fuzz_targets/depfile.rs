//! Make dependency files (`-MD`/`-MMD` output, farm's own observation file), and the
//! search list of `-E -v` output. Input: the file's bytes. Prerequisites are never
//! empty, and written back with Make's escapes they parse to themselves.

#![no_main]

use std::os::unix::ffi::OsStrExt;

use farm::lang::gcc::{parse_depfile, parse_search_list};
use libfuzzer_sys::fuzz_target;

fn escape(path: &[u8], out: &mut Vec<u8>) {
    for &b in path {
        match b {
            b' ' | b'#' | b'\\' => out.extend_from_slice(&[b'\\', b]),
            b'$' => out.extend_from_slice(b"$$"),
            _ => out.push(b),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let deps = parse_depfile(data);
    let mut again = b"out.o:".to_vec();
    for d in &deps {
        let d = d.as_os_str().as_bytes();
        assert!(!d.is_empty());
        assert!(
            !d.iter().any(|b| matches!(b, b'\n' | b'\r' | b'\t')),
            "{d:?}"
        );
        again.extend_from_slice(b" \\\n ");
        escape(d, &mut again);
    }
    again.push(b'\n');
    assert_eq!(
        parse_depfile(&again),
        deps,
        "{:?}",
        String::from_utf8_lossy(&again)
    );
    let _ = parse_search_list(data);
});
