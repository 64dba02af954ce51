//! Renamed keys: the old names are still accepted, with a warning.
//!
//! The serde model accepts each old name as an alias of the new one; this
//! pass, run on the parsed TOML before deserializing, is what knows where the
//! old name was written (for the warning) and refuses an entry that gives
//! both names.

use std::collections::HashSet;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::error::{ConfigError, SourceMap};

/// Renamed keys of an `[[endpoint]]`: (old name, new name).
pub(crate) const ENDPOINT_RENAMES: &[(&str, &str)] = &[("server-messages", "upstream-messages")];

/// What the pass found.
#[derive(Debug, Default)]
pub(crate) struct Renamed {
    /// One warning per old name used.
    pub warnings: Vec<ConfigError>,
    /// One error per entry that gives both the old and the new name.
    pub errors: Vec<ConfigError>,
    /// (endpoint index, old name) for every old name used, so that later
    /// errors can name the key as written.
    pub used: HashSet<(usize, &'static str)>,
}

impl Renamed {
    /// The key endpoint `index` wrote for the key now called `new`.
    pub(crate) fn endpoint_key(&self, index: usize, new: &'static str) -> &'static str {
        ENDPOINT_RENAMES
            .iter()
            .find(|(old, renamed)| *renamed == new && self.used.contains(&(index, *old)))
            .map_or(new, |(old, _)| old)
    }
}

/// Find the old names used in the document `root`.
pub(crate) fn check(root: &DeTable<'_>, source: &SourceMap) -> Renamed {
    let mut found = Renamed::default();
    let Some(DeValue::Array(endpoints)) = entry(root, "endpoint").map(|(_, value)| value.get_ref())
    else {
        return found;
    };
    for (i, endpoint) in endpoints.iter().enumerate() {
        let DeValue::Table(endpoint) = endpoint.get_ref() else {
            continue;
        };
        for &(old, new) in ENDPOINT_RENAMES {
            let Some((key, value)) = entry(endpoint, old) else {
                continue;
            };
            found.used.insert((i, old));
            // `[[endpoint.old]]`: the value's span is the header, which starts
            // before the key; `old = …`: the key comes first.
            let start = key.span().start.min(value.span().start);
            let field = format!("endpoint[{i}].{old}");
            if entry(endpoint, new).is_some() {
                found.errors.push(source.error(
                    start..start,
                    field,
                    format!(
                        "`{old}` is the deprecated name of `{new}`; \
                         give only `{new}`, not both"
                    ),
                ));
            } else {
                found.warnings.push(source.error(
                    start..start,
                    field,
                    format!("deprecated, use `{new}`"),
                ));
            }
        }
    }
    found
}

/// The key and value of `table`'s entry `name`.
fn entry<'t, 'i>(
    table: &'t DeTable<'i>,
    name: &str,
) -> Option<(
    &'t Spanned<toml::de::DeString<'i>>,
    &'t Spanned<DeValue<'i>>,
)> {
    table.iter().find(|(key, _)| key.get_ref() == name)
}
