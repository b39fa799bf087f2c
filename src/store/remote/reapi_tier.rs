//! The REAPI tier: farm's own entries in a REAPI server's Action Cache and CAS.
//!
//! An entry of kind K under key H is the result of a synthetic Action that no
//! server ever runs: its Command's arguments are `["farm-entry", K, hex(H)]`, its
//! input root the empty directory, no platform. The ActionResult has one output
//! file, `entry`, whose blob in the CAS is the entry as every remote tier stores it
//! (framed with kind and key, checksummed; a tree job's blob raw), so a read checks
//! the CAS digest and then the frame. docs/reapi.md.

use std::future::Future;
use std::sync::Arc;

use super::RemoteTier;
use crate::reapi::proto::{Action, ActionResult, Command, Digest, Directory, OutputFile};
use crate::reapi::{digest_of, matches, message_digest, Client, ReapiError};
use crate::store::{CacheError, CacheKey, EntryKind};

/// The name of the one output file of an entry's Action.
pub const ENTRY_OUTPUT: &str = "entry";

/// The kind as an entry's Command names it.
pub fn kind_name(kind: EntryKind) -> &'static str {
    match kind {
        EntryKind::Result => "result",
        EntryKind::Manifest => "manifest",
        EntryKind::Blob => "blob",
    }
}

/// The synthetic Action of an entry: (Command digest and bytes, Action digest and
/// bytes).
pub fn entry_action(kind: EntryKind, key: &CacheKey) -> ((Digest, Vec<u8>), (Digest, Vec<u8>)) {
    let command = message_digest(&Command {
        arguments: vec!["farm-entry".into(), kind_name(kind).into(), key.hex()],
        ..Default::default()
    });
    let action = message_digest(&Action {
        command_digest: Some(command.0.clone()),
        input_root_digest: Some(message_digest(&Directory::default()).0),
        ..Default::default()
    });
    (command, action)
}

impl RemoteTier {
    /// The REAPI client of this tier (made on first use, inside the runtime).
    fn reapi_client(&self) -> Result<Arc<Client>, String> {
        let cfg = self
            .spec
            .reapi
            .as_ref()
            .ok_or_else(|| "not a REAPI tier".to_string())?;
        self.reapi
            .get_or_init(|| Client::new(cfg).map(Arc::new).map_err(|e| e.to_string()))
            .clone()
    }

    /// Runs one tier operation (a few calls) with the tier's deadline and breaker,
    /// as the opendal tiers' calls run.
    async fn reapi_call<T, Fut>(
        &self,
        what: &str,
        write: bool,
        kind: EntryKind,
        key: &CacheKey,
        f: impl FnOnce(Arc<Client>) -> Fut,
    ) -> Result<T, CacheError>
    where
        Fut: Future<Output = Result<T, ReapiError>>,
    {
        self.check_skip(write)?;
        let client = match self.reapi_client() {
            Ok(c) => c,
            Err(e) => return Err(self.record_failure(what, write, &e)),
        };
        let limit = self.call_limit();
        match tokio::time::timeout(limit, f(client)).await {
            Ok(Ok(v)) => {
                self.record_success();
                Ok(v)
            }
            Ok(Err(ReapiError::Corrupt { .. })) => Err(CacheError::Corrupt {
                path: format!("{}/{}", self.spec.url, self.object(kind, key)).into(),
                what: "the server's blob does not match its digest",
            }),
            Ok(Err(e)) => Err(self.record_failure(what, write, &e.to_string())),
            Err(_) => Err(self.record_failure(
                what,
                write,
                &format!("no answer within {} ms", limit.as_millis()),
            )),
        }
    }

    /// The stored form of an entry (unchecked), `None` when the server has none.
    pub(super) async fn reapi_read(
        &self,
        kind: EntryKind,
        key: &CacheKey,
    ) -> Result<Option<Vec<u8>>, CacheError> {
        let (_, (action, _)) = entry_action(kind, key);
        self.reapi_call("read", false, kind, key, |c| async move {
            let Some(result) = c
                .get_action_result_inlined(&action, &[ENTRY_OUTPUT])
                .await?
            else {
                return Ok(None);
            };
            let Some(file) = result.output_files.iter().find(|f| f.path == ENTRY_OUTPUT) else {
                return Ok(None);
            };
            let d = file.digest.clone().unwrap_or_default();
            if !file.contents.is_empty() && matches(&d, &file.contents) {
                return Ok(Some(file.contents.clone()));
            }
            c.read_blob(&d).await
        })
        .await
    }

    /// Writes an entry's stored form: its blob and Action in the CAS, then the
    /// Action Cache entry.
    pub(super) async fn reapi_write(
        &self,
        kind: EntryKind,
        key: &CacheKey,
        body: Vec<u8>,
    ) -> Result<(), CacheError> {
        let ((cmd, cmd_bytes), (action, action_bytes)) = entry_action(kind, key);
        self.reapi_call("write", true, kind, key, |c| async move {
            if !c.capabilities().await?.ac_update_enabled {
                return Err(ReapiError::Setup {
                    server: c.server().to_string(),
                    detail: "the server does not let clients write its Action Cache".into(),
                });
            }
            let d = digest_of(&body);
            c.upload(&[
                (d.clone(), &body),
                (cmd, &cmd_bytes),
                (action.clone(), &action_bytes),
            ])
            .await?;
            let result = ActionResult {
                output_files: vec![OutputFile {
                    path: ENTRY_OUTPUT.into(),
                    digest: Some(d),
                    ..Default::default()
                }],
                ..Default::default()
            };
            c.update_action_result(&action, result).await
        })
        .await
    }

    /// Whether the server holds the entry: its Action Cache entry, and the blob in
    /// the CAS.
    pub(super) async fn reapi_exists(
        &self,
        kind: EntryKind,
        key: &CacheKey,
    ) -> Result<bool, CacheError> {
        let (_, (action, _)) = entry_action(kind, key);
        self.reapi_call("stat", false, kind, key, |c| async move {
            let Some(result) = c.get_action_result(&action).await? else {
                return Ok(false);
            };
            let Some(d) = result
                .output_files
                .iter()
                .find(|f| f.path == ENTRY_OUTPUT)
                .and_then(|f| f.digest.clone())
            else {
                return Ok(false);
            };
            Ok(c.find_missing(&[d]).await?.is_empty())
        })
        .await
    }

    /// An Action Cache has no delete: the entry's Action gets a result without
    /// outputs, which reads as "none".
    pub(super) async fn reapi_remove(
        &self,
        kind: EntryKind,
        key: &CacheKey,
    ) -> Result<(), CacheError> {
        let (_, (action, _)) = entry_action(kind, key);
        self.reapi_call("delete", true, kind, key, |c| async move {
            c.update_action_result(&action, ActionResult::default())
                .await
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_actions_are_fixed_and_distinct() {
        let k = CacheKey([7; 32]);
        let (cmd, action) = entry_action(EntryKind::Result, &k);
        assert_eq!(
            entry_action(EntryKind::Result, &k),
            (cmd.clone(), action.clone())
        );
        assert_ne!(entry_action(EntryKind::Manifest, &k).1 .0, action.0);
        assert_ne!(
            entry_action(EntryKind::Result, &CacheKey([8; 32])).1 .0,
            action.0
        );
        use prost::Message;
        let c = Command::decode(cmd.1.as_slice()).unwrap();
        assert_eq!(c.arguments, ["farm-entry", "result", &k.hex()]);
        let a = Action::decode(action.1.as_slice()).unwrap();
        assert_eq!(a.input_root_digest.unwrap(), digest_of(b""));
        assert_eq!(a.command_digest.unwrap(), cmd.0);
    }
}
