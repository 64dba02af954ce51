//! The monitor's view of a connection: the I/O under the client's WebSocket
//! stream, parsing frame headers as bytes go by. Reads are frames from the
//! client (origin `client`, with their masking keys); writes are frames the
//! gateway sends the client (origin `server`). The connection's observer
//! adds each message's verdict and time in filters to the same
//! [`FrameLog`]. With monitoring off the tap is a plain pass-through.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use wsgate_monitor::{FrameRecord, MaskingKey, Monitor, Origin, Record, now_us};

use crate::frame::{FrameHeader, MAX_HEADER, apply_mask};

/// Client frames waiting for a verdict before they are recorded without one.
const MAX_AWAITING: usize = 1024;

/// A connection's frame log, shared by its tap (which feeds it the bytes
/// that cross the wire) and its observer (which adds the verdicts).
#[derive(Clone)]
pub struct SharedFrameLog(Arc<Mutex<FrameLog>>);

impl SharedFrameLog {
    /// Share `log`.
    pub fn new(log: FrameLog) -> Self {
        Self(Arc::new(Mutex::new(log)))
    }

    /// The log, for one update.
    pub fn lock(&self) -> MutexGuard<'_, FrameLog> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Pass-through I/O that reports every frame to a [`FrameLog`].
pub struct Tap<S> {
    inner: S,
    log: Option<SharedFrameLog>,
}

impl<S> Tap<S> {
    /// Wrap `inner`; frames are recorded when `log` is given.
    pub fn new(inner: S, log: Option<SharedFrameLog>) -> Self {
        Self { inner, log }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tap<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let (Poll::Ready(Ok(())), Some(log)) = (&result, &this.log)
            && let Some(read) = buf.filled().get(before..)
        {
            log.lock().on_read(read);
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tap<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let (Poll::Ready(Ok(written)), Some(log)) = (&result, &this.log)
            && let Some(written) = buf.get(..*written)
        {
            log.lock().on_write(written);
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let (Poll::Ready(Ok(written)), Some(log)) = (&result, &this.log) {
            let mut log = log.lock();
            let mut left = *written;
            for buf in bufs {
                if left == 0 {
                    break;
                }
                let part = buf.get(..left.min(buf.len())).unwrap_or_default();
                log.on_write(part);
                left -= part.len();
            }
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Turns a connection's bytes into frame records.
pub struct FrameLog {
    monitor: Monitor,
    seq: u64,
    reads: FrameParser,
    writes: FrameParser,
    /// Complete client frames that end a message, waiting for the relay's
    /// verdict (and whether the message was compressed).
    awaiting: VecDeque<(FrameRecord, bool)>,
    /// Verdict and filter time for the frames being written now.
    write_note: Option<(Arc<str>, u64)>,
    /// The compressed messages being written, in order: their uncompressed
    /// length and captured payload.
    writing: VecDeque<(u64, Option<String>)>,
    /// Frames completed by one read or write (kept to be reused).
    done: Vec<(FrameRecord, bool)>,
}

impl FrameLog {
    /// Record connection `connection`'s frames with up to `capture` payload
    /// bytes each (0: metadata only).
    pub fn new(monitor: Monitor, connection: &str, capture: usize) -> Self {
        let connection: Arc<str> = Arc::from(connection);
        Self {
            monitor,
            seq: 0,
            reads: FrameParser::new(connection.clone(), Origin::Client, capture),
            writes: FrameParser::new(connection, Origin::Server, capture),
            awaiting: VecDeque::new(),
            write_note: None,
            writing: VecDeque::new(),
            done: Vec::new(),
        }
    }

    fn on_read(&mut self, bytes: &[u8]) {
        let mut done = std::mem::take(&mut self.done);
        self.reads.feed(bytes, &mut done);
        for (frame, compressed) in done.drain(..) {
            let frame = self.stamp(frame);
            if frame.fin {
                if self.awaiting.len() == MAX_AWAITING
                    && let Some((oldest, _)) = self.awaiting.pop_front()
                {
                    self.monitor.record(Record::Frame(oldest));
                }
                self.awaiting.push_back((frame, compressed));
            } else {
                self.monitor.record(Record::Frame(frame));
            }
        }
        self.done = done;
    }

    fn on_write(&mut self, bytes: &[u8]) {
        let mut done = std::mem::take(&mut self.done);
        self.writes.feed(bytes, &mut done);
        for (mut frame, compressed) in done.drain(..) {
            if frame.fin
                && let Some((verdict, filter_us)) = &self.write_note
            {
                frame.verdict = Some(verdict.clone());
                frame.filter_us = Some(*filter_us);
            }
            if compressed && let Some((length, payload)) = self.writing.pop_front() {
                frame.uncompressed_length = Some(length);
                frame.truncated = payload.is_some() && length > self.writes.capture as u64;
                frame.payload = payload;
            }
            let frame = self.stamp(frame);
            self.monitor.record(Record::Frame(frame));
        }
        self.done = done;
    }

    fn stamp(&mut self, mut frame: FrameRecord) -> FrameRecord {
        self.seq += 1;
        frame.seq = self.seq;
        frame
    }

    /// The relay's verdict on the next client message, `data` being its
    /// (uncompressed) payload: a compressed message's record carries its
    /// uncompressed length and payload, as the filters saw it.
    pub fn verdict_on_read(&mut self, verdict: Option<Arc<str>>, filter_us: u64, data: &[u8]) {
        if let Some((mut frame, compressed)) = self.awaiting.pop_front() {
            frame.verdict = verdict;
            frame.filter_us = Some(filter_us);
            if compressed {
                frame.uncompressed_length = Some(data.len() as u64);
                frame.payload = self.reads.capture(data);
                frame.truncated = frame.payload.is_some() && data.len() > self.reads.capture;
            }
            self.monitor.record(Record::Frame(frame));
        }
    }

    /// A message with payload `data` is about to be written compressed.
    pub fn writing_compressed(&mut self, data: &[u8]) {
        let payload = self.writes.capture(data);
        self.writing.push_back((data.len() as u64, payload));
    }

    /// The verdict and filter time behind the frames about to be written
    /// (`None`: frames the gateway writes on its own, such as pongs).
    pub fn note_writes(&mut self, note: Option<(Arc<str>, u64)>) {
        self.write_note = note;
    }
}

impl Drop for FrameLog {
    fn drop(&mut self) {
        for (frame, _) in self.awaiting.drain(..) {
            self.monitor.record(Record::Frame(frame));
        }
    }
}

/// A streaming parser of RFC 6455 frames that captures the start of each
/// payload, unmasked.
struct FrameParser {
    connection: Arc<str>,
    origin: Origin,
    capture: usize,
    /// The header read so far.
    header: [u8; MAX_HEADER],
    have: usize,
    remaining: u64,
    frame: Option<FrameRecord>,
    /// The current data message had RSV1 on its first frame (permessage-deflate).
    compressed: bool,
    mask: Option<[u8; 4]>,
    offset: u64,
    payload: Vec<u8>,
}

impl FrameParser {
    fn new(connection: Arc<str>, origin: Origin, capture: usize) -> Self {
        Self {
            connection,
            origin,
            capture,
            header: [0; MAX_HEADER],
            have: 0,
            remaining: 0,
            frame: None,
            compressed: false,
            mask: None,
            offset: 0,
            payload: Vec::new(),
        }
    }

    /// Parse `bytes`; each complete frame goes to `done`, with whether it
    /// ends a compressed message.
    fn feed(&mut self, mut bytes: &[u8], done: &mut Vec<(FrameRecord, bool)>) {
        while !bytes.is_empty() {
            if self.frame.is_none() {
                let need = match self.header.get(..self.have) {
                    Some(&[_, b1, ..]) => FrameHeader::size_from(b1),
                    _ => 2,
                };
                let take = need.saturating_sub(self.have).min(bytes.len());
                let (head, rest) = bytes.split_at(take);
                if let Some(slot) = self.header.get_mut(self.have..self.have + take) {
                    slot.copy_from_slice(head);
                }
                self.have += take;
                bytes = rest;
                if let Some(header) = self.header.get(..self.have).and_then(FrameHeader::parse) {
                    self.start_frame(header, done);
                }
                continue;
            }
            let take = usize::try_from(self.remaining)
                .unwrap_or(usize::MAX)
                .min(bytes.len());
            let (chunk, rest) = bytes.split_at(take);
            let room = self.capture.saturating_sub(self.payload.len()).min(take);
            let start = self.payload.len();
            self.payload
                .extend_from_slice(chunk.get(..room).unwrap_or_default());
            if let (Some(key), Some(kept)) = (self.mask, self.payload.get_mut(start..)) {
                apply_mask(kept, key, self.offset);
            }
            self.offset += take as u64;
            self.remaining -= take as u64;
            bytes = rest;
            if self.remaining == 0 {
                self.finish_frame(done);
            }
        }
    }

    fn start_frame(&mut self, header: FrameHeader, done: &mut Vec<(FrameRecord, bool)>) {
        self.mask = header.mask;
        if crate::frame::is_data(header.opcode) {
            self.compressed = header.rsv1();
        }
        self.frame = Some(FrameRecord {
            connection: self.connection.clone(),
            seq: 0,
            time_us: 0,
            origin: self.origin,
            opcode: header.opcode,
            fin: header.fin,
            rsv: [
                header.rsv & 4 != 0,
                header.rsv & 2 != 0,
                header.rsv & 1 != 0,
            ],
            masking_key: header.mask.map(MaskingKey),
            length: header.length,
            payload: None,
            truncated: false,
            filter_us: None,
            verdict: None,
            uncompressed_length: None,
        });
        self.remaining = header.length;
        self.offset = 0;
        self.payload.clear();
        self.have = 0;
        if header.length == 0 {
            self.finish_frame(done);
        }
    }

    /// The captured start of `data` (level `full`), base64.
    fn capture(&self, data: &[u8]) -> Option<String> {
        (self.capture > 0).then(|| STANDARD.encode(data.get(..self.capture).unwrap_or(data)))
    }

    fn finish_frame(&mut self, done: &mut Vec<(FrameRecord, bool)>) {
        if let Some(mut frame) = self.frame.take() {
            frame.time_us = now_us();
            if self.capture > 0 {
                frame.truncated = frame.length > self.payload.len() as u64;
                frame.payload = Some(STANDARD.encode(&self.payload));
            }
            let ends_compressed = frame.fin && frame.opcode <= 2 && self.compressed;
            done.push((frame, ends_compressed));
        }
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, reason = "tests index what they built")]
mod tests {
    use super::*;

    fn frames(origin: Origin, capture: usize, wire: &[u8], chunk: usize) -> Vec<FrameRecord> {
        let mut parser = FrameParser::new(Arc::from("c"), origin, capture);
        let mut done = Vec::new();
        for piece in wire.chunks(chunk) {
            parser.feed(piece, &mut done);
        }
        done.into_iter().map(|(frame, _)| frame).collect()
    }

    #[test]
    fn frames_are_parsed_across_any_split_with_masks_removed() {
        // A masked "Hello" (RFC 6455 5.7), then an unmasked 300-byte binary
        // frame (16-bit length), then an empty ping.
        let mut wire = vec![
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        wire.extend([0x82, 0x7e, 0x01, 0x2c]);
        wire.extend(std::iter::repeat_n(7u8, 300));
        wire.extend([0x89, 0x00]);
        for chunk in [1, 2, 3, 7, 64, wire.len()] {
            let got = frames(Origin::Client, 100, &wire, chunk);
            assert_eq!(got.len(), 3, "chunk {chunk}");
            assert_eq!(got[0].opcode, 1);
            assert!(got[0].fin);
            assert_eq!(
                got[0].masking_key.map(|key| key.to_string()).as_deref(),
                Some("37fa213d")
            );
            assert_eq!(
                got[0].payload.as_deref(),
                Some(STANDARD.encode("Hello").as_str())
            );
            assert_eq!(
                (got[1].opcode, got[1].length, got[1].truncated),
                (2, 300, true)
            );
            assert_eq!(
                STANDARD.decode(got[1].payload.as_ref().unwrap()).unwrap(),
                vec![7u8; 100]
            );
            assert_eq!(got[1].masking_key, None);
            assert_eq!((got[2].opcode, got[2].length), (9, 0));
        }
    }

    /// Takes at most three bytes per write, across the buffers of a
    /// vectored one.
    struct Trickle(Vec<u8>);

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(3);
            self.0.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let taken: Vec<u8> = bufs
                .iter()
                .flat_map(|buf| buf.iter())
                .take(3)
                .copied()
                .collect();
            self.0.extend_from_slice(&taken);
            Poll::Ready(Ok(taken.len()))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn a_vectored_write_cut_anywhere_is_recorded_as_the_frame_it_carries() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            let monitor = Monitor::start(&wsgate_config::MonitorSettings::default()).unwrap();
            let mut live = monitor.subscribe();
            let log = SharedFrameLog::new(FrameLog::new(monitor.clone(), "c", 8));
            let mut tap = Tap::new(Trickle(Vec::new()), Some(log));
            // A 300-byte binary frame as a header and a payload, written in
            // pieces of at most three bytes: cut inside both, and one piece
            // across the two.
            let header = [0x82, 0x7e, 0x01, 0x2c];
            let payload = [7u8; 300];
            let mut written = 0;
            while written < header.len() + payload.len() {
                let bufs = [
                    io::IoSlice::new(header.get(written..).unwrap_or_default()),
                    io::IoSlice::new(payload.get(written.saturating_sub(4)..).unwrap_or_default()),
                ];
                written +=
                    std::future::poll_fn(|cx| Pin::new(&mut tap).poll_write_vectored(cx, &bufs))
                        .await
                        .unwrap();
            }
            assert_eq!(tap.inner.0.len(), 304);
            // The record goes through the monitor's writer thread; a frame
            // the tap lost track of would never be recorded.
            let recorded = async {
                loop {
                    if let Record::Frame(frame) = live.recv().await.unwrap().as_ref() {
                        break frame.clone();
                    }
                }
            };
            let frame = tokio::time::timeout(std::time::Duration::from_secs(10), recorded)
                .await
                .expect("the frame is recorded");
            assert_eq!((frame.opcode, frame.length, frame.fin), (2, 300, true));
            assert_eq!(frame.origin, Origin::Server);
            assert_eq!(STANDARD.decode(frame.payload.unwrap()).unwrap(), [7u8; 8]);
        });
    }

    /// Heap allocations made by this thread (the monitor's writer thread
    /// is not counted).
    #[allow(
        unsafe_code,
        reason = "a global allocator is an unsafe trait; it only counts and passes each call on"
    )]
    mod counting {
        use std::alloc::{GlobalAlloc, Layout, System};
        use std::cell::Cell;

        thread_local! {
            static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
        }

        pub(super) struct Counting;

        // SAFETY: every call is passed to the system allocator unchanged.
        unsafe impl GlobalAlloc for Counting {
            unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
                ALLOCATIONS.with(|n| n.set(n.get() + 1));
                // SAFETY: the caller's contract, passed on.
                unsafe { System.alloc(layout) }
            }

            unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
                // SAFETY: the caller's contract, passed on.
                unsafe { System.dealloc(ptr, layout) }
            }

            unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
                ALLOCATIONS.with(|n| n.set(n.get() + 1));
                // SAFETY: the caller's contract, passed on.
                unsafe { System.realloc(ptr, layout, new_size) }
            }
        }

        #[global_allocator]
        static COUNTING: Counting = Counting;

        /// Allocations (and reallocations) made by this thread so far.
        pub(super) fn allocations() -> u64 {
            ALLOCATIONS.with(Cell::get)
        }
    }

    /// What recording costs the I/O thread at level `metadata`, per echoed
    /// message (a masked client frame read, a verdict, a frame written):
    /// no allocation of its own. The records go into the queue by value
    /// (which takes a block of room per 31 records), the masking key is a
    /// number, the verdict's text is shared. A copy of the connection's key
    /// per frame, a list per read, a text per masking key or verdict, or a
    /// record boxed for the queue would show here (11 allocations per echo
    /// before 2026-12-02, 4 before 2026-12-03).
    #[test]
    fn recording_an_echo_allocates_only_room_in_the_queue() {
        let monitor = Monitor::start(&wsgate_config::MonitorSettings::default()).unwrap();
        let mut log = FrameLog::new(monitor, "connection-1", 0);
        let read = encode(&Frame {
            opcode: 1,
            fin: true,
            rsv: 0,
            mask: Some([1, 2, 3, 4]),
            payload: b"hello".to_vec(),
            wide: 0,
        });
        let written = encode(&Frame {
            opcode: 1,
            fin: true,
            rsv: 0,
            mask: None,
            payload: b"hello".to_vec(),
            wide: 0,
        });
        log.note_writes(Some((Arc::from("passthrough@1.0.0 forward"), 3)));
        let echo = |log: &mut FrameLog| {
            log.on_read(&read);
            log.verdict_on_read(None, 3, b"hello");
            log.on_write(&written);
        };
        // Warm: the reused lists and queues have their room.
        for _ in 0..16 {
            echo(&mut log);
        }
        let before = counting::allocations();
        for _ in 0..100 {
            echo(&mut log);
        }
        let allocations = counting::allocations() - before;
        // 200 records: 7 blocks at most.
        assert!(
            allocations <= 200u64.div_ceil(31),
            "{allocations} allocations in 100 echoes"
        );
    }

    /// One frame to encode: opcode, FIN, RSV bits, mask, payload.
    #[derive(Debug, Clone)]
    struct Frame {
        opcode: u8,
        fin: bool,
        rsv: u8,
        mask: Option<[u8; 4]>,
        payload: Vec<u8>,
        /// Length encoding: 0 the shortest, 1 at least 16-bit, 2 64-bit.
        wide: u8,
    }

    fn encode(frame: &Frame) -> Vec<u8> {
        let mut wire = vec![u8::from(frame.fin) << 7 | (frame.rsv & 7) << 4 | frame.opcode];
        let mask_bit = if frame.mask.is_some() { 0x80 } else { 0 };
        let len = frame.payload.len();
        if len < 126 && frame.wide == 0 {
            wire.push(mask_bit | len as u8);
        } else if len < 65536 && frame.wide < 2 {
            wire.push(mask_bit | 126);
            wire.extend((len as u16).to_be_bytes());
        } else {
            wire.push(mask_bit | 127);
            wire.extend((len as u64).to_be_bytes());
        }
        if let Some(mask) = frame.mask {
            wire.extend(mask);
            wire.extend(
                frame
                    .payload
                    .iter()
                    .enumerate()
                    .map(|(i, b)| b ^ mask[i % 4]),
            );
        } else {
            wire.extend(&frame.payload);
        }
        wire
    }

    fn frame() -> impl proptest::strategy::Strategy<Value = Frame> {
        use proptest::prelude::*;
        (
            prop_oneof![
                Just(0u8),
                Just(1),
                Just(2),
                Just(8),
                Just(9),
                Just(10),
                0u8..16
            ],
            any::<bool>(),
            0u8..8,
            proptest::option::of(any::<[u8; 4]>()),
            proptest::collection::vec(any::<u8>(), 0..400),
            0u8..3,
        )
            .prop_map(|(opcode, fin, rsv, mask, payload, wide)| Frame {
                opcode,
                fin,
                rsv,
                mask,
                payload,
                wide,
            })
    }

    proptest::proptest! {
        /// Any sequence of frames, cut into any chunks, comes out as the
        /// same frames with the same fields and (unmasked) payload prefix.
        #[test]
        fn any_frames_in_any_chunks_are_parsed_exactly(
            frames in proptest::collection::vec(frame(), 0..12),
            chunk in 1usize..600,
            capture in 0usize..64,
        ) {
            let wire: Vec<u8> = frames.iter().flat_map(encode).collect();
            let got = self::frames(Origin::Client, capture, &wire, chunk);
            proptest::prop_assert_eq!(got.len(), frames.len());
            for (record, frame) in got.iter().zip(&frames) {
                proptest::prop_assert_eq!(record.opcode, frame.opcode);
                proptest::prop_assert_eq!(record.fin, frame.fin);
                proptest::prop_assert_eq!(record.rsv, [frame.rsv & 4 != 0, frame.rsv & 2 != 0, frame.rsv & 1 != 0]);
                proptest::prop_assert_eq!(record.length, frame.payload.len() as u64);
                let key = frame.mask.map(|m| m.iter().map(|b| format!("{b:02x}")).collect::<String>());
                proptest::prop_assert_eq!(record.masking_key.map(|key| key.to_string()), key);
                if capture > 0 {
                    let kept = STANDARD.decode(record.payload.as_ref().unwrap()).unwrap();
                    proptest::prop_assert_eq!(&kept[..], &frame.payload[..frame.payload.len().min(capture)]);
                    proptest::prop_assert_eq!(record.truncated, frame.payload.len() > capture);
                }
            }
        }

        /// Garbage never panics the parser (it may see frames in it).
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2000), chunk in 1usize..300) {
            let _ = self::frames(Origin::Server, 32, &bytes, chunk);
        }
    }

    #[test]
    fn metadata_only_keeps_no_payload_and_reads_flags() {
        let got = frames(Origin::Server, 0, &[0x41, 0x01, b'x'], 1);
        assert_eq!(got.len(), 1);
        assert!(!got[0].fin);
        assert_eq!(got[0].rsv, [true, false, false]);
        assert_eq!(got[0].payload, None);
    }
}
