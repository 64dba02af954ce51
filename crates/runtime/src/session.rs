//! When a connection must close because its credentials expire: each
//! plugin's expiry (`session.expire-at`, contract 0.2.0) and the endpoint's.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// A connection's expiries, in Unix milliseconds: one per plugin that set
/// one (a plugin setting it again moves its own), and the endpoint's
/// `expire`. The relay closes the connection at the earliest.
#[derive(Debug, Default)]
pub struct Expiry {
    /// The endpoint's limit, fixed when the connection opens.
    endpoint_ms: Option<u64>,
    /// Each plugin's (by `name@version`); at most one entry per plugin on
    /// the connection's chains.
    by_plugin: Mutex<Vec<(Arc<str>, u64)>>,
    /// A plugin changed its expiry since the relay last looked.
    changed: AtomicBool,
}

impl Expiry {
    /// No plugin expiry yet; the endpoint's at `endpoint_ms`, if any.
    pub fn new(endpoint_ms: Option<u64>) -> Self {
        Self {
            endpoint_ms,
            ..Self::default()
        }
    }

    /// Set `plugin`'s expiry to `unix_ms`, replacing the one it set before;
    /// `0` withdraws it.
    pub fn set(&self, plugin: &Arc<str>, unix_ms: u64) {
        let mut by_plugin = self
            .by_plugin
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        by_plugin.retain(|(id, _)| id != plugin);
        if unix_ms != 0 {
            by_plugin.push((plugin.clone(), unix_ms));
        }
        self.changed.store(true, Ordering::Release);
    }

    /// The earliest plugin expiry, and the plugin that set it.
    pub fn credentials(&self) -> Option<(Arc<str>, u64)> {
        let by_plugin = self
            .by_plugin
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        by_plugin
            .iter()
            .min_by_key(|(_, ms)| *ms)
            .map(|(id, ms)| (id.clone(), *ms))
    }

    /// The earliest expiry of all, the endpoint's included.
    pub fn earliest(&self) -> Option<u64> {
        let credentials = self.credentials().map(|(_, ms)| ms);
        match (credentials, self.endpoint_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether a plugin changed its expiry since the last call (cheap: one
    /// atomic swap, for the relay to call after every chain).
    pub fn take_change(&self) -> bool {
        self.changed.load(Ordering::Acquire) && self.changed.swap(false, Ordering::AcqRel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_earliest_wins_and_a_plugin_moves_only_its_own() {
        let jwt: Arc<str> = "jwt@1.1.0".into();
        let key: Arc<str> = "api-key@1.1.0".into();
        let expiry = Expiry::new(Some(9_000));
        assert_eq!(expiry.earliest(), Some(9_000));
        assert!(!expiry.take_change());
        expiry.set(&jwt, 5_000);
        expiry.set(&key, 7_000);
        assert!(expiry.take_change());
        assert!(!expiry.take_change());
        assert_eq!(expiry.credentials(), Some((jwt.clone(), 5_000)));
        expiry.set(&jwt, 8_000);
        assert_eq!(expiry.credentials(), Some((key.clone(), 7_000)));
        expiry.set(&key, 0);
        assert_eq!(expiry.credentials(), Some((jwt, 8_000)));
        assert_eq!(expiry.earliest(), Some(8_000));
    }
}
