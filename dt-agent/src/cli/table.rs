//! The tables of `stats` and `rules`, rendered from their JSON documents.

use std::fmt::Write as _;

use dt_agent::{Stats, control::RulesInfo, stats::RuleStats, text::printable};
use unicode_width::UnicodeWidthStr as _;

/// The width of the HOOK column: it fits "uprobe:NAME" hooks.
fn hook_width<'a>(hooks: impl Iterator<Item = &'a str>) -> usize {
    hooks.map(str::width).max().unwrap_or(0).max(6)
}

/// `text` and spaces up to `width` terminal columns. (`{:<w$}` counts characters, but a CJK
/// character or an emoji takes two columns and a combining mark none: the columns after a
/// name or group value with them would not line up.)
fn pad(text: &str, width: usize) -> String {
    let spaces = width.saturating_sub(text.width());
    let mut padded = String::with_capacity(text.len() + spaces);
    padded.push_str(text);
    padded.extend(std::iter::repeat_n(' ', spaces));
    padded
}

/// The rip cord's position, as the tables' first line says it.
fn switch(enabled: bool) -> &'static str {
    if enabled {
        "enabled"
    } else {
        "DISABLED (everything passes)"
    }
}

/// The last refused change of the rule set, if it stands, one problem a line.
fn refused(out: &mut String, error: Option<&str>) {
    let Some(error) = error else {
        return;
    };
    let _ = writeln!(
        out,
        "REFUSED: the last change of the rule set (the active rules are the set before it):"
    );
    for line in error.lines() {
        // (A remote rule file's key may hold anything.)
        let _ = writeln!(out, "  {}", printable(line));
    }
}

pub fn rules(info: &RulesInfo) -> String {
    let mut out = String::new();
    let hw = hook_width(info.rules.iter().map(|r| r.hook.as_str()));
    let nw = first_width(info.rules.iter().map(|r| r.name.as_str()));
    let _ = writeln!(
        out,
        "generation {}  {}  rules from {}",
        info.generation,
        switch(info.enabled),
        info.rules_dir.display()
    );
    refused(&mut out, info.rules_error.as_deref());
    let _ = writeln!(
        out,
        "\n{:<nw$} {:<10} {:<hw$} SOURCE",
        "RULE", "ACTION", "HOOK"
    );
    for r in &info.rules {
        let _ = writeln!(
            out,
            "{} {:<10} {} {}:{}",
            pad(&r.name, nw),
            r.action,
            pad(&r.hook, hw),
            r.file.display(),
            r.line
        );
    }
    out
}

pub fn stats(s: &Stats) -> String {
    let mut out = String::new();
    let hw = hook_width(s.rules.iter().map(|r| r.hook.as_str()));
    let _ = writeln!(out, "generation {}  {}", s.generation, switch(s.enabled));
    if let Some(why) = &s.disabled_reason {
        let _ = writeln!(out, "why: {why}");
    }
    refused(&mut out, s.rules_error.as_deref());
    if let Some(c) = &s.cost {
        let _ = writeln!(
            out,
            "cost: kernel programs {} of {} CPUs over the last {} ms (ceiling {}, exceeded {} \
             times), maps {} KiB",
            dt_agent::settings::format_ppm(c.cpu_ppm),
            c.cpus,
            c.window_ms,
            dt_agent::settings::format_ppm(c.cpu_ceiling_ppm),
            c.exceeded,
            c.map_bytes / 1024
        );
    }
    let labels = rule_labels(s);
    let nw = first_width(labels.iter().map(String::as_str));
    let _ = writeln!(
        out,
        "\n{:<nw$} {:<10} {:<hw$} {:>12} {:>12} {:>12} {:>14} {:>10}",
        "RULE", "ACTION", "HOOK", "MATCHED", "KEPT", "DROPPED", "DROPPED BYTES", "REDACTED"
    );
    for r in &s.rules {
        let name = if r.active {
            r.name.clone()
        } else {
            format!("{} (removed)", r.name)
        };
        let _ = writeln!(
            out,
            "{} {:<10} {} {:>12} {:>12} {:>12} {:>14} {:>10}",
            pad(&name, nw),
            r.action,
            pad(&r.hook, hw),
            r.matched,
            r.kept,
            r.dropped,
            r.dropped_bytes,
            r.redacted
        );
        // Grouped counts under their rule, largest first, as many as a screen holds.
        let (groups, more) = shown_groups(r);
        for (group, n) in groups {
            // A group is a value from a sender's record: control characters (an escape
            // sequence, a carriage return, a line break) are shown escaped, never written.
            let label = format!("  {}", printable(group));
            let _ = writeln!(out, "{} {:<10} {:<hw$} {n:>12}", pad(&label, nw), "", "");
        }
        if more > 0 {
            let _ = writeln!(
                out,
                "  ... {more} more group{} (`stats --json` has them all)",
                if more == 1 { "" } else { "s" }
            );
        }
    }
    let t = &s.totals;
    let _ = writeln!(
        out,
        "\nrequests {}  log requests {}  records {}  dropped {}  bytes in {}  bytes out {}",
        t.requests, t.log_requests, t.records, t.records_dropped, t.bytes_in, t.bytes_out
    );
    let passed: Vec<String> = t
        .passthrough
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    let _ = writeln!(
        out,
        "passed through untouched: {}",
        if passed.is_empty() {
            "none".to_string()
        } else {
            passed.join(", ")
        }
    );
    // uprobe hook
    let u = &s.uprobes;
    if u.attached > 0 || u.calls > 0 {
        let _ = writeln!(
            out,
            "uprobes: {} functions attached  calls {}  nested {}  captured {}  capture lost {}  \
             exported {}  export failed {}  messages unreadable {}  truncated {}",
            u.attached,
            u.calls,
            u.nested,
            u.captured,
            u.capture_lost,
            u.exported,
            u.export_failed,
            u.unreadable,
            u.truncated
        );
        if u.detaching > 0 {
            let _ = writeln!(
                out,
                "  {} functions still being detached: the kernel waits for a probed call that \
                 waits for a page of its message (uprobe_fault_in)",
                u.detaching
            );
        }
        if u.preempted > 0 {
            let _ = writeln!(
                out,
                "  {} calls not evaluated: they came while another call's evaluation on their \
                 CPU was preempted",
                u.preempted
            );
        }
    }
    // Triggers, recorders, states.
    let fired: Vec<String> = s
        .rules
        .iter()
        .filter_map(|r| r.fired.map(|n| format!("{} {n}", r.name)))
        .collect();
    if !fired.is_empty() {
        let _ = writeln!(out, "triggers fired: {}", fired.join(", "));
    }
    if !s.recorders.is_empty() {
        let rw = first_width(s.recorders.iter().map(|r| r.name.as_str()));
        let _ = writeln!(
            out,
            "\n{:<rw$} {:>10} {:>10} {:>11} {:>8} {:>6} {:>7} {:>10} {:>6} {:>10}",
            "RECORDER",
            "RECORDS",
            "RECORDED",
            "OVERWRITTEN",
            "TOO LONG",
            "LOST",
            "FLUSHES",
            "FLUSHED",
            "FAILED",
            "SIZE"
        );
        for r in &s.recorders {
            let _ = writeln!(
                out,
                "{} {:>10} {:>10} {:>11} {:>8} {:>6} {:>7} {:>10} {:>6} {:>10}",
                pad(&r.name, rw),
                r.records,
                r.recorded,
                r.overwritten,
                r.too_long,
                r.lost,
                r.flushes,
                r.flushed_records,
                r.flush_failures,
                r.size
            );
        }
    }
    if !s.states.is_empty() {
        let states: Vec<String> = s
            .states
            .iter()
            .map(|st| {
                if st.on {
                    format!("{} on ({} s left)", st.name, st.remaining_ms.div_ceil(1000))
                } else {
                    format!("{} off", st.name)
                }
            })
            .collect();
        let _ = writeln!(out, "states: {}", states.join(", "));
    }
    out
}

/// The width of a table's first column, in terminal columns: 32, or its widest text (rule
/// names, group values as shown, recorder names), so that the numbers stay in their columns.
fn first_width<'a>(texts: impl Iterator<Item = &'a str>) -> usize {
    texts.map(str::width).max().unwrap_or(0).max(32)
}

/// Each rule's name as the table shows it, and its groups' labels (escaped, indented).
fn rule_labels(s: &Stats) -> Vec<String> {
    let mut labels = Vec::new();
    for r in &s.rules {
        labels.push(if r.active {
            r.name.clone()
        } else {
            format!("{} (removed)", r.name)
        });
        for (group, _) in shown_groups(r).0 {
            // A group is a value from a sender's record: control characters (an escape
            // sequence, a carriage return, a line break) are shown escaped, never written.
            labels.push(format!("  {}", printable(group)));
        }
    }
    labels
}

/// Groups the table shows under a rule.
const TABLE_GROUPS: usize = 20;

/// The groups of `r` the table shows (those counted, largest first, at most [`TABLE_GROUPS`]),
/// and how many more it has counted.
fn shown_groups(r: &RuleStats) -> (Vec<(&String, &u64)>, usize) {
    let mut groups: Vec<_> = r.groups.iter().flatten().filter(|(_, n)| **n > 0).collect();
    groups.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let more = groups.len().saturating_sub(TABLE_GROUPS);
    groups.truncate(TABLE_GROUPS);
    (groups, more)
}

#[cfg(test)]
mod tests {
    use dt_agent::{
        Stats,
        control::{RuleInfo, RulesInfo},
        stats::{RecorderStats, RuleStats},
        text::printable,
    };
    use unicode_width::UnicodeWidthStr as _;

    /// A rule with thousands of groups (a removed rule's, or `max_groups = 1024`) shows its 20
    /// largest, and says how many more `stats --json` has; a long value does not widen the
    /// first column unless it is shown.
    #[test]
    fn the_table_shows_twenty_groups_a_rule() {
        let groups: std::collections::BTreeMap<String, u64> = (0..1_000u64)
            .map(|i| (format!("user-{i:04}"), i + 1))
            .chain([("x".repeat(80), 1)])
            .chain([("zero".to_string(), 0)])
            .collect();
        let s = Stats {
            rules: vec![RuleStats {
                name: "by-user".into(),
                action: "count".into(),
                hook: "otlp".into(),
                active: false,
                matched: 500_501,
                groups: Some(groups),
                ..RuleStats::default()
            }],
            ..Stats::default()
        };
        let text = super::stats(&s);
        let shown: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("  user-"))
            .map(|l| l.split_whitespace().next().unwrap())
            .collect();
        let want: Vec<String> = (980..1_000).rev().map(|i| format!("user-{i:04}")).collect();
        assert_eq!(shown, want, "{text}");
        // 1,001 counted (the 0 is not shown), 20 of them shown.
        assert!(
            text.contains("  ... 981 more groups (`stats --json` has them all)"),
            "{text}"
        );
        assert!(!text.contains(&"x".repeat(80)));
        let header = text.lines().find(|l| l.starts_with("RULE")).unwrap();
        assert_eq!(header.find("ACTION"), Some(33), "{header}");
    }

    #[test]
    fn group_values_from_senders_are_shown_escaped() {
        let groups = [
            ("\u{1b}[2J\u{1b}[31mFAKE", 1),
            ("ok\rdrop-everything   drop  otlp  99999", 2),
            ("line1\nline2", 3),
            ("back\\slash", 4),
            ("plain ünïcødé", 5),
        ];
        let s = Stats {
            rules: vec![RuleStats {
                name: "by-user".into(),
                action: "count".into(),
                hook: "otlp".into(),
                active: true,
                matched: 15,
                groups: Some(groups.iter().map(|(g, n)| (g.to_string(), *n)).collect()),
                ..RuleStats::default()
            }],
            ..Stats::default()
        };
        let text = super::stats(&s);
        assert!(
            !text.contains(['\u{1b}', '\r']),
            "a control character reached the table: {text:?}"
        );
        for shown in [
            "\\u{1b}[2J\\u{1b}[31mFAKE",
            "ok\\rdrop-everything   drop  otlp  99999",
            "line1\\nline2",
            "back\\\\slash",
            "plain ünïcødé",
        ] {
            assert!(text.contains(shown), "{shown} is not in {text}");
        }
        // One line a group, largest first: nothing breaks the table's rows.
        let lines: Vec<&str> = text.lines().collect();
        let at = lines.iter().position(|l| l.starts_with("by-user")).unwrap();
        let counts: Vec<&str> = lines[at + 1..at + 6]
            .iter()
            .map(|l| l.split_whitespace().last().unwrap())
            .collect();
        assert_eq!(counts, ["5", "4", "3", "2", "1"], "{text}");
        // The counts stay in their column, however long a value: each group's line ends where
        // the header's MATCHED does (in terminal columns).
        let header = lines.iter().find(|l| l.starts_with("RULE")).unwrap();
        let end = header[..header.find("MATCHED").unwrap() + "MATCHED".len()].width();
        for l in &lines[at + 1..at + 6] {
            assert_eq!(l.width(), end, "{l:?}\n{text}");
        }
    }

    /// The terminal column where `field` starts in `line`, and where the line ends.
    fn columns(line: &str, field: &str) -> (usize, usize) {
        let at = line
            .find(field)
            .unwrap_or_else(|| panic!("{field} not in {line:?}"));
        (line[..at].width(), line.width())
    }

    #[test]
    fn wide_and_combining_characters_keep_the_columns_in_line() {
        // Two columns a character (CJK, an emoji), none for a combining mark: counted in chars,
        // each of these rows would be off by one column or more.
        let groups = [
            ("東京", 6),
            ("🚀 launch", 5),
            ("cafe\u{301}", 4),
            ("e\u{301}\u{301}\u{301}", 3),
            ("\u{1b}[31mred\nline", 2),
            ("渋谷区の非常に長いグループの値、三十二桁を越える", 1),
        ];
        let s = Stats {
            rules: vec![
                RuleStats {
                    name: "日本語のルール".into(),
                    action: "count".into(),
                    hook: "otlp".into(),
                    active: true,
                    matched: 21,
                    groups: Some(groups.iter().map(|(g, n)| (g.to_string(), *n)).collect()),
                    ..RuleStats::default()
                },
                RuleStats {
                    name: "plain".into(),
                    action: "drop".into(),
                    hook: "otlp".into(),
                    active: true,
                    matched: 7,
                    ..RuleStats::default()
                },
            ],
            recorders: vec![
                RecorderStats {
                    name: "記録🚀".into(),
                    size: 4 << 20,
                    ..RecorderStats::default()
                },
                RecorderStats {
                    name: "plain".into(),
                    size: 4 << 20,
                    ..RecorderStats::default()
                },
            ],
            ..Stats::default()
        };
        let text = super::stats(&s);
        let lines: Vec<&str> = text.lines().collect();
        let line = |start: &str| {
            *lines
                .iter()
                .find(|l| l.starts_with(start))
                .unwrap_or_else(|| panic!("no line starts with {start:?}: {text}"))
        };

        // The rows end where the header does (every number is right-aligned), and ACTION and
        // HOOK start where theirs do.
        let header = line("RULE");
        let (action, end) = columns(header, "ACTION");
        let (hook, _) = columns(header, "HOOK");
        for (row, verb) in [(line("日本語のルール"), "count"), (line("plain "), "drop")] {
            assert_eq!(columns(row, verb), (action, end), "{row:?}\n{text}");
            assert_eq!(columns(row, "otlp").0, hook, "{row:?}\n{text}");
        }
        // The groups' counts end under MATCHED's, the longest value widening the column.
        let matched = columns(header, "MATCHED");
        let matched_end = matched.0 + "MATCHED".len();
        for (g, _) in &groups {
            let shown = format!("  {}", printable(g));
            let row = line(&shown);
            assert_eq!(row.width(), matched_end, "{row:?}\n{text}");
        }
        assert!(
            action > 32,
            "the widest group value widens the column: {text}"
        );
        // Control characters are shown escaped, never written.
        assert!(line("  \\u{1b}[31mred\\nline").ends_with(" 2"), "{text}");
        assert!(!text.contains(['\u{1b}', '\r']), "{text:?}");
        assert_eq!(text.lines().count(), text.matches('\n').count(), "{text:?}");

        // The recorders' table too.
        let at = lines
            .iter()
            .position(|l| l.starts_with("RECORDER"))
            .unwrap();
        let (records, end) = columns(lines[at], "RECORDS");
        for (row, name) in lines[at + 1..].iter().zip(["記録🚀 ", "plain "]) {
            assert!(row.starts_with(name), "{row:?}\n{text}");
            assert_eq!(row.width(), end, "{row:?}\n{text}");
            // RECORDS is right-aligned: its count (0) is the column's last character.
            let zero = row.find(" 0").unwrap() + 1;
            assert_eq!(
                row[..zero].width(),
                records + "RECORDS".len() - 1,
                "{row:?}"
            );
        }
    }

    #[test]
    fn the_rules_table_pads_by_display_width() {
        let info = RulesInfo {
            rules: [
                "日本語のルール",
                "plain",
                "a-rule-name-longer-than-thirty-two-columns",
            ]
            .into_iter()
            .map(|name| RuleInfo {
                name: name.into(),
                action: "drop".into(),
                hook: "otlp".into(),
                file: "r.toml".into(),
                line: 1,
            })
            .collect(),
            generation: 1,
            enabled: true,
            rules_dir: "/etc/dt/rules".into(),
            rules_error: None,
        };
        let text = super::rules(&info);
        let header = text.lines().find(|l| l.starts_with("RULE")).unwrap();
        let source = columns(header, "SOURCE").0;
        for row in text.lines().filter(|l| l.ends_with("r.toml:1")) {
            // The widest name, and a space.
            assert_eq!(columns(row, "drop").0, 43, "{row:?}\n{text}");
            assert_eq!(columns(header, "ACTION").0, 43, "{header:?}");
            assert_eq!(columns(row, "r.toml").0, source, "{row:?}\n{text}");
        }
    }
}
