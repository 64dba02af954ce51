//! Component introspection: the role a component's exports give it, its
//! imports and the capabilities they need.

use sha2::Digest;
use wasmtime::component::Component;

use crate::Runtime;

/// Export names that tell a plugin's role.
const LIFECYCLE_EXPORT: &str = "wsgate:plugin/lifecycle@0.1.0";
const UPGRADE_EXPORT: &str = "wsgate:plugin/upgrade@0.1.0";
const MESSAGE_EXPORT: &str = "wsgate:plugin/message@0.1.0";

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
        if !has(LIFECYCLE_EXPORT) {
            return Err(format!(
                "does not export {LIFECYCLE_EXPORT}; build it against a wsgate:plugin world (exports: {})",
                exports.join(", ")
            ));
        }
        let roles = Roles {
            upgrade: has(UPGRADE_EXPORT),
            message: has(MESSAGE_EXPORT),
        };
        if !roles.upgrade && !roles.message {
            return Err(format!(
                "exports neither {UPGRADE_EXPORT} nor {MESSAGE_EXPORT}"
            ));
        }
        let imports = component_type
            .imports(&self.engine)
            .map(|(name, _)| (name.to_string(), wsgate_config::Capability::of_import(name)))
            .collect();
        Ok(ComponentInfo {
            roles,
            imports,
            exports,
        })
    }
}
