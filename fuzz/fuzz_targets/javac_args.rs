//! javac command lines (`Family::parse` of javac, `@argfiles` included) and the
//! argfile tokenizer. Input: the arguments, NUL-separated. Tokens quoted by
//! `args::quote` read back unchanged.

#![no_main]

use std::path::Path;

use farm::lang::javac::{args, JAVAC};
use farm::lang::Family;
use farm_fuzz::argv;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let a = argv(data);
    if let Ok(inv) = JAVAC.parse(Path::new("/usr/bin/javac"), &"javac".into(), &a, false) {
        assert!(!inv.outputs.is_empty(), "no outputs: {a:?}");
        assert!(inv.args.len() >= a.len());
        assert_eq!(&inv.args[..a.len()], &a[..]);
    }
    // The same bytes as an argfile's text.
    if let Ok(text) = std::str::from_utf8(data) {
        let toks = args::tokenize(text);
        let quoted: Vec<String> = toks.iter().map(|t| args::quote(t)).collect();
        assert_eq!(args::tokenize(&quoted.join(" ")), toks, "{text:?}");
        assert_eq!(args::tokenize(&quoted.join("\n")), toks, "{text:?}");
    }
});
