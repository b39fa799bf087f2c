//! javac kept warm: farmd keeps javac loaded and JIT-compiled in a helper JVM
//! (FarmJavacHelper.java beside this file, built with the JDK it serves on first use)
//! and runs compiles there. Each compile gets a fresh compiler context and file
//! manager (javax.tools' `Tool.run`), so nothing a compile loads survives it.
//!
//! The helper's protocol on stdin/stdout, big-endian: it greets with [`HELLO`]; a
//! request is `u32 argc` then argc × (`u32 length`, UTF-8 bytes); a response is
//! `i32 exit code`, stdout and stderr as `u32 length` + bytes, then `u64` heap used
//! and `u64` heap max.

use std::path::{Path, PathBuf};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{java_home_of, Javac};
use crate::lang::{
    Invocation, Passthrough, WarmCommand, WarmCompiler, WarmFuture, WarmJob, WarmReader, WarmReply,
    WarmWriter,
};

const HELPER_CLASS: &str = "FarmJavacHelper";
const HELPER_SOURCE: &[(&str, &str)] =
    &[("FarmJavacHelper.java", include_str!("FarmJavacHelper.java"))];
/// The helper's greeting ("FRM1").
const HELLO: u32 = 0x4652_4D31;
/// Largest stdout or stderr a helper may report (the rest is a protocol error).
const MAX_STREAM: usize = 16 << 20;

impl WarmCompiler for Javac {
    fn warm_job(&self, inv: &Invocation, dirs: &[PathBuf]) -> Result<WarmJob, Passthrough> {
        let (home, tree) = self.remote_job(inv, dirs)?;
        Ok(WarmJob {
            installation: home,
            args: tree.args,
            paths_rewritten: tree.paths_rewritten,
        })
    }

    fn installation_of(&self, canonical: &Path) -> PathBuf {
        java_home_of(canonical)
    }

    fn server_sources(&self) -> &'static [(&'static str, &'static str)] {
        HELPER_SOURCE
    }

    fn server_built(&self) -> &'static str {
        "FarmJavacHelper.class"
    }

    fn server_build(&self, installation: &Path, src: &Path, out: &Path) -> WarmCommand {
        WarmCommand {
            program: installation.join("bin/javac"),
            args: vec![
                "-d".into(),
                out.to_string_lossy().into_owned(),
                src.join(HELPER_SOURCE[0].0).to_string_lossy().into_owned(),
            ],
        }
    }

    fn server_command(&self, installation: &Path, built: &Path, tmp: Option<&Path>) -> WarmCommand {
        let mut args: Vec<String> = [
            "-Xshare:auto",
            "-XX:+UseSerialGC",
            "-Xss4m",
            "-Xmx1g",
            "-Duser.language=en",
            "-Duser.country=US",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(tmp) = tmp {
            args.push(format!("-Djava.io.tmpdir={}", tmp.display()));
        }
        args.extend([
            "-cp".into(),
            built.to_string_lossy().into_owned(),
            HELPER_CLASS.into(),
        ]);
        WarmCommand {
            program: installation.join("bin/java"),
            args,
        }
    }

    fn ready<'a>(&'a self, from: WarmReader<'a>) -> WarmFuture<'a, ()> {
        Box::pin(async move {
            let hello = from.read_u32().await?;
            if hello != HELLO {
                return Err(std::io::Error::other(format!(
                    "the javac helper said {hello:#x}, not hello"
                )));
            }
            Ok(())
        })
    }

    fn exchange<'a>(
        &'a self,
        to: WarmWriter<'a>,
        from: WarmReader<'a>,
        args: &'a [String],
    ) -> WarmFuture<'a, WarmReply> {
        Box::pin(async move {
            let mut req = Vec::with_capacity(4 + args.iter().map(|a| a.len() + 4).sum::<usize>());
            req.extend_from_slice(&(args.len() as u32).to_be_bytes());
            for a in args {
                req.extend_from_slice(&(a.len() as u32).to_be_bytes());
                req.extend_from_slice(a.as_bytes());
            }
            to.write_all(&req).await?;
            to.flush().await?;
            let exit_code = from.read_i32().await?;
            let stdout = read_blob(from).await?;
            let stderr = read_blob(from).await?;
            let memory_used = from.read_u64().await?;
            let memory_max = from.read_u64().await?;
            Ok(WarmReply {
                exit_code,
                stdout,
                stderr,
                memory_used,
                memory_max,
            })
        })
    }
}

async fn read_blob(r: WarmReader<'_>) -> std::io::Result<Vec<u8>> {
    let n = r.read_u32().await? as usize;
    if n > MAX_STREAM {
        return Err(std::io::Error::other(format!("{n} bytes of output")));
    }
    let mut b = vec![0; n];
    r.read_exact(&mut b).await?;
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The byte protocol of FarmJavacHelper.java, against a scripted helper.
    #[test]
    fn exchange_speaks_the_helper_protocol() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut reply = Vec::new();
            reply.extend_from_slice(&HELLO.to_be_bytes());
            reply.extend_from_slice(&1i32.to_be_bytes());
            reply.extend_from_slice(&2u32.to_be_bytes());
            reply.extend_from_slice(b"ok");
            reply.extend_from_slice(&0u32.to_be_bytes());
            reply.extend_from_slice(&5u64.to_be_bytes());
            reply.extend_from_slice(&9u64.to_be_bytes());
            let mut from: &[u8] = &reply;
            let mut to = Vec::new();
            JAVAC_WARM.ready(&mut from).await.unwrap();
            let args = vec!["-d".to_string(), "é".to_string()];
            let r = JAVAC_WARM
                .exchange(&mut to, &mut from, &args)
                .await
                .unwrap();
            assert_eq!(
                r,
                WarmReply {
                    exit_code: 1,
                    stdout: b"ok".to_vec(),
                    stderr: Vec::new(),
                    memory_used: 5,
                    memory_max: 9,
                }
            );
            let mut want = Vec::new();
            want.extend_from_slice(&2u32.to_be_bytes());
            want.extend_from_slice(&2u32.to_be_bytes());
            want.extend_from_slice(b"-d");
            want.extend_from_slice(&2u32.to_be_bytes());
            want.extend_from_slice("é".as_bytes());
            assert_eq!(to, want);
            // A stream past the cap is a protocol error, not an allocation.
            let mut big: &[u8] = &[0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff];
            assert!(JAVAC_WARM.exchange(&mut to, &mut big, &args).await.is_err());
        });
    }

    const JAVAC_WARM: &Javac = &super::super::JAVAC;
}
