//! Webhooks: the events, the operator's choice of them (`--webhook-events`), the batch
//! body, and the retry schedule. Pure; the sending loop is in `client`.

use std::time::Duration;

use serde::Serialize;
use serde_json::value::RawValue;

use crate::room::{Hook, HookKind};

/// The name of an event kind on the wire.
pub fn name(kind: HookKind) -> &'static str {
    match kind {
        HookKind::RoomOccupied => "room_occupied",
        HookKind::RoomVacated => "room_vacated",
        HookKind::MemberJoined => "member_joined",
        HookKind::MemberLeft => "member_left",
        HookKind::UserOnline => "user_online",
        HookKind::UserOffline => "user_offline",
        HookKind::MessagePublished => "message_published",
    }
}

/// Every event kind, in the order of [`EventSet`]'s bits.
pub const ALL: [HookKind; 7] = [
    HookKind::RoomOccupied,
    HookKind::RoomVacated,
    HookKind::MemberJoined,
    HookKind::MemberLeft,
    HookKind::UserOnline,
    HookKind::UserOffline,
    HookKind::MessagePublished,
];

/// A set of event kinds (`--webhook-events`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventSet(u8);

impl EventSet {
    /// Every presence kind (`all`): `message_published`, one event per message, is sent
    /// only when named.
    pub const ALL: EventSet = EventSet(0b011_1111);

    /// Parses a comma-separated list of event names; `all` (or an empty list) is every
    /// presence kind, and may be combined with `message_published`. An unknown name is
    /// an error naming it.
    pub fn parse(list: &str) -> Result<EventSet, String> {
        let mut bits = 0u8;
        let mut named = false;
        for n in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            named = true;
            if n == "all" {
                bits |= EventSet::ALL.0;
                continue;
            }
            let i = ALL.iter().position(|k| name(*k) == n).ok_or_else(|| format!("unknown webhook event `{n}`"))?;
            bits |= 1 << i;
        }
        Ok(if named { EventSet(bits) } else { EventSet::ALL })
    }

    /// Whether `kind` is in the set.
    pub fn contains(self, kind: HookKind) -> bool {
        ALL.iter().position(|k| *k == kind).is_some_and(|i| self.0 & (1 << i) != 0)
    }
}

/// One event as delivered.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Unique per event and kept across retries, for the receiver's dedupe:
    /// `<server nonce>-<shard>-<counter>`.
    pub id: String,
    /// The kind (`room_occupied`, …).
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The room (for `user_*`: the user's personal room).
    pub room: String,
    /// The user (absent for `room_*`; the sender for `message_published`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// When it happened, milliseconds since the Unix epoch (for `message_published`:
    /// the message's `ts`).
    pub ts: u64,
    /// `message_published` only: the message's stream epoch (16 hex digits, as clients
    /// see it in `joined`) and `seq`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
    /// See `epoch`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// `message_published` only: the message's `text`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// `message_published` only: the message's `data`, the JSON value it carried.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Box<RawValue>>,
    /// `message_published` only: the message's `event` name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// `message_published` only: the message's `tags` (an API publish's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<Box<RawValue>>,
}

/// JSON the room core holds verbatim (validated when it was received) as a raw value;
/// `None` if it somehow is not JSON, rather than a batch that is.
fn raw(json: Option<&[u8]>) -> Option<Box<RawValue>> {
    json.and_then(|j| std::str::from_utf8(j).ok()).and_then(|j| RawValue::from_string(j.to_owned()).ok())
}

impl Event {
    /// The event of `hook` with `id`; `now_ms` is its `ts` unless it carries a message.
    pub fn new(id: String, hook: &Hook, now_ms: u64) -> Event {
        let m = hook.message.as_deref();
        Event {
            id,
            kind: name(hook.kind),
            room: hook.room.to_string(),
            user: hook.user.as_ref().map(|u| u.to_string()),
            ts: m.map_or(now_ms, |m| m.ts),
            epoch: m.map(|m| format!("{:016x}", m.epoch)),
            seq: m.map(|m| m.seq),
            text: m.and_then(|m| m.text.as_ref()).map(|t| t.to_string()),
            data: raw(m.and_then(|m| m.data.as_deref())),
            event: m.and_then(|m| m.event.as_ref()).map(|e| e.to_string()),
            tags: raw(m.and_then(|m| m.tags.as_deref())),
        }
    }
}

/// The body of one webhook POST.
#[derive(Debug, Serialize)]
pub struct Batch<'a> {
    /// When this attempt was sent, milliseconds since the Unix epoch (also in the
    /// `X-Corecast-Timestamp` header; a retry has a new one).
    pub sent_at: u64,
    /// The events, oldest first.
    pub events: &'a [Event],
}

/// The pause before retry number `attempt` (1 = the first retry): 100 ms doubling up to
/// `max`. A batch is retried until it is delivered; events arriving meanwhile wait in
/// the bounded queue (and are dropped and counted when it is full).
pub fn backoff(attempt: u32, max: Duration) -> Duration {
    let ms = 100u64.saturating_mul(1u64 << attempt.saturating_sub(1).min(20));
    Duration::from_millis(ms).min(max)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::room::HookMessage;

    #[test]
    fn event_sets_parse_names_and_all() {
        let s = EventSet::parse("member_joined, room_vacated").unwrap();
        assert!(s.contains(HookKind::MemberJoined) && s.contains(HookKind::RoomVacated));
        assert!(!s.contains(HookKind::UserOnline));
        assert_eq!(EventSet::parse("all").unwrap(), EventSet::ALL);
        assert_eq!(EventSet::parse("").unwrap(), EventSet::ALL);
        assert!(EventSet::parse("member_joined,bogus").unwrap_err().contains("bogus"));
        for k in ALL {
            assert!(EventSet::parse(name(k)).unwrap().contains(k));
        }
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let max = Duration::from_secs(5);
        assert_eq!(backoff(1, max), Duration::from_millis(100));
        assert_eq!(backoff(2, max), Duration::from_millis(200));
        assert_eq!(backoff(4, max), Duration::from_millis(800));
        assert_eq!(backoff(40, max), max);
    }

    #[test]
    fn batches_serialize_with_type_and_without_absent_user() {
        let hook = Hook { kind: HookKind::RoomOccupied, room: "r".into(), user: None, message: None };
        let e = Event::new("n-0-1".into(), &hook, 5);
        let body = serde_json::to_string(&Batch { sent_at: 9, events: &[e] }).unwrap();
        assert_eq!(body, r#"{"sent_at":9,"events":[{"id":"n-0-1","type":"room_occupied","room":"r","ts":5}]}"#);
    }

    #[test]
    fn message_published_carries_position_and_content_verbatim() {
        let message = HookMessage {
            epoch: 0xab,
            seq: 7,
            ts: 42,
            text: Some("hi".into()),
            data: Some(Arc::from(&br#"{"a":[1, 2]}"#[..])),
            event: None,
            tags: None,
        };
        let kind = HookKind::MessagePublished;
        let hook = Hook { kind, room: "r".into(), user: Some("ann".into()), message: Some(Box::new(message)) };
        let e = Event::new("n-0-2".into(), &hook, 99);
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"id":"n-0-2","type":"message_published","room":"r","user":"ann","ts":42,"epoch":"00000000000000ab","seq":7,"text":"hi","data":{"a":[1, 2]}}"#
        );
    }

    #[test]
    fn message_published_is_only_sent_when_named() {
        assert!(!EventSet::ALL.contains(HookKind::MessagePublished), "`all` is the presence events");
        let s = EventSet::parse("all, message_published").unwrap();
        assert!(s.contains(HookKind::MessagePublished) && s.contains(HookKind::UserOnline));
        let s = EventSet::parse("message_published").unwrap();
        assert!(s.contains(HookKind::MessagePublished) && !s.contains(HookKind::RoomOccupied));
    }
}
