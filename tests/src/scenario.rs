//! A whole raw-client run through an agent: rules, one or more keep-alive connections of OTLP
//! requests written with chosen splits, then every check a user would make: each response is
//! 200, the receiver decodes exactly the kept records of each request in order, the counters
//! match the model, no passthrough, and `bytes_in`/`bytes_out` equal what was sent/received.

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;

use crate::agent::{assert_expected, assert_no_passthrough, start_agent, stats_of};
use crate::client::{RawClient, Split};
use crate::http::{HttpRequest, HttpRequestBuilder};
use crate::model::{Expected, RuleSpec, evaluate};
use crate::otlp::{encode, sent_records};
use crate::receiver::{Received, Receiver};
use crate::record::assert_same_records;
use crate::rules::TempRules;

/// One request of a connection.
#[derive(Clone, Debug)]
pub struct Step {
    pub logs: ExportLogsServiceRequest,
    pub http: HttpRequest,
    pub split: Split,
}

/// One keep-alive connection: its requests in order.
#[derive(Clone, Debug, Default)]
pub struct Conn {
    pub steps: Vec<Step>,
}

impl Conn {
    pub fn new() -> Conn {
        Conn::default()
    }

    /// Adds `POST /v1/logs` carrying `logs`, written as `split`.
    pub fn send(mut self, logs: ExportLogsServiceRequest, split: Split) -> Conn {
        let http = HttpRequestBuilder::logs(encode(&logs)).build();
        self.steps.push(Step { logs, http, split });
        self
    }
}

pub struct Scenario {
    pub name: String,
    pub rules: Vec<RuleSpec>,
    pub conns: Vec<Conn>,
    pub ipv6: bool,
}

/// What a run produced, for extra checks.
pub struct ScenarioOutcome {
    pub stats: dt_agent::Stats,
    pub expected: Expected,
    pub received: Vec<Received>,
    /// Bytes the client wrote, per connection.
    pub sent_bytes: Vec<Vec<u8>>,
    /// Bytes the receiver read, per connection.
    pub received_bytes: Vec<Vec<u8>>,
}

impl Scenario {
    pub fn new(name: &str, rules: Vec<RuleSpec>) -> Scenario {
        Scenario {
            name: name.into(),
            rules,
            conns: Vec::new(),
            ipv6: false,
        }
    }

    pub fn conn(mut self, c: Conn) -> Scenario {
        self.conns.push(c);
        self
    }

    pub fn ipv6(mut self) -> Scenario {
        self.ipv6 = true;
        self
    }

    /// Runs and checks everything; panics on the first difference.
    pub fn run(self) -> ScenarioOutcome {
        let receiver = if self.ipv6 {
            Receiver::start_v6()
        } else {
            Receiver::start_v4()
        };
        let rules = TempRules::from_rules(&self.rules);
        let agent = start_agent(&rules, &[receiver.port()]);

        let mut expected = Expected::default();
        let mut per_request: Vec<Expected> = Vec::new();
        let mut conn_has_drops = Vec::new();
        let mut sent_bytes = Vec::new();
        for (ci, conn) in self.conns.iter().enumerate() {
            let mut client = RawClient::connect(receiver.addr());
            let mut drops = false;
            for (si, step) in conn.steps.iter().enumerate() {
                let e = evaluate(&self.rules, &sent_records(&step.logs));
                drops |= e.records_dropped > 0;
                expected.merge(&e);
                per_request.push(e);
                let resp = client.roundtrip(&step.http, &step.split);
                assert_eq!(
                    resp.status, 200,
                    "{}: connection {ci} request {si}: status {} body {:?}",
                    self.name, resp.status, resp.body
                );
            }
            sent_bytes.push(client.sent.clone());
            client.finish();
            conn_has_drops.push(drops);
        }
        let n: usize = self.conns.iter().map(|c| c.steps.len()).sum();
        let received = receiver.wait_for(n, crate::WAIT);
        receiver.assert_no_more(n, std::time::Duration::from_millis(100));
        let received_bytes = receiver.connection_bytes();
        let stats = stats_of(&agent);
        drop(agent);

        // The receiver: valid protobuf, exactly the kept records of each request, in order.
        let failures = receiver.decode_failures();
        assert!(
            failures.is_empty(),
            "{}: receiver could not decode: {failures:?}",
            self.name
        );
        for (i, (r, e)) in received.iter().zip(&per_request).enumerate() {
            assert!(r.logs.is_some(), "{}: request {i} not decoded", self.name);
            let got = r.records();
            if got != e.kept {
                assert_same_records(&format!("{}: request {i}", self.name), &e.kept, &got);
                panic!(
                    "{}: request {i}: same records in a different order",
                    self.name
                );
            }
        }
        assert_same_records(&self.name, &expected.kept, &receiver.records());

        // Requests without drops arrive byte for byte.
        assert_eq!(
            received_bytes.len(),
            self.conns.len(),
            "{}: connections",
            self.name
        );
        for (ci, drops) in conn_has_drops.iter().enumerate() {
            if !drops {
                assert!(
                    received_bytes[ci] == sent_bytes[ci],
                    "{}: connection {ci} had nothing to drop but arrived changed ({} bytes sent, {} received)",
                    self.name,
                    sent_bytes[ci].len(),
                    received_bytes[ci].len()
                );
            }
        }

        // The counters.
        assert_expected(&stats, &expected);
        assert_no_passthrough(&stats);
        assert_eq!(
            stats.totals.requests, n as u64,
            "{}: totals.requests",
            self.name
        );
        assert_eq!(
            stats.totals.log_requests, n as u64,
            "{}: totals.log_requests",
            self.name
        );
        let total_sent: u64 = sent_bytes.iter().map(|b| b.len() as u64).sum();
        let total_received: u64 = received_bytes.iter().map(|b| b.len() as u64).sum();
        assert_eq!(
            stats.totals.bytes_in, total_sent,
            "{}: totals.bytes_in",
            self.name
        );
        assert_eq!(
            stats.totals.bytes_out, total_received,
            "{}: totals.bytes_out",
            self.name
        );

        ScenarioOutcome {
            stats,
            expected,
            received,
            sent_bytes,
            received_bytes,
        }
    }
}
