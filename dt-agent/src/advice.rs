//! Warnings for requests that passed through unfiltered for a reason an operator can fix: an
//! exporter that compresses, sends JSON, batches more than dt holds, and the like. Each reason
//! is said when it first moves, then at most once every [`REPEAT_AFTER`] with the count since;
//! the `passthrough` counters (`stats`, `dt_passthrough_total`) have every request.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

/// How often the counters are looked at.
pub const CHECK_EVERY: Duration = Duration::from_secs(10);
/// The least time between two warnings of one reason.
pub const REPEAT_AFTER: Duration = Duration::from_secs(600);

/// What to do about a passthrough reason, for those an operator can act on; `None` for the
/// others (requests that are not OTLP logs, the rip cord pulled, no rules, a rule change in
/// flight).
fn hint(reason: &str, max_request: u32) -> Option<String> {
    Some(match reason {
        "compressed" => {
            "compressed bodies cannot be walked: set the exporters' compression to none \
                         (OTEL_EXPORTER_OTLP_LOGS_COMPRESSION=none; a Collector's otlphttp \
                         exporter: compression: none)"
                .to_string()
        }
        "json" => "dt walks OTLP/protobuf only: set the exporters' protocol to http/protobuf \
                   (OTEL_EXPORTER_OTLP_LOGS_PROTOCOL=http/protobuf)"
            .to_string(),
        "oversize" if max_request >= dt_ebpf_common::MAX_REQUEST_CEILING => format!(
            "larger than max_request ({max_request} bytes, the most dt holds): lower \
             the exporters' batch size (OTEL_BLRP_MAX_EXPORT_BATCH_SIZE, the Node.js SDK's \
             maxExportBatchSize)"
        ),
        "oversize" => format!(
            "larger than max_request ({max_request} bytes): raise max_request \
             (--max-request, at most {}), or lower the exporters' batch size \
             (OTEL_BLRP_MAX_EXPORT_BATCH_SIZE, the Node.js SDK's maxExportBatchSize)",
            dt_ebpf_common::MAX_REQUEST_CEILING
        ),
        "partial" => {
            "the kernel could not hold the whole request (its cork ran out of room): lower \
                      max_request or the exporters' batch size"
                .to_string()
        }
        "edit_limit" => "more edits than dt makes in one request or one record (README: \
                         \"Limits\"): lower the exporters' batch size \
                         (OTEL_BLRP_MAX_EXPORT_BATCH_SIZE, the Node.js SDK's \
                         maxExportBatchSize)"
            .to_string(),
        "expect_continue" => "the sender asked `Expect: 100-continue` (curl does for large \
                              bodies), which dt cannot hold: send without it"
            .to_string(),
        "bad_http" => "not HTTP/1.x (OTLP/gRPC or TLS): hook the \
                       collector's OTLP/HTTP port and have exporters send http/protobuf in \
                       plain text"
            .to_string(),
        "chunked" => "chunked in a way dt does not edit (README: \"Chunked requests\")".to_string(),
        "malformed" => "not valid OTLP protobuf log requests (README: \"What dt checks\"): the \
                        collector will likely refuse them too"
            .to_string(),
        "too_deep" => "values nest deeper than dt walks".to_string(),
        _ => return None,
    })
}

/// The passthrough counters seen last, and when each reason was last said.
#[derive(Default)]
pub struct Advisor {
    seen: BTreeMap<String, u64>,
    /// Per reason: when it was last said, and the requests counted since.
    said: BTreeMap<String, (Instant, u64)>,
    /// Whether `seen` holds a first reading (what was counted before the agent looked is not
    /// new: a restart that adopts pins finds earlier counts).
    started: bool,
}

impl Advisor {
    /// The warnings due now, given the passthrough counters read at `now`; `redacting`: the
    /// active rule set has redact rules (which did not apply to those requests either).
    pub fn observe(
        &mut self,
        passthrough: &BTreeMap<String, u64>,
        now: Instant,
        max_request: u32,
        redacting: bool,
    ) -> Vec<String> {
        let mut out = Vec::new();
        for (reason, &count) in passthrough {
            let before = self.seen.insert(reason.clone(), count);
            if !self.started {
                continue;
            }
            // A counter that went back (a new set of maps) starts over from 0.
            let before = before.unwrap_or(0);
            let new = if count >= before {
                count - before
            } else {
                count
            };
            let Some(hint) = hint(reason, max_request) else {
                continue;
            };
            // The count, and since when (for a reason said before).
            let (pending, since) = match self.said.get_mut(reason) {
                Some((at, pending)) => {
                    *pending += new;
                    if *pending == 0 || now.duration_since(*at) < REPEAT_AFTER {
                        continue;
                    }
                    let n = *pending;
                    let minutes = now.duration_since(*at).as_secs() / 60;
                    *at = now;
                    *pending = 0;
                    (n, format!(" in the last {minutes} minutes"))
                }
                None if new > 0 => {
                    self.said.insert(reason.clone(), (now, 0));
                    (new, String::new())
                }
                None => continue,
            };
            let requests = if pending == 1 { "request" } else { "requests" };
            let unredacted = if redacting {
                " (and unredacted: no redact rule applied to their records)"
            } else {
                ""
            };
            out.push(format!(
                "{pending} {requests} passed through unfiltered{unredacted} as \
                 `{reason}`{since}: {hint}"
            ));
        }
        self.started = true;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn a_reason_is_said_when_it_moves_then_at_most_every_ten_minutes() {
        let mut a = Advisor::default();
        let t0 = Instant::now();
        // What was counted before the first reading is not new.
        assert!(
            a.observe(&counts(&[("oversize", 5), ("json", 0)]), t0, 1024, false)
                .is_empty()
        );
        let w = a.observe(&counts(&[("oversize", 7), ("json", 0)]), t0, 1024, false);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with(
                "2 requests passed through unfiltered as `oversize`: larger than max_request \
                 (1024 bytes)"
            ),
            "{w:?}"
        );
        // More within ten minutes: counted, said later with the count since.
        let t1 = t0 + Duration::from_secs(60);
        assert!(
            a.observe(&counts(&[("oversize", 8), ("json", 1)]), t1, 1024, false)
                .iter()
                .all(|w| w.contains("`json`"))
        );
        let t2 = t0 + REPEAT_AFTER;
        let w = a.observe(&counts(&[("oversize", 10), ("json", 1)]), t2, 1024, false);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with(
                "3 requests passed through unfiltered as `oversize` in the last 10 minutes: \
                 larger than"
            ),
            "{w:?}"
        );
        // Nothing new: nothing said, however long after.
        let t3 = t2 + 2 * REPEAT_AFTER;
        assert!(
            a.observe(&counts(&[("oversize", 10), ("json", 1)]), t3, 1024, false)
                .is_empty()
        );
        // With redact rules active, it says their records left unredacted.
        let w = a.observe(&counts(&[("oversize", 11), ("json", 1)]), t3, 1024, true);
        assert!(
            w[0].starts_with(
                "1 request passed through unfiltered (and unredacted: no redact rule applied to \
                 their records) as `oversize`"
            ),
            "{w:?}"
        );
        // At the ceiling, only the batch size can change.
        let w = a.observe(
            &counts(&[("oversize", 12)]),
            t3 + REPEAT_AFTER,
            dt_ebpf_common::MAX_REQUEST_CEILING,
            false,
        );
        assert!(w[0].contains("the most dt holds): lower"), "{w:?}");
        // A counter that went back (new maps) counts from 0 again.
        let t4 = t3 + 3 * REPEAT_AFTER;
        let w = a.observe(&counts(&[("oversize", 2)]), t4, 1024, false);
        assert!(w[0].starts_with("2 requests passed through"), "{w:?}");
        // Reasons no operator acts on are never said.
        assert!(
            a.observe(
                &counts(&[("not_logs", 9), ("disabled", 3), ("no_rules", 1)]),
                t3,
                1024,
                false
            )
            .is_empty()
        );
        assert!(
            a.observe(
                &counts(&[("not_logs", 19), ("disabled", 13), ("no_rules", 11)]),
                t3,
                1024,
                false
            )
            .is_empty()
        );
    }
}
