//! When a connection's credentials expire: the earliest expiry its plugins
//! set (`session.expire-at`), as an instant for the relay's timer.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;
use wsgate_runtime::ConnectionInfo;

/// The earliest plugin expiry of a connection, re-read whenever a plugin
/// changes one.
pub struct CredentialsExpiry {
    /// The plugin whose expiry is the earliest (`name@version`), and when.
    earliest: Option<(std::sync::Arc<str>, Instant)>,
}

impl CredentialsExpiry {
    /// The expiry `connection`'s upgrade chain left.
    pub fn of(connection: &ConnectionInfo) -> Self {
        connection.expiry.take_change();
        Self {
            earliest: earliest(connection),
        }
    }

    /// Re-read it if a plugin changed an expiry since; whether it changed.
    pub fn refresh(&mut self, connection: &ConnectionInfo) -> bool {
        if !connection.expiry.take_change() {
            return false;
        }
        self.earliest = earliest(connection);
        true
    }

    /// When the connection must close, if a plugin set an expiry.
    pub fn deadline(&self) -> Option<Instant> {
        self.earliest.as_ref().map(|(_, at)| *at)
    }

    /// The plugin that set the earliest expiry.
    pub fn plugin(&self) -> &str {
        self.earliest.as_ref().map_or("", |(plugin, _)| plugin)
    }
}

fn earliest(connection: &ConnectionInfo) -> Option<(std::sync::Arc<str>, Instant)> {
    let (plugin, unix_ms) = connection.expiry.credentials()?;
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let left = Duration::from_millis(unix_ms.saturating_sub(now_ms));
    Some((plugin, Instant::now() + left))
}
