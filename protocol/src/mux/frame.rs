//! The yamux frame header: 12 bytes, big-endian.
//!
//! ```text
//! | version u8 | type u8 | flags u16 | stream id u32 | length u32 |
//! ```
//! `length` is the payload size for Data, the window delta for WindowUpdate, the opaque value
//! for Ping and the error code for GoAway. Only Data frames carry a payload.

/// Header length in bytes.
pub const HEADER_LEN: usize = 12;
/// The only protocol version.
pub const VERSION: u8 = 0;

/// Frame type: data.
pub const TYPE_DATA: u8 = 0;
/// Frame type: window update.
pub const TYPE_WINDOW_UPDATE: u8 = 1;
/// Frame type: ping.
pub const TYPE_PING: u8 = 2;
/// Frame type: go away.
pub const TYPE_GO_AWAY: u8 = 3;

/// Flag: open a stream (or ask for a ping answer).
pub const FLAG_SYN: u16 = 1;
/// Flag: acknowledge a stream open (or answer a ping).
pub const FLAG_ACK: u16 = 2;
/// Flag: half-close a stream.
pub const FLAG_FIN: u16 = 4;
/// Flag: reset a stream.
pub const FLAG_RST: u16 = 8;

/// GoAway code: normal termination.
pub const GO_AWAY_NORMAL: u32 = 0;
/// GoAway code: protocol error.
pub const GO_AWAY_PROTOCOL_ERROR: u32 = 1;
/// GoAway code: internal error.
pub const GO_AWAY_INTERNAL_ERROR: u32 = 2;

/// The window every stream starts with, by the yamux specification.
pub const INITIAL_WINDOW: u32 = 256 * 1024;

/// The frame types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameType {
    /// Stream payload.
    Data,
    /// Stream window grant.
    WindowUpdate,
    /// Session liveness check.
    Ping,
    /// Session termination notice.
    GoAway,
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Frame type.
    pub ty: FrameType,
    /// Flags (`FLAG_*`).
    pub flags: u16,
    /// Stream id (0 for session frames).
    pub stream_id: u32,
    /// Payload length, window delta, ping value or go-away code.
    pub length: u32,
}

/// Why a header cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// The version byte is not 0.
    #[error("unsupported yamux version {0}")]
    Version(u8),
    /// The type byte is not one of the four types.
    #[error("unknown yamux frame type {0}")]
    Type(u8),
}

impl Header {
    /// Decode a header.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Self, HeaderError> {
        if b[0] != VERSION {
            return Err(HeaderError::Version(b[0]));
        }
        let ty = match b[1] {
            TYPE_DATA => FrameType::Data,
            TYPE_WINDOW_UPDATE => FrameType::WindowUpdate,
            TYPE_PING => FrameType::Ping,
            TYPE_GO_AWAY => FrameType::GoAway,
            other => return Err(HeaderError::Type(other)),
        };
        Ok(Self {
            ty,
            flags: u16::from_be_bytes([b[2], b[3]]),
            stream_id: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            length: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
        })
    }

    /// Encode this header.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let ty = match self.ty {
            FrameType::Data => TYPE_DATA,
            FrameType::WindowUpdate => TYPE_WINDOW_UPDATE,
            FrameType::Ping => TYPE_PING,
            FrameType::GoAway => TYPE_GO_AWAY,
        };
        let mut b = [0u8; HEADER_LEN];
        b[0] = VERSION;
        b[1] = ty;
        b[2..4].copy_from_slice(&self.flags.to_be_bytes());
        b[4..8].copy_from_slice(&self.stream_id.to_be_bytes());
        b[8..12].copy_from_slice(&self.length.to_be_bytes());
        b
    }
}

/// Encode a raw frame (any type byte and version) followed by `body`, for tests and tools
/// that speak the protocol by hand.
pub fn raw_frame(ty: u8, flags: u16, stream_id: u32, length: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.push(VERSION);
    out.push(ty);
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&stream_id.to_be_bytes());
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_every_type_and_flag() {
        let types = [
            FrameType::Data,
            FrameType::WindowUpdate,
            FrameType::Ping,
            FrameType::GoAway,
        ];
        let flags = [
            0,
            FLAG_SYN,
            FLAG_ACK,
            FLAG_FIN,
            FLAG_RST,
            FLAG_SYN | FLAG_FIN,
        ];
        for ty in types {
            for f in flags {
                let h = Header {
                    ty,
                    flags: f,
                    stream_id: 0x0102_0304,
                    length: 0xa0b0_c0d0,
                };
                assert_eq!(Header::decode(&h.encode()), Ok(h));
            }
        }
    }

    #[test]
    fn header_matches_hand_written_bytes() {
        let b: [u8; 12] = [0, 1, 0, 1, 0, 0, 0, 3, 0, 4, 0, 0];
        assert_eq!(
            Header::decode(&b),
            Ok(Header {
                ty: FrameType::WindowUpdate,
                flags: FLAG_SYN,
                stream_id: 3,
                length: 0x40000
            })
        );
        assert_eq!(
            raw_frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 3, 0x40000, &[]),
            b.to_vec()
        );
    }

    #[test]
    fn bad_headers_are_errors() {
        let mut b = [0u8; 12];
        b[0] = 1;
        assert_eq!(Header::decode(&b), Err(HeaderError::Version(1)));
        b[0] = 0;
        b[1] = 4;
        assert_eq!(Header::decode(&b), Err(HeaderError::Type(4)));
        b[1] = 255;
        assert_eq!(Header::decode(&b), Err(HeaderError::Type(255)));
    }
}
