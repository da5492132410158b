//! `POST /api/publish`: authentication and the request body, validated into a
//! [`Target`]. Pure; the shard does the sending.

use serde::Deserialize;
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
    /// Message text.
    pub text: String,
}

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
}

impl PublishError {
    /// HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            PublishError::Disabled => 403,
            PublishError::Unauthorized => 401,
            PublishError::BadRequest(_) => 400,
        }
    }

    /// JSON error code.
    pub fn code(&self) -> &'static str {
        match self {
            PublishError::Disabled => "disabled",
            PublishError::Unauthorized => "unauthorized",
            PublishError::BadRequest(_) => "bad_request",
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

#[derive(Deserialize)]
struct Body {
    room: Option<String>,
    users: Option<Vec<String>>,
    #[serde(default)]
    broadcast: bool,
    text: Option<String>,
    user: Option<String>,
}

/// Parses and validates the JSON body; `max_text` bounds the text in bytes.
pub fn parse(body: &[u8], max_text: usize) -> Result<PublishRequest, PublishError> {
    let bad = |m: &str| PublishError::BadRequest(m.to_owned());
    let mut buf = body.to_vec();
    let b: Body = simd_json::serde::from_slice(&mut buf)
        .map_err(|e| PublishError::BadRequest(format!("invalid JSON body: {e}")))?;
    let text = b.text.ok_or_else(|| bad("missing field `text`"))?;
    if text.len() > max_text {
        return Err(PublishError::BadRequest(format!("`text` is longer than {max_text} bytes")));
    }
    let user = b.user.unwrap_or_else(|| "server".to_owned());
    if !protocol::validate_user_name(&user) {
        return Err(bad("`user` must be 1 to 64 characters without control characters, `@` or `:`"));
    }
    let target = match (b.room, b.users, b.broadcast) {
        (Some(room), None, false) => {
            protocol::validate_room(&room).map_err(|e| PublishError::BadRequest(e.message))?;
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
    Ok(PublishRequest { target, user, text })
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
        let p = |s: &str| parse(s.as_bytes(), 100);
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
        assert!(matches!(parse(br#"{"room":"a","text":"0123456789"}"#, 5), Err(PublishError::BadRequest(_))));
    }
}
