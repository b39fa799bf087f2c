//! C# command lines (`Family::parse` of mcs and Roslyn's csc, nested response files
//! included) and the response-file line splitter. Input: the arguments,
//! NUL-separated; the first byte's low bit picks mcs or csc. The compilers are
//! stand-in launcher scripts (the family checks the layout a launcher names, not
//! that it runs).

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use farm::lang::csc::{args, CSC};
use farm::lang::Family;
use farm_fuzz::{argv, scratch};
use libfuzzer_sys::fuzz_target;

fn launchers() -> &'static [PathBuf; 2] {
    static L: OnceLock<[PathBuf; 2]> = OnceLock::new();
    L.get_or_init(|| {
        ["mcs", "csc"].map(|n| {
            let p = scratch().join(n);
            let script =
                format!("#!/bin/sh\nexec /usr/bin/mono /usr/lib/mono/4.5/{n}.exe \"$@\"\n");
            std::fs::write(&p, script).unwrap();
            p
        })
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let compiler = &launchers()[usize::from(pick & 1)];
    let a = argv(rest);
    let arg0 = compiler.file_name().unwrap().to_os_string();
    if let Ok(inv) = CSC.parse(compiler, &arg0, &a, false) {
        assert!(!inv.outputs.is_empty(), "no outputs: {a:?}");
        assert!(inv.args.len() >= a.len());
        assert_eq!(&inv.args[..a.len()], &a[..]);
    }
    // The same bytes as a response file's lines: tokens are never empty, and each
    // quoted with a quote it does not hold reads back unchanged.
    if let Ok(text) = std::str::from_utf8(rest) {
        for line in text.lines() {
            let toks = args::split_line(line);
            assert!(toks.iter().all(|t| !t.is_empty()), "{line:?}");
            let quoted: Option<Vec<String>> = toks
                .iter()
                .map(|t| {
                    if !t.contains('"') {
                        Some(format!("\"{t}\""))
                    } else if !t.contains('\'') {
                        Some(format!("'{t}'"))
                    } else {
                        None
                    }
                })
                .collect();
            if let Some(q) = quoted {
                assert_eq!(args::split_line(&q.join(" ")), toks, "{line:?}");
            }
        }
    }
});
