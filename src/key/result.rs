//! Result entries: a successful compile's outputs and what it printed (docs/cache-key.md,
//! "Result entries").

use serde::{Deserialize, Serialize};

/// One output file of a result, by role.
#[derive(Serialize, Deserialize, Debug)]
pub struct OutputBlob<'a> {
    pub role: &'a str,
    #[serde(with = "serde_bytes")]
    pub data: &'a [u8],
}

/// A successful compile: outputs, what it printed, and how long it took.
#[derive(Serialize, Deserialize, Debug)]
pub struct ResultEntry<'a> {
    #[serde(with = "serde_bytes")]
    pub stdout: &'a [u8],
    #[serde(with = "serde_bytes")]
    pub stderr: &'a [u8],
    #[serde(borrow)]
    pub outputs: Vec<OutputBlob<'a>>,
    pub compile_ms: u64,
}

impl<'a> ResultEntry<'a> {
    pub fn decode(data: &'a [u8]) -> Option<ResultEntry<'a>> {
        postcard::from_bytes(data).ok()
    }
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("result serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_roundtrip() {
        let r = ResultEntry {
            stdout: b"out",
            stderr: b"warning: x\n",
            outputs: vec![OutputBlob {
                role: "object",
                data: b"\x7fELF",
            }],
            compile_ms: 42,
        };
        let bytes = r.encode();
        let back = ResultEntry::decode(&bytes).unwrap();
        assert_eq!(back.stderr, b"warning: x\n");
        assert_eq!(back.outputs[0].data, b"\x7fELF");
        assert_eq!(back.compile_ms, 42);
    }
}
