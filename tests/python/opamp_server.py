#!/usr/bin/env python3
"""An OpAMP server (plain HTTP transport) for dt's tests, written from the OpAMP specification.

It is an independent implementation to run dt-agent's OpAMP client against: it follows the
specification's sections on the Plain HTTP Transport, AgentToServer / ServerToAgent, Status
Reporting, Agent Status Compression, RemoteConfigStatus and Throttling, and uses only the
message classes of opentelemetry-opamp-client (opamp_pb2), never dt's code.

    python opamp_server.py [--tls CERT KEY [CLIENT_CA]]

binds 127.0.0.1 on a free port, prints `port N`, and answers POST on any path (over TLS with
the PEM certificate chain CERT and key KEY when --tls is given, and requiring a client
certificate signed by the CA of CLIENT_CA when that is given too). The test drives
it with one JSON command per line on stdin and reads one JSON answer line per command on stdout:
set_config {files}, clear_config, report_full_state, fail {count, retry_after?, status?},
unavailable {count, retry_ns?}, require_header {name, value?}, capabilities {value},
max_body {bytes} (larger requests get 413), messages,
state, quit (see tests/src/opamp.rs). EOF on stdin exits.
"""

import hashlib
import json
import os
import ssl
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.protobuf.message import DecodeError
from opentelemetry._opamp.proto import opamp_pb2 as pb

MAX_BODY = 64 << 20  # the spec's recommended limit, for request and response bodies
ACCEPTS_REMOTE_CONFIG = 0x2  # AgentCapabilities.AcceptsRemoteConfig
REPORT_FULL_STATE = 0x1  # ServerToAgentFlags.ReportFullState
SERVER_CAPABILITIES = 0x1 | 0x2 | 0x4  # AcceptsStatus | OffersRemoteConfig | AcceptsEffectiveConfig
SUB_MESSAGES = ("description", "health", "effective_config", "remote_config_status")


class State:
    lock = threading.Lock()
    messages = []  # summaries of accepted AgentToServer messages, in arrival order
    rejected = []  # arrival times of POSTs answered 503 by request
    bad_requests = []  # {t, status, error} for requests refused before they became messages
    agents = {}  # instance_uid bytes -> what the server knows (status compression)
    remote_config = None  # AgentRemoteConfig on offer, or None
    full_state_once = False
    fail_count = 0
    fail_retry_after = None
    fail_status = 503
    unavailable_count = 0  # answers of ServerErrorResponse UNAVAILABLE (the message not processed)
    unavailable_retry_ns = None
    required_header = None  # (name, value): requests without it are answered 401
    capabilities = SERVER_CAPABILITIES
    max_body = MAX_BODY  # requests over it are answered 413 (the spec's Plain HTTP size limit)


def any_value(v):
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in v.kvlist_value.values}
    if kind == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, kind) if kind else None


def summarise(m):
    """The sub-messages of an AgentToServer as JSON; an absent one is None."""
    s = dict.fromkeys(SUB_MESSAGES)
    if m.HasField("agent_description"):
        d = m.agent_description
        s["description"] = {
            "identifying": {kv.key: any_value(kv.value) for kv in d.identifying_attributes},
            "non_identifying": {kv.key: any_value(kv.value) for kv in d.non_identifying_attributes},
        }
    if m.HasField("health"):
        h = m.health
        s["health"] = {
            "healthy": h.healthy, "status": h.status, "last_error": h.last_error,
            "start_time_unix_nano": h.start_time_unix_nano,
            "status_time_unix_nano": h.status_time_unix_nano,
        }
    if m.HasField("effective_config"):
        files = m.effective_config.config_map.config_map
        s["effective_config"] = {k: f.body.decode("utf-8", "replace") for k, f in files.items()}
    if m.HasField("remote_config_status"):
        r = m.remote_config_status
        try:
            status = pb.RemoteConfigStatuses.Name(r.status).removeprefix("RemoteConfigStatuses_")
        except ValueError:
            status = str(r.status)
        s["remote_config_status"] = {
            "hash": r.last_remote_config_hash.hex(), "status": status,
            "error_message": r.error_message,
        }
    return s


def process(m):
    """Status processing for one AgentToServer (State.lock held): the ServerToAgent answer."""
    agent = State.agents.get(m.instance_uid)
    flags = 0
    if agent is None:
        agent = State.agents[m.instance_uid] = dict.fromkeys(SUB_MESSAGES)
        agent.update(capabilities=0, config_hash=None)
        # A new agent may start at any sequence number, but its first report must be full.
        if not m.HasField("agent_description"):
            flags |= REPORT_FULL_STATE
    elif m.sequence_num != agent["last_seq"] + 1:
        flags |= REPORT_FULL_STATE  # a message was missed: our status may be stale
    agent["last_seq"] = m.sequence_num
    # Capabilities MUST always be set, but a poll may carry only instance_uid: keep the last.
    if m.capabilities:
        agent["capabilities"] = m.capabilities
    for k, v in summarise(m).items():
        if v is not None:
            agent[k] = v
    if m.HasField("remote_config_status"):
        agent["config_hash"] = m.remote_config_status.last_remote_config_hash
    if State.full_state_once:
        flags |= REPORT_FULL_STATE
        State.full_state_once = False
    out = pb.ServerToAgent(
        instance_uid=m.instance_uid, flags=flags, capabilities=State.capabilities
    )
    rc = State.remote_config
    # Offered only to agents that accept remote config, until they report its hash.
    accepts = agent["capabilities"] & ACCEPTS_REMOTE_CONFIG
    if rc is not None and accepts and agent["config_hash"] != rc.config_hash:
        out.remote_config.CopyFrom(rc)
    return out


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "dt-opamp-test-server/1"

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        pass

    def reply(self, status, body=b"", headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def refuse(self, t, status, error, body=b"", headers=()):
        with State.lock:
            State.bad_requests.append({"t": t, "status": status, "error": error})
        self.reply(status, body, headers)

    def read_body(self):
        """The raw body, or None when it is over the limit."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            body = bytearray()
            while (size := int(self.rfile.readline(1024).split(b";")[0], 16)) > 0:
                if len(body) + size > State.max_body:
                    return None
                body += self.rfile.read(size)
                self.rfile.readline(1024)
            while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                pass
            return bytes(body)
        n = int(self.headers.get("Content-Length") or 0)
        if n > State.max_body:
            self.rfile.read(n)  # read, so that the answer is not a reset
            return None
        return self.rfile.read(n)

    def do_POST(self):
        t = time.time()
        try:
            body = self.read_body()
        except ValueError as e:  # a bad Content-Length or chunk size: the stream is lost
            self.close_connection = True
            return self.refuse(t, 400, "framing: %s" % e)
        if body is None:
            self.close_connection = True
            return self.refuse(t, 413, "request body over %d bytes" % State.max_body)
        with State.lock:
            fail = State.fail_count > 0
            if fail:
                State.fail_count -= 1
                State.rejected.append(t)
                retry_after, status = State.fail_retry_after, State.fail_status
            required = State.required_header
        if fail:
            headers = [] if retry_after is None else [("Retry-After", str(retry_after))]
            return self.reply(status, b"", headers)
        if required is not None and self.headers.get(required[0]) != required[1]:
            return self.refuse(t, 401, "%s: %r" % (required[0], self.headers.get(required[0])))
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "application/x-protobuf":
            return self.refuse(t, 415, "content-type %r" % self.headers.get("Content-Type"))
        encoding = (self.headers.get("Content-Encoding") or "identity").strip().lower()
        if encoding == "gzip":
            d = zlib.decompressobj(wbits=31)
            try:
                body = d.decompress(body, MAX_BODY + 1)
            except zlib.error as e:
                return self.refuse(t, 400, "gzip: %s" % e)
            if len(body) > MAX_BODY:
                return self.refuse(t, 413, "decompressed body over %d bytes" % MAX_BODY)
            if not d.eof:
                return self.refuse(t, 400, "gzip: truncated body")
        elif encoding != "identity":
            return self.refuse(t, 415, "content-encoding %r" % encoding)
        try:
            m = pb.AgentToServer.FromString(body)
            if len(m.instance_uid) != 16:
                raise ValueError("instance_uid is %d bytes, not 16" % len(m.instance_uid))
        except (DecodeError, ValueError) as e:
            # Bad Request: a ServerToAgent with error_response BAD_REQUEST.
            err = pb.ServerErrorResponse(type=1, error_message=str(e))
            body = pb.ServerToAgent(error_response=err).SerializeToString()
            return self.refuse(t, 400, str(e), body, [("Content-Type", "application/x-protobuf")])
        with State.lock:
            unavailable = State.unavailable_count > 0
            if unavailable:
                State.unavailable_count -= 1
                State.rejected.append(t)
                retry_ns = State.unavailable_retry_ns
        if unavailable:
            # Throttling: "the Server can reply with ServerErrorResponse of UNAVAILABLE type".
            err = pb.ServerErrorResponse(type=2, error_message="overloaded")
            if retry_ns is not None:
                err.retry_info.retry_after_nanoseconds = retry_ns
            body = pb.ServerToAgent(instance_uid=m.instance_uid, error_response=err)
            return self.reply(
                200, body.SerializeToString(), [("Content-Type", "application/x-protobuf")]
            )
        entry = {
            "t": t, "instance_uid": m.instance_uid.hex(), "sequence_num": m.sequence_num,
            "capabilities": m.capabilities, "flags": m.flags, **summarise(m),
            "disconnect": m.HasField("agent_disconnect"),
            "uid_header": self.headers.get("OpAMP-Instance-UID"),
            "content_type": self.headers.get("Content-Type"),
            "content_encoding": self.headers.get("Content-Encoding"),
        }
        with State.lock:
            answer = process(m)
            offered = None
            if answer.HasField("remote_config"):
                offered = answer.remote_config.config_hash.hex()
            entry["response"] = {"flags": answer.flags, "remote_config_hash": offered}
            State.messages.append(entry)
        out = answer.SerializeToString()
        headers = [("Content-Type", "application/x-protobuf")]
        if len(out) > MAX_BODY:  # never send an oversized response (the spec's MUST)
            print("opamp_server.py: response of %d bytes not sent" % len(out), file=sys.stderr)
            return self.reply(500)
        accept = [a.strip() for a in (self.headers.get("Accept-Encoding") or "").lower().split(",")]
        if "gzip" in accept:  # "SHOULD compress the response if the Client indicated it can"
            c = zlib.compressobj(wbits=31)
            out = c.compress(out) + c.flush()
            headers.append(("Content-Encoding", "gzip"))
        self.reply(200, out, headers)


def command(c):
    """One stdin command (State.lock held): its JSON answer."""
    name = c.get("cmd")
    if name == "set_config":
        files = sorted(c["files"].items())
        h = hashlib.sha256()
        cm = pb.AgentConfigMap()
        for k, v in files:
            body = v.encode("utf-8")
            h.update(k.encode("utf-8") + b"\0" + body + b"\0")
            ctype = "application/toml" if k.endswith(".toml") else "text/plain"
            cm.config_map[k].CopyFrom(pb.AgentConfigFile(body=body, content_type=ctype))
        State.remote_config = pb.AgentRemoteConfig(config=cm, config_hash=h.digest())
        return {"hash": h.hexdigest()}
    if name == "clear_config":
        State.remote_config = None
    elif name == "report_full_state":
        State.full_state_once = True
    elif name == "fail":
        State.fail_count, State.fail_retry_after = int(c["count"]), c.get("retry_after")
        State.fail_status = int(c.get("status", 503))
    elif name == "unavailable":
        State.unavailable_count, State.unavailable_retry_ns = int(c["count"]), c.get("retry_ns")
    elif name == "require_header":
        v = c.get("value")
        State.required_header = None if v is None else (c["name"], v)
    elif name == "capabilities":
        State.capabilities = int(c["value"])
    elif name == "max_body":
        State.max_body = int(c["bytes"])
    elif name == "messages":
        return {
            "messages": State.messages,
            "rejected": State.rejected,
            "bad_requests": State.bad_requests,
        }
    elif name == "state":
        keys = SUB_MESSAGES + ("last_seq", "capabilities")
        return {"agents": {uid.hex(): {k: a[k] for k in keys} for uid, a in State.agents.items()}}
    elif name != "quit":
        return {"error": "unknown command %r" % name}
    return {"ok": True}


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    if len(sys.argv) in (4, 5) and sys.argv[1] == "--tls":
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(sys.argv[2], sys.argv[3])
        if len(sys.argv) == 5:
            # Client authentication: a certificate signed by this CA, or no handshake.
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(sys.argv[4])
        # A client that refuses the certificate fails its own handshake (in accept, which
        # socketserver skips), not the server.
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print("port %d" % server.server_address[1], flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            c = json.loads(line)
            with State.lock:
                answer = json.dumps(command(c))
        except (ValueError, KeyError, TypeError) as e:
            c, answer = {}, json.dumps({"error": "%s: %s" % (type(e).__name__, e)})
        print(answer, flush=True)
        if c.get("cmd") == "quit":
            break
    sys.stdout.flush()
    os._exit(0)  # skip finalization: keep-alive handler threads may be blocked in reads


if __name__ == "__main__":
    main()
