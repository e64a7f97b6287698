#!/usr/bin/env python3
"""A tiny HTTP/1.1 round-robin balancer for the fleet load test: each request goes to the next
backend in turn, so two firehose-endpoint processes share one firehose-local's deliveries the way
a load balancer in front of several endpoints would share Firehose's.

Per request, not per connection: firehose-local keeps one connection open, so a balancer that
chose per connection would send everything to one backend. It understands only what
firehose-local sends and the endpoint answers: a request and a response with Content-Length (no
chunked bodies), and keep-alive. A backend connection that fails closes the client's connection;
firehose-local then retries the request, as Firehose would.

On SIGTERM it writes {"requests": {backend: count}} to --stats and exits.

Usage: fleet_balancer.py --listen PORT --backend HOST:PORT --backend HOST:PORT [--stats FILE]"""
import argparse
import itertools
import json
import signal
import socket
import sys
import threading

HEAD_LIMIT = 64 * 1024


def read_head(sock, buf):
    """The head up to its blank line, and the bytes after it; (None, b"") at a clean EOF."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            if buf:
                raise ConnectionError("connection closed inside a head")
            return None, b""
        buf += chunk
        if len(buf) > HEAD_LIMIT and b"\r\n\r\n" not in buf:
            raise ConnectionError("head too long")
    head, rest = buf.split(b"\r\n\r\n", 1)
    return head + b"\r\n\r\n", rest


def content_length(head):
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"transfer-encoding":
            raise ConnectionError("chunked bodies are not supported")
        if name == b"content-length":
            return int(value.strip())
    return 0


def read_body(sock, rest, length):
    """The body of `length` bytes, starting with `rest`, and whatever followed it."""
    parts, have = [rest], len(rest)
    while have < length:
        chunk = sock.recv(min(1 << 20, length - have))
        if not chunk:
            raise ConnectionError("connection closed inside a body")
        parts.append(chunk)
        have += len(chunk)
    data = b"".join(parts)
    return data[:length], data[length:]


class Balancer:
    def __init__(self, backends):
        self.backends = backends
        self.turn = itertools.cycle(range(len(backends)))
        self.lock = threading.Lock()
        self.requests = {b: 0 for b in backends}

    def pick(self):
        with self.lock:
            backend = self.backends[next(self.turn)]
            self.requests[backend] += 1
            return backend

    def serve(self, client):
        upstream = {}
        buf = b""
        try:
            while True:
                head, buf = read_head(client, buf)
                if head is None:
                    return
                body, buf = read_body(client, buf, content_length(head))
                backend = self.pick()
                conn = upstream.get(backend)
                if conn is None:
                    host, port = backend.rsplit(":", 1)
                    conn = upstream[backend] = [socket.create_connection((host, int(port))), b""]
                conn[0].sendall(head + body)
                rhead, conn[1] = read_head(conn[0], conn[1])
                if rhead is None:
                    raise ConnectionError(f"{backend} closed the connection")
                rbody, conn[1] = read_body(conn[0], conn[1], content_length(rhead))
                client.sendall(rhead + rbody)
        except (OSError, ValueError) as e:
            print(f"fleet_balancer: {e}", file=sys.stderr)
        finally:
            for sock, _ in upstream.values():
                sock.close()
            client.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--listen", type=int, required=True, help="port on 127.0.0.1")
    ap.add_argument("--backend", action="append", required=True, help="HOST:PORT, repeatable")
    ap.add_argument("--stats", help="file to write the request counts to on SIGTERM")
    args = ap.parse_args()
    balancer = Balancer(args.backend)

    def stop(*_):
        if args.stats:
            with open(args.stats, "w") as f:
                json.dump({"requests": balancer.requests}, f)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server = socket.create_server(("127.0.0.1", args.listen), backlog=128)
    while True:
        client, _ = server.accept()
        threading.Thread(target=balancer.serve, args=(client,), daemon=True).start()


if __name__ == "__main__":
    main()
