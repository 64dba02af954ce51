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

/// The hooks of `wsgate:plugin@0.1.0` (no host functions), with
/// parameters borrowed: a message is lowered into the guest straight from
/// the gateway's bytes, without an owned copy first. Only the `message`
/// hook is called through these (every type has to be used by the world
/// for borrowed bindings to generate).
pub mod v0_1_borrowed {
    wasmtime::component::bindgen!({
        path: "../../wit",
        inline: "
            package wsgate:host;
            world exports {
                export wsgate:plugin/lifecycle@0.1.0;
                export wsgate:plugin/upgrade@0.1.0;
                export wsgate:plugin/message@0.1.0;
            }
        ",
        world: "wsgate:host/exports",
        ownership: Borrowing { duplicate_if_necessary: true },
    });
}

/// The hooks of `wsgate:plugin@0.2.0` with parameters borrowed (see
/// [`v0_1_borrowed`]).
pub mod v0_2_borrowed {
    wasmtime::component::bindgen!({
        path: "../../wit/0.2.0",
        inline: "
            package wsgate:host;
            world exports {
                export wsgate:plugin/lifecycle@0.2.0;
                export wsgate:plugin/upgrade@0.2.0;
                export wsgate:plugin/message@0.2.0;
            }
        ",
        world: "wsgate:host/exports",
        ownership: Borrowing { duplicate_if_necessary: true },
        with: {
            "wsgate:plugin/types@0.2.0": super::v0_1_borrowed::wsgate::plugin::types,
        },
    });
}

pub use v0_1::wsgate::plugin::types;
pub use v0_1_borrowed::wsgate::plugin::types::{CloseFrameParam, MessageParam};

use v0_1_borrowed::wsgate::plugin::types as borrowed;

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
    v0_1_borrowed::exports::wsgate::plugin::message::GuestIndices,
    v0_2_borrowed::exports::wsgate::plugin::message::GuestIndices,
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
/// The `message` hook of an instance (called with borrowed parameters).
pub type MessageHook = Hook<
    v0_1_borrowed::exports::wsgate::plugin::message::Guest,
    v0_2_borrowed::exports::wsgate::plugin::message::Guest,
>;

/// Resolve one hook's indices for the component's contract version.
macro_rules! indices {
    ($contract:expr, $pre:expr, $hook:ident) => {
        indices!($contract, $pre, $hook, v0_1, v0_2)
    };
    ($contract:expr, $pre:expr, $hook:ident, $v0_1:ident, $v0_2:ident) => {
        match $contract {
            Contract::V0_1 => Indices::V0_1(
                $v0_1::exports::wsgate::plugin::$hook::GuestIndices::new($pre)?,
            ),
            Contract::V0_2 => Indices::V0_2(
                $v0_2::exports::wsgate::plugin::$hook::GuestIndices::new($pre)?,
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
                Some(indices!(
                    contract,
                    pre,
                    message,
                    v0_1_borrowed,
                    v0_2_borrowed
                ))
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
        message: MessageParam<'_>,
    ) -> Result<types::MessageVerdict> {
        let direction = borrowed::Direction::from(direction);
        let verdict = match self {
            Self::V0_1(hook) => hook.call_on_message(store, direction, message),
            Self::V0_2(hook) => hook.call_on_message(store, direction, message),
        }?;
        Ok(verdict.into())
    }
}

impl From<types::Direction> for borrowed::Direction {
    fn from(direction: types::Direction) -> Self {
        match direction {
            types::Direction::ClientToServer => Self::ClientToServer,
            types::Direction::ServerToClient => Self::ServerToClient,
        }
    }
}

/// A verdict of the borrowing bindings as the gateway's (its messages
/// moved, not copied).
impl From<borrowed::MessageVerdict> for types::MessageVerdict {
    fn from(verdict: borrowed::MessageVerdict) -> Self {
        let moved = |messages: Vec<borrowed::MessageResult>| {
            messages.into_iter().map(types::Message::from).collect()
        };
        match verdict {
            borrowed::MessageVerdict::Forward => Self::Forward,
            borrowed::MessageVerdict::Replace(messages) => Self::Replace(moved(messages)),
            borrowed::MessageVerdict::Drop => Self::Drop,
            borrowed::MessageVerdict::Close(frame) => Self::Close(frame.into()),
            borrowed::MessageVerdict::Reply(messages) => Self::Reply(moved(messages)),
        }
    }
}

/// A message a plugin returned, as the gateway's (moved, not copied).
impl From<borrowed::MessageResult> for types::Message {
    fn from(message: borrowed::MessageResult) -> Self {
        match message {
            borrowed::MessageResult::Text(text) => Self::Text(text),
            borrowed::MessageResult::Binary(data) => Self::Binary(data),
            borrowed::MessageResult::Ping(data) => Self::Ping(data),
            borrowed::MessageResult::Pong(data) => Self::Pong(data),
            borrowed::MessageResult::Close(frame) => Self::Close(frame.map(Into::into)),
        }
    }
}

/// A close frame a plugin returned, as the gateway's.
impl From<borrowed::CloseFrameResult> for types::CloseFrame {
    fn from(frame: borrowed::CloseFrameResult) -> Self {
        Self {
            code: frame.code,
            reason: frame.reason,
        }
    }
}

/// An owned message seen as a borrowed parameter.
impl<'a> From<&'a types::Message> for MessageParam<'a> {
    fn from(message: &'a types::Message) -> Self {
        match message {
            types::Message::Text(text) => Self::Text(text),
            types::Message::Binary(data) => Self::Binary(data),
            types::Message::Ping(data) => Self::Ping(data),
            types::Message::Pong(data) => Self::Pong(data),
            types::Message::Close(frame) => {
                Self::Close(frame.as_ref().map(|frame| CloseFrameParam {
                    code: frame.code,
                    reason: &frame.reason,
                }))
            }
        }
    }
}

/// A borrowed message parameter copied into an owned message (for a call
/// that runs on another thread).
impl From<&MessageParam<'_>> for types::Message {
    fn from(message: &MessageParam<'_>) -> Self {
        match message {
            MessageParam::Text(text) => Self::Text((*text).to_owned()),
            MessageParam::Binary(data) => Self::Binary(data.to_vec()),
            MessageParam::Ping(data) => Self::Ping(data.to_vec()),
            MessageParam::Pong(data) => Self::Pong(data.to_vec()),
            MessageParam::Close(frame) => {
                Self::Close(frame.as_ref().map(|frame| types::CloseFrame {
                    code: frame.code,
                    reason: frame.reason.to_owned(),
                }))
            }
        }
    }
}
