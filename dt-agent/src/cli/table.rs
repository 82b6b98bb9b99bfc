//! The tables of `stats` and `rules`, rendered from their JSON documents.

use std::fmt::Write as _;

use dt_agent::{Stats, control::RulesInfo, text::printable};

/// The width of the HOOK column: it fits "uprobe:NAME" hooks.
fn hook_width<'a>(hooks: impl Iterator<Item = &'a str>) -> usize {
    hooks.map(str::len).max().unwrap_or(0).max(6)
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
        "\n{:<32} {:<10} {:<hw$} SOURCE",
        "RULE", "ACTION", "HOOK"
    );
    for r in &info.rules {
        let _ = writeln!(
            out,
            "{:<32} {:<10} {:<hw$} {}:{}",
            r.name,
            r.action,
            r.hook,
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
            "{:<nw$} {:<10} {:<hw$} {:>12} {:>12} {:>12} {:>14} {:>10}",
            name, r.action, r.hook, r.matched, r.kept, r.dropped, r.dropped_bytes, r.redacted
        );
        // Grouped counts under their rule, largest first.
        let mut groups: Vec<_> = r.groups.iter().flatten().filter(|(_, n)| **n > 0).collect();
        groups.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        for (group, n) in groups {
            // A group is a value from a sender's record: control characters (an escape
            // sequence, a carriage return, a line break) are shown escaped, never written.
            let label = format!("  {}", printable(group));
            let _ = writeln!(out, "{label:<nw$} {:<10} {:<hw$} {n:>12}", "", "");
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
                "{:<rw$} {:>10} {:>10} {:>11} {:>8} {:>6} {:>7} {:>10} {:>6} {:>10}",
                r.name,
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

/// The width of a table's first column: 32, or its longest text (rule names, group values as
/// shown, recorder names), so that the numbers stay in their columns.
fn first_width<'a>(texts: impl Iterator<Item = &'a str>) -> usize {
    texts.map(|t| t.chars().count()).max().unwrap_or(0).max(32)
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
        for group in r.groups.iter().flatten().map(|(g, _)| g) {
            // A group is a value from a sender's record: control characters (an escape
            // sequence, a carriage return, a line break) are shown escaped, never written.
            labels.push(format!("  {}", printable(group)));
        }
    }
    labels
}

#[cfg(test)]
mod tests {
    use dt_agent::{Stats, stats::RuleStats};

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
        // the header's MATCHED does (in characters).
        let header = lines.iter().find(|l| l.starts_with("RULE")).unwrap();
        let end = header[..header.find("MATCHED").unwrap() + "MATCHED".len()]
            .chars()
            .count();
        for l in &lines[at + 1..at + 6] {
            assert_eq!(l.chars().count(), end, "{l:?}\n{text}");
        }
    }
}
