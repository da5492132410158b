//! What corecast sends the application backend and what it accepts back: the proxy
//! requests and answers (connect, subscribe, publish) and the webhook batch. Pure
//! serde types and decisions, unit-tested without a runtime; docs/BACKEND.md is the
//! operator-facing contract.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The largest proxy answer read; a longer body is a bad answer (fail closed).
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// `POST --proxy-connect-url`: the facts of one WebSocket upgrade.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConnectRequest {
    /// Wall-clock milliseconds when the request was made (signed with the body).
    pub ts: u64,
    /// The client's address (no port).
    pub remote_addr: String,
    /// The request's query string, without `?` (may be empty).
    pub query: String,
    /// The headers listed in `--proxy-connect-headers` that the request carried, names
    /// lowercased.
    pub headers: BTreeMap<String, String>,
    /// The request's cookies, with `--proxy-connect-cookies` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cookies: Option<BTreeMap<String, String>>,
    /// The claims of a valid JWT the client presented (`None`: no token or not valid).
    pub claims: Option<ConnectClaims>,
    /// Why a presented token was not accepted (its claims are then `None`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_error: Option<String>,
    /// The guest name the client asked for (`?name=`), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A valid JWT's claims, as passed to the connect proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConnectClaims {
    /// `sub`.
    pub sub: String,
    /// `name`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `exp`.
    pub exp: u64,
    /// `rooms`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rooms: Option<Vec<String>>,
}

/// The backend's answer to a connect request.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ConnectAnswer {
    /// The upgrade proceeds as this user.
    Allow {
        /// User id (required, 1 to 128 bytes).
        user: String,
        /// Display name.
        #[serde(default)]
        name: Option<String>,
        /// Rooms this connection may join (`*` wildcards); absent: any.
        #[serde(default)]
        rooms: Option<Vec<String>>,
        /// When the connection expires (seconds since the Unix epoch), like a token's `exp`.
        #[serde(default)]
        expires_at: Option<u64>,
    },
    /// The upgrade is refused with this HTTP status and error code.
    Deny {
        /// HTTP status (400-599; anything else is answered 403).
        #[serde(default)]
        status: Option<u16>,
        /// Error code in the JSON body.
        #[serde(default)]
        code: Option<String>,
        /// Human-readable reason.
        #[serde(default)]
        message: Option<String>,
    },
}

/// `POST --proxy-subscribe-url`: a client asks to join (or create) a public room.
#[derive(Debug, Clone, Serialize)]
pub struct SubscribeRequest<'a> {
    /// Wall-clock milliseconds when the request was made.
    pub ts: u64,
    /// The connection's user.
    pub user: &'a str,
    /// The room.
    pub room: &'a str,
    /// The connection's id, as in its `welcome`.
    pub conn: &'a str,
    /// `join` or `create`.
    pub action: &'static str,
}

/// The backend's answer to a subscribe or publish request.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum RoomAnswer {
    /// Proceed unchanged.
    Allow,
    /// Publish only: proceed with this content instead of the client's.
    Replace {
        /// The new `text` (absent: the client's is kept).
        #[serde(default)]
        text: Option<String>,
        /// The new `data` (any JSON but `null`; absent: the client's is kept).
        #[serde(default)]
        data: Option<serde_json::Value>,
    },
    /// Refused: the client gets `forbidden` with `message`.
    Deny {
        /// Human-readable reason shown to the client.
        #[serde(default)]
        message: Option<String>,
    },
}

/// `POST --proxy-publish-url`: a client's `message`, before it is sequenced.
#[derive(Debug, Clone, Serialize)]
pub struct PublishRequest<'a> {
    /// Wall-clock milliseconds when the request was made.
    pub ts: u64,
    /// The sender.
    pub user: &'a str,
    /// The room.
    pub room: &'a str,
    /// The sender's connection id, as in its `welcome`.
    pub conn: &'a str,
    /// The message's `text`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<&'a str>,
    /// The message's `data`, as the client wrote it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<&'a serde_json::value::RawValue>,
    /// The message's `event` name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<&'a str>,
}

/// Why a proxy call produced no answer. Connect and subscribe fail closed on any of
/// these; publish answers the client `unavailable`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// No answer within `--proxy-timeout`.
    #[error("the backend did not answer in time")]
    Timeout,
    /// The backend could not be reached (connection refused, reset, DNS).
    #[error("the backend is unreachable")]
    Unreachable,
    /// The TLS handshake with an `https://` backend failed (e.g. its certificate is not
    /// signed by a trusted CA: see `--backend-ca-file`).
    #[error("TLS with the backend failed: {0}")]
    Tls(String),
    /// The backend answered with a non-2xx status.
    #[error("the backend answered HTTP {0}")]
    Status(u16),
    /// The answer was not valid JSON of the expected shape, or too long.
    #[error("the backend's answer is not valid: {0}")]
    BadAnswer(String),
    /// This shard already has `--proxy-max-in-flight` calls waiting.
    #[error("too many backend calls in flight")]
    Busy,
    /// The backend thread is gone (shutting down).
    #[error("the backend client is stopped")]
    Stopped,
}

/// Parses an answer body: JSON of type `T`, at most [`MAX_ANSWER_BYTES`].
pub fn parse_answer<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, CallError> {
    if body.len() > MAX_ANSWER_BYTES {
        return Err(CallError::BadAnswer(format!("longer than {MAX_ANSWER_BYTES} bytes")));
    }
    serde_json::from_slice(body).map_err(|e| CallError::BadAnswer(e.to_string()))
}

/// A connect denial as an HTTP answer: the backend's status when it is 400-599 (else
/// 403), its code (else `connect_denied`) and message.
pub fn denial(status: Option<u16>, code: Option<&str>, message: Option<&str>) -> (u16, String, String) {
    let status = status.filter(|s| (400..600).contains(s)).unwrap_or(403);
    let code = code.filter(|c| !c.is_empty() && c.len() <= 64).unwrap_or("connect_denied");
    let message = message.unwrap_or("the application backend refused this connection");
    (status, code.to_owned(), message.to_owned())
}

/// Whether another proxy call may start on a shard that has `in_flight` waiting, with
/// at most `max` allowed (over it the request is refused with `unavailable`, counted).
pub fn may_call(in_flight: usize, max: usize) -> bool {
    in_flight < max
}

/// Whether a user id from the connect proxy is acceptable: 1 to 128 bytes, no control
/// characters (it names the user's personal room and appears in every frame they send).
pub fn valid_user(user: &str) -> bool {
    !user.is_empty() && user.len() <= 128 && !user.chars().any(char::is_control)
}

/// Cookies of a `Cookie` header value (`a=1; b=2`), names and values trimmed; pairs
/// without `=` are skipped, a repeated name keeps its first value.
pub fn parse_cookies(header: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for pair in header.split(';') {
        if let Some((k, v)) = pair.split_once('=') {
            let k = k.trim();
            if !k.is_empty() {
                out.entry(k.to_owned()).or_insert_with(|| v.trim().to_owned());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_answers_parse_allow_and_deny() {
        let a: ConnectAnswer =
            parse_answer(br#"{"result":"allow","user":"u1","name":"Ann","rooms":["team-*"],"expires_at":99}"#).unwrap();
        assert_eq!(
            a,
            ConnectAnswer::Allow {
                user: "u1".into(),
                name: Some("Ann".into()),
                rooms: Some(vec!["team-*".into()]),
                expires_at: Some(99)
            }
        );
        let d: ConnectAnswer = parse_answer(br#"{"result":"deny","status":401,"code":"nope"}"#).unwrap();
        assert_eq!(d, ConnectAnswer::Deny { status: Some(401), code: Some("nope".into()), message: None });
        assert!(matches!(parse_answer::<ConnectAnswer>(br#"{"result":"allow"}"#), Err(CallError::BadAnswer(_))));
        assert!(matches!(parse_answer::<ConnectAnswer>(b"not json"), Err(CallError::BadAnswer(_))));
        assert!(matches!(parse_answer::<ConnectAnswer>(br#"{"result":"maybe"}"#), Err(CallError::BadAnswer(_))));
    }

    #[test]
    fn an_answer_over_the_size_limit_is_bad() {
        let long = vec![b' '; MAX_ANSWER_BYTES + 1];
        assert!(matches!(parse_answer::<RoomAnswer>(&long), Err(CallError::BadAnswer(_))));
    }

    #[test]
    fn room_answers_parse_allow_replace_deny() {
        assert!(matches!(parse_answer::<RoomAnswer>(br#"{"result":"allow"}"#).unwrap(), RoomAnswer::Allow));
        let r = parse_answer::<RoomAnswer>(br#"{"result":"replace","text":"***","data":{"a":[1,2]}}"#).unwrap();
        match r {
            RoomAnswer::Replace { text, data } => {
                assert_eq!(text.as_deref(), Some("***"));
                assert_eq!(data.map(|d| d.to_string()).as_deref(), Some(r#"{"a":[1,2]}"#));
            }
            other => panic!("{other:?}"),
        }
        let d = parse_answer::<RoomAnswer>(br#"{"result":"deny","message":"no"}"#).unwrap();
        assert!(matches!(d, RoomAnswer::Deny { message: Some(m) } if m == "no"));
    }

    #[test]
    fn denials_keep_error_statuses_only() {
        assert_eq!(denial(Some(401), Some("x"), Some("m")), (401, "x".into(), "m".into()));
        assert_eq!(denial(Some(200), None, None).0, 403, "a success status cannot deny");
        assert_eq!(denial(Some(302), None, None).0, 403);
        assert_eq!(denial(None, Some(""), None).1, "connect_denied");
        assert_eq!(denial(None, Some(&"c".repeat(65)), None).1, "connect_denied", "over-long codes are replaced");
    }

    #[test]
    fn in_flight_bound_is_exclusive() {
        assert!(may_call(0, 1));
        assert!(!may_call(1, 1));
        assert!(!may_call(0, 0));
    }

    #[test]
    fn user_ids_are_bounded_and_printable() {
        assert!(valid_user("u-1"));
        assert!(!valid_user(""));
        assert!(!valid_user(&"u".repeat(129)));
        assert!(!valid_user("a\nb"));
    }

    #[test]
    fn cookies_parse_leniently() {
        let c = parse_cookies("sid=abc; theme = dark;broken; sid=second; =x");
        assert_eq!(c.get("sid").map(String::as_str), Some("abc"));
        assert_eq!(c.get("theme").map(String::as_str), Some("dark"));
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn requests_serialize_without_absent_fields() {
        let p = PublishRequest { ts: 1, user: "u", room: "r", conn: "c", text: Some("hi"), data: None, event: None };
        assert_eq!(serde_json::to_string(&p).unwrap(), r#"{"ts":1,"user":"u","room":"r","conn":"c","text":"hi"}"#);
        let c = ConnectRequest { remote_addr: "1.2.3.4".into(), ..ConnectRequest::default() };
        let v: serde_json::Value = serde_json::to_value(&c).unwrap();
        assert_eq!(v["claims"], serde_json::Value::Null, "claims are always present, null without a token");
        assert!(v.get("cookies").is_none());
    }
}
