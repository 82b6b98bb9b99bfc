#!/usr/bin/env node
/*
 * Exports a deterministic plan of log records with the official OpenTelemetry Node.js SDK.
 *
 * dt's tests use it as a third real OTLP/HTTP client: @opentelemetry/sdk-logs' LoggerProvider and
 * log record processors feeding OTLPLogExporter (@opentelemetry/exporter-logs-otlp-proto,
 * http/protobuf, no compression), which pipes the body into Node's http.request without a
 * Content-Length: every export goes out as `Transfer-Encoding: chunked`, on a keep-alive agent.
 *
 * Runs with NODE_PATH=<workspace>/target/node-client/node_modules (`cargo xtask setup` installs
 * the pinned packages of tests/node/package-lock.json there).
 *
 * The plan is JSON on stdin (the same as tests/python/export_logs.py's, plus optional fields):
 *   {
 *     "endpoint": "http://127.0.0.1:4318/v1/logs",
 *     "mode": "batch" | "simple" | "direct",
 *     "batch_size": 200,
 *     "base_time_nanos": 1704067200000000000,
 *     "timeout_secs": 20,
 *     "services": [
 *       {"service": "checkout",
 *        "records": [{"scope": "http", "severity_number": 9, "body": "text",
 *                     "event_name": "order.placed",                 (optional)
 *                     "attributes": [["http.route", "/healthz"], ["http.status_code", 503],
 *                                    ["retry", true]]}]}        (string, integer or boolean values)
 *     ]
 *   }
 * One LoggerProvider (Resource with only service.name) and one exporter per service, one logger
 * per scope (version 1.0.0), used one service after another. Modes:
 *   batch   BatchLogRecordProcessor (maxExportBatchSize = batch_size), then forceFlush and
 *           shutdown, both checked
 *   simple  SimpleLogRecordProcessor: one request per record, each export awaited before
 *           the next record is emitted
 *   direct  exporter.export() called with batches of batch_size records, in order, each awaited
 *           (with "pause_dir" and "pause_before": [k, ...], before batch k it creates
 *           <pause_dir>/paused-k and waits until <pause_dir>/resume-k exists: the test changes
 *           the agent between batches that share one keep-alive connection)
 * "protocol": "json" exports with @opentelemetry/exporter-logs-otlp-http (http/json) instead; the
 * report's sent_bodies are still the protobuf encoding of what each export carried.
 * "compression": "gzip" makes the exporter gzip each body (sent_bodies stay uncompressed).
 * Record i of the whole plan gets timestamp base_time_nanos + i (exactly, as HrTime); severity
 * number 0 emits none; a null body emits none.
 *
 * The exporter sits behind CheckedExporter, which records every export's result and the exact
 * request body it carried (ProtobufLogsSerializer, the exporter's own serializer, is
 * deterministic). The report on stdout, one JSON line:
 *   batches_ok, batches_failed, errors, flush_errors, records_planned, records_sent,
 *   records_failed, http_requests (requests http.request made: retries would show here),
 *   elapsed_secs (start of the first export to the end of the last), pid (this process's),
 *   sent_bodies: [base64 ExportLogsServiceRequest] of the successful exports, in export order,
 *   versions.
 * Exit status 0 only when every export and flush succeeded and every planned record went out.
 */
'use strict';

const http = require('http');
const https = require('https');
const nodeModule = require('module');

// Count every request the exporter's transport makes. It loads http with a dynamic import(),
// whose named exports follow the CommonJS module once synced.
let httpRequests = 0;
for (const mod of [http, https]) {
  const original = mod.request;
  mod.request = function countedRequest(...args) {
    httpRequests += 1;
    return original.apply(this, args);
  };
}
nodeModule.syncBuiltinESMExports();

const { OTLPLogExporter } = require('@opentelemetry/exporter-logs-otlp-proto');
// "protocol": "json" in the plan: the http/json exporter (the same transport, a JSON body).
const { OTLPLogExporter: OTLPLogExporterJson } = require('@opentelemetry/exporter-logs-otlp-http');
const {
  LoggerProvider,
  BatchLogRecordProcessor,
  SimpleLogRecordProcessor,
} = require('@opentelemetry/sdk-logs');
const { resourceFromAttributes } = require('@opentelemetry/resources');
const { ProtobufLogsSerializer } = require('@opentelemetry/otlp-transformer');
const { ExportResultCode } = require('@opentelemetry/core');

const SEVERITY_TEXT = [
  undefined,
  'TRACE', 'TRACE2', 'TRACE3', 'TRACE4',
  'DEBUG', 'DEBUG2', 'DEBUG3', 'DEBUG4',
  'INFO', 'INFO2', 'INFO3', 'INFO4',
  'WARN', 'WARN2', 'WARN3', 'WARN4',
  'ERROR', 'ERROR2', 'ERROR3', 'ERROR4',
  'FATAL', 'FATAL2', 'FATAL3', 'FATAL4',
];

function version(pkg) {
  try {
    return require(`${pkg}/package.json`).version;
  } catch (e) {
    // Packages whose exports map hides package.json.
    const path = require('path');
    const fs = require('fs');
    for (const dir of module.paths.concat((process.env.NODE_PATH || '').split(path.delimiter))) {
      const p = path.join(dir, pkg, 'package.json');
      if (dir && fs.existsSync(p)) return JSON.parse(fs.readFileSync(p, 'utf8')).version;
    }
    return null;
  }
}

class Tally {
  constructor() {
    this.ok = 0;
    this.failed = 0;
    this.errors = [];
    this.bodies = [];
    this.recordsSent = 0;
    this.recordsFailed = 0;
    this.firstStart = null;
    this.lastEnd = null;
  }
}

/** Wraps OTLPLogExporter: records each export's result and the body it carried. */
class CheckedExporter {
  constructor(inner, tally) {
    this._inner = inner;
    this._tally = tally;
    this._inflight = new Set();
  }

  /** Resolves when every export started so far has reported its result. */
  idle() {
    return Promise.all(Array.from(this._inflight));
  }

  export(logs, resultCallback) {
    const body = ProtobufLogsSerializer.serializeRequest(logs);
    const start = process.hrtime.bigint();
    const t = this._tally;
    let done;
    const p = new Promise((resolve) => {
      done = resolve;
    });
    this._inflight.add(p);
    this._inner.export(logs, (result) => {
      this._inflight.delete(p);
      done();
      const end = process.hrtime.bigint();
      if (t.firstStart === null) t.firstStart = start;
      t.lastEnd = end;
      if (result.code === ExportResultCode.SUCCESS) {
        t.ok += 1;
        t.recordsSent += logs.length;
        t.bodies.push(Buffer.from(body).toString('base64'));
      } else {
        t.failed += 1;
        t.recordsFailed += logs.length;
        t.errors.push(`export of ${logs.length} records: ${result.error ? String(result.error) : `code ${result.code}`}`);
      }
      resultCallback(result);
    });
  }

  forceFlush() {
    return this._inner.forceFlush();
  }

  shutdown() {
    return this._inner.shutdown();
  }
}

/** Keeps the emitted records, for direct mode (as the batch processor would get them). */
class Collecting {
  constructor() {
    this.records = [];
  }
  onEmit(logRecord) {
    this.records.push(logRecord);
  }
  forceFlush() {
    return Promise.resolve();
  }
  shutdown() {
    return Promise.resolve();
  }
}

function attributesOf(list) {
  const attrs = {};
  for (const [k, v] of list || []) attrs[k] = v;
  return attrs;
}

function emitAll(provider, records, seq, base) {
  const loggers = new Map();
  for (const r of records) {
    const scope = r.scope || '';
    let logger = loggers.get(scope);
    if (!logger) {
      logger = provider.getLogger(scope, '1.0.0');
      loggers.set(scope, logger);
    }
    const t = base + BigInt(seq);
    seq += 1;
    const hr = [Number(t / 1000000000n), Number(t % 1000000000n)];
    const n = Number(r.severity_number || 0);
    const rec = { timestamp: hr, observedTimestamp: hr };
    if (n) {
      rec.severityNumber = n;
      rec.severityText = SEVERITY_TEXT[n];
    }
    if (r.body !== undefined && r.body !== null) rec.body = r.body;
    const attrs = attributesOf(r.attributes);
    if (Object.keys(attrs).length) rec.attributes = attrs;
    if (r.event_name) rec.eventName = r.event_name;
    logger.emit(rec);
  }
  return seq;
}

// The plan's pause before batch k, if it has one (see the header).
async function pauseBefore(plan, k, timeoutMillis) {
  if (!plan.pause_dir || !(plan.pause_before || []).includes(k)) return;
  const fs = require('fs');
  const path = require('path');
  fs.writeFileSync(path.join(plan.pause_dir, `paused-${k}`), '');
  const resume = path.join(plan.pause_dir, `resume-${k}`);
  const deadline = Date.now() + timeoutMillis;
  while (!fs.existsSync(resume)) {
    if (Date.now() > deadline) throw new Error(`no ${resume} within ${timeoutMillis} ms`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

function exportOnce(exporter, batch) {
  return new Promise((resolve) => exporter.export(batch, resolve));
}

async function main() {
  const chunks = [];
  for await (const c of process.stdin) chunks.push(c);
  const plan = JSON.parse(Buffer.concat(chunks).toString('utf8'));
  const endpoint = plan.endpoint;
  const mode = plan.mode || 'batch';
  const batchSize = Math.max(1, Number(plan.batch_size || 512));
  const base = BigInt(plan.base_time_nanos ?? '1704067200000000000');
  const timeoutMillis = Math.round(Number(plan.timeout_secs || 20) * 1000);

  const tally = new Tally();
  const flushErrors = [];
  let seq = 0;
  let planned = 0;
  for (const svc of plan.services) {
    const { service, records } = svc;
    planned += records.length;
    const Exporter = plan.protocol === 'json' ? OTLPLogExporterJson : OTLPLogExporter;
    // "compression": "gzip" in the plan: the exporter gzips each body (Content-Encoding: gzip,
    // still chunked: it pipes the body through zlib into the request).
    const compression = plan.compression === 'gzip' ? 'gzip' : 'none';
    const inner = new Exporter({ url: endpoint, timeoutMillis, compression });
    const exporter = new CheckedExporter(inner, tally);
    const resource = resourceFromAttributes({ 'service.name': service });
    if (mode === 'batch') {
      const processor = new BatchLogRecordProcessor({
        exporter,
        maxExportBatchSize: batchSize,
        maxQueueSize: records.length + 16,
        scheduledDelayMillis: 200,
        exportTimeoutMillis: timeoutMillis,
      });
      const provider = new LoggerProvider({ resource, processors: [processor] });
      seq = emitAll(provider, records, seq, base);
      try {
        await provider.forceFlush();
      } catch (e) {
        flushErrors.push(`${service}: forceFlush: ${e}`);
      }
      try {
        await provider.shutdown();
      } catch (e) {
        flushErrors.push(`${service}: shutdown: ${e}`);
      }
    } else if (mode === 'simple') {
      const provider = new LoggerProvider({
        resource,
        processors: [new SimpleLogRecordProcessor({ exporter })],
      });
      // One record at a time, each export awaited: emitted in a burst, the exports would run
      // concurrently and beyond the exporter's limit of 30 fail ("Concurrent export limit").
      for (const r of records) {
        seq = emitAll(provider, [r], seq, base);
        // SimpleLogRecordProcessor.forceFlush does not wait for the exports it started.
        await exporter.idle();
      }
      try {
        await provider.forceFlush();
      } catch (e) {
        flushErrors.push(`${service}: forceFlush: ${e}`);
      }
      try {
        await provider.shutdown();
      } catch (e) {
        flushErrors.push(`${service}: ${e}`);
      }
    } else if (mode === 'direct') {
      const collecting = new Collecting();
      const provider = new LoggerProvider({ resource, processors: [collecting] });
      seq = emitAll(provider, records, seq, base);
      for (let i = 0; i < collecting.records.length; i += batchSize) {
        await pauseBefore(plan, i / batchSize, timeoutMillis);
        await exportOnce(exporter, collecting.records.slice(i, i + batchSize));
      }
      try {
        await exporter.shutdown();
        await provider.shutdown();
      } catch (e) {
        flushErrors.push(`${service}: ${e}`);
      }
    } else {
      throw new Error(`unknown mode ${JSON.stringify(mode)}`);
    }
  }

  const elapsed =
    tally.firstStart === null ? 0 : Number(tally.lastEnd - tally.firstStart) / 1e9;
  const report = {
    batches_ok: tally.ok,
    batches_failed: tally.failed,
    errors: tally.errors,
    flush_errors: flushErrors,
    records_planned: planned,
    records_sent: tally.recordsSent,
    records_failed: tally.recordsFailed,
    http_requests: httpRequests,
    elapsed_secs: elapsed,
    pid: process.pid,
    sent_bodies: tally.bodies,
    versions: {
      node: process.versions.node,
      'exporter-logs-otlp-proto': version('@opentelemetry/exporter-logs-otlp-proto'),
      'exporter-logs-otlp-http': version('@opentelemetry/exporter-logs-otlp-http'),
      'sdk-logs': version('@opentelemetry/sdk-logs'),
      'otlp-transformer': version('@opentelemetry/otlp-transformer'),
      'otlp-exporter-base': version('@opentelemetry/otlp-exporter-base'),
    },
  };
  process.stdout.write(JSON.stringify(report) + '\n');
  const ok = tally.failed === 0 && flushErrors.length === 0 && tally.recordsSent === planned;
  process.exitCode = ok ? 0 : 1;
}

main().catch((e) => {
  process.stderr.write(`export_logs.js: ${e && e.stack ? e.stack : e}\n`);
  process.exitCode = 2;
});
