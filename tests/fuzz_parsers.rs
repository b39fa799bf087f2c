//! Property tests (bounded, stable Rust) for everything that parses untrusted bytes:
//! compiler command lines, response files, dependency files, `-E -v` output, cache
//! entries and manifests. None may panic; parsed results must keep their invariants.

use std::ffi::OsString;
use std::path::Path;

use farm::cache::decode_entry;
use farm::key::{Manifest, ResultEntry};
use farm::lang::gcc::{expand_response_files, parse_depfile, parse_search_list, GCC};
use farm::lang::Family;
use proptest::prelude::*;

const VOCAB: &[&str] = &[
    "-c",
    "-o",
    "out.o",
    "a.c",
    "b.cpp",
    "x.s",
    "-E",
    "-S",
    "-MD",
    "-MMD",
    "-MF",
    "deps.d",
    "-MT",
    "-MQ",
    "-MP",
    "-I",
    "inc",
    "-Iinc",
    "-DX=1",
    "-D",
    "-U",
    "-O2",
    "-g",
    "-gsplit-dwarf",
    "--coverage",
    "-x",
    "c",
    "c++",
    "none",
    "-include",
    "h.h",
    "-Wall",
    "-Wa,--noexecstack",
    "-Wp,-DY",
    "-Wl,-z",
    "-fPIC",
    "-fplugin=p.so",
    "-B/x",
    "-",
    "@missing.rsp",
    "-arch",
    "x86_64",
    "-std=c11",
    "--sysroot=/",
    "-isystem",
    "/usr/include",
    "-o-",
    "-fdebug-prefix-map=/a=/b",
    "-v",
    "--",
    "-Xclang",
    "",
    "-MFdeps2.d",
    "-oout2.o",
];

fn argv() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(
        prop_oneof![
            4 => prop::sample::select(VOCAB).prop_map(String::from),
            1 => "[-a-zA-Z0-9=._/@,]{0,12}",
        ],
        0..14,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn gcc_parse_never_panics_and_keeps_outputs_out_of_the_key(args in argv()) {
        let os: Vec<OsString> = args.iter().map(OsString::from).collect();
        if let Ok(inv) = GCC.parse(Path::new("/usr/bin/gcc"), &OsString::from("gcc"), &os, false) {
            prop_assert!(!inv.outputs.is_empty());
            prop_assert_eq!(inv.outputs[0].role, "object");
            prop_assert!(inv.key_args.iter().any(|a| Path::new(a) == inv.source));
            // Output paths never enter the key (unless the same string is also
            // something else on the line, e.g. the source).
            for out in &inv.outputs {
                let o = out.path.to_string_lossy().into_owned();
                let uses = args.iter().filter(|a| a.contains(o.as_str())).count();
                if uses == 1 && Path::new(&o) != inv.source {
                    prop_assert!(!inv.key_args.iter().any(|a| a.to_string_lossy().contains(o.as_str())), "{:?} {:?}", args, inv.key_args);
                }
            }
            prop_assert!(inv.args.len() >= os.len());
            prop_assert_eq!(&inv.args[..os.len()], &os[..]);
        }
    }

    #[test]
    fn response_file_contents_never_panic(data in prop::collection::vec(any::<u8>(), 0..400)) {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("r.rsp");
        std::fs::write(&f, &data).unwrap();
        let _ = expand_response_files(&[OsString::from(format!("@{}", f.display()))]);
    }

    #[test]
    fn depfile_and_search_list_never_panic(data in prop::collection::vec(any::<u8>(), 0..600)) {
        let deps = parse_depfile(&data);
        for d in deps {
            prop_assert!(!d.as_os_str().is_empty());
        }
        let _ = parse_search_list(&data);
    }

    #[test]
    fn entry_decoders_reject_garbage_without_panicking(data in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = decode_entry(&data);
        let _ = Manifest::decode(&data);
        let _ = ResultEntry::decode(&data);
        let mut framed = b"FARMENT1".to_vec();
        framed.extend_from_slice(&data);
        prop_assert!(decode_entry(&framed).is_err() || data.len() >= 32);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// The protocol decoder answers garbage with an error, never a panic, and never
    /// allocates past its cap.
    #[test]
    fn protocol_decoder_survives_garbage(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = farm::protocol::decode::<farm::protocol::PeerRequest>(&body, 4096);
        let _ = farm::protocol::decode::<farm::protocol::PeerResponse>(&body, 4096);
        let _ = farm::protocol::decode::<farm::protocol::AgentRequest>(&body, 4096);
        let _ = farm::protocol::decode::<farm::protocol::AgentResponse>(&body, 4096);
        if body.len() >= 4 {
            let h: [u8; 4] = body[..4].try_into().unwrap();
            if let Ok(n) = farm::protocol::body_len(h, 4096) {
                prop_assert!(n <= 4097);
            }
        }
        let mut r = std::io::Cursor::new(body);
        let _ = farm::protocol::read_sync::<farm::protocol::AgentRequest>(&mut r, 4096);
    }

    /// A worker accepts no argument that names a file or loads code, whatever the
    /// spelling around the dangerous part.
    #[test]
    fn worker_never_accepts_plugins_or_paths(
        prefix in "(-fplugin|-fpass-plugin|-B|-specs|--specs|-o|-wrapper|@|/|-I|-include|-fprofile-use=|-mllvm)",
        rest in "[a-zA-Z0-9=/._-]{0,20}",
    ) {
        let arg = format!("{prefix}{rest}");
        let r = farm::lang::gcc::worker_args(
            "cpp-output",
            std::slice::from_ref(&arg),
            std::path::Path::new("job.i"),
            std::path::Path::new("job.o"),
        );
        prop_assert!(r.is_err(), "{} accepted", arg);
    }
}
