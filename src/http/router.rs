//! Method + path → endpoint. Pure, so every route and every refusal is unit-tested.

use super::admin::Method;
use super::assets;

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET /ws`: WebSocket upgrade (method checked by the handshake, which answers 405).
    WebSocket,
    /// `GET /echo`: the conformance echo WebSocket (served only with `--echo-endpoint`;
    /// the handshake answers a wrong method).
    Echo,
    /// An embedded web client file.
    Asset(&'static str),
    /// `GET /health`.
    Health,
    /// `GET /stats`.
    Stats,
    /// `GET /metrics`.
    Metrics,
    /// `POST /api/publish`.
    Publish,
    /// `POST /api/disconnect`, `/api/subscribe`, `/api/unsubscribe`, `/api/history/remove`.
    Command(Method),
    /// `POST /api/batch`.
    Batch,
    /// `GET /api/rooms` (paged, `prefix` filter).
    Rooms,
    /// `GET /api/info`.
    Info,
    /// `GET /api/rooms/{room}/presence` (room name percent-decoded).
    RoomPresence(String),
    /// `GET /api/rooms/{room}/history` (room name percent-decoded).
    RoomHistory(String),
    /// Known path, wrong method: answer 405 with this `Allow` value.
    MethodNotAllowed(&'static str),
    /// No such path, or a room name that is not valid UTF-8 after decoding.
    NotFound,
}

/// Routes a request. `HEAD` is accepted wherever `GET` is.
pub fn route(method: &str, path: &str) -> Route {
    let read = method == "GET" || method == "HEAD";
    let only = |ok: bool, allow: &'static str, r: Route| if ok { r } else { Route::MethodNotAllowed(allow) };
    match path {
        "/ws" => Route::WebSocket,
        "/echo" => Route::Echo,
        "/health" => only(read, "GET, HEAD", Route::Health),
        "/stats" => only(read, "GET, HEAD", Route::Stats),
        "/metrics" => only(read, "GET, HEAD", Route::Metrics),
        "/api/publish" => only(method == "POST", "POST", Route::Publish),
        "/api/disconnect" => only(method == "POST", "POST", Route::Command(Method::Disconnect)),
        "/api/subscribe" => only(method == "POST", "POST", Route::Command(Method::Subscribe)),
        "/api/unsubscribe" => only(method == "POST", "POST", Route::Command(Method::Unsubscribe)),
        "/api/history/remove" => only(method == "POST", "POST", Route::Command(Method::HistoryRemove)),
        "/api/batch" => only(method == "POST", "POST", Route::Batch),
        "/api/rooms" => only(read, "GET, HEAD", Route::Rooms),
        "/api/info" => only(read, "GET, HEAD", Route::Info),
        _ => {
            if let Some(rest) = path.strip_prefix("/api/rooms/") {
                return room_route(read, rest);
            }
            match assets::get(path) {
                Some(_) => only(read, "GET, HEAD", Route::Asset(canonical_asset(path))),
                None => Route::NotFound,
            }
        }
    }
}

fn room_route(read: bool, rest: &str) -> Route {
    let Some((room, what)) = rest.rsplit_once('/') else { return Route::NotFound };
    let Ok(room) = percent_encoding::percent_decode_str(room).decode_utf8() else { return Route::NotFound };
    if room.is_empty() {
        return Route::NotFound;
    }
    let room = room.into_owned();
    match what {
        "presence" if read => Route::RoomPresence(room),
        "history" if read => Route::RoomHistory(room),
        "presence" | "history" => Route::MethodNotAllowed("GET, HEAD"),
        _ => Route::NotFound,
    }
}

/// The asset table's own `&'static str` for `path` (so `Route` needs no allocation).
fn canonical_asset(path: &str) -> &'static str {
    match path {
        "/" | "/index.html" => "/",
        "/app.js" => "/app.js",
        "/corecast-client.js" => "/corecast-client.js",
        "/style.css" => "/style.css",
        _ => "/",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_refusals() {
        assert_eq!(route("GET", "/ws"), Route::WebSocket);
        assert_eq!(route("POST", "/ws"), Route::WebSocket, "the handshake answers 405 itself");
        assert_eq!(route("GET", "/"), Route::Asset("/"));
        assert_eq!(route("HEAD", "/app.js"), Route::Asset("/app.js"));
        assert_eq!(route("DELETE", "/"), Route::MethodNotAllowed("GET, HEAD"));
        assert_eq!(route("GET", "/health"), Route::Health);
        assert_eq!(route("POST", "/stats"), Route::MethodNotAllowed("GET, HEAD"));
        assert_eq!(route("GET", "/metrics"), Route::Metrics);
        assert_eq!(route("POST", "/api/publish"), Route::Publish);
        assert_eq!(route("GET", "/api/publish"), Route::MethodNotAllowed("POST"));
        assert_eq!(route("GET", "/nope"), Route::NotFound);
        assert_eq!(route("POST", "/api/disconnect"), Route::Command(Method::Disconnect));
        assert_eq!(route("POST", "/api/history/remove"), Route::Command(Method::HistoryRemove));
        assert_eq!(route("GET", "/api/subscribe"), Route::MethodNotAllowed("POST"));
        assert_eq!(route("POST", "/api/batch"), Route::Batch);
        assert_eq!(route("GET", "/api/rooms"), Route::Rooms);
        assert_eq!(route("POST", "/api/info"), Route::MethodNotAllowed("GET, HEAD"));
        assert_eq!(route("GET", "/echo"), Route::Echo, "refused later unless --echo-endpoint");
    }

    #[test]
    fn room_paths_are_percent_decoded() {
        assert_eq!(route("GET", "/api/rooms/caf%C3%A9%20%2F%20bar/presence"), Route::RoomPresence("café / bar".into()));
        assert_eq!(route("GET", "/api/rooms/lobby/history"), Route::RoomHistory("lobby".into()));
        assert_eq!(route("POST", "/api/rooms/lobby/history"), Route::MethodNotAllowed("GET, HEAD"));
        assert_eq!(route("GET", "/api/rooms//presence"), Route::NotFound);
        assert_eq!(route("GET", "/api/rooms/%FF/presence"), Route::NotFound);
        assert_eq!(route("GET", "/api/rooms/lobby/members"), Route::NotFound);
    }
}
