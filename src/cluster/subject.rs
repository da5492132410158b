//! NATS subjects of the cluster bus, and the encoding of room names into subject tokens.
//!
//! A room name may contain anything a client can type (dots, `*`, `>`, spaces, any
//! Unicode), none of which may appear in a NATS subject token. So every room name is
//! encoded as **unpadded base64url** (RFC 4648 §5: `A–Z a–z 0–9 - _`), which is
//! injective, never contains a dot, a wildcard or whitespace, and is never empty for a
//! non-empty name (room names are 1 to 128 bytes; the empty name, which never occurs,
//! is encoded as `-`, which no base64 string of a non-empty input can be).
//!
//! | subject | carries |
//! |---|---|
//! | `<prefix>.node.hb` | heartbeats and goodbyes of every node |
//! | `<prefix>.node.<16 hex>` | messages for one node: forwarded publishes, acks, replies, presence snapshots |
//! | `<prefix>.room.<b64url(room)>` | a room's sequenced frames, presence changes, snapshot requests |
//! | `<prefix>.user.<b64url(user id)>` | the same for a personal room `@user:<id>` |
//! | `<prefix>.all` | broadcast frames (`@all`) |
//!
//! Every node receives every `user.` subject through one wildcard subscription
//! ([`Subjects::users`]) instead of one subscription per personal room: every connection
//! has a personal room, and a subscription each (a NATS client channel, a forwarding task,
//! server-side interest) cost several KB per connection. Nodes without the user drop the
//! frame (docs/CLUSTER.md, "Personal rooms").

use data_encoding::BASE64URL_NOPAD;

/// Prefix of personal rooms, whose traffic goes on `user.` subjects.
const USER_ROOM: &str = "@user:";

/// Encodes `name` into one valid NATS subject token (see the module docs).
pub fn token(name: &str) -> String {
    if name.is_empty() {
        return "-".to_owned();
    }
    BASE64URL_NOPAD.encode(name.as_bytes())
}

/// Decodes a token made by [`token`]; `None` for anything else.
pub fn decode(token: &str) -> Option<String> {
    if token == "-" {
        return Some(String::new());
    }
    let bytes = BASE64URL_NOPAD.decode(token.as_bytes()).ok()?;
    String::from_utf8(bytes).ok()
}

/// The subjects one node uses, all under one prefix (so several clusters can share a
/// NATS deployment).
#[derive(Debug, Clone)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    /// Subjects under `prefix` (e.g. `corecast`; must itself be a valid subject).
    pub fn new(prefix: &str) -> Subjects {
        Subjects { prefix: prefix.to_owned() }
    }

    /// Heartbeats and goodbyes.
    pub fn heartbeat(&self) -> String {
        format!("{}.node.hb", self.prefix)
    }

    /// Messages addressed to node `node`.
    pub fn node(&self, node: u64) -> String {
        format!("{}.node.{node:016x}", self.prefix)
    }

    /// The subject of room `room` (a `user.` subject for a personal room).
    pub fn room(&self, room: &str) -> String {
        match room.strip_prefix(USER_ROOM) {
            Some(user) => format!("{}.user.{}", self.prefix, token(user)),
            None => format!("{}.room.{}", self.prefix, token(room)),
        }
    }

    /// Every personal room's subject (`<prefix>.user.*`), the one subscription a node
    /// holds for all of them.
    pub fn users(&self) -> String {
        format!("{}.user.*", self.prefix)
    }

    /// Broadcast frames.
    pub fn all(&self) -> String {
        format!("{}.all", self.prefix)
    }
}

/// Whether `room` is a personal room (`@user:<id>`), whose subject the node-wide wildcard
/// subscription already covers.
pub fn is_personal(room: &str) -> bool {
    room.starts_with(USER_ROOM)
}

/// Whether `s` is a valid literal NATS subject: dot-separated non-empty tokens without
/// wildcards or whitespace.
pub fn is_valid_subject(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|t| !t.is_empty() && !t.contains(['*', '>']) && !t.chars().any(char::is_whitespace))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rooms_and_users_get_their_own_subjects() {
        let s = Subjects::new("corecast");
        assert_eq!(s.room("lobby"), "corecast.room.bG9iYnk");
        assert_eq!(s.room("@user:alice"), "corecast.user.YWxpY2U");
        assert_eq!(s.node(0xab), "corecast.node.00000000000000ab");
        assert_eq!(s.heartbeat(), "corecast.node.hb");
        assert_eq!(s.all(), "corecast.all");
        assert_eq!(s.users(), "corecast.user.*");
        assert!(is_personal("@user:alice") && !is_personal("lobby") && !is_personal("user:alice"));
        assert_eq!(token(""), "-");
        assert_eq!(decode("-").as_deref(), Some(""));
        assert!(decode("a.b").is_none());
    }

    proptest! {
        #[test]
        fn any_room_name_is_one_valid_reversible_token(name in any::<String>()) {
            let t = token(&name);
            prop_assert!(is_valid_subject(&t));
            prop_assert!(!t.contains('.'));
            prop_assert_eq!(decode(&t), Some(name.clone()));
            prop_assert!(is_valid_subject(&Subjects::new("corecast").room(&name)));
        }

        #[test]
        fn distinct_names_get_distinct_tokens(a in any::<String>(), b in any::<String>()) {
            prop_assume!(a != b);
            prop_assert_ne!(token(&a), token(&b));
        }
    }
}
