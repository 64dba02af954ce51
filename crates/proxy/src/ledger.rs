//! The connection ledger: one place that knows how many connections are
//! open, by scope (the gateway, each endpoint path, each client address on
//! an endpoint, each remote host's permits, each live endpoint and
//! generation), checked and taken in one step per scope, and given back
//! together when the connection's [`Place`] is dropped.
//!
//! Endpoint and client counts are kept by endpoint path, across deploys:
//! a deploy does not reset them.
//!
//! Before any of that, every accepted client connection holds a
//! [`Handshake`] until it is answered (or closes): the pending count, in
//! total and by client address, which bounds what clients without
//! credentials can make the gateway hold while they send their request.

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
    endpoints: HashMap<Arc<str>, u32>,
    clients: HashMap<(Arc<str>, IpAddr), u32>,
}

/// Client connections accepted and not yet answered.
#[derive(Default)]
struct Pending {
    total: u32,
    clients: HashMap<IpAddr, u32>,
}

/// Open connections, by scope.
#[derive(Default)]
pub struct Ledger {
    /// Accepted connections not yet answered.
    pending: Mutex<Pending>,
    /// Connections closed at accept, in [`PendingRefusal::ALL`] order.
    pending_refused: [AtomicU64; 2],
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

/// The limits on accepted connections not yet answered.
#[derive(Debug, Clone, Copy)]
pub struct PendingLimits {
    /// `[gateway] max-pending-upgrades`.
    pub gateway: u32,
    /// `[gateway] max-pending-upgrades-per-ip`.
    pub per_client: u32,
}

/// Which pending limit closed a connection at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingRefusal {
    /// All addresses together.
    Gateway,
    /// The connection's client address.
    Client,
}

impl PendingRefusal {
    /// Every kind, in counter order.
    pub const ALL: [Self; 2] = [Self::Gateway, Self::Client];

    /// The configuration key of the limit (the metric's label).
    pub fn key(self) -> &'static str {
        match self {
            Self::Gateway => "max-pending-upgrades",
            Self::Client => "max-pending-upgrades-per-ip",
        }
    }
}

/// One accepted client connection not yet answered; dropping it gives its
/// pending place back.
pub struct Handshake {
    ledger: Arc<Ledger>,
    client: IpAddr,
}

impl Drop for Handshake {
    fn drop(&mut self) {
        let mut pending = self
            .ledger
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        pending.total = pending.total.saturating_sub(1);
        release(&mut pending.clients, &self.client);
    }
}

/// One connection's place in every scope it counts in; dropping it gives
/// them all back and wakes whoever waits for connections to end.
pub struct Place {
    ledger: Arc<Ledger>,
    endpoint: Arc<str>,
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
        // At most one allocation for the path, shared by both counts and
        // the place.
        let endpoint: Arc<str> = counts
            .endpoints
            .get_key_value(limits.endpoint)
            .map_or_else(|| Arc::from(limits.endpoint), |(key, _)| key.clone());
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

    /// Count a connection just accepted from `client` as pending until its
    /// [`Handshake`] is dropped, or say which limit refuses it (and count
    /// the refusal).
    pub fn begin_handshake(
        self: &Arc<Self>,
        limits: PendingLimits,
        client: IpAddr,
    ) -> Result<Handshake, PendingRefusal> {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let refusal = if pending.total >= limits.gateway {
            Some(PendingRefusal::Gateway)
        } else if pending.clients.get(&client).copied().unwrap_or(0) >= limits.per_client {
            Some(PendingRefusal::Client)
        } else {
            None
        };
        if let Some(refusal) = refusal {
            if let Some(counter) = self.pending_refused.get(refusal as usize) {
                counter.fetch_add(1, Ordering::Relaxed);
            }
            return Err(refusal);
        }
        pending.total += 1;
        *pending.clients.entry(client).or_default() += 1;
        Ok(Handshake {
            ledger: self.clone(),
            client,
        })
    }

    /// Accepted client connections not yet answered, and the number of
    /// addresses they come from.
    pub fn pending(&self) -> (u64, usize) {
        let pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        (u64::from(pending.total), pending.clients.len())
    }

    /// Connections closed at accept, by the limit that closed them.
    pub fn pending_refusals(&self) -> impl Iterator<Item = (PendingRefusal, u64)> + '_ {
        PendingRefusal::ALL
            .into_iter()
            .zip(&self.pending_refused)
            .map(|(refusal, counter)| (refusal, counter.load(Ordering::Relaxed)))
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
            release(&mut counts.clients, &(self.endpoint.clone(), self.client));
        }
        if let Some((endpoint, generation)) = self.open.take() {
            endpoint.active.fetch_sub(1, Ordering::Relaxed);
            generation.active.fetch_sub(1, Ordering::Relaxed);
            self.ledger.active.fetch_sub(1, Ordering::Relaxed);
            // Let go of the generation before saying the connection ended:
            // whoever waits for it may count the generations still alive.
            drop((endpoint, generation));
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
    fn pending_handshakes_are_bounded_in_total_and_per_address() {
        let ledger = Arc::new(Ledger::default());
        let a = IpAddr::from([10, 0, 0, 1]);
        let b = IpAddr::from([10, 0, 0, 2]);
        let c = IpAddr::from([10, 0, 0, 3]);
        let limits = PendingLimits {
            gateway: 3,
            per_client: 2,
        };
        let a1 = ledger.begin_handshake(limits, a);
        let a2 = ledger.begin_handshake(limits, a);
        assert!(a1.is_ok() && a2.is_ok());
        assert_eq!(
            ledger.begin_handshake(limits, a).err(),
            Some(PendingRefusal::Client)
        );
        let b1 = ledger.begin_handshake(limits, b);
        assert!(b1.is_ok());
        assert_eq!(
            ledger.begin_handshake(limits, c).err(),
            Some(PendingRefusal::Gateway)
        );
        assert_eq!(ledger.pending(), (3, 2));
        drop(a1);
        assert!(ledger.begin_handshake(limits, c).is_ok());
        drop((a2, b1));
        assert_eq!(ledger.pending(), (0, 0));
        let refused: Vec<u64> = ledger.pending_refusals().map(|(_, n)| n).collect();
        assert_eq!(refused, [1, 1]);
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
