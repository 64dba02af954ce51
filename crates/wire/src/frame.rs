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

    /// Append a header for a `length`-byte payload.
    pub fn write(
        out: &mut Vec<u8>,
        fin: bool,
        rsv1: bool,
        opcode: u8,
        mask: Option<[u8; 4]>,
        length: usize,
    ) {
        out.push(u8::from(fin) << 7 | u8::from(rsv1) << 6 | opcode);
        let mask_bit = if mask.is_some() { 0x80 } else { 0 };
        match u16::try_from(length) {
            Ok(short) if short <= 125 => out.push(mask_bit | short as u8),
            Ok(medium) => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&medium.to_be_bytes());
            }
            Err(_) => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&(length as u64).to_be_bytes());
            }
        }
        if let Some(key) = mask {
            out.extend_from_slice(&key);
        }
    }
}

/// XOR `bytes` with `key`, starting `offset` bytes into the payload.
pub fn apply_mask(bytes: &mut [u8], key: [u8; 4], offset: u64) {
    let start = (offset % 4) as usize;
    for (byte, k) in bytes.iter_mut().zip(key.iter().cycle().skip(start)) {
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

    #[test]
    fn masks_apply_from_any_offset() {
        let key = [1, 2, 3, 4];
        let mut whole = *b"abcdefgh";
        apply_mask(&mut whole, key, 0);
        let mut tail = *b"defgh";
        apply_mask(&mut tail, key, 3);
        assert_eq!(&whole[3..], &tail);
    }
}
