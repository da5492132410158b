//! corecast's bytes on the wire, pure: no runtime, no sockets, nothing else of corecast.
//!
//! | module | concern |
//! |---|---|
//! | [`ws`] | RFC 6455: [`ws::frame`], [`ws::reader`], [`ws::handshake`]; RFC 7692 permessage-deflate: [`ws::deflate`] |
//! | [`http`] | HTTP/1.1 request heads ([`http::request`], parsed with httparse) |
//! | [`protocol`] | protocol v1 JSON: [`protocol::client`] parse, [`protocol::server`] frames |
//!
//! The server (`corecast`) re-exports these modules under the same names, and the load
//! generator (`bench-client`) and its ceiling probe use them directly, so both sides of a
//! benchmark speak exactly the same frames without the load generator linking the server.

pub mod http;
pub mod protocol;
pub mod ws;
