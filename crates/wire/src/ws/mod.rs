//! WebSocket (RFC 6455), kept in three layers as tungstenite and fastwebsockets do:
//!
//! * [`frame`]: header parse/encode and unmasking, pure;
//! * [`reader`]: message assembly (fragments, control frames, UTF-8), pure;
//! * [`handshake`]: the HTTP upgrade, pure;
//! * [`deflate`]: permessage-deflate (RFC 7692) negotiation and codec, pure;
//!
//! No I/O here: the server's connection code (`shard::conn` in the `corecast` crate) and
//! bench-client's connections feed them bytes.

pub mod deflate;
pub mod frame;
pub mod handshake;
pub mod reader;

/// Close status codes used by corecast (RFC 6455 §7.4.1).
pub mod close {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// Going away: the server is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// Protocol error.
    pub const PROTOCOL: u16 = 1002;
    /// Unsupported data (corecast speaks text JSON only).
    pub const UNSUPPORTED: u16 = 1003;
    /// Invalid payload data (text that is not UTF-8).
    pub const INVALID_DATA: u16 = 1007;
    /// Policy violation (rate-limit abuse, expired token).
    pub const POLICY: u16 = 1008;
    /// Message too big.
    pub const TOO_BIG: u16 = 1009;
    /// Internal error.
    pub const INTERNAL: u16 = 1011;
    /// Service restart: the server is restarting and keeps its state (`--data-dir`):
    /// reconnect promptly and recover.
    pub const SERVICE_RESTART: u16 = 1012;
    /// Try again later: the client is too slow to keep up (slow consumer).
    pub const TRY_LATER: u16 = 1013;
}

/// A violation of RFC 6455 by the peer. The connection must be closed with
/// [`close_code`](ProtocolError::close_code); nothing else needs to happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// Opcode 0x3–0x7 or 0xB–0xF.
    #[error("reserved opcode")]
    ReservedOpcode,
    /// RSV1–3 set without a negotiated extension.
    #[error("reserved bits set without an extension")]
    ReservedBits,
    /// A client frame without a mask (RFC 6455 §5.1).
    #[error("client frames must be masked")]
    UnmaskedClientFrame,
    /// A server frame with a mask.
    #[error("server frames must not be masked")]
    MaskedServerFrame,
    /// A control frame with FIN clear.
    #[error("control frames must not be fragmented")]
    FragmentedControl,
    /// A control frame over 125 bytes.
    #[error("control frame payload over 125 bytes")]
    ControlTooLong,
    /// A continuation frame with no message in progress.
    #[error("continuation frame without a message to continue")]
    UnexpectedContinuation,
    /// A new data frame while a fragmented message is still open.
    #[error("new data frame inside a fragmented message")]
    ExpectedContinuation,
    /// A close frame with a 1-byte payload or an invalid status code.
    #[error("malformed close frame")]
    BadClosePayload,
    /// Text (or a close reason) that is not valid UTF-8.
    #[error("text is not valid UTF-8")]
    InvalidUtf8,
    /// A frame or assembled message over the configured maximum (for a compressed
    /// message: its inflated size).
    #[error("message too big")]
    TooBig,
    /// A compressed message (permessage-deflate) whose payload is not valid deflate data.
    #[error("invalid compressed data")]
    BadCompressedData,
}

impl ProtocolError {
    /// The close code the server answers this violation with.
    pub fn close_code(self) -> u16 {
        match self {
            ProtocolError::InvalidUtf8 | ProtocolError::BadCompressedData => close::INVALID_DATA,
            ProtocolError::TooBig => close::TOO_BIG,
            _ => close::PROTOCOL,
        }
    }
}
