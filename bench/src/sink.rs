//! The sink: a collector stand-in that reads whole requests (head, then `Content-Length` body
//! bytes, or a `Transfer-Encoding: chunked` body to its last chunk) and answers 200. It counts requests and bytes only; decoding would cost CPU that no
//! scenario should pay. With `--expect-records` it decodes every request instead and counts
//! those that do not hold the expected records (the bench's correctness step).

use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use prost::Message;

use crate::http::{OK_RESPONSE, Reader};
use crate::server::{Counters, add, serve};
use crate::workload::{self, SERVICE};

/// What a verifying sink checks in every request.
#[derive(Clone, Copy, Debug)]
pub struct Expect {
    /// Records per request (None: any number, as a collector that batches sends them).
    pub records: Option<usize>,
    /// No record the drop rule removes may arrive.
    pub filtered: bool,
}

pub fn run(listen: &str, expect: Option<Expect>) -> anyhow::Result<()> {
    serve(listen, Arc::new(Counters::default()), move |s, c| {
        handle(s, c, expect)
    })
}

fn handle(mut s: TcpStream, c: &Counters, expect: Option<Expect>) -> std::io::Result<()> {
    let mut r = Reader::new();
    let mut body = Vec::new();
    while let Some(h) = r.read_head(&mut s)? {
        let wire_len = if h.chunked {
            body.clear();
            let ch = r.chunked_body(&mut s, expect.is_some().then_some(&mut body))?;
            if ch.data_chunks == 1 && !ch.trailers {
                add(&c.chunked, 1);
            }
            if let Some(e) = expect {
                verify(c, &body, e, h.gzip);
            }
            ch.wire_len
        } else {
            match expect {
                None => r.skip(&mut s, h.content_length)?,
                Some(e) => verify(c, r.body(&mut s, h.content_length)?, e, h.gzip),
            }
            h.content_length
        };
        add(&c.requests, 1);
        add(&c.bytes_in, (h.len + wire_len) as u64);
        s.write_all(OK_RESPONSE)?;
    }
    Ok(())
}

fn verify(c: &Counters, body: &[u8], e: Expect, gzip: bool) {
    let mut plain = Vec::new();
    let body = if gzip {
        use std::io::Read;
        if flate2::read::GzDecoder::new(body)
            .read_to_end(&mut plain)
            .is_err()
        {
            add(&c.bad, 1);
            return;
        }
        &plain[..]
    } else {
        body
    };
    let (n, ok) = check(body, e);
    add(&c.records_in, n as u64);
    if !ok {
        add(&c.bad, 1);
    }
}

/// Decodes `body`: (records, whether the request is as expected).
fn check(body: &[u8], e: Expect) -> (usize, bool) {
    let Ok(req) = ExportLogsServiceRequest::decode(body) else {
        return (0, false);
    };
    let mut n = 0;
    let mut ok = true;
    for rl in &req.resource_logs {
        let service = rl
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
            .and_then(|a| a.value.as_ref())
            .and_then(|v| v.value.as_ref());
        use opentelemetry_proto::tonic::common::v1::any_value::Value;
        ok &= matches!(service, Some(Value::StringValue(s)) if s == SERVICE);
        for sl in &rl.scope_logs {
            for rec in &sl.log_records {
                n += 1;
                ok &= !(e.filtered && workload::dropped_by_rule(rec));
            }
        }
    }
    (n, ok && e.records.is_none_or(|r| n == r))
}
