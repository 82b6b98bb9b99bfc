//! Egress of flight recorders: a flushed recorder's records go, oldest first, as OTLP/HTTP
//! protobuf logs to the capture endpoint, each LogRecord's bytes exactly as they were in the
//! request that carried it, under a Resource with its `service.name`, in a ScopeLogs named
//! `dt.recorder.NAME`. They leave the recorder once the endpoint has taken them.
//!
//! A thread of its own polls the recorders' flush requests (a trigger's firing, in the kernel)
//! ten times a second, and serves `dt-agent flush`. An endpoint that fails is tried again a few
//! times with a growing pause; then the flush is given up and counted (`flush_failures`): its
//! records stay in the recorder (where newer records may overwrite them), and nothing grows in
//! the agent.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, mpsc},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use prost::encoding::{WireType, encode_key, encode_varint};

use crate::kernel::{Entry, Objects};

/// How often the recorders' flush requests are looked at.
const POLL: Duration = Duration::from_millis(100);
/// Tries of one flush, and the pause before the second (doubling after each failure).
const TRIES: u32 = 5;
const FIRST_PAUSE: Duration = Duration::from_millis(200);
/// Bound on one post (connecting, sending, the answer): an endpoint that takes a connection and
/// never answers fails the try instead of stalling every recorder's flushes.
const POST_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on a `dt-agent flush`, from when it is asked, every recorder it names, try, post and
/// pause included, so that its answer comes within [`FLUSH_WAIT`]. 5 tries of one post each
/// that get no answer take 5 × 5 s + 3 s of pauses, within it. (A trigger's flush has no such
/// bound: a big recorder on a slow link goes on while its posts succeed.)
const FLUSH_BUDGET: Duration = Duration::from_secs(29);
/// Largest body of one egress request; a bigger flush is sent in several.
const MAX_BODY: usize = 4 << 20;
/// How long `dt-agent flush` waits for the egress.
pub const FLUSH_WAIT: Duration = Duration::from_secs(30);

/// Recorder slot → name, as the active rule set has them.
pub type Names = Arc<Mutex<BTreeMap<u8, String>>>;

/// What a flush egressed.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Flushed {
    pub recorder: String,
    pub records: u64,
}

enum Cmd {
    Flush {
        slots: Vec<u8>,
        /// When it was asked: its budget counts from then, waits behind other flushes included.
        asked: Instant,
        reply: mpsc::Sender<Result<Vec<Flushed>, String>>,
    },
    Stop,
}

/// The flusher thread.
pub struct Flusher {
    tx: mpsc::Sender<Cmd>,
    thread: Option<JoinHandle<()>>,
}

impl Flusher {
    pub fn start(objects: Objects, names: Names, endpoint: hyper::Uri) -> anyhow::Result<Flusher> {
        let (tx, rx) = mpsc::channel();
        let thread =
            super::spawn_on_own_runtime("dt-flush", "recorder flusher", move || async move {
                let mut f = Worker {
                    objects,
                    names,
                    endpoint,
                };
                f.run(rx).await;
            })?;
        Ok(Flusher {
            tx,
            thread: Some(thread),
        })
    }

    /// A handle to ask for flushes (see [`request`]).
    pub fn requester(&self) -> Requester {
        Requester(self.tx.clone())
    }
}

/// Asks the flusher to egress recorders now.
#[derive(Clone)]
pub struct Requester(mpsc::Sender<Cmd>);

impl Requester {
    /// Egresses the recorders of these slots now, and waits for it.
    pub fn flush(&self, slots: Vec<u8>) -> anyhow::Result<Vec<Flushed>> {
        let (reply, answer) = mpsc::channel();
        self.0
            .send(Cmd::Flush {
                slots,
                asked: Instant::now(),
                reply,
            })
            .map_err(|_| anyhow::anyhow!("the recorder flusher has stopped"))?;
        answer
            .recv_timeout(FLUSH_WAIT + Duration::from_secs(5))
            .map_err(|_| anyhow::anyhow!("no answer from the recorder flusher"))?
            .map_err(|e| anyhow::anyhow!(e))
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        let _ = self.tx.send(Cmd::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Worker {
    objects: Objects,
    names: Names,
    endpoint: hyper::Uri,
}

impl Worker {
    async fn run(&mut self, rx: mpsc::Receiver<Cmd>) {
        loop {
            match rx.recv_timeout(POLL) {
                Ok(Cmd::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
                Ok(Cmd::Flush {
                    slots,
                    asked,
                    reply,
                }) => {
                    // One budget for all of them, so the answer comes within FLUSH_WAIT.
                    let deadline = asked + FLUSH_BUDGET;
                    let mut results = Vec::new();
                    for slot in slots {
                        results.push(self.flush(slot, None, Some(deadline)).await);
                    }
                    let _ = reply.send(answer(results));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            // The firings' flush requests.
            let names = self.names.lock().unwrap_or_else(|e| e.into_inner()).clone();
            for &slot in names.keys() {
                let req = self.objects.rec_state(slot).flush_req;
                if req != self.objects.conf(slot).flush_done
                    && let Err(e) = self.flush(slot, Some(req), None).await
                {
                    log::error!("{e:#}");
                }
            }
        }
    }

    /// Egresses recorder `slot` with a few tries, until `deadline` when given; `req`: the flush
    /// request served.
    async fn flush(
        &mut self,
        slot: u8,
        req: Option<u64>,
        deadline: Option<Instant>,
    ) -> anyhow::Result<Flushed> {
        let name = self
            .names
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&slot)
            .cloned()
            .unwrap_or_default();
        // The ring this flush is of: what it counts goes to that ring's recorder only.
        let epoch = self.objects.ring_epoch(slot);
        let mut pause = FIRST_PAUSE;
        let mut sent = 0u64;
        let mut last_error = None;
        let mut tries = 0;
        for attempt in 0..TRIES {
            let late = |after: Duration| deadline.is_some_and(|d| Instant::now() + after >= d);
            if attempt > 0 {
                if late(pause) {
                    break;
                }
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
            if late(Duration::ZERO) {
                break;
            }
            tries += 1;
            match self.egress(slot, &name, deadline).await {
                Ok(n) => {
                    sent += n;
                    self.objects.update_conf(slot, epoch, |c| {
                        if let Some(r) = req {
                            c.flush_done = r;
                        }
                        c.flushes += 1;
                    })?;
                    log::info!(
                        "recorder {name}: {sent} records flushed to {}",
                        self.endpoint
                    );
                    return Ok(Flushed {
                        recorder: name,
                        records: sent,
                    });
                }
                Err((n, e)) => {
                    sent += n;
                    log::warn!("recorder {name}: flush to {} failed: {e:#}", self.endpoint);
                    last_error = Some(e);
                }
            }
        }
        self.objects.update_conf(slot, epoch, |c| {
            if let Some(r) = req {
                c.flush_done = r;
            }
            c.flush_failures += 1;
        })?;
        let e = last_error.unwrap_or_else(|| {
            anyhow::anyhow!(
                "the flush's {} s were used up before it",
                FLUSH_BUDGET.as_secs()
            )
        });
        Err(e.context(format!(
            "recorder {name}: flush given up after {tries} tries ({sent} records sent; the rest \
             stay in the recorder)"
        )))
    }

    /// Sends what the recorder holds now, in requests of at most [`MAX_BODY`], moving its
    /// tail past each request the endpoint took. Returns the records sent, or with the error
    /// those sent before it.
    async fn egress(
        &mut self,
        slot: u8,
        name: &str,
        deadline: Option<Instant>,
    ) -> Result<u64, (u64, anyhow::Error)> {
        // Until sent or given up, what was read counts as being flushed, not as overwritten
        // when the ring overwrites it meanwhile.
        let (contents, epoch) = self.objects.read_ring_for_flush(slot).map_err(|e| (0, e))?;
        let result = self
            .send(slot, epoch, name, deadline, &contents.entries)
            .await;
        self.objects.flush_ended(slot, epoch);
        result
    }

    /// [`Self::egress`]'s posts of `entries`.
    async fn send(
        &mut self,
        slot: u8,
        epoch: u64,
        name: &str,
        deadline: Option<Instant>,
        entries: &[crate::kernel::Entry],
    ) -> Result<u64, (u64, anyhow::Error)> {
        let mut sent = 0u64;
        let mut rest = entries;
        while !rest.is_empty() {
            let mut size = 0usize;
            let n = rest
                .iter()
                .take_while(|e| {
                    size += e.record.len() + e.service.len() + 32;
                    size <= MAX_BODY
                })
                .count()
                .max(1);
            let (batch, later) = rest.split_at(n);
            let body = logs_request(name, batch);
            let post = super::http::post_protobuf(&self.endpoint, body, "capture endpoint");
            let bound = match deadline {
                Some(d) => POST_TIMEOUT.min(d.saturating_duration_since(Instant::now())),
                None => POST_TIMEOUT,
            };
            match tokio::time::timeout(bound, post).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err((sent, e)),
                Err(_) => {
                    return Err((
                        sent,
                        anyhow::anyhow!(
                            "POST {}: no answer within {}",
                            self.endpoint,
                            if bound == POST_TIMEOUT {
                                format!("{} s", bound.as_secs())
                            } else {
                                format!("{:.1} s (the flush's time was up)", bound.as_secs_f64())
                            }
                        ),
                    ));
                }
            }
            let last = batch[batch.len() - 1].clone();
            let records = batch.len() as u64;
            self.objects
                .flushed(slot, epoch, last.pos + last.len, records)
                .map_err(|e| (sent, e))?;
            sent += records;
            rest = later;
        }
        Ok(sent)
    }
}

/// The answer to a `dt-agent flush` of several recorders: each one's records, or, when one
/// failed, an error that says what became of each.
fn answer(results: Vec<anyhow::Result<Flushed>>) -> Result<Vec<Flushed>, String> {
    if results.iter().all(Result::is_ok) {
        return Ok(results.into_iter().flatten().collect());
    }
    let lines: Vec<String> = results
        .into_iter()
        .map(|r| match r {
            Ok(f) => format!("recorder {}: {} records flushed", f.recorder, f.records),
            Err(e) => format!("{e:#}"),
        })
        .collect();
    Err(lines.join("\n"))
}

/// An `ExportLogsServiceRequest` of recorded entries, oldest first: a ResourceLogs for each
/// run of entries of one service, with one ScopeLogs named `dt.recorder.NAME` holding their
/// LogRecords' bytes exactly.
pub fn logs_request(recorder: &str, entries: &[Entry]) -> Vec<u8> {
    let scope_name = format!("dt.recorder.{recorder}");
    let mut out = Vec::new();
    let mut i = 0;
    while i < entries.len() {
        let service = &entries[i].service;
        let run = entries[i..]
            .iter()
            .take_while(|e| &e.service == service)
            .count();
        let mut scope_logs = Vec::new();
        let mut scope = Vec::new();
        bytes_field(&mut scope, 1, scope_name.as_bytes());
        bytes_field(&mut scope_logs, 1, &scope);
        for e in &entries[i..i + run] {
            bytes_field(&mut scope_logs, 2, &e.record);
        }
        let mut resource = Vec::new();
        if !service.is_empty() {
            let mut value = Vec::new();
            bytes_field(&mut value, 1, service);
            let mut kv = Vec::new();
            bytes_field(&mut kv, 1, b"service.name");
            bytes_field(&mut kv, 2, &value);
            bytes_field(&mut resource, 1, &kv);
        }
        let mut rl = Vec::new();
        bytes_field(&mut rl, 1, &resource);
        bytes_field(&mut rl, 2, &scope_logs);
        bytes_field(&mut out, 1, &rl);
        i += run;
    }
    out
}

fn bytes_field(out: &mut Vec<u8>, tag: u32, bytes: &[u8]) {
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::logs::v1::LogRecord;
    use prost::Message;

    fn entry(service: &str, body: &str) -> Entry {
        let rec = LogRecord {
            severity_number: 5,
            body: Some(opentelemetry_proto::tonic::common::v1::AnyValue {
                value: Some(
                    opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(
                        body.into(),
                    ),
                ),
            }),
            ..Default::default()
        };
        Entry {
            pos: 0,
            len: 0,
            service: service.as_bytes().to_vec(),
            record: rec.encode_to_vec(),
            rule_slot: 0,
        }
    }

    #[test]
    fn records_go_under_their_service_in_order_byte_for_byte() {
        let entries = [
            entry("a", "1"),
            entry("a", "2"),
            entry("b", "3"),
            entry("", "4"),
        ];
        let req = ExportLogsServiceRequest::decode(&logs_request("r", &entries)[..]).unwrap();
        assert_eq!(req.resource_logs.len(), 3);
        let services: Vec<String> = req
            .resource_logs
            .iter()
            .map(|rl| {
                rl.resource
                    .as_ref()
                    .and_then(|r| r.attributes.first())
                    .and_then(|kv| kv.value.as_ref())
                    .map_or(String::new(), |v| format!("{v:?}"))
            })
            .collect();
        assert!(services[0].contains("\"a\"") && services[1].contains("\"b\""));
        assert_eq!(services[2], "");
        let records: Vec<Vec<u8>> = req
            .resource_logs
            .iter()
            .flat_map(|rl| rl.scope_logs.iter())
            .inspect(|sl| assert_eq!(sl.scope.as_ref().unwrap().name, "dt.recorder.r"))
            .flat_map(|sl| sl.log_records.iter().map(|r| r.encode_to_vec()))
            .collect();
        let want: Vec<Vec<u8>> = entries.iter().map(|e| e.record.clone()).collect();
        assert_eq!(records, want);
    }
}
