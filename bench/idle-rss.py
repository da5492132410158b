#!/usr/bin/env python3
"""Opens N idle upgraded WebSocket connections to a corecast on PORT (spread over
127.0.0.2, .3, ... at 5,000 per address) and prints the server's RSS growth per connection.
Usage: idle-rss.py PORT N SERVER_PID [same]   (same: every connection is user "u")."""
import socket, sys, time, os
port=int(sys.argv[1]); n=int(sys.argv[2]); pid=int(sys.argv[3]); same=len(sys.argv)>4
def rss(): return int([l for l in open(f'/proc/{pid}/status') if l.startswith('VmRSS')][0].split()[1])*1024
base=rss(); socks=[]
for i in range(n):
    s=socket.create_connection(('127.0.0.1',port), source_address=(f'127.0.0.{2+i//5000}',0))
    name='u' if same else f'user{i}'
    s.sendall(f'GET /ws?name={name} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n'.encode())
    buf=b''
    while b'"welcome"' not in buf: buf+=s.recv(4096)
    socks.append(s)
time.sleep(float(os.environ.get("HOLD", "3")))
r=rss(); print(f'{n} conns: base {base/1e6:.1f} MB, now {r/1e6:.1f} MB, per conn {(r-base)/n:.0f} B')
