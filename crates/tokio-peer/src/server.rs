//! Rooms, the accept loop and the connection task.
//!
//! A room is a `broadcast` channel plus a small lock-protected state (`seq`, member
//! count). Publishing takes the room's lock, numbers the message, builds its frame once and
//! sends it on the channel before releasing the lock, so the channel's order is `seq`
//! order; joining subscribes under the same lock, so a joiner receives exactly the
//! messages after the `seq` its `joined` reports.
//!
//! Each connection is one task: a `select!` between the socket (client frames) and the
//! broadcast receivers of its rooms. Deliveries are fed to tokio-tungstenite's write buffer
//! as many as are ready (up to [`BATCH`]), then flushed: one write per wake-up, however
//! many frames, instead of one per frame.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::{FutureExt as _, SinkExt as _, StreamExt as _};
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{broadcast, oneshot};
use tokio_stream::wrappers::{errors::BroadcastStreamRecvError, BroadcastStream};
use tokio_stream::StreamMap;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use crate::proto::{self, ClientFrame, ServerFrame};

/// Deliveries fed before one flush.
pub const BATCH: usize = 64;
/// Largest client message accepted.
const MAX_MESSAGE: usize = 64 * 1024;
/// tungstenite's read buffer. Its default (128 KiB) is zero-filled before every read
/// attempt, and the connection task attempts one on each wake-up: with a delivery per
/// wake-up that memset was a third of the server's CPU, and the buffer 128 KiB of RSS per
/// connection. Client frames here are tens of bytes.
const READ_BUFFER: usize = 4 * 1024;

const HEALTH_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";

/// One room.
struct Room {
    state: Mutex<RoomState>,
    tx: broadcast::Sender<Utf8Bytes>,
    epoch: String,
}

struct RoomState {
    seq: u64,
    members: u32,
}

/// Every room, by name; shared by all connection tasks.
struct Rooms {
    map: Mutex<HashMap<String, Arc<Room>>>,
    buffer: usize,
    next_conn: AtomicU64,
}

impl Rooms {
    fn get(&self, name: &str) -> Arc<Room> {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        map.entry(name.to_owned())
            .or_insert_with(|| {
                Arc::new(Room {
                    state: Mutex::new(RoomState { seq: 0, members: 0 }),
                    tx: broadcast::channel(self.buffer).0,
                    epoch: format!("{:016x}", fastrand::u64(..)),
                })
            })
            .clone()
    }
}

/// The listener: `SO_REUSEADDR`, a backlog of 4096 (connects arrive in bursts of thousands).
pub async fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Accepts until `shutdown` fires, one task per connection.
pub async fn serve(listener: TcpListener, buffer: usize, mut shutdown: oneshot::Receiver<()>) -> std::io::Result<()> {
    let rooms = Arc::new(Rooms { map: Mutex::new(HashMap::new()), buffer, next_conn: AtomicU64::new(0) });
    loop {
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(connection(stream, rooms.clone()));
                }
                // EMFILE and friends: the connection stays in the backlog; go on.
                Err(_) => tokio::task::yield_now().await,
            },
        }
    }
}

/// One connection, from its first byte to its end.
async fn connection(stream: TcpStream, rooms: Arc<Rooms>) {
    let mut first = [0u8; 11];
    if let Ok(n) = stream.peek(&mut first).await {
        if first[..n] == b"GET /health"[..] {
            let mut stream = stream;
            let _ = stream.write_all(HEALTH_RESPONSE).await;
            return;
        }
    }
    let mut name = String::from("guest");
    // The shape tungstenite's handshake callback requires.
    #[allow(clippy::result_large_err)]
    let check = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() != "/ws" {
            let mut not_found = ErrorResponse::new(None);
            *not_found.status_mut() = StatusCode::NOT_FOUND;
            return Err(not_found);
        }
        let query = req.uri().query().unwrap_or("");
        if let Some(n) = query.split('&').find_map(|kv| kv.strip_prefix("name=")).filter(|n| !n.is_empty()) {
            name = n.to_owned();
        }
        Ok(resp)
    };
    let config = WebSocketConfig::default().max_message_size(Some(MAX_MESSAGE)).read_buffer_size(READ_BUFFER);
    let Ok(ws) = tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(config)).await else { return };
    let conn = format!("tokio-{}", rooms.next_conn.fetch_add(1, Ordering::Relaxed));
    let mut session = Session { ws, rooms, name, joined: Vec::new(), subs: StreamMap::new() };
    let welcome = ServerFrame::Welcome { user: &session.name, conn: &conn, shard: 0 }.to_json();
    if session.ws.send(Message::text(welcome)).await.is_ok() {
        let _ = session.run().await;
    }
    session.leave_all();
}

/// A connection after its upgrade.
struct Session {
    ws: WebSocketStream<TcpStream>,
    rooms: Arc<Rooms>,
    name: String,
    joined: Vec<(String, Arc<Room>)>,
    subs: StreamMap<String, BroadcastStream<Utf8Bytes>>,
}

type WsResult = Result<(), tokio_tungstenite::tungstenite::Error>;

impl Session {
    async fn run(&mut self) -> WsResult {
        loop {
            tokio::select! {
                incoming = self.ws.next() => match incoming {
                    Some(Ok(Message::Text(text))) => self.on_text(&text).await?,
                    Some(Ok(Message::Close(_))) | None => return Ok(()),
                    // Pings are answered by tungstenite itself; binary frames are not ours.
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e),
                },
                Some((_, delivery)) = self.subs.next(), if !self.subs.is_empty() => {
                    let mut next = Some(delivery);
                    let mut fed = 0;
                    while let Some(delivery) = next.take() {
                        match delivery {
                            Ok(frame) => self.ws.feed(Message::Text(frame)).await?,
                            Err(BroadcastStreamRecvError::Lagged(_)) => return self.slow_consumer().await,
                        }
                        fed += 1;
                        if fed < BATCH {
                            next = self.subs.next().now_or_never().flatten().map(|(_, d)| d);
                        }
                    }
                    self.ws.flush().await?;
                }
            }
        }
    }

    async fn on_text(&mut self, text: &str) -> WsResult {
        match proto::parse(text) {
            Some(ClientFrame::Join { room }) => {
                if self.joined.iter().any(|(n, _)| *n == room) {
                    return Ok(());
                }
                let r = self.rooms.get(&room);
                let (rx, seq, members) = {
                    let mut st = r.state.lock().unwrap_or_else(PoisonError::into_inner);
                    st.members += 1;
                    (r.tx.subscribe(), st.seq, st.members)
                };
                let joined = ServerFrame::Joined { room: &room, members, seq, epoch: &r.epoch }.to_json();
                self.subs.insert(room.clone(), BroadcastStream::new(rx));
                self.joined.push((room, r));
                self.ws.send(Message::text(joined)).await
            }
            Some(ClientFrame::Leave { room }) => {
                if let Some(i) = self.joined.iter().position(|(n, _)| *n == room) {
                    let (name, r) = self.joined.swap_remove(i);
                    self.subs.remove(&name);
                    leave(&r);
                }
                Ok(())
            }
            Some(ClientFrame::Message { room, text }) => {
                let r = match self.joined.iter().find(|(n, _)| *n == room) {
                    Some((_, r)) => r.clone(),
                    None => self.rooms.get(&room),
                };
                let ts = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
                let mut st = r.state.lock().unwrap_or_else(PoisonError::into_inner);
                st.seq += 1;
                let frame = ServerFrame::Message { room: &room, seq: st.seq, user: &self.name, text: &text, ts };
                // No receiver (nobody joined) is not an error: the message reaches nobody.
                let _ = r.tx.send(Utf8Bytes::from(frame.to_json()));
                Ok(())
            }
            Some(ClientFrame::Other) | None => Ok(()),
        }
    }

    /// Closes with 1013: the member fell more than a room buffer behind.
    async fn slow_consumer(&mut self) -> WsResult {
        self.subs.clear();
        let close = CloseFrame { code: CloseCode::Again, reason: "slow consumer".into() };
        self.ws.close(Some(close)).await
    }

    fn leave_all(&mut self) {
        for (_, r) in self.joined.drain(..) {
            leave(&r);
        }
    }
}

fn leave(r: &Room) {
    let mut st = r.state.lock().unwrap_or_else(PoisonError::into_inner);
    st.members = st.members.saturating_sub(1);
}
