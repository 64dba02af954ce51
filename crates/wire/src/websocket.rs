//! A WebSocket connection driven by the one task that relays it.
//!
//! tungstenite's [`WebSocketContext`] over any tokio I/O, polled with the
//! relay task's own context. tokio-tungstenite's `WebSocketStream` allows a
//! stream to be split across tasks, so every poll re-registers read and
//! write wakers in proxies of its own; a relay owns both halves of both
//! connections in one task and needs none of that.
//!
//! tungstenite's context holds a read buffer of `read-buffer-size`; it is
//! made when the connection first has something to read or write, so a
//! connection that stays idle holds none. tungstenite reads at most that
//! much per call, so a large message would take a system call per few KiB:
//! once a read fills tungstenite's buffer, reads go through a read-ahead
//! buffer of [`READ_AHEAD`] bytes instead, given back as soon as the socket
//! has nothing more (to a spare kept per thread, so reading ahead
//! allocates only while another connection on the thread holds that
//! buffer, or a message cut from it is still alive). After a large
//! message ([`LARGE_MESSAGE`]), the next one's first read goes straight
//! into read-ahead: one system call per message of up to 64 KiB, as nginx
//! makes, not a small read first.
//!
//! A large message that is one frame, found whole in the read-ahead bytes
//! while tungstenite holds nothing, is read without tungstenite: its
//! payload is cut out of the read-ahead buffer and unmasked in place,
//! where tungstenite would take it a few KiB at a time into a buffer it
//! zeroes first. Once written, such a message's buffer is the thread's
//! spare again (`recycle`). Anything else (control frames, fragments,
//! small messages, and every frame tungstenite would refuse) is
//! tungstenite's to read.
//!
//! A data message of at least [`DIRECT_WRITE_MIN`] bytes is not copied
//! into tungstenite's write buffer: its header and its payload go out in
//! one vectored write from the message itself (`DirectFrame`); towards
//! an upstream, where frames are masked, the payload is masked in place
//! when the message is its only owner. While such a frame is part-written,
//! tungstenite may not write (a pong it owes waits for the frame's end).
//!
//! A connection that speaks rarely can give the context back between
//! messages ([`WebSocket::shed`]) once tungstenite holds nothing of it: the
//! bytes handed to tungstenite are followed frame by frame
//! ([`FrameTracker`]), so the wrapper knows when every message handed over
//! has been returned and no partial frame or message is left.

use std::io::{self, IoSlice, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};
use tokio_tungstenite::tungstenite::{Bytes, Error as WsError, Message, Utf8Bytes};
use tokio_util::io::poll_read_buf;

use crate::frame::{FrameHeader, FrameTracker, HeaderBytes, apply_mask, is_data};

/// Bytes of the first read from an idle connection, taken on the stack.
const FIRST_READ: usize = 512;

/// Bytes read at once while a large message (or a burst) streams in:
/// room for a 64 KiB payload with its frame header and more, so that such
/// a message, read whole, does not fill it (a read that fills its buffer
/// is followed by another, which would find nothing). The rest of a frame
/// read directly that does not fit goes into a buffer of its own size.
pub const READ_AHEAD: usize = 65 * 1024;

/// The largest buffer kept as a thread's spare: a message's buffer beyond
/// this is freed once written, not kept for reading ahead.
const SPARE_MOST: usize = 2 * READ_AHEAD;

/// A text or binary message at least this long is large: after one, the
/// next message's first read goes straight into read-ahead, and a
/// single-frame one found whole there while tungstenite holds nothing is
/// read without tungstenite (see the module's note).
pub const LARGE_MESSAGE: usize = 8 * 1024;

thread_local! {
    /// One read-ahead buffer per thread between uses. A connection takes
    /// it to read ahead and gives it back once drained, or when the read
    /// found nothing: reading ahead allocates only while another
    /// connection on the thread holds a buffer (unread bytes, or its last
    /// read filled it, or a message read directly from it is still
    /// alive), and a connection between reads holds none. Each thread
    /// that ever read ahead keeps one, of 65 KiB to [`SPARE_MOST`], until
    /// it exits.
    static SPARE_READ_AHEAD: std::cell::Cell<BytesMut> = std::cell::Cell::new(BytesMut::new());
}

/// An empty read-ahead buffer with room for [`READ_AHEAD`] bytes: the
/// thread's spare if it has that room without allocating (nothing cut
/// from it is still alive, or enough room is left past what is), else a
/// new one.
fn read_ahead_buffer() -> BytesMut {
    // At a thread's exit there is no spare: a new buffer.
    let mut buffer = SPARE_READ_AHEAD
        .try_with(std::cell::Cell::take)
        .unwrap_or_default();
    if fits_spare(&mut buffer) {
        buffer
    } else {
        BytesMut::with_capacity(READ_AHEAD)
    }
}

/// Empty `buffer`, and say whether it can be the thread's spare: room for
/// [`READ_AHEAD`] bytes without allocating, in an allocation of at most
/// [`SPARE_MOST`] bytes. (A buffer can show less room than its allocation
/// has, such as the front of one whose back was split off and dropped, so
/// its size is probed by asking for more.)
fn fits_spare(buffer: &mut BytesMut) -> bool {
    buffer.clear();
    buffer.try_reclaim(READ_AHEAD)
        && buffer.capacity() <= SPARE_MOST
        && !buffer.try_reclaim(SPARE_MOST + 1)
}

/// Keep `buffer`, emptied, as the thread's spare, unless it already has
/// one (then, or at the thread's exit, it is freed). A buffer that
/// messages read directly from it still share is kept if it has room
/// left: by its next use they are usually gone, and it is whole again
/// (such a buffer is a read-ahead buffer, of at most [`SPARE_MOST`]). One
/// with no room left (drained, or the rest of a buffer read to its end)
/// is kept only if it is whole again now and no larger.
fn spare(mut buffer: BytesMut) {
    buffer.clear();
    if (buffer.capacity() == 0 && !fits_spare(&mut buffer)) || buffer.capacity() > SPARE_MOST {
        return;
    }
    let _ = SPARE_READ_AHEAD.try_with(|slot| {
        let held = slot.take();
        slot.set(if held.capacity() == 0 { buffer } else { held });
    });
}

/// A written message's `payload`, if nothing else holds it and its buffer
/// holds [`READ_AHEAD`] to [`SPARE_MOST`] bytes, becomes the thread's spare
/// read-ahead buffer: a large message read directly and relayed goes back
/// to be read into again, and no read allocates.
fn recycle(payload: Bytes) {
    if payload.len() < LARGE_MESSAGE {
        return;
    }
    if let Ok(mut buffer) = payload.try_into_mut()
        && fits_spare(&mut buffer)
    {
        spare(buffer);
    }
}

/// Data messages at least this long are written from the message itself
/// (see the module's note); shorter ones are copied into tungstenite's
/// write buffer, where a copy costs less than a second buffer to write.
pub const DIRECT_WRITE_MIN: usize = 8 * 1024;

/// A text or binary message's length; `None` for control messages.
fn data_length(message: &Message) -> Option<usize> {
    match message {
        Message::Text(text) => Some(text.len()),
        Message::Binary(data) => Some(data.len()),
        _ => None,
    }
}

/// One end of a WebSocket connection over `S`.
pub struct WebSocket<S> {
    io: S,
    /// Made on first use (see the module's note).
    context: Option<WebSocketContext>,
    role: Role,
    config: WebSocketConfig,
    /// The connection closed or failed: reads yield nothing more.
    ended: bool,
    /// Nothing is queued that has to be written before another message.
    ready: bool,
    /// Messages were fed since the last completed flush.
    unflushed: bool,
    /// tungstenite owes the peer an answer (a pong) that the next write or
    /// flush sends.
    answer_owed: bool,
    /// A close frame was sent or received: the context stays to the end.
    closing: bool,
    /// Messages tungstenite has returned.
    returned: u64,
    reads: Reads,
    /// A data frame being written from its own payload.
    direct: Option<DirectFrame>,
}

/// A data frame written from its message's payload: header and payload in
/// one vectored write, with no copy into tungstenite's write buffer.
struct DirectFrame {
    /// Inline: writing a large message allocates nothing for its header.
    header: HeaderBytes,
    payload: Bytes,
    /// Bytes of header and payload written so far.
    written: usize,
}

impl DirectFrame {
    /// Whether `message` is written this way: text or binary of at least
    /// [`DIRECT_WRITE_MIN`] bytes.
    fn is_large_data(message: &Message) -> bool {
        data_length(message).is_some_and(|length| length >= DIRECT_WRITE_MIN)
    }

    /// The frame for `message`, which [`Self::is_large_data`] accepted,
    /// sent in `role` (masked as a client); any other message comes back.
    fn of(message: Message, role: Role) -> Result<Self, Message> {
        let mask = match role {
            Role::Server => None,
            // A thread's generator, seeded from the system once: no system
            // call per frame.
            Role::Client => Some(rand::random::<[u8; 4]>()),
        };
        let (opcode, payload) = match message {
            Message::Text(text) => (1, Bytes::from(text)),
            Message::Binary(data) => (2, data),
            other => return Err(other),
        };
        let payload = match mask {
            None => payload,
            Some(key) => {
                // In place when the message is the payload's only owner.
                let mut owned = payload
                    .try_into_mut()
                    .unwrap_or_else(|shared| bytes::BytesMut::from(shared.as_ref()));
                apply_mask(&mut owned, key, 0);
                owned.freeze()
            }
        };
        let mut header = HeaderBytes::new();
        FrameHeader::write(&mut header, true, false, opcode, mask, payload.len());
        Ok(Self {
            header,
            payload,
            written: 0,
        })
    }

    /// What is left to write: the rest of the header, the rest of the payload.
    fn rest(&self) -> [IoSlice<'_>; 2] {
        let into_payload = self.written.saturating_sub(self.header.len());
        [
            IoSlice::new(self.header.get(self.written..).unwrap_or_default()),
            IoSlice::new(self.payload.get(into_payload..).unwrap_or_default()),
        ]
    }

    /// Whether all of the frame has been written.
    fn is_written(&self) -> bool {
        self.written >= self.header.len() + self.payload.len()
    }
}

/// What the reads from `io` left behind.
#[derive(Default)]
struct Reads {
    /// The last read filled the buffer it was given: more is probably
    /// waiting in the socket.
    full: bool,
    /// The last data message read was large ([`LARGE_MESSAGE`]): the
    /// next read, even at the start of a message, reads ahead.
    streaming: bool,
    /// The read-ahead buffer (none except during a read, while unread
    /// bytes remain, or after a read that filled it); its bytes are the
    /// unread ones.
    ahead: BytesMut,
    /// Every byte handed to tungstenite, followed frame by frame.
    handed: FrameTracker,
}

impl Reads {
    /// Hand out read-ahead bytes into `buf`, never past the end of a
    /// frame whose payload tungstenite is reading (so a large message
    /// behind it can be read directly; a read that starts at a frame's
    /// header may still take the next frame's first bytes); 0 when there
    /// are none.
    fn take(&mut self, buf: &mut [u8]) -> usize {
        let mut n = self.ahead.len().min(buf.len());
        if let Ok(left) = usize::try_from(self.handed.payload_left())
            && left > 0
        {
            n = n.min(left);
        }
        if let (Some(to), Some(from)) = (buf.get_mut(..n), self.ahead.get(..n)) {
            to.copy_from_slice(from);
        }
        self.ahead.advance(n);
        if self.ahead.is_empty() && !self.full {
            self.release();
        }
        n
    }

    /// Whether read-ahead bytes wait to be read.
    fn unread(&self) -> bool {
        !self.ahead.is_empty()
    }

    /// Read from `io` into the read-ahead buffer, after its unread bytes,
    /// with room for at least `more` bytes (taking a buffer when it holds
    /// none; moving the unread bytes into a buffer of exactly their size
    /// and `more` when the room left is smaller, so that no buffer grows
    /// past [`READ_AHEAD`] to be kept as the spare); noting whether the
    /// read filled the room. Returns the bytes read. A buffer left empty
    /// (on an error, `Pending` or the end of the stream) is given back.
    fn poll_read_ahead<S: AsyncRead + Unpin>(
        &mut self,
        io: &mut S,
        cx: &mut Context<'_>,
        more: usize,
    ) -> Poll<io::Result<usize>> {
        if self.ahead.is_empty() {
            self.release();
            self.ahead = read_ahead_buffer();
        }
        if self.ahead.capacity() - self.ahead.len() < more {
            let mut own = BytesMut::with_capacity(self.ahead.len() + more);
            own.extend_from_slice(&self.ahead);
            spare(std::mem::replace(&mut self.ahead, own));
        }
        let room = self.ahead.capacity() - self.ahead.len();
        // Into memory that is not zeroed first: the read writes it.
        let result = poll_read_buf(Pin::new(io), cx, &mut self.ahead);
        // A read that filled a buffer of just the frame's size says
        // nothing of what follows.
        self.full = matches!(result, Poll::Ready(Ok(got)) if got == room && room > more);
        if self.ahead.is_empty() {
            self.release();
        }
        result
    }

    /// Give the read-ahead buffer back: to the thread's spare, or freed if
    /// the thread already has one.
    fn release(&mut self) {
        spare(std::mem::take(&mut self.ahead));
    }
}

/// `S` seen as blocking I/O for tungstenite, within one poll: "would block"
/// stands for `Pending`, and `S` has registered the task's waker.
struct Blocking<'a, 'b, S> {
    io: &'a mut S,
    cx: &'a mut Context<'b>,
    reads: &'a mut Reads,
    /// A [`DirectFrame`] is part-written: tungstenite may not write.
    hold_writes: bool,
}

impl<S: AsyncRead + Unpin> Blocking<'_, '_, S> {
    /// Read from `io` into `buf`, noting whether it was filled.
    fn read_into(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut buf = ReadBuf::new(buf);
        match Pin::new(&mut *self.io).poll_read(self.cx, &mut buf) {
            Poll::Ready(Ok(())) => {
                self.reads.full = buf.remaining() == 0;
                Ok(buf.filled().len())
            }
            Poll::Ready(Err(error)) => Err(error),
            Poll::Pending => Err(self.would_block()),
        }
    }

    /// `io` has nothing to read now (and has registered the task's waker):
    /// nothing is read ahead.
    fn would_block(&mut self) -> io::Error {
        self.reads.full = false;
        self.reads.release();
        io::ErrorKind::WouldBlock.into()
    }

    /// What [`Read::read`] hands tungstenite: read-ahead bytes first.
    fn read_for_tungstenite(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.reads.unread() {
            return Ok(self.reads.take(buf));
        }
        if !(self.reads.full || self.reads.streaming) || buf.len() >= READ_AHEAD {
            return self.read_into(buf);
        }
        // The last read filled its buffer, or large messages are arriving:
        // read ahead, in one call, what would otherwise take several.
        match self.reads.poll_read_ahead(&mut *self.io, self.cx, 0) {
            Poll::Ready(Ok(_)) => Ok(self.reads.take(buf)),
            Poll::Ready(Err(error)) => Err(error),
            // The read ahead noted nothing waiting and gave its buffer back.
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl<S: AsyncRead + Unpin> Read for Blocking<'_, '_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let got = self.read_for_tungstenite(buf)?;
        self.reads.handed.follow(buf.get(..got).unwrap_or_default());
        Ok(got)
    }
}

impl<S: AsyncWrite + Unpin> Write for Blocking<'_, '_, S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.hold_writes {
            // Only a pong answered while reading gets here; tungstenite
            // keeps it for the next flush.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        match Pin::new(&mut *self.io).poll_write(self.cx, buf) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match Pin::new(&mut *self.io).poll_flush(self.cx) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

/// A tungstenite result as a poll: "would block" is `Pending`.
fn pending_on_block<T>(result: Result<T, WsError>) -> Poll<Result<T, WsError>> {
    match result {
        Err(WsError::Io(error)) if error.kind() == io::ErrorKind::WouldBlock => Poll::Pending,
        other => Poll::Ready(other),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WebSocket<S> {
    /// A connection over `io`, whose handshake is done, in `role`. Every
    /// message is written as it is fed (`config`'s write buffer size is
    /// taken as 0), so nothing of an earlier message waits in tungstenite's
    /// buffer once a write has returned.
    pub fn new(io: S, role: Role, config: WebSocketConfig) -> Self {
        Self {
            io,
            context: None,
            role,
            config: config.write_buffer_size(0),
            ended: false,
            ready: true,
            unflushed: false,
            answer_owed: false,
            closing: false,
            returned: 0,
            reads: Reads::default(),
            direct: None,
        }
    }

    /// Whether another message is probably ready to read at once: bytes
    /// were read ahead, or the last read filled its buffer.
    pub fn probably_more(&self) -> bool {
        self.reads.full || self.reads.unread()
    }

    /// The I/O under the connection.
    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// The I/O under the connection, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.io
    }

    /// Write what is left of the direct frame, if one is under way.
    fn poll_direct(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(frame) = self.direct.as_mut() {
            match std::task::ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &frame.rest())) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(written) => frame.written += written,
                Err(error) => return Poll::Ready(Err(error)),
            }
            if frame.is_written()
                && let Some(frame) = self.direct.take()
            {
                recycle(frame.payload);
            }
        }
        Poll::Ready(Ok(()))
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        if let Err(error) = std::task::ready!(self.poll_direct(cx)) {
            return Poll::Ready(Err(WsError::Io(error)));
        }
        let Some(context) = self.context.as_mut() else {
            // Nothing was ever written.
            return Poll::Ready(Ok(()));
        };
        let mut io = Blocking {
            io: &mut self.io,
            cx,
            reads: &mut self.reads,
            hold_writes: false,
        };
        let result = std::task::ready!(pending_on_block(context.flush(&mut io)));
        self.ready = true;
        if result.is_ok() {
            self.unflushed = false;
            self.answer_owed = false;
        }
        Poll::Ready(match result {
            // The connection has just closed: the flush is complete.
            Err(WsError::ConnectionClosed) => Ok(()),
            other => other,
        })
    }

    /// Queue `message` and start writing it; [`WebSocket::flush`] finishes.
    /// Waits only while earlier messages are still being written, or, before
    /// a large message, while a pong tungstenite owes is.
    pub async fn feed(&mut self, message: Message) -> Result<(), WsError> {
        let mut message = Some(message);
        std::future::poll_fn(|cx| {
            // A direct frame must not start while tungstenite may hold part
            // of a pong it owes.
            let direct = message.as_ref().is_some_and(DirectFrame::is_large_data);
            if !self.ready || (direct && self.answer_owed) {
                std::task::ready!(self.poll_flush(cx))?;
            }
            let Some(message) = message.take() else {
                return Poll::Ready(Ok(()));
            };
            self.unflushed = true;
            self.closing |= matches!(message, Message::Close(_));
            let (role, config) = (self.role, self.config);
            let new_context = || WebSocketContext::new(role, Some(config));
            // A direct frame's flush goes through the context too: it is
            // made either way.
            let message = if direct && self.context.get_or_insert_with(new_context).can_write() {
                DirectFrame::of(message, role)
            } else {
                Err(message)
            };
            let message = match message {
                Ok(frame) => {
                    self.direct = Some(frame);
                    // Not ready until the frame is out: nothing else may be
                    // written into it, even after a failed write.
                    self.ready = false;
                    return match self.poll_direct(cx) {
                        Poll::Ready(Ok(())) => {
                            self.ready = true;
                            Poll::Ready(Ok(()))
                        }
                        Poll::Ready(Err(error)) => Poll::Ready(Err(WsError::Io(error))),
                        // The next feed or flush finishes it.
                        Poll::Pending => Poll::Ready(Ok(())),
                    };
                }
                Err(message) => message,
            };
            let context = self.context.get_or_insert_with(new_context);
            let mut io = Blocking {
                io: &mut self.io,
                cx,
                reads: &mut self.reads,
                hold_writes: false,
            };
            match context.write(&mut io, message) {
                Ok(()) => Poll::Ready(Ok(())),
                // Queued, but the socket is full: the next feed or flush
                // writes it.
                Err(WsError::Io(error)) if error.kind() == io::ErrorKind::WouldBlock => {
                    self.ready = false;
                    Poll::Ready(Ok(()))
                }
                Err(error) => Poll::Ready(Err(error)),
            }
        })
        .await
    }

    /// Write everything queued.
    pub async fn flush(&mut self) -> Result<(), WsError> {
        std::future::poll_fn(|cx| self.poll_flush(cx)).await
    }

    /// Give tungstenite's context (its read and write buffers) back if it
    /// holds nothing: every message handed to it was returned, no partial
    /// frame or message is left, nothing waits to be written, no pong is
    /// owed, no close is under way, and no read-ahead byte waits. The next
    /// read or write makes a new one. Returns whether it was given back.
    pub fn shed(&mut self) -> bool {
        let quiescent = self.context.is_some()
            && self.direct.is_none()
            && !self.ended
            && !self.unflushed
            && !self.probably_more()
            && self.tungstenite_holds_nothing();
        if quiescent {
            self.context = None;
            self.reads.release();
            // Quiet enough to give the context back: the next message
            // starts with a small read.
            self.reads.streaming = false;
        }
        quiescent
    }

    /// Whether tungstenite holds nothing of the stream read so far: every
    /// message handed to it was returned, no partial frame or message is
    /// left, no pong is owed and no close is under way.
    fn tungstenite_holds_nothing(&self) -> bool {
        !self.closing
            && !self.answer_owed
            && self.reads.handed.at_message_boundary()
            && self.reads.handed.endings() == self.returned
    }

    /// The next message, read without tungstenite when it can be: a
    /// single-frame text or binary message of at least
    /// [`LARGE_MESSAGE`] bytes at the start of the read-ahead bytes,
    /// while tungstenite holds nothing. Its payload is cut out of the
    /// read-ahead buffer and unmasked in place: not zeroed, copied or
    /// handed over a KiB at a time first. While such a frame is
    /// incomplete, the rest is read after it (into a buffer of the frame's
    /// size if the read-ahead buffer has no room for it); while large
    /// messages are arriving, the next one is read ahead for this.
    /// `Ready(None)`: tungstenite reads the next message.
    fn poll_direct_read(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message, WsError>>> {
        if !self.tungstenite_holds_nothing() {
            return Poll::Ready(None);
        }
        loop {
            let more = match self.reads.ahead.get(..2) {
                // Nothing read ahead: read ahead if large messages are arriving.
                None if !self.reads.unread() && self.reads.streaming => 0,
                None => return Poll::Ready(None),
                Some(_) => {
                    let Some(header) = FrameHeader::parse(&self.reads.ahead) else {
                        // A header in part: tungstenite reads on.
                        return Poll::Ready(None);
                    };
                    if !self.reads_directly(&header) {
                        return Poll::Ready(None);
                    }
                    let Some(frame) = usize::try_from(header.length)
                        .ok()
                        .and_then(|length| length.checked_add(header.size))
                    else {
                        return Poll::Ready(None);
                    };
                    if frame <= self.reads.ahead.len() {
                        return Poll::Ready(Some(self.cut_message(&header, frame)));
                    }
                    frame - self.reads.ahead.len()
                }
            };
            match std::task::ready!(self.reads.poll_read_ahead(&mut self.io, cx, more)) {
                // The end of the stream: tungstenite finds it and says how
                // it ended.
                Ok(0) => return Poll::Ready(None),
                Ok(_) => {}
                Err(error) => {
                    self.ended = true;
                    return Poll::Ready(Some(Err(WsError::Io(error))));
                }
            }
        }
    }

    /// Whether the frame under `header` is read directly: a whole text or
    /// binary message, without reserved bits, masked if and only if it
    /// comes from a client, of at least [`LARGE_MESSAGE`] bytes and
    /// within the frame and message size limits. Anything else, valid or
    /// not, is tungstenite's to read and judge.
    fn reads_directly(&self, header: &FrameHeader) -> bool {
        let within = |limit: Option<usize>| limit.is_none_or(|limit| header.length <= limit as u64);
        header.fin
            && header.rsv == 0
            && is_data(header.opcode)
            && header.mask.is_some() == (self.role == Role::Server)
            && header.length >= LARGE_MESSAGE as u64
            && within(self.config.max_frame_size)
            && within(self.config.max_message_size)
    }

    /// Cut the `frame` bytes of the message under `header` out of the
    /// read-ahead buffer: its payload, unmasked, as a message (an error
    /// for text that is not UTF-8, as tungstenite gives).
    fn cut_message(&mut self, header: &FrameHeader, frame: usize) -> Result<Message, WsError> {
        let mut payload = self.reads.ahead.split_to(frame);
        payload.advance(header.size);
        self.reads.streaming = true;
        if let Some(key) = header.mask {
            apply_mask(&mut payload, key, 0);
        }
        if !self.reads.unread() && !self.reads.full {
            if self.role == Role::Server {
                // From a client: the message is usually relayed to an
                // upstream and masked there, in place if it is the only
                // owner of its buffer. So the rest of the buffer is not
                // kept as the spare; written, the message gives the
                // buffer back (`recycle`).
                self.reads.ahead = BytesMut::new();
            } else {
                self.reads.release();
            }
        }
        let payload = payload.freeze();
        if header.opcode == 1 {
            match Utf8Bytes::try_from(payload) {
                Ok(text) => Ok(Message::Text(text)),
                Err(error) => {
                    self.ended = true;
                    Err(error.into())
                }
            }
        } else {
            Ok(Message::Binary(payload))
        }
    }

    /// Whether tungstenite's context is held (for tests and figures).
    pub fn holds_context(&self) -> bool {
        self.context.is_some()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Stream for WebSocket<S> {
    type Item = Result<Message, WsError>;

    /// The next message; `None` once the connection has closed, or after
    /// an error has been returned.
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        if let Some(message) = std::task::ready!(this.poll_direct_read(cx)) {
            return Poll::Ready(Some(message));
        }
        if this.context.is_none() {
            // Idle so far: wait for the first bytes without a buffer.
            let mut first = [0u8; FIRST_READ];
            let mut buf = ReadBuf::new(&mut first);
            match std::task::ready!(Pin::new(&mut this.io).poll_read(cx, &mut buf)) {
                Ok(()) => {
                    this.reads.handed.follow(buf.filled());
                    // tungstenite's buffer is this one, already of its
                    // full size: a `BytesMut` remembers the size it was
                    // made with (rounded down to a power of two from 1 to
                    // 64 KiB, nothing under 1 KiB), and while a message
                    // read from it is held (by a shadow, a write queue)
                    // the next is made at that size, not just large
                    // enough for one frame. tungstenite 0.30 keeps this
                    // `Vec`'s room (`BytesMut::from_iter` reuses it).
                    let filled = buf.filled();
                    let mut part =
                        Vec::with_capacity(this.config.read_buffer_size.max(filled.len()));
                    part.extend_from_slice(filled);
                    this.context = Some(WebSocketContext::from_partially_read(
                        part,
                        this.role,
                        Some(this.config),
                    ));
                }
                Err(error) => {
                    this.ended = true;
                    return Poll::Ready(Some(Err(WsError::Io(error))));
                }
            }
        }
        let Some(context) = this.context.as_mut() else {
            return Poll::Ready(None);
        };
        let mut io = Blocking {
            io: &mut this.io,
            cx,
            reads: &mut this.reads,
            hold_writes: this.direct.is_some(),
        };
        match std::task::ready!(pending_on_block(context.read(&mut io))) {
            Ok(message) => {
                this.returned += 1;
                if let Some(length) = data_length(&message) {
                    this.reads.streaming = length >= LARGE_MESSAGE;
                }
                match message {
                    Message::Ping(_) => this.answer_owed = true,
                    Message::Close(_) => this.closing = true,
                    _ => {}
                }
                Poll::Ready(Some(Ok(message)))
            }
            Err(error) => {
                this.ended = true;
                match error {
                    WsError::AlreadyClosed | WsError::ConnectionClosed => Poll::Ready(None),
                    error => Poll::Ready(Some(Err(error))),
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, reason = "tests index what they built")]
mod tests {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use proptest::prelude::*;
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::Bytes;
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data as OpData, OpCode};

    fn config() -> WebSocketConfig {
        WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0)
            .max_message_size(Some(1 << 20))
    }

    /// The other end of a connection whose end we play in `role`.
    fn peer_of(role: Role) -> Role {
        match role {
            Role::Server => Role::Client,
            Role::Client => Role::Server,
        }
    }

    /// `messages` from a tokio-tungstenite peer to our end (in `role`) over
    /// an in-memory pipe of `pipe` bytes, echoed back by our end; every
    /// message arrives intact both ways (as a client our end masks, and the
    /// peer refuses unmasked frames).
    fn echo(role: Role, messages: &[Message], pipe: usize) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (a, b) = tokio::io::duplex(pipe);
            let mut server = WebSocket::new(a, role, config());
            let client = WebSocketStream::from_raw_socket(b, peer_of(role), Some(config())).await;
            assert!(server.context.is_none(), "no context before first use");
            let (mut sink, mut stream) = client.split();
            let send = async {
                for message in messages {
                    sink.send(message.clone()).await.unwrap();
                }
                sink.close().await.unwrap();
            };
            let receive = async {
                for expected in messages {
                    assert_eq!(&stream.next().await.unwrap().unwrap(), expected);
                }
                // Our end answers the close; the stream then ends.
                while let Some(Ok(_)) = stream.next().await {}
            };
            let relay = async move {
                for expected in messages {
                    let got = server.next().await.unwrap().unwrap();
                    assert_eq!(&got, expected);
                    server.feed(got).await.unwrap();
                    server.flush().await.unwrap();
                    // Given back whenever nothing of the next message has
                    // arrived yet; the messages must cross intact either way.
                    server.shed();
                }
                assert!(matches!(server.next().await, Some(Ok(Message::Close(_)))));
                // The answer to the close, queued by tungstenite.
                server.flush().await.unwrap();
                // Nothing is streaming in: the read-ahead buffer was given back.
                assert_eq!(server.reads.ahead.capacity(), 0);
                // Dropping our end closes the pipe, as the relay does.
            };
            tokio::join!(send, receive, relay);
        });
    }

    #[test]
    fn small_and_large_messages_cross_both_ways() {
        let messages = [
            Message::text("hello"),
            Message::binary(vec![1u8; 200 * 1024]),
            Message::binary(Vec::new()),
            Message::text("x".repeat(READ_AHEAD + 17)),
            Message::text("é".repeat(3000)),
        ];
        for role in [Role::Server, Role::Client] {
            for pipe in [64, 4096, 300 * 1024] {
                echo(role, &messages, pipe);
            }
        }
    }

    #[test]
    fn a_quiet_connection_gives_its_context_back_between_messages() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (a, b) = tokio::io::duplex(1 << 20);
            let mut server = WebSocket::new(a, Role::Server, config());
            let mut client =
                WebSocketStream::from_raw_socket(b, Role::Client, Some(config())).await;
            for round in 0..3 {
                let text = format!("message {round}");
                client.send(Message::text(text.clone())).await.unwrap();
                let got = server.next().await.unwrap().unwrap();
                assert_eq!(got, Message::text(text.clone()));
                server.feed(got).await.unwrap();
                assert!(
                    !server.shed(),
                    "a message fed and not flushed keeps the context"
                );
                server.flush().await.unwrap();
                assert!(
                    server.shed(),
                    "round {round}: nothing is left, the context goes"
                );
                assert!(!server.holds_context());
                assert_eq!(client.next().await.unwrap().unwrap(), Message::text(text));
            }
            // Two messages arrive together: after the first, the second is
            // still in tungstenite's buffer, so the context stays.
            client.feed(Message::text("one")).await.unwrap();
            client.feed(Message::text("two")).await.unwrap();
            client.flush().await.unwrap();
            assert_eq!(server.next().await.unwrap().unwrap(), Message::text("one"));
            assert!(!server.shed(), "the second message is held");
            assert_eq!(server.next().await.unwrap().unwrap(), Message::text("two"));
            assert!(server.shed());
            // A fragmented message in part: tungstenite holds the first part.
            client
                .send(Message::Frame(Frame::message(
                    Bytes::from_static(b"half"),
                    OpCode::Data(OpData::Text),
                    false,
                )))
                .await
                .unwrap();
            assert!(nothing_to_read(&mut server).await);
            assert!(!server.shed(), "a partial message keeps the context");
            client
                .send(Message::Frame(Frame::message(
                    Bytes::from_static(b" and half"),
                    OpCode::Data(OpData::Continue),
                    true,
                )))
                .await
                .unwrap();
            assert_eq!(
                server.next().await.unwrap().unwrap(),
                Message::text("half and half")
            );
            assert!(server.shed());
            // A ping is answered by the next flush: the context stays until then.
            client
                .send(Message::Ping(Bytes::from_static(b"p")))
                .await
                .unwrap();
            assert!(matches!(server.next().await, Some(Ok(Message::Ping(_)))));
            assert!(!server.shed(), "the pong is owed");
            server.flush().await.unwrap();
            assert!(server.shed());
            assert_eq!(
                client.next().await.unwrap().unwrap(),
                Message::Pong(Bytes::from_static(b"p"))
            );
        });
    }

    #[test]
    fn large_messages_in_a_row_take_one_read_each() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (a, b) = tokio::io::duplex(1 << 20);
            let counted = crate::testing::Counting::new(a);
            let read_count = std::sync::Arc::clone(&counted.reads);
            let reads_now = || read_count.load(std::sync::atomic::Ordering::Relaxed);
            let mut server = WebSocket::new(counted, Role::Server, config());
            let mut client =
                WebSocketStream::from_raw_socket(b, Role::Client, Some(config())).await;
            // A 64 KiB payload: with its header and mask key, 64 KiB + 14 bytes.
            let large = Message::binary(vec![7u8; 64 * 1024]);
            let mut reads = Vec::new();
            for _ in 0..3 {
                // The whole message waits in the pipe before it is read.
                client.send(large.clone()).await.unwrap();
                let before = reads_now();
                let got = server.next().await.unwrap().unwrap();
                assert_eq!(got, large);
                reads.push(reads_now() - before);
                // Read whole, without filling the buffer: the relay does
                // not try another read that would find nothing.
                assert!(!server.probably_more());
                // Echoed, as the relay writes it: from the message itself.
                server.feed(got).await.unwrap();
                server.flush().await.unwrap();
            }
            // The first starts with small reads, then reads ahead; once
            // large messages are arriving, each is one read, and read
            // directly: tungstenite returned only the first.
            assert!(reads[0] > 1, "{reads:?}");
            assert_eq!(reads[1..], [1, 1]);
            assert_eq!(server.returned, 1);
            // The last message, cut from the read-ahead buffer and written,
            // gave that buffer back: it is the thread's spare, whole. A
            // poll that finds nothing (the relay makes one after every
            // message) borrows that same buffer and gives it back: no
            // allocation.
            let spare_at = || {
                SPARE_READ_AHEAD.with(|slot| {
                    let held = slot.take();
                    let at = (held.as_ptr(), held.capacity());
                    slot.set(held);
                    at
                })
            };
            let before = spare_at();
            assert_eq!(before.1, READ_AHEAD);
            assert_eq!(server.reads.ahead.capacity(), 0);
            assert!(nothing_to_read(&mut server).await);
            assert_eq!(spare_at(), before);
            assert_eq!(server.reads.ahead.capacity(), 0);
            assert!(server.reads.streaming, "nothing read: still streaming");
            // A message larger than the read-ahead buffer is read directly
            // too, its rest into a buffer of its size: written, that buffer
            // is freed, not kept as the thread's spare (which another
            // connection on the thread holds meanwhile).
            let larger = Message::binary(vec![3u8; 3 * READ_AHEAD]);
            client.send(larger.clone()).await.unwrap();
            let returned = server.returned;
            let got = server.next().await.unwrap().unwrap();
            assert_eq!(got, larger);
            assert_eq!(server.returned, returned, "read directly");
            // Its last read filled a buffer of just its size, which says
            // nothing of more waiting.
            assert!(!server.probably_more());
            SPARE_READ_AHEAD.with(|slot| drop(slot.take()));
            server.feed(got).await.unwrap();
            server.flush().await.unwrap();
            assert_eq!(spare_at().1, 0, "the larger buffer was kept");
            // A small message ends the streaming: the read-ahead buffer is
            // given back, and the next message starts with a small read.
            client.send(Message::text("small")).await.unwrap();
            assert_eq!(
                server.next().await.unwrap().unwrap(),
                Message::text("small")
            );
            assert_eq!(server.reads.ahead.capacity(), 0);
            assert!(!server.reads.streaming);
        });
    }

    /// Frame bytes as a client sends them: masked with `key`.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
        let mut frame = Vec::new();
        FrameHeader::write(&mut frame, fin, false, opcode, Some(key), payload.len());
        let start = frame.len();
        frame.extend_from_slice(payload);
        apply_mask(&mut frame[start..], key, 0);
        frame
    }

    /// Our end as a server, sent `bytes` (written at once) after one
    /// large message that starts large messages arriving: what our end
    /// reads after that message, up to a close or an error; how many of
    /// those messages it read directly, and how many tungstenite was
    /// handed (returned or refused).
    fn read_after_streaming(
        bytes: &[u8],
        config: WebSocketConfig,
    ) -> (Vec<Result<Message, String>>, usize, u64) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            use tokio::io::AsyncWriteExt;
            let (a, mut b) = tokio::io::duplex(4 << 20);
            let mut server = WebSocket::new(a, Role::Server, config);
            let first = vec![9u8; 20_000];
            b.write_all(&client_frame(true, 2, &first, [1, 2, 3, 4]))
                .await
                .unwrap();
            assert_eq!(
                server.next().await.unwrap().unwrap(),
                Message::binary(first)
            );
            assert!(server.reads.streaming);
            b.write_all(bytes).await.unwrap();
            let mut got = Vec::new();
            while let Some(next) = server.next().await {
                let end = !matches!(next, Ok(ref message) if !message.is_close());
                got.push(next.map_err(|error| error.to_string()));
                if end {
                    break;
                }
            }
            // The peer stays until here: tungstenite answers the ping.
            drop(b);
            let from_tungstenite = usize::try_from(server.returned).unwrap() - 1;
            let direct = got.iter().filter(|item| item.is_ok()).count() - from_tungstenite;
            (got, direct, server.reads.handed.endings() - 1)
        })
    }

    /// What `got` holds, in short: each message's kind and length.
    fn summary(got: &[Result<Message, String>]) -> Vec<String> {
        got.iter()
            .map(|item| match item {
                Ok(message) => format!("{} bytes", message.len()),
                Err(error) => error.chars().take(80).collect(),
            })
            .collect()
    }

    #[test]
    fn messages_read_directly_are_the_messages_tungstenite_would_return() {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        let text = "é→x".repeat(5000);
        let binary: Vec<u8> = (0..70_000).map(|i| (i % 251) as u8).collect();
        let mut bytes = Vec::new();
        // Read directly: a large text, a binary larger than the read-ahead
        // buffer (its rest read into a buffer of the frame's size).
        bytes.extend(client_frame(true, 1, text.as_bytes(), key));
        bytes.extend(client_frame(true, 2, &binary, key));
        // Tungstenite's: a ping between them, a fragmented large message,
        // a small message.
        bytes.extend(client_frame(true, 9, b"p", key));
        bytes.extend(client_frame(false, 2, &binary[..10_000], key));
        bytes.extend(client_frame(true, 0, &binary[10_000..], key));
        bytes.extend(client_frame(true, 1, b"small", key));
        bytes.extend(client_frame(true, 8, &1000u16.to_be_bytes(), key));
        let (got, direct, _) = read_after_streaming(&bytes, config());
        assert_eq!(direct, 2, "the large text and binary");
        let expected = [
            Message::text(text),
            Message::binary(binary.clone()),
            Message::Ping(Bytes::from_static(b"p")),
            Message::binary(binary),
            Message::text("small"),
        ];
        assert_eq!(got.len(), expected.len() + 1, "{:?}", summary(&got));
        for (got, expected) in got.iter().zip(&expected) {
            assert!(
                got.as_ref().is_ok_and(|got| got == expected),
                "{:?}",
                summary(std::slice::from_ref(got))
            );
        }
        assert!(matches!(got.last(), Some(Ok(Message::Close(_)))));
    }

    #[test]
    fn a_message_read_directly_is_refused_as_tungstenite_refuses_it() {
        let key = [5, 6, 7, 8];
        // Text that is not UTF-8: the error tungstenite gives (close 1007).
        let mut invalid = vec![b'a'; 10_000];
        invalid[9_000] = 0xff;
        let (got, _, handed) =
            read_after_streaming(&client_frame(true, 1, &invalid, key), config());
        assert_eq!(got.len(), 1, "{:?}", summary(&got));
        assert_eq!(handed, 0, "refused by the direct read");
        assert!(
            matches!(&got[0], Err(error) if error.contains("UTF-8")),
            "{:?}",
            summary(&got)
        );
        // Over the message size limit: left to tungstenite (close 1009).
        let limit = config().max_message_size(Some(50_000));
        let (got, _, handed) =
            read_after_streaming(&client_frame(true, 2, &[0u8; 50_001], key), limit);
        assert_eq!(got.len(), 1, "{:?}", summary(&got));
        assert_eq!(handed, 1, "left to tungstenite");
        assert!(
            matches!(&got[0], Err(error) if error.contains("too long")),
            "{:?}",
            summary(&got)
        );
        // Unmasked from a client: tungstenite refuses it.
        let mut unmasked = Vec::new();
        FrameHeader::write(&mut unmasked, true, false, 2, None, 10_000);
        unmasked.extend(vec![0u8; 10_000]);
        let (got, _, handed) = read_after_streaming(&unmasked, config());
        assert_eq!(got.len(), 1, "{:?}", summary(&got));
        assert_eq!(handed, 1, "left to tungstenite");
        assert!(got[0].is_err(), "{:?}", summary(&got));
    }

    #[test]
    fn only_a_buffer_of_read_ahead_size_becomes_the_spare() {
        // A message cut from a buffer of `size` bytes (its header split
        // off), as it is when written and recycled.
        let message_of = |size: usize| {
            let mut buffer = BytesMut::with_capacity(size);
            buffer.resize(size, 0);
            let mut message = buffer.split_off(14);
            drop(buffer);
            message.truncate(LARGE_MESSAGE);
            message
        };
        assert!(fits_spare(&mut message_of(READ_AHEAD)));
        assert!(fits_spare(&mut message_of(SPARE_MOST)));
        assert!(!fits_spare(&mut message_of(SPARE_MOST + 15)));
        assert!(!fits_spare(&mut message_of(16 * READ_AHEAD)));
        assert!(!fits_spare(&mut message_of(READ_AHEAD - 1)));
        // The front of a larger buffer whose back is gone shows only its
        // own room: its size is found by asking for more.
        let mut front = BytesMut::with_capacity(16 * READ_AHEAD);
        front.resize(16 * READ_AHEAD, 0);
        drop(front.split_off(READ_AHEAD));
        assert_eq!(front.capacity(), READ_AHEAD);
        assert!(!fits_spare(&mut front));
        // While another part of the buffer is alive, it cannot be reclaimed.
        let mut buffer = BytesMut::with_capacity(READ_AHEAD);
        buffer.resize(READ_AHEAD, 0);
        let mut rest = buffer.split_off(READ_AHEAD / 2);
        assert!(!fits_spare(&mut rest));
        drop(buffer);
        assert!(fits_spare(&mut rest));
    }

    /// Poll `ours` for a message once: whether none was ready.
    async fn nothing_to_read<S: AsyncRead + AsyncWrite + Unpin>(ours: &mut WebSocket<S>) -> bool {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *ours).poll_next(cx).is_pending()))
            .await
    }

    /// Bytes a masking key adds to each frame our end sends in `role`.
    fn key_bytes(role: Role) -> usize {
        if role == Role::Client { 4 } else { 0 }
    }

    /// The peer of our end (in `role`) sends a ping of "p", masked when our
    /// end is the server.
    async fn ping_from_peer(peer: &mut tokio::io::DuplexStream, role: Role) {
        use tokio::io::AsyncWriteExt;
        let key = (role == Role::Server).then_some([1, 2, 3, 4]);
        let mut ping = Vec::new();
        FrameHeader::write(&mut ping, true, false, 9, key, 1);
        ping.push(b'p' ^ key.map_or(0, |k| k[0]));
        peer.write_all(&ping).await.unwrap();
    }

    /// Parse the frames in `bytes`: (opcode, unmasked payload) each.
    fn frames_in(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut frames = Vec::new();
        while let Some(header) = FrameHeader::parse(bytes) {
            let end = header.size + header.length as usize;
            let mut payload = bytes[header.size..end].to_vec();
            if let Some(key) = header.mask {
                apply_mask(&mut payload, key, 0);
            }
            frames.push((header.opcode, payload));
            bytes = &bytes[end..];
        }
        assert!(bytes.is_empty(), "a frame was cut short");
        frames
    }

    #[test]
    fn a_pong_owed_waits_for_the_end_of_a_large_frame_being_written() {
        use tokio::io::AsyncReadExt;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            for role in [Role::Server, Role::Client] {
                // A pipe far smaller than the frame: it is written in parts.
                let (a, mut peer) = tokio::io::duplex(256);
                let mut ours = WebSocket::new(a, role, config());
                ping_from_peer(&mut peer, role).await;
                let large = vec![7u8; 3 * DIRECT_WRITE_MIN];
                ours.feed(Message::binary(large.clone())).await.unwrap();
                assert!(ours.direct.is_some(), "the frame is part-written");
                // Room in the pipe while the frame is still part-written.
                let mut wire = vec![0u8; 100];
                peer.read_exact(&mut wire).await.unwrap();
                // Reading the ping makes tungstenite owe a pong, and the next
                // read tries to send it: it must not cut into the frame.
                assert!(matches!(ours.next().await, Some(Ok(Message::Ping(_)))));
                assert!(nothing_to_read(&mut ours).await);
                let mask = key_bytes(role);
                let total = (4 + mask + large.len()) + (2 + mask + 1);
                let read_rest = async {
                    let mut rest = vec![0u8; total - wire.len()];
                    peer.read_exact(&mut rest).await.unwrap();
                    rest
                };
                let (flushed, rest) = tokio::join!(ours.flush(), read_rest);
                flushed.unwrap();
                wire.extend_from_slice(&rest);
                let frames = frames_in(&wire);
                assert_eq!(frames, [(2, large), (10, b"p".to_vec())], "{role:?}");
            }
        });
    }

    #[test]
    fn a_large_message_waits_for_a_pong_tungstenite_has_half_written() {
        use tokio::io::AsyncReadExt;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            for role in [Role::Server, Role::Client] {
                let (a, mut peer) = tokio::io::duplex(256);
                let mut ours = WebSocket::new(a, role, config());
                ping_from_peer(&mut peer, role).await;
                // A message that leaves one byte of room in the pipe.
                let mask = key_bytes(role);
                let small = vec![5u8; 255 - 4 - mask];
                ours.feed(Message::binary(small.clone())).await.unwrap();
                assert!(matches!(ours.next().await, Some(Ok(Message::Ping(_)))));
                // The next read sends the pong: one byte of it fits.
                assert!(nothing_to_read(&mut ours).await);
                let large = vec![7u8; 3 * DIRECT_WRITE_MIN];
                let total = 255 + (2 + mask + 1) + (4 + mask + large.len());
                let write = async {
                    ours.feed(Message::binary(large.clone())).await.unwrap();
                    ours.flush().await.unwrap();
                };
                let read = async {
                    let mut wire = vec![0u8; total];
                    peer.read_exact(&mut wire).await.unwrap();
                    wire
                };
                let ((), wire) = tokio::join!(write, read);
                assert_eq!(
                    frames_in(&wire),
                    [(2, small), (10, b"p".to_vec()), (2, large)],
                    "{role:?}"
                );
            }
        });
    }

    #[test]
    fn a_peer_that_vanishes_ends_the_stream_with_an_error() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (a, b) = tokio::io::duplex(1024);
            let mut server = WebSocket::new(a, Role::Server, config());
            drop(b);
            assert!(matches!(server.next().await, Some(Err(_))));
            assert!(server.next().await.is_none());
        });
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        /// Any sizes (around the read buffer and the read-ahead sizes) over
        /// any pipe size arrive intact.
        #[test]
        fn any_sizes_over_any_pipe(
            sizes in prop::collection::vec(
                prop_oneof![0usize..64, 4000usize..4200, 65_000usize..67_000, 0usize..300_000],
                1..8,
            ),
            pipe in prop_oneof![Just(7usize), 1usize..9000, Just(1usize << 20)],
            client in any::<bool>(),
        ) {
            // Binary and text in turn (read directly or not).
            let messages: Vec<Message> = sizes
                .iter()
                .enumerate()
                .map(|(i, size)| {
                    if i % 2 == 0 {
                        Message::binary((0..*size).map(|b| (b + i) as u8).collect::<Vec<u8>>())
                    } else {
                        Message::text(char::from(b'a' + (i % 26) as u8).to_string().repeat(*size))
                    }
                })
                .collect();
            echo(if client { Role::Client } else { Role::Server }, &messages, pipe);
        }
    }
}
