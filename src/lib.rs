//! farm: a drop-in compiler cache (and, with farmd, a compiler farm).
//!
//! Code map, top to bottom (arrows point down only; docs/architecture.md has the full
//! picture and the invariants):
//! - [`entry`]: entry points (`farm-cc`, `farm-c++`, launcher, masquerade); [`cli`]: one
//!   file per `farm` command.
//! - [`shim`]: the per-compile flow, written once (key, look up through the tiers,
//!   execute, store, publish); its modes supply keys; its executors run a miss.
//! - [`key`]: base keys, compiler identity, manifests (match, record, merge), result
//!   entries.
//! - [`store`]: the `Tier` trait and `Tiered` (order + backfill); the local disk tier.
//!   Knows keys, kinds and bytes, never compilers.
//! - [`lang`]: one folder per compiler family behind `Family` and its capabilities
//!   (observed or declared keying; text jobs, tree jobs, warm compilers); the only code
//!   that knows flags.
//! - [`digest`]: content digests, stat stamps, the digest memo (below everything that
//!   keys).
//! - [`protocol`] (messages, framing), [`net`] (TLS), [`agent_client`], [`config`],
//!   [`stats`] (typed outcomes), [`journal`] (one line per compile), [`fsutil`].

pub mod agent_client;
pub mod buildtools;
pub mod cli;
pub mod config;
pub mod digest;
pub mod entry;
pub mod fsutil;
pub mod journal;
pub mod key;
pub mod lang;
pub mod net;
pub mod protocol;
pub mod reapi;
pub mod shim;
pub mod stats;
pub mod store;
pub mod toolchain;
pub mod why;
