//! The server API's operator commands (`POST /api/disconnect`, `/api/subscribe`,
//! `/api/unsubscribe`, `/api/history/remove`, `/api/batch`): their JSON bodies,
//! validated into [`AdminOp`]s. Pure; the shard carries them out. Every refusal names the
//! field and nothing has been sent anywhere yet.

use serde_json::{Map, Value};

use super::publish::PublishError;
use crate::protocol;
use crate::room::request::AdminOp;

/// Longest close reason: a close frame's payload is at most 125 bytes, 2 of them the code.
pub const MAX_REASON: usize = 123;

/// Longest ban, in seconds (30 days).
pub const MAX_BAN_SECS: u64 = 30 * 24 * 3600;

/// Most commands in one `POST /api/batch`.
pub const MAX_BATCH: usize = 100;

/// The commands `POST /api/batch` runs, by their `method` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// As `POST /api/publish`.
    Publish,
    /// As `POST /api/disconnect`.
    Disconnect,
    /// As `POST /api/subscribe`.
    Subscribe,
    /// As `POST /api/unsubscribe`.
    Unsubscribe,
    /// As `POST /api/history/remove`.
    HistoryRemove,
}

impl Method {
    /// The method of a batch command's `method` name.
    pub fn named(name: &str) -> Option<Method> {
        Some(match name {
            "publish" => Method::Publish,
            "disconnect" => Method::Disconnect,
            "subscribe" => Method::Subscribe,
            "unsubscribe" => Method::Unsubscribe,
            "history_remove" => Method::HistoryRemove,
            _ => return None,
        })
    }
}

/// One command of a batch: its method (`None`: unknown or not a string) and its
/// `params` exactly as written.
pub type Command = (Option<Method>, Vec<u8>);

fn bad(m: impl Into<String>) -> PublishError {
    PublishError::BadRequest(m.into())
}

fn object(body: &[u8]) -> Result<Map<String, Value>, PublishError> {
    serde_json::from_slice(body).map_err(|e| bad(format!("invalid JSON body: {e}")))
}

fn string(map: &Map<String, Value>, key: &str) -> Result<Option<String>, PublishError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(bad(format!("`{key}` must be a string"))),
    }
}

fn user(map: &Map<String, Value>) -> Result<Option<String>, PublishError> {
    let user = string(map, "user")?;
    if user.as_ref().is_some_and(|u| u.is_empty() || u.len() > 256) {
        return Err(bad("`user` must be 1 to 256 bytes"));
    }
    Ok(user)
}

fn room(map: &Map<String, Value>) -> Result<String, PublishError> {
    let room = string(map, "room")?.ok_or_else(|| bad("missing field `room`"))?;
    protocol::validate_room(&room).map_err(|e| bad(format!("`room`: {}", e.message)))?;
    Ok(room)
}

fn integer(
    map: &Map<String, Value>,
    key: &str,
    range: std::ops::RangeInclusive<u64>,
) -> Result<Option<u64>, PublishError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64().filter(|n| range.contains(n)) {
            Some(n) => Ok(Some(n)),
            None => Err(bad(format!("`{key}` must be an integer from {} to {}", range.start(), range.end()))),
        },
    }
}

/// `POST /api/disconnect`: `{"user": …}` or `{"conn": …}`, optional `code` (4000–4999,
/// default 4000), `reason` (at most 123 bytes), `ban_secs` (with `user` only).
pub fn disconnect(body: &[u8]) -> Result<AdminOp, PublishError> {
    let map = object(body)?;
    let user = user(&map)?;
    let conn = string(&map, "conn")?;
    if user.is_some() == conn.is_some() {
        return Err(bad("give exactly one of `user` or `conn`"));
    }
    let code = integer(&map, "code", 4000..=4999)?.unwrap_or(4000) as u16;
    let reason = string(&map, "reason")?.unwrap_or_default();
    if reason.len() > MAX_REASON {
        return Err(bad(format!("`reason` is longer than {MAX_REASON} bytes")));
    }
    let ban_secs = integer(&map, "ban_secs", 0..=MAX_BAN_SECS)?.unwrap_or(0);
    if ban_secs > 0 && user.is_none() {
        return Err(bad("`ban_secs` needs `user`: a ban applies to a user id"));
    }
    Ok(AdminOp::Disconnect { user, conn, code, reason, ban_secs })
}

/// `POST /api/subscribe` and `/api/unsubscribe`: `{"user": …, "room": …}`.
pub fn membership(body: &[u8], subscribe: bool) -> Result<AdminOp, PublishError> {
    let map = object(body)?;
    let user = user(&map)?.ok_or_else(|| bad("missing field `user`"))?;
    let room = room(&map)?;
    Ok(if subscribe { AdminOp::Subscribe { user, room } } else { AdminOp::Unsubscribe { user, room } })
}

/// `POST /api/history/remove`: `{"room": …}`.
pub fn history_remove(body: &[u8]) -> Result<AdminOp, PublishError> {
    Ok(AdminOp::HistoryRemove { room: room(&object(body)?)? })
}

/// `POST /api/batch`: `{"commands":[{"method":…,"params":{…}},…]}`, each command as its
/// method name (`None`: unknown or not a string) and its `params` exactly as written (so
/// a publish's `data` stays verbatim). Refused as a whole only when the envelope is wrong.
pub fn batch(body: &[u8]) -> Result<Vec<Command>, PublishError> {
    let map = object(body)?;
    let commands = match map.get("commands") {
        Some(Value::Array(a)) if !a.is_empty() && a.len() <= MAX_BATCH => a,
        _ => return Err(bad(format!("`commands` must list 1 to {MAX_BATCH} commands"))),
    };
    let raw =
        protocol::raw::member(body, b"commands").ok_or_else(|| bad("write the key `commands` without escapes"))?;
    let items = protocol::raw::items(raw).ok_or_else(|| bad("`commands` is not a list"))?;
    let mut out = Vec::with_capacity(commands.len());
    for (command, item) in commands.iter().zip(items) {
        let method = command.get("method").and_then(Value::as_str).and_then(Method::named);
        let params = protocol::raw::member(item, b"params").map_or_else(|| b"{}".to_vec(), <[u8]>::to_vec);
        out.push((method, params));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disconnect_bodies() {
        let op = disconnect(br#"{"user":"bob","code":4001,"reason":"bye","ban_secs":60}"#).unwrap();
        let want = AdminOp::Disconnect {
            user: Some("bob".into()),
            conn: None,
            code: 4001,
            reason: "bye".into(),
            ban_secs: 60,
        };
        assert_eq!(op, want);
        assert!(matches!(disconnect(br#"{"conn":"a-1-2"}"#), Ok(AdminOp::Disconnect { code: 4000, .. })));
        let long = format!(r#"{{"user":"b","reason":"{}"}}"#, "r".repeat(124));
        for (body, field) in [
            (r#"{}"#, "user"),
            (r#"{"user":"b","conn":"c"}"#, "conn"),
            (r#"{"user":"b","code":1000}"#, "code"),
            (r#"{"user":"b","code":5000}"#, "code"),
            (r#"{"user":"b","code":"4001"}"#, "code"),
            (long.as_str(), "reason"),
            (r#"{"user":"b","ban_secs":-1}"#, "ban_secs"),
            (r#"{"conn":"c","ban_secs":5}"#, "ban_secs"),
            (r#"{"user":""}"#, "user"),
            (r#"{"user":7}"#, "user"),
        ] {
            let e = disconnect(body.as_bytes()).unwrap_err();
            assert!(e.to_string().contains(field), "{body}: {e}");
        }
    }

    #[test]
    fn membership_and_history_bodies() {
        let sub = membership(br#"{"user":"bob","room":"news"}"#, true).unwrap();
        assert_eq!(sub, AdminOp::Subscribe { user: "bob".into(), room: "news".into() });
        let un = membership(br#"{"user":"bob","room":"news"}"#, false).unwrap();
        assert_eq!(un, AdminOp::Unsubscribe { user: "bob".into(), room: "news".into() });
        assert!(membership(br#"{"user":"bob","room":"@user:bob"}"#, true).unwrap_err().to_string().contains("room"));
        assert!(membership(br#"{"room":"news"}"#, true).unwrap_err().to_string().contains("user"));
        assert_eq!(history_remove(br#"{"room":"r"}"#).unwrap(), AdminOp::HistoryRemove { room: "r".into() });
        assert!(history_remove(b"{}").unwrap_err().to_string().contains("room"));
    }

    #[test]
    fn batch_bodies_keep_params_verbatim() {
        let body = br#"{"commands":[{"method":"publish","params":{"room":"r","data":12345678901234567890123}},{"method":"dance"},{"params":{}}]}"#;
        let cmds = batch(body).unwrap();
        assert_eq!(cmds.len(), 3);
        assert_eq!(cmds[0], (Some(Method::Publish), br#"{"room":"r","data":12345678901234567890123}"#.to_vec()));
        assert_eq!(cmds[1], (None, b"{}".to_vec()));
        assert_eq!(cmds[2].0, None);
        for body in [r#"{"commands":[]}"#, r#"{"commands":{}}"#, r#"{}"#, "nope"] {
            assert!(batch(body.as_bytes()).is_err(), "{body}");
        }
    }
}
