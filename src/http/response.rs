//! HTTP/1.1 response heads and small complete responses.

use bytes::Bytes;
use std::fmt::Write as _;

/// A complete response (head and body) ready to queue on a connection.
///
/// `extra` headers are written verbatim (`Name: value\r\n` each); `Content-Length`,
/// `Content-Type`, `Connection` and `Cache-Control` are always set.
pub fn response(status: u16, content_type: &str, extra: &str, body: &[u8], keep_alive: bool) -> Bytes {
    let mut head = String::with_capacity(160 + extra.len());
    let _ = write!(
        head,
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: {}\r\n{extra}\r\n",
        reason(status),
        body.len(),
        if keep_alive { "keep-alive" } else { "close" },
    );
    let mut out = Vec::with_capacity(head.len() + body.len());
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(body);
    Bytes::from(out)
}

/// A JSON error response: `{"error":"<code>","message":"<message>"}`.
pub fn json_error(status: u16, code: &str, message: &str, extra: &str, keep_alive: bool) -> Bytes {
    #[derive(serde::Serialize)]
    struct Body<'a> {
        error: &'a str,
        message: &'a str,
    }
    let body = simd_json::to_vec(&Body { error: code, message }).unwrap_or_default();
    response(status, "application/json", extra, &body, keep_alive)
}

/// The standard reason phrase of `status`.
pub fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Payload Too Large",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// A response before it is rendered: handlers produce one, the connection renders it
/// with its own keep-alive and HEAD semantics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Extra header lines, each ending in `\r\n`.
    pub extra: String,
    /// Body.
    pub body: Vec<u8>,
}

impl Answer {
    /// A JSON answer.
    pub fn json(status: u16, body: Vec<u8>) -> Answer {
        Answer { status, content_type: "application/json", extra: String::new(), body }
    }

    /// A JSON error answer: `{"error":code,"message":message}`.
    pub fn error(status: u16, code: &str, message: &str) -> Answer {
        #[derive(serde::Serialize)]
        struct Body<'a> {
            error: &'a str,
            message: &'a str,
        }
        Answer::json(status, simd_json::to_vec(&Body { error: code, message }).unwrap_or_default())
    }

    /// Adds a header line.
    pub fn with_header(mut self, line: &str) -> Answer {
        self.extra.push_str(line);
        self
    }

    /// Renders the full response; `head_only` answers a HEAD request (headers only, with
    /// the length the body would have).
    pub fn render(&self, keep_alive: bool, head_only: bool) -> Bytes {
        if !head_only {
            return response(self.status, self.content_type, &self.extra, &self.body, keep_alive);
        }
        let full = response(self.status, self.content_type, &self.extra, &self.body, keep_alive);
        full.slice(..full.len() - self.body.len())
    }
}
