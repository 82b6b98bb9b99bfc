//! Parsing one rule file: TOML syntax, the shape of `[[rule]]` tables (serde), and the checks
//! that need only the rule itself. The `[[probe]]` tables are in [`probe`].

mod objects;
mod probe;

pub use objects::{MAX_STATE_DURATION, MIN_STATE_DURATION, parse_duration, parse_size};

use std::collections::BTreeMap;
use std::fmt;

use dt_ebpf_common::{MAX_ATTR_KEY_LEN, MAX_NAME_LEN};
use serde::Deserialize;
use serde::de::{self, Deserializer, Unexpected, Visitor};
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::diag::{Diagnostic, Pos, SourceText};
use super::model::{
    Action, ActionKind, At, AttrValue, DEFAULT_MAX_GROUPS, EnrichDef, GroupBy, Hook,
    MAX_MAX_GROUPS, Match, ProbeDef, RecorderDef, RuleDef, StateDef, TriggerDef,
};
use super::severity::SeverityRange;

/// A `[[rule]]` table as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Spanned<String>,
    action: Spanned<String>,
    hooks: Option<Spanned<Vec<Spanned<String>>>>,
    keep_one_in: Option<Spanned<i64>>,
    per_second: Option<Spanned<i64>>,
    remove_attributes: Option<Spanned<Vec<Spanned<String>>>>,
    mask_body: Option<Spanned<bool>>,
    recorder: Option<Spanned<String>>,
    flush: Option<Spanned<Vec<Spanned<String>>>>,
    set_state: Option<Spanned<Vec<Spanned<String>>>>,
    cooldown: Option<Spanned<String>>,
    threshold: Option<Spanned<RawThreshold>>,
    group_by: Option<Spanned<String>>,
    max_groups: Option<Spanned<i64>>,
    #[serde(rename = "match")]
    conditions: Option<RawMatch>,
}

/// `threshold = { count = 5, within = "1m" }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawThreshold {
    count: Spanned<i64>,
    within: Spanned<String>,
}

/// A trigger's default cooldown.
pub const DEFAULT_COOLDOWN: std::time::Duration = std::time::Duration::from_secs(10);
/// Largest threshold count, and the longest threshold window.
pub const MAX_THRESHOLD: i64 = 1_000_000;
pub const MAX_WITHIN: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// A `[rule.match]` table as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatch {
    severity: Option<Spanned<RawSeverity>>,
    service: Option<Spanned<String>>,
    body_contains: Option<Spanned<String>>,
    attributes: Option<BTreeMap<Spanned<String>, Spanned<toml::Value>>>,
    event_name: Option<Spanned<String>>,
    state: Option<Spanned<String>>,
}

/// `severity = "<INFO"` or `severity = 9`.
pub(super) enum RawSeverity {
    Text(String),
    Number(i64),
}

impl<'de> Deserialize<'de> for RawSeverity {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RawSeverityVisitor)
    }
}

struct RawSeverityVisitor;

impl Visitor<'_> for RawSeverityVisitor {
    type Value = RawSeverity;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a severity string such as \"<INFO\" or a SeverityNumber")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<RawSeverity, E> {
        Ok(RawSeverity::Text(v.to_owned()))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawSeverity, E> {
        Ok(RawSeverity::Number(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawSeverity, E> {
        i64::try_from(v)
            .map(RawSeverity::Number)
            .map_err(|_| E::invalid_value(Unexpected::Unsigned(v), &self))
    }
}

/// One file, parsed.
#[derive(Default)]
pub(crate) struct ParsedFile {
    /// The valid rules and probes; only meaningful when there are no problems.
    pub rules: Vec<RuleDef>,
    pub probes: Vec<ProbeDef>,
    pub recorders: Vec<RecorderDef>,
    pub states: Vec<StateDef>,
    pub enrich: Option<EnrichDef>,
    /// The probes, recorders and states that were refused, as (`"probe"`, name): rules naming
    /// them are not reported again, as if they were missing.
    pub broken: Vec<(&'static str, String)>,
    /// The recorders and states that refused rules name, as (`"state"`, name).
    pub refused_refs: Vec<(&'static str, At<String>)>,
    /// The names of the refused rules, for a duplicate of one to be reported too.
    pub refused_rules: Vec<At<String>>,
    pub diags: Vec<Diagnostic>,
}

/// Parses and validates one file, collecting every problem found.
pub(crate) fn parse_file(src: &SourceText) -> ParsedFile {
    let (root, syntax_errors) = DeTable::parse_recoverable(src.text);
    if !syntax_errors.is_empty() {
        // What follows a syntax error is unreliable: report only the syntax.
        let diags = syntax_errors
            .iter()
            .map(|e| toml_error(src, e, 0..0))
            .collect();
        return ParsedFile {
            diags,
            ..ParsedFile::default()
        };
    }
    let mut rules = Vec::new();
    let mut probes = Vec::new();
    let mut broken = Vec::new();
    let mut refused_refs = Vec::new();
    let mut refused_rules = Vec::new();
    let mut diags = Vec::new();
    let mut recorders = Vec::new();
    let mut states = Vec::new();
    let mut enrich = None;
    for (key, value) in root.get_ref() {
        match key.get_ref().as_ref() {
            "enrich" => match objects::parse_enrich(src, value) {
                Ok(e) => enrich = Some(e),
                Err(errors) => diags.extend(errors),
            },
            kind @ ("recorder" | "state") => match value.get_ref() {
                DeValue::Array(tables) => {
                    for table in tables.iter() {
                        let refused = if kind == "recorder" {
                            objects::parse_recorder(src, table)
                                .map(|r| recorders.push(r))
                                .err()
                        } else {
                            objects::parse_state(src, table)
                                .map(|s| states.push(s))
                                .err()
                        };
                        if let Some(errors) = refused {
                            diags.extend(errors);
                            let kind = if kind == "recorder" {
                                "recorder"
                            } else {
                                "state"
                            };
                            broken.extend(table_name(table).map(|n| (kind, n)));
                        }
                    }
                }
                _ => diags.push(src.diag(
                    key.span(),
                    format!("`{kind}` must be an array of tables: write [[{kind}]]"),
                )),
            },
            "rule" => match value.get_ref() {
                DeValue::Array(tables) => {
                    for table in tables.iter() {
                        match parse_rule(src, table) {
                            Ok(rule) => rules.push(rule),
                            Err(errors) => {
                                diags.extend(errors);
                                refused_refs.extend(references(src, table));
                                // A name that is wrong in itself was reported as such.
                                if let Some(name) = table_name(table)
                                    .filter(|n| !n.is_empty() && bad_name_char(n).is_none())
                                {
                                    let pos = rule_name_pos(src, table);
                                    refused_rules.push(At::new(name, pos));
                                }
                            }
                        }
                    }
                }
                _ => diags.push(src.diag(
                    key.span(),
                    "`rule` must be an array of tables: write [[rule]]",
                )),
            },
            "probe" => match value.get_ref() {
                DeValue::Array(tables) => {
                    for table in tables.iter() {
                        match probe::parse_probe(src, table) {
                            Ok(probe) => probes.push(probe),
                            Err(errors) => {
                                diags.extend(errors);
                                broken.extend(table_name(table).map(|n| ("probe", n)));
                            }
                        }
                    }
                }
                _ => diags.push(src.diag(
                    key.span(),
                    "`probe` must be an array of tables: write [[probe]]",
                )),
            },
            other => {
                let meant = crate::rules::diag::closest(
                    other,
                    &["rule", "probe", "recorder", "state", "enrich"],
                )
                .map(|m| {
                    let table = if m == "enrich" { "[enrich]" } else { "[[..]]" };
                    format!(" (did you mean {}?)", table.replace("..", m))
                })
                .unwrap_or_default();
                diags.push(src.diag(
                    key.span(),
                    format!(
                        "unknown key `{other}`{meant}: a rule file holds [[rule]], [[probe]], \
                         [[recorder]] and [[state]] tables, and an [enrich] table"
                    ),
                ))
            }
        }
    }
    diags.sort_by_key(Diagnostic::pos);
    ParsedFile {
        enrich,
        rules,
        probes,
        recorders,
        states,
        broken,
        refused_refs,
        refused_rules,
        diags,
    }
}

/// Where a table's `name` value is (the table's start when it has none).
fn rule_name_pos(src: &SourceText, table: &Spanned<DeValue>) -> crate::rules::diag::Pos {
    let name = table.get_ref().as_table().and_then(|t| t.get("name"));
    src.pos(name.map_or(table.span().start, |n| n.span().start))
}

/// The recorders and states a rule table names (`recorder`, `flush`, `set_state`, and
/// `state` in `[rule.match]`, without its `!`), read from the table as written: for a rule that
/// was refused, so that a name missing from the set is reported in the same run.
fn references(src: &SourceText, table: &Spanned<DeValue>) -> Vec<(&'static str, At<String>)> {
    let mut out = Vec::new();
    let Some(t) = table.get_ref().as_table() else {
        return out;
    };
    // `off`: a match condition's `"!NAME"` (the state NAME off).
    let mut add = |kind: &'static str, v: &Spanned<DeValue>, off: bool| {
        if let Some(text) = v.get_ref().as_str() {
            let name = if off {
                text.strip_prefix('!').unwrap_or(text)
            } else {
                text
            };
            // A name that is wrong in itself was reported as such, and a repeat once.
            let repeat = out.iter().any(|(k, n)| *k == kind && n.value == name);
            let wrong = name.is_empty() || off && name.starts_with('!');
            if !wrong && !repeat {
                out.push((kind, At::new(name.to_string(), src.pos(v.span().start))));
            }
        }
    };
    // Only the keys of the rule's action: one given with another action is reported as such.
    let action = t.get("action").and_then(|a| a.get_ref().as_str());
    if action == Some("trigger") {
        for (key, kind) in [("flush", "recorder"), ("set_state", "state")] {
            if let Some(DeValue::Array(list)) = t.get(key).map(Spanned::get_ref) {
                list.iter().for_each(|v| add(kind, v, false));
            }
        }
    }
    if let Some(v) = t
        .get("recorder")
        .filter(|_| matches!(action, Some("drop" | "sample" | "rate_limit")))
    {
        add("recorder", v, false);
    }
    if let Some(v) = t
        .get("match")
        .and_then(|m| m.get_ref().as_table())
        .and_then(|m| m.get("state"))
    {
        add("state", v, true);
    }
    out
}

/// The `name` a table gives itself, if it is a string.
fn table_name(table: &Spanned<DeValue>) -> Option<String> {
    let name = table.get_ref().as_table()?.get("name")?;
    name.get_ref().as_str().map(str::to_string)
}

/// Reads `table` as a `T`, reporting every problem serde finds, not only the first: serde stops
/// at the first one, so each is reported, the key it is about set aside, and the table read
/// again (at most [`MAX_FOUND_PROBLEMS`] times; of a table with more than [`MAX_READ_PROBLEMS`],
/// the first by position are listed, and one more diagnostic says how many are not).
/// - An unknown key within two edits of a key the table lacks (`acton` for `action`) is read as
///   that key; any other unknown key is left out. The table's own checks still run, so a typo
///   and a bad value in one table are both reported in one `check`, and a misspelt key is not
///   also reported missing.
/// - A value of the wrong type is left out and the rest of the table still read, but `None`
///   comes back: the table's checks would see it without that key.
/// - A key missing altogether is reported unless it was left out for its type (then a stand-in
///   of a type it takes lets the reading go on). Missing from a table within this one, that
///   table is left out as a wrong-typed value is; missing from this one, it ends the reading
///   (`None`).
pub(super) fn read_table<T: for<'de> Deserialize<'de>>(
    src: &SourceText,
    table: &Spanned<DeValue>,
) -> (Option<T>, Vec<Diagnostic>) {
    read_table_naming::<T>(src, table, false)
}

/// [`read_table`]; with `config`, as the config file reads: a value of the wrong type is
/// reported with its key's name (`` `ceiling.cpu`: expected ... ``), and the table still comes
/// back without it (no key of the config file needs another, so its checks can run).
pub(crate) fn read_table_naming<T: for<'de> Deserialize<'de>>(
    src: &SourceText,
    table: &Spanned<DeValue>,
    config: bool,
) -> (Option<T>, Vec<Diagnostic>) {
    let mut table = table.clone();
    let mut diags = Vec::new();
    // Keys left out because their values were of the wrong type.
    let mut wrong_typed: Vec<String> = Vec::new();
    loop {
        let error = match T::deserialize(ValueDeserializer::from(table.clone())) {
            Ok(_) if diags.len() > MAX_READ_PROBLEMS => {
                return (None, at_most_listed(src, &table, diags, false));
            }
            Ok(t) if wrong_typed.is_empty() || config => return (Some(t), diags),
            Ok(_) => return (None, diags),
            Err(e) => e,
        };
        let message = error.message();
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|r| r.trim_end().strip_suffix('`'));
        let said = missing.is_some_and(|key| {
            wrong_typed
                .iter()
                .any(|k| k.rsplit('.').next() == Some(key))
        });
        if !said {
            diags.push(toml_error(src, &error, table.span()));
        }
        let set_aside = match error.span() {
            Some(span) if message.starts_with("unknown field `") => {
                let meant = crate::rules::diag::meant_key(message);
                fix_key_at(table.get_mut(), &span, meant.as_deref())
            }
            // A value of the wrong type; or a table in this one that lacks a key, left out
            // whole (this table's own lack ends the reading).
            Some(span) => match remove_value_at(table.get_mut(), &span) {
                Some(key) => {
                    if config
                        && missing.is_none()
                        && let Some(d) = diags.last_mut()
                    {
                        d.message = format!("`{key}`: {}", d.message);
                    }
                    wrong_typed.push(key);
                    true
                }
                // A required key of this table, left out for its type: a stand-in lets the
                // reading go on to the table's other problems (its checks do not run).
                None if said => stand_in::<T>(&mut table, missing.unwrap_or_default()),
                None => false,
            },
            None if said => stand_in::<T>(&mut table, missing.unwrap_or_default()),
            _ => false,
        };
        if !set_aside {
            return (None, at_most_listed(src, &table, diags, false));
        }
        if diags.len() >= MAX_FOUND_PROBLEMS {
            return (None, at_most_listed(src, &table, diags, true));
        }
    }
}

/// A table's problems as listed: by position, the first [`MAX_READ_PROBLEMS`], then a line
/// saying how many more there are (`more`: at least that many; the search stopped there).
fn at_most_listed(
    src: &SourceText,
    table: &Spanned<DeValue>,
    mut diags: Vec<Diagnostic>,
    more: bool,
) -> Vec<Diagnostic> {
    if diags.len() <= MAX_READ_PROBLEMS && !more {
        return diags;
    }
    diags.sort_by_key(|d| (d.line, d.column));
    let left = diags.len() - MAX_READ_PROBLEMS;
    diags.truncate(MAX_READ_PROBLEMS);
    // Past the search's end, the problems found first are not always the first by position
    // (the reader meets keys in its own order).
    let (left, listed) = if more {
        (
            format!("at least {left}"),
            format!("{MAX_READ_PROBLEMS} are"),
        )
    } else {
        (
            left.to_string(),
            format!("the first {MAX_READ_PROBLEMS} are"),
        )
    };
    // Said at the last problem listed, so that it follows them when sorted by position.
    let table_at = src.pos(table.span().start);
    let last = diags.last().map_or(table_at, Diagnostic::pos);
    diags.push(Diagnostic::new(
        src.path,
        last,
        format!(
            "the table at {}:{} has {left} more problems, not listed ({listed}), and its other \
             keys are not checked",
            table_at.line, table_at.column
        ),
    ));
    diags
}

/// Where a stand-in value is: no position in any file.
const STAND_IN: std::ops::Range<usize> = usize::MAX - 1..usize::MAX;

/// Puts a value of some type `T` takes for `key` into `table` (whose `key` was left out for its
/// type): `false` when no plain value (a string, a number, a boolean, an empty list or table)
/// reads as one.
fn stand_in<T: for<'de> Deserialize<'de>>(table: &mut Spanned<DeValue>, key: &str) -> bool {
    let Ok(values) = DeTable::parse("s = \"\"\ni = 1\nb = false\na = []\nt = {}\n") else {
        return false;
    };
    for (_, value) in values.get_ref().iter() {
        let mut with = table.clone();
        let DeValue::Table(t) = with.get_mut() else {
            return false;
        };
        t.insert(
            Spanned::new(STAND_IN, std::borrow::Cow::Owned(key.to_string())),
            Spanned::new(STAND_IN, value.get_ref().clone()),
        );
        let fits = match T::deserialize(ValueDeserializer::from(with.clone())) {
            Ok(_) => true,
            Err(e) => {
                e.span() != Some(STAND_IN)
                    && !e.message().starts_with(&format!("missing field `{key}`"))
            }
        };
        if fits {
            *table = with;
            return true;
        }
    }
    false
}

/// The problems [`read_table`] lists in one table, the first by position.
const MAX_READ_PROBLEMS: usize = 16;

/// The problems it looks for in one table: each costs a reading of the table, and a file (from
/// an OpAMP server, say) may hold any number.
const MAX_FOUND_PROBLEMS: usize = 256;

/// Removes the key whose value holds `span` (the innermost one, in `value` or a table in it),
/// and says which (dotted: `opamp.endpoint`); `None` when no value holds it.
fn remove_value_at(value: &mut DeValue, span: &std::ops::Range<usize>) -> Option<String> {
    let DeValue::Table(t) = value else {
        return None;
    };
    let mut hit = None;
    for (key, v) in t.iter_mut() {
        let vs = v.span();
        let holds = vs.start <= span.start && span.end <= vs.end && !vs.is_empty();
        // (A `[rule.match]` table's span is its header's, not its keys': looked in anyway.)
        if let Some(inner) = remove_value_at(v.get_mut(), span) {
            return Some(format!("{}.{inner}", key.get_ref()));
        }
        if holds {
            hit = Some(key.get_ref().to_string());
            break;
        }
    }
    let name = hit?;
    t.remove(name.as_str()).map(|_| name)
}

/// The unknown key whose name is at `span`, in `value` or a table in it: renamed `meant` when
/// its table has no key of that name, else removed. `false` when no key is there.
fn fix_key_at(value: &mut DeValue, span: &std::ops::Range<usize>, meant: Option<&str>) -> bool {
    let DeValue::Table(t) = value else {
        return false;
    };
    let mut hit = None;
    for (key, v) in t.iter_mut() {
        if key.span() == *span {
            hit = Some(key.get_ref().to_string());
            break;
        }
        // (A `[rule.match]` table's span is its header's, not its keys'.)
        if fix_key_at(v.get_mut(), span, meant) {
            return true;
        }
    }
    let Some(name) = hit else {
        return false;
    };
    let Some(v) = t.remove(name.as_str()) else {
        return false;
    };
    if let Some(meant) = meant
        && !t.contains_key(meant)
    {
        t.insert(
            Spanned::new(span.clone(), std::borrow::Cow::Owned(meant.to_string())),
            v,
        );
    }
    true
}

/// Why `name` (of a rule, probe, recorder or state) cannot be one: it holds a control
/// character (a line break, a tab), which would break `rules` and `stats` tables and metric
/// labels, or an invisible formatting character (a bidirectional override, a zero-width
/// space), which would make a name display as another, or differently from its bytes.
pub(super) fn bad_name_char(name: &str) -> Option<String> {
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        return Some(format!(
            "name {name:?} holds the control character {c:?}: a name is one line of printable \
             characters"
        ));
    }
    if !name.is_empty() && name.trim().is_empty() {
        return Some(format!("name {name:?} is only spaces"));
    }
    if name.trim() != name {
        return Some(format!(
            "name {name:?} starts or ends with a space: a name is compared as written, and a \
             table shows it as {:?}; write {:?}",
            name.trim(),
            name.trim()
        ));
    }
    let c = name.chars().find(|&c| invisible_format(c))?;
    // (`{:?}` writes them escaped, as `\u{202e}`.)
    Some(format!(
        "name {name:?} holds the invisible formatting character U+{:04X}: a name is one line \
         of printable characters, shown as it is written",
        c as u32
    ))
}

/// Unicode's invisible formatting characters that change how text around them displays or
/// that show nothing at all: bidirectional embeddings, overrides, isolates and marks,
/// zero-width spaces and joiners, the word joiner and invisible operators, the byte order mark.
fn invisible_format(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

/// The result of a table's own checks, after the problems found reading it ([`read_table`]).
pub(super) fn with_read_problems<T>(
    read: Vec<Diagnostic>,
    checked: Result<T, Vec<Diagnostic>>,
) -> Result<T, Vec<Diagnostic>> {
    match checked {
        Ok(t) if read.is_empty() => Ok(t),
        Ok(_) => Err(read),
        Err(more) => Err(read.into_iter().chain(more).collect()),
    }
}

/// A diagnostic for a TOML error, at its span or else at `fallback`.
pub(super) fn toml_error(
    src: &SourceText,
    error: &toml::de::Error,
    fallback: std::ops::Range<usize>,
) -> Diagnostic {
    let span = error.span().unwrap_or(fallback);
    let text = src.text.get(span.clone());
    src.diag(
        span,
        crate::rules::diag::plain_message(error.message(), text),
    )
}

pub(super) fn at<T>(src: &SourceText, spanned: Spanned<T>) -> At<T> {
    let pos = src.pos(spanned.span().start);
    At::new(spanned.into_inner(), pos)
}

fn parse_rule(src: &SourceText, table: &Spanned<DeValue>) -> Result<RuleDef, Vec<Diagnostic>> {
    if !table.get_ref().is_table() {
        return Err(vec![
            src.diag(table.span(), "a rule must be a table: write [[rule]]"),
        ]);
    }
    // `[[rule.match]]` (an array): said, and the rule's other keys still checked without it.
    let mut without_match = None;
    if let Some(m) = table.get_ref().as_table().and_then(|t| t.get("match"))
        && m.get_ref().is_array()
    {
        let d = src.diag(
            m.span(),
            "a rule has one `match` table: write [rule.match], not [[rule.match]]",
        );
        let mut t = table.clone();
        if let DeValue::Table(t) = t.get_mut() {
            t.remove("match");
        }
        without_match = Some((t, d));
    }
    let (table, match_problem) = match &without_match {
        Some((t, d)) => (t, Some(d.clone())),
        None => (table, None),
    };
    let (raw, mut read) = read_table::<RawRule>(src, table);
    let rule_keys = table.get_ref().as_table();
    let match_table = rule_keys
        .and_then(|t| t.get("match"))
        .and_then(|m| m.get_ref().as_table());
    // The rule's own keys written after `[rule.match]`, which TOML puts in the match table,
    // and where.
    let mut in_match: Vec<(String, Pos, bool)> = match_table
        .map(|m| {
            m.iter()
                .filter(|(k, _)| RULE_KEYS.contains(&k.get_ref().as_ref()))
                .map(|(k, _)| (k.get_ref().to_string(), src.pos(k.span().start), false))
                .collect()
        })
        .unwrap_or_default();
    let misplaced = keys_in_attributes(src, rule_keys, match_table);
    in_match.extend(
        misplaced
            .iter()
            .filter(|m| m.of_rule)
            .map(|m| (m.key.clone(), m.pos, true)),
    );
    for d in &mut read {
        match_key_hint(d, |k| rule_keys.is_some_and(|t| t.contains_key(k)));
        rule_key_in_match_hint(d, &in_match);
    }
    read.splice(0..0, match_problem);
    read.extend(misplaced.iter().map(|m| m.diagnostic(src)));
    let Some(raw) = raw else {
        return Err(read);
    };
    with_read_problems(read, RuleChecker::new(src).check(raw, table.span().start))
}

/// The keys of `[rule.match]`.
const MATCH_KEYS: [&str; 6] = [
    "severity",
    "service",
    "body_contains",
    "attributes",
    "event_name",
    "state",
];

/// The keys of a rule itself (those of [`RawRule`] but `match`).
const RULE_KEYS: [&str; 14] = [
    "name",
    "action",
    "hooks",
    "keep_one_in",
    "per_second",
    "remove_attributes",
    "mask_body",
    "recorder",
    "flush",
    "set_state",
    "cooldown",
    "threshold",
    "group_by",
    "max_groups",
];

/// A key of the rule or of `[rule.match]` written after a `[rule.match.attributes]` header,
/// which TOML reads as an attribute condition: an attribute named `recorder` or `severity`, the
/// rule quietly matching something else than meant.
struct InAttributes {
    key: String,
    pos: Pos,
    /// A key of the rule itself (else of `[rule.match]`).
    of_rule: bool,
}

impl InAttributes {
    fn diagnostic(&self, src: &SourceText) -> Diagnostic {
        let (whose, above) = if self.of_rule {
            ("the rule", "[rule.match]")
        } else {
            ("[rule.match]", "[rule.match.attributes]")
        };
        let k = &self.key;
        Diagnostic::new(
            src.path,
            self.pos,
            format!(
                "`{k}` is a key of {whose}, but it comes after [rule.match.attributes], so TOML \
                 reads it as an attribute condition: move it above {above} (for an attribute \
                 named {k}, quote it: \"{k}\" = ...)"
            ),
        )
    }
}

/// The bare keys of a `[rule.match.attributes]` table, each at the start of its line (not in
/// an inline table, not dotted as `attributes.key`), that are keys of the rule or of
/// `[rule.match]` the rule does not have where they belong. A quoted key is an attribute as
/// written.
fn keys_in_attributes(
    src: &SourceText,
    rule: Option<&DeTable>,
    match_table: Option<&DeTable>,
) -> Vec<InAttributes> {
    let Some(attrs) = match_table.and_then(|m| m.get("attributes")) else {
        return Vec::new();
    };
    let Some(t) = attrs.get_ref().as_table() else {
        return Vec::new();
    };
    if src.text[attrs.span()].starts_with('{') {
        return Vec::new();
    }
    let has = |t: Option<&DeTable>, k: &str| t.is_some_and(|t| t.contains_key(k));
    let starts_its_line = |at: usize| {
        let line = src.text[..at].rfind('\n').map_or(0, |i| i + 1);
        src.text[line..at].trim().is_empty()
    };
    t.iter()
        .filter(|(k, _)| {
            !src.text[k.span()].starts_with(['"', '\'']) && starts_its_line(k.span().start)
        })
        .filter_map(|(k, _)| {
            let key = k.get_ref().as_ref();
            let of_rule = if RULE_KEYS.contains(&key) && !has(rule, key) {
                true
            } else if MATCH_KEYS.contains(&key) && key != "attributes" && !has(match_table, key) {
                false
            } else {
                return None;
            };
            Some(InAttributes {
                key: key.to_string(),
                pos: src.pos(k.span().start),
                of_rule,
            })
        })
        .collect()
}

/// A rule's own key written after its `[rule.match]` header (`in_match`: which, where, and
/// whether after `[rule.match.attributes]`), which TOML reads as a key of the match table: the
/// common mistake of appending a key to a rule. Its "unknown key" in the match table and the
/// rule's "missing key" say so.
fn rule_key_in_match_hint(d: &mut Diagnostic, in_match: &[(String, Pos, bool)]) {
    let key = |prefix: &str| {
        d.message
            .strip_prefix(prefix)
            .and_then(|r| r.split_once('`'))
            .map(|(k, _)| k.to_string())
    };
    if let Some(k) = key("unknown key `")
        && in_match
            .iter()
            .any(|(m, pos, _)| *m == k && *pos == d.pos())
    {
        d.message = format!(
            "`{k}` is a key of the rule, but it comes after [rule.match], so TOML reads it as a \
             key of the match table: move it above [rule.match]"
        );
    } else if let Some(k) = key("missing key `")
        && let Some((_, pos, in_attributes)) = in_match.iter().find(|(m, _, _)| *m == k)
    {
        let (header, read_as) = if *in_attributes {
            ("[rule.match.attributes]", "an attribute condition")
        } else {
            ("[rule.match]", "a key of the match table")
        };
        d.message = format!(
            "missing key `{k}` (the `{k}` at {}:{} comes after {header}, so TOML reads it as \
             {read_as}: move it above [rule.match])",
            pos.line, pos.column
        );
    }
}

/// An unknown key of a rule (`in_rule`: one of the rule table's own, not of a table in it)
/// that is (or is a typo of) a key of `[rule.match]`: says where it goes, in place of the rule's
/// own keys.
fn match_key_hint(d: &mut Diagnostic, in_rule: impl Fn(&str) -> bool) {
    let Some(key) = d
        .message
        .strip_prefix("unknown key `")
        .and_then(|r| r.split_once('`'))
        .map(|(k, _)| k.to_string())
    else {
        return;
    };
    if d.message.contains("(did you mean") || !in_rule(&key) {
        return;
    }
    let Some(m) = crate::rules::diag::closest(&key, &MATCH_KEYS) else {
        return;
    };
    let what = if m == key {
        format!("`{key}`")
    } else {
        format!("`{key}` (`{m}`?)")
    };
    d.message = format!(
        "unknown key {what} in a rule: conditions go in its [rule.match] table, after the \
         rule's other keys"
    );
}

/// Validates one [`RawRule`], collecting every problem.
struct RuleChecker<'s, 'a> {
    src: &'s SourceText<'a>,
    diags: Vec<Diagnostic>,
}

impl<'s, 'a> RuleChecker<'s, 'a> {
    fn new(src: &'s SourceText<'a>) -> Self {
        RuleChecker {
            src,
            diags: Vec::new(),
        }
    }

    fn error<T>(&mut self, spanned: &Spanned<T>, message: impl Into<String>) {
        self.diags.push(self.src.diag(spanned.span(), message));
    }

    fn check(mut self, raw: RawRule, start: usize) -> Result<RuleDef, Vec<Diagnostic>> {
        self.name(&raw.name);
        let action_span = raw.action.span();
        let action = self.action(&raw);
        let (hooks, hook_pos) = self.hooks(raw.hooks, start);
        if let Some(action) = &action {
            for hook in &hooks {
                if let Err(message) = hook.check_action(action) {
                    self.diags.push(self.src.diag(action_span.clone(), message));
                }
            }
        }
        let conditions = self.conditions(raw.conditions);
        let recorder = raw.recorder.map(|r| at(self.src, r));
        if let (Some(r), Some(action)) = (&recorder, &action)
            && !action.stops_evaluation()
        {
            self.diags.push(Diagnostic::new(
                self.src.path,
                r.pos,
                "recorder is only for drop, sample and rate_limit rules (the records they \
                 remove are recorded)",
            ));
        }
        if let Some(r) = &recorder
            && hooks.iter().any(|h| matches!(h, Hook::Uprobe(_)))
        {
            self.diags.push(Diagnostic::new(
                self.src.path,
                r.pos,
                "recorder applies to the otlp hook only: a probed call has no log record to keep",
            ));
        }
        let uprobe = hooks.iter().any(|h| matches!(h, Hook::Uprobe(_)));
        if uprobe && let Some((key, _)) = conditions.attributes.first() {
            self.diags.push(Diagnostic::new(
                self.src.path,
                key.pos,
                "attributes conditions do not apply to uprobe hooks: a probed call has a \
                 severity, a message (body_contains) and a service only",
            ));
        }
        if uprobe && let Some(e) = &conditions.event_name {
            self.diags.push(Diagnostic::new(
                self.src.path,
                e.pos,
                "event_name does not apply to uprobe hooks: a probed call has a severity, a \
                 message (body_contains) and a service only",
            ));
        }
        let (group_by, max_groups) = self.group_by(
            raw.group_by.as_ref(),
            raw.max_groups.as_ref(),
            action.as_ref(),
            uprobe,
        );
        match action {
            Some(action) if self.diags.is_empty() => Ok(RuleDef {
                file: self.src.path.to_path_buf(),
                pos: self.src.pos(start),
                name: at(self.src, raw.name),
                action: At::new(action, self.src.pos(action_span.start)),
                hooks,
                hook_pos,
                probes: Vec::new(),
                conditions,
                recorder,
                group_by,
                max_groups,
            }),
            _ => Err(self.diags),
        }
    }

    /// `group_by` and `max_groups`, on count rules of the otlp hook only.
    fn group_by(
        &mut self,
        group_by: Option<&Spanned<String>>,
        max_groups: Option<&Spanned<i64>>,
        action: Option<&Action>,
        uprobe: bool,
    ) -> (Option<At<GroupBy>>, u32) {
        let max_groups = match max_groups {
            None => DEFAULT_MAX_GROUPS,
            Some(m) if group_by.is_none() => {
                self.error(m, "max_groups is only for rules with group_by");
                DEFAULT_MAX_GROUPS
            }
            Some(m) => match u32::try_from(*m.get_ref()) {
                Ok(n) if (1..=MAX_MAX_GROUPS).contains(&n) => n,
                _ => {
                    self.error(m, format!("max_groups must be 1 to {MAX_MAX_GROUPS}"));
                    DEFAULT_MAX_GROUPS
                }
            },
        };
        let Some(g) = group_by else {
            return (None, max_groups);
        };
        if action.is_some_and(|a| !matches!(a, Action::Count)) {
            self.error(g, "group_by is only for action \"count\"");
        }
        if uprobe {
            self.error(g, "group_by applies to the otlp hook only");
        }
        let text = g.get_ref().as_str();
        let parsed = match text {
            "service" => Some(GroupBy::Service),
            "severity" => Some(GroupBy::Severity),
            "event_name" => Some(GroupBy::EventName),
            _ => match text.strip_prefix("attributes.") {
                Some("") => {
                    self.error(g, "group_by \"attributes.KEY\" needs a KEY");
                    None
                }
                Some(key) if key.len() > MAX_ATTR_KEY_LEN => {
                    let message = format!(
                        "the group_by attribute key is {} bytes; the limit is {MAX_ATTR_KEY_LEN}",
                        key.len()
                    );
                    self.error(g, message);
                    None
                }
                Some(key) => Some(GroupBy::Attribute(key.to_string())),
                None => {
                    let meant = match text.split_once('.') {
                        // The resource's `service.name` (also spelt with a `resource.`
                        // prefix) is what `service` groups by.
                        _ if text == "service.name" || text.ends_with(".service.name") => {
                            " (did you mean \"service\"? It is the resource's service.name; \
                             \"attributes.KEY\" are the record's own attributes)"
                                .to_string()
                        }
                        // Another resource attribute: not something a group can be.
                        Some(("resource", _)) => " (a group is the resource's service.name, \
                                                  \"service\", or one of the record's own \
                                                  attributes, \"attributes.KEY\", not another \
                                                  resource attribute)"
                            .to_string(),
                        // `attribute.KEY`, `attrs.KEY`: the prefix mistyped.
                        Some((_, key)) => format!(" (did you mean \"attributes.{key}\"?)"),
                        None => crate::rules::diag::closest(
                            text,
                            &["service", "severity", "event_name"],
                        )
                        .map(|m| format!(" (did you mean \"{m}\"?)"))
                        .unwrap_or_default(),
                    };
                    self.error(
                        g,
                        format!(
                            "unknown group_by \"{text}\"{meant}: expected \"service\", \
                             \"severity\", \"event_name\" or \"attributes.KEY\""
                        ),
                    );
                    None
                }
            },
        };
        let pos = self.src.pos(g.span().start);
        (parsed.map(|p| At::new(p, pos)), max_groups)
    }

    fn attr_value(&mut self, value: Spanned<toml::Value>) -> At<AttrValue> {
        let pos = self.src.pos(value.span().start);
        let v = match value.get_ref() {
            toml::Value::String(s) => AttrValue::Str(s.clone()),
            toml::Value::Integer(i) => AttrValue::Int(*i),
            toml::Value::Boolean(b) => AttrValue::Bool(*b),
            other => {
                // `{ http.route = "/x" }` is the table http = { route = "/x" } in TOML.
                let hint = if other.is_table() {
                    "; a key with dots needs quotes: { \"http.route\" = \"/healthz\" }"
                } else {
                    ""
                };
                self.error(
                    &value,
                    format!(
                        "an attribute value is a string, an integer or a boolean, not {}{hint}",
                        other.type_str()
                    ),
                );
                AttrValue::Str(String::new())
            }
        };
        At::new(v, pos)
    }

    fn name(&mut self, name: &Spanned<String>) {
        let len = name.get_ref().len();
        if len == 0 {
            self.error(name, "name must not be empty");
        } else if len > MAX_NAME_LEN {
            self.error(
                name,
                format!("name is {len} bytes; the limit is {MAX_NAME_LEN}"),
            );
        } else if let Some(why) = bad_name_char(name.get_ref()) {
            self.error(name, why);
        }
    }

    /// The action with its parameters; each parameter is only allowed with its action.
    fn action(&mut self, raw: &RawRule) -> Option<Action> {
        let Some(name) = ActionKind::from_name(raw.action.get_ref()) else {
            let expected: Vec<_> = ActionKind::ALL.iter().map(|a| a.name()).collect();
            let meant = crate::rules::diag::closest(raw.action.get_ref(), &expected)
                .map(|m| format!(" (did you mean \"{m}\"?)"))
                .unwrap_or_default();
            let message = format!(
                "unknown action \"{}\"{meant}: expected one of {}",
                raw.action.get_ref(),
                expected.join(", ")
            );
            self.error(&raw.action, message);
            return None;
        };
        self.parameters_belong_to(name, raw);
        match name {
            ActionKind::Count => Some(Action::Count),
            ActionKind::Drop => Some(Action::Drop),
            ActionKind::Capture => Some(Action::Capture),
            ActionKind::Sample => {
                let keep_one_in =
                    self.required_count(&raw.action, "keep_one_in", raw.keep_one_in.as_ref())?;
                Some(Action::Sample { keep_one_in })
            }
            ActionKind::RateLimit => {
                let per_second =
                    self.required_count(&raw.action, "per_second", raw.per_second.as_ref())?;
                if per_second > dt_ebpf_common::MAX_RATE
                    && let Some(at) = raw.per_second.as_ref()
                {
                    // The kernel's limit (compile checks it too): said here, at the value.
                    self.error(
                        at,
                        format!(
                            "per_second is {per_second}; the limit is {} (one a nanosecond)",
                            dt_ebpf_common::MAX_RATE
                        ),
                    );
                    return None;
                }
                Some(Action::RateLimit { per_second })
            }
            ActionKind::Redact => self.redact(raw),
            ActionKind::Trigger => self.trigger(raw),
        }
    }

    fn duration(&mut self, text: &Spanned<String>) -> Option<std::time::Duration> {
        match objects::parse_duration(text.get_ref()) {
            Ok(d) => Some(d),
            Err(e) => {
                self.error(text, e);
                None
            }
        }
    }

    fn names(&mut self, list: &Option<Spanned<Vec<Spanned<String>>>>) -> Vec<At<String>> {
        let Some(list) = list else {
            return Vec::new();
        };
        let mut out: Vec<At<String>> = Vec::new();
        for name in list.get_ref() {
            if name.get_ref().is_empty() {
                self.error(name, "a name must not be empty");
            } else if out.iter().any(|n| &n.value == name.get_ref()) {
                self.error(name, format!("\"{}\" is listed twice", name.get_ref()));
            } else {
                out.push(at(self.src, name.clone()));
            }
        }
        out
    }

    /// A trigger's parameters, each checked (every problem reported, not only the first).
    fn trigger(&mut self, raw: &RawRule) -> Option<Action> {
        let flush = self.names(&raw.flush);
        let set_state = self.names(&raw.set_state);
        let cooldown = match &raw.cooldown {
            Some(c) => self.duration(c),
            None => Some(DEFAULT_COOLDOWN),
        };
        let threshold = match &raw.threshold {
            None => Some(None),
            Some(t) => {
                let t = t.get_ref();
                let count = *t.count.get_ref();
                let count = if (1..=MAX_THRESHOLD).contains(&count) {
                    Some(count as u32)
                } else {
                    self.error(
                        &t.count,
                        format!("threshold count must be between 1 and {MAX_THRESHOLD}"),
                    );
                    None
                };
                let within = match self.duration(&t.within) {
                    Some(w) if w.is_zero() || w > MAX_WITHIN => {
                        self.error(&t.within, "within must be between \"1ms\" and \"24h\"");
                        None
                    }
                    w => w,
                };
                count.zip(within).map(Some)
            }
        };
        let does_something = !(flush.is_empty() && set_state.is_empty());
        // Names that were all refused were reported as such; none at all is this error.
        let listed =
            |l: &Option<Spanned<Vec<Spanned<String>>>>| l.as_ref().map_or(0, |l| l.get_ref().len());
        if !does_something && listed(&raw.flush) + listed(&raw.set_state) == 0 {
            self.error(
                &raw.action,
                "action \"trigger\" needs flush or set_state (what it does when it fires)",
            );
        }
        Some(Action::Trigger(TriggerDef {
            flush,
            set_state,
            cooldown: cooldown?,
            threshold: threshold?,
        }))
        .filter(|_| does_something)
    }

    /// Reports each parameter given with an action other than its own.
    fn parameters_belong_to(&mut self, action: ActionKind, raw: &RawRule) {
        let params = [
            (
                ActionKind::Sample,
                "keep_one_in",
                raw.keep_one_in.as_ref().map(Spanned::span),
            ),
            (
                ActionKind::RateLimit,
                "per_second",
                raw.per_second.as_ref().map(Spanned::span),
            ),
            (
                ActionKind::Redact,
                "remove_attributes",
                raw.remove_attributes.as_ref().map(Spanned::span),
            ),
            (
                ActionKind::Redact,
                "mask_body",
                raw.mask_body.as_ref().map(Spanned::span),
            ),
            (
                ActionKind::Trigger,
                "flush",
                raw.flush.as_ref().map(Spanned::span),
            ),
            (
                ActionKind::Trigger,
                "set_state",
                raw.set_state.as_ref().map(Spanned::span),
            ),
            (
                ActionKind::Trigger,
                "cooldown",
                raw.cooldown.as_ref().map(Spanned::span),
            ),
            (
                ActionKind::Trigger,
                "threshold",
                raw.threshold.as_ref().map(Spanned::span),
            ),
        ];
        for (owner, key, span) in params {
            if let Some(span) = span
                && owner != action
            {
                let message = format!("{key} is only for action \"{}\"", owner.name());
                self.diags.push(self.src.diag(span, message));
            }
        }
    }

    /// A parameter that the action requires and that must be at least 1.
    fn required_count(
        &mut self,
        action: &Spanned<String>,
        key: &str,
        value: Option<&Spanned<i64>>,
    ) -> Option<u64> {
        let Some(value) = value else {
            let message = format!("action \"{}\" needs {key}", action.get_ref());
            self.error(action, message);
            return None;
        };
        match u64::try_from(*value.get_ref()) {
            Ok(n) if n >= 1 => Some(n),
            _ => {
                self.error(value, format!("{key} must be at least 1"));
                None
            }
        }
    }

    fn redact(&mut self, raw: &RawRule) -> Option<Action> {
        let mask_body = raw.mask_body.as_ref().is_some_and(|m| *m.get_ref());
        let remove = raw
            .remove_attributes
            .as_ref()
            .map_or(&[][..], |r| r.get_ref());
        for (i, key) in remove.iter().enumerate() {
            if key.get_ref().is_empty() {
                self.error(key, "an attribute name must not be empty");
            } else if remove[..i].iter().any(|k| k.get_ref() == key.get_ref()) {
                self.error(key, format!("\"{}\" is listed twice", key.get_ref()));
            }
        }
        if remove.is_empty() && !mask_body {
            self.error(
                &raw.action,
                "action \"redact\" needs remove_attributes or mask_body = true",
            );
            return None;
        }
        Some(Action::Redact {
            remove_attributes: remove.iter().map(|k| at(self.src, k.clone())).collect(),
            mask_body,
        })
    }

    fn hooks(
        &mut self,
        hooks: Option<Spanned<Vec<Spanned<String>>>>,
        start: usize,
    ) -> (Vec<Hook>, Vec<super::diag::Pos>) {
        let Some(hooks) = hooks else {
            return (vec![Hook::Otlp], vec![self.src.pos(start)]);
        };
        if hooks.get_ref().is_empty() {
            self.error(
                &hooks,
                "hooks must not be empty (leave it out for [\"otlp\"])",
            );
        }
        let mut parsed = Vec::new();
        let mut positions = Vec::new();
        for text in hooks.get_ref() {
            let Some(hook) = self.hook(text) else {
                continue;
            };
            if parsed.contains(&hook) {
                self.error(text, format!("hook \"{}\" is listed twice", hook.name()));
            } else {
                parsed.push(hook);
                positions.push(self.src.pos(text.span().start));
            }
        }
        (parsed, positions)
    }

    fn hook(&mut self, text: &Spanned<String>) -> Option<Hook> {
        let name = text.get_ref().as_str();
        if name == "otlp" {
            return Some(Hook::Otlp);
        }
        if let Some(probe) = name.strip_prefix("uprobe:") {
            if probe.is_empty() {
                self.error(
                    text,
                    "a uprobe hook names its [[probe]]: write \"uprobe:NAME\"",
                );
                return None;
            }
            return Some(Hook::Uprobe(probe.to_string()));
        }
        let meant = if let Some(probe) = name.strip_prefix("uprobe") {
            Some(format!(
                "uprobe:{}",
                probe.trim_start_matches([':', '.', '/', '_', '-'])
            ))
        } else {
            crate::rules::diag::closest(name, &["otlp"]).map(str::to_string)
        }
        .map(|m| format!(" (did you mean \"{m}\"?)"))
        .unwrap_or_default();
        self.error(
            text,
            format!("unknown hook \"{name}\"{meant}: expected \"otlp\" or \"uprobe:NAME\""),
        );
        None
    }

    fn conditions(&mut self, raw: Option<RawMatch>) -> Match {
        let Some(raw) = raw else {
            return Match::default();
        };
        let severity = raw.severity.and_then(|s| self.severity(&s));
        let service = raw.service.map(|s| self.non_empty(s, "service"));
        let body_contains = raw
            .body_contains
            .map(|b| self.non_empty(b, "body_contains"));
        let mut attributes: Vec<_> = raw.attributes.unwrap_or_default().into_iter().collect();
        attributes.sort_by_key(|(key, _)| key.span().start);
        let attributes = attributes
            .into_iter()
            .map(|(key, value)| {
                (
                    self.non_empty(key, "an attribute key"),
                    self.attr_value(value),
                )
            })
            .collect();
        let event_name = raw.event_name.map(|e| self.non_empty(e, "event_name"));
        let state = raw.state.map(|s| {
            let text = s.get_ref();
            let off = text.starts_with('!');
            let name = text.strip_prefix('!').unwrap_or(text).to_string();
            if name.is_empty() {
                self.error(
                    &s,
                    format!(
                        "state {text:?} names no state: write \"NAME\" (the state is on) or \
                         \"!NAME\" (it is off)"
                    ),
                );
            } else if name.starts_with('!') {
                self.error(
                    &s,
                    format!(
                        "state {text:?}: write \"NAME\" (the state is on) or \"!NAME\" (it is \
                         off), with one \"!\""
                    ),
                );
            }
            let pos = self.src.pos(s.span().start);
            (At::new(name, pos), off)
        });
        Match {
            severity,
            service,
            body_contains,
            attributes,
            event_name,
            state,
        }
    }

    fn severity(&mut self, raw: &Spanned<RawSeverity>) -> Option<At<SeverityRange>> {
        let parsed = match raw.get_ref() {
            RawSeverity::Text(text) => SeverityRange::parse(text),
            RawSeverity::Number(n) => SeverityRange::from_number(*n),
        };
        match parsed {
            Ok(range) => Some(At::new(range, self.src.pos(raw.span().start))),
            Err(message) => {
                self.error(raw, message);
                None
            }
        }
    }

    fn non_empty(&mut self, value: Spanned<String>, what: &str) -> At<String> {
        if value.get_ref().is_empty() {
            self.error(&value, format!("{what} must not be empty"));
        }
        at(self.src, value)
    }
}
