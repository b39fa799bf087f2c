//! farm: a drop-in compiler cache (and, with farmd, a compiler farm).
//!
//! Code map (docs/architecture.md has the full picture):
//! - [`lang`]: one module per compiler family; the only code that knows flags.
//! - [`key`]: cache keys, direct-mode manifests, result entries.
//! - [`cache`]: content-addressed storage; knows nothing about compilers.
//! - [`shim`]: the per-compile flow (hit, miss, pass-through).
//! - [`entry`]: entry points (`farm-cc`, `farm-c++`, launcher, masquerade).
//! - [`cli`] (one file per `farm` command), [`config`], [`stats`] (typed outcomes), [`fsutil`].

pub mod agent_client;
pub mod buildtools;
pub mod cli;
pub mod config;
pub mod digest;
pub mod entry;
pub mod fsutil;
pub mod key;
pub mod lang;
pub mod net;
pub mod protocol;
pub mod shim;
pub mod stats;
pub mod store;

/// The store's old name, kept while callers move to [`store`].
pub use store as cache;
