//! Scenario (f): filtering in userspace, the way an aggregating collector (or a sidecar in front
//! of one) does it, written to be fast rather than a strawman:
//!
//! - one thread per client connection, each with its own keep-alive connection to the sink, so
//!   there is no locking, no async runtime and no cross-thread hand-off on the path;
//! - HTTP/1.1 framing by hand (head, `Content-Length`), with read buffers reused across requests;
//! - the body decoded once with prost, the records the rule drops removed in place (`retain`),
//!   emptied ScopeLogs/ResourceLogs removed, and the request re-encoded once into a reused buffer
//!   that already holds the forwarded head, then sent with one `write`.
//!
//! The rule is the one of scenario (d): drop records with SeverityNumber 1–8 (`severity < INFO`).

use std::io::{self, Write};
use std::net::TcpStream;
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use prost::Message;

use crate::http::{OK_RESPONSE, Reader, request_head};
use crate::server::{Counters, add, serve};
use crate::workload;

pub fn run(listen: &str, upstream: String) -> anyhow::Result<()> {
    serve(listen, Arc::new(Counters::default()), move |s, c| {
        handle(s, c, &upstream)
    })
}

fn handle(mut client: TcpStream, c: &Counters, upstream: &str) -> io::Result<()> {
    let mut up = TcpStream::connect(upstream)?;
    up.set_nodelay(true)?;
    let mut cr = Reader::new();
    let mut ur = Reader::new();
    let mut out: Vec<u8> = Vec::with_capacity(64 * 1024);
    while let Some(h) = cr.read_head(&mut client)? {
        if h.chunked {
            return Err(std::io::Error::other(
                "the proxy reads Content-Length requests only",
            ));
        }
        let body = cr.body(&mut client, h.content_length)?;
        add(&c.bytes_in, (h.len + body.len()) as u64);
        let mut req = ExportLogsServiceRequest::decode(body)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let (before, after) = filter(&mut req);
        add(&c.records_in, before as u64);
        add(&c.records_out, after as u64);
        if !req.resource_logs.is_empty() {
            out.clear();
            request_head(&mut out, req.encoded_len());
            req.encode(&mut out).expect("a Vec grows as needed");
            up.write_all(&out)?;
            add(&c.bytes_out, out.len() as u64);
            let rh = ur
                .read_head(&mut up)?
                .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
            ur.skip(&mut up, rh.content_length)?;
            if rh.status != 200 {
                return Err(io::Error::other(format!("upstream answered {}", rh.status)));
            }
        }
        add(&c.requests, 1);
        client.write_all(OK_RESPONSE)?;
    }
    Ok(())
}

/// Removes the records the rule drops, then emptied containers. Returns (records before, after).
fn filter(req: &mut ExportLogsServiceRequest) -> (usize, usize) {
    let (mut before, mut after) = (0, 0);
    for rl in &mut req.resource_logs {
        for sl in &mut rl.scope_logs {
            before += sl.log_records.len();
            sl.log_records.retain(|r| !workload::dropped_by_rule(r));
            after += sl.log_records.len();
        }
        rl.scope_logs.retain(|sl| !sl.log_records.is_empty());
    }
    req.resource_logs.retain(|rl| !rl.scope_logs.is_empty());
    (before, after)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_one_in_ten() {
        let mut req = workload::request(100, 3);
        assert_eq!(filter(&mut req), (100, 10));
        let again = ExportLogsServiceRequest::decode(&req.encode_to_vec()[..]).unwrap();
        assert_eq!(again.resource_logs[0].scope_logs[0].log_records.len(), 10);
    }
}
