//! Client → server messages (protocol v1, docs/PROTOCOL.md).
//!
//! Parsing goes through one flat, borrowing struct instead of a tagged enum: simd-json
//! unescapes strings in place, so nothing is copied, and a missing or mistyped field can
//! be reported by name together with the client's `id` (echoed as `ref`), which a serde
//! tagged enum would lose.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use super::{raw, ClientError, ErrorCode};

/// simd-json's reusable parser buffers (one set per shard), as [`parse`] takes them.
pub use simd_json::Buffers;

// Page sizes of `presence` and `history` replies, over WebSocket and HTTP alike
// (docs/PROTOCOL.md, docs/HTTP.md): every paging limit is written here, once.

/// Largest `limit` a `presence` or `history` request may ask for.
pub const MAX_PAGE: u32 = 1000;

/// `presence` page when the request gives no `limit` (at most [`MAX_PAGE`]).
pub const PRESENCE_PAGE: u32 = 100;

/// `history` page when the request gives no `limit`.
pub const HISTORY_PAGE: u32 = 50;

/// Largest `history` page (below [`MAX_PAGE`]).
pub const HISTORY_PAGE_MAX: u32 = 100;

/// A parsed, validated client request.
#[derive(Debug, PartialEq, Eq)]
pub struct Request<'a> {
    /// The client's reference (`id`), echoed in the `ack` or `error` that answers it.
    pub id: Option<Cow<'a, str>>,
    /// What the client asks for.
    pub msg: ClientMsg<'a>,
}

/// One client request, all required fields present and typed.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientMsg<'a> {
    /// Join a room; `since` asks for recovery of missed messages.
    Join {
        /// Room name.
        room: Cow<'a, str>,
        /// Position the client has seen, for recovery.
        since: Option<Since<'a>>,
        /// Room password (private rooms).
        password: Option<Cow<'a, str>>,
    },
    /// Leave a room.
    Leave {
        /// Room name.
        room: Cow<'a, str>,
    },
    /// Publish `text` and/or `data` to a room the connection has joined.
    Message {
        /// Room name.
        room: Cow<'a, str>,
        /// Message text (a message has `text`, `data`, or both).
        text: Option<Cow<'a, str>>,
        /// The `data` value exactly as the client wrote it (valid JSON, not `null`),
        /// spliced into the delivered frame unchanged.
        data: Option<Box<[u8]>>,
        /// Event name (1–64 bytes, no control characters), delivered as is.
        event: Option<Cow<'a, str>>,
        /// Deliver to current members only: no `seq`, no history, no replay.
        volatile: bool,
        /// The sending connection does not receive the message itself.
        skip_self: bool,
        /// A retry with the same key (same room, same user) within the window is not
        /// sequenced again and gets the first answer.
        idempotency_key: Option<Cow<'a, str>>,
    },
    /// List the users present in a room: a page of at most `limit` names after `after`.
    Presence {
        /// Room name.
        room: Cow<'a, str>,
        /// Return names sorted after this one (paging cursor).
        after: Option<Cow<'a, str>>,
        /// Page size.
        limit: Option<u32>,
    },
    /// Create a room (private when a password is given) and join it.
    Create {
        /// Room name.
        room: Cow<'a, str>,
        /// Password making the room private.
        password: Option<Cow<'a, str>>,
    },
    /// Delete a room this user created: every member is told and removed.
    Delete {
        /// Room name.
        room: Cow<'a, str>,
    },
    /// Replace the connection's token before it expires.
    Refresh {
        /// The new JWT.
        token: Cow<'a, str>,
    },
    /// Fetch a page of a room's history, newest first, strictly before `before`.
    History {
        /// Room name.
        room: Cow<'a, str>,
        /// Only messages with `seq < before`; newest when absent.
        before: Option<u64>,
        /// Page size.
        limit: Option<u32>,
    },
}

/// A recovery position: the stream `epoch` (when known) and the last `seq` seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Since<'a> {
    /// Stream epoch from an earlier `joined`; `None` when the client sent a bare seq.
    pub epoch: Option<Cow<'a, str>>,
    /// Last sequence number the client received.
    pub seq: u64,
}

/// Parses one text message. `input` is modified (simd-json works in place);
/// `buffers` are the shard's reusable parser buffers.
pub fn parse<'a>(input: &'a mut [u8], buffers: &mut simd_json::Buffers) -> Result<Request<'a>, ClientError> {
    // `data` travels verbatim: copy its bytes before simd-json unescapes strings in place
    // (the parse below still validates them as part of the document).
    let data: Option<Box<[u8]>> =
        if raw::mentions(input, b"data") { raw::member(input, b"data").map(Box::from) } else { None };
    // Two steps so errors can be told apart: building the tape validates syntax
    // (`bad_json`); deserializing from it checks the shape (`invalid_field`).
    let mut de = simd_json::Deserializer::from_slice_with_buffers(input, buffers)
        .map_err(|e| json_error(ErrorCode::BadJson, &e))?;
    let raw = match Raw::deserialize(&mut de) {
        Ok(raw) => raw,
        Err(e) => {
            // A field of the wrong shape: still echo the request's `id` (the protocol
            // promises `ref` on every reply), read again from the same tape.
            let error = json_error(ErrorCode::InvalidField, &e);
            de.restart();
            let id = IdOnly::deserialize(&mut de).ok().and_then(|i| i.id).map(|r| r.0.into_owned());
            return Err(ClientError { reference: id, ..error });
        }
    };
    let id = raw.id.clone().map(|r| r.0);
    raw.validate(data)
        .map(|msg| Request { id: id.clone(), msg })
        .map_err(|e| ClientError { reference: id.map(Cow::into_owned), ..e })
}

/// Just the `id` of a request whose other fields did not deserialize.
#[derive(Deserialize)]
struct IdOnly<'a> {
    #[serde(borrow)]
    id: Option<Ref<'a>>,
}

/// Everything any request may carry, as it arrives (before [`parse`] validates it).
/// Unknown fields are ignored (forward compatibility). Public so `crates/wire/benches/hot_paths.rs`
/// compares JSON parsers on exactly this shape; its fields stay private.
#[derive(Deserialize)]
pub struct Raw<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    room: Option<Cow<'a, str>>,
    #[serde(borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow)]
    id: Option<Ref<'a>>,
    #[serde(borrow)]
    since: Option<Since<'a>>,
    #[serde(borrow)]
    password: Option<Cow<'a, str>>,
    #[serde(borrow)]
    after: Option<Cow<'a, str>>,
    #[serde(borrow)]
    token: Option<Cow<'a, str>>,
    before: Option<u64>,
    limit: Option<u32>,
    /// Only whether it is there: its bytes are taken verbatim before parsing (`null`
    /// reads as absent here and is refused in [`Raw::validate`]).
    data: Option<de::IgnoredAny>,
    #[serde(borrow)]
    event: Option<Cow<'a, str>>,
    volatile: Option<bool>,
    skip_self: Option<bool>,
    #[serde(borrow)]
    idempotency_key: Option<Cow<'a, str>>,
}

impl<'a> Raw<'a> {
    fn validate(self, data: Option<Box<[u8]>>) -> Result<ClientMsg<'a>, ClientError> {
        let kind = self.kind.ok_or_else(|| ClientError::new(ErrorCode::MissingField, "missing field `type`"))?;
        let room = self.room;
        let need_room = || room.clone().ok_or_else(|| missing("room"));
        let limit = match self.limit {
            Some(0) => return Err(ClientError::new(ErrorCode::InvalidField, "`limit` must be at least 1")),
            Some(n) if n > MAX_PAGE => {
                return Err(ClientError::new(ErrorCode::InvalidField, format!("`limit` must be at most {MAX_PAGE}")))
            }
            l => l,
        };
        Ok(match &*kind {
            "join" => ClientMsg::Join { room: need_room()?, since: self.since, password: self.password },
            "leave" => ClientMsg::Leave { room: need_room()? },
            "create" => ClientMsg::Create { room: need_room()?, password: self.password },
            "delete" => ClientMsg::Delete { room: need_room()? },
            "refresh" => ClientMsg::Refresh { token: self.token.ok_or_else(|| missing("token"))? },
            "message" => {
                let data = match (data, self.data.is_some()) {
                    (Some(d), true) => Some(d),
                    (None, false) => None,
                    // Found but read as absent: the value was `null`.
                    (Some(_), false) => return Err(invalid("`data` cannot be null")),
                    (None, true) => return Err(invalid("write the key `data` without escapes")),
                };
                if self.text.is_none() && data.is_none() {
                    return Err(missing("text` (or `data"));
                }
                if let Some(event) = &self.event {
                    super::validate_event(event)?;
                }
                if let Some(key) = &self.idempotency_key {
                    super::validate_idempotency_key(key)?;
                }
                ClientMsg::Message {
                    room: need_room()?,
                    text: self.text,
                    data,
                    event: self.event,
                    volatile: self.volatile.unwrap_or(false),
                    skip_self: self.skip_self.unwrap_or(false),
                    idempotency_key: self.idempotency_key,
                }
            }
            "presence" => ClientMsg::Presence { room: need_room()?, after: self.after, limit },
            "history" => ClientMsg::History { room: need_room()?, before: self.before, limit },
            other => {
                return Err(ClientError::new(
                    ErrorCode::UnknownType,
                    format!("unknown message type `{}`", other.chars().take(32).collect::<String>()),
                ))
            }
        })
    }
}

fn missing(field: &str) -> ClientError {
    ClientError::new(ErrorCode::MissingField, format!("missing field `{field}`"))
}

fn invalid(message: &str) -> ClientError {
    ClientError::new(ErrorCode::InvalidField, message)
}

fn json_error(code: ErrorCode, e: &simd_json::Error) -> ClientError {
    let mut message = e.to_string();
    message.truncate(200);
    ClientError::new(code, message)
}

/// The client's request reference: a string, or an integer kept as its decimal text.
#[derive(Clone)]
struct Ref<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Ref<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Ref<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an integer")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Ref(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Ref(Cow::Owned(v.to_owned())))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Ref(Cow::Owned(v.to_string())))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Ref(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_any(V)
    }
}

/// `since` is either a bare seq (matches any epoch, docs/PROTOCOL.md) or `{"epoch":"…","seq":n}`.
impl<'de: 'a, 'a> Deserialize<'de> for Since<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Since<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a sequence number or {\"epoch\":…,\"seq\":…}")
            }
            fn visit_u64<E: de::Error>(self, seq: u64) -> Result<Self::Value, E> {
                Ok(Since { epoch: None, seq })
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let (mut epoch, mut seq) = (None, None);
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    match &*key {
                        "epoch" => epoch = Some(map.next_value::<Cow<'de, str>>()?),
                        "seq" => seq = Some(map.next_value::<u64>()?),
                        _ => {
                            map.next_value::<de::IgnoredAny>()?;
                        }
                    }
                }
                let seq = seq.ok_or_else(|| de::Error::missing_field("since.seq"))?;
                Ok(Since { epoch, seq })
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Request<'static>, ClientError> {
        let buf: &'static mut [u8] = Box::leak(s.as_bytes().to_vec().into_boxed_slice());
        parse(buf, &mut simd_json::Buffers::default())
    }

    #[test]
    fn a_field_of_the_wrong_shape_still_echoes_the_id() {
        let e = p(r#"{"type":"message","room":["not","a","string"],"text":"x","id":"c-9"}"#).unwrap_err();
        assert_eq!((e.code, e.reference.as_deref()), (ErrorCode::InvalidField, Some("c-9")));
        let e = p(r#"{"id":17,"type":"join","room":"r","limit":"ten"}"#).unwrap_err();
        assert_eq!(e.reference.as_deref(), Some("17"));
        let e = p(r#"{"type":"join","room":5}"#).unwrap_err();
        assert_eq!(e.reference, None, "no id, nothing to echo");
        assert_eq!(p(r#"{"type":"join","#).unwrap_err().code, ErrorCode::BadJson);
    }

    #[test]
    fn parses_every_type() {
        assert_eq!(
            p(r#"{"type":"join","room":"lobby","since":{"epoch":"ab","seq":118},"x":[1]}"#).unwrap().msg,
            ClientMsg::Join {
                room: "lobby".into(),
                since: Some(Since { epoch: Some("ab".into()), seq: 118 }),
                password: None
            }
        );
        assert_eq!(
            p(r#"{"type":"join","room":"r","since":7}"#).unwrap().msg,
            ClientMsg::Join { room: "r".into(), since: Some(Since { epoch: None, seq: 7 }), password: None }
        );
        let r = p(r#"{"type":"message","room":"r","text":"h\"i\u00e9","id":42}"#).unwrap();
        assert_eq!(r.id.as_deref(), Some("42"));
        assert_eq!(
            r.msg,
            ClientMsg::Message {
                room: "r".into(),
                text: Some("h\"ié".into()),
                data: None,
                event: None,
                volatile: false,
                skip_self: false,
                idempotency_key: None
            }
        );
        assert!(matches!(p(r#"{"type":"leave","room":"r"}"#).unwrap().msg, ClientMsg::Leave { .. }));
        assert_eq!(
            p(r#"{"type":"create","room":"r","password":"pw"}"#).unwrap().msg,
            ClientMsg::Create { room: "r".into(), password: Some("pw".into()) }
        );
        assert!(matches!(p(r#"{"type":"delete","room":"r"}"#).unwrap().msg, ClientMsg::Delete { .. }));
        assert!(matches!(p(r#"{"type":"refresh","token":"t"}"#).unwrap().msg, ClientMsg::Refresh { .. }));
        assert_eq!(p(r#"{"type":"refresh"}"#).unwrap_err().code, ErrorCode::MissingField);
        assert!(matches!(
            p(r#"{"type":"presence","room":"r","limit":5}"#).unwrap().msg,
            ClientMsg::Presence { limit: Some(5), .. }
        ));
        assert!(matches!(
            p(r#"{"type":"history","room":"r","before":9}"#).unwrap().msg,
            ClientMsg::History { before: Some(9), .. }
        ));
    }

    #[test]
    fn errors_are_classified_and_keep_the_ref() {
        assert_eq!(p("{nope").unwrap_err().code, ErrorCode::BadJson);
        assert_eq!(p("").unwrap_err().code, ErrorCode::BadJson);
        assert_eq!(p("[1,2]").unwrap_err().code, ErrorCode::InvalidField);
        let e = p(r#"{"type":"dance","id":"r1"}"#).unwrap_err();
        assert_eq!((e.code, e.reference.as_deref()), (ErrorCode::UnknownType, Some("r1")));
        let e = p(r#"{"type":"message","room":"r","id":"r2"}"#).unwrap_err();
        assert_eq!((e.code, e.reference.as_deref()), (ErrorCode::MissingField, Some("r2")));
        assert!(e.message.contains("text"));
        assert_eq!(p(r#"{"room":"r"}"#).unwrap_err().code, ErrorCode::MissingField);
        assert_eq!(p(r#"{"type":"join","room":5}"#).unwrap_err().code, ErrorCode::InvalidField);
        assert_eq!(p(r#"{"type":"presence","room":"r","limit":0}"#).unwrap_err().code, ErrorCode::InvalidField);
        assert_eq!(p(r#"{"type":"join","room":"r","since":{"epoch":"x"}}"#).unwrap_err().code, ErrorCode::InvalidField);
    }

    /// A parsed message's (text, data, event, volatile, skip_self).
    type Parts = (Option<String>, Option<Vec<u8>>, Option<String>, bool, bool);

    fn message_parts(s: &str) -> Result<Parts, ClientError> {
        match p(s)?.msg {
            ClientMsg::Message { text, data, event, volatile, skip_self, .. } => {
                Ok((text.map(Cow::into_owned), data.map(Vec::from), event.map(Cow::into_owned), volatile, skip_self))
            }
            other => panic!("not a message: {other:?}"),
        }
    }

    #[test]
    fn data_is_taken_verbatim() {
        let raw = r#"{"n":12345678901234567890123, "s":"caf\u00e9 \"q\"", "a":[1.50,true,null]}"#;
        let (text, data, ..) =
            message_parts(&format!(r#"{{"type":"message","room":"r","data": {raw} ,"id":1}}"#)).unwrap();
        assert_eq!((text, data.as_deref()), (None, Some(raw.as_bytes())));
        for value in [r#""just a string""#, "-0.5e10", "[]", "{}", "false"] {
            let (_, data, ..) = message_parts(&format!(r#"{{"type":"message","room":"r","data":{value}}}"#)).unwrap();
            assert_eq!(data.as_deref(), Some(value.as_bytes()));
        }
        let (text, data, event, volatile, skip_self) = message_parts(
            r#"{"type":"message","room":"r","text":"t","data":[1],"event":"score","volatile":true,"skip_self":true}"#,
        )
        .unwrap();
        assert_eq!(
            (text.as_deref(), data.as_deref(), event.as_deref(), volatile, skip_self),
            (Some("t"), Some(&b"[1]"[..]), Some("score"), true, true)
        );
    }

    #[test]
    fn bad_payload_fields_are_named() {
        let code = |s: &str| message_parts(s).unwrap_err();
        let e = code(r#"{"type":"message","room":"r","id":"x"}"#);
        assert_eq!((e.code, e.reference.as_deref()), (ErrorCode::MissingField, Some("x")));
        assert!(e.message.contains("data"), "{}", e.message);
        for (bad, field) in [
            (r#"{"type":"message","room":"r","data":null}"#, "data"),
            (r#"{"type":"message","room":"r","d\u0061ta":1}"#, "data"),
            (r#"{"type":"message","room":"r","text":"t","event":""}"#, "event"),
            (r#"{"type":"message","room":"r","text":"t","event":"a\u0007b"}"#, "event"),
            (r#"{"type":"message","room":"r","text":"t","event":7}"#, ""),
            (r#"{"type":"message","room":"r","text":"t","volatile":"yes"}"#, ""),
            (r#"{"type":"message","room":"r","text":"t","skip_self":1}"#, ""),
            (r#"{"type":"message","room":"r","text":"t","idempotency_key":""}"#, "idempotency_key"),
            (r#"{"type":"message","room":"r","text":"t","idempotency_key":7}"#, ""),
        ] {
            let e = code(bad);
            assert_eq!(e.code, ErrorCode::InvalidField, "{bad}");
            assert!(e.message.contains(field), "{bad}: {}", e.message);
        }
        let long = "e".repeat(65);
        assert_eq!(
            code(&format!(r#"{{"type":"message","room":"r","text":"t","event":"{long}"}}"#)).code,
            ErrorCode::InvalidField
        );
        assert_eq!(p(r#"{"type":"message","room":"r","data":{"a":}}"#).unwrap_err().code, ErrorCode::BadJson);
        let long = "k".repeat(129);
        let e = code(&format!(r#"{{"type":"message","room":"r","text":"t","idempotency_key":"{long}","id":"k"}}"#));
        assert_eq!((e.code, e.reference.as_deref()), (ErrorCode::InvalidField, Some("k")));
    }

    #[test]
    fn an_idempotency_key_is_read_up_to_its_limit() {
        let key = "k".repeat(128);
        let r = p(&format!(r#"{{"type":"message","room":"r","text":"t","idempotency_key":"{key}"}}"#)).unwrap();
        assert!(matches!(r.msg, ClientMsg::Message { idempotency_key: Some(k), .. } if k == key));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn no_input_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
                let mut b = bytes;
                let _ = parse(&mut b, &mut simd_json::Buffers::default());
            }

            #[test]
            fn any_data_value_arrives_byte_for_byte(
                n in any::<i64>(),
                s in ".{0,16}",
                big in "[1-9][0-9]{20,30}",
                pretty in any::<bool>(),
            ) {
                let value = serde_json::json!({"n": n, "s": s, "list": [s.clone(), n]});
                let value = if pretty { serde_json::to_string_pretty(&value).unwrap() } else { value.to_string() };
                let value = format!("[{value}, {big}]");
                let msg = format!(r#"{{"type":"message","room":"r","data":{value},"text":{}}}"#, serde_json::Value::from(s.clone()));
                let (text, data, ..) = message_parts(&msg).unwrap();
                prop_assert_eq!(text, Some(s));
                prop_assert_eq!(data, Some(value.into_bytes()));
            }

            #[test]
            fn json_shaped_input_never_panics(
                kind in prop_oneof![Just("join".to_owned()), Just("leave".to_owned()), Just("create".to_owned()), Just("refresh".to_owned()), Just("message".to_owned()), Just("presence".to_owned()), Just("history".to_owned()), ".{0,8}"],
                room in proptest::option::of(".{0,40}"),
                text in proptest::option::of(".{0,40}"),
                limit in proptest::option::of(any::<i64>()),
                since in proptest::option::of(any::<u64>()),
            ) {
                let mut v = serde_json::json!({"type": kind});
                if let Some(r) = room { v["room"] = r.into(); }
                if let Some(t) = text { v["text"] = t.into(); }
                if let Some(l) = limit { v["limit"] = l.into(); }
                if let Some(s) = since { v["since"] = s.into(); }
                let mut b = serde_json::to_vec(&v).unwrap();
                let _ = parse(&mut b, &mut simd_json::Buffers::default());
            }
        }
    }
}
