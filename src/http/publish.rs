//! `POST /api/publish`: authentication and the request body, validated into a
//! [`Target`]. Pure; the shard does the sending.

use subtle::ConstantTimeEq;

use crate::protocol;

/// Most users one publish may address.
pub const MAX_USERS: usize = 1000;

/// Whom a publish goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Every member of one room.
    Room(String),
    /// Every connection of these users (through their personal rooms).
    Users(Vec<String>),
    /// Every connection on the server.
    Everyone,
}

/// A validated publish request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishRequest {
    /// Recipients.
    pub target: Target,
    /// Sender name shown to receivers (`"server"` unless given).
    pub user: String,
    /// Message text (a publish has `text`, `data`, or both).
    pub text: Option<String>,
    /// The `data` value exactly as written in the request body (validated JSON).
    pub data: Option<Vec<u8>>,
    /// Event name.
    pub event: Option<String>,
    /// The `tags` object exactly as written (validated: string values only).
    pub tags: Option<Vec<u8>>,
    /// Not sequenced, not stored: delivered to current members only.
    pub volatile: bool,
    /// A retry with the same key within the window is answered with the first outcome.
    pub idempotency_key: Option<String>,
}

/// Most entries in `tags`.
pub const MAX_TAGS: usize = 32;

/// Longest `tags` key, in bytes.
pub const MAX_KEY_LEN: usize = 128;

/// Longest `tags` value, in bytes.
pub const MAX_TAG_VALUE: usize = 1024;

/// Why a publish was refused; each maps to a status and a JSON error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// No `--api-key` configured: the endpoint is off.
    #[error("server-side publish is disabled: start corecast with --api-key")]
    Disabled,
    /// Missing or wrong `Authorization: Bearer <key>`.
    #[error("missing or invalid API key (Authorization: Bearer <key>)")]
    Unauthorized,
    /// The body is not the expected JSON.
    #[error("{0}")]
    BadRequest(String),
    /// `data` is larger than `--max-data-bytes`.
    #[error("{0}")]
    DataTooLarge(String),
}

impl PublishError {
    /// HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            PublishError::Disabled => 403,
            PublishError::Unauthorized => 401,
            PublishError::BadRequest(_) | PublishError::DataTooLarge(_) => 400,
        }
    }

    /// JSON error code.
    pub fn code(&self) -> &'static str {
        match self {
            PublishError::Disabled => "disabled",
            PublishError::Unauthorized => "unauthorized",
            PublishError::BadRequest(_) => "bad_request",
            PublishError::DataTooLarge(_) => "data_too_large",
        }
    }
}

/// Checks the `Authorization` header against the configured key, in constant time.
pub fn authorize(configured: Option<&str>, authorization: Option<&[u8]>) -> Result<(), PublishError> {
    let key = configured.ok_or(PublishError::Disabled)?;
    let given = authorization.and_then(|h| h.strip_prefix(b"Bearer ")).map(<[u8]>::trim_ascii);
    match given {
        Some(g) if bool::from(g.ct_eq(key.as_bytes())) => Ok(()),
        _ => Err(PublishError::Unauthorized),
    }
}

/// The publish body's fields, each checked for its type with an error naming it.
struct Body {
    room: Option<String>,
    users: Option<Vec<String>>,
    broadcast: bool,
    text: Option<String>,
    user: Option<String>,
    /// Whether `data` is there and not `null` (its bytes are taken as written).
    data: bool,
    event: Option<String>,
    tags: Option<serde_json::Map<String, serde_json::Value>>,
    volatile: bool,
    idempotency_key: Option<String>,
}

impl Body {
    fn read(body: &[u8]) -> Result<Body, PublishError> {
        let bad = |m: String| PublishError::BadRequest(m);
        let mut map: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(body).map_err(|e| bad(format!("invalid JSON body: {e}")))?;
        let mut take = |k: &str| map.remove(k).filter(|v| !v.is_null());
        let string = |k: &str, v: Option<serde_json::Value>| match v {
            None => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(bad(format!("`{k}` must be a string"))),
        };
        let flag = |k: &str, v: Option<serde_json::Value>| match v {
            None => Ok(false),
            Some(serde_json::Value::Bool(b)) => Ok(b),
            Some(_) => Err(bad(format!("`{k}` must be true or false"))),
        };
        let users = match take("users") {
            None => None,
            Some(serde_json::Value::Array(a)) => Some(
                a.into_iter()
                    .map(|u| match u {
                        serde_json::Value::String(s) => Ok(s),
                        _ => Err(bad("`users` must be a list of strings".to_owned())),
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            Some(_) => return Err(bad("`users` must be a list of strings".to_owned())),
        };
        let tags = match take("tags") {
            None => None,
            Some(serde_json::Value::Object(m)) => Some(m),
            Some(_) => return Err(bad("`tags` must be an object of strings".to_owned())),
        };
        Ok(Body {
            room: string("room", take("room"))?,
            users,
            broadcast: flag("broadcast", take("broadcast"))?,
            text: string("text", take("text"))?,
            user: string("user", take("user"))?,
            data: take("data").is_some(),
            event: string("event", take("event"))?,
            tags,
            volatile: flag("volatile", take("volatile"))?,
            idempotency_key: string("idempotency_key", take("idempotency_key"))?,
        })
    }
}

/// Parses and validates the JSON body; `max_text` bounds the text and `max_data` the
/// `data` value, in bytes. Every refusal names the field.
pub fn parse(body: &[u8], max_text: usize, max_data: usize) -> Result<PublishRequest, PublishError> {
    let bad = |m: &str| PublishError::BadRequest(m.to_owned());
    // serde_json (not simd-json, which unescapes in place): the body stays as received,
    // so `data` and `tags` can be taken verbatim from it.
    let b = Body::read(body)?;
    let data = match (b.data, protocol::raw::member(body, b"data")) {
        (true, Some(d)) => Some(d.to_vec()),
        (false, None) => None,
        (false, Some(_)) => return Err(bad("`data` cannot be null")),
        (true, None) => return Err(bad("write the key `data` without escapes")),
    };
    if let Some(d) = &data {
        if d.len() > max_data {
            return Err(PublishError::DataTooLarge(format!("`data` is longer than {max_data} bytes")));
        }
    }
    if b.text.is_none() && data.is_none() {
        return Err(bad("missing field `text` (or `data`)"));
    }
    if let Some(text) = &b.text {
        if text.len() > max_text {
            return Err(PublishError::BadRequest(format!("`text` is longer than {max_text} bytes")));
        }
    }
    if let Some(event) = &b.event {
        protocol::validate_event(event).map_err(|e| PublishError::BadRequest(e.message))?;
    }
    let tags = match &b.tags {
        None => None,
        Some(map) => {
            check_tags(map)?;
            protocol::raw::member(body, b"tags").map(<[u8]>::to_vec)
        }
    };
    if b.tags.is_some() && tags.is_none() {
        return Err(bad("write the key `tags` without escapes"));
    }
    if let Some(key) = &b.idempotency_key {
        protocol::validate_idempotency_key(key).map_err(|e| PublishError::BadRequest(e.message))?;
    }
    let user = b.user.unwrap_or_else(|| "server".to_owned());
    if !protocol::validate_user_name(&user) {
        return Err(bad("`user` must be 1 to 64 characters without control characters, `@` or `:`"));
    }
    let target = match (b.room, b.users, b.broadcast) {
        (Some(room), None, false) => {
            protocol::validate_room(&room).map_err(|e| PublishError::BadRequest(format!("`room`: {}", e.message)))?;
            Target::Room(room)
        }
        (None, Some(users), false) => {
            if users.is_empty() || users.len() > MAX_USERS {
                return Err(PublishError::BadRequest(format!("`users` must list 1 to {MAX_USERS} users")));
            }
            if users.iter().any(|u| u.is_empty() || u.len() > 256) {
                return Err(bad("user ids in `users` are 1 to 256 bytes"));
            }
            Target::Users(users)
        }
        (None, None, true) => Target::Everyone,
        _ => return Err(bad("give exactly one of `room`, `users` or `\"broadcast\": true`")),
    };
    Ok(PublishRequest {
        target,
        user,
        text: b.text,
        data,
        event: b.event,
        tags,
        volatile: b.volatile,
        idempotency_key: b.idempotency_key,
    })
}

/// `tags`: at most [`MAX_TAGS`] string values, keys 1 to [`MAX_KEY_LEN`] bytes, values
/// at most [`MAX_TAG_VALUE`] bytes.
fn check_tags(map: &serde_json::Map<String, serde_json::Value>) -> Result<(), PublishError> {
    let bad = |m: String| Err(PublishError::BadRequest(m));
    if map.len() > MAX_TAGS {
        return bad(format!("`tags` may hold at most {MAX_TAGS} entries"));
    }
    for (k, v) in map {
        if k.is_empty() || k.len() > MAX_KEY_LEN {
            return bad(format!("`tags` keys are 1 to {MAX_KEY_LEN} bytes"));
        }
        match v.as_str() {
            Some(v) if v.len() <= MAX_TAG_VALUE => {}
            Some(_) => return bad(format!("`tags` values are at most {MAX_TAG_VALUE} bytes")),
            None => return bad(format!("`tags.{}` must be a string", k.chars().take(32).collect::<String>())),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorization_needs_the_exact_bearer_key() {
        let key = Some("0123456789abcdef");
        assert_eq!(authorize(None, Some(b"Bearer x")), Err(PublishError::Disabled));
        assert_eq!(authorize(key, None), Err(PublishError::Unauthorized));
        assert_eq!(authorize(key, Some(b"Bearer 0123456789abcdeX")), Err(PublishError::Unauthorized));
        assert_eq!(authorize(key, Some(b"Basic 0123456789abcdef")), Err(PublishError::Unauthorized));
        assert_eq!(authorize(key, Some(b"Bearer 0123456789abcde")), Err(PublishError::Unauthorized));
        assert_eq!(authorize(key, Some(b"Bearer 0123456789abcdef")), Ok(()));
    }

    #[test]
    fn the_three_targets_and_their_mistakes() {
        let p = |s: &str| parse(s.as_bytes(), 100, 100);
        assert_eq!(p(r#"{"room":"lobby","text":"hi"}"#).unwrap().target, Target::Room("lobby".into()));
        let r = p(r#"{"users":["a","b"],"text":"hi","user":"bot"}"#).unwrap();
        assert_eq!((r.target, r.user.as_str()), (Target::Users(vec!["a".into(), "b".into()]), "bot"));
        assert_eq!(p(r#"{"broadcast":true,"text":"hi"}"#).unwrap().target, Target::Everyone);
        for bad in [
            r#"{"text":"hi"}"#,
            r#"{"room":"a","broadcast":true,"text":"hi"}"#,
            r#"{"room":"a"}"#,
            r#"{"room":"@user:x","text":"hi"}"#,
            r#"{"users":[],"text":"hi"}"#,
            r#"{"room":"a","text":"hi","user":"a:b"}"#,
            "not json",
        ] {
            assert!(matches!(p(bad), Err(PublishError::BadRequest(_))), "{bad}");
        }
        assert!(matches!(parse(br#"{"room":"a","text":"0123456789"}"#, 5, 5), Err(PublishError::BadRequest(_))));
    }

    #[test]
    fn payload_fields_are_taken_verbatim_and_checked() {
        let body = br#"{"room":"scores","data": {"home":2,"big":12345678901234567890123,"s":"\u00e9"} ,"event":"goal","tags":{"league":"nba"},"volatile":true,"idempotency_key":"k1"}"#;
        let r = parse(body, 100, 1000).unwrap();
        assert_eq!(r.text, None);
        assert_eq!(r.data.as_deref(), Some(&br#"{"home":2,"big":12345678901234567890123,"s":"\u00e9"}"#[..]));
        assert_eq!(r.tags.as_deref(), Some(&br#"{"league":"nba"}"#[..]));
        assert_eq!((r.event.as_deref(), r.volatile, r.idempotency_key.as_deref()), (Some("goal"), true, Some("k1")));
        let p = |s: &str| parse(s.as_bytes(), 100, 10);
        assert_eq!(p(r#"{"room":"a","data":[1,2,3,4,5,6,7]}"#).unwrap_err().code(), "data_too_large");
        for (bad, field) in [
            (r#"{"room":"a"}"#, "text"),
            (r#"{"room":"a","data":null}"#, "data"),
            (r#"{"room":"a","data":1,"event":""}"#, "event"),
            (r#"{"room":"a","data":1,"tags":{"k":1}}"#, "tags.k"),
            (r#"{"room":"a","data":1,"tags":[1]}"#, "tags"),
            (r#"{"room":"a","data":1,"idempotency_key":""}"#, "idempotency_key"),
            (r#"{"room":"a","data":1,"volatile":"yes"}"#, "volatile"),
            (r#"{"room":"","data":1}"#, "room"),
        ] {
            let e = p(bad).unwrap_err();
            assert_eq!(e.code(), "bad_request", "{bad}");
            assert!(e.to_string().contains(field), "{bad}: {e}");
        }
    }
}
