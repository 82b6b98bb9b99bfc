//! `[[probe]]` tables and rules on uprobe hooks: parsing, linking and compiling.

use std::path::PathBuf;

use dt_ebpf_common::uprobe::{MAX_PROBE_RULES, PRS_BODY};
use dt_ebpf_common::{ACTION_CAPTURE, ACTION_COUNT, ACTION_DROP};

use super::{build, error, errors, load};
use crate::rules::{
    Action, Hook, Pos, ProbeKind, SeverityMap, SeveritySource, SlotTable, compile, load_sources,
};

const SYSLOG: &str = "[[probe]]\nname = \"syslog\"\npreset = \"syslog\"\n";

fn with_probe(probe: &str, rules: &str) -> String {
    format!("{probe}\n{rules}")
}

#[test]
fn the_syslog_preset_defaults_to_libc() {
    let text = with_probe(
        SYSLOG,
        "[[rule]]\nname = \"errors\"\naction = \"count\"\nhooks = [\"uprobe:syslog\"]\n",
    );
    let rules = load(&text).unwrap();
    assert_eq!(rules.len(), 1);
    let r = &rules[0];
    assert_eq!(r.hooks, vec![Hook::Uprobe("syslog".into())]);
    assert_eq!(
        r.hook_pos,
        vec![Pos {
            line: 8,
            column: 10
        }]
    );
    let p = r.probe("syslog").expect("linked");
    assert_eq!(p.kind, ProbeKind::Syslog);
    assert_eq!(p.binary.value, "libc");
    assert_eq!(p.binary.pos, Pos { line: 1, column: 1 });
    assert_eq!(p.pos, Pos { line: 1, column: 1 });
    assert_eq!(p.pid, None);
    assert_eq!(p.service, None);
}

#[test]
fn a_function_probe_parses_every_key() {
    let text = with_probe(
        r#"[[probe]]
name = "app"
binary = "/usr/local/bin/app"
symbol = "log_write"
severity_arg = 1
severity_map = { 0 = "DEBUG", 1 = "info", 2 = 13, -1 = "FATAL" }
message_arg = 0
pid = 4242
service = "checkout"
"#,
        "[[rule]]\nname = \"r\"\naction = \"capture\"\nhooks = [\"otlp\", \"uprobe:app\"]\n",
    );
    // capture is refused on otlp: only the uprobe hook here.
    let e = error(&text);
    assert_eq!(e, "r.toml:13:10: capture is only for uprobe hooks");
    let text = text.replace("[\"otlp\", \"uprobe:app\"]", "[\"uprobe:app\"]");
    let rules = load(&text).unwrap();
    let p = &rules[0].probes[0];
    assert_eq!(p.binary.value, "/usr/local/bin/app");
    assert_eq!(p.pid.as_ref().map(|p| p.value), Some(4242));
    assert_eq!(
        p.service.as_ref().map(|s| s.value.as_str()),
        Some("checkout")
    );
    match &p.kind {
        ProbeKind::Function {
            symbol,
            severity,
            message_arg,
        } => {
            assert_eq!(symbol.value, "log_write");
            assert_eq!(*message_arg, 0);
            assert_eq!(
                *severity,
                SeveritySource::Arg {
                    index: 1,
                    map: SeverityMap::Table(vec![(-1, 21), (0, 5), (1, 9), (2, 13)])
                }
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(rules[0].action.value, Action::Capture);
}

#[test]
fn severity_sources() {
    let probe = |extra: &str| {
        let text = with_probe(
            &format!(
                "[[probe]]\nname = \"p\"\nbinary = \"libapp\"\nsymbol = \"f\"\nmessage_arg = 1\n{extra}"
            ),
            "[[rule]]\nname = \"r\"\naction = \"count\"\nhooks = [\"uprobe:p\"]\n",
        );
        let rules = load(&text).unwrap_or_else(|e| panic!("{e:#?}"));
        match &rules[0].probes[0].kind {
            ProbeKind::Function { severity, .. } => severity.clone(),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(probe(""), SeveritySource::Const(0));
    assert_eq!(probe("severity = \"WARN\"\n"), SeveritySource::Const(13));
    assert_eq!(probe("severity = 3\n"), SeveritySource::Const(3));
    assert_eq!(
        probe("severity_arg = 0\n"),
        SeveritySource::Arg {
            index: 0,
            map: SeverityMap::Otlp
        }
    );
    assert_eq!(
        probe("severity_arg = 2\nseverity_map = \"syslog\"\n"),
        SeveritySource::Arg {
            index: 2,
            map: SeverityMap::Syslog
        }
    );
}

#[test]
fn probe_errors_point_at_their_key() {
    let rule = "[[rule]]\nname = \"r\"\naction = \"count\"\nhooks = [\"uprobe:p\"]\n";
    let cases = [
        (
            "preset = \"journald\"\n",
            "r.toml:3:10: unknown preset \"journald\": expected \"syslog\"",
        ),
        (
            "preset = \"syslog\"\nsymbol = \"syslog\"\n",
            "r.toml:4:10: symbol is set by preset \"syslog\"; leave it out",
        ),
        (
            "binary = \"libc\"\nmessage_arg = 1\n",
            "r.toml:1:1: a probe needs symbol (the function to probe) or a preset",
        ),
        (
            "binary = \"libc\"\nsymbol = \"f\"\n",
            "r.toml:1:1: a probe needs message_arg (the index of the function's `char *` message argument)",
        ),
        (
            "symbol = \"f\"\nmessage_arg = 0\n",
            "r.toml:1:1: a probe needs binary (a path, or a library name such as \"libc\")",
        ),
        (
            "binary = \"lib/app.so\"\nsymbol = \"f\"\nmessage_arg = 0\n",
            "r.toml:3:10: binary must be an absolute path, or a library name such as \"libc\"",
        ),
        (
            "binary = \"libc\"\nsymbol = \"f\"\nmessage_arg = 6\n",
            "r.toml:5:15: message_arg must be an argument index 0-5 (the first six integer or pointer arguments)",
        ),
        (
            "binary = \"libc\"\nsymbol = \"f\"\nmessage_arg = 0\nseverity_arg = 0\n",
            "r.toml:6:16: severity_arg and message_arg are the same argument",
        ),
        (
            "binary = \"libc\"\nsymbol = \"f\"\nmessage_arg = 0\nseverity_map = \"syslog\"\n",
            "r.toml:6:16: severity_map needs severity_arg",
        ),
        (
            "binary = \"libc\"\nsymbol = \"f\"\nmessage_arg = 0\nseverity_arg = 1\nseverity = \"INFO\"\n",
            "r.toml:7:12: give severity_arg or a constant severity, not both",
        ),
        (
            "binary = \"libc\"\nsymbol = \"f\"\nmessage_arg = 0\nseverity_arg = 1\nseverity_map = { x = \"INFO\" }\n",
            "r.toml:7:18: severity_map key \"x\" is not an integer (a 32-bit argument value)",
        ),
        (
            "binary = \"libc\"\nsymbol = \"f\"\nmessage_arg = 0\nseverity_arg = 1\nseverity_map = { 1 = \"LOUD\" }\n",
            "r.toml:7:22: invalid severity \"LOUD\": unknown level \"LOUD\" (expected TRACE, DEBUG, INFO, WARN, ERROR, FATAL, a number 1-24, or UNSPECIFIED)",
        ),
        (
            "binary = \"libc\"\nsymbol = \"f\"\nmessage_arg = 0\nseverity_arg = 1\nseverity_map = \"loud\"\n",
            "r.toml:7:16: unknown severity_map \"loud\": expected \"otlp\", \"syslog\" or a table such as { 0 = \"DEBUG\", 1 = \"INFO\" }",
        ),
        (
            "preset = \"syslog\"\npid = 0\n",
            "r.toml:4:7: pid must be a process id (1 or more)",
        ),
        (
            "preset = \"syslog\"\nservice = \"\"\n",
            "r.toml:4:11: service must not be empty",
        ),
        (
            "preset = \"syslog\"\nbogus = 1\n",
            "r.toml:4:1: unknown key `bogus`; the keys here are `name`, `preset`, `binary`, `symbol`, `severity_arg`, `severity_map`, `severity`, `message_arg`, `pid`, `service`",
        ),
    ];
    for (body, want) in cases {
        let text = format!("[[probe]]\nname = \"p\"\n{body}\n{rule}");
        assert_eq!(error(&text), want, "{body}");
    }
    // A misspelt key is checked as the one it was meant to be.
    let text = format!("[[probe]]\nname = \"p\"\npreset = \"syslog\"\nsymbl = \"x\"\n{rule}");
    assert_eq!(
        errors(&text),
        [
            "r.toml:4:1: unknown key `symbl` (did you mean `symbol`?); the keys here are `name`, \
             `preset`, `binary`, `symbol`, `severity_arg`, `severity_map`, `severity`, \
             `message_arg`, `pid`, `service`",
            "r.toml:4:9: symbol is set by preset \"syslog\"; leave it out",
        ]
    );
}

#[test]
fn probe_names_are_unique_across_files() {
    let a = (PathBuf::from("a.toml"), SYSLOG.to_string());
    let b = (
        PathBuf::from("b.toml"),
        format!(
            "{SYSLOG}[[rule]]\nname = \"r\"\naction = \"count\"\nhooks = [\"uprobe:syslog\"]\n"
        ),
    );
    let e = load_sources(&[a.clone(), b]).unwrap_err();
    let e: Vec<String> = e.iter().map(ToString::to_string).collect();
    assert_eq!(
        e,
        vec!["b.toml:2:8: duplicate probe name \"syslog\": first defined at a.toml:2"]
    );
    // A rule in one file hooks a probe of another.
    let c = (
        PathBuf::from("c.toml"),
        "[[rule]]\nname = \"r\"\naction = \"count\"\nhooks = [\"uprobe:syslog\"]\n".to_string(),
    );
    let rules = load_sources(&[a, c]).unwrap();
    assert_eq!(rules[0].probes[0].file, PathBuf::from("a.toml"));
}

#[test]
fn uprobe_hooks_take_count_capture_and_drop_only() {
    for action in ["sample\"\nkeep_one_in = 2", "rate_limit\"\nper_second = 2"] {
        let text = with_probe(
            SYSLOG,
            &format!("[[rule]]\nname = \"r\"\nhooks = [\"uprobe:syslog\"]\naction = \"{action}\n"),
        );
        let e = error(&text);
        assert!(
            e.starts_with("r.toml:8:10: ")
                && e.contains(
                    "is not supported on uprobe hooks: they take count, capture and trigger"
                ),
            "{e}"
        );
    }
    let text = with_probe(
        SYSLOG,
        "[[rule]]\nname = \"r\"\naction = \"redact\"\nmask_body = true\nhooks = [\"uprobe:syslog\"]\n",
    );
    assert!(error(&text).contains("redact is not supported on uprobe hooks"));
    for action in ["count", "capture", "drop"] {
        let text = with_probe(
            SYSLOG,
            &format!(
                "[[rule]]\nname = \"r\"\naction = \"{action}\"\nhooks = [\"uprobe:syslog\"]\n"
            ),
        );
        build(&text).unwrap_or_else(|e| panic!("{action}: {e:#?}"));
    }
}

#[test]
fn attributes_do_not_apply_to_uprobe_hooks() {
    let text = with_probe(
        SYSLOG,
        "[[rule]]\nname = \"r\"\naction = \"count\"\nhooks = [\"otlp\", \"uprobe:syslog\"]\n[rule.match]\nattributes = { k = \"v\" }\n",
    );
    assert_eq!(
        error(&text),
        "r.toml:10:16: attributes conditions do not apply to uprobe hooks: a probed call has a \
         severity, a message (body_contains) and a service only"
    );
}

#[test]
fn uprobe_rules_compile_to_their_own_rule_set() {
    let text = format!(
        "{SYSLOG}
[[probe]]
name = \"app\"
binary = \"/opt/app\"
symbol = \"log_write\"
message_arg = 1
service = \"checkout\"

[[rule]]
name = \"all-errors\"
action = \"count\"
hooks = [\"otlp\", \"uprobe:syslog\"]
[rule.match]
severity = \">=ERROR\"

[[rule]]
name = \"capture-timeouts\"
action = \"capture\"
hooks = [\"uprobe:syslog\", \"uprobe:app\"]
[rule.match]
body_contains = \"timeout\"
service = \"checkout\"

[[rule]]
name = \"drop-noise\"
action = \"drop\"
hooks = [\"uprobe:app\"]
"
    );
    let c = build(&text).unwrap_or_else(|e| panic!("{e:#?}"));
    // OTLP: only all-errors.
    assert_eq!(c.ruleset.n_rules, 1);
    let u = &c.uprobe;
    assert_eq!(u.rules.n_rules, 4);
    let r = &u.rules.rules;
    let slot = |name: &str| c.rules.iter().find(|r| r.name == name).unwrap().slot;
    assert_eq!(
        (
            r[0].slot,
            r[0].action,
            r[0].probes,
            r[0].sev_lo,
            r[0].sev_hi
        ),
        (slot("all-errors"), ACTION_COUNT, 1, 17, 24)
    );
    assert_eq!((r[1].action, r[1].probes), (ACTION_CAPTURE, 1));
    assert_eq!((r[2].action, r[2].probes), (ACTION_CAPTURE, 2));
    assert_eq!((r[3].action, r[3].probes), (ACTION_DROP, 2));
    assert_eq!(r[1].slot, r[2].slot);
    assert_ne!(r[1].body, 0);
    assert_eq!(r[1].body, r[2].body);
    assert_ne!(r[1].service, 0);
    assert_eq!(u.rules.flags & PRS_BODY, PRS_BODY);
    assert!(!c.ac.is_empty());
    assert_eq!(u.probes.len(), 2);
    assert_eq!(u.probes[0].def.name.value, "syslog");
    assert_eq!(u.probes[0].service_bits, 0);
    assert_eq!(u.probes[1].service_bits, r[1].service);
    assert_eq!(u.comms.len(), 1);
    assert_eq!(&u.comms[0].0[..9], b"checkout\0");
    assert_eq!(u.comms[0].1, r[1].service);
    let drops: Vec<_> = u
        .drops
        .iter()
        .map(|d| (d.rule.as_str(), d.hook.as_str(), d.pos))
        .collect();
    assert_eq!(
        drops,
        vec![(
            "drop-noise",
            "uprobe:app",
            Pos {
                line: 29,
                column: 10
            }
        )]
    );
    assert_eq!(u.captures.len(), 2);
    let hooks: Vec<_> = c
        .rules
        .iter()
        .map(|r| (r.name.as_str(), r.hook.as_str()))
        .collect();
    assert_eq!(
        hooks,
        vec![
            ("all-errors", "otlp"),
            ("all-errors", "uprobe:syslog"),
            ("capture-timeouts", "uprobe:syslog"),
            ("capture-timeouts", "uprobe:app"),
            ("drop-noise", "uprobe:app"),
        ]
    );
    // `rules` lists each rule once, with its hooks.
    let listed: Vec<_> = crate::control::RuleInfo::of_rules(&c.rules)
        .into_iter()
        .map(|i| (i.name, i.hook))
        .collect();
    let listed: Vec<_> = listed
        .iter()
        .map(|(n, h)| (n.as_str(), h.as_str()))
        .collect();
    assert_eq!(
        listed,
        vec![
            ("all-errors", "otlp,uprobe:syslog"),
            ("capture-timeouts", "uprobe:syslog,uprobe:app"),
            ("drop-noise", "uprobe:app"),
        ]
    );
}

#[test]
fn too_many_uprobe_rules_is_an_error() {
    let mut text = SYSLOG.to_string();
    for i in 0..=MAX_PROBE_RULES {
        text.push_str(&format!(
            "[[rule]]\nname = \"r{i}\"\naction = \"count\"\nhooks = [\"uprobe:syslog\"]\n"
        ));
    }
    let e = errors(&text);
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(
        e[0].ends_with("too many rules on uprobe hooks: a rule set holds at most 64"),
        "{e:?}"
    );
    // A probe no rule hooks is not part of the compiled set.
    let c = compile(&load(SYSLOG).unwrap(), &mut SlotTable::new()).unwrap();
    assert!(c.uprobe.probes.is_empty());
}

#[test]
fn a_service_longer_than_a_process_name_on_a_probe_without_one_is_an_error() {
    let rule = |service: &str| {
        format!(
            "[[rule]]\nname = \"r\"\naction = \"count\"\nhooks = [\"uprobe:syslog\"]\n\
             [rule.match]\nservice = \"{service}\"\n"
        )
    };
    let e = errors(&format!("{SYSLOG}{}", rule("billing-reconciler-daemon")));
    assert_eq!(
        e,
        [
            "r.toml:9:11: service \"billing-reconciler-daemon\" is 25 bytes: on hook \
          \"uprobe:syslog\", whose probe sets no `service`, it is matched against the calling \
          process's name, which the kernel keeps to 15 bytes, so it would never match; write \
          \"billing-reconci\" (or give the probe a `service`)"
        ]
    );
    // 15 bytes fit; with the probe's own service, any length is that service's.
    assert!(
        load(&format!("{SYSLOG}{}", rule("billing-reconci")))
            .and_then(|d| compile(&d, &mut SlotTable::new()))
            .is_ok()
    );
    let own = "[[probe]]\nname = \"syslog\"\npreset = \"syslog\"\nservice = \"billing-reconciler-daemon\"\n";
    assert!(
        load(&format!("{own}{}", rule("billing-reconciler-daemon")))
            .and_then(|d| compile(&d, &mut SlotTable::new()))
            .is_ok()
    );
}

#[test]
fn a_service_cut_inside_a_character_says_no_service_can_match() {
    // 9 two-byte characters: the kernel keeps 15 bytes, half of the eighth.
    let text = format!(
        "{SYSLOG}[[rule]]\nname = \"r\"\naction = \"count\"\nhooks = [\"uprobe:syslog\"]\n\
         [rule.match]\nservice = \"ааааааааа\"\n"
    );
    let e = errors(&text);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].contains("so it would never match; no `service` can match it (the kernel cuts it inside a character) (or give the probe a `service`)"),
        "{e:?}"
    );
}
