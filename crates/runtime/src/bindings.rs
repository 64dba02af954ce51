//! Host-side bindings of the `wsgate:plugin` contract, one module per
//! version. Versions share their types (a later version's records and
//! variants are the earlier one's, so the gateway handles one set); each
//! version's hooks are looked up under its own export names.

#![allow(missing_docs)]

use wasmtime::component::{Instance, InstancePre};
use wasmtime::{AsContextMut, Result};

use crate::host::HostState;
use crate::{Contract, Roles};

/// `wsgate:plugin@0.1.0`: released, frozen.
pub mod v0_1 {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "filter",
        // The host functions that take what a budget bounds can fault the call.
        imports: {
            "wsgate:plugin/state.set": trappable,
            "wsgate:plugin/state.set-attribute": trappable,
        },
    });
}

/// `wsgate:plugin@0.2.0`: 0.1.0 plus `session` and `quota`; unreleased.
pub mod v0_2 {
    wasmtime::component::bindgen!({
        path: "../../wit/0.2.0",
        world: "filter",
        imports: {
            "wsgate:plugin/state.set": trappable,
            "wsgate:plugin/state.set-attribute": trappable,
            "wsgate:plugin/quota.take": trappable,
            "wsgate:plugin/quota.hold": trappable,
        },
        with: {
            "wsgate:plugin/types@0.2.0": super::v0_1::wsgate::plugin::types,
        },
    });
}

pub use v0_1::wsgate::plugin::types;

/// One hook's place in a component, per contract version.
enum Indices<V1, V2> {
    V0_1(V1),
    V0_2(V2),
}

/// One hook of one live instance, per contract version.
pub enum Hook<V1, V2> {
    V0_1(V1),
    V0_2(V2),
}

type LifecycleIndices = Indices<
    v0_1::exports::wsgate::plugin::lifecycle::GuestIndices,
    v0_2::exports::wsgate::plugin::lifecycle::GuestIndices,
>;
type UpgradeIndices = Indices<
    v0_1::exports::wsgate::plugin::upgrade::GuestIndices,
    v0_2::exports::wsgate::plugin::upgrade::GuestIndices,
>;
type MessageIndices = Indices<
    v0_1::exports::wsgate::plugin::message::GuestIndices,
    v0_2::exports::wsgate::plugin::message::GuestIndices,
>;

/// The `lifecycle` hook of an instance.
pub type Lifecycle = Hook<
    v0_1::exports::wsgate::plugin::lifecycle::Guest,
    v0_2::exports::wsgate::plugin::lifecycle::Guest,
>;
/// The `upgrade` hook of an instance.
pub type Upgrade = Hook<
    v0_1::exports::wsgate::plugin::upgrade::Guest,
    v0_2::exports::wsgate::plugin::upgrade::Guest,
>;
/// The `message` hook of an instance.
pub type MessageHook = Hook<
    v0_1::exports::wsgate::plugin::message::Guest,
    v0_2::exports::wsgate::plugin::message::Guest,
>;

/// Resolve one hook's indices for the component's contract version.
macro_rules! indices {
    ($contract:expr, $pre:expr, $hook:ident) => {
        match $contract {
            Contract::V0_1 => Indices::V0_1(
                v0_1::exports::wsgate::plugin::$hook::GuestIndices::new($pre)?,
            ),
            Contract::V0_2 => Indices::V0_2(
                v0_2::exports::wsgate::plugin::$hook::GuestIndices::new($pre)?,
            ),
        }
    };
}

/// Look one hook up in an instance.
macro_rules! load {
    ($indices:expr, $store:expr, $instance:expr) => {
        match $indices {
            Indices::V0_1(indices) => Hook::V0_1(indices.load(&mut $store, $instance)?),
            Indices::V0_2(indices) => Hook::V0_2(indices.load(&mut $store, $instance)?),
        }
    };
}

/// Where one plugin's hooks sit in its component, resolved once at load.
pub struct Exports {
    lifecycle: LifecycleIndices,
    upgrade: Option<UpgradeIndices>,
    message: Option<MessageIndices>,
}

/// The hooks of one live instance.
pub struct Hooks {
    pub lifecycle: Lifecycle,
    pub upgrade: Option<Upgrade>,
    pub message: Option<MessageHook>,
}

impl Exports {
    /// Resolve the hooks `roles` says the component exports, under the
    /// export names of its contract version.
    pub fn new(pre: &InstancePre<HostState>, roles: Roles, contract: Contract) -> Result<Self> {
        Ok(Self {
            lifecycle: indices!(contract, pre, lifecycle),
            upgrade: if roles.upgrade {
                Some(indices!(contract, pre, upgrade))
            } else {
                None
            },
            message: if roles.message {
                Some(indices!(contract, pre, message))
            } else {
                None
            },
        })
    }

    /// Look the hooks up in an instance.
    pub fn load(&self, mut store: impl AsContextMut, instance: &Instance) -> Result<Hooks> {
        let upgrade = match &self.upgrade {
            Some(indices) => Some(load!(indices, store, instance)),
            None => None,
        };
        let message = match &self.message {
            Some(indices) => Some(load!(indices, store, instance)),
            None => None,
        };
        Ok(Hooks {
            lifecycle: load!(&self.lifecycle, store, instance),
            upgrade,
            message,
        })
    }
}

impl Lifecycle {
    /// Call `configure`.
    pub fn call_configure(
        &self,
        store: impl AsContextMut<Data = HostState>,
        config: &str,
    ) -> Result<std::result::Result<(), types::ConfigError>> {
        match self {
            Self::V0_1(hook) => hook.call_configure(store, config),
            Self::V0_2(hook) => hook.call_configure(store, config),
        }
    }
}

impl Upgrade {
    /// Call `on-upgrade`.
    pub fn call_on_upgrade(
        &self,
        store: impl AsContextMut<Data = HostState>,
        request: &types::UpgradeRequest,
    ) -> Result<types::UpgradeVerdict> {
        match self {
            Self::V0_1(hook) => hook.call_on_upgrade(store, request),
            Self::V0_2(hook) => hook.call_on_upgrade(store, request),
        }
    }
}

impl MessageHook {
    /// Call `on-message`.
    pub fn call_on_message(
        &self,
        store: impl AsContextMut<Data = HostState>,
        direction: types::Direction,
        message: &types::Message,
    ) -> Result<types::MessageVerdict> {
        match self {
            Self::V0_1(hook) => hook.call_on_message(store, direction, message),
            Self::V0_2(hook) => hook.call_on_message(store, direction, message),
        }
    }
}
