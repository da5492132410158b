//! The probe against a real client socket: how it notices a client that went away.

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use corecast_ceiling::Ceiling;

#[test]
fn regression_a_fin_that_came_with_the_last_bytes_closes_the_connection() {
    // A client's last bytes and its FIN arrived together: the probe's read of the bytes
    // came back short and it stopped reading, and the FIN raised no edge of its own, so
    // the connection stayed open (and in its room) until a write to it failed.
    let probe = Ceiling::start("127.0.0.1:0".parse().unwrap(), 1).unwrap();
    let mut client = TcpStream::connect(probe.addr).unwrap();
    // Corked, the bytes wait in the send queue and the FIN joins their segment: one
    // arrival, so one readable edge at the probe for both.
    let sock = socket2::SockRef::from(&client);
    sock.set_cork(true).unwrap();
    client.write_all(b"GET /ws?name=u HTTP/1.1\r\nHost: x\r\n").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    // The probe closes its side once it sees the FIN: end of stream here. A generous
    // bound, not a wait: the read returns as soon as it does.
    client.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut buf = [0u8; 64];
    let read = client.read(&mut buf);
    assert!(matches!(read, Ok(0)), "the probe kept the connection open: {read:?}");
    probe.stop().unwrap();
}
