//! `[[recorder]]`, `[[state]]`, trigger rules and `state` conditions: what they compile to, and
//! every mistake reported at its `file:line:column`.

use std::path::PathBuf;

use dt_ebpf_common::{ACTION_TRIGGER, NEED_RECORD, NEED_STATES};

use super::super::{Compiled, SlotTable, compile, load_sources};

const EXAMPLE: &str = r#"[[recorder]]
name = "checkout-debug"
size = "4MiB"
max_record = 2048

[[state]]
name = "incident"
duration = "5m"

[[rule]]
name = "drop-checkout-debug"
action = "drop"
recorder = "checkout-debug"
[rule.match]
severity = "DEBUG"
service = "checkout"
state = "!incident"

[[rule]]
name = "checkout-error"
action = "trigger"
flush = ["checkout-debug"]
set_state = ["incident"]
cooldown = "10s"
threshold = { count = 5, within = "1m" }
[rule.match]
severity = ">=ERROR"
service = "checkout"
"#;

fn build_with(text: &str, slots: &mut SlotTable) -> Result<Compiled, Vec<String>> {
    let set = load_sources(&[(PathBuf::from("r.toml"), text.to_string())])
        .map_err(|d| d.iter().map(ToString::to_string).collect::<Vec<_>>())?;
    compile(&set, slots).map_err(|d| d.iter().map(ToString::to_string).collect())
}

fn errors(text: &str) -> Vec<String> {
    build_with(text, &mut SlotTable::new()).expect_err("expected errors")
}

#[test]
fn the_worked_example_compiles_to_slots_and_bits() {
    let c = build_with(EXAMPLE, &mut SlotTable::new()).unwrap();
    assert_eq!(c.recorders.len(), 1);
    assert_eq!(
        (
            c.recorders[0].slot,
            c.recorders[0].size,
            c.recorders[0].max_record
        ),
        (0, 4 << 20, 2048)
    );
    assert_eq!(c.states[0].duration.as_secs(), 300);
    assert_eq!(c.state_durations[0], 300_000_000_000);
    let rs = &c.ruleset;
    assert_eq!(
        rs.needs & (NEED_RECORD | NEED_STATES),
        NEED_RECORD | NEED_STATES
    );
    assert_eq!(rs.states, 1);
    let drop = rs.rules[0];
    assert_eq!((drop.recorder, drop.state_on, drop.state_off), (1, 0, 1));
    let trig = rs.rules[1];
    assert_eq!(trig.action, ACTION_TRIGGER);
    assert_eq!((trig.trigger.flush, trig.trigger.set_state), (1, 1));
    assert_eq!(trig.trigger.cooldown_ns, 10_000_000_000);
    assert_eq!(
        (trig.trigger.threshold, trig.trigger.within_ms),
        (5, 60_000)
    );
}

#[test]
fn names_keep_their_slots_and_new_ones_avoid_the_active_sets() {
    let mut slots = SlotTable::new();
    let two = "[[recorder]]\nname = \"a\"\n[[recorder]]\nname = \"b\"\n[[state]]\nname = \"s\"\nduration = \"1s\"\n";
    let c = build_with(two, &mut slots).unwrap();
    assert_eq!((c.recorders[0].slot, c.recorders[1].slot), (0, 1));
    // b stays at 1; c may not take 0, a's slot in the active set while the new one replaces it.
    let next = "[[recorder]]\nname = \"c\"\n[[recorder]]\nname = \"b\"\n";
    let c = build_with(next, &mut slots).unwrap();
    let by: Vec<(String, u8)> = c
        .recorders
        .iter()
        .map(|r| (r.name.clone(), r.slot))
        .collect();
    assert_eq!(by, [("c".to_string(), 2), ("b".to_string(), 1)]);
    assert!(c.states.is_empty());
}

/// What `check` says of a recorder's `size`, for each kind of mistake: the units a recorder
/// can use (never GiB: any GiB size is over "64MiB"), and the range when that is the problem.
#[test]
fn a_recorders_size_says_what_is_wrong_with_it() {
    let range = "a recorder's size is from \"64KiB\" to \"64MiB\"";
    let how = "write a whole number and B, KiB or MiB, as \"4MiB\"";
    for (size, said) in [
        ("1GiB", format!("size \"1GiB\" is too large: {range}")),
        ("65MiB", format!("size \"65MiB\" is too large: {range}")),
        (
            "99999999999999999999MiB",
            format!("size \"99999999999999999999MiB\" is too large: {range}"),
        ),
        ("0", format!("size \"0\" is too small: {range}")),
        ("65535", format!("size \"65535\" is too small: {range}")),
        ("-1MiB", format!("size \"-1MiB\" is negative: {range}")),
        (
            "12XB",
            format!("\"12XB\" is not a size: \"XB\" is not a unit; {how}"),
        ),
        (
            "4 MiB",
            "\"4 MiB\" is not a size: write it without spaces, as \"4MiB\"".to_string(),
        ),
        (
            "128 MiB",
            format!(
                "\"128 MiB\" is not a size (write it without spaces), and it is too large: \
                 {range}"
            ),
        ),
        (
            "4mib",
            "\"4mib\" is not a size: write \"4MiB\" (the units are B, KiB and MiB, of 1024)"
                .to_string(),
        ),
        (
            "512k",
            "\"512k\" is not a size: write \"512KiB\" (the units are B, KiB and MiB, of 1024)"
                .to_string(),
        ),
        (
            "4GB",
            format!("\"4GB\" is not a size, and as \"4GiB\" it would be too large: {range}"),
        ),
        (
            "1.5MiB",
            "\"1.5MiB\" is not a size: write a whole number, of KiB if need be (\"1536KiB\" for \
             1.5 MiB)"
                .to_string(),
        ),
        ("", format!("size is empty: {how}")),
        ("MiB", format!("\"MiB\" is not a size: {how}")),
    ] {
        let e = errors(&format!("[[recorder]]\nname = \"r\"\nsize = \"{size}\"\n"));
        assert_eq!(e, [format!("r.toml:3:8: {said}")], "size = {size:?}");
        // GiB is a unit of sizes elsewhere (the memory ceiling), never offered for a recorder.
        assert!(!e[0].contains("KiB, MiB or GiB"), "{e:?}");
    }
    // A control character in the value is shown escaped, not written to the terminal.
    let e = errors("[[recorder]]\nname = \"r\"\nsize = \"4\\u001b[2JMiB\"\n");
    assert_eq!(
        e,
        [format!(
            "r.toml:3:8: \"4\\u{{1b}}[2JMiB\" is not a size: \"\\u{{1b}}[2JMiB\" is not a unit; {how}"
        )]
    );
    // The bounds and the forms that parse, rounded up to whole 4 KiB ring blocks.
    for (size, bytes) in [
        ("64KiB", 64 << 10),
        ("64MiB", 64 << 20),
        ("65536", 65536),
        ("70000B", 73728),
        ("1024KiB", 1 << 20),
    ] {
        let c = build_with(
            &format!("[[recorder]]\nname = \"r\"\nsize = \"{size}\"\n"),
            &mut SlotTable::new(),
        )
        .unwrap_or_else(|e| panic!("size = {size:?}: {e:?}"));
        assert_eq!(c.recorders[0].size, bytes, "size = {size:?}");
    }
}

#[test]
fn mistakes_are_reported_where_they_are() {
    let e = errors("[[recorder]]\nname = \"r\"\nsize = \"4MB\"\n");
    assert_eq!(
        e,
        [
            "r.toml:3:8: \"4MB\" is not a size: write \"4MiB\" (the units are B, KiB and MiB, of 1024)"
        ]
    );
    let e = errors("[[recorder]]\nname = \"r\"\nsize = \"128MiB\"\n");
    assert_eq!(
        e,
        [
            "r.toml:3:8: size \"128MiB\" is too large: a recorder's size is from \"64KiB\" to \"64MiB\""
        ]
    );
    let e = errors("[[recorder]]\nname = \"r\"\nsize = \"64KiB\"\nmax_record = 20000\n");
    assert!(
        e[0].starts_with("r.toml:4:14: max_record must be between 64 and 16384 bytes"),
        "{e:?}"
    );
    let e = errors("[[recorder]]\nname = \"r\"\nsizes = 1\n");
    assert!(e[0].starts_with("r.toml:3:1: unknown key `sizes`"), "{e:?}");
    // Every unknown key, and the table's other problems with them.
    let e = errors("[[recorder]]\nname = \"r\"\nsizes = 1\nsize = \"4MB\"\nmax_rec = 1\n");
    assert_eq!(e.len(), 3, "{e:?}");
    assert!(e[0].starts_with("r.toml:3:1: unknown key `sizes`"), "{e:?}");
    assert!(
        e[1].starts_with("r.toml:4:8: \"4MB\" is not a size"),
        "{e:?}"
    );
    assert!(
        e[2].starts_with("r.toml:5:1: unknown key `max_rec`"),
        "{e:?}"
    );
    let e = errors("[[state]]\nname = \"\"\nduration = \"1m\"\nlast = 1\n");
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(
        e[0].starts_with("r.toml:2:8: name must not be empty"),
        "{e:?}"
    );
    assert!(e[1].starts_with("r.toml:4:1: unknown key `last`"), "{e:?}");
    let e = errors("[enrich]\nresource_attributes = [\"pid\"]\nextra = 1\n");
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(
        e[0].starts_with("r.toml:2:24: unknown resource attribute \"pid\""),
        "{e:?}"
    );
    assert!(e[1].starts_with("r.toml:3:1: unknown key `extra`"), "{e:?}");
    let e = errors("[[state]]\nname = \"s\"\nduration = \"2d\"\n");
    assert!(
        e[0].starts_with("r.toml:3:12: \"2d\" is not a duration"),
        "{e:?}"
    );
    let e = errors("[[state]]\nname = \"s\"\nduration = \"25h\"\n");
    assert_eq!(
        e,
        ["r.toml:3:12: duration must be between \"1s\" and \"24h\""]
    );
    let e = errors(
        "[[state]]\nname = \"s\"\nduration = \"1m\"\n[[state]]\nname = \"s\"\nduration = \"1m\"\n",
    );
    assert_eq!(
        e,
        ["r.toml:5:8: duplicate state name \"s\": first defined at r.toml:2"]
    );
    let e = errors("[[rule]]\nname = \"d\"\naction = \"drop\"\nrecorder = \"nope\"\n");
    assert_eq!(
        e,
        ["r.toml:4:12: no [[recorder]] named \"nope\" in the rule set"]
    );
    let e = errors(
        "[[recorder]]\nname = \"r\"\n[[rule]]\nname = \"c\"\naction = \"count\"\nrecorder = \"r\"\n",
    );
    assert!(
        e[0].starts_with("r.toml:6:12: recorder is only for drop, sample and rate_limit rules"),
        "{e:?}"
    );
    let e = errors("[[rule]]\nname = \"t\"\naction = \"trigger\"\n");
    assert_eq!(
        e,
        ["r.toml:3:10: action \"trigger\" needs flush or set_state (what it does when it fires)"]
    );
    let e = errors(
        "[[rule]]\nname = \"t\"\naction = \"trigger\"\nset_state = [\"x\"]\ncooldown = \"soon\"\n",
    );
    // The trigger is refused, and the state it names still checked.
    assert_eq!(e.len(), 2, "{e:?}");
    assert_eq!(
        e[0],
        "r.toml:4:14: no [[state]] named \"x\" in the rule set"
    );
    assert!(
        e[1].starts_with("r.toml:5:12: \"soon\" is not a duration"),
        "{e:?}"
    );
    let e = errors("[[rule]]\nname = \"t\"\naction = \"trigger\"\nset_state = [\"x\"]\n");
    assert_eq!(e, ["r.toml:4:14: no [[state]] named \"x\" in the rule set"]);
    let e = errors("[[rule]]\nname = \"t\"\naction = \"count\"\nflush = [\"x\"]\n");
    assert_eq!(e, ["r.toml:4:9: flush is only for action \"trigger\""]);
    let e = errors("[[rule]]\nname = \"d\"\naction = \"drop\"\n[rule.match]\nstate = \"!calm\"\n");
    assert_eq!(
        e,
        ["r.toml:5:9: no [[state]] named \"calm\" in the rule set"]
    );
    let e = errors(
        "[[state]]\nname = \"s\"\nduration = \"1s\"\n[[rule]]\nname = \"t\"\naction = \"trigger\"\nset_state = [\"s\"]\nthreshold = { count = 0, within = \"1m\" }\n",
    );
    assert!(
        e[0].starts_with("r.toml:8:23: threshold count must be between 1"),
        "{e:?}"
    );
}

#[test]
fn every_problem_of_a_trigger_and_what_it_names_is_reported_in_one_run() {
    // A trigger with a bad cooldown and a bad count, naming a recorder and a state that are
    // not in the set: four problems, one run.
    let e = errors(
        "[[recorder]]\nname = \"checkout-debug\"\n[[state]]\nname = \"incident\"\n\
         duration = \"5m\"\n[[rule]]\nname = \"t\"\naction = \"trigger\"\n\
         flush = [\"checkout-debugg\"]\nset_state = [\"incidnet\"]\ncooldown = \"10 s\"\n\
         threshold = { count = 0, within = \"1m\" }\n",
    );
    assert_eq!(
        e,
        [
            "r.toml:9:10: no [[recorder]] named \"checkout-debugg\" in the rule set; did you \
             mean \"checkout-debug\"?",
            "r.toml:10:14: no [[state]] named \"incidnet\" in the rule set; did you mean \
             \"incident\"?",
            "r.toml:11:12: \"10 s\" is not a duration: write a whole number and ms, s, m or h, \
             as \"10s\"",
            "r.toml:12:23: threshold count must be between 1 and 1000000",
        ]
    );
    // A recorder or state refused for a bad value is reported there, not as missing where a
    // rule names it.
    let e = errors(
        "[[recorder]]\nname = \"r\"\nsize = \"4MB\"\n[[state]]\nname = \"s\"\n\
         duration = \"5min\"\n[[rule]]\nname = \"t\"\naction = \"trigger\"\n\
         flush = [\"r\"]\nset_state = [\"s\"]\n[[rule]]\nname = \"d\"\naction = \"drop\"\n\
         recorder = \"r\"\n[rule.match]\nstate = \"!s\"\n",
    );
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(
        e[0].starts_with("r.toml:3:8: \"4MB\" is not a size"),
        "{e:#?}"
    );
    assert!(
        e[1].starts_with("r.toml:6:12: \"5min\" is not a duration"),
        "{e:#?}"
    );
    // A refused rule's recorder is checked too, but only the keys of its action.
    let e = errors(
        "[[rule]]\nname = \"d\"\naction = \"sample\"\nkeep_one_in = 0\nrecorder = \"gone\"\n",
    );
    assert_eq!(
        e,
        [
            "r.toml:4:15: keep_one_in must be at least 1",
            "r.toml:5:12: no [[recorder]] named \"gone\" in the rule set",
        ]
    );
}

#[test]
fn a_trigger_with_empty_lists_is_refused_and_refused_rules_name_things_as_valid_ones_do() {
    // Empty lists do nothing: said, not dropped silently.
    for lists in ["flush = []", "set_state = []", "flush = []\nset_state = []"] {
        let e = errors(&format!(
            "[[rule]]\nname = \"t\"\naction = \"trigger\"\n{lists}\n"
        ));
        assert_eq!(
            e,
            [
                "r.toml:3:10: action \"trigger\" needs flush or set_state (what it does when it \
              fires)"
            ],
            "{lists}"
        );
    }
    // A refused trigger's names: "!" is only for a match's state, a repeat is said once.
    let e = errors(
        "[[rule]]\nname = \"t\"\naction = \"trigger\"\nflush = [\"!rec\", \"a\", \"a\"]\n\
         cooldown = \"soon\"\n",
    );
    assert_eq!(e.len(), 4, "{e:#?}");
    assert!(
        e[0].starts_with("r.toml:4:10: no [[recorder]] named \"!rec\""),
        "{e:#?}"
    );
    assert!(
        e[1].starts_with("r.toml:4:18: no [[recorder]] named \"a\""),
        "{e:#?}"
    );
    assert!(
        e[2].starts_with("r.toml:4:23: \"a\" is listed twice"),
        "{e:#?}"
    );
    assert!(
        e[3].starts_with("r.toml:5:12: \"soon\" is not a duration"),
        "{e:#?}"
    );
    // Two refused rules without a valid name are not duplicates of each other.
    let e = errors(
        "[[rule]]\nname = \"\"\naction = \"count\"\n[[rule]]\nname = \"\"\naction = \"count\"\n",
    );
    assert!(e.iter().all(|d| !d.contains("duplicate")), "{e:#?}");
}

#[test]
fn a_rule_name_given_twice_is_reported_when_the_first_rule_is_refused() {
    let e = errors(
        "[[rule]]\nname = \"x\"\naction = \"sample\"\nkeep_one_in = 0\n\
         [[rule]]\nname = \"x\"\naction = \"drop\"\n",
    );
    assert_eq!(
        e,
        [
            "r.toml:4:15: keep_one_in must be at least 1",
            "r.toml:6:8: duplicate rule name \"x\": first defined at r.toml:2",
        ]
    );
}

#[test]
fn too_many_recorders_or_states_point_at_the_first_one_over() {
    let recorders: String = (0..17)
        .map(|i| format!("[[recorder]]\nname = \"r{i}\"\n"))
        .collect();
    let e = super::errors(&recorders);
    assert_eq!(e.len(), 1, "{e:#?}");
    // The 17th table starts on line 33; its name is on line 34.
    assert!(
        e[0].starts_with("r.toml:34:8: too many recorders: this is number 17"),
        "{e:#?}"
    );
    let states: String = (0..65)
        .map(|i| format!("[[state]]\nname = \"s{i}\"\nduration = \"1m\"\n"))
        .collect();
    let e = super::errors(&states);
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(
        e[0].starts_with("r.toml:194:8: too many states: this is number 65"),
        "{e:#?}"
    );
}

#[test]
fn mistyped_hooks_group_by_enrich_names_and_presets_say_what_was_meant() {
    let cases = [
        (
            "[[rule]]\nname = \"a\"\naction = \"count\"\nhooks = [\"otpl\"]\n",
            "\"otlp\"",
        ),
        (
            "[[rule]]\nname = \"a\"\naction = \"count\"\nhooks = [\"uprobe-syslog\"]\n",
            "\"uprobe:syslog\"",
        ),
        (
            "[[rule]]\nname = \"a\"\naction = \"count\"\ngroup_by = \"sevrity\"\n",
            "\"severity\"",
        ),
        (
            "[[rule]]\nname = \"a\"\naction = \"count\"\ngroup_by = \"attribute.k\"\n",
            "\"attributes.k\"",
        ),
        (
            "[enrich]\nresource_attributes = [\"hostname\"]\n",
            "\"host.name\"",
        ),
        (
            "[enrich]\nresource_attributes = [\"pid\"]\n",
            "\"process.pid\"",
        ),
        (
            "[[probe]]\nname = \"p\"\npreset = \"sylog\"\n",
            "\"syslog\"",
        ),
    ];
    for (text, meant) in cases {
        let e = errors(text);
        assert!(
            e.iter()
                .any(|d| d.contains(&format!("(did you mean {meant}?)"))),
            "{text}: {e:#?}"
        );
    }
}
