//! Property tests (bounded, stable Rust) for everything that parses untrusted bytes:
//! compiler command lines, response files, dependency files, `-E -v` output, cache
//! entries and manifests. None may panic; parsed results must keep their invariants.

use std::ffi::OsString;
use std::path::Path;

use farm::digest::StatStamp;
use farm::key::manifest::{self, MAX_MANIFEST_ENTRIES};
use farm::key::{
    FileDigest, Manifest, ManifestEntry, MissingPath, OutputBlob, PreprocessorOnly, ResultEntry,
};
use farm::lang::gcc::{expand_response_files, parse_depfile, parse_search_list, GCC};
use farm::lang::Family;
use farm::protocol::{EntryKind, Item, PeerRequest};
use farm::store::{decode_entry, encode_entry};
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
    fn entry_decoders_reject_garbage_without_panicking(
        data in prop::collection::vec(any::<u8>(), 0..600),
        sum in any::<[u8; 32]>(),
    ) {
        let _ = decode_entry(&data);
        let _ = Manifest::decode(&data);
        let _ = ResultEntry::decode(&data);
        let _ = manifest::merge(Some(&data), &data);
        // Past the magic: a checksum that is not the payload's, in front of a well-formed
        // compressed frame, must be refused (the header check alone cannot do that).
        let mut framed = b"FARMENT1".to_vec();
        framed.extend_from_slice(&sum);
        framed.extend_from_slice(&zstd::bulk::compress(&data, 1).unwrap());
        prop_assert!(decode_entry(&framed).is_err());
    }

    /// A real entry decodes to exactly its payload; damaged, it is refused or (a bit
    /// the decompressor ignores) still exactly its payload; cut short, it is refused.
    #[test]
    fn entry_frame_roundtrips_and_refuses_damage(
        payload in payload(),
        at in any::<prop::sample::Index>(),
        flip in 1u8..=255,
        cut in any::<prop::sample::Index>(),
    ) {
        let framed = encode_entry(&payload).unwrap();
        prop_assert_eq!(&decode_entry(&framed).unwrap(), &payload);
        let mut bad = framed.clone();
        let i = at.index(bad.len());
        bad[i] ^= flip;
        if let Ok(p) = decode_entry(&bad) {
            prop_assert!(i >= 40, "damaged header byte {} accepted", i);
            prop_assert_eq!(&p, &payload);
        }
        prop_assert!(decode_entry(&framed[..cut.index(framed.len())]).is_err());
    }

    /// Manifests and result entries decode to what was encoded, and no strict prefix of
    /// an encoding decodes (a stored entry cut short is never read as a smaller one).
    #[test]
    fn manifests_and_results_roundtrip_and_refuse_truncation(
        m in manifest_strategy(),
        stdout in bytes(50),
        stderr in bytes(50),
        outputs in prop::collection::vec(("[a-z/.]{0,12}", bytes(80)), 0..4),
        compile_ms in any::<u64>(),
        cut in any::<prop::sample::Index>(),
    ) {
        let bytes = m.encode();
        prop_assert_eq!(Manifest::decode(&bytes), Some(m.clone()));
        prop_assert!(Manifest::decode(&bytes[..cut.index(bytes.len())]).is_none());
        // Stored in an entry frame, it comes back whole.
        let framed = encode_entry(&bytes).unwrap();
        prop_assert_eq!(Manifest::decode(&decode_entry(&framed).unwrap()), Some(m));

        let r = ResultEntry {
            stdout: &stdout,
            stderr: &stderr,
            outputs: outputs
                .iter()
                .map(|(role, data)| OutputBlob { role, data })
                .collect(),
            compile_ms,
        };
        let bytes = r.encode();
        let back = ResultEntry::decode(&bytes).unwrap();
        prop_assert_eq!(back.stdout, &stdout[..]);
        prop_assert_eq!(back.stderr, &stderr[..]);
        prop_assert_eq!(back.compile_ms, compile_ms);
        prop_assert_eq!(back.outputs.len(), outputs.len());
        for (b, (role, data)) in back.outputs.iter().zip(&outputs) {
            prop_assert_eq!(b.role, role.as_str());
            prop_assert_eq!(b.data, &data[..]);
        }
        prop_assert!(ResultEntry::decode(&bytes[..cut.index(bytes.len())]).is_none());
    }

    /// A manifest from a peer merges into any stored bytes: garbage incoming is refused,
    /// garbage stored counts as none, and the result keeps the incoming entries first,
    /// without stat stamps, within the cap.
    #[test]
    fn manifest_merge_keeps_incoming_first_within_the_cap(
        stored in prop::option::of(manifest_strategy()),
        incoming in manifest_strategy(),
        garbage in prop::collection::vec(any::<u8>(), 0..100),
    ) {
        let stored_bytes = stored.as_ref().map(Manifest::encode);
        let merged = manifest::merge(stored_bytes.as_deref(), &incoming.encode()).unwrap();
        let merged = Manifest::decode(&merged).unwrap();
        prop_assert!(merged.entries.len() <= MAX_MANIFEST_ENTRIES);
        let mut want: Vec<ManifestEntry> = Vec::new();
        for e in incoming.entries.iter().cloned().map(ManifestEntry::portable) {
            if !want.contains(&e) {
                want.push(e);
            }
        }
        want.truncate(MAX_MANIFEST_ENTRIES);
        prop_assert_eq!(&merged.entries[..want.len()], &want[..]);
        prop_assert_eq!(
            merged.preprocessor_only.as_ref(),
            stored.as_ref().and_then(|s| s.preprocessor_only.as_ref())
        );
        if Manifest::decode(&garbage).is_none() {
            prop_assert!(manifest::merge(stored_bytes.as_deref(), &garbage).is_none());
            let alone = manifest::merge(None, &incoming.encode());
            prop_assert_eq!(manifest::merge(Some(&garbage), &incoming.encode()), alone);
        }
    }
}

/// Entry payloads: incompressible bytes, and runs zstd shrinks.
fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..3000),
        (any::<u8>(), 0..20_000usize).prop_map(|(b, n)| vec![b; n]),
    ]
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

fn stamp() -> impl Strategy<Value = Option<StatStamp>> {
    prop::option::of(
        (
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<i64>(),
            any::<i64>(),
        )
            .prop_map(|(dev, ino, size, mtime_ns, ctime_ns)| StatStamp {
                dev,
                ino,
                size,
                mtime_ns,
                ctime_ns,
            }),
    )
}

fn manifest_strategy() -> impl Strategy<Value = Manifest> {
    let entry = (
        prop::collection::vec((bytes(16), any::<[u8; 32]>(), stamp()), 0..4),
        prop::collection::vec((bytes(16), stamp()), 0..3),
        prop::collection::vec(bytes(16), 0..3),
        // Few distinct results, so merges meet duplicates.
        0u8..4,
        prop::option::of(bytes(16)),
    )
        .prop_map(|(files, missing, not_file, result, pinned)| ManifestEntry {
            pinned: pinned.map(serde_bytes::ByteBuf::from),
            files: files
                .into_iter()
                .map(|(path, digest, stamp)| FileDigest {
                    path,
                    digest,
                    stamp,
                })
                .collect(),
            missing: missing
                .into_iter()
                .map(|(path, parent_stamp)| MissingPath { path, parent_stamp })
                .collect(),
            not_file: not_file
                .into_iter()
                .map(serde_bytes::ByteBuf::from)
                .collect(),
            present: vec![],
            result: farm::store::CacheKey([result; 32]),
        });
    (
        prop::option::of(("[ -~]{0,24}", any::<bool>())),
        prop::collection::vec(entry, 0..40),
    )
        .prop_map(|(marker, entries)| Manifest {
            preprocessor_only: marker
                .map(|(reason, uses_time)| PreprocessorOnly { reason, uses_time }),
            entries,
        })
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
        let mut r = std::io::Cursor::new(body);
        let _ = farm::protocol::read_sync::<farm::protocol::AgentRequest>(&mut r, 4096);
    }

    /// A frame says its own length, decodes to the message it was made from (plain or
    /// compressed), delimits it from the next frame, and is refused by a reader whose
    /// cap is below the message's size.
    #[test]
    fn frames_roundtrip_and_respect_the_cap(
        data in payload(),
        key in any::<[u8; 32]>(),
        next in bytes(64),
    ) {
        use farm::protocol::{body_len, decode, encode, read_sync, FrameError, MAX_FRAME};
        let msg = PeerRequest::Put(Item { kind: EntryKind::Manifest, key, data });
        let frame = encode(&msg);
        let n = body_len(frame[..4].try_into().unwrap(), MAX_FRAME).unwrap();
        prop_assert_eq!(n, frame.len() - 4);
        prop_assert_eq!(&decode::<PeerRequest>(&frame[4..], MAX_FRAME).unwrap(), &msg);
        let second = PeerRequest::HaveBlobs(next.iter().map(|&b| [b; 32]).collect());
        let mut stream = frame.clone();
        stream.extend_from_slice(&encode(&second));
        let mut r = std::io::Cursor::new(stream);
        prop_assert_eq!(&read_sync::<PeerRequest>(&mut r, MAX_FRAME).unwrap(), &msg);
        prop_assert_eq!(&read_sync::<PeerRequest>(&mut r, MAX_FRAME).unwrap(), &second);
        let end = read_sync::<PeerRequest>(&mut r, MAX_FRAME);
        prop_assert!(matches!(end, Err(FrameError::Closed)));
        // The message's own size, uncompressed: one byte less is over any reader's cap.
        let size = postcard::to_stdvec(&msg).unwrap().len();
        let mut r = std::io::Cursor::new(&frame);
        prop_assert!(read_sync::<PeerRequest>(&mut r, size - 1).is_err());
        let mut r = std::io::Cursor::new(&frame);
        prop_assert_eq!(&read_sync::<PeerRequest>(&mut r, size).unwrap(), &msg);
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
