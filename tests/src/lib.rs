//! dt's end-to-end test harness.
//!
//! Everything a test compares against comes from the test's own side: requests are built by
//! [`otlp`] and [`exporter`] (the real OpenTelemetry SDK exporter), expected counts come from the
//! independent rule [`model`], and what actually arrived is decoded by the [`receiver`], a hyper
//! based OTLP/HTTP collector stand-in. Nothing here uses dt's own wire walker.
//!
//! Running:
//! - `cargo test -p dt-tests` runs everything; kernel tests need root and a cgroup v2 mount and
//!   print `SKIPPED <test>: <reason>` without them, unless `DT_REQUIRE_KERNEL_TESTS=1` (CI),
//!   which turns a skip into a failure.
//! - Kernel tests start with `if !kernel_or_skip("name") { return; }`. Each one binds its own
//!   ports (see [`net`]) and starts its own in-process [`dt_agent::Agent`] hooking only those
//!   ports, so they run in parallel without sharing counters.
//! - `tests/cli.rs` runs the `dt-agent` binary found by [`agent_bin`] next to the test
//!   executable; it must have been built from the current sources (`cargo build -p dt-agent`,
//!   or `DT_AGENT_BIN=path`).
//!
//! A typical kernel test:
//! ```no_run
//! use dt_tests::*;
//! if !kernel_or_skip("example") { return; }
//! let rules = vec![RuleSpec::drop("drop-debug").severity("<=DEBUG", 1..=8)];
//! let logs = LogsRequestBuilder::new().resource("svc").scope("app")
//!     .record(Rec::new(5, "debug")).record(Rec::new(9, "info")).build();
//! Scenario::new("example", rules)
//!     .conn(Conn::new().send(logs, Split::head_then_body(3)))
//!     .run(); // checks records at the receiver, every counter, bytes_in/out, no passthrough
//! ```

pub mod agent;
pub mod agent_process;
pub mod capture;
pub mod client;
pub mod collector;
pub mod exporter;
pub mod fuzz_checks;
pub mod host_walk;
pub mod http;
pub mod kernel;
pub mod model;
pub mod net;
pub mod netns;
pub mod node;
pub mod opamp;
pub mod oracle;
pub mod otlp;
pub mod proptest_gen;
pub mod python;
pub mod receiver;
pub mod record;
pub mod rules;
pub mod scenario;
pub mod tls;

pub use agent::{
    agent_bin, agent_config, assert_expected, assert_matched_dropped, assert_no_passthrough,
    assert_passthrough_only, start_agent, start_agent_with, stats_of,
};
pub use capture::{CaptureListener, CapturedRequest};
pub use client::{HttpResponse, RawClient, Split};
pub use exporter::{
    ExportMode, ExportPlan, ExportReport, PlannedRecord, export_with_real_exporter,
    export_with_real_exporter_to,
};
pub use http::{HttpRequest, HttpRequestBuilder};
pub use kernel::{cgroup2_mount, kernel_or_skip, needed_or_skip};
pub use model::{Action, Expected, Facts, RuleExpect, RuleSpec, evaluate, simulate};
pub use net::{listener_v4, listener_v6, reserve_port};
pub use node::{
    NodeExportReport, export_with_node, export_with_node_in_netns, export_with_node_simple,
    export_with_node_value, node_or_skip, node_plan,
};
pub use otlp::{LogsRequestBuilder, Rec};
pub use python::{
    Collector, PyExportReport, PyReceived, PyReceiver, PyTransport, export_python_value,
    export_with_python, export_with_python_as, export_with_python_in_cgroup,
    export_with_python_in_netns, export_with_python_simple, python_or_skip, python_plan,
    set_bodies,
};
pub use receiver::{Received, Receiver};
pub use record::{ReceivedRecord, SentRecord, assert_same_records, flatten};
pub use rules::TempRules;
pub use scenario::{Conn, Scenario, ScenarioOutcome, Step};

/// Default time to wait for traffic to reach the receiver.
pub const WAIT: std::time::Duration = std::time::Duration::from_secs(20);
