//! Connection limits: gateway-wide, per endpoint, per client address on an
//! endpoint. Counted across deploys (by endpoint path), checked and taken
//! in one step before the upgrade chain runs, given back when the
//! connection (or the refused upgrade) ends.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use http::StatusCode;

#[derive(Default)]
struct Counts {
    total: u32,
    endpoints: HashMap<String, u32>,
    clients: HashMap<(String, IpAddr), u32>,
}

/// Open connections by scope.
#[derive(Default)]
pub struct Admissions {
    counts: Mutex<Counts>,
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

/// Which limit refused an upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The gateway-wide limit.
    Gateway,
    /// The endpoint's limit.
    Endpoint,
    /// The endpoint's per-client-address limit.
    Client,
}

impl Refusal {
    /// The status the client gets: 503 when the gateway or endpoint is
    /// full, 429 when this client has too many.
    pub fn status(self) -> StatusCode {
        match self {
            Self::Gateway | Self::Endpoint => StatusCode::SERVICE_UNAVAILABLE,
            Self::Client => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// The body the client gets.
    pub fn body(self) -> &'static str {
        match self {
            Self::Gateway => "the gateway is at its connection limit\n",
            Self::Endpoint => "this endpoint is at its connection limit\n",
            Self::Client => "too many connections from this address\n",
        }
    }
}

/// One admitted connection; dropping it gives its place back.
pub struct Admission {
    admissions: Arc<Admissions>,
    endpoint: String,
    client: IpAddr,
}

impl Admissions {
    /// Admit a connection from `client` under `limits`, or say which limit refuses it.
    pub fn admit(
        self: &Arc<Self>,
        limits: &Limits<'_>,
        client: IpAddr,
    ) -> Result<Admission, Refusal> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let endpoint_key = limits.endpoint.to_string();
        let client_key = (endpoint_key.clone(), client);
        let over = |count: u32, limit: Option<u32>| limit.is_some_and(|limit| count >= limit);
        if over(counts.total, limits.gateway) {
            return Err(Refusal::Gateway);
        }
        if over(
            counts.endpoints.get(&endpoint_key).copied().unwrap_or(0),
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
        *counts.endpoints.entry(endpoint_key.clone()).or_default() += 1;
        *counts.clients.entry(client_key).or_default() += 1;
        Ok(Admission {
            admissions: self.clone(),
            endpoint: endpoint_key,
            client,
        })
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut counts = self
            .admissions
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        counts.total = counts.total.saturating_sub(1);
        if let Some(count) = counts.endpoints.get_mut(&self.endpoint) {
            *count -= 1;
            if *count == 0 {
                counts.endpoints.remove(&self.endpoint);
            }
        }
        let key = (std::mem::take(&mut self.endpoint), self.client);
        if let Some(count) = counts.clients.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                counts.clients.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_scope_refuses_at_its_limit_and_places_come_back() {
        let admissions = Arc::new(Admissions::default());
        let a: IpAddr = "10.0.0.1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let b: IpAddr = "10.0.0.2".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let limits = Limits {
            gateway: Some(3),
            endpoint: "/e",
            per_endpoint: Some(2),
            per_client: Some(1),
        };
        let first = admissions.admit(&limits, a);
        assert!(first.is_ok());
        assert_eq!(admissions.admit(&limits, a).err(), Some(Refusal::Client));
        let second = admissions.admit(&limits, b);
        assert!(second.is_ok());
        assert_eq!(admissions.admit(&limits, b).err(), Some(Refusal::Endpoint));
        let other = Limits {
            endpoint: "/f",
            ..limits
        };
        let third = admissions.admit(&other, a);
        assert!(third.is_ok());
        assert_eq!(admissions.admit(&other, b).err(), Some(Refusal::Gateway));
        drop(first);
        assert!(admissions.admit(&limits, a).is_ok());
    }
}
