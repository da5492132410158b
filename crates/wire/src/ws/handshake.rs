//! The opening handshake (RFC 6455 §4.2): validate an upgrade request and build the
//! `101 Switching Protocols` answer. Pure: it sees a parsed request, never a socket.

use bytes::Bytes;

use super::deflate::{self, Agreement};
use crate::http::request::Request;

/// A valid upgrade request, reduced to what the server needs after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    /// `Sec-WebSocket-Accept` value (tungstenite's derivation).
    pub accept: String,
    /// Subprotocols offered by the client in `Sec-WebSocket-Protocol`, in order.
    pub protocols: Vec<String>,
    /// What permessage-deflate would be agreed to, if the client offered it acceptably
    /// (the server decides whether to use it; see [`accept_response_with`]).
    pub deflate: Option<Agreement>,
}

/// Why an upgrade request was refused, with the HTTP status that says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The upgrade must be a `GET`.
    #[error("WebSocket upgrade requires GET")]
    Method,
    /// HTTP/1.0 cannot upgrade.
    #[error("WebSocket upgrade requires HTTP/1.1")]
    Version,
    /// `Upgrade: websocket` / `Connection: Upgrade` missing.
    #[error("missing Upgrade: websocket and Connection: Upgrade headers")]
    NotUpgrade,
    /// `Sec-WebSocket-Version` is not 13.
    #[error("unsupported Sec-WebSocket-Version; this server speaks 13")]
    WsVersion,
    /// `Sec-WebSocket-Key` missing or not 16 base64-encoded bytes.
    #[error("missing or malformed Sec-WebSocket-Key")]
    Key,
}

impl HandshakeError {
    /// HTTP status answering this error (426 tells the client which version to use).
    pub fn status(self) -> u16 {
        match self {
            HandshakeError::Method => 405,
            HandshakeError::WsVersion | HandshakeError::NotUpgrade => 426,
            HandshakeError::Version | HandshakeError::Key => 400,
        }
    }

    /// Extra response headers that belong with the status.
    pub fn headers(self) -> &'static str {
        match self {
            HandshakeError::Method => "Allow: GET\r\n",
            HandshakeError::WsVersion | HandshakeError::NotUpgrade => {
                "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
            }
            _ => "",
        }
    }
}

/// Checks that `req` is a well-formed WebSocket upgrade.
pub fn validate(req: &Request<'_, '_>) -> Result<Upgrade, HandshakeError> {
    if req.method != "GET" {
        return Err(HandshakeError::Method);
    }
    if req.version != 1 {
        return Err(HandshakeError::Version);
    }
    if !req.header_has_token("upgrade", "websocket") || !req.header_has_token("connection", "upgrade") {
        return Err(HandshakeError::NotUpgrade);
    }
    if req.header("sec-websocket-version").map(<[u8]>::trim_ascii) != Some(b"13") {
        return Err(HandshakeError::WsVersion);
    }
    let key = req.header("sec-websocket-key").map(<[u8]>::trim_ascii).ok_or(HandshakeError::Key)?;
    if !is_base64_16(key) {
        return Err(HandshakeError::Key);
    }
    let protocols = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-protocol"))
        .filter_map(|h| std::str::from_utf8(h.value).ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect();
    let extensions = req.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-extensions"));
    let deflate = deflate::negotiate(extensions.map(|h| h.value));
    Ok(Upgrade { accept: tungstenite::handshake::derive_accept_key(key), protocols, deflate })
}

/// The `101 Switching Protocols` response, echoing `protocol` when one was selected.
pub fn accept_response(upgrade: &Upgrade, protocol: Option<&str>) -> Bytes {
    accept_response_with(upgrade, protocol, None)
}

/// [`accept_response`] that also accepts permessage-deflate as `deflate` says (its
/// `Sec-WebSocket-Extensions` answer).
pub fn accept_response_with(upgrade: &Upgrade, protocol: Option<&str>, deflate: Option<&Agreement>) -> Bytes {
    let mut out = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n",
        upgrade.accept
    );
    if let Some(p) = protocol {
        out.push_str("Sec-WebSocket-Protocol: ");
        out.push_str(p);
        out.push_str("\r\n");
    }
    if let Some(d) = deflate {
        out.push_str(&d.response_header());
    }
    out.push_str("\r\n");
    Bytes::from(out)
}

/// A 16-byte value in standard base64: 22 alphabet characters and `==`.
fn is_base64_16(key: &[u8]) -> bool {
    key.len() == 24
        && key.ends_with(b"==")
        && key[..22].iter().all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::request::{parse, MAX_HEADERS};

    fn check(raw: &str) -> Result<Upgrade, HandshakeError> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let req = parse(raw.as_bytes(), &mut headers, 8192).unwrap().unwrap();
        validate(&req)
    }

    const GOOD: &str = "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\n\
        Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Protocol: chat, bearer.abc\r\n\r\n";

    #[test]
    fn rfc_sample_key_gives_rfc_accept() {
        let up = check(GOOD).unwrap();
        assert_eq!(up.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(up.protocols, vec!["chat", "bearer.abc"]);
        let resp = accept_response(&up, Some("chat"));
        assert!(resp.starts_with(b"HTTP/1.1 101 "));
        assert!(resp.ends_with(b"Sec-WebSocket-Protocol: chat\r\n\r\n"));
        assert_eq!(up.deflate, None);
    }

    #[test]
    fn a_deflate_offer_is_negotiated_and_answered_only_when_asked_to() {
        let offer = GOOD.replace(
            "\r\n\r\n",
            "\r\nSec-WebSocket-Extensions: foo, permessage-deflate; client_no_context_takeover\r\n\r\n",
        );
        let up = check(&offer).unwrap();
        let agreed = up.deflate.expect("offer accepted");
        assert!(agreed.client_no_context_takeover);
        assert!(!accept_response(&up, None).windows(9).any(|w| w == b"Extension"));
        let resp = accept_response_with(&up, None, Some(&agreed));
        let text = String::from_utf8_lossy(&resp);
        assert!(text.ends_with(
            "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n\r\n"
        ), "{text}");
    }

    #[test]
    fn each_missing_piece_is_named() {
        assert_eq!(check(&GOOD.replace("GET", "POST")), Err(HandshakeError::Method));
        assert_eq!(check(&GOOD.replace("HTTP/1.1", "HTTP/1.0")), Err(HandshakeError::Version));
        assert_eq!(check(&GOOD.replace("Upgrade: WebSocket", "Upgrade: h2c")), Err(HandshakeError::NotUpgrade));
        assert_eq!(check(&GOOD.replace("Version: 13", "Version: 8")), Err(HandshakeError::WsVersion));
        assert_eq!(check(&GOOD.replace("dGhlIHNhbXBsZSBub25jZQ==", "short")), Err(HandshakeError::Key));
        assert_eq!(HandshakeError::WsVersion.status(), 426);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn arbitrary_bytes_never_panic_the_parser_or_the_validator(raw in proptest::collection::vec(any::<u8>(), 0..600)) {
                let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                if let Ok(Some(req)) = parse(&raw, &mut headers, 8192) {
                    let _ = validate(&req);
                    let _ = req.query_param("name");
                    let _ = req.content_length();
                }
            }

            #[test]
            fn arbitrary_header_values_are_validated_not_trusted(
                upgrade in "[ -~]{0,20}",
                connection in "[ -~]{0,30}",
                version in "[ -~]{0,5}",
                key in "[ -~]{0,40}",
                protocols in "[ -~]{0,60}",
            ) {
                let raw = format!(
                    "GET /ws HTTP/1.1\r\nUpgrade: {upgrade}\r\nConnection: {connection}\r\n\
                     Sec-WebSocket-Version: {version}\r\nSec-WebSocket-Key: {key}\r\n\
                     Sec-WebSocket-Protocol: {protocols}\r\n\r\n"
                );
                let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                if let Ok(Some(req)) = parse(raw.as_bytes(), &mut headers, 8192) {
                    if let Ok(up) = validate(&req) {
                        // Accepted only when the essentials really are there.
                        prop_assert_eq!(version.trim(), "13");
                        prop_assert_eq!(key.trim().len(), 24);
                        prop_assert!(up.protocols.iter().all(|p| !p.is_empty() && !p.contains(',')));
                    }
                }
            }
        }
    }
}
