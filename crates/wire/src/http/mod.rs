//! HTTP/1.1 request heads, the part both the server and the WebSocket handshake need.
//! Responses and routing are the server's business and stay in the server.

pub mod request;

/// Index just past the blank line that ends an HTTP head, once it is complete: where a
/// body, or the first WebSocket frame after a `101`, starts. For peers that only need
/// the boundary (bench-client reading the server's `101`, the ceiling probe reading an
/// upgrade); the server parses the whole head with [`request::parse`].
pub fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// Why a request could not be served; each maps to one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// Not a valid HTTP/1.x request head.
    #[error("malformed HTTP request")]
    Malformed,
    /// Head longer than the limit or too many headers.
    #[error("request head too large")]
    HeadTooLarge,
    /// `Transfer-Encoding` bodies are not accepted.
    #[error("transfer-encoding is not supported; send Content-Length")]
    UnsupportedEncoding,
    /// Body over the limit.
    #[error("request body too large")]
    BodyTooLarge,
}

impl HttpError {
    /// The status code answering this error.
    pub fn status(self) -> u16 {
        match self {
            HttpError::Malformed => 400,
            HttpError::HeadTooLarge => 431,
            HttpError::UnsupportedEncoding => 501,
            HttpError::BodyTooLarge => 413,
        }
    }

    /// Machine-readable error code used in the JSON body.
    pub fn code(self) -> &'static str {
        match self {
            HttpError::Malformed => "bad_request",
            HttpError::HeadTooLarge => "head_too_large",
            HttpError::UnsupportedEncoding => "unsupported_encoding",
            HttpError::BodyTooLarge => "body_too_large",
        }
    }
}
