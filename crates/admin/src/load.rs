//! What admin callers hold at once: connections and live tails, each
//! counted under its `[admin]` limit and given back when it ends.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use wsgate_config::Admin;
use wsgate_proxy::Gateway;

/// The admin limits in force (the current generation's `[admin]` table,
/// or the defaults), read at each accept so a deploy can change them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AdminLimits {
    /// `[admin] max-connections`.
    pub max_connections: u32,
    /// `[admin] max-tails`.
    pub max_tails: u32,
    /// Time to send a request head, and longest idle keep-alive
    /// (`[gateway] handshake-timeout`).
    pub header_timeout: Duration,
}

impl AdminLimits {
    /// The limits `gateway`'s current configuration sets.
    pub fn of(gateway: &Gateway) -> Self {
        let generation = gateway.generation();
        let config = &generation.config;
        let admin = config.admin.as_ref();
        Self {
            max_connections: admin.map_or(Admin::DEFAULT_MAX_CONNECTIONS, |a| {
                *a.max_connections.get_ref()
            }),
            max_tails: admin.map_or(Admin::DEFAULT_MAX_TAILS, |a| *a.max_tails.get_ref()),
            header_timeout: config.gateway.handshake_timeout.0,
        }
    }
}

/// Admin connections and live tails open right now, and how many each
/// limit refused.
#[derive(Debug, Default)]
pub(crate) struct Load {
    connections: AtomicU32,
    tails: AtomicU32,
    /// Connections closed at accept by `[admin] max-connections`.
    refused_connections: AtomicU64,
    /// Tails answered 503 by `[admin] max-tails`.
    refused_tails: AtomicU64,
}

/// One counted admin connection or tail; dropping it gives its place back.
#[derive(Debug)]
pub(crate) struct Place {
    load: Arc<Load>,
    tail: bool,
}

impl Load {
    /// A place for a new admin connection, unless `limit` are open (then
    /// the refusal is counted).
    pub fn connection(self: &Arc<Self>, limit: u32) -> Option<Place> {
        self.place(false, limit)
    }

    /// A place for a new live tail, unless `limit` are open (then the
    /// refusal is counted).
    pub fn tail(self: &Arc<Self>, limit: u32) -> Option<Place> {
        self.place(true, limit)
    }

    fn place(self: &Arc<Self>, tail: bool, limit: u32) -> Option<Place> {
        let (count, refused) = if tail {
            (&self.tails, &self.refused_tails)
        } else {
            (&self.connections, &self.refused_connections)
        };
        if take(count, limit) {
            Some(Place {
                load: self.clone(),
                tail,
            })
        } else {
            refused.fetch_add(1, Ordering::Relaxed);
            None
        }
    }

    /// Refusals by the configuration key of the limit that refused them.
    pub fn refusals(&self) -> [(&'static str, u64); 2] {
        [
            (
                "max-connections",
                self.refused_connections.load(Ordering::Relaxed),
            ),
            ("max-tails", self.refused_tails.load(Ordering::Relaxed)),
        ]
    }

    /// Admin connections open right now.
    pub fn connections(&self) -> u32 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Live tails open right now.
    pub fn tails(&self) -> u32 {
        self.tails.load(Ordering::Relaxed)
    }
}

/// One more under `limit`, or false.
fn take(count: &AtomicU32, limit: u32) -> bool {
    count
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
            (open < limit).then_some(open + 1)
        })
        .is_ok()
}

impl Drop for Place {
    fn drop(&mut self) {
        let count = if self.tail {
            &self.load.tails
        } else {
            &self.load.connections
        };
        count.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An admin connection's socket with its place, given back when the
/// connection is shut down (before the peer sees it closed) or dropped.
pub(crate) struct Counted<IO> {
    io: IO,
    place: Option<Place>,
}

impl<IO> Counted<IO> {
    /// `io`, counted by `place`.
    pub fn new(io: IO, place: Place) -> Self {
        Self {
            io,
            place: Some(place),
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Counted<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Counted<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        drop(self.place.take());
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_refused_at_the_limit_and_given_back_on_drop() {
        let load = Arc::new(Load::default());
        let first = load.connection(2);
        let second = load.connection(2);
        assert!(first.is_some() && second.is_some());
        assert!(load.connection(2).is_none());
        let tail = load.tail(1);
        assert!(tail.is_some());
        assert!(load.tail(1).is_none());
        assert_eq!((load.connections(), load.tails()), (2, 1));
        assert_eq!(load.refusals(), [("max-connections", 1), ("max-tails", 1)]);
        drop((first, tail));
        assert_eq!((load.connections(), load.tails()), (1, 0));
        assert!(load.connection(2).is_some());
    }
}
