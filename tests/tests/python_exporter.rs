//! The official OpenTelemetry Python SDK exporter (opentelemetry-exporter-otlp-proto-http, upb
//! encoding, requests/urllib3 writing the head and the body separately) through an agent, to the
//! hyper receiver and to the Python receiver; and the actions sample, rate_limit and redact end to
//! end with both real SDK exporters (Python and Rust).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use dt_tests::model::{Action, End, Facts, Redaction, evaluate_record, rules_toml, simulate};
use dt_tests::{
    Collector, ExportMode, ExportPlan, PlannedRecord, PyReceiver, ReceivedRecord, Receiver,
    RuleSpec, SentRecord, TempRules, WAIT, assert_expected, assert_no_passthrough,
    assert_same_records, evaluate, export_with_python, export_with_real_exporter_to,
    kernel_or_skip, python_or_skip, start_agent, stats_of,
};

fn rules() -> Vec<RuleSpec> {
    vec![
        RuleSpec::count("count-error-plus").severity(">=ERROR", 17..=24),
        RuleSpec::count("count-checkout").service("checkout"),
        RuleSpec::drop("drop-debug-and-below").severity("<=DEBUG", 1..=8),
        RuleSpec::drop("drop-healthcheck").body_contains("healthcheck"),
        RuleSpec::drop("drop-healthz-route").attribute("http.route", "/healthz"),
        RuleSpec::count("count-payments-survivors").service("payments"),
    ]
}

/// The Python exporter sends `plan` through an agent with [`rules`] to `collector`; everything
/// is checked against the model.
fn run_python(name: &str, plan: ExportPlan, collector: &dyn Collector) {
    let rules = rules();
    let dir = TempRules::from_rules(&rules);
    let agent = start_agent(&dir, &[collector.port()]);

    let report = export_with_python(&collector.url(), &plan);
    report.assert_all_ok(plan.total());
    let requests = report.batches_ok;
    if plan.mode == ExportMode::Direct {
        assert_eq!(requests, plan.direct_batches(), "{name}: requests");
    }
    collector.wait_requests(requests, WAIT);
    collector.no_more(requests, Duration::from_millis(100));
    let stats = stats_of(&agent);
    drop(agent);

    // Expected values from the plan as the Python exporter encoded it, through the model.
    assert_same_records(
        &format!("{name}: plan vs Python exporter"),
        &plan.records(),
        &report.sent_records(),
    );
    let expected = evaluate(&rules, &report.sent);
    assert!(expected.records_dropped > 0 && !expected.kept.is_empty());

    let failures = collector.failures();
    assert!(
        failures.is_empty(),
        "{name}: {} receiver could not decode: {failures:?}",
        collector.kind()
    );
    assert!(collector.all_ok(), "{name}: a request was not answered 200");
    assert_same_records(
        &format!("{name}: {} receiver", collector.kind()),
        &expected.kept,
        &collector.decoded(),
    );

    assert_expected(&stats, &expected);
    assert_no_passthrough(&stats);
    assert_eq!(stats.totals.requests, requests as u64, "{name}: requests");
    assert_eq!(
        stats.totals.log_requests, requests as u64,
        "{name}: log_requests"
    );
    assert_eq!(
        stats.totals.bytes_out,
        collector.wire_bytes(),
        "{name}: bytes_out vs bytes the {} receiver read",
        collector.kind()
    );
    assert!(stats.totals.bytes_in > stats.totals.bytes_out);
    let removed = stats.totals.bytes_in - stats.totals.bytes_out;
    let dropped_bytes: u64 = expected.rules.iter().map(|r| r.dropped_bytes).sum();
    // Removed bytes are the dropped records, give or take length prefixes and Content-Length
    // digits (a few bytes per request).
    assert!(
        removed.abs_diff(dropped_bytes) <= 16 * requests as u64,
        "{name}: bytes_in - bytes_out = {removed}, dropped records = {dropped_bytes}"
    );
}

#[test]
fn python_exporter_sdk_pipeline_to_hyper_receiver() {
    let test = "python_exporter_sdk_pipeline_to_hyper_receiver";
    if !kernel_or_skip(test) || python_or_skip(test).is_none() {
        return;
    }
    // LoggerProvider + BatchLogRecordProcessor + OTLPLogExporter, one provider per service.
    let plan = ExportPlan::mixed(6_000, &["checkout", "payments", "inventory"], 256)
        .with_mode(ExportMode::BatchProcessor);
    let receiver = Receiver::start_v4();
    run_python("python sdk pipeline -> hyper", plan, &receiver);
}

#[test]
fn python_exporter_direct_batches_to_hyper_receiver() {
    let test = "python_exporter_direct_batches_to_hyper_receiver";
    if !kernel_or_skip(test) || python_or_skip(test).is_none() {
        return;
    }
    // OTLPLogExporter.export() with batches of 150: an exact number of requests.
    let plan = ExportPlan::mixed(3_000, &["checkout", "payments"], 150);
    let receiver = Receiver::start_v4();
    run_python("python direct -> hyper", plan, &receiver);
}

#[test]
fn python_exporter_to_python_receiver() {
    let test = "python_exporter_to_python_receiver";
    if !kernel_or_skip(test) || python_or_skip(test).is_none() {
        return;
    }
    let plan = ExportPlan::mixed(4_000, &["checkout", "payments", "inventory"], 300)
        .with_mode(ExportMode::BatchProcessor);
    let receiver = PyReceiver::start_v4();
    run_python("python sdk pipeline -> python", plan, &receiver);
    receiver.stop();
}

#[test]
fn python_exporter_to_python_receiver_ipv6() {
    let test = "python_exporter_to_python_receiver_ipv6";
    if !kernel_or_skip(test) || python_or_skip(test).is_none() {
        return;
    }
    let plan = ExportPlan::mixed(1_500, &["checkout", "payments"], 100);
    let receiver = PyReceiver::start_v6();
    run_python("python direct -> python over IPv6", plan, &receiver);
    receiver.stop();
}

// ---------------------------------------------------------------------------------------------
// The actions (README, "Evaluation, per record") end to end with both real SDK exporters, checked
// against the model (dt_tests::model).

/// What the model says happens to a record.
#[derive(Clone, Debug)]
enum Fate {
    /// Leaves, as `edited`; `redactors` are the redact rules that matched it.
    Kept {
        edited: ReceivedRecord,
        redactors: Vec<usize>,
    },
    /// Dropped by this drop rule.
    Dropped(usize),
    /// Stopped at this sample or rate_limit rule: kept (as `edited`) or dropped, as the kernel
    /// decides.
    Decided {
        rule: usize,
        edited: ReceivedRecord,
        redactors: Vec<usize>,
    },
}

/// Evaluates `rules` over `sent` with the model, leaving sample and rate_limit ends to what the
/// kernel decides (rules see the record as sent; edits apply when it leaves).
fn evaluate_actions(rules: &[RuleSpec], sent: &[SentRecord]) -> (Vec<u64>, Vec<Fate>) {
    let mut matched = vec![0u64; rules.len()];
    let mut fates = Vec::with_capacity(sent.len());
    for s in sent {
        let e = evaluate_record(rules, &Facts::from(&s.record));
        for &i in &e.matched {
            matched[i] += 1;
        }
        let edited = || Redaction::of(rules, &e.redactors).apply(&s.record);
        fates.push(match e.end {
            End::Kept => Fate::Kept {
                edited: edited(),
                redactors: e.redactors.clone(),
            },
            End::Dropped(i) => Fate::Dropped(i),
            End::Decided(rule) => Fate::Decided {
                rule,
                edited: edited(),
                redactors: e.redactors.clone(),
            },
        });
    }
    (matched, fates)
}

/// Checks what arrived and every counter against the model. `elapsed` bounds the time over
/// which the records were evaluated (for rate_limit).
fn check_actions(
    name: &str,
    rules: &[RuleSpec],
    sent: &[SentRecord],
    received: &[ReceivedRecord],
    stats: &dt_agent::Stats,
    elapsed: Duration,
) {
    let (matched, fates) = evaluate_actions(rules, sent);
    let mut problems = Vec::new();

    // What arrived: every certainly kept record, plus some of the decided ones, nothing else.
    let mut arrived: BTreeMap<&ReceivedRecord, i64> = BTreeMap::new();
    for r in received {
        *arrived.entry(r).or_default() += 1;
    }
    for f in &fates {
        if let Fate::Kept { edited, .. } = f {
            let n = arrived.entry(edited).or_default();
            *n -= 1;
            if *n < 0 {
                problems.push(format!("missing kept record {edited:?}"));
            }
        }
    }
    // Decided records that arrived are kept (claimed in order), the others dropped.
    let mut kept_of = vec![0u64; rules.len()];
    let mut dropped_of = vec![0u64; rules.len()];
    let mut dropped_bytes_of = vec![0u64; rules.len()];
    let mut redacted_of = vec![0u64; rules.len()];
    let mut records_dropped = 0u64;
    for (f, s) in fates.iter().zip(sent) {
        match f {
            Fate::Kept { redactors, .. } => {
                for &i in redactors {
                    redacted_of[i] += 1;
                }
            }
            Fate::Dropped(i) => {
                dropped_of[*i] += 1;
                dropped_bytes_of[*i] += s.field_len;
                records_dropped += 1;
            }
            Fate::Decided {
                rule,
                edited,
                redactors,
            } => match arrived.get_mut(edited) {
                Some(n) if *n > 0 => {
                    *n -= 1;
                    kept_of[*rule] += 1;
                    for &i in redactors {
                        redacted_of[i] += 1;
                    }
                }
                _ => {
                    dropped_of[*rule] += 1;
                    dropped_bytes_of[*rule] += s.field_len;
                    records_dropped += 1;
                }
            },
        }
    }
    for (r, n) in &arrived {
        if *n > 0 {
            problems.push(format!("unexpected record x{n}: {r:?}"));
        }
    }

    for (i, rule) in rules.iter().enumerate() {
        let rn = &rule.name;
        let Some(got) = stats.rule(rn) else {
            problems.push(format!("rule {rn} not listed"));
            continue;
        };
        if got.action != rule.action.as_str() || !got.active {
            problems.push(format!(
                "rule {rn}: action {:?} active {} want {:?} active",
                got.action,
                got.active,
                rule.action.as_str()
            ));
        }
        let mut want = |what: &str, got: u64, want: u64| {
            if got != want {
                problems.push(format!("rule {rn}: {what} {got} want {want}"));
            }
        };
        want("matched", got.matched, matched[i]);
        match rule.action {
            Action::Count => {}
            Action::Drop => {
                want("dropped", got.dropped, dropped_of[i]);
                want("dropped_bytes", got.dropped_bytes, dropped_bytes_of[i]);
                want("kept", got.kept, 0);
            }
            Action::Sample { keep_one_in: n } => {
                want("kept (records that arrived)", got.kept, kept_of[i]);
                want("dropped", got.dropped, dropped_of[i]);
                want("dropped_bytes", got.dropped_bytes, dropped_bytes_of[i]);
                want(
                    "kept (ceil(matched/keep_one_in))",
                    kept_of[i],
                    matched[i].div_ceil(n),
                );
            }
            Action::RateLimit { per_second } => {
                want("kept (records that arrived)", got.kept, kept_of[i]);
                want("dropped", got.dropped, dropped_of[i]);
                want("dropped_bytes", got.dropped_bytes, dropped_bytes_of[i]);
                let low = per_second.min(matched[i]);
                let high =
                    (per_second + (per_second as f64 * elapsed.as_secs_f64()).ceil() as u64 + 1)
                        .min(matched[i]);
                if kept_of[i] < low || kept_of[i] > high {
                    // Reported through `want` so the message names both bounds.
                    want(
                        &format!(
                            "kept outside [{low}, {high}] (per_second {per_second}, matched {}, \
                             {elapsed:?} elapsed): kept",
                            matched[i]
                        ),
                        kept_of[i],
                        if kept_of[i] < low { low } else { high },
                    );
                }
            }
            Action::Redact { .. } => {
                want(
                    "redacted (kept records it matched)",
                    got.redacted,
                    redacted_of[i],
                );
                want("dropped", got.dropped, 0);
            }
        }
    }
    if stats.totals.records != sent.len() as u64 {
        problems.push(format!(
            "totals.records {} want {}",
            stats.totals.records,
            sent.len()
        ));
    }
    if stats.totals.records_dropped != records_dropped {
        problems.push(format!(
            "totals.records_dropped {} want {records_dropped}",
            stats.totals.records_dropped
        ));
    }
    assert!(
        problems.is_empty(),
        "{name}: differs from the model:\n  {}\nstats: {stats:#?}",
        problems.join("\n  ")
    );
}

#[derive(Clone, Copy, Debug)]
enum Sdk {
    Python,
    Rust,
}

/// Exports `plan` with `sdk` to `collector`: the records as encoded, the number of requests, and
/// a bound on the time over which they were sent.
fn export(
    sdk: Sdk,
    collector: &dyn Collector,
    plan: &ExportPlan,
) -> (Vec<SentRecord>, usize, Duration) {
    match sdk {
        Sdk::Python => {
            let r = export_with_python(&collector.url(), plan);
            r.assert_all_ok(plan.total());
            (r.sent, r.batches_ok, r.elapsed)
        }
        Sdk::Rust => {
            let t0 = Instant::now();
            let r = export_with_real_exporter_to(&collector.url(), plan);
            let elapsed = t0.elapsed();
            r.assert_all_ok(plan.total());
            (r.sent, r.batches_ok, elapsed)
        }
    }
}

/// Runs `plan` through an agent with `rules`: the Python exporter to the Python receiver, the
/// Rust exporter to the hyper receiver. Returns what arrived, for extra checks.
fn run_actions(test: &str, sdk: Sdk, rules: &[RuleSpec], plan: &ExportPlan) -> Vec<ReceivedRecord> {
    let py;
    let hy;
    let collector: &dyn Collector = match sdk {
        Sdk::Python => {
            py = PyReceiver::start_v4();
            &py
        }
        Sdk::Rust => {
            hy = Receiver::start_v4();
            &hy
        }
    };
    let dir = TempRules::with_files(&[("50-actions.toml", &rules_toml(rules))]);
    let agent = start_agent(&dir, &[collector.port()]);
    let (sent, requests, elapsed) = export(sdk, collector, plan);
    if plan.mode == ExportMode::Direct {
        assert_eq!(requests, plan.direct_batches(), "{test}: requests");
    }
    collector.wait_requests(requests, WAIT);
    collector.no_more(requests, Duration::from_millis(100));
    let stats = stats_of(&agent);
    drop(agent);

    assert_same_records(
        &format!("{test}: plan vs exporter"),
        &plan.records(),
        &sent.iter().map(|s| s.record.clone()).collect::<Vec<_>>(),
    );
    let failures = collector.failures();
    assert!(
        failures.is_empty(),
        "{test}: {} receiver could not decode: {failures:?}",
        collector.kind()
    );
    assert!(collector.all_ok(), "{test}: a request was not answered 200");
    let received = collector.decoded();
    check_actions(test, rules, &sent, &received, &stats, elapsed);
    assert_no_passthrough(&stats);
    assert_eq!(stats.totals.requests, requests as u64, "{test}: requests");
    assert_eq!(
        stats.totals.bytes_out,
        collector.wire_bytes(),
        "{test}: bytes_out vs bytes the {} receiver read",
        collector.kind()
    );
    received
}

fn actions_or_skip(test: &str) -> bool {
    kernel_or_skip(test) && python_or_skip(test).is_some()
}

fn sample_rules() -> Vec<RuleSpec> {
    vec![
        RuleSpec::count("count-all"),
        RuleSpec::sample("sample-info", 10).severity("INFO", 9..=12),
        RuleSpec::drop("drop-debug").severity("<=DEBUG", 1..=8),
        RuleSpec::sample("sample-healthz", 3).attribute("http.route", "/healthz"),
        RuleSpec::count("count-survivors"),
    ]
}

/// sample: kept = ceil(matched / keep_one_in) exactly (one agent, exports one after another),
/// and the receiver gets exactly those of the sampled records.
fn sample_test(test: &str, sdk: Sdk) {
    if !actions_or_skip(test) {
        return;
    }
    let plan = ExportPlan::mixed(3_000, &["checkout", "payments"], 200);
    run_actions(test, sdk, &sample_rules(), &plan);
}

#[test]
fn action_sample_python_exporter() {
    sample_test("action_sample_python_exporter", Sdk::Python);
}

#[test]
fn action_sample_rust_exporter() {
    sample_test("action_sample_rust_exporter", Sdk::Rust);
}

fn rate_limit_rules() -> Vec<RuleSpec> {
    vec![
        RuleSpec::rate_limit("limit-checkout", 50).service("checkout"),
        RuleSpec::drop("drop-debug").severity("<=DEBUG", 1..=8),
        RuleSpec::rate_limit("limit-errors", 20).severity(">=ERROR", 17..=24),
        RuleSpec::count("count-after"),
    ]
}

/// rate_limit: a burst far above per_second, sent in well under a second (4 requests of 1000
/// records; each request's records are evaluated at once): kept within
/// [per_second, per_second + per_second * elapsed + 1], the rest dropped.
fn rate_limit_test(test: &str, sdk: Sdk) {
    if !actions_or_skip(test) {
        return;
    }
    let plan = ExportPlan::mixed(4_000, &["checkout", "payments"], 1_000);
    run_actions(test, sdk, &rate_limit_rules(), &plan);
}

#[test]
fn action_rate_limit_python_exporter() {
    rate_limit_test("action_rate_limit_python_exporter", Sdk::Python);
}

#[test]
fn action_rate_limit_rust_exporter() {
    rate_limit_test("action_rate_limit_rust_exporter", Sdk::Rust);
}

/// Records with personal data to redact: `user.email` on every 2nd, `card.number` on every 5th.
fn redact_plan(total: usize, batch_size: usize) -> ExportPlan {
    let services = ["checkout", "payments", "inventory"];
    let mut per: Vec<(String, Vec<PlannedRecord>)> = services
        .iter()
        .map(|s| (s.to_string(), Vec::new()))
        .collect();
    for i in 0..total {
        let mut attributes = vec![("request.id".to_string(), format!("req-{i}"))];
        if i % 2 == 0 {
            attributes.push(("user.email".into(), format!("user{i}@example.com")));
        }
        attributes.push(("http.route".into(), format!("/api/orders/{}", i % 40)));
        if i % 5 == 1 {
            attributes.push((
                "card.number".into(),
                format!("4111-1111-1111-{:04}", i % 10_000),
            ));
        }
        let body = if i % 4 == 0 {
            format!(
                "user user{i}@example.com paid order {i} with card 4111-1111-1111-{:04}",
                i % 10_000
            )
        } else {
            format!("order {i} shipped in {} ms", i % 97)
        };
        per[i % services.len()].1.push(PlannedRecord {
            scope: if i % 3 == 0 { "db" } else { "http" }.into(),
            severity_number: ((i * 5) % 24 + 1) as i32,
            body,
            attributes,
            event_name: None,
        });
    }
    ExportPlan {
        services: per,
        batch_size,
        mode: ExportMode::Direct,
    }
}

fn redact_rules() -> Vec<RuleSpec> {
    vec![
        RuleSpec::redact("strip-pii", &["user.email", "card.number"], false),
        RuleSpec::redact("mask-checkout-bodies", &[], true).service("checkout"),
        RuleSpec::redact("mask-and-strip-payment-errors", &["request.id"], true)
            .service("payments")
            .severity(">=ERROR", 17..=24),
        RuleSpec::drop("drop-debug").severity("<=DEBUG", 1..=8),
        RuleSpec::count("count-kept"),
    ]
}

/// redact: kept records arrive with the named attributes removed and/or the body masked ('*'
/// repeated for the body's length); `redacted` counts the kept records each rule matched.
fn redact_test(test: &str, sdk: Sdk) {
    if !actions_or_skip(test) {
        return;
    }
    let plan = redact_plan(1_500, 100);
    let received = run_actions(test, sdk, &redact_rules(), &plan);
    // Spot checks beyond the model: no personal data left, masked bodies are all '*'.
    for r in &received {
        assert!(
            r.attribute("user.email").is_none() && r.attribute("card.number").is_none(),
            "{test}: unredacted attribute in {r:?}"
        );
        if r.service == "checkout" {
            assert!(
                r.body
                    .as_deref()
                    .is_some_and(|b| !b.is_empty() && b.bytes().all(|c| c == b'*')),
                "{test}: checkout body not masked: {r:?}"
            );
        }
    }
}

#[test]
fn action_redact_python_exporter() {
    redact_test("action_redact_python_exporter", Sdk::Python);
}

#[test]
fn action_redact_rust_exporter() {
    redact_test("action_redact_rust_exporter", Sdk::Rust);
}

/// The action model itself (no kernel): sample and redact fates on a few records.
#[test]
fn action_model() {
    let rec = |svc: &str, sev: i32, body: &str, attrs: &[(&str, &str)]| SentRecord {
        record: ReceivedRecord {
            service: svc.into(),
            scope: "s".into(),
            severity_number: sev,
            body: Some(body.into()),
            attributes: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        },
        field_len: 10,
    };
    let rules = vec![
        RuleSpec::redact("strip", &["user.email"], false),
        RuleSpec::redact("mask", &[], true).service("checkout"),
        RuleSpec::sample("sample", 2).severity("INFO", 9..=12),
        RuleSpec::drop("drop").severity("<=DEBUG", 1..=8),
    ];
    let sent = vec![
        rec("checkout", 9, "abc", &[("user.email", "x"), ("k", "v")]),
        rec("checkout", 5, "debug", &[]),
        rec("payments", 13, "warn", &[("user.email", "y")]),
        rec("payments", 9, "info", &[]),
    ];
    let (matched, fates) = evaluate_actions(&rules, &sent);
    assert_eq!(matched, vec![4, 2, 2, 1]);
    assert!(matches!(&fates[0], Fate::Decided { rule: 2, edited, .. }
        if edited.body.as_deref() == Some("***") && edited.attributes == vec![("k".to_string(), "v".to_string())]));
    assert!(matches!(fates[1], Fate::Dropped(3)));
    assert!(
        matches!(&fates[2], Fate::Kept { edited, redactors } if edited.attributes.is_empty() && redactors == &vec![0])
    );
    assert!(matches!(fates[3], Fate::Decided { rule: 2, .. }));

    let toml = rules_toml(&rules);
    assert!(
        toml.contains(
            "name = \"strip\"\naction = \"redact\"\nremove_attributes = [\"user.email\"]\n"
        )
    );
    assert!(toml.contains(
        "name = \"sample\"\naction = \"sample\"\nkeep_one_in = 2\n[rule.match]\nseverity = \"INFO\"\n"
    ));
    assert!(
        toml.contains("name = \"mask\"\naction = \"redact\"\nmask_body = true\n[rule.match]\n")
    );
}

/// A kernel as the README describes it, from the model ([`simulate`]): sample keeps the 1st,
/// (N+1)th, ... match of its rule, rate_limit keeps the first `per_second` (no time passes),
/// redact edits kept records. Returns what arrives and the counters.
fn simulated_kernel(
    rules: &[RuleSpec],
    sent: &[SentRecord],
) -> (Vec<ReceivedRecord>, dt_agent::Stats) {
    let sim = simulate(rules, sent);
    let mut stats = dt_agent::Stats {
        rules: rules
            .iter()
            .zip(&sim.counts)
            .map(|(r, c)| dt_agent::stats::RuleStats {
                name: r.name.clone(),
                action: r.action.as_str().into(),
                hook: "otlp".into(),
                active: true,
                matched: c.matched,
                kept: c.kept,
                dropped: c.dropped,
                dropped_bytes: c.dropped_bytes,
                redacted: c.redacted,
                fired: None,
                groups: None,
            })
            .collect(),
        ..Default::default()
    };
    stats.totals.records = sim.records;
    stats.totals.records_dropped = sim.records_dropped;
    (sim.kept, stats)
}

/// The action checks (no kernel): they accept the simulated kernel and reject it when one thing
/// is off, so the gated tests above are sound before the kernel side lands.
#[test]
fn action_checks_accept_a_correct_kernel_and_reject_wrong_ones() {
    let sets: [(&str, Vec<RuleSpec>, ExportPlan); 3] = [
        (
            "sample",
            sample_rules(),
            ExportPlan::mixed(3_000, &["checkout", "payments"], 200),
        ),
        (
            "rate_limit",
            rate_limit_rules(),
            ExportPlan::mixed(4_000, &["checkout", "payments"], 1_000),
        ),
        ("redact", redact_rules(), redact_plan(1_500, 100)),
    ];
    for (what, rules, plan) in sets {
        let sent: Vec<SentRecord> = plan
            .records()
            .into_iter()
            .enumerate()
            .map(|(i, record)| SentRecord {
                record,
                field_len: 50 + i as u64 % 7,
            })
            .collect();
        let (arrived, stats) = simulated_kernel(&rules, &sent);
        assert!(arrived.len() < sent.len() && !arrived.is_empty(), "{what}");
        let elapsed = Duration::from_millis(300);
        check_actions(what, &rules, &sent, &arrived, &stats, elapsed);

        let rejects = |why: &str, arrived: &[ReceivedRecord], stats: &dt_agent::Stats| {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                check_actions(what, &rules, &sent, arrived, stats, elapsed)
            }));
            assert!(r.is_err(), "{what}: the checks accepted {why}");
        };
        let mut fewer = arrived.clone();
        fewer.remove(fewer.len() / 2);
        rejects("a missing record", &fewer, &stats);
        let mut more = arrived.clone();
        more.push(arrived[0].clone());
        rejects("a duplicated record", &more, &stats);
        for (i, rule) in rules.iter().enumerate() {
            let mut s = stats.clone();
            match rule.action {
                Action::Count => continue,
                Action::Drop => s.rules[i].dropped_bytes += 1,
                Action::Sample { .. } | Action::RateLimit { .. } => s.rules[i].kept += 1,
                Action::Redact { .. } => s.rules[i].redacted += 1,
            }
            rejects(&format!("a wrong counter on {}", rule.name), &arrived, &s);
        }
        if what == "redact" {
            // An unredacted record.
            let original: Vec<ReceivedRecord> = plan.records();
            let mut leaked = arrived.clone();
            let j = leaked
                .iter()
                .position(|r| r.body.as_deref().is_some_and(|b| b.starts_with('*')))
                .expect("a masked record");
            let k = original
                .iter()
                .position(|o| {
                    o.service == leaked[j].service
                        && o.body.as_ref().map(String::len)
                            == leaked[j].body.as_ref().map(String::len)
                })
                .unwrap();
            leaked[j].body = original[k].body.clone();
            rejects("an unmasked body", &leaked, &stats);
        }
        if what == "sample" {
            // One more kept than ceil(matched / N), consistently in records and counters.
            let i = rules.iter().position(|r| r.name == "sample-info").unwrap();
            let (_, fates) = evaluate_actions(&rules, &sent);
            let extra = fates
                .iter()
                .find_map(|f| match f {
                    Fate::Decided { rule, edited, .. }
                        if *rule == i && !arrived.contains(edited) =>
                    {
                        Some(edited.clone())
                    }
                    _ => None,
                })
                .unwrap();
            let mut more = arrived.clone();
            more.push(extra);
            let mut s = stats.clone();
            s.rules[i].kept += 1;
            s.rules[i].dropped -= 1;
            s.totals.records_dropped -= 1;
            rejects("kept = ceil(matched/N) + 1", &more, &s);
        }
    }
}

/// `mask_body` on bodies that are not strings, as the Python SDK sends them (a dict is a
/// kvlist_value, a list an array_value, an int an int_value): each value arrives replaced by a
/// string of `*` filling its bytes, nothing of it readable, no length around it changed; a
/// string body is masked in place as before. The request stays valid.
#[test]
fn python_structured_bodies_are_masked_whole() {
    let test = "python_structured_bodies_are_masked_whole";
    if !kernel_or_skip(test) || python_or_skip(test).is_none() {
        return;
    }
    let receiver = Receiver::start_v4();
    let rules = vec![RuleSpec::redact("mask-accounts", &[], true).service("accounts")];
    let dir = TempRules::from_rules(&rules);
    let agent = start_agent(&dir, &[receiver.port()]);
    let record = |body: &str| PlannedRecord {
        scope: "auth".into(),
        severity_number: 9,
        body: body.into(),
        attributes: vec![],
        event_name: None,
    };
    let plan = ExportPlan {
        services: vec![("accounts".into(), (0..4).map(|_| record("")).collect())],
        batch_size: 10,
        mode: ExportMode::Direct,
    };
    let mut v = dt_tests::python_plan(&receiver.logs_url(), &plan);
    let bodies = [
        serde_json::json!("login failed for bob@example.com"),
        serde_json::json!({"msg": "login", "email": "bob@example.com"}),
        serde_json::json!(["bob@example.com", 7]),
        serde_json::json!(4111111111111111u64),
    ];
    dt_tests::set_bodies(&mut v, &bodies);
    let report = dt_tests::export_python_value(&v);
    report.assert_all_ok(4);
    receiver.wait_for(1, WAIT);
    let got = receiver.requests();
    assert_eq!(got.len(), 1);
    assert!(
        !got[0]
            .body
            .windows(b"bob@example.com".len())
            .any(|w| w == b"bob@example.com"),
        "{test}: a body left readable"
    );
    let records = got[0].records();
    let masked: Vec<&str> = records.iter().map(|r| r.body.as_deref().unwrap()).collect();
    assert!(
        masked.iter().all(|b| b.bytes().all(|c| c == b'*')),
        "{test}: {masked:?}"
    );
    // The string in place; the others fill their value's bytes: a kvlist of two pairs, an
    // array of a string and an int, an int_value of an 8-byte varint (9 bytes: a 2-byte
    // string header and 7 '*').
    assert_eq!(masked[0].len(), "login failed for bob@example.com".len());
    assert!(masked[1].len() > "loginbob@example.com".len(), "{masked:?}");
    assert!(masked[2].len() > "bob@example.com".len(), "{masked:?}");
    assert_eq!(masked[3].len(), 7);
    let s = stats_of(&agent);
    assert_eq!(s.rule("mask-accounts").unwrap().redacted, 4);
    assert_eq!(s.totals.bytes_in, s.totals.bytes_out, "no length changed");
    assert_no_passthrough(&s);
}
