//! Host-side bindings of the `wsgate:plugin` contract.

#![allow(missing_docs)]

use wasmtime::component::{Instance, InstancePre};
use wasmtime::{AsContextMut, Result};

use crate::Roles;
use crate::host::HostState;

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "filter",
    // The host functions that take what a budget bounds can fault the call.
    imports: {
        "wsgate:plugin/state.set": trappable,
        "wsgate:plugin/state.set-attribute": trappable,
    },
});

pub use exports::wsgate::plugin::{lifecycle, message, upgrade};
pub use wsgate::plugin::types;

/// Where one plugin's hooks sit in its component, resolved once at load.
pub struct Exports {
    lifecycle: lifecycle::GuestIndices,
    upgrade: Option<upgrade::GuestIndices>,
    message: Option<message::GuestIndices>,
}

/// The hooks of one live instance.
pub struct Hooks {
    pub lifecycle: lifecycle::Guest,
    pub upgrade: Option<upgrade::Guest>,
    pub message: Option<message::Guest>,
}

impl Exports {
    /// Resolve the hooks `roles` says the component exports.
    pub fn new(pre: &InstancePre<HostState>, roles: Roles) -> Result<Self> {
        Ok(Self {
            lifecycle: lifecycle::GuestIndices::new(pre)?,
            upgrade: roles
                .upgrade
                .then(|| upgrade::GuestIndices::new(pre))
                .transpose()?,
            message: roles
                .message
                .then(|| message::GuestIndices::new(pre))
                .transpose()?,
        })
    }

    /// Look the hooks up in an instance.
    pub fn load(&self, mut store: impl AsContextMut, instance: &Instance) -> Result<Hooks> {
        Ok(Hooks {
            lifecycle: self.lifecycle.load(&mut store, instance)?,
            upgrade: self
                .upgrade
                .as_ref()
                .map(|u| u.load(&mut store, instance))
                .transpose()?,
            message: self
                .message
                .as_ref()
                .map(|m| m.load(&mut store, instance))
                .transpose()?,
        })
    }
}
