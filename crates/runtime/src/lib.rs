//! The plugin runtime: hosts wsgate plugins (WebAssembly components) with wasmtime.
//!
//! * [`Runtime`] owns the engine (epoch interruption, trimmed features), the
//!   linker (the `wsgate:plugin/host` interface and WASI with an empty
//!   context) and the epoch ticker thread.
//! * [`Runtime::load`] compiles one declared plugin, checks its digest and
//!   tells its role from its exports.
//! * [`PluginPool`] keeps fungible instances of one plugin with one
//!   configuration; any instance serves any connection, one call at a time.
//!   Per-connection state lives in the host ([`CallContext`]), not in guests.
//! * A call that traps, overruns its deadline or its memory cap returns a
//!   [`PluginFault`]; the instance that failed is discarded, never reused.
//! * A plugin whose recent calls are slow has them run on threads of its
//!   own, off the I/O workers ([`PluginPool::on_message_placed`]).

#![deny(clippy::indexing_slicing)]

mod bindings;
mod cache;
mod engine;
mod host;
mod inspect;
mod limiter;
mod load;
mod offload;
mod pool;
mod session;
pub mod signing;
pub mod striped;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use wasmtime::Engine;
use wasmtime::component::{Component, Linker};

pub use bindings::types::{
    CloseFrame, Direction, Header, HeaderOp, LogLevel, Message, MessageVerdict, Rejection, Route,
    UpgradeRequest, UpgradeVerdict,
};
pub use bindings::{CloseFrameParam, MessageParam};
pub use engine::EPOCH_TICK;
pub use host::{CallContext, ConnectionInfo, PluginState, StateMap};
pub use inspect::{ComponentInfo, Contract, Roles};
pub use load::{Budget, HostBudget, Plugin};
pub use offload::{OFFLOAD_NICE, OffloadSettings, SAMPLE_CAP, lower_thread_priority};
pub use pool::{
    FaultKind, LATENCY_BUCKETS_US, LatencyHistogram, PluginFault, PluginPool, PluginStats,
    TIME_ONE_CALL_IN, drawn_for_sample,
};
pub use session::Expiry;

use host::HostState;

/// Why the runtime could not start or a plugin could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The wasmtime engine or linker could not be set up.
    #[error("cannot start the plugin runtime: {0}")]
    Engine(String),
    /// The plugin's file could not be read.
    #[error("plugin {plugin}: cannot read {path}: {message}")]
    Read {
        /// The plugin as `name@version`.
        plugin: String,
        /// The file.
        path: String,
        /// The I/O error.
        message: String,
    },
    /// The file's digest differs from the pinned one.
    #[error(
        "plugin {plugin}: digest mismatch: the configuration pins {expected} but {path} is {actual}"
    )]
    Digest {
        /// The plugin as `name@version`.
        plugin: String,
        /// The file.
        path: String,
        /// The pinned digest.
        expected: String,
        /// The file's digest.
        actual: String,
    },
    /// The file is not a valid component, or it does not fit the contract.
    #[error("plugin {plugin}: {message}")]
    Invalid {
        /// The plugin as `name@version`.
        plugin: String,
        /// What is wrong.
        message: String,
    },
    /// The plugin's signature is missing where required, or does not verify.
    #[error("plugin {plugin}: {message}")]
    Signature {
        /// The plugin as `name@version`.
        plugin: String,
        /// Why it was refused.
        message: String,
    },
    /// The plugin refused its configuration.
    #[error("plugin {plugin} rejects its config at `{field}`: {message}")]
    Config {
        /// The plugin as `name@version`.
        plugin: String,
        /// The offending field, as a JSON Pointer (empty: the whole config).
        field: String,
        /// The plugin's explanation.
        message: String,
    },
    /// Creating or configuring an instance failed (trap, limit).
    #[error("plugin {plugin}: cannot create an instance: {message}")]
    Instantiate {
        /// The plugin as `name@version`.
        plugin: String,
        /// What failed.
        message: String,
    },
}

/// The engine, linker and epoch ticker shared by every plugin.
#[derive(Clone)]
pub struct Runtime {
    engine: Engine,
    /// The engine's epoch ticker (call deadlines).
    ticker: Arc<engine::EpochTicker>,
    linker: Arc<Linker<HostState>>,
    /// Compiled components by content digest: reloading an unchanged plugin
    /// (another endpoint, a new configuration) skips compilation.
    compiled: Arc<Mutex<HashMap<String, Component>>>,
    /// Where precompiled components persist across restarts, if anywhere.
    cache_dir: Option<std::path::PathBuf>,
    /// The quotas plugins count in (`quota.take`).
    quotas: Arc<wsgate_quota::Quotas>,
}

#[cfg(test)]
mod tests {
    use sha2::Digest;

    /// Released contract versions never change: plugins built against
    /// `wsgate:plugin@0.1.0` must keep loading. Changing the WIT means a new
    /// package version (and a new entry here), never an edit of this one.
    #[test]
    fn the_released_wit_contract_is_unchanged() {
        let text = include_str!("../../../wit/plugin.wit");
        assert!(text.contains("package wsgate:plugin@0.1.0;"));
        let digest = format!("{:x}", sha2::Sha256::digest(text.as_bytes()));
        assert_eq!(
            digest, "6a0a48eaf9c92e3c4581c2e613732f197cf89816a243bfe384e52d3e4a66917b",
            "wit/plugin.wit changed: released contract text is frozen; add a new package version instead"
        );
    }
}
