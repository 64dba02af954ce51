//! permessage-deflate (RFC 7692), under tungstenite: negotiated with each
//! peer on its own, and applied to the bytes between tungstenite and the
//! socket, so tungstenite, the relay and every plugin see plain messages.
//!
//! Reads: frames of a compressed message are inflated as their bytes
//! arrive and handed up as plain frames (a long message may be handed up
//! in several fragments; tungstenite joins them, and its message-size limit
//! stops an inflation bomb after at most one chunk beyond the limit).
//! Writes: each data frame tungstenite writes is deflated and written with
//! RSV1 on the first frame of its message. Control frames pass unchanged,
//! and a frame this layer cannot interpret (RSV1 where it does not belong)
//! is passed up unchanged for tungstenite to refuse.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::frame::{FrameHeader, apply_mask, is_data};

/// The extension's name in `Sec-WebSocket-Extensions`.
pub const EXTENSION: &str = "permessage-deflate";
/// What the gateway offers an upstream.
pub const UPSTREAM_OFFER: &str = "permessage-deflate; client_max_window_bits";

/// Inflated bytes handed up per frame, at most.
const INFLATE_CHUNK: usize = 16 * 1024;
/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 16 * 1024;
/// Frame bytes deflated per write call, at most.
const WRITE_CHUNK: usize = 256 * 1024;
/// Compressed bytes waiting for the socket before writes wait for it.
const WRITE_HIGH_WATER: usize = 256 * 1024;
/// Buffers larger than this are given back once empty, so a connection
/// that once sent a large message does not keep its buffers while idle.
const KEEP: usize = 64 * 1024;
/// The empty stored block that ends each message's data (RFC 7692 7.2.1).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Which end of the connection the gateway is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// We accepted the connection (the client side): frames read are masked.
    Server,
    /// We opened the connection (the upstream side): frames written are masked.
    Client,
}

/// What was agreed with one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreement {
    /// The LZ77 window our compressor may use, in bits (9 to 15).
    pub send_window_bits: u8,
    /// Start each message we send with an empty window.
    pub send_no_context_takeover: bool,
    /// The peer starts each message it sends with an empty window.
    pub receive_no_context_takeover: bool,
}

/// One offer's or answer's parameters.
#[derive(Default)]
struct Params {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    /// `Some(None)`: offered without a value.
    client_max_window_bits: Option<Option<u8>>,
}

/// Parse one extension's parameters; `None` for anything RFC 7692 does not
/// allow (unknown or repeated parameters, bad window sizes).
fn parse_params<'a>(params: impl Iterator<Item = &'a str>) -> Option<Params> {
    let mut parsed = Params::default();
    for param in params {
        let (name, value) = match param.split_once('=') {
            Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
            None => (param.trim(), None),
        };
        let bits = |value: Option<&str>| -> Option<u8> {
            let bits: u8 = value?.parse().ok()?;
            (8..=15).contains(&bits).then_some(bits)
        };
        match name {
            "server_no_context_takeover" if value.is_none() => {
                if std::mem::replace(&mut parsed.server_no_context_takeover, true) {
                    return None;
                }
            }
            "client_no_context_takeover" if value.is_none() => {
                if std::mem::replace(&mut parsed.client_no_context_takeover, true) {
                    return None;
                }
            }
            "server_max_window_bits" => {
                if parsed
                    .server_max_window_bits
                    .replace(bits(value)?)
                    .is_some()
                {
                    return None;
                }
            }
            "client_max_window_bits" => {
                let bits = match value {
                    None => None,
                    Some(_) => Some(bits(value)?),
                };
                if parsed.client_max_window_bits.replace(bits).is_some() {
                    return None;
                }
            }
            _ => return None,
        }
    }
    Some(parsed)
}

/// The extensions in `Sec-WebSocket-Extensions` values: name and parameters.
fn extensions<'a>(
    values: impl Iterator<Item = &'a str>,
) -> impl Iterator<Item = (&'a str, Vec<&'a str>)> {
    values.flat_map(|v| v.split(',')).filter_map(|extension| {
        let mut parts = extension.split(';').map(str::trim);
        let name = parts.next().filter(|n| !n.is_empty())?;
        Some((name, parts.filter(|p| !p.is_empty()).collect()))
    })
}

/// Choose among a client's offers (the values of its
/// `Sec-WebSocket-Extensions` headers): the first permessage-deflate offer
/// the gateway can honour, with the answer for the 101 response.
pub fn accept_offer<'a>(values: impl Iterator<Item = &'a str>) -> Option<(Agreement, String)> {
    extensions(values)
        .filter(|(name, _)| name.eq_ignore_ascii_case(EXTENSION))
        .find_map(|(_, params)| {
            let offer = parse_params(params.into_iter())?;
            // zlib cannot deflate within a 256-byte window.
            let window = offer.server_max_window_bits.unwrap_or(15);
            if window < 9 {
                return None;
            }
            let mut answer = String::from(EXTENSION);
            if offer.server_no_context_takeover {
                answer.push_str("; server_no_context_takeover");
            }
            // Always asked of the client (RFC 7692 7.1.1.2 lets a server
            // ask): its messages then refer to no earlier one, so the
            // decompressor (about 47 KiB) lives for one message instead of
            // the connection's life. Thousands of browser connections would
            // otherwise hold one each; what the client's messages lose is
            // the little that one small message's bytes share with the last.
            answer.push_str("; client_no_context_takeover");
            if let Some(bits) = offer.server_max_window_bits {
                answer.push_str(&format!("; server_max_window_bits={bits}"));
            }
            Some((
                Agreement {
                    send_window_bits: window,
                    send_no_context_takeover: offer.server_no_context_takeover,
                    receive_no_context_takeover: true,
                },
                answer,
            ))
        })
}

/// Read an upstream's answer to [`UPSTREAM_OFFER`]: `Ok(None)` if it
/// declined, an error naming what it answered that cannot be honoured.
pub fn accept_answer<'a>(
    values: impl Iterator<Item = &'a str>,
) -> Result<Option<Agreement>, String> {
    let mut agreement = None;
    for (name, params) in extensions(values) {
        if !name.eq_ignore_ascii_case(EXTENSION) {
            return Err(format!(
                "it answered with the extension {name:?}, which was not offered"
            ));
        }
        if agreement.is_some() {
            return Err(format!("it answered {EXTENSION} twice"));
        }
        let answer = parse_params(params.into_iter())
            .ok_or_else(|| format!("it answered {EXTENSION} with invalid parameters"))?;
        let window = match answer.client_max_window_bits {
            Some(Some(bits)) => bits,
            _ => 15,
        };
        if window < 9 {
            return Err("client_max_window_bits=8 cannot be honoured".to_string());
        }
        agreement = Some(Agreement {
            send_window_bits: window,
            send_no_context_takeover: answer.client_no_context_takeover,
            receive_no_context_takeover: answer.server_no_context_takeover,
        });
    }
    Ok(agreement)
}

/// Why reading a compressed message failed; carried inside the
/// `io::Error` tungstenite hands the relay (close code 1007).
#[derive(Debug, thiserror::Error)]
#[error("invalid compressed data: {0}")]
pub struct InflateError(String);

/// The I/O under tungstenite for one peer: pass-through unless
/// permessage-deflate was agreed with it.
pub struct Deflate<S> {
    inner: S,
    codec: Option<Box<Codec>>,
}

struct Codec {
    inflater: Inflater,
    deflater: Deflater,
}

impl<S> Deflate<S> {
    /// Wrap `inner`, applying `agreement` if there is one; we are `end`.
    pub fn new(inner: S, agreement: Option<Agreement>, end: End) -> Self {
        Self {
            inner,
            codec: agreement.map(|a| {
                Box::new(Codec {
                    inflater: Inflater::new(a, end),
                    deflater: Deflater::new(a),
                })
            }),
        }
    }

    /// The I/O underneath.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Messages written are compressed.
    pub fn compresses(&self) -> bool {
        self.codec.is_some()
    }

    /// Give back what the codec holds between messages: the compressor
    /// (about 380 KiB with a 32 KiB window) and the working buffers. A side
    /// in the middle of a message, or with bytes still to write or to hand
    /// up, keeps everything. The decompressor stays while the peer may
    /// refer back to earlier messages (context takeover); under
    /// no-context-takeover it is already gone after each message.
    ///
    /// The next message is deflated by a new compressor with an empty
    /// window. The peer reads it the same whatever was agreed: a compressor
    /// may always choose not to refer back, and a raw deflate stream is
    /// only a sequence of blocks, so the new blocks simply follow the old.
    pub fn shed(&mut self) {
        if let Some(codec) = self.codec.as_deref_mut() {
            codec.deflater.shed();
            codec.inflater.shed();
        }
    }
}

/// The frame being read.
struct Reading {
    header: FrameHeader,
    /// Payload bytes still to come.
    remaining: u64,
    offset: u64,
    /// Part of a compressed message: inflate it.
    inflate: bool,
}

/// The read half: socket bytes in, plain frames out.
struct Inflater {
    /// Made on the first compressed message (an idle connection holds
    /// none), and dropped after each message under no-context-takeover.
    decompress: Option<Decompress>,
    reset_each_message: bool,
    /// Mask what we hand up (tungstenite, as a server, refuses unmasked
    /// client frames); the key is zero, as the bytes never leave the process.
    mask_up: bool,
    input: Vec<u8>,
    output: Vec<u8>,
    handed: usize,
    frame: Option<Reading>,
    /// Inside a fragmented message: whether it is compressed.
    message: Option<bool>,
    /// The compressed message's opcode, until its first frame is handed up.
    first_opcode: Option<u8>,
    /// The peer ended the deflate stream (a final block) in this message.
    ended: bool,
    scratch: Vec<u8>,
    inflated: Vec<u8>,
}

impl Inflater {
    fn new(agreement: Agreement, end: End) -> Self {
        Self {
            decompress: None,
            reset_each_message: agreement.receive_no_context_takeover,
            mask_up: end == End::Server,
            input: Vec::new(),
            output: Vec::new(),
            handed: 0,
            frame: None,
            message: None,
            first_opcode: None,
            ended: false,
            scratch: Vec::new(),
            inflated: Vec::new(),
        }
    }

    /// Turn buffered input into output until one or the other runs out.
    fn process(&mut self) -> io::Result<()> {
        let mut at = 0;
        while self.output.len() < INFLATE_CHUNK {
            let Some(frame) = self.frame.as_mut() else {
                let Some(header) = self.input.get(at..).and_then(FrameHeader::parse) else {
                    break;
                };
                let inflate = self.start(header);
                if !inflate {
                    self.output.extend_from_slice(
                        self.input.get(at..at + header.size).unwrap_or_default(),
                    );
                }
                at += header.size;
                self.frame = Some(Reading {
                    header,
                    remaining: header.length,
                    offset: 0,
                    inflate,
                });
                if header.length == 0 {
                    self.end_frame()?;
                }
                continue;
            };
            let available = usize::try_from(frame.remaining)
                .unwrap_or(usize::MAX)
                .min(self.input.len() - at);
            if available == 0 {
                break;
            }
            if !frame.inflate {
                self.output
                    .extend_from_slice(self.input.get(at..at + available).unwrap_or_default());
                at += available;
                frame.remaining -= available as u64;
            } else {
                self.scratch.clear();
                self.scratch
                    .extend_from_slice(self.input.get(at..at + available).unwrap_or_default());
                if let Some(key) = frame.header.mask {
                    apply_mask(&mut self.scratch, key, frame.offset);
                }
                let decompress = self
                    .decompress
                    .get_or_insert_with(|| Decompress::new(false));
                let before = decompress.total_in();
                self.inflated.clear();
                self.inflated.reserve(INFLATE_CHUNK);
                let status = decompress
                    .decompress_vec(&self.scratch, &mut self.inflated, FlushDecompress::None)
                    .map_err(|e| invalid(e.to_string()))?;
                let used = (decompress.total_in() - before) as usize;
                at += used;
                frame.offset += used as u64;
                frame.remaining -= used as u64;
                if status == Status::StreamEnd {
                    self.ended = true;
                }
                if used == 0 && self.inflated.is_empty() {
                    return Err(invalid(if self.ended {
                        "data after the end of the compressed stream".into()
                    } else {
                        "the compressed data stopped making progress".into()
                    }));
                }
                if !self.inflated.is_empty() {
                    self.hand_up(false);
                }
            }
            if self.frame.as_ref().is_some_and(|f| f.remaining == 0) {
                self.end_frame()?;
            }
        }
        self.input.drain(..at);
        Ok(())
    }

    /// A frame starts: should its payload be inflated?
    fn start(&mut self, header: FrameHeader) -> bool {
        let rsv1 = header.rsv == 0b100;
        match header.opcode {
            opcode if is_data(opcode) && self.message.is_none() && (rsv1 || header.rsv == 0) => {
                if !header.fin {
                    self.message = Some(rsv1);
                }
                if rsv1 {
                    self.first_opcode = Some(opcode);
                }
                rsv1
            }
            0 if header.rsv == 0 && self.message.is_some() => {
                let compressed = self.message == Some(true);
                if header.fin {
                    self.message = None;
                }
                compressed
            }
            // Control frames, and anything tungstenite must refuse.
            _ => false,
        }
    }

    /// The current frame's payload is all read.
    fn end_frame(&mut self) -> io::Result<()> {
        let Some(frame) = self.frame.take() else {
            return Ok(());
        };
        if !frame.inflate {
            return Ok(());
        }
        if !frame.header.fin {
            return Ok(());
        }
        // The message ends: inflate the tail, hand up the last frame.
        let mut tail: &[u8] = &TAIL;
        loop {
            self.inflated.clear();
            self.inflated.reserve(INFLATE_CHUNK);
            let decompress = self
                .decompress
                .get_or_insert_with(|| Decompress::new(false));
            let before = decompress.total_in();
            let status = decompress
                .decompress_vec(tail, &mut self.inflated, FlushDecompress::Sync)
                .map_err(|e| invalid(e.to_string()))?;
            let used = (decompress.total_in() - before) as usize;
            tail = tail.get(used..).unwrap_or_default();
            let full = self.inflated.len() == self.inflated.capacity();
            if status == Status::StreamEnd {
                self.ended = true;
            }
            if !full || self.ended {
                break;
            }
            self.hand_up(false);
        }
        self.hand_up(true);
        // A peer may end a message's data with a final block; its next
        // message then starts a fresh stream.
        if self.reset_each_message || self.ended {
            self.decompress = None;
            self.ended = false;
        }
        // Working buffers are made again by the next message; a connection
        // between messages keeps none.
        self.scratch = Vec::new();
        self.inflated = Vec::new();
        Ok(())
    }

    /// Between messages with everything handed up: give the buffers back.
    fn shed(&mut self) {
        let between = self.frame.is_none()
            && self.message.is_none()
            && self.input.is_empty()
            && self.handed == self.output.len();
        if between {
            self.input = Vec::new();
            self.output = Vec::new();
            self.handed = 0;
        }
    }

    /// Hand up what was just inflated as one frame of the message.
    fn hand_up(&mut self, fin: bool) {
        let opcode = self.first_opcode.take().unwrap_or(0);
        let mask = self.mask_up.then_some([0; 4]);
        FrameHeader::write(
            &mut self.output,
            fin,
            false,
            opcode,
            mask,
            self.inflated.len(),
        );
        self.output.extend_from_slice(&self.inflated);
    }
}

fn invalid(reason: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, InflateError(reason))
}

/// The frame being written.
struct Writing {
    header: FrameHeader,
    remaining: u64,
    offset: u64,
    deflate: bool,
    /// First frame of its message: gets RSV1.
    first: bool,
}

/// The write half: frames from tungstenite in, compressed frames out.
struct Deflater {
    /// Made on the first message (an idle connection holds none), and
    /// dropped after each message under no-context-takeover.
    compress: Option<Compress>,
    window_bits: u8,
    reset_each_message: bool,
    header: Vec<u8>,
    frame: Option<Writing>,
    /// Inside a fragmented data message.
    in_message: bool,
    scratch: Vec<u8>,
    deflated: Vec<u8>,
    output: Vec<u8>,
    written: usize,
}

impl Deflater {
    fn new(agreement: Agreement) -> Self {
        Self {
            compress: None,
            window_bits: agreement.send_window_bits,
            reset_each_message: agreement.send_no_context_takeover,
            header: Vec::with_capacity(14),
            frame: None,
            in_message: false,
            scratch: Vec::new(),
            deflated: Vec::new(),
            output: Vec::new(),
            written: 0,
        }
    }

    /// Take frame bytes from tungstenite; returns how many were taken.
    fn consume(&mut self, mut bytes: &[u8]) -> io::Result<usize> {
        let total = bytes.len();
        while !bytes.is_empty() {
            let Some(frame) = self.frame.as_mut() else {
                // Headers are at most 14 bytes; take them a byte at a time
                // until one parses (tungstenite writes them whole anyway).
                let Some((&first, rest)) = bytes.split_first() else {
                    break;
                };
                self.header.push(first);
                bytes = rest;
                if let Some(header) = FrameHeader::parse(&self.header) {
                    self.start(header)?;
                }
                continue;
            };
            let take = usize::try_from(frame.remaining)
                .unwrap_or(usize::MAX)
                .min(bytes.len());
            let (chunk, rest) = bytes.split_at(take);
            bytes = rest;
            if frame.deflate {
                self.scratch.clear();
                self.scratch.extend_from_slice(chunk);
                if let Some(key) = frame.header.mask {
                    apply_mask(&mut self.scratch, key, frame.offset);
                }
                deflate_into(
                    compressor(&mut self.compress, self.window_bits),
                    &self.scratch,
                    &mut self.deflated,
                    FlushCompress::None,
                )?;
            } else {
                self.output.extend_from_slice(chunk);
            }
            frame.offset += take as u64;
            frame.remaining -= take as u64;
            if frame.remaining == 0 {
                self.end_frame()?;
            }
        }
        Ok(total)
    }

    /// Between messages with everything written: give the compressor and
    /// the buffers back (see [`Deflate::shed`]).
    fn shed(&mut self) {
        let between = self.frame.is_none()
            && !self.in_message
            && self.header.is_empty()
            && self.written == self.output.len();
        if between {
            self.compress = None;
            self.output = Vec::new();
            self.written = 0;
            self.scratch = Vec::new();
            self.deflated = Vec::new();
        }
    }

    /// A frame starts (its header is in `self.header`).
    fn start(&mut self, header: FrameHeader) -> io::Result<()> {
        let deflate = header.rsv == 0
            && ((is_data(header.opcode) && !self.in_message)
                || (header.opcode == 0 && self.in_message));
        let first = is_data(header.opcode);
        if is_data(header.opcode) || header.opcode == 0 {
            self.in_message = !header.fin;
        }
        if !deflate {
            self.output.extend_from_slice(&self.header);
        }
        self.header.clear();
        self.frame = Some(Writing {
            header,
            remaining: header.length,
            offset: 0,
            deflate,
            first,
        });
        if header.length == 0 {
            self.end_frame()?;
        }
        Ok(())
    }

    fn end_frame(&mut self) -> io::Result<()> {
        let Some(frame) = self.frame.take() else {
            return Ok(());
        };
        if !frame.deflate {
            return Ok(());
        }
        deflate_into(
            compressor(&mut self.compress, self.window_bits),
            &[],
            &mut self.deflated,
            FlushCompress::Sync,
        )?;
        if frame.header.fin {
            if self.deflated.ends_with(&TAIL) {
                self.deflated.truncate(self.deflated.len() - TAIL.len());
            } else if self.deflated.is_empty() {
                // Nothing new since the last flush (an empty message): zlib
                // does not flush twice, so send the empty stored block's
                // first byte; the peer's appended tail completes it.
                self.deflated.push(0x00);
            }
            if self.reset_each_message {
                self.compress = None;
            }
        }
        let header = frame.header;
        FrameHeader::write(
            &mut self.output,
            header.fin,
            frame.first,
            header.opcode,
            header.mask,
            self.deflated.len(),
        );
        let start = self.output.len();
        self.output.extend_from_slice(&self.deflated);
        if let (Some(key), Some(payload)) = (header.mask, self.output.get_mut(start..)) {
            apply_mask(payload, key, 0);
        }
        self.deflated.clear();
        release(&mut self.deflated);
        self.scratch.clear();
        release(&mut self.scratch);
        Ok(())
    }
}

/// Give an empty buffer's memory back if it grew large.
fn release(buffer: &mut Vec<u8>) {
    if buffer.is_empty() && buffer.capacity() > KEEP {
        *buffer = Vec::new();
    }
}

/// The compressor, made when first needed.
fn compressor(compress: &mut Option<Compress>, window_bits: u8) -> &mut Compress {
    compress.get_or_insert_with(|| {
        Compress::new_with_window_bits(Compression::fast(), false, window_bits)
    })
}

/// Deflate `input` onto the end of `out`, with `flush`.
fn deflate_into(
    compress: &mut Compress,
    mut input: &[u8],
    out: &mut Vec<u8>,
    flush: FlushCompress,
) -> io::Result<()> {
    loop {
        out.reserve(input.len().max(64) + 64);
        let before = compress.total_in();
        compress
            .compress_vec(input, out, flush)
            .map_err(|e| io::Error::other(e.to_string()))?;
        let used = (compress.total_in() - before) as usize;
        input = input.get(used..).unwrap_or_default();
        if input.is_empty() && out.len() < out.capacity() {
            return Ok(());
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Deflate<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let Some(codec) = this.codec.as_deref_mut() else {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        };
        let inflater = &mut codec.inflater;
        loop {
            if inflater.handed < inflater.output.len() {
                let take = (inflater.output.len() - inflater.handed).min(buf.remaining());
                buf.put_slice(
                    inflater
                        .output
                        .get(inflater.handed..inflater.handed + take)
                        .unwrap_or_default(),
                );
                inflater.handed += take;
                if inflater.handed == inflater.output.len() {
                    inflater.output = Vec::new();
                    inflater.handed = 0;
                    if inflater.input.is_empty() {
                        inflater.input = Vec::new();
                    }
                }
                return Poll::Ready(Ok(()));
            }
            inflater.process()?;
            if !inflater.output.is_empty() {
                continue;
            }
            let mut chunk = [0u8; READ_CHUNK];
            let mut read = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) if read.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => inflater.input.extend_from_slice(read.filled()),
                other => return other,
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> Deflate<S> {
    /// Write out compressed bytes; `Ready` once none are waiting.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(codec) = self.codec.as_deref_mut() else {
            return Poll::Ready(Ok(()));
        };
        let deflater = &mut codec.deflater;
        while deflater.written < deflater.output.len() {
            match Pin::new(&mut self.inner).poll_write(
                cx,
                deflater.output.get(deflater.written..).unwrap_or_default(),
            ) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => deflater.written += n,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => return Poll::Pending,
            }
        }
        deflater.output.clear();
        deflater.written = 0;
        release(&mut deflater.output);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Deflate<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.codec.is_none() {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        if this.poll_drain(cx)?.is_pending() {
            let waiting = this
                .codec
                .as_ref()
                .map_or(0, |c| c.deflater.output.len() - c.deflater.written);
            if waiting >= WRITE_HIGH_WATER {
                return Poll::Pending;
            }
        }
        let Some(codec) = this.codec.as_deref_mut() else {
            return Poll::Ready(Ok(0));
        };
        let taken = codec
            .deflater
            .consume(buf.get(..WRITE_CHUNK).unwrap_or(buf))?;
        // Start sending now; the flush that follows finishes it.
        let _ = this.poll_drain(cx)?;
        Poll::Ready(Ok(taken))
    }

    /// Without a codec, vectored writes pass through; with one, the first
    /// non-empty buffer is compressed, as in [`AsyncWrite::poll_write`].
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.codec.is_none() {
            return Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        }
        let first = bufs.iter().find(|buf| !buf.is_empty());
        self.poll_write(cx, first.map_or(&[], |buf| &**buf))
    }

    fn is_write_vectored(&self) -> bool {
        self.codec.is_none() && self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.poll_drain(cx)?.is_pending() {
            return Poll::Pending;
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.poll_drain(cx)?.is_pending() {
            return Poll::Pending;
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, reason = "tests index what they built")]
mod tests {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

    use crate::websocket::WebSocket;

    fn agreement(bits: u8, send_reset: bool, receive_reset: bool) -> Agreement {
        Agreement {
            send_window_bits: bits,
            send_no_context_takeover: send_reset,
            receive_no_context_takeover: receive_reset,
        }
    }

    #[test]
    fn the_first_offer_the_gateway_can_honour_is_accepted() {
        let accept = |offers: &[&str]| accept_offer(offers.iter().copied());
        assert_eq!(
            accept(&["permessage-deflate; client_max_window_bits"]),
            Some((
                agreement(15, false, true),
                "permessage-deflate; client_no_context_takeover".to_string()
            ))
        );
        // A window of 256 bytes cannot be honoured; the next offer is.
        assert_eq!(
            accept(&[
                "permessage-deflate; server_max_window_bits=8",
                "permessage-deflate; server_max_window_bits=\"10\"; server_no_context_takeover; client_no_context_takeover"
            ]),
            Some((
                agreement(10, true, true),
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10"
                    .to_string()
            ))
        );
        for refused in [
            "x-webkit-deflate-frame",
            "permessage-deflate; unknown_parameter",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; server_no_context_takeover=1",
        ] {
            assert_eq!(accept(&[refused]), None, "{refused}");
        }
        assert_eq!(accept(&[]), None);
    }

    #[test]
    fn an_upstream_answer_is_honoured_or_refused_with_a_reason() {
        let answer = |values: &[&str]| accept_answer(values.iter().copied());
        assert_eq!(answer(&[]), Ok(None));
        assert_eq!(
            answer(&["permessage-deflate; client_max_window_bits=10; server_no_context_takeover"]),
            Ok(Some(agreement(10, false, true)))
        );
        assert_eq!(
            answer(&["permessage-deflate; client_no_context_takeover"]),
            Ok(Some(agreement(15, true, false)))
        );
        for (bad, says) in [
            ("x-other", "\"x-other\""),
            ("permessage-deflate, permessage-deflate", "twice"),
            (
                "permessage-deflate; client_max_window_bits=8",
                "client_max_window_bits=8",
            ),
            ("permessage-deflate; bogus", "invalid parameters"),
        ] {
            let error = answer(&[bad]).unwrap_err();
            assert!(error.contains(says), "{bad}: {error}");
        }
    }

    /// Two tungstenite ends over a small in-memory pipe, each over
    /// `Deflate`; every message arrives intact both ways. The server sheds
    /// its codec after each echo when `shed` (as a quiet connection does).
    /// Returns the bytes that crossed the pipe from the client.
    fn exchange(
        messages: &[Message],
        server: Agreement,
        client: Agreement,
        pipe: usize,
        shed: bool,
    ) -> usize {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (a, b) = tokio::io::duplex(pipe);
            let b = crate::testing::Counting::new(b);
            let written = std::sync::Arc::clone(&b.written);
            // The echoing end is the gateway's own WebSocket wrapper, which
            // writes large messages as a header and a payload.
            let mut server_ws = WebSocket::new(
                Deflate::new(a, Some(server), End::Server),
                Role::Server,
                WebSocketConfig::default(),
            );
            let client_ws = WebSocketStream::from_raw_socket(
                Deflate::new(b, Some(client), End::Client),
                Role::Client,
                None,
            )
            .await;
            // The client sends and reads at once: with a small pipe, an echo
            // waits for the client to read.
            let (mut sink, mut stream) = client_ws.split();
            let send = async {
                for message in messages {
                    sink.send(message.clone()).await.unwrap();
                }
            };
            let receive = async {
                for expected in messages {
                    let echoed = stream.next().await.unwrap().unwrap();
                    assert_eq!(&echoed, expected);
                }
            };
            let echo = async {
                for expected in messages {
                    let got = server_ws.next().await.unwrap().unwrap();
                    assert_eq!(&got, expected);
                    server_ws.feed(got).await.unwrap();
                    server_ws.flush().await.unwrap();
                    if shed {
                        server_ws.get_mut().shed();
                        let codec = server_ws.get_ref().codec.as_deref().unwrap();
                        assert!(codec.deflater.compress.is_none());
                        assert_eq!(codec.deflater.output.capacity(), 0);
                    }
                }
            };
            tokio::join!(send, receive, echo);
            written.load(std::sync::atomic::Ordering::Relaxed)
        })
    }

    /// The gateway's wrapper as a compressing client (masking, and writing
    /// large messages as a header and a payload) to a compressing server.
    #[test]
    fn our_end_as_a_client_sends_large_messages_compressed() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (a, b) = tokio::io::duplex(4096);
            let mut ours = WebSocket::new(
                Deflate::new(a, Some(agreement(12, false, false)), End::Client),
                Role::Client,
                WebSocketConfig::default(),
            );
            let mut peer = WebSocketStream::from_raw_socket(
                Deflate::new(b, Some(agreement(12, false, false)), End::Server),
                Role::Server,
                None,
            )
            .await;
            let messages = [
                Message::binary(
                    (0..100_000u32)
                        .map(|i| (i % 251) as u8)
                        .collect::<Vec<u8>>(),
                ),
                Message::text("compress me; ".repeat(5000)),
                Message::text("small"),
            ];
            let send = async {
                for message in &messages {
                    ours.feed(message.clone()).await.unwrap();
                    ours.flush().await.unwrap();
                }
            };
            let receive = async {
                for expected in &messages {
                    assert_eq!(&peer.next().await.unwrap().unwrap(), expected);
                }
            };
            tokio::join!(send, receive);
        });
    }

    #[test]
    fn repetitive_messages_cross_the_wire_compressed() {
        let text = "the same words again and again; ".repeat(4096);
        let messages = vec![Message::text(text.clone()), Message::text(text.clone())];
        let written = exchange(
            &messages,
            agreement(15, false, false),
            agreement(15, false, false),
            4096,
            false,
        );
        assert!(
            written < text.len() / 20,
            "{written} bytes for {} uncompressed",
            2 * text.len()
        );
    }

    #[test]
    fn a_quiet_side_deflates_each_message_with_a_new_compressor_its_peer_still_reads() {
        // The peer keeps its window (context takeover): messages after the
        // compressor was given back must still inflate against it.
        let text = "the same words again and again; ".repeat(64);
        let messages: Vec<Message> = (0..4)
            .map(|i| Message::text(format!("{i}: {text}")))
            .collect();
        let written = exchange(
            &messages,
            agreement(15, false, false),
            agreement(15, false, false),
            4096,
            true,
        );
        assert!(written > 0);
    }

    #[test]
    fn empty_messages_after_others_are_sent_as_an_empty_stored_block() {
        // zlib does not flush twice: an empty message right after another
        // must still end in a block the peer's appended tail completes.
        let noise: Vec<u8> = (0..3000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let messages = [
            Message::binary(noise),
            Message::text(""),
            Message::text(""),
            Message::text("after"),
        ];
        exchange(
            &messages,
            agreement(11, true, false),
            agreement(15, false, true),
            11_312,
            false,
        );
        exchange(
            &messages,
            agreement(15, false, false),
            agreement(15, false, false),
            3,
            true,
        );
    }

    fn message() -> impl proptest::strategy::Strategy<Value = Message> {
        use proptest::prelude::*;
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..3000).prop_map(Message::binary),
            ("[a-c ]{0,40}", 0usize..3000).prop_map(|(text, times)| Message::text(
                text.repeat(times.min(2000 / text.len().max(1)))
            )),
            Just(Message::text("")),
            (any::<u8>(), 0usize..100_000).prop_map(|(byte, n)| Message::binary(vec![byte; n])),
        ]
    }

    /// Feed `wire` to an inflater (we are the server) in `chunk`-byte
    /// pieces; what it hands up, or its error.
    fn inflate_wire(wire: &[u8], chunk: usize, reset: bool) -> io::Result<Vec<u8>> {
        let mut inflater = Inflater::new(agreement(15, false, reset), End::Server);
        let mut up = Vec::new();
        for piece in wire.chunks(chunk.max(1)) {
            inflater.input.extend_from_slice(piece);
            loop {
                inflater.process()?;
                if inflater.output.is_empty() {
                    break;
                }
                up.append(&mut inflater.output);
            }
        }
        Ok(up)
    }

    // 256 cases each by default; PROPTEST_CASES (scripts/fuzz) for more.
    proptest::proptest! {
        /// Hostile compressed data: frames with any header bits and any
        /// payload, in any chunks, never panic or stall the inflater; it
        /// hands up plain frames or says the data is invalid.
        #[test]
        fn arbitrary_compressed_frames_never_panic(
            frames in proptest::collection::vec(
                (0u8..16, proptest::prelude::any::<bool>(), 0u8..8, proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)),
                0..8,
            ),
            chunk in 1usize..400,
            reset in proptest::prelude::any::<bool>(),
        ) {
            let mut wire = Vec::new();
            for (opcode, fin, rsv, payload) in &frames {
                let key = [1, 2, 3, 4];
                wire.push(u8::from(*fin) << 7 | rsv << 4 | opcode);
                let mut header = Vec::new();
                FrameHeader::write(&mut header, false, false, 0, Some(key), payload.len());
                wire.extend_from_slice(&header[1..]);
                wire.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
            }
            let _ = inflate_wire(&wire, chunk, reset);
        }

        /// Any messages, with any parameters either end may have agreed,
        /// through a pipe of any size, arrive unchanged both ways.
        #[test]
        fn any_messages_round_trip(
            messages in proptest::collection::vec(message(), 1..12),
            server_bits in 9u8..=15,
            client_bits in 9u8..=15,
            resets in proptest::prelude::any::<(bool, bool)>(),
            pipe in 1usize..20_000,
            shed in proptest::prelude::any::<bool>(),
        ) {
            exchange(
                &messages,
                agreement(server_bits, resets.0, resets.1),
                agreement(client_bits, resets.1, resets.0),
                pipe,
                shed,
            );
        }
    }
}
