//! The client for synchronous callers (the shim: one compile, one process). Its
//! runtime is made on first use — only after a local miss, never on the hit path —
//! and has one thread: the calls of one compile run one after another.

use std::sync::OnceLock;

use super::proto::{ActionResult, Digest};
use super::{Capabilities, Client, ReapiConfig, ReapiError};

/// A [`Client`] with its own current-thread runtime.
pub struct BlockingClient {
    cfg: ReapiConfig,
    rt: OnceLock<Result<(tokio::runtime::Runtime, Client), String>>,
}

impl BlockingClient {
    /// Makes nothing yet: the runtime and channel come with the first call.
    pub fn new(cfg: ReapiConfig) -> BlockingClient {
        BlockingClient {
            cfg,
            rt: OnceLock::new(),
        }
    }

    fn run<'a, T>(
        &'a self,
        f: impl FnOnce(
            &'a Client,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<T, ReapiError>> + 'a>,
        >,
    ) -> Result<T, ReapiError> {
        let made = self.rt.get_or_init(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start a runtime: {e}"))?;
            let client = {
                let _in = rt.enter();
                Client::new(&self.cfg).map_err(|e| e.to_string())?
            };
            Ok((rt, client))
        });
        match made {
            Ok((rt, client)) => rt.block_on(f(client)),
            Err(detail) => Err(ReapiError::Setup {
                server: self.cfg.server(),
                detail: detail.clone(),
            }),
        }
    }

    pub fn capabilities(&self) -> Result<Capabilities, ReapiError> {
        self.run(|c| Box::pin(c.capabilities()))
    }

    pub fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>, ReapiError> {
        self.run(|c| Box::pin(c.find_missing(digests)))
    }

    pub fn upload(&self, blobs: &[(Digest, &[u8])]) -> Result<(), ReapiError> {
        self.run(|c| Box::pin(c.upload(blobs)))
    }

    pub fn read_blob(&self, d: &Digest) -> Result<Option<Vec<u8>>, ReapiError> {
        self.run(|c| Box::pin(c.read_blob(d)))
    }

    pub fn get_action_result(&self, action: &Digest) -> Result<Option<ActionResult>, ReapiError> {
        self.run(|c| Box::pin(c.get_action_result(action)))
    }

    pub fn get_action_result_inlined(
        &self,
        action: &Digest,
        inline: &[&str],
    ) -> Result<Option<ActionResult>, ReapiError> {
        self.run(|c| Box::pin(c.get_action_result_inlined(action, inline)))
    }

    pub fn update_action_result(
        &self,
        action: &Digest,
        result: ActionResult,
    ) -> Result<(), ReapiError> {
        self.run(|c| Box::pin(c.update_action_result(action, result)))
    }
}
