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
//! | `<prefix>.node.<16 hex>` | messages for one node: forwarded publishes and their confirmations, acks, replies, presence snapshots, count requests |
//! | `<prefix>.room.<b64url(room)>` | a room's sequenced frames, volatile frames, join/leave events |
//! | `<prefix>.rb.<bucket>.<b64url(room)>` | the same with `--cluster-room-buckets` B > 0 (bucket = hash mod B) |
//! | `<prefix>.user.<b64url(user id)>` | the same for a personal room `@user:<id>` |
//! | `<prefix>.all` | broadcast frames (`@all`), operator commands, presence count reports |
//!
//! Every node receives every `user.` subject through one wildcard subscription
//! ([`Subjects::users`]) instead of one subscription per personal room: every connection
//! has a personal room, and a subscription each (a NATS client channel, a forwarding task,
//! server-side interest) cost several KB per connection. Nodes without the user drop the
//! frame (docs/CLUSTER.md, "Personal rooms").
//!
//! Public rooms get a subscription each by default. With B room buckets, a room's subject
//! carries its bucket (a fixed hash of the name mod B) and a node subscribes once per
//! bucket it has rooms in (`<prefix>.rb.<bucket>.*`): at most B subscriptions whatever
//! the number of rooms, for frames of rooms without local members that the owner shard
//! drops (docs/CLUSTER.md, "Room buckets").

use data_encoding::BASE64URL_NOPAD;

use crate::protocol::room_user;

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

/// Most room buckets a cluster may use (`--cluster-room-buckets`).
pub const MAX_ROOM_BUCKETS: u32 = 65_536;

/// The subjects one node uses, all under one prefix (so several clusters can share a
/// NATS deployment).
#[derive(Debug, Clone)]
pub struct Subjects {
    prefix: String,
    /// Room buckets (0: a subject and a subscription per room).
    buckets: u32,
}

impl Subjects {
    /// Subjects under `prefix` (e.g. `corecast`; must itself be a valid subject), one
    /// subscription per room.
    pub fn new(prefix: &str) -> Subjects {
        Subjects::bucketed(prefix, 0)
    }

    /// Subjects under `prefix` with public rooms hashed into `buckets` buckets (0: none;
    /// at most [`MAX_ROOM_BUCKETS`]). Every node of a cluster must use the same value:
    /// the bucket is part of the subject a frame is published on.
    pub fn bucketed(prefix: &str, buckets: u32) -> Subjects {
        Subjects { prefix: prefix.to_owned(), buckets: buckets.min(MAX_ROOM_BUCKETS) }
    }

    /// The number of room buckets (0: none).
    pub fn buckets(&self) -> u32 {
        self.buckets
    }

    /// Heartbeats and goodbyes.
    pub fn heartbeat(&self) -> String {
        format!("{}.node.hb", self.prefix)
    }

    /// Messages addressed to node `node`.
    pub fn node(&self, node: u64) -> String {
        format!("{}.node.{node:016x}", self.prefix)
    }

    /// The subject of room `room` (a `user.` subject for a personal room, an `rb.`
    /// subject with room buckets).
    pub fn room(&self, room: &str) -> String {
        match room_user(room) {
            Some(user) => format!("{}.user.{}", self.prefix, token(user)),
            None if self.buckets > 0 => format!("{}.rb.{}.{}", self.prefix, bucket(room, self.buckets), token(room)),
            None => format!("{}.room.{}", self.prefix, token(room)),
        }
    }

    /// The subscription that receives `room`'s subject: the subject itself, or its
    /// bucket's wildcard (`<prefix>.rb.<bucket>.*`) that every room of the bucket shares.
    /// Personal rooms are covered by [`Subjects::users`].
    pub fn interest(&self, room: &str) -> String {
        if self.buckets > 0 && !is_personal(room) {
            format!("{}.rb.{}.*", self.prefix, bucket(room, self.buckets))
        } else {
            self.room(room)
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

/// The bucket of `room` among `buckets` (> 0): the room's rendezvous hash (a fixed
/// function, the same on every node and build) mod `buckets`.
pub fn bucket(room: &str, buckets: u32) -> u32 {
    (crate::room::placement::room_hash(room) % u64::from(buckets.max(1))) as u32
}

/// Whether `room` is a personal room (`@user:<id>`), whose subject the node-wide wildcard
/// subscription already covers.
pub fn is_personal(room: &str) -> bool {
    room_user(room).is_some()
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
        assert_eq!(s.interest("lobby"), s.room("lobby"), "no buckets: a subscription per room");
    }

    #[test]
    fn bucketed_rooms_share_their_bucket_subscription() {
        let s = Subjects::bucketed("corecast", 16);
        let b = bucket("lobby", 16);
        assert!(b < 16);
        assert_eq!(s.room("lobby"), format!("corecast.rb.{b}.bG9iYnk"));
        assert_eq!(s.interest("lobby"), format!("corecast.rb.{b}.*"));
        // Personal rooms keep the `user.*` wildcard.
        assert_eq!(s.room("@user:alice"), "corecast.user.YWxpY2U");
        assert_eq!(s.interest("@user:alice"), "corecast.user.YWxpY2U");
        // 1,000 rooms use every one of 16 buckets, so a node with them holds 16
        // subscriptions, not 1,000.
        let used: std::collections::HashSet<String> = (0..1000).map(|i| s.interest(&format!("room-{i}"))).collect();
        assert_eq!(used.len(), 16);
        assert_eq!(Subjects::bucketed("corecast", u32::MAX).buckets(), MAX_ROOM_BUCKETS);
    }

    proptest! {
        #[test]
        fn any_room_name_is_one_valid_reversible_token(name in any::<String>()) {
            let t = token(&name);
            prop_assert!(is_valid_subject(&t));
            prop_assert!(!t.contains('.'));
            prop_assert_eq!(decode(&t), Some(name.clone()));
            prop_assert!(is_valid_subject(&Subjects::new("corecast").room(&name)));
            let b = Subjects::bucketed("corecast", 64);
            prop_assert!(is_valid_subject(&b.room(&name)));
            // The room's subject matches its interest: the wildcard's last token.
            let (interest, room) = (b.interest(&name), b.room(&name));
            prop_assert!(interest == room || (interest.ends_with(".*") && room.starts_with(&interest[..interest.len() - 1])));
        }

        #[test]
        fn distinct_names_get_distinct_tokens(a in any::<String>(), b in any::<String>()) {
            prop_assume!(a != b);
            prop_assert_ne!(token(&a), token(&b));
        }
    }
}
