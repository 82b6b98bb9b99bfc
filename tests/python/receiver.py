#!/usr/bin/env python3
"""An OTLP/HTTP collector stand-in on Python's own HTTP stack and the upb protobuf runtime.

dt's tests use it as a second, independent judge of what leaves the kernel: a second HTTP/1.1
parser (http.server) and a second protobuf decoder (upb, next to prost in the Rust receiver).

    receiver.py --host 127.0.0.1 --port 0 --results FILE

It serves ThreadingHTTPServer with HTTP/1.1 keep-alive on HOST:PORT (IPv4 or IPv6; port 0 picks
a free one), then prints one JSON line to stdout: {"listening": HOST, "port": N, "protobuf": ...}.

Each request appends one JSON line to FILE (flushed before the response is sent):
  conn, seq_on_conn            connection number (accept order) and request number on it
  method, path, version, headers
  content_length               the Content-Length header as an int (null when absent)
  chunked                      Transfer-Encoding: chunked
  body_len, body_crc32         the body after transfer decoding (zlib.crc32)
  complete                     whether the whole body arrived
  conn_bytes                   bytes read on this connection so far, through this request
  decode_ok, decode_error      for POST /v1/logs with Content-Type application/x-protobuf
  unknown_fields               unknown fields met in the decoded messages (should be 0)
  records                      [{service, scope, severity_number, body, attributes: [[k, v]]}]
  status                       what the receiver answered: 200 with an empty
                               ExportLogsServiceResponse, 400 when the body does not decode
Requests the HTTP stack itself rejects are recorded with "http_error".

With --grpc it serves OTLP/gRPC instead (grpcio, HTTP/2 without TLS): the LogsService's Export
method, taking the request's bytes as they came off the wire (after gRPC's own decompression)
and decoding them with upb. Each call appends the same JSON line, with method "POST", path
"/opentelemetry.proto.collector.logs.v1.LogsService/Export", version "HTTP/2", the call's
metadata as headers, conn numbered by the client's address and port, and conn_bytes 0 (grpcio
does not say). A body that does not decode is answered INVALID_ARGUMENT (status 400).

With --tls CERT KEY it serves either over TLS, with the PEM certificate chain CERT and key KEY.

It exits 0 on SIGTERM or SIGINT, or when its stdin reaches EOF (its parent went away).
"""

import argparse
import gzip
import io
import json
import os
import signal
import socket
import ssl
import sys
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.protobuf import message as pb_message
from google.protobuf import unknown_fields as pb_unknown
from google.protobuf.internal import api_implementation
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)


def render_value(v):
    """An AnyValue as the Rust harness renders it (tests/src/record.rs, render_value)."""
    if v is None:
        return "empty:"
    kind = v.WhichOneof("value")
    if kind is None:
        return "empty:"
    if kind == "string_value":
        return v.string_value
    if kind == "bool_value":
        return "bool:" + ("true" if v.bool_value else "false")
    if kind == "int_value":
        return "int:%d" % v.int_value
    if kind == "double_value":
        d = v.double_value
        if d == int(d) and abs(d) < 1e16:
            return "double:%d" % int(d)
        return "double:" + repr(d)
    if kind == "bytes_value":
        return "bytes:[" + ", ".join("%02x" % b for b in v.bytes_value) + "]"
    return "other:" + kind


def unknown_count(msg):
    return len(pb_unknown.UnknownFieldSet(msg))


def flatten(req):
    """Every record of an ExportLogsServiceRequest, in wire order, and the unknown fields met."""
    records = []
    unknown = unknown_count(req)
    for rl in req.resource_logs:
        unknown += unknown_count(rl)
        service = ""
        if rl.HasField("resource"):
            unknown += unknown_count(rl.resource)
            for kv in rl.resource.attributes:
                if kv.key == "service.name":
                    service = render_value(kv.value if kv.HasField("value") else None)
        for sl in rl.scope_logs:
            unknown += unknown_count(sl)
            scope = sl.scope.name if sl.HasField("scope") else ""
            for lr in sl.log_records:
                unknown += unknown_count(lr)
                body = None
                if lr.HasField("body") and lr.body.WhichOneof("value") == "string_value":
                    body = lr.body.string_value
                records.append(
                    {
                        "service": service,
                        "scope": scope,
                        "severity_number": int(lr.severity_number),
                        "body": body,
                        "attributes": [
                            [kv.key, render_value(kv.value if kv.HasField("value") else None)]
                            for kv in lr.attributes
                        ],
                    }
                )
    return records, unknown


class CountingReader(io.RawIOBase):
    """The socket's read side, counting every byte received."""

    def __init__(self, sock):
        self._sock = sock
        self.count = 0

    def readable(self):
        return True

    def readinto(self, b):
        n = self._sock.recv_into(b)
        self.count += n
        return n


class Results:
    def __init__(self, path):
        self._f = open(path, "a", encoding="utf-8")
        self._lock = threading.Lock()
        self._conns = 0

    def next_conn(self):
        with self._lock:
            n = self._conns
            self._conns += 1
            return n

    def conn_of(self, peer):
        """(connection number, request number on it) for a gRPC call from `peer`."""
        with self._lock:
            if not hasattr(self, "_peers"):
                self._peers = {}
            conn, seq = self._peers.get(peer, (None, 0))
            if conn is None:
                conn = self._conns
                self._conns += 1
            self._peers[peer] = (conn, seq + 1)
            return conn, seq

    def write(self, entry):
        line = json.dumps(entry, separators=(",", ":")) + "\n"
        with self._lock:
            self._f.write(line)
            self._f.flush()

    def close(self):
        with self._lock:
            self._f.close()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "dt-py-receiver/1"
    disable_nagle_algorithm = True

    def setup(self):
        super().setup()
        self._counter = CountingReader(self.connection)
        self.rfile = io.BufferedReader(self._counter, 65536)
        self._conn = self.server.results.next_conn()
        self._seq = 0

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        pass

    def send_error(self, code, message=None, explain=None):
        # The HTTP stack refused the request (bad request line, headers, ...): record it.
        self.server.results.write(
            {
                "conn": self._conn,
                "seq_on_conn": self._seq,
                "http_error": "%d %s" % (code, message or ""),
                "raw_requestline": (getattr(self, "raw_requestline", b"") or b"").decode("latin-1"),
                "conn_bytes": self._counter.count,
                "status": code,
            }
        )
        self._seq += 1
        super().send_error(code, message, explain)

    def _read_chunked(self):
        body = bytearray()
        while True:
            line = self.rfile.readline(65537)
            if not line:
                return bytes(body), False
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                return bytes(body), False
            if size == 0:
                while True:
                    t = self.rfile.readline(65537)
                    if not t:
                        return bytes(body), False
                    if t in (b"\r\n", b"\n"):
                        return bytes(body), True
            chunk = self.rfile.read(size)
            body += chunk
            if len(chunk) < size or self.rfile.read(2) != b"\r\n":
                return bytes(body), False

    def _handle(self):
        headers = [[k, v] for k, v in self.headers.items()]
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        chunked = "chunked" in te
        cl_text = self.headers.get("Content-Length")
        entry = {
            "conn": self._conn,
            "seq_on_conn": self._seq,
            "method": self.command,
            "path": self.path,
            "version": self.request_version,
            "headers": headers,
            "content_length": None,
            "chunked": chunked,
        }
        self._seq += 1
        complete = True
        if chunked:
            body, complete = self._read_chunked()
        elif cl_text is not None:
            try:
                n = int(cl_text.strip())
            except ValueError:
                n = None
            entry["content_length"] = n
            if n is None:
                body, complete = b"", False
            else:
                body = self.rfile.read(n) if n > 0 else b""
                complete = len(body) == n
        else:
            body = b""
        entry["body_len"] = len(body)
        entry["body_crc32"] = zlib.crc32(body)
        entry["complete"] = complete
        entry["conn_bytes"] = self._counter.count

        status = 200
        resp = b""
        ctype = (self.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        if self.command == "POST" and self.path == "/v1/logs" and ctype == "application/x-protobuf":
            entry["decode_ok"] = False
            entry["decode_error"] = None
            try:
                if not complete:
                    raise ValueError("incomplete body (%d bytes)" % len(body))
                enc = (self.headers.get("Content-Encoding") or "identity").strip().lower()
                if enc == "gzip":
                    data = gzip.decompress(body)
                elif enc == "identity":
                    data = body
                else:
                    raise ValueError("unsupported content-encoding " + enc)
                req = ExportLogsServiceRequest.FromString(data)
                records, unknown = flatten(req)
                entry["decode_ok"] = True
                entry["unknown_fields"] = unknown
                entry["records"] = records
                resp = ExportLogsServiceResponse().SerializeToString()
            except (pb_message.DecodeError, ValueError, OSError, EOFError) as e:
                entry["decode_error"] = "%s: %s" % (type(e).__name__, e)
                status = 400
        elif not complete:
            status = 400
        entry["status"] = status
        self.server.results.write(entry)

        if not complete:
            self.close_connection = True
        self.send_response(status)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(resp)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(resp)

    do_POST = _handle
    do_GET = _handle
    do_PUT = _handle
    do_HEAD = _handle


LOGS_SERVICE = "opentelemetry.proto.collector.logs.v1.LogsService"


def start_grpc(host, port, results, tls):
    """An OTLP/gRPC LogsService on HOST:PORT (over TLS with tls = (CERT, KEY)); returns (server,
    port)."""
    from concurrent import futures

    import grpc

    def export(raw, context):
        conn, seq = results.conn_of(context.peer())
        entry = {
            "conn": conn,
            "seq_on_conn": seq,
            "method": "POST",
            "path": "/%s/Export" % LOGS_SERVICE,
            "version": "HTTP/2",
            "headers": [[k, v if isinstance(v, str) else repr(v)] for k, v in context.invocation_metadata()],
            "content_length": None,
            "chunked": False,
            "body_len": len(raw),
            "body_crc32": zlib.crc32(raw),
            "complete": True,
            "conn_bytes": 0,
            "decode_ok": False,
            "decode_error": None,
        }
        try:
            req = ExportLogsServiceRequest.FromString(raw)
            records, unknown = flatten(req)
            entry["decode_ok"] = True
            entry["unknown_fields"] = unknown
            entry["records"] = records
            entry["status"] = 200
        except pb_message.DecodeError as e:
            entry["decode_error"] = "%s: %s" % (type(e).__name__, e)
            entry["status"] = 400
        results.write(entry)
        if entry["status"] != 200:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, entry["decode_error"])
        return ExportLogsServiceResponse().SerializeToString()

    handler = grpc.method_handlers_generic_handler(
        LOGS_SERVICE,
        # No (de)serializers: the method gets and returns bytes.
        {"Export": grpc.unary_unary_rpc_method_handler(export)},
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), handlers=[handler])
    where = "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)
    if tls:
        with open(tls[0], "rb") as c, open(tls[1], "rb") as k:
            creds = grpc.ssl_server_credentials([(k.read(), c.read())])
        bound = server.add_secure_port(where, creds)
    else:
        bound = server.add_insecure_port(where)
    server.start()
    return server, bound


class Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False


class Server6(Server):
    address_family = socket.AF_INET6


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--results", required=True, help="file to append JSON lines to")
    ap.add_argument("--grpc", action="store_true", help="serve OTLP/gRPC instead of OTLP/HTTP")
    ap.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"), help="serve over TLS")
    ap.add_argument(
        "--any-protobuf-backend",
        action="store_true",
        help="do not insist on protobuf's upb backend",
    )
    args = ap.parse_args()

    backend = api_implementation.Type()
    if backend != "upb" and not args.any_protobuf_backend:
        print("receiver.py: protobuf backend is %r, not 'upb'" % backend, file=sys.stderr)
        return 2

    stop = threading.Event()
    if args.grpc:
        results = Results(args.results)
        grpc_server, port = start_grpc(args.host, args.port, results, args.tls)
    else:
        cls = Server6 if ":" in args.host else Server
        server = cls((args.host, args.port), Handler)
        server.results = Results(args.results)
        port = server.server_address[1]
        if args.tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(args.tls[0], args.tls[1])
            # The handshake happens in accept; one a client fails is skipped by socketserver.
            server.socket = ctx.wrap_socket(server.socket, server_side=True)

    def on_signal(_signum, _frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def watch_stdin():
        # The raw fd: a daemon thread blocked in a buffered read would hold the buffer's lock
        # at interpreter shutdown.
        try:
            while os.read(0, 4096):
                pass
        except OSError:
            pass
        stop.set()

    threading.Thread(target=watch_stdin, name="stdin-watch", daemon=True).start()
    if args.grpc:
        print(json.dumps({"listening": args.host, "port": port, "protobuf": backend}), flush=True)
        while not stop.wait(0.5):
            pass
        # Wait for calls in progress, which write to the results, before closing them.
        grpc_server.stop(grace=None).wait()
        results.close()
        return 0
    serving = threading.Thread(target=server.serve_forever, name="serve", daemon=True)
    serving.start()
    print(json.dumps({"listening": args.host, "port": port, "protobuf": backend}), flush=True)

    while not stop.wait(0.5):
        if not serving.is_alive():
            print("receiver.py: the server thread died", file=sys.stderr)
            return 1
    server.shutdown()
    server.server_close()
    server.results.close()
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter finalization: daemon threads (stdin watch, keep-alive connections) may be
    # blocked in reads.
    os._exit(code)
