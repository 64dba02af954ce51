//! A lean WebSocket client for many quiet connections (W7): one task per
//! connection over a plain `TcpStream`, the handshake and the frames written
//! and parsed by hand. With thousands of connections speaking in the same
//! instant, the generator's own cost per message decides how fast a burst
//! leaves it; tokio-tungstenite's split stream (two tasks and a lock per
//! connection) made the generator, not the proxy, what held a burst back.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{Tally, Window};

/// A connection whose upgrade is done, with the bytes read past the
/// server's handshake response (a broadcast may follow it at once).
pub struct Connection {
    stream: TcpStream,
    frames: FrameReader,
}

/// Open a WebSocket connection to `url` (`ws://host:port/path`), offering
/// permessage-deflate when `deflate` (messages are still sent uncompressed,
/// which the extension allows; compressed ones received are counted, not
/// timed).
pub async fn connect(url: &str, deflate: bool) -> anyhow::Result<Connection> {
    let rest = url
        .strip_prefix("ws://")
        .with_context(|| format!("{url}: only ws:// URLs"))?;
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut stream = TcpStream::connect(authority)
        .await
        .with_context(|| format!("connecting to {authority}"))?;
    stream.set_nodelay(true)?;
    let extensions = if deflate {
        "Sec-WebSocket-Extensions: permessage-deflate\r\n"
    } else {
        ""
    };
    let request = format!(
        "GET /{path} HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n{extensions}\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut buffer = Vec::with_capacity(1024);
    let end = loop {
        if stream.read_buf(&mut buffer).await? == 0 {
            bail!("{url}: the connection closed during the handshake");
        }
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if buffer.len() > 16 * 1024 {
            bail!("{url}: no end to the handshake response");
        }
    };
    if !buffer.starts_with(b"HTTP/1.1 101") {
        let head = String::from_utf8_lossy(buffer.get(..end).unwrap_or_default());
        bail!("{url}: upgrade refused: {head}");
    }
    buffer.drain(..end);
    Ok(Connection {
        stream,
        frames: FrameReader { buffer },
    })
}

/// A binary client frame of `payload`. Clients must mask; the key is zero,
/// so the payload is written as it is.
fn client_frame(payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 14);
    frame.push(0x82);
    match u16::try_from(payload.len()) {
        Ok(len) if len < 126 => frame.push(0x80 | len as u8),
        Ok(len) => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&len.to_be_bytes());
        }
        Err(_) => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&[0; 4]);
    frame.extend_from_slice(payload);
    frame
}

/// What the server sent, not yet parsed into frames.
struct FrameReader {
    buffer: Vec<u8>,
}

/// One frame from the server.
enum Frame {
    /// A data frame's first 8 payload bytes (its stamp), if it had them
    /// and was not compressed.
    Data(Option<u64>),
    /// A close frame: the connection is over.
    Close,
    /// A control frame to ignore.
    Other,
}

impl FrameReader {
    /// The next whole frame in the buffer, removed from it; `None` until
    /// one has arrived in full.
    fn next(&mut self) -> Option<Frame> {
        let first = *self.buffer.first()?;
        let second = *self.buffer.get(1)?;
        let (len, header) = match second & 0x7f {
            126 => (
                u64::from(u16::from_be_bytes(self.buffer.get(2..4)?.try_into().ok()?)),
                4,
            ),
            127 => (
                u64::from_be_bytes(self.buffer.get(2..10)?.try_into().ok()?),
                10,
            ),
            len => (u64::from(len), 2),
        };
        let end = header + usize::try_from(len).ok()?;
        let payload = self.buffer.get(header..end)?;
        let compressed = first & 0x40 != 0;
        let frame = match first & 0x0f {
            0x1 | 0x2 => Frame::Data(
                payload
                    .get(..8)
                    .filter(|_| !compressed)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_le_bytes),
            ),
            0x8 => Frame::Close,
            _ => Frame::Other,
        };
        self.buffer.drain(..end);
        Some(frame)
    }
}

/// How a connection's latencies are measured.
#[derive(Clone, Copy)]
pub enum Stamps {
    /// Its own messages, echoed: stamps are nanoseconds since the window's
    /// epoch; one is sent every `period`, the first at `first`.
    Echo {
        period: Duration,
        first: Duration,
        size: usize,
    },
    /// The server's broadcasts: stamps are nanoseconds since the Unix epoch.
    Broadcast,
}

impl Connection {
    /// Send (for `Stamps::Echo`) and receive within `window`; the tally
    /// counts what was sent, or broadcast, while it was open.
    pub async fn run(mut self, window: Window, stamps: Stamps) -> anyhow::Result<Tally> {
        let mut tally = Tally::default();
        let (mut next, period, size) = match stamps {
            Stamps::Echo {
                period,
                first,
                size,
            } => (Some(window.epoch + first), period, size),
            Stamps::Broadcast => (None, Duration::ZERO, 0),
        };
        let mut payload = vec![b'x'; size.max(8)];
        let mut awaiting = 0u64;
        let give_up = window.stop_at + Duration::from_secs(5);
        let mut read = vec![0u8; 4096];
        loop {
            let sending = next.filter(|at| *at < window.stop_at);
            // Echo: until every message sent has come back (or 5 s past the
            // window); broadcast: until the window closes.
            let until = match stamps {
                Stamps::Echo { .. } if sending.is_none() && awaiting == 0 => break,
                Stamps::Echo { .. } => sending.unwrap_or(give_up),
                Stamps::Broadcast => window.stop_at,
            };
            if sending.is_none() && Instant::now() >= until {
                break;
            }
            tokio::select! {
                () = tokio::time::sleep_until(until.into()) => {
                    let Some(at) = sending else { continue };
                    let stamp = u64::try_from((at - window.epoch).as_nanos()).unwrap_or(u64::MAX);
                    if let Some(head) = payload.get_mut(..8) {
                        head.copy_from_slice(&stamp.to_le_bytes());
                    }
                    self.stream.write_all(&client_frame(&payload)).await?;
                    awaiting += 1;
                    next = Some(at + period);
                }
                got = self.stream.read(&mut read) => {
                    let got = got?;
                    if got == 0 {
                        break;
                    }
                    self.frames.buffer.extend_from_slice(read.get(..got).unwrap_or_default());
                    while let Some(frame) = self.frames.next() {
                        match frame {
                            Frame::Close => return Ok(tally),
                            Frame::Other => {}
                            Frame::Data(stamp) => {
                                awaiting = awaiting.saturating_sub(1);
                                if let Some(stamp) = stamp {
                                    record(&mut tally, window, stamps, stamp);
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok(tally)
    }
}

/// Count one received message whose stamp is `stamp`.
fn record(tally: &mut Tally, window: Window, stamps: Stamps, stamp: u64) {
    let now = Instant::now();
    let latency = match stamps {
        Stamps::Echo { .. } => {
            let sent_at = window.epoch + Duration::from_nanos(stamp);
            if sent_at < window.measure_from || sent_at >= window.stop_at {
                return;
            }
            now.saturating_duration_since(sent_at)
        }
        Stamps::Broadcast => {
            if now < window.measure_from || now >= window.stop_at {
                return;
            }
            let unix = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            unix.saturating_sub(Duration::from_nanos(stamp))
        }
    };
    tally.messages += 1;
    tally
        .latencies_us
        .push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX));
}
