//! The HTTP side of the one server port: request parsing, responses and routing.
//!
//! `GET /ws` upgrades to WebSocket (see `ws::handshake`); everything else is answered
//! here. Requests are parsed with httparse.

pub mod admin;
pub mod assets;
pub mod prometheus;
pub mod publish;
pub mod response;
pub mod router;
pub mod stats;

/// Request heads: parsed in the wire crate, which the WebSocket handshake shares.
pub use corecast_wire::http::request;
/// Why a request could not be served (defined with the request parser in the wire crate).
pub use corecast_wire::http::HttpError;
