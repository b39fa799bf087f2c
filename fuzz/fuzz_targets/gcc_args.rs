//! gcc/clang command lines (`Family::parse` of the gcc family, response files
//! included). Input: argv[0] then the arguments, NUL-separated. A parsed invocation
//! keeps its invariants: the object is the first output, the source is in the key,
//! the arguments run are the ones given, and output paths stay out of the key.

#![no_main]

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use farm::lang::gcc::GCC;
use farm::lang::Family;
use farm_fuzz::{argv, contains};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut args = argv(data);
    if args.is_empty() {
        return;
    }
    let arg0: OsString = args.remove(0);
    let name = Path::new(&arg0)
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "gcc".into());
    let compiler = Path::new("/usr/bin").join(name);
    let Ok(inv) = GCC.parse(&compiler, &arg0, &args, false) else {
        return;
    };
    assert!(!inv.outputs.is_empty(), "no outputs: {args:?}");
    assert_eq!(inv.outputs[0].role, "object", "{args:?}");
    assert!(
        inv.key_args.iter().any(|a| Path::new(a) == inv.source),
        "source {:?} not in the key {:?}",
        inv.source,
        inv.key_args
    );
    // What runs is what was given (farm may only append its observation flags).
    assert!(inv.args.len() >= args.len());
    assert_eq!(&inv.args[..args.len()], &args[..]);
    // An output path named on the line (`-o x`, `-ox`, `-MF x`, `-MFx`) by the only
    // argument that holds it never enters the key. (An output named after the source,
    // `a.o` for `a.c`, is not named on the line; the same text as `-MT a.o` is a
    // target, which does.)
    let flags: [&[u8]; 2] = [b"-o", b"-MF"];
    for out in &inv.outputs {
        let o = out.path.as_os_str().as_bytes();
        let holding: Vec<usize> = (0..args.len())
            .filter(|&i| contains(args[i].as_bytes(), o))
            .collect();
        let names = |i: usize| {
            let a = args[i].as_bytes();
            let after_flag = i > 0 && flags.contains(&args[i - 1].as_bytes());
            (a == o && after_flag) || flags.iter().any(|f| a.strip_prefix(*f) == Some(o))
        };
        if holding.len() == 1 && names(holding[0]) && out.path != inv.source {
            assert!(
                !inv.key_args.iter().any(|a| contains(a.as_bytes(), o)),
                "output {:?} in the key {:?} (args {args:?})",
                out.path,
                inv.key_args
            );
        }
    }
});
