//! Compiling rule sets: encoding, deduplication, limits, slots.

use std::collections::BTreeMap;
use std::path::PathBuf;

use dt_ebpf_common::{
    ACTION_COUNT, ACTION_DROP, ACTION_RATE_LIMIT, ACTION_REDACT, ACTION_SAMPLE, GROUP_ATTR,
    GROUP_EVENT, GROUP_SERVICE, GROUP_SEVERITY, MAX_AC_STATES, MAX_RULES, MAX_SLOTS, NEED_EVENT,
    NEED_GROUPS, RULE_MASK_BODY, STR_ATTR, STR_ATTR_BOOL, STR_ATTR_INT, STR_EVENT, STR_GROUP,
    STR_REDACT, STR_SERVICE, StrKey, key_len_bit,
};

use super::{FILE, build, error, errors, load, rule};
use crate::rules::ac::scan;
use crate::rules::{Action, Compiled, CompiledRule, RuleDef, SlotTable, check_files, compile};

fn compiled(text: &str) -> Compiled {
    build(text).unwrap_or_else(|e| panic!("{e:#?}"))
}

/// The condition bits set by a `STRINGS` key, found by its kind and bytes.
fn string_bits(c: &Compiled, kind: u8, klen: usize, bytes: &[u8]) -> Option<u64> {
    c.strings
        .iter()
        .find(|(k, _)| k.kind == kind && k.klen as usize == klen && k.bytes.starts_with(bytes))
        .map(|&(_, bits)| bits)
}

fn rule_with_match(name: &str, action: &str, conditions: &str) -> String {
    format!("{}[rule.match]\n{conditions}\n", rule(name, action))
}

#[test]
fn encodes_rules_in_order() {
    let text = format!(
        "{}{}",
        rule_with_match("quiet", "drop", "severity = \"<INFO\""),
        rule("all", "count"),
    );
    let c = compiled(&text);
    assert_eq!(
        c.rules,
        vec![
            CompiledRule {
                name: "quiet".into(),
                action: "drop".into(),
                hook: "otlp".into(),
                file: PathBuf::from(FILE),
                line: 1,
                slot: 0,
                group_by: None,
            },
            CompiledRule {
                name: "all".into(),
                action: "count".into(),
                hook: "otlp".into(),
                file: PathBuf::from(FILE),
                line: 6,
                slot: 1,
                group_by: None,
            },
        ]
    );
    let rs = &c.ruleset;
    assert_eq!((rs.generation, rs.n_rules, rs.ac_states), (0, 2, 0));
    let r = &rs.rules[0];
    assert_eq!(
        (r.slot, r.action, r.sev_lo, r.sev_hi),
        (0, ACTION_DROP, 1, 8)
    );
    assert_eq!((r.body, r.attrs, r.service, r.param), (0, 0, 0, 0));
    let r = &rs.rules[1];
    assert_eq!(
        (r.slot, r.action, r.sev_lo, r.sev_hi),
        (1, ACTION_COUNT, 0, 255)
    );
    assert!(c.strings.is_empty() && c.ac.is_empty());
    assert_eq!(rs.rules[2], Default::default());
}

#[test]
fn empty_rule_set_compiles() {
    let c = compile(&[], &mut SlotTable::new()).unwrap();
    assert_eq!((c.ruleset.n_rules, c.ruleset.ac_states), (0, 0));
    assert!(c.rules.is_empty() && c.strings.is_empty() && c.ac.is_empty());
}

#[test]
fn conditions_are_deduplicated_into_bits() {
    let text = format!(
        "{}{}{}",
        rule_with_match(
            "a",
            "count",
            "service = \"checkout\"\nbody_contains = \"health\"\nattributes = { \"http.route\" = \"/healthz\", env = \"dev\" }"
        ),
        rule_with_match(
            "b",
            "count",
            "service = \"cart\"\nbody_contains = \"retry\"\nattributes = { env = \"dev\" }"
        ),
        rule_with_match(
            "c",
            "drop",
            "service = \"checkout\"\nbody_contains = \"health\"\nattributes = { env = \"prod\" }"
        ),
    );
    let c = compiled(&text);
    let [a, b, r] = [c.ruleset.rules[0], c.ruleset.rules[1], c.ruleset.rules[2]];
    assert_eq!((a.service, b.service, r.service), (0b01, 0b10, 0b01));
    assert_eq!((a.body, b.body, r.body), (0b01, 0b10, 0b01));
    // A rule needs every one of its attributes.
    assert_eq!((a.attrs, b.attrs, r.attrs), (0b011, 0b010, 0b100));

    assert_eq!(c.strings.len(), 2 + 3);
    assert_eq!(string_bits(&c, STR_SERVICE, 0, b"checkout"), Some(0b01));
    assert_eq!(string_bits(&c, STR_SERVICE, 0, b"cart"), Some(0b10));
    assert_eq!(
        string_bits(&c, STR_ATTR, 10, b"http.route/healthz"),
        Some(0b001)
    );
    assert_eq!(string_bits(&c, STR_ATTR, 3, b"envdev"), Some(0b010));
    assert_eq!(string_bits(&c, STR_ATTR, 3, b"envprod"), Some(0b100));

    assert_eq!(c.ruleset.ac_states as usize, c.ac.len());
    assert_eq!(c.ac.len(), 1 + "health".len() + "retry".len());
    assert_eq!(scan(&c.ac, b"please retry the healthcheck"), 0b11);
}

#[test]
fn string_keys_are_zero_padded_with_exact_lengths() {
    let c = compiled(&rule_with_match(
        "a",
        "drop",
        "service = \"svc\"\nattributes = { k = \"value\" }",
    ));
    let mut service = StrKey::ZERO;
    service.kind = STR_SERVICE;
    service.vlen = 3;
    service.bytes[..3].copy_from_slice(b"svc");
    let mut attr = StrKey::ZERO;
    attr.kind = STR_ATTR;
    attr.klen = 1;
    attr.vlen = 5;
    attr.bytes[..6].copy_from_slice(b"kvalue");
    assert_eq!(c.strings, vec![(service, 1), (attr, 1)]);
}

#[test]
fn sample_rate_limit_and_redact_are_encoded() {
    let text = "[[rule]]\nname = \"s\"\naction = \"sample\"\nkeep_one_in = 7\n\
                [[rule]]\nname = \"r\"\naction = \"rate_limit\"\nper_second = 50\n\
                [[rule]]\nname = \"x\"\naction = \"redact\"\nremove_attributes = [\"user.email\", \"token\"]\nmask_body = true\n\
                [[rule]]\nname = \"y\"\naction = \"redact\"\nremove_attributes = [\"token\"]\n";
    let c = compiled(text);
    let r = &c.ruleset.rules;
    assert_eq!((r[0].action, r[0].param), (ACTION_SAMPLE, 7));
    assert_eq!((r[1].action, r[1].param), (ACTION_RATE_LIMIT, 50));
    assert_eq!(
        (r[2].action, r[2].remove, r[2].flags),
        (ACTION_REDACT, 0b11, RULE_MASK_BODY)
    );
    assert_eq!((r[3].remove, r[3].flags), (0b10, 0));
    assert_eq!(c.ruleset.remove_keys, 2);
    let mut email = StrKey::ZERO;
    email.kind = STR_REDACT;
    email.klen = 10;
    email.bytes[..10].copy_from_slice(b"user.email");
    let mut token = StrKey::ZERO;
    token.kind = STR_REDACT;
    token.klen = 5;
    token.bytes[..5].copy_from_slice(b"token");
    assert_eq!(c.strings, vec![(email, 1), (token, 2)]);
}

#[test]
fn rate_limit_per_second_has_a_limit() {
    let text = "[[rule]]\nname = \"a\"\naction = \"rate_limit\"\nper_second = 2000000000\n";
    // Said where the value is.
    assert_eq!(
        error(text),
        "r.toml:4:14: per_second is 2000000000; the limit is 1000000000 (one a nanosecond)"
    );
    let text = text.replace("2000000000", "1000000000");
    assert!(load(&text).is_ok());
}

#[test]
fn needles_are_1_to_128_bytes() {
    let ok = rule_with_match(
        "a",
        "drop",
        &format!("body_contains = \"{}\"", "x".repeat(128)),
    );
    assert_eq!(compiled(&ok).ac.len(), 129);
    let long = rule_with_match(
        "a",
        "drop",
        &format!("body_contains = \"{}\"", "x".repeat(129)),
    );
    assert_eq!(
        error(&long),
        "r.toml:5:17: body_contains is 129 bytes; the limit is 128"
    );
}

#[test]
fn attribute_keys_and_values_have_limits() {
    let key = |n: usize| format!("attributes = {{ \"{}\" = \"v\" }}", "k".repeat(n));
    let value = |n: usize| format!("attributes = {{ k = \"{}\" }}", "v".repeat(n));
    compiled(&rule_with_match("a", "drop", &key(64)));
    compiled(&rule_with_match("a", "drop", &value(128)));
    assert_eq!(
        error(&rule_with_match("a", "drop", &key(65))),
        "r.toml:5:16: attribute key is 65 bytes; the limit is 64"
    );
    assert_eq!(
        error(&rule_with_match("a", "drop", &value(129))),
        "r.toml:5:20: attribute value is 129 bytes; the limit is 128"
    );
}

#[test]
fn services_are_at_most_128_bytes() {
    let service = |n: usize| format!("service = \"{}\"", "s".repeat(n));
    compiled(&rule_with_match("a", "drop", &service(128)));
    assert_eq!(
        error(&rule_with_match("a", "drop", &service(129))),
        "r.toml:5:11: service is 129 bytes; the limit is 128"
    );
}

/// `n` count rules, rule `i` having the conditions `conditions(i)`.
fn many_rules(n: usize, conditions: impl Fn(usize) -> String) -> String {
    (0..n)
        .map(|i| rule_with_match(&format!("r{i}"), "count", &conditions(i)))
        .collect()
}

/// Line of the match condition of rule `i` in [`many_rules`] (5 lines per rule).
fn condition_line(i: usize) -> usize {
    5 * i + 5
}

#[test]
fn at_most_64_distinct_needles() {
    let needle = |i: usize| format!("body_contains = \"needle-{i}\"");
    compiled(&many_rules(64, needle));
    // Repeating a needle costs no new bit.
    compiled(&many_rules(80, |i| needle(i % 64)));
    let e = error(&many_rules(66, needle));
    let line = condition_line(64);
    assert_eq!(
        e,
        format!(
            "r.toml:{line}:17: too many distinct body_contains values: a rule set can use at most 64"
        )
    );
}

#[test]
fn at_most_64_distinct_attribute_pairs() {
    let attr = |i: usize| format!("attributes = {{ k = \"{i}\" }}");
    compiled(&many_rules(64, attr));
    let e = error(&many_rules(65, attr));
    assert_eq!(
        e,
        format!(
            "r.toml:{}:16: too many distinct attribute key = value pairs and event_name values: a rule set can use at most 64",
            condition_line(64)
        )
    );
}

#[test]
fn at_most_64_distinct_services() {
    let service = |i: usize| format!("service = \"svc-{i}\"");
    compiled(&many_rules(64, service));
    let e = error(&many_rules(65, service));
    assert_eq!(
        e,
        format!(
            "r.toml:{}:11: too many distinct service values: a rule set can use at most 64",
            condition_line(64)
        )
    );
}

#[test]
fn automaton_states_are_limited() {
    // Needles with distinct first bytes share no state: 1 + 128 per needle.
    let needle = |i: usize| {
        format!(
            "body_contains = \"{}\"",
            char::from(b'A' + i as u8).to_string().repeat(128)
        )
    };
    let fits = (MAX_AC_STATES as usize - 1) / 128;
    let c = compiled(&many_rules(fits, needle));
    assert_eq!(c.ac.len(), 1 + 128 * fits);
    let e = error(&many_rules(fits + 2, needle));
    assert!(
        e.starts_with(&format!(
            "r.toml:{}:17: body_contains needles need more than 1024 automaton states",
            condition_line(fits)
        )),
        "{e}"
    );
}

#[test]
fn at_most_128_rules() {
    let text: String = (0..=MAX_RULES)
        .map(|i| rule(&format!("r{i}"), "count"))
        .collect();
    let e = error(&text);
    assert_eq!(
        e,
        format!(
            "r.toml:{}:8: too many rules: a rule set holds at most 128",
            3 * MAX_RULES + 2
        )
    );
    let text: String = (0..MAX_RULES)
        .map(|i| rule(&format!("r{i}"), "count"))
        .collect();
    assert_eq!(compiled(&text).ruleset.n_rules as usize, MAX_RULES);
    // So many that the counter slots run out too: still the one line (the slots' line would
    // repeat for every rule past them).
    let text: String = (0..2000).map(|i| rule(&format!("r{i}"), "count")).collect();
    assert_eq!(
        errors(&text),
        [format!(
            "r.toml:{}:8: too many rules: a rule set holds at most 128",
            3 * MAX_RULES + 2
        )]
    );
}

#[test]
fn every_compile_error_is_reported() {
    let text = format!(
        "{}{}",
        rule_with_match(
            "a",
            "count",
            &format!("body_contains = \"{}\"", "x".repeat(200))
        ),
        rule_with_match("b", "drop", &format!("service = \"{}\"", "s".repeat(200))),
    ) + &rule_with_match(
        "c",
        "drop",
        &format!("body_contains = \"{}\"", "y".repeat(300)),
    );
    let errors = errors(&text);
    assert_eq!(errors.len(), 3, "{errors:#?}");
}

fn defs(names: &[&str]) -> Vec<RuleDef> {
    let text: String = names.iter().map(|n| rule(n, "count")).collect();
    load(&text).unwrap()
}

fn slots_of(c: &Compiled) -> Vec<(&str, u16)> {
    c.rules.iter().map(|r| (r.name.as_str(), r.slot)).collect()
}

#[test]
fn slots_are_stable_across_rule_sets() {
    let mut slots = SlotTable::new();
    let c = compile(&defs(&["a", "b", "c"]), &mut slots).unwrap();
    assert_eq!(slots_of(&c), [("a", 0), ("b", 1), ("c", 2)]);
    // Removing a rule keeps its slot reserved...
    let c = compile(&defs(&["c", "a"]), &mut slots).unwrap();
    assert_eq!(slots_of(&c), [("c", 2), ("a", 0)]);
    assert_eq!(slots.get("b"), Some(1));
    // ...so new names do not take it, and re-adding the rule gets it back.
    let c = compile(&defs(&["d", "b", "a"]), &mut slots).unwrap();
    assert_eq!(slots_of(&c), [("d", 3), ("b", 1), ("a", 0)]);
}

#[test]
fn new_names_fill_the_lowest_free_slot() {
    let persisted: BTreeMap<String, u16> =
        [("a".into(), 0), ("c".into(), 2), ("e".into(), 4)].into();
    let mut slots = SlotTable::try_from(persisted).unwrap();
    let c = compile(&defs(&["x", "c", "y", "z"]), &mut slots).unwrap();
    assert_eq!(slots_of(&c), [("x", 1), ("c", 2), ("y", 3), ("z", 5)]);
}

#[test]
fn a_failed_compile_assigns_no_slots() {
    let mut slots = SlotTable::new();
    let good = defs(&["ok", "other"]);
    let mut bad = good.clone();
    bad[1].action.value = Action::RateLimit {
        per_second: u64::MAX,
    };
    assert!(compile(&bad, &mut slots).is_err());
    assert!(slots.is_empty());
    compile(&good, &mut slots).unwrap();
    assert_eq!(slots.len(), 2);
}

#[test]
fn exhausted_slots_are_an_error() {
    let mut slots = SlotTable::new();
    for i in 0..MAX_SLOTS {
        slots.assign(&format!("old-{i}"));
    }
    let before = slots.clone();
    // Said once, at the first rule without a slot.
    let diags = compile(&defs(&["old-3", "new", "newer"]), &mut slots).unwrap_err();
    assert_eq!(diags.len(), 1);
    assert_eq!(
        diags[0].to_string(),
        "r.toml:5:8: no free counter slot for rule \"new\" (nor for any rule after it): all 1024 \
         slots are taken by the rules of this set and of the set before"
    );
    assert_eq!(slots, before);
}

#[test]
fn a_full_table_takes_back_a_removed_rules_slot_never_one_of_the_set() {
    let mut slots = SlotTable::new();
    for i in 0..MAX_SLOTS {
        slots.assign(&format!("old-{i}"));
    }
    slots.retired = ["old-3", "old-7"].map(String::from).into();
    // old-3 is in the set again: it keeps slot 3, and "new" takes old-7's.
    compile(&defs(&["old-3", "new"]), &mut slots).unwrap();
    assert_eq!(
        (slots.get("old-3"), slots.get("new"), slots.get("old-7")),
        (Some(3), Some(7), None)
    );
    assert_eq!(slots.reclaimed, [("old-7".to_string(), 7)]);
}

#[test]
fn check_files_applies_compile_limits() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, rule("a", "drop")).unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        rule_with_match(
            "b",
            "drop",
            &format!("body_contains = \"{}\"", "x".repeat(200)),
        ),
    )
    .unwrap();
    assert_eq!(check_files(std::slice::from_ref(&good)).unwrap().len(), 1);
    let diags = check_files(&[good.clone(), bad.clone()]).unwrap_err();
    assert_eq!(diags.len(), 1, "{diags:#?}");
    assert!(
        diags[0]
            .to_string()
            .starts_with(&format!("{}:", bad.display()))
            && diags[0].message.contains("body_contains"),
        "{}",
        diags[0]
    );
    // A limit is reported with the set's other problems, not after them: the kernel's limits
    // are checked on the rules that read well.
    let typo = dir.path().join("typo.toml");
    std::fs::write(&typo, rule("c", "drop").replace("action", "acton")).unwrap();
    let diags = check_files(&[good, bad.clone(), typo.clone()]).unwrap_err();
    let files: Vec<_> = diags.iter().map(|d| d.file.clone()).collect();
    assert_eq!(files, vec![bad, typo], "{diags:#?}");
}

#[test]
fn each_rule_names_one_bit_it_needs_and_the_rule_set_the_key_lengths_and_skippable_bytes() {
    use dt_ebpf_common::{
        FIRST_ATTRS, FIRST_BODY, FIRST_SERVICE, NEED_SCAN_SKIP, NEED_SCAN_WORDS, key_len_bit,
    };
    let text = format!(
        "{}{}{}{}{}remove_attributes = [\"secret.token\"]\n",
        rule_with_match("sev", "count", "severity = \">=ERROR\""),
        rule_with_match("svc", "count", "service = \"checkout\""),
        rule_with_match(
            "attr",
            "count",
            "service = \"cart\"\nattributes = { \"http.route\" = \"/pay\" }"
        ),
        rule_with_match(
            "body",
            "count",
            "body_contains = \"#oops\"\nattributes = { \"region\" = \"eu\" }"
        ),
        rule("redact", "redact"),
    );
    let c = compiled(&text);
    let first: Vec<(u8, u8)> = c.ruleset.rules[..5]
        .iter()
        .map(|r| (r.first >> 6, r.first & 63))
        .collect();
    let rs = &c.ruleset;
    let bit = |b: u64| b.trailing_zeros() as u8;
    assert_eq!(first[0], (0, 0), "a severity rule needs no bit");
    assert_eq!(first[1], (FIRST_SERVICE, bit(rs.rules[1].service)));
    assert_eq!(first[2], (FIRST_ATTRS, bit(rs.rules[2].attrs)));
    assert_eq!(first[3], (FIRST_BODY, bit(rs.rules[3].body)));
    assert_eq!(first[4], (0, 0));
    assert_eq!(
        rs.attr_key_lens,
        key_len_bit("http.route".len() as u32) | key_len_bit("region".len() as u32)
    );
    assert_eq!(rs.redact_key_lens, key_len_bit("secret.token".len() as u32));
    // The only needle starts with '#': every other byte is skipped in the start state, and
    // no needle starts with a letter, digit or space, so the skip is on.
    assert_eq!(rs.ac_skip[(b'#' >> 6) as usize] >> (b'#' & 63) & 1, 0);
    assert_eq!(rs.ac_skip[(b'a' >> 6) as usize] >> (b'a' & 63) & 1, 1);
    assert_ne!(rs.needs & NEED_SCAN_SKIP, 0);
    // One byte can begin a needle: the scan tests 8 bytes at a time for it.
    assert_ne!(rs.needs & NEED_SCAN_WORDS, 0);
    assert_eq!(rs.ac_first, [b'#'; 4]);
    let c = compiled(&rule_with_match("w", "count", "body_contains = \"oops\""));
    assert_eq!(
        c.ruleset.needs & (NEED_SCAN_SKIP | NEED_SCAN_WORDS),
        0,
        "a needle starting with a letter"
    );
    let needles = |list: &[&str]| {
        let text: String = list
            .iter()
            .enumerate()
            .map(|(i, n)| {
                rule_with_match(&format!("n{i}"), "count", &format!("body_contains = {n:?}"))
            })
            .collect();
        compiled(&text).ruleset
    };
    let rs = needles(&["[x", "#a", "#b", "{"]);
    assert_ne!(rs.needs & NEED_SCAN_WORDS, 0);
    assert_eq!(
        rs.ac_first,
        [b'#', b'[', b'{', b'#'],
        "fewer than four repeat the first"
    );
    let rs = needles(&["[x", "#a", "{", "~", "\u{e9}"]);
    assert_ne!(rs.needs & NEED_SCAN_SKIP, 0);
    assert_eq!(rs.needs & NEED_SCAN_WORDS, 0, "five bytes begin a needle");
}

#[test]
fn typed_attributes_and_event_names_share_the_attribute_bits() {
    let text = format!(
        "{}{}{}",
        rule_with_match(
            "a",
            "count",
            "attributes = { code = 503, retry = true, route = \"503\" }"
        ),
        rule_with_match("b", "count", "attributes = { code = -1 }"),
        rule_with_match(
            "c",
            "drop",
            "event_name = \"payment.failed\"\nattributes = { retry = false }"
        ),
    );
    let c = compiled(&text);
    let r = &c.ruleset.rules;
    assert_eq!(
        (r[0].attrs, r[1].attrs, r[2].attrs),
        (0b111, 0b1000, 0b11_0000)
    );
    // An int is its 8 bytes little-endian, a bool one byte, each under its own kind.
    let mut code = b"code".to_vec();
    code.extend(503i64.to_le_bytes());
    assert_eq!(string_bits(&c, STR_ATTR_INT, 4, &code), Some(0b1));
    let mut minus = b"code".to_vec();
    minus.extend((-1i64).to_le_bytes());
    assert_eq!(string_bits(&c, STR_ATTR_INT, 4, &minus), Some(0b1000));
    assert_eq!(string_bits(&c, STR_ATTR_BOOL, 5, b"retry\x01"), Some(0b10));
    assert_eq!(
        string_bits(&c, STR_ATTR_BOOL, 5, b"retry\x00"),
        Some(0b1_0000)
    );
    assert_eq!(string_bits(&c, STR_ATTR, 5, b"route503"), Some(0b100));
    assert_eq!(
        string_bits(&c, STR_EVENT, 0, b"payment.failed"),
        Some(0b10_0000)
    );
    let int_key = c
        .strings
        .iter()
        .find(|(k, _)| k.kind == STR_ATTR_INT)
        .unwrap()
        .0;
    assert_eq!(int_key.vlen, 8);
    assert_ne!(c.ruleset.needs & NEED_EVENT, 0);
    // Event names are looked up by the event step, not by key length.
    assert_eq!(c.ruleset.attr_key_lens, key_len_bit(4) | key_len_bit(5));
}

#[test]
fn group_by_is_encoded_with_its_keys() {
    let text = "[[rule]]\nname = \"a\"\naction = \"count\"\ngroup_by = \"service\"\n\
                [[rule]]\nname = \"b\"\naction = \"count\"\ngroup_by = \"severity\"\nmax_groups = 6\n\
                [[rule]]\nname = \"c\"\naction = \"count\"\ngroup_by = \"event_name\"\n\
                [[rule]]\nname = \"d\"\naction = \"count\"\ngroup_by = \"attributes.http.status_code\"\n\
                [[rule]]\nname = \"e\"\naction = \"count\"\ngroup_by = \"attributes.code\"\n\
                [[rule]]\nname = \"f\"\naction = \"count\"\ngroup_by = \"attributes.http.status_code\"\n";
    let c = compiled(text);
    let g: Vec<_> = c.ruleset.rules[..6]
        .iter()
        .map(|r| (r.group, r.group_key, r.max_groups))
        .collect();
    assert_eq!(
        g,
        vec![
            (GROUP_SERVICE, 0, 64),
            (GROUP_SEVERITY, 0, 6),
            (GROUP_EVENT, 0, 64),
            (GROUP_ATTR, 0, 64),
            (GROUP_ATTR, 1, 64),
            (GROUP_ATTR, 0, 64),
        ]
    );
    assert_ne!(c.ruleset.needs & NEED_GROUPS, 0);
    assert_eq!(c.ruleset.group_key_lens, key_len_bit(16) | key_len_bit(4));
    assert_eq!(
        string_bits(&c, STR_GROUP, 16, b"http.status_code"),
        Some(0b01)
    );
    assert_eq!(string_bits(&c, STR_GROUP, 4, b"code"), Some(0b10));
    assert_eq!(c.rules[1].group_by, Some(("severity".to_string(), 6)));
    assert_eq!(c.rules[0].group_by, Some(("service".to_string(), 64)));
}

#[test]
fn group_by_mistakes_are_errors_where_they_are() {
    let head = "[[rule]]\nname = \"a\"\n";
    for (body, want) in [
        (
            "action = \"drop\"\ngroup_by = \"service\"",
            "r.toml:4:12: group_by is only for action \"count\"",
        ),
        (
            "action = \"count\"\ngroup_by = \"route\"",
            "r.toml:4:12: unknown group_by \"route\": expected \"service\", \"severity\", \"event_name\" or \"attributes.KEY\"",
        ),
        (
            "action = \"count\"\ngroup_by = \"resource.service.name\"",
            "r.toml:4:12: unknown group_by \"resource.service.name\" (did you mean \"service\"? \
             It is the resource's service.name; \"attributes.KEY\" are the record's own \
             attributes): expected \"service\", \"severity\", \"event_name\" or \"attributes.KEY\"",
        ),
        (
            "action = \"count\"\ngroup_by = \"service.name\"",
            "r.toml:4:12: unknown group_by \"service.name\" (did you mean \"service\"? It is the \
             resource's service.name; \"attributes.KEY\" are the record's own attributes): \
             expected \"service\", \"severity\", \"event_name\" or \"attributes.KEY\"",
        ),
        (
            "action = \"count\"\ngroup_by = \"resource.host.name\"",
            "r.toml:4:12: unknown group_by \"resource.host.name\" (a group is the resource's \
             service.name, \"service\", or one of the record's own attributes, \
             \"attributes.KEY\", not another resource attribute): expected \"service\", \
             \"severity\", \"event_name\" or \"attributes.KEY\"",
        ),
        (
            "action = \"count\"\ngroup_by = \"attribute.code\"",
            "r.toml:4:12: unknown group_by \"attribute.code\" (did you mean \"attributes.code\"?): \
             expected \"service\", \"severity\", \"event_name\" or \"attributes.KEY\"",
        ),
        (
            "action = \"count\"\ngroup_by = \"attributes.\"",
            "r.toml:4:12: group_by \"attributes.KEY\" needs a KEY",
        ),
        (
            "action = \"count\"\ngroup_by = \"service\"\nmax_groups = 1025",
            "r.toml:5:14: max_groups must be 1 to 1024",
        ),
        (
            "action = \"count\"\nmax_groups = 5",
            "r.toml:4:14: max_groups is only for rules with group_by",
        ),
    ] {
        assert_eq!(error(&format!("{head}{body}\n")), want, "{body}");
    }
    let many: String = (0..9)
        .map(|i| format!("[[rule]]\nname = \"g{i}\"\naction = \"count\"\ngroup_by = \"service\"\n"))
        .collect();
    assert_eq!(
        error(&many),
        "r.toml:36:12: too many rules with group_by: a rule set can have at most 8"
    );
}

#[test]
fn enrich_lists_the_attributes_and_their_keys() {
    use dt_ebpf_common::{ENRICH_HOST, ENRICH_PID, ENRICH_POD, STR_ENRICH};
    let c = compiled(
        "[enrich]\nresource_attributes = [\"process.pid\", \"host.name\", \"k8s.pod.uid\"]\n",
    );
    assert_eq!(c.ruleset.enrich, ENRICH_PID | ENRICH_HOST | ENRICH_POD);
    assert_eq!(string_bits(&c, STR_ENRICH, 11, b"process.pid"), Some(1));
    assert_eq!(string_bits(&c, STR_ENRICH, 9, b"host.name"), Some(2));
    assert_eq!(string_bits(&c, STR_ENRICH, 11, b"k8s.pod.uid"), Some(8));
    assert_eq!(string_bits(&c, STR_ENRICH, 12, b"container.id"), None);
    assert_eq!(c.ruleset.n_rules, 0);
}

#[test]
fn enrich_mistakes_are_errors_where_they_are() {
    for (text, want) in [
        (
            "[enrich]\nresource_attributes = [\"process.pid\", \"pid\"]\n",
            "r.toml:2:39: unknown resource attribute \"pid\" (did you mean \"process.pid\"?): dt adds \"process.pid\", \
             \"host.name\", \"container.id\" and \"k8s.pod.uid\"",
        ),
        (
            "[enrich]\nresource_attributes = [\"host.name\", \"host.name\"]\n",
            "r.toml:2:37: \"host.name\" is listed twice",
        ),
        (
            "[enrich]\nresource_attributes = []\n",
            "r.toml:2:23: resource_attributes must not be empty",
        ),
    ] {
        assert_eq!(error(text), want, "{text}");
    }
    // A misspelt key, and the key it leaves missing.
    assert_eq!(
        errors("[enrich]\nattributes = [\"host.name\"]\n"),
        [
            "r.toml:1:1: missing key `resource_attributes`: this table needs it",
            "r.toml:2:1: unknown key `attributes`; the keys here are `resource_attributes`",
        ]
    );
}

#[test]
fn a_rule_set_has_one_enrich() {
    let dir = tempfile::tempdir().unwrap();
    let e = "[enrich]\nresource_attributes = [\"host.name\"]\n";
    std::fs::write(dir.path().join("10-a.toml"), e).unwrap();
    std::fs::write(dir.path().join("20-b.toml"), e).unwrap();
    let errs = crate::rules::load_dir(dir.path()).unwrap_err();
    let text: Vec<String> = errs.iter().map(|d| d.to_string()).collect();
    assert_eq!(text.len(), 1, "{text:?}");
    let (a, b) = (dir.path().join("10-a.toml"), dir.path().join("20-b.toml"));
    assert_eq!(
        text[0],
        format!(
            "{}:1:1: a rule set has at most one [enrich]: the first is at {}:1",
            b.display(),
            a.display()
        )
    );
}
