//! The connection ledger: one place that knows how many connections are
//! open, by scope (the gateway, each endpoint path, each client address on
//! an endpoint, each remote host's permits, each live endpoint and
//! generation), checked and taken in one step per scope, and given back
//! together when the connection's [`Place`] is dropped.
//!
//! Endpoint and client counts are kept by endpoint path, across deploys:
//! a deploy does not reset them.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use http::StatusCode;
use tokio::sync::{Notify, OwnedSemaphorePermit};

use crate::generation::{Generation, LiveEndpoint, RemoteLimit};

#[derive(Default)]
struct Counts {
    total: u32,
    endpoints: HashMap<String, u32>,
    clients: HashMap<(String, IpAddr), u32>,
}

/// Open connections, by scope.
#[derive(Default)]
pub struct Ledger {
    /// Admitted connections (upgrades under way and open relays).
    counts: Mutex<Counts>,
    /// Relayed connections open right now.
    active: AtomicU64,
    /// Woken whenever a relayed connection ends.
    closed: Notify,
}

/// The limits that apply to one upgrade.
pub struct Limits<'a> {
    /// `[gateway] max-connections`.
    pub gateway: Option<u32>,
    /// The endpoint's path (what endpoint counts are kept by).
    pub endpoint: &'a str,
    /// The endpoint's `max-connections`.
    pub per_endpoint: Option<u32>,
    /// The endpoint's `max-connections-per-ip`.
    pub per_client: Option<u32>,
}

/// Which limit refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The gateway-wide limit.
    Gateway,
    /// The endpoint's limit.
    Endpoint,
    /// The endpoint's per-client-address limit.
    Client,
    /// The upstream's `[[remote-host]] max-connections`.
    RemoteHost,
}

impl Refusal {
    /// The status the client gets: 503 when the gateway, the endpoint or
    /// the upstream is full, 429 when this client has too many.
    pub fn status(self) -> StatusCode {
        match self {
            Self::Gateway | Self::Endpoint | Self::RemoteHost => StatusCode::SERVICE_UNAVAILABLE,
            Self::Client => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// The body the client gets.
    pub fn body(self) -> &'static str {
        match self {
            Self::Gateway => "the gateway is at its connection limit\n",
            Self::Endpoint => "this endpoint is at its connection limit\n",
            Self::Client => "too many connections from this address\n",
            Self::RemoteHost => "the upstream is at its connection limit\n",
        }
    }
}

/// One connection's place in every scope it counts in; dropping it gives
/// them all back and wakes whoever waits for connections to end.
pub struct Place {
    ledger: Arc<Ledger>,
    endpoint: String,
    client: IpAddr,
    /// The remote host's permit, once taken (when it has a limit).
    permit: Option<OwnedSemaphorePermit>,
    /// The live endpoint and generation it counts as open on, once relayed.
    open: Option<(Arc<LiveEndpoint>, Arc<Generation>)>,
}

impl Ledger {
    /// Admit a connection from `client` under `limits`, or say which limit refuses it.
    pub fn admit(self: &Arc<Self>, limits: &Limits<'_>, client: IpAddr) -> Result<Place, Refusal> {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let endpoint = limits.endpoint.to_string();
        let client_key = (endpoint.clone(), client);
        let over = |count: u32, limit: Option<u32>| limit.is_some_and(|limit| count >= limit);
        if over(counts.total, limits.gateway) {
            return Err(Refusal::Gateway);
        }
        if over(
            counts.endpoints.get(&endpoint).copied().unwrap_or(0),
            limits.per_endpoint,
        ) {
            return Err(Refusal::Endpoint);
        }
        if over(
            counts.clients.get(&client_key).copied().unwrap_or(0),
            limits.per_client,
        ) {
            return Err(Refusal::Client);
        }
        counts.total += 1;
        *counts.endpoints.entry(endpoint.clone()).or_default() += 1;
        *counts.clients.entry(client_key).or_default() += 1;
        Ok(Place {
            ledger: self.clone(),
            endpoint,
            client,
            permit: None,
            open: None,
        })
    }

    /// Relayed connections open right now.
    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }

    /// Wait until at most `count` relayed connections are open.
    pub async fn wait_for_at_most(&self, count: u64) {
        loop {
            let closed = self.closed.notified();
            if self.active() <= count {
                return;
            }
            closed.await;
        }
    }
}

impl Place {
    /// Take a connection permit of the upstream's remote host, if it has a limit.
    pub fn take_remote_permit(&mut self, remote: Option<&RemoteLimit>) -> Result<(), Refusal> {
        if let Some(permits) = remote.and_then(|r| r.permits.clone()) {
            let permit = permits
                .try_acquire_owned()
                .map_err(|_| Refusal::RemoteHost)?;
            self.permit = Some(permit);
        }
        Ok(())
    }

    /// The connection is relayed: count it as open on `endpoint`, its
    /// `generation` and the gateway until the place is dropped.
    pub fn open(&mut self, endpoint: Arc<LiveEndpoint>, generation: Arc<Generation>) {
        if self.open.is_none() {
            endpoint.active.fetch_add(1, Ordering::Relaxed);
            generation.active.fetch_add(1, Ordering::Relaxed);
            self.ledger.active.fetch_add(1, Ordering::Relaxed);
            self.open = Some((endpoint, generation));
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        // Every count goes back before anyone waiting for this connection
        // to end is told it has.
        drop(self.permit.take());
        {
            let mut counts = self
                .ledger
                .counts
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            counts.total = counts.total.saturating_sub(1);
            release(&mut counts.endpoints, &self.endpoint);
            let key = (std::mem::take(&mut self.endpoint), self.client);
            release(&mut counts.clients, &key);
        }
        if let Some((endpoint, generation)) = self.open.take() {
            endpoint.active.fetch_sub(1, Ordering::Relaxed);
            generation.active.fetch_sub(1, Ordering::Relaxed);
            self.ledger.active.fetch_sub(1, Ordering::Relaxed);
            self.ledger.closed.notify_waiters();
        }
    }
}

/// One fewer under `key`; the entry goes when none are left.
fn release<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, u32>, key: &K) {
    if let Some(count) = counts.get_mut(key) {
        *count = count.saturating_sub(1);
        if *count == 0 {
            counts.remove(key);
        }
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, reason = "tests index what they built")]
mod tests {
    use super::*;

    #[test]
    fn each_scope_refuses_at_its_limit_and_places_come_back() {
        let ledger = Arc::new(Ledger::default());
        let a: IpAddr = "10.0.0.1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let b: IpAddr = "10.0.0.2".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let limits = Limits {
            gateway: Some(3),
            endpoint: "/e",
            per_endpoint: Some(2),
            per_client: Some(1),
        };
        let first = ledger.admit(&limits, a);
        assert!(first.is_ok());
        assert_eq!(ledger.admit(&limits, a).err(), Some(Refusal::Client));
        let second = ledger.admit(&limits, b);
        assert!(second.is_ok());
        assert_eq!(ledger.admit(&limits, b).err(), Some(Refusal::Endpoint));
        let other = Limits {
            endpoint: "/f",
            ..limits
        };
        let third = ledger.admit(&other, a);
        assert!(third.is_ok());
        assert_eq!(ledger.admit(&other, b).err(), Some(Refusal::Gateway));
        drop(first);
        assert!(ledger.admit(&limits, a).is_ok());
    }

    #[test]
    fn a_remote_host_permit_is_taken_once_and_given_back_with_the_place() {
        let ledger = Arc::new(Ledger::default());
        let limits = Limits {
            gateway: None,
            endpoint: "/e",
            per_endpoint: None,
            per_client: None,
        };
        let client = IpAddr::from([127, 0, 0, 1]);
        let remote = RemoteLimit {
            permits: Some(Arc::new(tokio::sync::Semaphore::new(1))),
            max_connections: Some(1),
            connect_timeout: std::time::Duration::from_secs(1),
            tls: None,
        };
        let Ok(mut first) = ledger.admit(&limits, client) else {
            panic!("admitted");
        };
        assert_eq!(first.take_remote_permit(Some(&remote)), Ok(()));
        let Ok(mut second) = ledger.admit(&limits, client) else {
            panic!("admitted");
        };
        assert_eq!(
            second.take_remote_permit(Some(&remote)),
            Err(Refusal::RemoteHost)
        );
        drop(first);
        assert_eq!(second.take_remote_permit(Some(&remote)), Ok(()));
    }
}
