//! The shim's side of the agent socket: blocking, one connection per compile, used
//! only on a miss (the hit path never gets here).

use std::io;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::protocol::{self, AgentRequest, AgentResponse, FrameError};

/// How long a shim waits for the agent's answer. The agent answers "compile at
/// home" long before this when peers stall (its job deadline has a lower ceiling);
/// this only bounds a hung agent.
pub const ANSWER_WAIT: Duration = Duration::from_secs(600);

pub struct AgentClient {
    stream: UnixStream,
}

impl AgentClient {
    /// Connects to the agent. `Err` when no farmd listens there: the caller compiles
    /// at home without delay.
    pub fn connect(path: &Path) -> io::Result<AgentClient> {
        let stream = UnixStream::connect(path)?;
        stream.set_write_timeout(Some(Duration::from_secs(10)))?;
        stream.set_read_timeout(Some(ANSWER_WAIT))?;
        Ok(AgentClient { stream })
    }

    /// Sends one request and waits for its answer.
    pub fn call(&mut self, req: &AgentRequest) -> Result<AgentResponse, FrameError> {
        protocol::write_sync(&mut self.stream, req)?;
        protocol::read_sync(&mut self.stream, protocol::MAX_FRAME)
    }

    /// Sends one request and waits at most `wait` for its answer (the connection is
    /// then of no further use: a late answer would come next).
    pub fn call_within(
        &mut self,
        req: &AgentRequest,
        wait: Duration,
    ) -> Result<AgentResponse, FrameError> {
        self.stream.set_read_timeout(Some(wait))?;
        self.call(req)
    }

    /// Sends a request whose answer does not matter to this compile.
    pub fn tell(&mut self, req: &AgentRequest) {
        if let Err(e) = protocol::write_sync(&mut self.stream, req) {
            tracing::info!(error = %e, "agent did not take a notice");
        }
    }
}
