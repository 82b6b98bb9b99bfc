//! Parsing and validating rule files.

use std::fs;
use std::path::{Path, PathBuf};

use super::{FILE, error, errors, load, rule};
use crate::rules::{
    Action, AttrValue, Diagnostic, Hook, Pos, SeverityRange, load_dir, load_files, load_sources,
};

fn load_one(text: &str) -> crate::rules::RuleDef {
    let mut rules = load(text).unwrap_or_else(|e| panic!("{e:#?}"));
    assert_eq!(rules.len(), 1);
    rules.remove(0)
}

fn display(diags: &[Diagnostic]) -> Vec<String> {
    diags.iter().map(ToString::to_string).collect()
}

#[test]
fn minimal_rule_gets_defaults() {
    let r = load_one(&rule("a", "drop"));
    assert_eq!(r.file, PathBuf::from(FILE));
    assert_eq!(r.pos, Pos { line: 1, column: 1 });
    assert_eq!(r.name.value, "a");
    assert_eq!(r.name.pos, Pos { line: 2, column: 8 });
    assert_eq!(r.action.value, Action::Drop);
    assert_eq!(
        r.action.pos,
        Pos {
            line: 3,
            column: 10
        }
    );
    assert_eq!(r.hooks, vec![Hook::Otlp]);
    assert_eq!(r.conditions, Default::default());
    assert_eq!(r.conditions.severity_range(), SeverityRange::ANY);
}

#[test]
fn full_rule_parses_every_key() {
    let r = load_one(
        r#"
[[rule]]
name = "full"
action = "count"
hooks = ["otlp"]
[rule.match]
severity = "<INFO"
service = "checkout"
body_contains = "healthcheck"
attributes = { "http.route" = "/healthz", "a" = "" }
"#,
    );
    let m = &r.conditions;
    assert_eq!(r.pos, Pos { line: 2, column: 1 });
    assert_eq!(
        m.severity.as_ref().map(|s| s.value),
        Some(SeverityRange { lo: 1, hi: 8 })
    );
    assert_eq!(
        m.service.as_ref().map(|s| s.value.as_str()),
        Some("checkout")
    );
    assert_eq!(
        m.body_contains.as_ref().map(|s| s.pos),
        Some(Pos {
            line: 9,
            column: 17
        })
    );
    // Attributes keep their source order.
    let attrs: Vec<_> = m
        .attributes
        .iter()
        .map(|(k, v)| (k.value.as_str(), v.value.clone()))
        .collect();
    let s = |v: &str| AttrValue::Str(v.into());
    assert_eq!(attrs, vec![("http.route", s("/healthz")), ("a", s(""))]);
}

#[test]
fn action_parameters_parse() {
    let text = r#"
[[rule]]
name = "s"
action = "sample"
keep_one_in = 10
[[rule]]
name = "r"
action = "rate_limit"
per_second = 5
[[rule]]
name = "x"
action = "redact"
remove_attributes = ["user.email"]
mask_body = true
[[rule]]
name = "m"
action = "redact"
mask_body = true
"#;
    let rules = load(text).unwrap();
    assert_eq!(rules[0].action.value, Action::Sample { keep_one_in: 10 });
    assert_eq!(rules[1].action.value, Action::RateLimit { per_second: 5 });
    match &rules[2].action.value {
        Action::Redact {
            remove_attributes,
            mask_body,
        } => {
            assert_eq!(remove_attributes[0].value, "user.email");
            assert!(*mask_body);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(&rules[3].action.value, Action::Redact { remove_attributes, mask_body: true } if remove_attributes.is_empty())
    );
}

#[test]
fn integer_severity_is_a_bare_number() {
    let r = load_one("[[rule]]\nname = \"a\"\naction = \"count\"\nmatch = { severity = 9 }\n");
    assert_eq!(
        r.conditions.severity_range(),
        SeverityRange { lo: 9, hi: 9 }
    );
}

#[test]
fn empty_file_is_an_empty_rule_set() {
    assert_eq!(load("").unwrap(), vec![]);
    assert_eq!(load("# just a comment\n").unwrap(), vec![]);
}

#[test]
fn unknown_rule_key_is_an_error_at_the_key() {
    let e = error("[[rule]]\nname = \"a\"\naction = \"drop\"\nnme = \"x\"\n");
    assert!(e.starts_with("r.toml:4:1: unknown key `nme`"), "{e}");
}

#[test]
fn unknown_match_key_is_an_error_at_the_key() {
    let e = error(
        "[[rule]]\nname = \"a\"\naction = \"drop\"\n[rule.match]\nseverity = \"INFO\"\n  body = \"x\"\n",
    );
    assert!(e.starts_with("r.toml:6:3: unknown key `body`"), "{e}");
}

#[test]
fn every_unknown_key_of_a_table_is_reported_with_the_tables_other_problems() {
    // A typo at the top of the rule, one in its match table, and a bad value: all three in one
    // run, each where it is.
    let e = errors(
        "[[rule]]\nname = \"a\"\naction = \"drop\"\nkeep_one = 3\n[rule.match]\n\
         severity = \"LOUD\"\nservce = \"x\"\n",
    );
    assert_eq!(e.len(), 3, "{e:#?}");
    assert!(
        e[0].starts_with("r.toml:4:1: unknown key `keep_one`"),
        "{e:#?}"
    );
    assert!(
        e[1].starts_with("r.toml:6:12: invalid severity \"LOUD\""),
        "{e:#?}"
    );
    assert!(
        e[2].starts_with("r.toml:7:1: unknown key `servce`"),
        "{e:#?}"
    );
    // A required key misspelt is read as the key it was meant to be: it is not also reported
    // missing, and the rest of the rule is checked in the same run.
    let e = errors(
        "[[rule]]\nname = \"a\"\nacton = \"drop\"\nkeep_one = 3\n[rule.match]\n\
         severity = \"LOUD\"\nservce = \"x\"\n",
    );
    assert_eq!(e.len(), 4, "{e:#?}");
    assert!(
        e[0].starts_with("r.toml:3:1: unknown key `acton` (did you mean `action`?)"),
        "{e:#?}"
    );
    assert!(
        e[1].starts_with("r.toml:4:1: unknown key `keep_one`"),
        "{e:#?}"
    );
    assert!(
        e[2].starts_with("r.toml:6:12: invalid severity \"LOUD\""),
        "{e:#?}"
    );
    assert!(
        e[3].starts_with("r.toml:7:1: unknown key `servce`"),
        "{e:#?}"
    );
}

#[test]
fn a_misspelt_key_is_checked_as_the_key_it_was_meant_to_be() {
    // The action's parameter misspelt: not "needs keep_one_in" too, and its value is checked.
    let e = errors("[[rule]]\nname = \"a\"\naction = \"sample\"\nkeep_on_in = 0\n");
    assert_eq!(
        e,
        [
            "r.toml:4:1: unknown key `keep_on_in` (did you mean `keep_one_in`?); the keys here \
             are `name`, `action`, `hooks`, `keep_one_in`, `per_second`, `remove_attributes`, \
             `mask_body`, `recorder`, `flush`, `set_state`, `cooldown`, `threshold`, `group_by`, \
             `max_groups`, `match`",
            "r.toml:4:14: keep_one_in must be at least 1",
        ]
    );
    // The misspelt action's value too.
    let e = errors("[[rule]]\nname = \"a\"\nacton = \"dorp\"\n");
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(
        e[0].starts_with("r.toml:3:1: unknown key `acton`"),
        "{e:#?}"
    );
    assert!(
        e[1].starts_with("r.toml:3:9: unknown action \"dorp\""),
        "{e:#?}"
    );
    // A key of a missing recorder's table.
    let e = errors("[[recorder]]\nnme = \"r\"\nsize = \"1MiB\"\n");
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(e[0].starts_with("r.toml:2:1: unknown key `nme`"), "{e:#?}");
}

#[test]
fn a_value_of_the_wrong_type_does_not_hide_the_tables_other_problems() {
    let e = errors(
        "[[rule]]\nname = \"a\"\naction = \"sample\"\nkeep_one_in = \"ten\"\n\
         hooks = [\"otlp\", 5]\nbogus = 1\n[rule.match]\nservice = 5\nsevrity = \"<INFO\"\n",
    );
    assert_eq!(
        e,
        [
            "r.toml:4:15: expected a whole number (without quotes), found the string \"ten\"",
            "r.toml:5:18: expected a string in quotes, found the number 5",
            "r.toml:6:1: unknown key `bogus`; the keys here are `name`, `action`, `hooks`, \
             `keep_one_in`, `per_second`, `remove_attributes`, `mask_body`, `recorder`, `flush`, \
             `set_state`, `cooldown`, `threshold`, `group_by`, `max_groups`, `match`",
            "r.toml:8:11: expected a string in quotes, found the number 5",
            "r.toml:9:1: unknown key `sevrity` (did you mean `severity`?); the keys here are \
             `severity`, `service`, `body_contains`, `attributes`, `event_name`, `state`",
        ]
    );
    // A required key of the wrong type is not also reported missing.
    let e = errors("[[rule]]\nname = 5\naction = \"drop\"\n");
    assert_eq!(
        e,
        ["r.toml:2:8: expected a string in quotes, found the number 5"]
    );
    // A table within the rule that lacks its required key is left out, the rest still read.
    let e = errors(
        "[[rule]]\nname = \"a\"\naction = \"trigger\"\nset_state = [\"s\"]\n\
         threshold = { within = \"1m\" }\nbogus = 1\n\n[[state]]\nname = \"s\"\nduration = \"1m\"\n",
    );
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(
        e[0].starts_with("r.toml:5:13: missing key `count`: this table needs it"),
        "{e:#?}"
    );
    assert!(
        e[1].starts_with("r.toml:6:1: unknown key `bogus`"),
        "{e:#?}"
    );
    // Nor does it hide another required key that is missing.
    let e = errors("[[rule]]\nname = 5\n\n[[state]]\nname = 5\n");
    assert_eq!(
        e,
        [
            "r.toml:1:1: missing key `action`: this table needs it",
            "r.toml:2:8: expected a string in quotes, found the number 5",
            "r.toml:4:1: missing key `duration`: this table needs it",
            "r.toml:5:8: expected a string in quotes, found the number 5",
        ]
    );
    let e = errors("[[state]]\nname = \"s\"\nduration = 10\ndurashun = \"1m\"\n");
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(e[0].starts_with("r.toml:3:12: expected a string"), "{e:#?}");
    assert!(
        e[1].starts_with("r.toml:4:1: unknown key `durashun`"),
        "{e:#?}"
    );
}

#[test]
fn a_condition_written_outside_the_match_table_says_where_it_goes() {
    let e = errors("[[rule]]\nname = \"a\"\naction = \"drop\"\nseverity = \"<INFO\"\n");
    assert_eq!(
        e,
        [
            "r.toml:4:1: unknown key `severity` in a rule: conditions go in its [rule.match] \
          table, after the rule's other keys"
        ]
    );
    let e = errors("[[rule]]\nname = \"a\"\naction = \"drop\"\nbody_contain = \"x\"\n");
    assert_eq!(
        e,
        [
            "r.toml:4:1: unknown key `body_contain` (`body_contains`?) in a rule: conditions go \
          in its [rule.match] table, after the rule's other keys"
        ]
    );
}

#[test]
fn a_rule_key_written_after_the_match_table_says_to_move_it() {
    let e =
        errors("[[rule]]\nname = \"x\"\n[rule.match]\nseverity = \">=ERROR\"\naction = \"drop\"\n");
    assert_eq!(
        e,
        [
            "r.toml:1:1: missing key `action` (the `action` at 5:1 comes after [rule.match], so \
             TOML reads it as a key of the match table: move it above [rule.match])",
            "r.toml:5:1: `action` is a key of the rule, but it comes after [rule.match], so TOML \
             reads it as a key of the match table: move it above [rule.match]",
        ]
    );
    let e = errors(
        "[[rule]]\nname = \"x\"\naction = \"count\"\n[rule.match]\nservice = \"a\"\n\
         group_by = \"severity\"\n",
    );
    assert_eq!(
        e,
        [
            "r.toml:6:1: `group_by` is a key of the rule, but it comes after [rule.match], so TOML \
          reads it as a key of the match table: move it above [rule.match]"
        ]
    );
}

#[test]
fn a_key_written_after_the_attributes_table_is_not_taken_for_an_attribute() {
    let e = errors(
        "[[rule]]\nname = \"x\"\n[rule.match]\nservice = \"a\"\n[rule.match.attributes]\n\
         \"http.route\" = \"/health\"\naction = \"drop\"\n",
    );
    assert_eq!(
        e,
        [
            "r.toml:1:1: missing key `action` (the `action` at 7:1 comes after \
             [rule.match.attributes], so TOML reads it as an attribute condition: move it above \
             [rule.match])",
            "r.toml:7:1: `action` is a key of the rule, but it comes after \
             [rule.match.attributes], so TOML reads it as an attribute condition: move it above \
             [rule.match] (for an attribute named action, quote it: \"action\" = ...)",
        ]
    );
    // Optional keys, which would otherwise load as conditions on attributes nobody sends.
    let e = errors(
        "[[rule]]\nname = \"x\"\naction = \"count\"\n[rule.match.attributes]\n\
         \"http.route\" = \"/health\"\nkeep_one_in = 10\n  severity = \">=ERROR\"\n",
    );
    assert_eq!(
        e,
        [
            "r.toml:6:1: `keep_one_in` is a key of the rule, but it comes after \
             [rule.match.attributes], so TOML reads it as an attribute condition: move it above \
             [rule.match] (for an attribute named keep_one_in, quote it: \"keep_one_in\" = ...)",
            "r.toml:7:3: `severity` is a key of [rule.match], but it comes after \
             [rule.match.attributes], so TOML reads it as an attribute condition: move it above \
             [rule.match.attributes] (for an attribute named severity, quote it: \"severity\" = \
             ...)",
        ]
    );
    // Written so that it can only mean an attribute: quoted, dotted, inline, or a key the rule
    // already has.
    for ok in [
        "[rule.match.attributes]\n\"severity\" = \"x\"\n'recorder' = \"y\"\n",
        "[rule.match]\nattributes.severity = \"x\"\n",
        "[rule.match]\nattributes = { severity = \"x\", recorder = \"y\" }\n",
        "[rule.match]\nseverity = \"INFO\"\n[rule.match.attributes]\nseverity = \"x\"\nname = \"n\"\n\
         user_id = \"u\"\n",
    ] {
        let text = format!("[[rule]]\nname = \"x\"\naction = \"count\"\n{ok}");
        if let Err(e) = super::build(&text) {
            panic!("{text}: {e:?}");
        }
    }
}

#[test]
fn an_unknown_key_and_a_bad_value_are_both_reported() {
    let e = errors("[[rule]]\nname = \"\"\naction = \"drop\"\nnme = \"x\"\n");
    assert_eq!(
        e,
        [
            "r.toml:2:8: name must not be empty",
            "r.toml:4:1: unknown key `nme` (did you mean `name`?); the keys here are `name`, `action`, `hooks`, \
             `keep_one_in`, `per_second`, `remove_attributes`, `mask_body`, `recorder`, `flush`, \
             `set_state`, `cooldown`, `threshold`, `group_by`, `max_groups`, `match`"
        ]
    );
    // In an inline table too.
    let e = errors(
        "[[rule]]\nname = \"a\"\naction = \"trigger\"\nset_state = [\"s\"]\n\
         threshold = { count = 0, within = \"1m\", windw = \"2m\" }\n\
         [[state]]\nname = \"s\"\nduration = \"1m\"\n",
    );
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(e[0].starts_with("r.toml:5:23: "), "{e:#?}");
    assert!(
        e[1].starts_with("r.toml:5:41: unknown key `windw`"),
        "{e:#?}"
    );
}

#[test]
fn unknown_top_level_key_is_an_error() {
    let e = error(&format!("{}\n[rules]\nx = 1\n", rule("a", "drop")));
    assert!(e.starts_with("r.toml:5:2: unknown key `rules`"), "{e}");
}

#[test]
fn bad_toml_syntax_is_an_error_with_its_position() {
    let e = error("[[rule]]\nname = \"a\"\naction = drop\n");
    assert!(e.starts_with("r.toml:3:10: "), "{e}");
    assert!(e.contains("quoted"), "{e}");
}

#[test]
fn every_syntax_error_is_reported_in_order() {
    let errors = errors("[[rule]]\nname = \"a\" x\naction = drop\n");
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(errors[0].starts_with("r.toml:2:"), "{errors:#?}");
    assert!(errors[1].starts_with("r.toml:3:10: "), "{errors:#?}");
}

#[test]
fn wrong_types_are_errors_at_the_value() {
    let cases = [
        (
            "name = 5\naction = \"drop\"",
            "r.toml:2:8: expected a string in quotes, found the number 5",
        ),
        (
            "name = \"a\"\naction = 1",
            "r.toml:3:10: expected a string in quotes, found the number 1",
        ),
        (
            "name = \"a\"\naction = \"sample\"\nkeep_one_in = \"3\"",
            "r.toml:4:15: expected a whole number (without quotes), found the string \"3\"",
        ),
        (
            "name = \"a\"\naction = \"redact\"\nmask_body = \"yes\"",
            "r.toml:4:13: expected true or false (without quotes), found the string \"yes\"",
        ),
        (
            "name = \"a\"\naction = \"drop\"\nhooks = \"otlp\"",
            "r.toml:4:9: expected a list, such as [\"a\", \"b\"], found the string \"otlp\"",
        ),
        (
            "name = \"a\"\naction = \"drop\"\nmatch = { attributes = { x = 1.5 } }",
            "r.toml:4:30: an attribute value is a string, an integer or a boolean, not float",
        ),
        (
            "name = \"a\"\naction = \"drop\"\nmatch = { severity = true }",
            "r.toml:4:22: expected a severity string",
        ),
        (
            "name = \"a\"\naction = \"drop\"\nmatch = { service = [\"x\"] }",
            "r.toml:4:21: expected a string in quotes, found a list",
        ),
        (
            "name = \"a\"\naction = \"drop\"\nmatch = 3",
            "r.toml:4:9: expected a table: { key = value, ... }, or a [section] of its own, found the number 3",
        ),
    ];
    for (body, want) in cases {
        let e = error(&format!("[[rule]]\n{body}\n"));
        assert!(e.starts_with(want), "got {e}\nwant {want}");
    }
}

#[test]
fn missing_required_keys_are_errors_at_the_table() {
    let e = error("\n[[rule]]\naction = \"drop\"\n");
    assert_eq!(e, "r.toml:2:1: missing key `name`: this table needs it");
    let e = error("[[rule]]\nname = \"a\"\n");
    assert_eq!(e, "r.toml:1:1: missing key `action`: this table needs it");
}

#[test]
fn unknown_action_is_an_error_at_the_value() {
    let e = error("[[rule]]\nname = \"a\"\naction = \"delete\"\n");
    assert_eq!(
        e,
        "r.toml:3:10: unknown action \"delete\": expected one of count, drop, sample, rate_limit, redact, capture, trigger"
    );
}

#[test]
fn names_must_be_1_to_64_bytes() {
    let e = error(&rule("", "drop"));
    assert_eq!(e, "r.toml:2:8: name must not be empty");
    let long = "n".repeat(65);
    assert_eq!(
        error(&rule(&long, "drop")),
        "r.toml:2:8: name is 65 bytes; the limit is 64"
    );
    load_one(&rule(&"n".repeat(64), "drop"));
}

#[test]
fn parameters_belong_to_their_action() {
    let cases = [
        (
            "action = \"drop\"\nkeep_one_in = 3",
            "r.toml:4:15: keep_one_in is only for action \"sample\"",
        ),
        (
            "action = \"count\"\nper_second = 3",
            "r.toml:4:14: per_second is only for action \"rate_limit\"",
        ),
        (
            "action = \"drop\"\nmask_body = true",
            "r.toml:4:13: mask_body is only for action \"redact\"",
        ),
        (
            "action = \"sample\"\nkeep_one_in = 2\nremove_attributes = [\"a\"]",
            "r.toml:5:21: remove_attributes is only for action \"redact\"",
        ),
        (
            "action = \"sample\"",
            "r.toml:3:10: action \"sample\" needs keep_one_in",
        ),
        (
            "action = \"rate_limit\"",
            "r.toml:3:10: action \"rate_limit\" needs per_second",
        ),
        (
            "action = \"sample\"\nkeep_one_in = 0",
            "r.toml:4:15: keep_one_in must be at least 1",
        ),
        (
            "action = \"rate_limit\"\nper_second = -5",
            "r.toml:4:14: per_second must be at least 1",
        ),
        (
            "action = \"redact\"",
            "r.toml:3:10: action \"redact\" needs remove_attributes or mask_body = true",
        ),
        (
            "action = \"redact\"\nmask_body = false",
            "r.toml:3:10: action \"redact\" needs remove_attributes or mask_body = true",
        ),
        (
            "action = \"redact\"\nremove_attributes = []",
            "r.toml:3:10: action \"redact\" needs remove_attributes or mask_body = true",
        ),
        (
            "action = \"redact\"\nremove_attributes = [\"a\", \"\"]",
            "r.toml:4:27: an attribute name must not be empty",
        ),
        (
            "action = \"redact\"\nremove_attributes = [\"a\", \"b\", \"a\"]",
            "r.toml:4:32: \"a\" is listed twice",
        ),
    ];
    for (body, want) in cases {
        assert_eq!(error(&format!("[[rule]]\nname = \"a\"\n{body}\n")), want);
    }
}

#[test]
fn hooks_default_to_otlp_and_name_probes() {
    let r = load_one("[[rule]]\nname = \"a\"\naction = \"drop\"\nhooks = [\"otlp\"]\n");
    assert_eq!(r.hooks, vec![Hook::Otlp]);
    let cases = [
        (
            "hooks = [\"uprobe:malloc\"]",
            "r.toml:4:10: no [[probe]] named \"malloc\" in the rule set",
        ),
        (
            "hooks = [\"otlp\", \"uprobe:x\"]",
            "r.toml:4:18: no [[probe]] named \"x\" in the rule set",
        ),
        (
            "hooks = [\"uprobe:\"]",
            "r.toml:4:10: a uprobe hook names its [[probe]]: write \"uprobe:NAME\"",
        ),
        (
            "hooks = [\"http\"]",
            "r.toml:4:10: unknown hook \"http\": expected \"otlp\" or \"uprobe:NAME\"",
        ),
        (
            "hooks = [\"otlp\", \"otlp\"]",
            "r.toml:4:18: hook \"otlp\" is listed twice",
        ),
        (
            "hooks = []",
            "r.toml:4:9: hooks must not be empty (leave it out for [\"otlp\"])",
        ),
    ];
    for (line, want) in cases {
        assert_eq!(
            error(&format!(
                "[[rule]]\nname = \"a\"\naction = \"drop\"\n{line}\n"
            )),
            want
        );
    }
}

#[test]
fn capture_is_refused_on_the_otlp_hook() {
    assert_eq!(
        error(&rule("a", "capture")),
        "r.toml:3:10: capture is only for uprobe hooks"
    );
}

#[test]
fn empty_condition_strings_are_errors() {
    let cases = [
        ("service = \"\"", "r.toml:5:11: service must not be empty"),
        (
            "body_contains = \"\"",
            "r.toml:5:17: body_contains must not be empty",
        ),
        (
            "attributes = { \"\" = \"v\" }",
            "r.toml:5:16: an attribute key must not be empty",
        ),
    ];
    for (line, want) in cases {
        let text = format!("{}[rule.match]\n{line}\n", rule("a", "drop"));
        assert_eq!(error(&text), want);
    }
}

#[test]
fn severity_errors_point_at_the_value() {
    let text = format!("{}[rule.match]\nseverity = \"<TRACE\"\n", rule("a", "drop"));
    assert_eq!(
        error(&text),
        "r.toml:5:12: invalid severity \"<TRACE\": it matches no severity number"
    );
    let text = format!("{}[rule.match]\nseverity = 0\n", rule("a", "drop"));
    assert!(error(&text).starts_with("r.toml:5:12: severity number 0 is out of range"));
}

#[test]
fn rule_must_be_an_array_of_tables() {
    let e = error("[rule]\nname = \"a\"\naction = \"drop\"\n");
    assert_eq!(
        e,
        "r.toml:1:2: `rule` must be an array of tables: write [[rule]]"
    );
    let e = error("rule = [1]\n");
    assert_eq!(e, "r.toml:1:9: a rule must be a table: write [[rule]]");
}

#[test]
fn every_problem_of_a_rule_is_reported() {
    let text = r#"[[rule]]
name = ""
action = "drop"
hooks = ["uprobe:"]
[rule.match]
severity = "LOUD"
service = ""
"#;
    let errors = errors(text);
    assert_eq!(errors.len(), 4, "{errors:#?}");
    assert!(errors[0].starts_with("r.toml:2:8: name must not be empty"));
    assert!(errors[1].starts_with("r.toml:4:10: a uprobe hook names its [[probe]]"));
    assert!(errors[2].starts_with("r.toml:6:12: invalid severity \"LOUD\": unknown level"));
    assert!(errors[3].starts_with("r.toml:7:11: service must not be empty"));
}

#[test]
fn every_bad_rule_of_a_file_is_reported() {
    let text = format!(
        "{}{}{}",
        rule("a", "nope"),
        rule("b", "drop"),
        "[[rule]]\nname = \"c\"\naction = \"drop\"\nextra = 1\n"
    );
    let errors = errors(&text);
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(errors[0].starts_with("r.toml:3:10: unknown action \"nope\""));
    assert!(errors[1].starts_with("r.toml:10:1: unknown key `extra`"));
}

#[test]
fn duplicate_names_across_files_point_at_the_second() {
    let sources = [
        (
            PathBuf::from("a.toml"),
            format!("# first\n{}", rule("dup", "count")),
        ),
        (
            PathBuf::from("b.toml"),
            format!("{}{}", rule("other", "count"), rule("dup", "drop")),
        ),
    ];
    let diags = load_sources(&sources).unwrap_err();
    assert_eq!(
        display(&diags),
        vec!["b.toml:5:8: duplicate rule name \"dup\": first defined at a.toml:3"]
    );
}

#[test]
fn a_duplicate_name_in_a_file_of_the_same_name_says_one_replaces_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (dir.path().join("rules"), dir.path().join("new"));
    std::fs::create_dir_all(&old).unwrap();
    std::fs::create_dir_all(&new).unwrap();
    let (old, new) = (old.join("10-x.toml"), new.join("10-x.toml"));
    std::fs::write(&old, rule("dup", "count")).unwrap();
    std::fs::write(&new, rule("dup", "drop")).unwrap();
    let sources = vec![
        (old.clone(), rule("dup", "count")),
        (new.clone(), rule("dup", "drop")),
    ];
    let diags = load_sources(&sources).unwrap_err();
    assert_eq!(
        display(&diags),
        vec![format!(
            "{}:2:8: duplicate rule name \"dup\": first defined at {}:2 (both files are named \
             10-x.toml: in a rules directory the new one takes the old one's place, as `push` \
             does; check the directory with it in place)",
            new.display(),
            old.display()
        )]
    );
    // The same file under two spellings.
    let twice = dir.path().join("rules/../rules/10-x.toml");
    let sources = vec![
        (old.clone(), rule("dup", "count")),
        (twice.clone(), rule("dup", "count")),
    ];
    let diags = load_sources(&sources).unwrap_err();
    assert!(
        display(&diags)[0].ends_with("(the same file, given twice)"),
        "{diags:?}"
    );
    // Sources that are not files here (an OpAMP server's): no word of replacing.
    let sources = vec![
        (old.clone(), rule("dup", "count")),
        (PathBuf::from("opamp/10-x.toml"), rule("dup", "drop")),
    ];
    let diags = load_sources(&sources).unwrap_err();
    assert!(display(&diags)[0].ends_with(":2"), "{diags:?}");
}

#[test]
fn duplicate_names_in_one_file_are_errors() {
    let text = format!("{}{}", rule("dup", "count"), rule("dup", "drop"));
    assert_eq!(
        error(&text),
        "r.toml:5:8: duplicate rule name \"dup\": first defined at r.toml:2"
    );
}

#[test]
fn errors_of_every_file_are_collected() {
    let sources = [
        (PathBuf::from("a.toml"), rule("a", "bogus")),
        (PathBuf::from("b.toml"), rule("b", "drop")),
        (PathBuf::from("c.toml"), "[[rule]\n".to_string()),
    ];
    let diags = load_sources(&sources).unwrap_err();
    assert_eq!(diags.len(), 2, "{diags:#?}");
    assert_eq!(diags[0].file, PathBuf::from("a.toml"));
    assert_eq!(diags[1].file, PathBuf::from("c.toml"));
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, text).unwrap();
    path
}

#[test]
fn load_dir_reads_toml_files_in_name_order() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "20-b.toml", &rule("b", "drop"));
    write(
        dir.path(),
        "10-a.toml",
        &format!("{}{}", rule("a1", "count"), rule("a2", "count")),
    );
    write(dir.path(), "notes.txt", "not rules");
    write(dir.path(), ".hidden.toml", "not = valid");
    fs::create_dir(dir.path().join("sub.toml")).unwrap();
    let rules = load_dir(dir.path()).unwrap();
    let names: Vec<_> = rules.iter().map(|r| r.name.value.as_str()).collect();
    assert_eq!(names, ["a1", "a2", "b"]);
    assert_eq!(rules[2].file, dir.path().join("20-b.toml"));
}

#[test]
fn load_files_keeps_the_given_order() {
    let dir = tempfile::tempdir().unwrap();
    let b = write(dir.path(), "b.toml", &rule("b", "drop"));
    let a = write(dir.path(), "a.toml", &rule("a", "drop"));
    let rules = load_files(&[b, a]).unwrap();
    let names: Vec<_> = rules.iter().map(|r| r.name.value.as_str()).collect();
    assert_eq!(names, ["b", "a"]);
}

#[test]
fn missing_directory_is_a_diagnostic() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let diags = load_dir(&missing).unwrap_err();
    assert_eq!(diags.len(), 1);
    assert_eq!(
        (diags[0].file.as_path(), diags[0].pos()),
        (missing.as_path(), Pos::START)
    );
    assert!(
        diags[0]
            .message
            .starts_with("cannot read rules directory (`rules_dir` in the config, or --rules): "),
        "{}",
        diags[0]
    );
}

#[test]
fn unreadable_files_are_diagnostics_and_other_files_still_checked() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let binary = dir.path().join("binary.toml");
    fs::write(&binary, [0xff, 0xfe, 0x00]).unwrap();
    let bad = write(dir.path(), "bad.toml", &rule("x", "nope"));
    let diags = load_files(&[missing.clone(), binary.clone(), bad.clone()]).unwrap_err();
    assert_eq!(diags.len(), 3, "{diags:#?}");
    assert_eq!(
        (diags[0].file.clone(), diags[0].pos()),
        (missing, Pos::START)
    );
    assert!(diags[0].message.starts_with("cannot read rule file: "));
    assert_eq!(
        (diags[1].file.clone(), diags[1].pos()),
        (binary, Pos::START)
    );
    assert_eq!(diags[2].file, bad);
}

#[test]
fn pushed_files_need_rule_file_names_of_their_own() {
    use crate::rules::pushed_names;
    let names = pushed_names([Path::new("a/10-x.toml"), Path::new("20-y.toml")]).unwrap();
    assert_eq!(names, ["10-x.toml", "20-y.toml"]);
    for bad in ["rules.txt", "a/.hidden.toml", "a/toml", "a/"] {
        let e = pushed_names([Path::new(bad)]).unwrap_err();
        assert!(
            e.contains("must end in .toml and not start with a dot"),
            "{bad}: {e}"
        );
    }
    let e = pushed_names([Path::new("a/10-x.toml"), Path::new("b/10-x.toml")]).unwrap_err();
    assert!(
        e.starts_with("b/10-x.toml: a/10-x.toml is pushed too, with the same file name"),
        "{e}"
    );
}

#[test]
fn a_table_lists_at_most_16_problems() {
    let mut text = rule("a", "drop");
    for i in 0..40 {
        text.push_str(&format!("k{i} = 1\n"));
    }
    let e = errors(&text);
    assert_eq!(e.len(), 17, "{e:#?}");
    // The first 16 by position (k0..k15, lines 4..19), not the first in the keys' order.
    for (i, d) in e
        .iter()
        .filter(|d| d.contains(": unknown key `k"))
        .enumerate()
    {
        assert!(
            d.starts_with(&format!("r.toml:{}:1: unknown key `k{i}`", i + 4)),
            "{e:#?}"
        );
    }
    // Last, after the problems it follows.
    assert!(
        e[16].starts_with(
            "r.toml:19:1: the table at 1:1 has 24 more problems, not listed (the first 16 are)"
        ),
        "{e:#?}"
    );
    // Past what is looked for: at least so many.
    let mut text = rule("a", "drop");
    for i in 0..300 {
        text.push_str(&format!("k{i} = 1\n"));
    }
    let e = errors(&text);
    assert_eq!(e.len(), 17, "{e:#?}");
    assert!(
        e[16].starts_with(
            "r.toml:23:1: the table at 1:1 has at least 240 more problems, not listed (16 are)"
        ),
        "{e:#?}"
    );
}

#[test]
fn a_name_with_spaces_around_it_is_refused() {
    let e = error("[[rule]]\nname = \"count-errors \"\naction = \"count\"\n");
    assert_eq!(
        e,
        "r.toml:2:8: name \"count-errors \" starts or ends with a space: a name is compared as \
         written, and a table shows it as \"count-errors\"; write \"count-errors\""
    );
}

#[test]
fn names_are_one_line_and_states_are_named_once() {
    let e = error("[[rule]]\nname = \"drop debug\\nnoise\"\naction = \"drop\"\n");
    assert!(
        e.starts_with("r.toml:2:8: name \"drop debug\\nnoise\" holds the control character"),
        "{e}"
    );
    // A name that would display as another: a right-to-left override, a zero-width space.
    let e = error("[[rule]]\nname = \"drop-\\u202Egubed\"\naction = \"drop\"\n");
    assert_eq!(
        e,
        "r.toml:2:8: name \"drop-\\u{202e}gubed\" holds the invisible formatting character \
         U+202E: a name is one line of printable characters, shown as it is written",
    );
    let e = error("[[state]]\nname = \"inci\\u200Bdent\"\nduration = \"1m\"\n");
    assert!(
        e.contains("holds the invisible formatting character U+200B"),
        "{e}"
    );
    // Printable characters of any script stay names.
    assert!(load("[[rule]]\nname = \"drop-débogage-調試\"\naction = \"drop\"\n").is_ok());
    let state = "[[state]]\nname = \"incident\"\nduration = \"1m\"\n";
    let rule_with_state = |s: &str| {
        format!("[[rule]]\nname = \"a\"\naction = \"drop\"\n[rule.match]\nstate = \"{s}\"\n{state}")
    };
    assert!(load(&rule_with_state("incident")).is_ok());
    assert!(load(&rule_with_state("!incident")).is_ok());
    // "!!incident" once meant "off": it is refused, not read either way.
    let e = error(&rule_with_state("!!incident"));
    assert!(
        e.starts_with("r.toml:5:9: state \"!!incident\": write \"NAME\""),
        "{e}"
    );
    let e = error(&rule_with_state("!"));
    assert!(
        e.starts_with("r.toml:5:9: state \"!\" names no state"),
        "{e}"
    );
    let e = errors("[[state]]\nname = \"!x\"\nduration = \"1m\"\n");
    assert!(
        e[0].starts_with("r.toml:2:8: a state's name must not start with \"!\""),
        "{e:#?}"
    );
}

#[test]
fn a_match_array_and_bytes_that_are_not_utf8_are_said_plainly() {
    let e =
        error("[[rule]]\nname = \"a\"\naction = \"drop\"\n[[rule.match]]\nseverity = \"DEBUG\"\n");
    assert!(
        e.ends_with("a rule has one `match` table: write [rule.match], not [[rule.match]]"),
        "{e}"
    );
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("latin1.toml");
    fs::write(&f, b"[[rule]]\nname = \"caf\xe9\"\naction = \"drop\"\n").unwrap();
    let d = load_files(std::slice::from_ref(&f)).unwrap_err();
    assert_eq!(
        d[0].pos(),
        Pos {
            line: 2,
            column: 12
        }
    );
    assert_eq!(
        d[0].message,
        "byte 0xE9 is not UTF-8: a rule file is UTF-8 text (save it so)"
    );
    let missing = dir.path().join("missing.toml");
    let d = load_files(std::slice::from_ref(&missing)).unwrap_err();
    assert_eq!(d[0].message, "cannot read rule file: no such file");
}
