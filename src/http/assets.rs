//! The web chat client, embedded in the binary at build time (no files to deploy, no
//! build toolchain: plain HTML, CSS and JavaScript from `web/`).

/// An embedded file: content type and bytes.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    /// `Content-Type` header value.
    pub content_type: &'static str,
    /// File contents.
    pub body: &'static [u8],
}

/// The embedded file served at `path`, if any.
pub fn get(path: &str) -> Option<Asset> {
    let (content_type, body): (&str, &[u8]) = match path {
        "/" | "/index.html" => ("text/html; charset=utf-8", include_bytes!("../../web/index.html")),
        "/app.js" => ("text/javascript; charset=utf-8", include_bytes!("../../web/app.js")),
        // The corecast-client library's build (clients/js), imported by app.js.
        "/corecast-client.js" => ("text/javascript; charset=utf-8", include_bytes!("../../web/corecast-client.js")),
        "/style.css" => ("text/css; charset=utf-8", include_bytes!("../../web/style.css")),
        _ => return None,
    };
    Some(Asset { content_type, body })
}
