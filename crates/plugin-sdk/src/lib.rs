//! Write wsgate filter plugins in Rust.
//!
//! A plugin is a type that implements [`Plugin`] (its configuration) and one or
//! both of [`UpgradeFilter`] and [`MessageFilter`]; one export macro turns it
//! into a WebAssembly component for the matching world of the `wsgate:plugin`
//! WIT contract:
//!
//! ```ignore
//! use wsgate_plugin_sdk::prelude::*;
//!
//! #[derive(serde::Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct Config { url: String }
//!
//! struct StaticRouter;
//!
//! impl Plugin for StaticRouter {
//!     type Config = Config;
//! }
//!
//! impl UpgradeFilter for StaticRouter {
//!     fn on_upgrade(config: &Config, _request: UpgradeRequest) -> UpgradeVerdict {
//!         UpgradeVerdict::route_to(&config.url)
//!     }
//! }
//!
//! wsgate_plugin_sdk::export_upgrade_filter!(StaticRouter);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2`; the output
//! `.wasm` file is the component the gateway loads.
//!
//! Instances are pooled and shared between connections, so keep per-connection
//! data in [`state`], never in statics.

use std::cell::RefCell;
use std::rc::Rc;

#[doc(hidden)]
#[allow(unsafe_code, missing_docs, clippy::all)]
pub mod bindings {
    //! The contract's types and host imports, generated from the `imports`
    //! world. Each plugin generates its own export glue through the export
    //! macros, so its component exports exactly the hooks it implements.
    #[cfg(not(feature = "contract-0-1"))]
    wit_bindgen::generate!({
        path: "../../wit/0.2.0",
        world: "imports",
        additional_derives: [PartialEq],
    });
    #[cfg(feature = "contract-0-1")]
    wit_bindgen::generate!({
        path: "../../wit",
        world: "imports",
        additional_derives: [PartialEq],
    });
}

#[doc(hidden)]
pub use wit_bindgen as __wit_bindgen;

// `__wsgate_generate!`: runs `wit_bindgen::generate!` in the plugin's crate
// over the contract's text (embedded by build.rs).
include!(concat!(env!("OUT_DIR"), "/generate_macro.rs"));

pub use bindings::wsgate::plugin::types::{
    CloseFrame, ConfigError, Direction, Header, HeaderOp, LogLevel, Message, MessageVerdict,
    Rejection, Route, UpgradeRequest, UpgradeVerdict,
};

mod helpers;
pub mod policy;
pub use helpers::{
    connection_value, is_connection_placeholder, percent_decode, render_template, template_names,
};
pub mod host;
pub use host::{context, log, state};
#[cfg(not(feature = "contract-0-1"))]
pub use host::{quota, session};
#[cfg(feature = "schema")]
pub mod schema;

/// Everything a plugin usually needs, in one `use`.
pub mod prelude {
    pub use crate::{
        CloseFrame, ConfigError, Direction, Header, HeaderOp, LogLevel, Message, MessageFilter,
        MessageVerdict, Plugin, Rejection, Route, UpgradeFilter, UpgradeRequest, UpgradeVerdict,
        context, log, policy, state,
    };
    #[cfg(not(feature = "contract-0-1"))]
    pub use crate::{quota, session};
}

/// A plugin's configuration handling. Every plugin implements it.
pub trait Plugin {
    /// The configuration, deserialised from the JSON the gateway passes
    /// (the entry's `config` table in `host-config.toml`). Use
    /// `#[serde(deny_unknown_fields)]` so misspelt keys are reported.
    type Config: serde::de::DeserializeOwned + 'static;

    /// Check the parsed configuration beyond what its type enforces.
    /// The default accepts everything that parses.
    fn validate(_config: &Self::Config) -> Result<(), ConfigError> {
        Ok(())
    }
}

/// A plugin that decides about upgrade requests.
pub trait UpgradeFilter: Plugin {
    /// Decide what to do with a client's upgrade request.
    fn on_upgrade(config: &Self::Config, request: UpgradeRequest) -> UpgradeVerdict;
}

/// A plugin that acts on messages.
pub trait MessageFilter: Plugin {
    /// Decide what to do with one message travelling in `direction`.
    fn on_message(config: &Self::Config, direction: Direction, message: Message) -> MessageVerdict;
}

/// Holds a plugin instance's parsed configuration between calls.
///
/// The export macros create one per plugin; plugin code does not use it.
pub struct ConfigSlot<T>(RefCell<Option<Rc<T>>>);

impl<T> Default for ConfigSlot<T> {
    fn default() -> Self {
        Self(RefCell::new(None))
    }
}

impl<T: serde::de::DeserializeOwned> ConfigSlot<T> {
    /// Parse `json`, validate it with `validate` and keep it.
    pub fn configure(
        &self,
        json: &str,
        validate: impl FnOnce(&T) -> Result<(), ConfigError>,
    ) -> Result<(), ConfigError> {
        let config = parse_config::<T>(json)?;
        validate(&config)?;
        *self.0.borrow_mut() = Some(Rc::new(config));
        Ok(())
    }

    /// The configuration, if `configure` succeeded.
    pub fn get(&self) -> Option<Rc<T>> {
        self.0.borrow().clone()
    }
}

/// Parse a plugin configuration from JSON, reporting the failing field as a JSON Pointer.
pub fn parse_config<T: serde::de::DeserializeOwned>(json: &str) -> Result<T, ConfigError> {
    let mut deserializer = serde_json::Deserializer::from_str(json);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let field = json_pointer(&error.path().to_string());
        ConfigError {
            field,
            message: error.inner().to_string(),
        }
    })
}

/// Turn a serde path such as `rules[0].url` into the JSON Pointer `/rules/0/url`.
fn json_pointer(path: &str) -> String {
    if path == "." || path.is_empty() {
        return String::new();
    }
    let mut pointer = String::new();
    for part in path.split(['.', '[']) {
        let part = part.trim_end_matches(']');
        if part.is_empty() {
            continue;
        }
        pointer.push('/');
        pointer.push_str(&part.replace('~', "~0").replace('/', "~1"));
    }
    pointer
}

/// Export a type implementing [`UpgradeFilter`] as an `upgrade-filter` component.
#[macro_export]
macro_rules! export_upgrade_filter {
    ($plugin:ty) => {
        $crate::__export_world!($plugin, "upgrade-filter", lifecycle upgrade);
    };
}

/// Export a type implementing [`MessageFilter`] as a `message-filter` component.
#[macro_export]
macro_rules! export_message_filter {
    ($plugin:ty) => {
        $crate::__export_world!($plugin, "message-filter", lifecycle message);
    };
}

/// Export a type implementing both [`UpgradeFilter`] and [`MessageFilter`] as a `filter` component.
#[macro_export]
macro_rules! export_filter {
    ($plugin:ty) => {
        $crate::__export_world!($plugin, "filter", lifecycle upgrade message);
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __export_world {
    ($plugin:ty, $world:literal, $($hook:ident)*) => {
        #[allow(missing_docs, unsafe_code, clippy::all)]
        mod __wsgate_bindings {
            $crate::__wsgate_generate!(world: $world);
        }
        $crate::__plugin_config_slot!($plugin);
        struct __WsgateExport;
        $($crate::__impl_hook!($hook, $plugin);)*
        __wsgate_bindings::export!(__WsgateExport with_types_in __wsgate_bindings);
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __impl_hook {
    (lifecycle, $plugin:ty) => {
        impl __wsgate_bindings::exports::wsgate::plugin::lifecycle::Guest for __WsgateExport {
            fn configure(config: String) -> Result<(), $crate::ConfigError> {
                __WSGATE_CONFIG
                    .with(|slot| slot.configure(&config, <$plugin as $crate::Plugin>::validate))
            }
        }
    };
    (upgrade, $plugin:ty) => {
        impl __wsgate_bindings::exports::wsgate::plugin::upgrade::Guest for __WsgateExport {
            fn on_upgrade(request: $crate::UpgradeRequest) -> $crate::UpgradeVerdict {
                <$plugin as $crate::UpgradeFilter>::on_upgrade(&__wsgate_config(), request)
            }
        }
    };
    (message, $plugin:ty) => {
        impl __wsgate_bindings::exports::wsgate::plugin::message::Guest for __WsgateExport {
            fn on_message(
                direction: $crate::Direction,
                message: $crate::Message,
            ) -> $crate::MessageVerdict {
                <$plugin as $crate::MessageFilter>::on_message(
                    &__wsgate_config(),
                    direction,
                    message,
                )
            }
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __plugin_config_slot {
    ($plugin:ty) => {
        ::std::thread_local! {
            static __WSGATE_CONFIG: $crate::ConfigSlot<<$plugin as $crate::Plugin>::Config> =
                $crate::ConfigSlot::default();
        }
        fn __wsgate_config() -> ::std::rc::Rc<<$plugin as $crate::Plugin>::Config> {
            match __WSGATE_CONFIG.with(|slot| slot.get()) {
                Some(config) => config,
                // The host always configures an instance before calling a hook.
                None => ::std::process::abort(),
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Rule {
        url: String,
    }

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Config {
        rules: Vec<Rule>,
    }

    #[test]
    fn config_errors_name_the_field_as_a_json_pointer() {
        let error = parse_config::<Config>(r#"{"rules":[{"url":"ws://a"},{"uri":"x"}]}"#)
            .err()
            .map(|e| (e.field, e.message));
        let (field, message) = error.unwrap();
        assert_eq!(field, "/rules/1/uri");
        assert!(message.contains("unknown field `uri`"), "{message}");
    }

    #[test]
    fn json_pointer_escapes_special_characters() {
        assert_eq!(json_pointer("set.a/b"), "/set/a~1b");
        assert_eq!(json_pointer("."), "");
    }
}
