//! The gateway's host interfaces, wrapped for Rust.

use crate::bindings::wsgate::plugin as raw;

/// Logging to the gateway's log, tagged with the plugin and connection.
pub mod log {
    use super::raw;
    use crate::LogLevel;

    /// Log at `trace` level.
    pub fn trace(message: &str) {
        raw::log::write(LogLevel::Trace, message);
    }
    /// Log at `debug` level.
    pub fn debug(message: &str) {
        raw::log::write(LogLevel::Debug, message);
    }
    /// Log at `info` level.
    pub fn info(message: &str) {
        raw::log::write(LogLevel::Info, message);
    }
    /// Log at `warn` level.
    pub fn warn(message: &str) {
        raw::log::write(LogLevel::Warn, message);
    }
    /// Log at `error` level.
    pub fn error(message: &str) {
        raw::log::write(LogLevel::Error, message);
    }
}

/// Per-connection state: private values, and attributes shared with the
/// connection's other plugins.
pub mod state {
    use super::raw;

    /// Read a value this plugin stored for the current connection.
    pub fn get(key: &str) -> Option<Vec<u8>> {
        raw::state::get(key)
    }
    /// Store a value for the current connection.
    pub fn set(key: &str, value: &[u8]) {
        raw::state::set(key, value);
    }
    /// Delete a value stored for the current connection.
    pub fn delete(key: &str) {
        raw::state::delete(key);
    }
    /// Read a value stored as UTF-8 text.
    pub fn get_string(key: &str) -> Option<String> {
        get(key).and_then(|bytes| String::from_utf8(bytes).ok())
    }
    /// Read a connection attribute any plugin on this connection published.
    pub fn attribute(name: &str) -> Option<String> {
        raw::state::attribute(name)
    }
    /// Publish a connection attribute for later plugin calls on this connection.
    pub fn set_attribute(name: &str, value: &str) {
        raw::state::set_attribute(name, value);
    }
}

/// The read-only connection context, the plugin's configuration, and clocks.
pub mod context {
    use super::raw;
    use crate::Header;

    /// Id of the current connection.
    pub fn connection_id() -> u64 {
        raw::context::connection_id()
    }
    /// The endpoint path the connection matched.
    pub fn endpoint_path() -> String {
        raw::context::endpoint_path()
    }
    /// The endpoint's default MIME type for message bodies.
    pub fn content_type() -> String {
        raw::context::content_type()
    }
    /// The client's upgrade request headers.
    pub fn request_headers() -> Vec<Header> {
        raw::context::request_headers()
    }
    /// One upgrade request header by case-insensitive name.
    pub fn request_header(name: &str) -> Option<String> {
        raw::context::request_header(name)
    }
    /// The upstream URL the connection was routed to.
    pub fn route_url() -> Option<String> {
        raw::context::route_url()
    }
    /// The plugin's configuration as JSON text.
    pub fn config_json() -> String {
        raw::context::config()
    }
    /// Wall-clock milliseconds since the Unix epoch.
    pub fn now_ms() -> u64 {
        raw::clocks::now_ms()
    }
    /// Monotonic nanoseconds, for intervals.
    pub fn monotonic_ns() -> u64 {
        raw::clocks::monotonic_ns()
    }
}

/// The connection's lifetime (contract 0.2.0): close it when the
/// credentials it was opened with expire.
#[cfg(not(feature = "contract-0-1"))]
pub mod session {
    use super::raw;

    /// Close this connection at `unix_ms` (Unix milliseconds, as
    /// [`context::now_ms`](super::context::now_ms)): the client gets 1008
    /// "credentials expired". Calling again moves this plugin's own expiry;
    /// the connection closes at the earliest over all plugins.
    pub fn expire_at(unix_ms: u64) {
        raw::session::expire_at(unix_ms);
    }
    /// Close this connection `seconds` from now (a maximum session age).
    pub fn expire_in_seconds(seconds: u64) {
        let now = super::context::now_ms();
        expire_at(now.saturating_add(seconds.saturating_mul(1000)));
    }
    /// Withdraw this plugin's expiry.
    pub fn clear_expiry() {
        raw::session::expire_at(0);
    }
    /// The connection's expiry as the gateway holds it (the earliest of
    /// every plugin's and the endpoint's), in Unix milliseconds.
    pub fn expires_at() -> Option<u64> {
        raw::session::expires_at()
    }
}

/// Quotas shared by every connection and, with `[cluster] redis`, every
/// replica (contract 0.2.0; needs the `quota` grant).
#[cfg(not(feature = "contract-0-1"))]
pub mod quota {
    use super::raw;
    pub use raw::quota::Grant;

    /// Take `units` from this plugin's bucket `key`, which holds `limit`
    /// units per `window_ms` (a sliding window). Answers at once, from the
    /// gateway's local counts; nothing is taken when refused.
    pub fn take(key: &str, units: u32, limit: u32, window_ms: u32) -> Grant {
        raw::quota::take(key, units, limit, window_ms)
    }

    /// Hold one of `limit` places under this plugin's `key` until the
    /// connection closes (open connections per user, across replicas).
    /// Refused: nothing is held.
    pub fn hold(key: &str, limit: u32) -> Grant {
        raw::quota::hold(key, limit)
    }
}
