//! Protocol v1: the JSON messages exchanged over `/ws` (docs/PROTOCOL.md).
//!
//! [`client`] parses what clients send; [`server`] builds what the server sends, each as
//! a complete WebSocket frame serialized exactly once.

pub mod client;
pub mod raw;
pub mod server;

use std::borrow::Cow;

/// Machine-readable error codes of `{"type":"error"}` frames. The string forms are part of
/// the wire contract (docs/PROTOCOL.md): add codes, never rename them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The frame was not valid JSON.
    BadJson,
    /// `type` names no known message.
    UnknownType,
    /// A required field is absent.
    MissingField,
    /// A field has the wrong type or an out-of-range value.
    InvalidField,
    /// The room name is empty, too long, has control characters or is reserved.
    InvalidRoom,
    /// The connection has not joined that room.
    NotMember,
    /// The connection has already joined (or is joining) that room.
    AlreadyJoined,
    /// The operation is not allowed to this connection.
    Forbidden,
    /// Too many messages too fast.
    RateLimited,
    /// The connection is in too many rooms.
    TooManyRooms,
    /// The message text is longer than allowed.
    TextTooLong,
    /// The server cannot serve the request now (e.g. shutting down).
    Unavailable,
    /// `create` of a room that already exists.
    RoomExists,
    /// A room that does not exist (or was deleted).
    NoSuchRoom,
    /// A private room joined without a password.
    PasswordRequired,
    /// A private room joined with the wrong password.
    WrongPassword,
    /// A token presented in-band (`refresh`) is invalid, expired, or for another user.
    InvalidToken,
    /// A message's `data` is larger than allowed.
    DataTooLarge,
}

impl ErrorCode {
    /// The wire name of this code.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::MissingField => "missing_field",
            ErrorCode::InvalidField => "invalid_field",
            ErrorCode::InvalidRoom => "invalid_room",
            ErrorCode::NotMember => "not_member",
            ErrorCode::AlreadyJoined => "already_joined",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TooManyRooms => "too_many_rooms",
            ErrorCode::TextTooLong => "text_too_long",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::RoomExists => "room_exists",
            ErrorCode::NoSuchRoom => "no_such_room",
            ErrorCode::PasswordRequired => "password_required",
            ErrorCode::WrongPassword => "wrong_password",
            ErrorCode::InvalidToken => "invalid_token",
            ErrorCode::DataTooLarge => "data_too_large",
        }
    }
}

/// A request the server refuses: answered with an `error` frame, the connection stays open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct ClientError {
    /// What went wrong, machine-readable.
    pub code: ErrorCode,
    /// What went wrong, for humans.
    pub message: String,
    /// The request's `id`, echoed as `ref`.
    pub reference: Option<String>,
}

impl ClientError {
    /// An error without a reference.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ClientError { code, message: message.into(), reference: None }
    }

    /// The same error answering the request with reference `id`.
    pub fn with_ref(mut self, id: Option<&Cow<'_, str>>) -> Self {
        self.reference = id.map(|r| r.to_string());
        self
    }
}

/// Longest room name, in bytes.
pub const MAX_ROOM_LEN: usize = 128;

/// Prefix of server-managed rooms (`@user:<id>` personal rooms); clients cannot join them.
pub const SYSTEM_ROOM_PREFIX: char = '@';

/// Prefix of personal rooms: `@user:<id>`.
pub const USER_ROOM_PREFIX: &str = "@user:";

/// The personal room of `user`: every connection of the user is implicitly a member.
pub fn user_room(user: &str) -> String {
    format!("{USER_ROOM_PREFIX}{user}")
}

/// The user whose personal room `room` is; `None` for every other room.
pub fn room_user(room: &str) -> Option<&str> {
    room.strip_prefix(USER_ROOM_PREFIX)
}

/// Whether `room` is the personal room of `user` (never of the empty user).
pub fn is_room_of(room: &str, user: &str) -> bool {
    !user.is_empty() && room_user(room) == Some(user)
}

/// Checks a client-chosen room name: 1–128 bytes, no control characters, not reserved.
pub fn validate_room(room: &str) -> Result<(), ClientError> {
    if room.is_empty() || room.len() > MAX_ROOM_LEN {
        return Err(ClientError::new(ErrorCode::InvalidRoom, format!("room names are 1 to {MAX_ROOM_LEN} bytes")));
    }
    if room.chars().any(char::is_control) {
        return Err(ClientError::new(ErrorCode::InvalidRoom, "room names cannot contain control characters"));
    }
    if room.starts_with(SYSTEM_ROOM_PREFIX) {
        return Err(ClientError::new(ErrorCode::InvalidRoom, "room names starting with `@` are reserved"));
    }
    Ok(())
}

/// Longest `event` name, in bytes.
pub const MAX_EVENT_LEN: usize = 64;

/// Checks a message's `event` name: 1–64 bytes, no control characters.
pub fn validate_event(event: &str) -> Result<(), ClientError> {
    if event.is_empty() || event.len() > MAX_EVENT_LEN || event.chars().any(char::is_control) {
        let msg = format!("`event` must be 1 to {MAX_EVENT_LEN} bytes without control characters");
        return Err(ClientError::new(ErrorCode::InvalidField, msg));
    }
    Ok(())
}

/// Longest `idempotency_key`, in bytes, on a WebSocket `message` and on `POST /api/publish`.
pub const MAX_IDEMPOTENCY_KEY: usize = 128;

/// Checks an `idempotency_key`: 1 to [`MAX_IDEMPOTENCY_KEY`] bytes.
pub fn validate_idempotency_key(key: &str) -> Result<(), ClientError> {
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY {
        let msg = format!("`idempotency_key` must be 1 to {MAX_IDEMPOTENCY_KEY} bytes");
        return Err(ClientError::new(ErrorCode::InvalidField, msg));
    }
    Ok(())
}

/// Checks a user-chosen display name: 1–64 bytes, no control characters, no `@`/`:`
/// (which would let a name forge a personal room).
pub fn validate_user_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && !name.chars().any(|c| c.is_control() || c == '@' || c == ':')
}
