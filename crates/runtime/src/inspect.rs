//! Component introspection: the role a component's exports give it, its
//! imports and the capabilities they need.

use sha2::Digest;
use wasmtime::component::Component;

use crate::Runtime;

/// A version of the `wsgate:plugin` contract the gateway hosts. Every
/// version stays loadable: a plugin built against 0.1.0 runs unchanged
/// beside one built against 0.2.0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contract {
    /// `wsgate:plugin@0.1.0`, released and frozen.
    V0_1,
    /// `wsgate:plugin@0.2.0`: 0.1.0 plus `session` and `quota` (unreleased).
    V0_2,
}

impl Contract {
    /// Every version the gateway hosts, oldest first.
    pub const ALL: [Self; 2] = [Self::V0_1, Self::V0_2];

    /// The package version, as in the WIT (`0.1.0`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V0_1 => "0.1.0",
            Self::V0_2 => "0.2.0",
        }
    }

    /// The full name of `interface` in this version (`wsgate:plugin/message@0.2.0`).
    fn export(self, interface: &str) -> String {
        format!("wsgate:plugin/{interface}@{}", self.as_str())
    }
}

impl std::fmt::Display for Contract {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "wsgate:plugin@{}", self.as_str())
    }
}

/// The hooks a plugin implements, told from its component's exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    /// Exports `wsgate:plugin/upgrade`: may sit in an upgrade chain.
    pub upgrade: bool,
    /// Exports `wsgate:plugin/message`: may sit in a message chain.
    pub message: bool,
}

/// What a component imports and exports, as the gateway sees it.
#[derive(Debug, Clone)]
pub struct ComponentInfo {
    /// The contract version it was built against.
    pub contract: Contract,
    /// The hooks it implements.
    pub roles: Roles,
    /// Every import, with the capability it needs (`None`: reaches nothing).
    pub imports: Vec<(String, Option<wsgate_config::Capability>)>,
    /// Every export.
    pub exports: Vec<String>,
}

impl ComponentInfo {
    /// The capabilities its imports need, each once, in grant order.
    pub fn capabilities(&self) -> Vec<wsgate_config::Capability> {
        let mut needed: Vec<_> = self.imports.iter().filter_map(|(_, c)| *c).collect();
        needed.sort_by_key(|c| c.as_str());
        needed.dedup();
        needed
    }
}

impl Runtime {
    /// Compile `bytes` (or reuse their precompiled artifact) and describe
    /// the component: its role, imports with the capabilities they need,
    /// and exports. Refuses what the gateway could not load as a plugin.
    pub fn inspect(&self, bytes: &[u8]) -> Result<ComponentInfo, String> {
        let digest = format!("sha256:{:x}", sha2::Sha256::digest(bytes));
        let component = self
            .compile(&digest, bytes)
            .map_err(|e| format!("not a loadable component: {e:#}"))?;
        self.component_info(&component)
    }

    /// The role, imports and exports of `component`, checked against the contract.
    pub(crate) fn component_info(&self, component: &Component) -> Result<ComponentInfo, String> {
        let component_type = component.component_type();
        let exports: Vec<String> = component_type
            .exports(&self.engine)
            .map(|(name, _)| name.to_string())
            .collect();
        let has = |name: &str| exports.iter().any(|e| e == name);
        let Some(contract) = Contract::ALL
            .into_iter()
            .find(|contract| has(&contract.export("lifecycle")))
        else {
            return Err(format!(
                "does not export wsgate:plugin/lifecycle (of any version the gateway hosts: {}); build it against a wsgate:plugin world (exports: {})",
                Contract::ALL.map(Contract::as_str).join(", "),
                exports.join(", ")
            ));
        };
        let upgrade = contract.export("upgrade");
        let message = contract.export("message");
        let roles = Roles {
            upgrade: has(&upgrade),
            message: has(&message),
        };
        if !roles.upgrade && !roles.message {
            return Err(format!("exports neither {upgrade} nor {message}"));
        }
        let imports = component_type
            .imports(&self.engine)
            .map(|(name, _)| (name.to_string(), wsgate_config::Capability::of_import(name)))
            .collect();
        Ok(ComponentInfo {
            contract,
            roles,
            imports,
            exports,
        })
    }
}
