//! HTTP/1.1 request heads, parsed with httparse (never by hand).

use super::HttpError;

/// Most headers a request may carry; more is answered with 431.
pub const MAX_HEADERS: usize = 32;

/// A parsed request head, borrowing from the connection's buffer.
#[derive(Debug)]
pub struct Request<'h, 'b> {
    /// Method token, e.g. `GET`.
    pub method: &'b str,
    /// Path without the query string, e.g. `/ws`.
    pub path: &'b str,
    /// Raw query string after `?` (empty when there is none).
    pub query: &'b str,
    /// HTTP minor version (0 or 1).
    pub version: u8,
    /// The headers, in order.
    pub headers: &'h [httparse::Header<'b>],
    /// Bytes taken by the head, including the blank line; a body or WebSocket frames
    /// start here.
    pub head_len: usize,
}

impl<'h, 'b> Request<'h, 'b> {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&'b [u8]> {
        self.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value)
    }

    /// First value of header `name` as text, when it is valid UTF-8.
    pub fn header_str(&self, name: &str) -> Option<&'b str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Whether any value of the comma-separated header `name` contains `token`
    /// (case-insensitive), as `Connection: keep-alive, Upgrade` does.
    pub fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .filter_map(|h| std::str::from_utf8(h.value).ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// Decoded value of query parameter `key` (first occurrence).
    pub fn query_param(&self, key: &str) -> Option<String> {
        form_urlencoded::parse(self.query.as_bytes()).find(|(k, _)| k == key).map(|(_, v)| v.into_owned())
    }

    /// Whether the client asked to keep the connection open after this request
    /// (HTTP/1.1 default unless `Connection: close`; HTTP/1.0 only with `keep-alive`).
    pub fn keep_alive(&self) -> bool {
        if self.version == 0 {
            self.header_has_token("connection", "keep-alive")
        } else {
            !self.header_has_token("connection", "close")
        }
    }

    /// Declared body length: 0 without `Content-Length`; chunked bodies are refused.
    pub fn content_length(&self) -> Result<usize, HttpError> {
        if self.header("transfer-encoding").is_some() {
            return Err(HttpError::UnsupportedEncoding);
        }
        match self.header_str("content-length") {
            None => Ok(0),
            Some(v) => v.trim().parse().map_err(|_| HttpError::Malformed),
        }
    }
}

/// Parses the request head at the start of `buf` into `headers`.
///
/// `Ok(None)` means the head is not complete yet. `max_head` bounds how long a client may
/// take to finish its head (431 beyond it), so a slow or endless head cannot grow memory.
pub fn parse<'h, 'b>(
    buf: &'b [u8],
    headers: &'h mut [httparse::Header<'b>; MAX_HEADERS],
    max_head: usize,
) -> Result<Option<Request<'h, 'b>>, HttpError> {
    let mut req = httparse::Request::new(headers);
    let status = match req.parse(buf) {
        Ok(s) => s,
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::HeadTooLarge),
        Err(_) => return Err(HttpError::Malformed),
    };
    let head_len = match status {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial if buf.len() >= max_head => return Err(HttpError::HeadTooLarge),
        httparse::Status::Partial => return Ok(None),
    };
    if head_len > max_head {
        return Err(HttpError::HeadTooLarge);
    }
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(HttpError::Malformed);
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Ok(Some(Request { method, path, query, version, headers: req.headers, head_len }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with<R>(raw: &[u8], f: impl FnOnce(Result<Option<Request<'_, '_>>, HttpError>) -> R) -> R {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        f(parse(raw, &mut headers, 8192))
    }

    #[test]
    fn parses_path_query_and_tokens() {
        let raw = b"GET /ws?name=al%20ice&x=1 HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\n\r\nrest";
        with(raw, |r| {
            let r = r.unwrap().unwrap();
            assert_eq!((r.method, r.path, r.version), ("GET", "/ws", 1));
            assert_eq!(r.query_param("name").as_deref(), Some("al ice"));
            assert!(r.header_has_token("connection", "upgrade"));
            assert!(r.keep_alive());
            assert_eq!(&raw[r.head_len..], b"rest");
        });
    }

    #[test]
    fn partial_garbage_and_oversized_heads() {
        with(b"GET / HTTP/1.1\r\nHost:", |r| assert!(matches!(r, Ok(None))));
        with(b"\x00\x01garbage\r\n\r\n", |r| assert_eq!(r.unwrap_err(), HttpError::Malformed));
        let long = [b"GET / HTTP/1.1\r\nX: ".as_slice(), &[b'a'; 9000]].concat();
        with(&long, |r| assert_eq!(r.unwrap_err(), HttpError::HeadTooLarge));
        let many: Vec<u8> = (0..40).flat_map(|i| format!("H{i}: v\r\n").into_bytes()).collect();
        let raw = [b"GET / HTTP/1.1\r\n".as_slice(), &many, b"\r\n"].concat();
        with(&raw, |r| assert_eq!(r.unwrap_err(), HttpError::HeadTooLarge));
    }
}
