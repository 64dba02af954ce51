//! RFC 6455 frame headers: the one codec the permessage-deflate layer and
//! the monitor's tap both read and write frames with.

/// Bytes of the longest header: 2, an 8-byte length and a 4-byte mask key.
pub const MAX_HEADER: usize = 14;

/// A frame header as it is on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// The frame ends its message.
    pub fin: bool,
    /// RSV1, RSV2, RSV3 as the low three bits (RSV1 = 4).
    pub rsv: u8,
    /// The opcode (0 continuation, 1 text, 2 binary, 8 close, 9 ping, 10 pong).
    pub opcode: u8,
    /// The masking key of a masked frame.
    pub mask: Option<[u8; 4]>,
    /// Payload length.
    pub length: u64,
    /// Bytes the header took.
    pub size: usize,
}

impl FrameHeader {
    /// The size of a header whose first two bytes are `b0 b1`.
    pub fn size_from(b1: u8) -> usize {
        let length = match b1 & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        2 + length + if b1 & 0x80 != 0 { 4 } else { 0 }
    }

    /// Parse a header from the start of `bytes`, if all of it is there.
    pub fn parse(bytes: &[u8]) -> Option<FrameHeader> {
        let (&b0, rest) = bytes.split_first()?;
        let &b1 = rest.first()?;
        let masked = b1 & 0x80 != 0;
        let (length, at) = match b1 & 0x7f {
            126 => {
                let wide: [u8; 2] = bytes.get(2..4)?.try_into().ok()?;
                (u64::from(u16::from_be_bytes(wide)), 4)
            }
            127 => {
                let wide: [u8; 8] = bytes.get(2..10)?.try_into().ok()?;
                (u64::from_be_bytes(wide), 10)
            }
            short => (u64::from(short), 2),
        };
        let (mask, size) = if masked {
            let key: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
            (Some(key), at + 4)
        } else {
            (None, at)
        };
        Some(FrameHeader {
            fin: b0 & 0x80 != 0,
            rsv: (b0 >> 4) & 0x07,
            opcode: b0 & 0x0f,
            mask,
            length,
            size,
        })
    }

    /// RSV1: the first frame of a compressed message (permessage-deflate).
    pub fn rsv1(&self) -> bool {
        self.rsv & 0b100 != 0
    }

    /// Append a header for a `length`-byte payload (to a `Vec`, or to
    /// inline bytes that allocate nothing).
    pub fn write(
        out: &mut impl Extend<u8>,
        fin: bool,
        rsv1: bool,
        opcode: u8,
        mask: Option<[u8; 4]>,
        length: usize,
    ) {
        out.extend([u8::from(fin) << 7 | u8::from(rsv1) << 6 | opcode]);
        let mask_bit = if mask.is_some() { 0x80 } else { 0 };
        match u16::try_from(length) {
            Ok(short) if short <= 125 => out.extend([mask_bit | short as u8]),
            Ok(medium) => {
                out.extend([mask_bit | 126]);
                out.extend(medium.to_be_bytes());
            }
            Err(_) => {
                out.extend([mask_bit | 127]);
                out.extend((length as u64).to_be_bytes());
            }
        }
        if let Some(key) = mask {
            out.extend(key);
        }
    }
}

/// A frame header's bytes, held inline (room for [`MAX_HEADER`]).
pub(crate) type HeaderBytes = smallvec::SmallVec<[u8; MAX_HEADER]>;

/// Follows a byte stream frame by frame without keeping it: where the
/// stream stands within a frame, and how many frames that end a message
/// (control frames and final data frames) it has carried.
#[derive(Debug, Default)]
pub struct FrameTracker {
    /// The header being read, while incomplete.
    header: [u8; MAX_HEADER],
    header_len: usize,
    /// Payload bytes of the current frame still to come.
    payload_left: u64,
    /// Frames seen that end a message.
    endings: u64,
    /// A data message has begun and its final frame has not been seen.
    fragmented: bool,
}

impl FrameTracker {
    /// Follow `bytes`, the next bytes of the stream.
    pub fn follow(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let skip = usize::try_from(self.payload_left)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                bytes = bytes.get(skip..).unwrap_or_default();
                self.payload_left -= skip as u64;
                continue;
            }
            // The first two bytes, then the rest of the header they announce.
            let size = self.header_size();
            let take = (size - self.header_len).min(bytes.len());
            if let (Some(to), Some(from)) = (
                self.header.get_mut(self.header_len..self.header_len + take),
                bytes.get(..take),
            ) {
                to.copy_from_slice(from);
            }
            self.header_len += take;
            bytes = bytes.get(take..).unwrap_or_default();
            if self.header_len < self.header_size() {
                continue;
            }
            let header = self
                .header
                .get(..self.header_len)
                .and_then(FrameHeader::parse);
            self.header_len = 0;
            if let Some(header) = header {
                self.payload_left = header.length;
                if header.opcode >= 8 {
                    self.endings += 1;
                } else if header.fin {
                    self.endings += 1;
                    self.fragmented = false;
                } else {
                    self.fragmented = true;
                }
            }
        }
    }

    /// Bytes of the header being read: 2 until those are in, then what
    /// they announce.
    fn header_size(&self) -> usize {
        match self.header.get(1) {
            Some(&b1) if self.header_len >= 2 => FrameHeader::size_from(b1),
            _ => 2,
        }
    }

    /// Frames seen so far that end a message: each is one message for
    /// whoever reads the stream (a control frame, or a data message's last
    /// frame).
    pub fn endings(&self) -> u64 {
        self.endings
    }

    /// Payload bytes of the current frame still to come.
    pub fn payload_left(&self) -> u64 {
        self.payload_left
    }

    /// The stream stops at the end of a frame, outside any fragmented message.
    pub fn at_message_boundary(&self) -> bool {
        self.header_len == 0 && self.payload_left == 0 && !self.fragmented
    }
}

/// XOR `bytes` with `key`, starting `offset` bytes into the payload, eight
/// bytes at a time (a large payload is masked at memory speed).
pub fn apply_mask(bytes: &mut [u8], key: [u8; 4], offset: u64) {
    let start = (offset % 4) as usize;
    // The key from `start`, twice: its phase repeats every eight bytes.
    let mut key8 = [0u8; 8];
    for (to, k) in key8.iter_mut().zip(key.iter().cycle().skip(start)) {
        *to = *k;
    }
    let word = u64::from_ne_bytes(key8);
    let mut chunks = bytes.chunks_exact_mut(8);
    for chunk in &mut chunks {
        // Always eight bytes: `chunks_exact_mut` leaves the rest to below.
        if let Ok(eight) = <&mut [u8; 8]>::try_from(chunk) {
            *eight = (u64::from_ne_bytes(*eight) ^ word).to_ne_bytes();
        }
    }
    for (byte, k) in chunks.into_remainder().iter_mut().zip(key8.iter()) {
        *byte ^= k;
    }
}

/// Text or binary: the opcodes that start a data message.
pub fn is_data(opcode: u8) -> bool {
    matches!(opcode, 1 | 2)
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, reason = "tests index what they built")]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_at_every_length_encoding() {
        for length in [0usize, 125, 126, 65535, 65536] {
            for mask in [None, Some([1, 2, 3, 4])] {
                let mut out = Vec::new();
                FrameHeader::write(&mut out, true, true, 2, mask, length);
                let header = FrameHeader::parse(&out);
                assert_eq!(
                    header,
                    Some(FrameHeader {
                        fin: true,
                        rsv: 4,
                        opcode: 2,
                        mask,
                        length: length as u64,
                        size: out.len(),
                    })
                );
                assert_eq!(FrameHeader::size_from(out[1]), out.len());
                assert_eq!(FrameHeader::parse(&out[..out.len() - 1]), None);
            }
        }
    }

    /// Frames written one after the other, followed in pieces of any size.
    fn follow_in_pieces(frames: &[(bool, u8, usize)], piece: usize) -> Vec<(u64, bool)> {
        let mut tracker = FrameTracker::default();
        let mut states = Vec::new();
        for &(fin, opcode, length) in frames {
            let mut bytes = Vec::new();
            FrameHeader::write(&mut bytes, fin, false, opcode, Some([9, 8, 7, 6]), length);
            bytes.resize(bytes.len() + length, 0x81);
            for chunk in bytes.chunks(piece) {
                tracker.follow(chunk);
            }
            states.push((tracker.endings(), tracker.at_message_boundary()));
        }
        states
    }

    #[test]
    fn the_tracker_counts_message_endings_in_any_pieces() {
        let frames = [
            (true, 1, 5),
            (false, 2, 300),
            (true, 9, 3),
            (false, 0, 70_000),
            (true, 0, 0),
            (true, 8, 2),
        ];
        let expected = vec![
            (1, true),
            (1, false),
            (2, false),
            (2, false),
            (3, true),
            (4, true),
        ];
        for piece in [1, 2, 3, 13, 14, 4096, 1 << 20] {
            assert_eq!(
                follow_in_pieces(&frames, piece),
                expected,
                "pieces of {piece}"
            );
        }
        // A part of a frame is not its end.
        let mut tracker = FrameTracker::default();
        tracker.follow(&[0x81, 0x85, 1, 2, 3, 4, b'h']);
        assert_eq!(tracker.endings(), 1);
        assert!(!tracker.at_message_boundary());
        tracker.follow(b"ello");
        assert!(tracker.at_message_boundary());
    }

    #[test]
    fn masks_apply_from_any_offset() {
        let key = [1, 2, 3, 4];
        let mut whole = *b"abcdefgh";
        apply_mask(&mut whole, key, 0);
        let mut tail = *b"defgh";
        apply_mask(&mut tail, key, 3);
        assert_eq!(&whole[3..], &tail);
    }

    #[test]
    fn masks_match_the_byte_by_byte_definition() {
        let key = [0x11, 0x22, 0x44, 0x88];
        for length in 0..150 {
            for offset in 0..9u64 {
                let bytes: Vec<u8> = (0..length).map(|i| (i * 7) as u8).collect();
                let expected: Vec<u8> = bytes
                    .iter()
                    .enumerate()
                    .map(|(i, b)| b ^ key[(i + offset as usize) % 4])
                    .collect();
                let mut masked = bytes.clone();
                apply_mask(&mut masked, key, offset);
                assert_eq!(masked, expected, "length {length}, offset {offset}");
            }
        }
    }
}
