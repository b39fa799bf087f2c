//! gcc response files (`@file`, as libiberty reads them). Input: the file's bytes.
//! Whatever it expands to reads back unchanged from a file that quotes every
//! argument; no argument left starts with `@` (each was expanded or refused).

#![no_main]

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;

use farm::lang::gcc::expand_response_files;
use farm_fuzz::scratch;
use libfuzzer_sys::fuzz_target;

/// One argument as a response file spells it: every byte escaped, `''` when empty.
fn quote(arg: &[u8]) -> Vec<u8> {
    if arg.is_empty() {
        return b"''".to_vec();
    }
    arg.iter().flat_map(|&b| [b'\\', b]).collect()
}

/// A new file each time: rewriting one in place makes ext4 flush it on close (its
/// `auto_da_alloc`), a hundred times slower.
fn write(path: &std::path::Path, data: &[u8]) {
    let _ = std::fs::remove_file(path);
    std::fs::write(path, data).unwrap();
}

fuzz_target!(|data: &[u8]| {
    let file = scratch().join("args.rsp");
    write(&file, data);
    let at = |p: &std::path::Path| {
        let mut a = OsString::from("@");
        a.push(p);
        vec![a]
    };
    let Ok(args) = expand_response_files(&at(&file)) else {
        return;
    };
    for a in &args {
        let b = a.as_bytes();
        assert!(b.len() < 2 || b[0] != b'@', "{a:?} left unexpanded");
    }
    let requoted: Vec<u8> = args
        .iter()
        .map(|a| quote(a.as_bytes()))
        .collect::<Vec<_>>()
        .join(&b"\n"[..]);
    let again = scratch().join("again.rsp");
    write(&again, &requoted);
    assert_eq!(expand_response_files(&at(&again)).unwrap(), args);
});
