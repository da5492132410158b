//! Webhooks: the events, the operator's choice of them (`--webhook-events`), the batch
//! body, and the retry schedule. Pure; the sending loop is in `client`.

use std::time::Duration;

use serde::Serialize;

use crate::room::HookKind;

/// The name of an event kind on the wire.
pub fn name(kind: HookKind) -> &'static str {
    match kind {
        HookKind::RoomOccupied => "room_occupied",
        HookKind::RoomVacated => "room_vacated",
        HookKind::MemberJoined => "member_joined",
        HookKind::MemberLeft => "member_left",
        HookKind::UserOnline => "user_online",
        HookKind::UserOffline => "user_offline",
    }
}

/// Every event kind, in the order of [`EventSet`]'s bits.
pub const ALL: [HookKind; 6] = [
    HookKind::RoomOccupied,
    HookKind::RoomVacated,
    HookKind::MemberJoined,
    HookKind::MemberLeft,
    HookKind::UserOnline,
    HookKind::UserOffline,
];

/// A set of event kinds (`--webhook-events`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventSet(u8);

impl EventSet {
    /// Every kind.
    pub const ALL: EventSet = EventSet(0b11_1111);

    /// Parses a comma-separated list of event names; `all` (or an empty list) is every
    /// kind. An unknown name is an error naming it.
    pub fn parse(list: &str) -> Result<EventSet, String> {
        let mut bits = 0u8;
        for n in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if n == "all" {
                return Ok(EventSet::ALL);
            }
            let i = ALL.iter().position(|k| name(*k) == n).ok_or_else(|| format!("unknown webhook event `{n}`"))?;
            bits |= 1 << i;
        }
        Ok(if bits == 0 { EventSet::ALL } else { EventSet(bits) })
    }

    /// Whether `kind` is in the set.
    pub fn contains(self, kind: HookKind) -> bool {
        ALL.iter().position(|k| *k == kind).is_some_and(|i| self.0 & (1 << i) != 0)
    }
}

/// One event as delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    /// Unique per event and kept across retries, for the receiver's dedupe:
    /// `<server nonce>-<shard>-<counter>`.
    pub id: String,
    /// The kind (`room_occupied`, …).
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The room (for `user_*`: the user's personal room).
    pub room: String,
    /// The user (absent for `room_*`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// When it happened, milliseconds since the Unix epoch.
    pub ts: u64,
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
    use super::*;

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
        let e = Event { id: "n-0-1".into(), kind: "room_occupied", room: "r".into(), user: None, ts: 5 };
        let body = serde_json::to_string(&Batch { sent_at: 9, events: &[e] }).unwrap();
        assert_eq!(body, r#"{"sent_at":9,"events":[{"id":"n-0-1","type":"room_occupied","room":"r","ts":5}]}"#);
    }
}
