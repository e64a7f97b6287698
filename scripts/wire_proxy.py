"""A TCP proxy for the benchmarks and tests: it listens on a free loopback port, passes every
connection on to the upstream MongoDB server, and counts the bytes each way on the client's side
(client to server is "sent", as the client sees it).

With offer_zlib, it also stands in for a server that offers zlib wire compression, which the test
server does not: it adds "compression": ["zlib"] to hello replies for clients that ask for zlib,
decompresses what such a client sends compressed (OP_COMPRESSED) before passing it on, and
compresses the replies to those requests, as a server does. The counts are then what a client
sends and receives with compression on."""
import socket
import struct
import threading
import zlib

import bson

OP_REPLY, OP_QUERY, OP_COMPRESSED, OP_MSG = 1, 2004, 2012, 2013
ZLIB = 2
HELLOS = {"hello", "ismaster", "isMaster"}


def read_message(sock):
    head = b""
    while len(head) < 16:
        chunk = sock.recv(16 - len(head))
        if not chunk:
            return None
        head += chunk
    length = struct.unpack("<i", head[:4])[0]
    body = b""
    while len(body) < length - 16:
        chunk = sock.recv(min(65536, length - 16 - len(body)))
        if not chunk:
            return None
        body += chunk
    return head + body


def header(length, request_id, response_to, opcode):
    return struct.pack("<iiii", length, request_id, response_to, opcode)


def first_document(opcode, body):
    """The command (OP_QUERY, OP_MSG) or reply (OP_REPLY, OP_MSG) document of a message body."""
    if opcode == OP_MSG:
        return bson.decode(body[5:5 + struct.unpack("<i", body[5:9])[0]]) if body[4] == 0 else None
    if opcode == OP_QUERY:
        name_end = body.index(b"\0", 4)
        start = name_end + 1 + 8
        return bson.decode(body[start:start + struct.unpack("<i", body[start:start + 4])[0]])
    if opcode == OP_REPLY:
        return bson.decode(body[20:20 + struct.unpack("<i", body[20:24])[0]])
    return None


def with_compression(opcode, body):
    """The hello reply body with "compression": ["zlib"] added."""
    if opcode == OP_MSG:
        doc = first_document(opcode, body)
        doc["compression"] = ["zlib"]
        return body[:5] + bson.encode(doc)
    doc = first_document(opcode, body)
    doc["compression"] = ["zlib"]
    return body[:20] + bson.encode(doc)


class Proxy:
    def __init__(self, upstream, offer_zlib=False):
        self.upstream = upstream
        self.offer_zlib = offer_zlib
        self._sent = self._received = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def counts(self):
        """(bytes sent by clients, bytes received by them) so far."""
        with self._lock:
            return self._sent, self._received

    def close(self):
        self._closed = True
        self._listener.close()

    def _count(self, sent, n):
        with self._lock:
            if sent:
                self._sent += n
            else:
                self._received += n

    def _accept(self):
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.offer_zlib:
                state = {"hellos": set(), "compressed": set()}
                threading.Thread(target=self._requests, args=(client, server, state), daemon=True).start()
                threading.Thread(target=self._replies, args=(server, client, state), daemon=True).start()
            else:
                threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
                threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src, dst, sent):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                self._count(sent, len(data))
                dst.sendall(data)
        except OSError:
            pass
        finally:
            self._shut(src, dst)

    def _requests(self, client, server, state):
        try:
            while (msg := read_message(client)) is not None:
                self._count(True, len(msg))
                length, request_id, response_to, opcode = struct.unpack("<iiii", msg[:16])
                body = msg[16:]
                if opcode == OP_COMPRESSED:
                    original, size, compressor = struct.unpack("<iiB", body[:9])
                    assert compressor == ZLIB, compressor
                    body = zlib.decompress(body[9:])
                    assert len(body) == size
                    opcode = original
                    state["compressed"].add(request_id)
                    msg = header(16 + len(body), request_id, response_to, opcode) + body
                else:
                    doc = first_document(opcode, body)
                    if doc and next(iter(doc), None) in HELLOS and "zlib" in doc.get("compression", []):
                        state["hellos"].add(request_id)
                server.sendall(msg)
        except (OSError, ValueError, AssertionError, zlib.error):
            pass
        finally:
            self._shut(client, server)

    def _replies(self, server, client, state):
        try:
            while (msg := read_message(server)) is not None:
                length, request_id, response_to, opcode = struct.unpack("<iiii", msg[:16])
                body = msg[16:]
                if response_to in state["hellos"]:
                    state["hellos"].discard(response_to)
                    body = with_compression(opcode, body)
                    msg = header(16 + len(body), request_id, response_to, opcode) + body
                elif response_to in state["compressed"]:
                    state["compressed"].discard(response_to)
                    packed = zlib.compress(body)
                    body = struct.pack("<iiB", opcode, len(body), ZLIB) + packed
                    msg = header(16 + len(body), request_id, response_to, OP_COMPRESSED) + body
                self._count(False, len(msg))
                client.sendall(msg)
        except (OSError, ValueError):
            pass
        finally:
            self._shut(server, client)

    @staticmethod
    def _shut(*socks):
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
