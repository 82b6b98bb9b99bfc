#!/usr/bin/env python3
"""Exports a deterministic plan of log records with the official OpenTelemetry Python SDK.

dt's tests use it as a second real OTLP/HTTP client: the SDK's LoggerProvider and log record
processors feeding OTLPLogExporter (opentelemetry.exporter.otlp.proto.http._log_exporter), which
encodes with the upb protobuf runtime and sends with requests/urllib3 (http.client), so the
request head and the body go out in separate writes.

The plan is JSON on stdin:
  {
    "endpoint": "http://127.0.0.1:4318/v1/logs",
    "mode": "batch" | "simple" | "direct",
    "batch_size": 200,
    "base_time_nanos": 1704067200000000000,
    "timeout_secs": 20,
    "protocol": "http/protobuf" | "grpc",                        (optional, http/protobuf)
    "compression": "none" | "gzip",                              (optional, none)
    "ca_file": "/path/ca.pem",        (optional: the CA to trust for an https:// endpoint)
    "services": [
      {"service": "checkout",
       "records": [{"scope": "http", "severity_number": 9, "body": "text",
                    "event_name": "order.placed",                  (optional)
                    "attributes": [["http.route", "/healthz"], ["http.status_code", 503],
                                   ["retry", true]]}]}         (string, integer or boolean values)
    ]
  }
One LoggerProvider per service (Resource with service.name), one logger per scope, used one
service after another. Modes:
  batch   BatchLogRecordProcessor (max_export_batch_size = batch_size), then force_flush and
          shutdown, both checked
  simple  SimpleLogRecordProcessor: one request per record
  direct  exporter.export() called with batches of batch_size records, in order
Record i of the whole plan gets timestamp base_time_nanos + i; severity_number 0 emits none.
With protocol grpc the exporter is the SDK's OTLP/gRPC one (grpcio, HTTP/2 without TLS), and
endpoint is "http://HOST:PORT"; http_requests then counts the exporter's export calls (a retry
inside one call does not show: count what the receiver got).

The exporter sits behind CheckedExporter, which records every export's result and the records it
carried, as the exporter's own encoder (encode_logs) encodes them. The report on stdout:
  batches_ok, batches_failed, errors, flush_errors, records_sent, records_failed,
  http_requests (POSTs the HTTP session made: retries would show here),
  elapsed_secs (start of the first export to the end of the last),
  sent: [{service, scope, severity_number, body, attributes, field_len}] for successful batches,
        field_len being the LogRecord's whole encoding inside ScopeLogs (tag, length, message),
  versions.
Exit status 0 only when every export and flush succeeded and every planned record went out.
"""

import json
import sys
import threading
import time

import requests
from google.protobuf import __version__ as protobuf_version
from google.protobuf.internal import api_implementation
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.sdk._logs import LoggerProvider, LogRecordProcessor, ReadableLogRecord
from opentelemetry.sdk._logs.export import (
    BatchLogRecordProcessor,
    LogRecordExporter,
    LogRecordExportResult,
    SimpleLogRecordProcessor,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.version import __version__ as sdk_version


def varint_len(v):
    n = 1
    while v >= 0x80:
        v >>= 7
        n += 1
    return n


def render_value(v):
    kind = v.WhichOneof("value")
    if kind == "string_value":
        return v.string_value
    if kind is None:
        return "empty:"
    if kind == "bool_value":
        return "bool:" + ("true" if v.bool_value else "false")
    if kind == "int_value":
        return "int:%d" % v.int_value
    return "other:" + kind


def carried(batch):
    """The records of `batch` as the exporter encodes them, with their field lengths."""
    req = encode_logs(batch)
    out = []
    for rl in req.resource_logs:
        service = ""
        for kv in rl.resource.attributes:
            if kv.key == "service.name":
                service = render_value(kv.value)
        for sl in rl.scope_logs:
            for lr in sl.log_records:
                n = lr.ByteSize()
                body = lr.body.string_value if lr.body.WhichOneof("value") == "string_value" else None
                out.append(
                    {
                        "service": service,
                        "scope": sl.scope.name,
                        "severity_number": int(lr.severity_number),
                        "body": body,
                        "attributes": [[kv.key, render_value(kv.value)] for kv in lr.attributes],
                        "field_len": 1 + varint_len(n) + n,
                    }
                )
    return out


class CountingSession(requests.Session):
    """The exporter's HTTP session, counting the requests it makes."""

    def __init__(self):
        super().__init__()
        self.requests_made = 0

    def request(self, *args, **kwargs):
        self.requests_made += 1
        return super().request(*args, **kwargs)


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.ok = 0
        self.failed = 0
        self.errors = []
        self.sent = []
        self.records_failed = 0
        self.first_start = None
        self.last_end = None


class CheckedExporter(LogRecordExporter):
    """Wraps OTLPLogExporter: records each export's result and what it carried."""

    def __init__(self, inner, tally):
        self._inner = inner
        self._tally = tally

    calls = 0

    def export(self, batch):
        self.calls += 1
        recs = carried(batch)
        start = time.monotonic()
        try:
            result = self._inner.export(batch)
        except Exception as e:  # noqa: BLE001 (any failure must show in the report)
            result = e
        end = time.monotonic()
        t = self._tally
        with t.lock:
            if t.first_start is None:
                t.first_start = start
            t.last_end = end
            if result == LogRecordExportResult.SUCCESS:
                t.ok += 1
                t.sent.extend(recs)
            else:
                t.failed += 1
                t.records_failed += len(recs)
                t.errors.append("export of %d records: %r" % (len(recs), result))
        return result if isinstance(result, LogRecordExportResult) else LogRecordExportResult.FAILURE

    def shutdown(self):
        self._inner.shutdown()

    def force_flush(self, timeout_millis=30000):
        return self._inner.force_flush(timeout_millis)


class Collecting(LogRecordProcessor):
    """Keeps the emitted records, for direct mode (as BatchLogRecordProcessor makes them)."""

    def __init__(self):
        self.records = []

    def on_emit(self, log_record):
        self.records.append(
            ReadableLogRecord(
                log_record=log_record.log_record,
                resource=log_record.resource,
                instrumentation_scope=log_record.instrumentation_scope,
                limits=log_record.limits,
            )
        )

    def shutdown(self):
        pass

    def force_flush(self, timeout_millis=30000):
        return True


def emit_all(provider, records, seq, base):
    loggers = {}
    for r in records:
        scope = r.get("scope", "")
        logger = loggers.get(scope)
        if logger is None:
            logger = loggers[scope] = provider.get_logger(scope, "1.0.0")
        t = base + seq
        seq += 1
        n = int(r.get("severity_number", 0))
        sev = SeverityNumber(n) if n else None
        attrs = {}
        for k, v in r.get("attributes", []):
            attrs[k] = v
        logger.emit(
            timestamp=t,
            observed_timestamp=t,
            severity_number=sev,
            severity_text=sev.name if sev else None,
            body=r.get("body"),
            attributes=attrs or None,
            event_name=r.get("event_name"),
        )
    return seq


def main():
    plan = json.load(sys.stdin)
    endpoint = plan["endpoint"]
    mode = plan.get("mode", "batch")
    batch_size = max(1, int(plan.get("batch_size", 512)))
    base = int(plan.get("base_time_nanos", 1_704_067_200_000_000_000))
    timeout = float(plan.get("timeout_secs", 20))
    protocol = plan.get("protocol", "http/protobuf")
    gzip = plan.get("compression", "none") == "gzip"
    ca_file = plan.get("ca_file")

    tally = Tally()
    flush_errors = []
    http_requests = 0
    seq = 0
    planned = 0
    for svc in plan["services"]:
        service, records = svc["service"], svc["records"]
        planned += len(records)
        session = CountingSession()
        if protocol == "grpc":
            # Imported here: only the gRPC runs need grpcio.
            from opentelemetry.exporter.otlp.proto.grpc._log_exporter import (
                OTLPLogExporter as GrpcLogExporter,
            )
            import grpc

            credentials = None
            if ca_file:
                with open(ca_file, "rb") as f:
                    credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
            inner = GrpcLogExporter(
                endpoint=endpoint,
                insecure=not ca_file,
                credentials=credentials,
                timeout=timeout,
                compression=grpc.Compression.Gzip if gzip else grpc.Compression.NoCompression,
            )
        elif protocol == "http/protobuf":
            inner = OTLPLogExporter(
                endpoint=endpoint,
                timeout=timeout,
                session=session,
                certificate_file=ca_file,
                compression=Compression.Gzip if gzip else Compression.NoCompression,
            )
        else:
            raise SystemExit("unknown protocol %r" % protocol)
        exporter = CheckedExporter(inner, tally)
        provider = LoggerProvider(resource=Resource.create({"service.name": service}), shutdown_on_exit=False)
        if mode == "batch":
            provider.add_log_record_processor(
                BatchLogRecordProcessor(
                    exporter,
                    schedule_delay_millis=200,
                    max_export_batch_size=batch_size,
                    max_queue_size=len(records) + 16,
                )
            )
            seq = emit_all(provider, records, seq, base)
            if not provider.force_flush(int(timeout * 1000) * 4):
                flush_errors.append("%s: force_flush returned False" % service)
            provider.shutdown()
        elif mode == "simple":
            provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
            seq = emit_all(provider, records, seq, base)
            provider.shutdown()
        elif mode == "direct":
            collecting = Collecting()
            provider.add_log_record_processor(collecting)
            seq = emit_all(provider, records, seq, base)
            for i in range(0, len(collecting.records), batch_size):
                exporter.export(collecting.records[i : i + batch_size])
            exporter.shutdown()
            provider.shutdown()
        else:
            raise SystemExit("unknown mode %r" % mode)
        http_requests += session.requests_made if protocol != "grpc" else exporter.calls

    elapsed = 0.0
    if tally.first_start is not None:
        elapsed = tally.last_end - tally.first_start
    report = {
        "batches_ok": tally.ok,
        "batches_failed": tally.failed,
        "errors": tally.errors,
        "flush_errors": flush_errors,
        "records_planned": planned,
        "records_sent": len(tally.sent),
        "records_failed": tally.records_failed,
        "http_requests": http_requests,
        "elapsed_secs": elapsed,
        "sent": tally.sent,
        "versions": {
            "python": sys.version.split()[0],
            "opentelemetry_sdk": sdk_version,
            "protobuf": protobuf_version,
            "protobuf_backend": api_implementation.Type(),
        },
    }
    json.dump(report, sys.stdout, separators=(",", ":"))
    sys.stdout.write("\n")
    ok = tally.failed == 0 and not flush_errors and len(tally.sent) == planned
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
