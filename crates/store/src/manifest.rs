//! `wsgate-plugin.toml`: what a plugin says about itself.

use std::path::{Path, PathBuf};

use wsgate_config::Capability;

use crate::StoreError;

/// The hooks a plugin implements, which decide the WIT world it is built against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Upgrade chains only (`upgrade-filter` world).
    Upgrade,
    /// Message chains only (`message-filter` world).
    Message,
    /// Both (`filter` world).
    Filter,
}

impl Role {
    /// The role of a component exporting the upgrade and/or message hooks.
    pub fn of_exports(upgrade: bool, message: bool) -> Option<Self> {
        match (upgrade, message) {
            (true, true) => Some(Self::Filter),
            (true, false) => Some(Self::Upgrade),
            (false, true) => Some(Self::Message),
            (false, false) => None,
        }
    }

    /// The WIT world a plugin of this role is built against.
    pub fn world(self) -> &'static str {
        match self {
            Self::Upgrade => "upgrade-filter",
            Self::Message => "message-filter",
            Self::Filter => "filter",
        }
    }

    /// The name written in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Upgrade => "upgrade",
            Self::Message => "message",
            Self::Filter => "filter",
        }
    }
}

/// A plugin's manifest, `wsgate-plugin.toml`, kept beside its source.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Manifest {
    /// The plugin's name (what chains reference as `name@version`).
    pub name: String,
    /// Its version; a stored version never changes.
    pub version: String,
    /// One line on what it does.
    pub description: String,
    /// The hooks it implements.
    pub role: Role,
    /// Host capabilities it needs (the gateway grants them per plugin).
    #[serde(default, serialize_with = "capability_names")]
    pub capabilities: Vec<Capability>,
    /// A JSON Schema for its configuration, relative to the manifest
    /// (only in the source manifest; the store keeps the schema's text).
    #[serde(default, skip_serializing)]
    pub config_schema: Option<PathBuf>,
}

fn capability_names<S: serde::Serializer>(
    capabilities: &[Capability],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(capabilities.iter().map(|c| c.as_str()))
}

impl Manifest {
    /// Read a manifest and the configuration schema it points to (checked to
    /// be JSON). Errors name the file, with line and column.
    pub fn read(path: &Path) -> Result<(Self, Option<String>), StoreError> {
        let invalid = |message: String| StoreError::Invalid {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(crate::io_error(path))?;
        let manifest: Self = toml::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        let valid_name = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        if !valid_name(&manifest.name) || manifest.name.starts_with('.') {
            return Err(invalid(format!(
                "name `{}`: letters, digits, `-` and `_` only",
                manifest.name
            )));
        }
        if !valid_name(&manifest.version) || manifest.version.starts_with('.') {
            return Err(invalid(format!(
                "version `{}`: letters, digits, `.`, `-` and `_` only",
                manifest.version
            )));
        }
        let schema = match &manifest.config_schema {
            None => None,
            Some(relative) => {
                let schema_path = path.parent().unwrap_or(Path::new(".")).join(relative);
                let schema = std::fs::read_to_string(&schema_path).map_err(|e| {
                    invalid(format!("config-schema {}: {e}", schema_path.display()))
                })?;
                serde_json::from_str::<serde_json::Value>(&schema).map_err(|e| {
                    invalid(format!(
                        "config-schema {} is not JSON: {e}",
                        schema_path.display()
                    ))
                })?;
                Some(schema)
            }
        };
        Ok((manifest, schema))
    }

    /// Whether this manifest tells the truth about a component whose exports
    /// give it `role` (`None`: neither hook) and whose `imports` need the
    /// capabilities paired with them: the same role, and a request for every
    /// capability its imports need.
    pub fn check_component(
        &self,
        role: Option<Role>,
        imports: &[(String, Option<Capability>)],
    ) -> Result<(), String> {
        if role != Some(self.role) {
            return Err(format!(
                "the manifest says role `{}`, but the component is {}",
                self.role.as_str(),
                role.map_or("neither", Role::as_str)
            ));
        }
        for (import, capability) in imports {
            if let Some(capability) = capability
                && !self.capabilities.contains(capability)
            {
                return Err(format!(
                    "the component imports {import}, which needs the `{}` capability; the manifest does not request it",
                    capability.as_str()
                ));
            }
        }
        Ok(())
    }
}
