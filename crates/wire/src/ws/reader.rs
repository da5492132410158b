//! Turns a byte stream into complete WebSocket messages: frame boundaries across reads,
//! unmasking, fragmentation, interleaved control frames, UTF-8 validation of text.
//!
//! Pure (no I/O). The connection hands it whatever the socket produced, usually straight
//! from the shard's scratch buffer; only an unfinished frame tail is copied into the
//! reader's own buffer, which is freed again as soon as it drains, so an idle connection
//! holds no buffer at all (docs/DESIGN-NOTES.md, "Memory per connection").

use std::ops::ControlFlow;

use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

use super::deflate::Inflater;
use super::frame::{parse_header_with, unmask, Role};
use super::ProtocolError;

/// One complete message or control frame, borrowed from the reader's input.
#[derive(Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// A complete, UTF-8-validated text message. Mutable so that an in-place JSON parser
    /// (simd-json) can use it without another copy.
    Text(&'a mut [u8]),
    /// A complete binary message.
    Binary(&'a [u8]),
    /// A ping with its application data (to be echoed in a pong).
    Ping(&'a [u8]),
    /// A pong.
    Pong(&'a [u8]),
    /// A close frame: `None` when it carried no status code.
    Close(Option<(u16, &'a str)>),
}

/// Reassembly state of one connection's inbound direction.
///
/// 16 bytes while idle: what must survive between reads lives in a box that exists only
/// while a frame or a fragmented message is unfinished (a million idle connections must
/// not carry a million empty buffers).
#[derive(Debug)]
pub struct MessageReader {
    role: Role,
    inflate: Inflate,
    max_message: u32,
    pending: Option<Box<Pending>>,
}

/// Whether, and how, the peer's compressed messages (permessage-deflate, RFC 7692) are
/// inflated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inflate {
    /// Not negotiated: RSV1 is a protocol error.
    Off,
    /// Negotiated, and the peer keeps no context between messages: inflate state exists
    /// only while a compressed message is inflated.
    NoContext,
    /// Negotiated, and the peer may take over its context: the inflate state (with its
    /// window) is created by the first compressed message and kept from then on.
    Context,
}

/// Input that waits for more bytes.
#[derive(Debug, Default)]
struct Pending {
    /// Bytes of a frame that has not fully arrived yet.
    tail: Vec<u8>,
    /// A fragmented data message being assembled.
    fragments: Option<Fragments>,
    /// The peer's inflate context, kept between messages ([`Inflate::Context`] only).
    inflater: Option<Inflater>,
}

#[derive(Debug)]
struct Fragments {
    text: bool,
    /// RSV1 on the first frame: `data` is deflate data, inflated when the message ends.
    compressed: bool,
    data: Vec<u8>,
    /// Text: how much of `data` is known to be complete, valid UTF-8. Each fragment is
    /// checked as it arrives (from here on), so invalid text fails at the fragment that
    /// makes it invalid, not at the end of the message (RFC 6455 §8.1 "fail fast").
    valid: usize,
}

impl Fragments {
    /// Checks the bytes added since the last call; a sequence cut at the end of `data`
    /// may still be completed by the next fragment.
    fn check_utf8(&mut self) -> Result<(), ProtocolError> {
        if !self.text || self.compressed {
            return Ok(());
        }
        match std::str::from_utf8(&self.data[self.valid..]) {
            Ok(_) => self.valid = self.data.len(),
            Err(e) if e.error_len().is_none() => self.valid += e.valid_up_to(),
            Err(_) => return Err(ProtocolError::InvalidUtf8),
        }
        Ok(())
    }
}

impl MessageReader {
    /// A reader for frames produced by the other side of `role`, refusing any frame or
    /// assembled message over `max_message` payload bytes (close code 1009). Caps above
    /// 4 GiB − 1 are treated as 4 GiB − 1.
    pub fn new(role: Role, max_message: usize) -> Self {
        MessageReader {
            role,
            inflate: Inflate::Off,
            max_message: u32::try_from(max_message).unwrap_or(u32::MAX),
            pending: None,
        }
    }

    /// Accepts compressed messages (permessage-deflate was negotiated) from now on. A
    /// compressed message is refused with 1009 as soon as its inflated size passes the
    /// message cap, so inflating never holds more than the cap.
    pub fn set_inflate(&mut self, inflate: Inflate) {
        self.inflate = inflate;
    }

    /// Bytes currently held for unfinished frames or fragmented messages.
    pub fn buffered(&self) -> usize {
        self.pending.as_ref().map_or(0, |p| p.tail.len() + p.fragments.as_ref().map_or(0, |f| f.data.len()))
    }

    /// Feeds freshly read bytes. `input` may be modified (unmasking happens in place).
    ///
    /// `on_message` is called for every complete message in order; returning
    /// `ControlFlow::Break` stops processing (the rest of the input is discarded, which is
    /// what a connection that is closing wants). A protocol violation ends processing with
    /// an error whose [`ProtocolError::close_code`] the connection should send.
    pub fn feed<F>(&mut self, input: &mut [u8], mut on_message: F) -> Result<(), ProtocolError>
    where
        F: FnMut(Message<'_>) -> ControlFlow<()>,
    {
        let mut pending = self.pending.take().unwrap_or_default();
        let result = if pending.tail.is_empty() {
            self.process(input, &mut pending.fragments, &mut pending.inflater, &mut on_message).map(|(used, flow)| {
                if flow.is_continue() {
                    pending.tail.extend_from_slice(&input[used..]);
                }
            })
        } else {
            let mut tail = std::mem::take(&mut pending.tail);
            tail.extend_from_slice(input);
            self.process(&mut tail, &mut pending.fragments, &mut pending.inflater, &mut on_message).map(
                |(used, flow)| {
                    if flow.is_continue() && used < tail.len() {
                        tail.drain(..used);
                        pending.tail = tail;
                    }
                },
            )
        };
        if result.is_ok() && (!pending.tail.is_empty() || pending.fragments.is_some() || pending.inflater.is_some()) {
            self.pending = Some(pending);
        }
        result
    }

    /// Processes every complete frame at the start of `buf`; returns bytes consumed.
    fn process<F>(
        &self,
        buf: &mut [u8],
        fragments: &mut Option<Fragments>,
        inflater: &mut Option<Inflater>,
        on_message: &mut F,
    ) -> Result<(usize, ControlFlow<()>), ProtocolError>
    where
        F: FnMut(Message<'_>) -> ControlFlow<()>,
    {
        let max = self.max_message as usize;
        let mut pos = 0;
        let rsv1 = self.inflate != Inflate::Off;
        while let Some(h) = parse_header_with(&buf[pos..], self.role, max, rsv1)? {
            if buf.len() - pos < h.frame_len() {
                break;
            }
            let payload = &mut buf[pos + h.header_len..pos + h.frame_len()];
            pos += h.frame_len();
            if let Some(mask) = h.mask {
                unmask(payload, mask);
            }
            let mut inflating = Inflating { mode: self.inflate, state: inflater, max };
            if frame(h.opcode, h.fin, h.rsv1, payload, fragments, &mut inflating, on_message)?.is_break() {
                return Ok((pos, ControlFlow::Break(())));
            }
        }
        Ok((pos, ControlFlow::Continue(())))
    }
}

/// What inflating a compressed message needs: the mode, the kept state, the cap.
struct Inflating<'s> {
    mode: Inflate,
    state: &'s mut Option<Inflater>,
    max: usize,
}

impl Inflating<'_> {
    /// Inflates one complete compressed message, under the cap.
    fn inflate(&mut self, data: &[u8]) -> Result<Vec<u8>, ProtocolError> {
        let mut out = Vec::new();
        let result = self.state.get_or_insert_with(Inflater::new).inflate(data, self.max, &mut out);
        // Without context takeover nothing survives the message: the state (its 32 KiB
        // window above all) is freed until the next compressed message.
        if self.mode != Inflate::Context || result.is_err() {
            *self.state = None;
        }
        result.map(|()| out)
    }
}

/// Handles one complete frame: control frames at once, data frames into messages.
/// `rsv1` (compressed) can only be set here when inflating was enabled.
fn frame<F>(
    opcode: OpCode,
    fin: bool,
    rsv1: bool,
    payload: &mut [u8],
    fragments: &mut Option<Fragments>,
    inflating: &mut Inflating<'_>,
    on_message: &mut F,
) -> Result<ControlFlow<()>, ProtocolError>
where
    F: FnMut(Message<'_>) -> ControlFlow<()>,
{
    let max = inflating.max;
    match opcode {
        OpCode::Control(Control::Ping) => Ok(on_message(Message::Ping(payload))),
        OpCode::Control(Control::Pong) => Ok(on_message(Message::Pong(payload))),
        OpCode::Control(Control::Close) => Ok(on_message(Message::Close(parse_close(payload)?))),
        OpCode::Data(Data::Text) | OpCode::Data(Data::Binary) => {
            if fragments.is_some() {
                return Err(ProtocolError::ExpectedContinuation);
            }
            let text = opcode == OpCode::Data(Data::Text);
            if !fin {
                let mut open = Fragments { text, compressed: rsv1, data: payload.to_vec(), valid: 0 };
                open.check_utf8()?;
                *fragments = Some(open);
                return Ok(ControlFlow::Continue(()));
            }
            if rsv1 {
                return deliver(text, &mut inflating.inflate(payload)?, on_message);
            }
            deliver(text, payload, on_message)
        }
        // RSV1 marks a message, not a frame: only its first frame carries it.
        OpCode::Data(Data::Continue) if rsv1 => Err(ProtocolError::ReservedBits),
        OpCode::Data(Data::Continue) => {
            let Some(open) = fragments.as_mut() else {
                return Err(ProtocolError::UnexpectedContinuation);
            };
            if open.data.len() + payload.len() > max {
                return Err(ProtocolError::TooBig);
            }
            open.data.extend_from_slice(payload);
            if !fin {
                open.check_utf8()?;
                return Ok(ControlFlow::Continue(()));
            }
            let Some(mut done) = fragments.take() else {
                return Ok(ControlFlow::Continue(()));
            };
            if done.compressed {
                let mut inflated = inflating.inflate(&done.data)?;
                drop(done.data);
                return deliver(done.text, &mut inflated, on_message);
            }
            deliver(done.text, &mut done.data, on_message)
        }
        // Reserved opcodes are refused by `parse_header`.
        OpCode::Data(Data::Reserved(_)) | OpCode::Control(Control::Reserved(_)) => Err(ProtocolError::ReservedOpcode),
    }
}

fn deliver<F>(text: bool, payload: &mut [u8], on_message: &mut F) -> Result<ControlFlow<()>, ProtocolError>
where
    F: FnMut(Message<'_>) -> ControlFlow<()>,
{
    if !text {
        return Ok(on_message(Message::Binary(payload)));
    }
    if std::str::from_utf8(payload).is_err() {
        return Err(ProtocolError::InvalidUtf8);
    }
    Ok(on_message(Message::Text(payload)))
}

/// Validates a close payload (RFC 6455 §5.5.1, §7.4).
fn parse_close(payload: &[u8]) -> Result<Option<(u16, &str)>, ProtocolError> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(ProtocolError::BadClosePayload),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            // 1012–1014 are registered with IANA (1013 "try again later" is the code corecast
            // itself sends to slow consumers); 1004–1006 and 1015 must never be sent.
            let valid = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            if !valid {
                return Err(ProtocolError::BadClosePayload);
            }
            let reason = std::str::from_utf8(&payload[2..]).map_err(|_| ProtocolError::InvalidUtf8)?;
            Ok(Some((code, reason)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::frame::client_frame;

    const TEXT: OpCode = OpCode::Data(Data::Text);
    const CONT: OpCode = OpCode::Data(Data::Continue);
    const M: [u8; 4] = [0x12, 0x34, 0x56, 0x78];

    /// Owned form of a message, for comparing what a reader produced.
    #[derive(Debug, PartialEq, Eq, Clone)]
    enum Owned {
        Text(Vec<u8>),
        Binary(Vec<u8>),
        Ping(Vec<u8>),
        Pong(Vec<u8>),
        Close(Option<(u16, String)>),
    }

    fn collect(reader: &mut MessageReader, chunks: &[&[u8]]) -> Result<Vec<Owned>, ProtocolError> {
        let mut out = Vec::new();
        for chunk in chunks {
            let mut chunk = chunk.to_vec();
            reader.feed(&mut chunk, |m| {
                out.push(match m {
                    Message::Text(t) => Owned::Text(t.to_vec()),
                    Message::Binary(b) => Owned::Binary(b.to_vec()),
                    Message::Ping(p) => Owned::Ping(p.to_vec()),
                    Message::Pong(p) => Owned::Pong(p.to_vec()),
                    Message::Close(c) => Owned::Close(c.map(|(c, r)| (c, r.to_owned()))),
                });
                ControlFlow::Continue(())
            })?;
        }
        Ok(out)
    }

    #[test]
    fn fragmented_text_with_interleaved_ping() {
        let mut wire = client_frame(TEXT, false, b"hel", M);
        wire.extend(client_frame(OpCode::Control(Control::Ping), true, b"p", M));
        wire.extend(client_frame(CONT, false, b"lo ", M));
        wire.extend(client_frame(CONT, true, "wörld".as_bytes(), M));
        let mut r = MessageReader::new(Role::Server, 1024);
        let got = collect(&mut r, &[&wire]).unwrap();
        assert_eq!(got, vec![Owned::Ping(b"p".to_vec()), Owned::Text("hello wörld".as_bytes().to_vec())]);
        assert_eq!(r.buffered(), 0);
    }

    /// Invalid text is refused at the fragment that makes it invalid, while the message
    /// is still open; a character split across fragments is not mistaken for one.
    #[test]
    fn invalid_utf8_fails_at_the_fragment_not_at_the_end() {
        let euro = "€".as_bytes();
        let mut r = MessageReader::new(Role::Server, 1024);
        let first = client_frame(TEXT, false, &[b'a', euro[0]], M);
        assert!(collect(&mut r, &[&first]).unwrap().is_empty());
        let second = client_frame(CONT, false, &euro[1..], M);
        assert!(collect(&mut r, &[&second]).unwrap().is_empty(), "a split character is fine");
        let bad = client_frame(CONT, false, &[0xce, 0xba, 0xf4, 0x90], M);
        assert_eq!(collect(&mut r, &[&bad]), Err(ProtocolError::InvalidUtf8), "before the final fragment");
        let mut r = MessageReader::new(Role::Server, 1024);
        let bad_first = client_frame(TEXT, false, &[0xff], M);
        assert_eq!(collect(&mut r, &[&bad_first]), Err(ProtocolError::InvalidUtf8));
        // A cut sequence never completed is refused at the end.
        let mut r = MessageReader::new(Role::Server, 1024);
        let wire = [client_frame(TEXT, false, &euro[..2], M), client_frame(CONT, true, b"", M)].concat();
        assert_eq!(collect(&mut r, &[&wire]), Err(ProtocolError::InvalidUtf8));
    }

    /// Deflate data of `msg` as a client with no context takeover sends it.
    fn deflated(msg: &[u8]) -> Vec<u8> {
        let frame = crate::ws::deflate::Compressor::new(15).frame(TEXT, msg);
        let h = crate::ws::frame::parse_header_with(&frame, Role::Client, usize::MAX, true).unwrap().unwrap();
        frame[h.header_len..].to_vec()
    }

    #[test]
    fn compressed_messages_are_inflated_whole_or_fragmented() {
        use crate::ws::frame::client_frame_with;
        let text = "{\"type\":\"message\",\"text\":\"wörds wörds wörds\"}".repeat(20);
        let z = deflated(text.as_bytes());
        let mut r = MessageReader::new(Role::Server, 4096);
        r.set_inflate(Inflate::NoContext);
        let mut wire = client_frame_with(TEXT, true, true, &z, M);
        let (a, b) = z.split_at(z.len() / 2);
        wire.extend(client_frame_with(TEXT, false, true, a, M));
        wire.extend(client_frame(OpCode::Control(Control::Ping), true, b"p", M));
        wire.extend(client_frame(CONT, true, b, M));
        wire.extend(client_frame(TEXT, true, b"plain", M));
        let got = collect(&mut r, &[&wire]).unwrap();
        let t = Owned::Text(text.clone().into_bytes());
        assert_eq!(got, vec![t.clone(), Owned::Ping(b"p".to_vec()), t, Owned::Text(b"plain".to_vec())]);
        assert!(r.pending.is_none(), "no inflate state kept without context takeover");
        // With context takeover the state stays (the peer may refer back to it).
        let mut r = MessageReader::new(Role::Server, 4096);
        r.set_inflate(Inflate::Context);
        collect(&mut r, &[&client_frame_with(TEXT, true, true, &z, M)]).unwrap();
        assert!(r.pending.as_ref().is_some_and(|p| p.inflater.is_some()));
    }

    #[test]
    fn compression_rules_and_limits() {
        use crate::ws::frame::client_frame_with;
        let z = deflated(&[b'a'; 5000]);
        let cases: Vec<(Inflate, Vec<u8>, ProtocolError)> = vec![
            // RSV1 without the extension, on a continuation, on a control frame.
            (Inflate::Off, client_frame_with(TEXT, true, true, &z, M), ProtocolError::ReservedBits),
            (
                Inflate::NoContext,
                [client_frame_with(TEXT, false, true, &z, M), client_frame_with(CONT, true, true, b"", M)].concat(),
                ProtocolError::ReservedBits,
            ),
            (
                Inflate::NoContext,
                client_frame_with(OpCode::Control(Control::Ping), true, true, b"", M),
                ProtocolError::ReservedBits,
            ),
            // A small frame inflating past the cap: 1009.
            (Inflate::NoContext, client_frame_with(TEXT, true, true, &z, M), ProtocolError::TooBig),
            (Inflate::NoContext, client_frame_with(TEXT, true, true, &[0xff; 8], M), ProtocolError::BadCompressedData),
            (
                Inflate::NoContext,
                client_frame_with(TEXT, true, true, &deflated(&[0xff]), M),
                ProtocolError::InvalidUtf8,
            ),
        ];
        for (mode, wire, err) in cases {
            let mut r = MessageReader::new(Role::Server, 4096);
            r.set_inflate(mode);
            assert_eq!(collect(&mut r, &[&wire]), Err(err), "{mode:?}");
        }
    }

    #[test]
    fn tail_is_released_after_a_split_frame_completes() {
        let wire = client_frame(TEXT, true, b"{\"type\":\"join\"}", M);
        let mut r = MessageReader::new(Role::Server, 1024);
        assert!(collect(&mut r, &[&wire[..5]]).unwrap().is_empty());
        assert_eq!(r.buffered(), 5);
        assert_eq!(collect(&mut r, &[&wire[5..]]).unwrap().len(), 1);
        assert!(r.pending.is_none(), "idle reader must hold no buffer");
    }

    #[test]
    fn protocol_violations_map_to_close_codes() {
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (client_frame(CONT, true, b"x", M), 1002),
            ([client_frame(TEXT, false, b"a", M), client_frame(TEXT, true, b"b", M)].concat(), 1002),
            (client_frame(TEXT, true, &[0xff, 0xfe], M), 1007),
            (client_frame(TEXT, true, &[b'a'; 20], M), 1009),
            ([client_frame(TEXT, false, &[b'a'; 9], M), client_frame(CONT, true, &[b'a'; 8], M)].concat(), 1009),
            (client_frame(OpCode::Control(Control::Close), true, &[3], M), 1002),
            (client_frame(OpCode::Control(Control::Close), true, &[0x03, 0xed], M), 1002),
            (client_frame(OpCode::Control(Control::Close), true, &[0x03, 0xe8, 0xff], M), 1007),
            (text_unmasked(), 1002),
        ];
        for (wire, code) in cases {
            let mut r = MessageReader::new(Role::Server, 16);
            let err = collect(&mut r, &[&wire]).unwrap_err();
            assert_eq!(err.close_code(), code, "{err:?}");
        }
    }

    fn text_unmasked() -> Vec<u8> {
        crate::ws::frame::text_frame(b"hi").to_vec()
    }

    /// Regression: a client using this reader must accept the server's own 1013 close
    /// (slow consumer); it was refused as a protocol error.
    #[test]
    fn registered_close_codes_1012_to_1014_are_accepted() {
        for code in [1012u16, 1013, 1014] {
            let wire = client_frame(OpCode::Control(Control::Close), true, &code.to_be_bytes(), M);
            let mut r = MessageReader::new(Role::Server, 16);
            assert_eq!(collect(&mut r, &[&wire]).unwrap(), vec![Owned::Close(Some((code, String::new())))]);
        }
        let wire = client_frame(OpCode::Control(Control::Close), true, &1015u16.to_be_bytes(), M);
        assert!(collect(&mut MessageReader::new(Role::Server, 16), &[&wire]).is_err());
    }

    #[test]
    fn close_with_code_and_reason() {
        let wire = client_frame(OpCode::Control(Control::Close), true, b"\x03\xe8bye", M);
        let mut r = MessageReader::new(Role::Server, 16);
        assert_eq!(collect(&mut r, &[&wire]).unwrap(), vec![Owned::Close(Some((1000, "bye".into())))]);
    }

    #[test]
    fn break_stops_processing() {
        let wire = [client_frame(TEXT, true, b"a", M), client_frame(TEXT, true, b"b", M)].concat();
        let mut r = MessageReader::new(Role::Server, 16);
        let mut seen = 0;
        r.feed(&mut wire.clone(), |_| {
            seen += 1;
            ControlFlow::Break(())
        })
        .unwrap();
        assert_eq!(seen, 1);
        assert_eq!(r.buffered(), 0);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn arb_message() -> impl Strategy<Value = (u8, Vec<u8>)> {
            prop_oneof![
                (Just(0u8), "[a-zé😀 ]{0,300}".prop_map(String::into_bytes)),
                (Just(1u8), proptest::collection::vec(any::<u8>(), 0..300)),
                (Just(2u8), proptest::collection::vec(any::<u8>(), 0..125)),
            ]
        }

        /// Encodes messages, fragmenting text/binary ones into `frags` pieces.
        fn encode(msgs: &[(u8, Vec<u8>)], frags: usize, mask: [u8; 4]) -> Vec<u8> {
            let mut wire = Vec::new();
            for (kind, body) in msgs {
                match kind {
                    2 => wire.extend(client_frame(OpCode::Control(Control::Ping), true, body, mask)),
                    _ => {
                        let op = if *kind == 0 { TEXT } else { OpCode::Data(Data::Binary) };
                        let step = body.len().div_ceil(frags).max(1);
                        let pieces: Vec<&[u8]> =
                            if body.is_empty() { vec![&[][..]] } else { body.chunks(step).collect() };
                        for (i, piece) in pieces.iter().enumerate() {
                            let opcode = if i == 0 { op } else { CONT };
                            wire.extend(client_frame(opcode, i + 1 == pieces.len(), piece, mask));
                        }
                    }
                }
            }
            wire
        }

        fn expected(msgs: &[(u8, Vec<u8>)]) -> Vec<Owned> {
            msgs.iter()
                .map(|(k, b)| match k {
                    0 => Owned::Text(b.clone()),
                    1 => Owned::Binary(b.clone()),
                    _ => Owned::Ping(b.clone()),
                })
                .collect()
        }

        proptest! {
            #[test]
            fn any_split_of_valid_input_parses_the_same(
                msgs in proptest::collection::vec(arb_message(), 0..8),
                frags in 1usize..4,
                mask in any::<[u8; 4]>(),
                cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
            ) {
                let wire = encode(&msgs, frags, mask);
                let mut points: Vec<usize> = cuts.iter().map(|c| c.index(wire.len() + 1)).collect();
                points.sort_unstable();
                let mut chunks = Vec::new();
                let mut last = 0;
                for p in points { chunks.push(&wire[last..p]); last = p; }
                chunks.push(&wire[last..]);
                let mut r = MessageReader::new(Role::Server, 4096);
                let got = collect(&mut r, &chunks).unwrap();
                prop_assert_eq!(got, expected(&msgs));
                prop_assert_eq!(r.buffered(), 0);
            }

            #[test]
            fn arbitrary_bytes_never_panic(
                chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8),
                role_server in any::<bool>(),
            ) {
                let role = if role_server { Role::Server } else { Role::Client };
                let mut r = MessageReader::new(role, 256);
                for mut c in chunks {
                    if r.feed(&mut c, |_| ControlFlow::Continue(())).is_err() { break; }
                    // Memory stays bounded by the cap even for garbage.
                    prop_assert!(r.buffered() <= 256 + crate::ws::frame::MAX_HEADER_LEN + 64);
                }
            }
        }
    }
}
