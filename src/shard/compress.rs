//! permessage-deflate on a shard: who negotiated it, and compressing each message once.
//!
//! Server → client messages are compressed without context takeover, so a compressed
//! frame is valid for every connection that negotiated the full window. The fan-out
//! compresses a room's frames once per shard, and only when one of the room's local
//! members takes compressed frames; every such member gets the same `Bytes`, the others
//! the plain frame. Frames relayed between nodes are the owner's plain frames: each node
//! compresses once for its own members. Direct replies (acks, errors, history pages)
//! stay plain, which RFC 7692 allows for any message.

use std::cell::{Cell, RefCell};
use std::time::Instant;

use bytes::Bytes;
use tungstenite::protocol::frame::coding::{Data, OpCode};

use super::conns::Conn;
use super::Services;
use crate::metrics::{add, inc};
use crate::ws::deflate::{Agreement, Compressor, MAX_WINDOW_BITS, MIN_COMPRESS_WINDOW_BITS};
use crate::ws::frame::{self, Role};
use crate::ws::reader::Inflate;

/// A shard's compression state.
#[derive(Debug, Default)]
pub(super) struct Deflate {
    /// The full-window compressor (zlib's state, ~300 KiB), created on first use.
    compressor: RefCell<Option<Compressor>>,
    /// Open connections that take the shared full-window compressed frames: while there
    /// are none the fan-out never looks at compression.
    pub(super) members: Cell<u64>,
}

impl Services {
    /// The permessage-deflate agreement to answer an upgrade with: the client's offer,
    /// when `--compression on`.
    pub(super) fn deflate_offer(&self, offered: Option<Agreement>) -> Option<Agreement> {
        offered.filter(|_| self.cfg.compression)
    }

    /// Switches an upgraded connection to the agreed compression: its reader inflates
    /// the client's compressed messages, and it counts as a taker of shared frames.
    pub(super) fn use_deflate(&self, conn: &mut Conn, agreed: Option<Agreement>) {
        let Some(a) = agreed else { return };
        conn.deflate_window = a.server_window_bits;
        conn.reader.set_inflate(if a.client_no_context_takeover { Inflate::NoContext } else { Inflate::Context });
        if a.takes_full_window() {
            self.deflate.members.set(self.deflate.members.get() + 1);
        }
    }

    /// Undoes [`Services::use_deflate`]'s count when the connection ends.
    pub(super) fn forget_deflate(&self, conn: &Conn) {
        if conn.takes_deflated() {
            self.deflate.members.set(self.deflate.members.get().saturating_sub(1));
        }
    }

    /// Whether any open connection of this shard takes shared compressed frames.
    pub(super) fn deflate_in_use(&self) -> bool {
        self.deflate.members.get() > 0
    }

    /// The compressed twin of an owner-built frame (complete, unmasked, final): the
    /// frame itself when it is a control frame or its payload is under
    /// `--compression-min-bytes`.
    pub(super) fn shared_deflated(&self, plain: &Bytes) -> Bytes {
        let Ok(Some(h)) = frame::parse_header(plain, Role::Client, usize::MAX) else { return plain.clone() };
        if !matches!(h.opcode, OpCode::Data(Data::Text | Data::Binary)) || !h.fin || h.frame_len() != plain.len() {
            return plain.clone();
        }
        self.compress(MAX_WINDOW_BITS, h.opcode, &plain[h.header_len..]).unwrap_or_else(|| plain.clone())
    }

    /// The frame for a message the server sends to `conn` alone (the echo endpoint's
    /// answers): compressed with the connection's own window when it negotiated deflate
    /// and the payload is large enough, plain otherwise.
    pub(super) fn frame_for(&self, conn: &Conn, opcode: OpCode, payload: &[u8]) -> Bytes {
        let window = Some(conn.deflate_window).filter(|&b| b >= MIN_COMPRESS_WINDOW_BITS);
        let compressed = window.and_then(|b| self.compress(b, opcode, payload));
        compressed.unwrap_or_else(|| frame::build_frame(opcode, payload.len(), |b| b.extend_from_slice(payload)))
    }

    /// Compresses one message into a complete frame, counting it; `None` when the payload
    /// is under the threshold.
    fn compress(&self, window_bits: u8, opcode: OpCode, payload: &[u8]) -> Option<Bytes> {
        if payload.len() < self.cfg.compression_min_bytes {
            return None;
        }
        let started = Instant::now();
        let frame = if window_bits >= MAX_WINDOW_BITS {
            let mut shared = self.deflate.compressor.borrow_mut();
            shared.get_or_insert_with(|| Compressor::new(MAX_WINDOW_BITS)).frame(opcode, payload)
        } else {
            // A client that asked for a smaller window (the conformance suite does): rare
            // enough for a compressor of its own per message.
            Compressor::new(window_bits).frame(opcode, payload)
        };
        let s = &self.stats;
        add(&s.compress_ns, u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX));
        inc(&s.compressed_frames);
        add(&s.compress_bytes_in, payload.len() as u64);
        let header = frame::parse_header_with(&frame, Role::Client, usize::MAX, true).ok().flatten();
        add(&s.compress_bytes_out, header.map_or(0, |h| h.payload_len) as u64);
        Some(frame)
    }
}
