//! `[[recorder]]` and `[[state]]` tables, and the duration and size values rule files write
//! (`"5m"`, `"4MiB"`).

use std::time::Duration;

use dt_ebpf_common::{ENRICH_KEYS, MAX_NAME_LEN, MAX_RECORD_CEILING, RING_BLOCK};
use serde::Deserialize;
use toml::Spanned;
use toml::de::DeValue;

use super::{at, read_table};
use crate::rules::diag::{Diagnostic, SourceText};
use crate::rules::model::{EnrichDef, RecorderDef, StateDef};

/// Default and largest ring of a recorder, and the smallest.
pub const DEFAULT_RECORDER_SIZE: u64 = 4 << 20;
pub const MAX_RECORDER_SIZE: u64 = 64 << 20;
pub const MIN_RECORDER_SIZE: u64 = 64 << 10;
/// Default `max_record`, and the smallest allowed.
pub const DEFAULT_MAX_RECORD: u32 = 2048;
pub const MIN_MAX_RECORD: u32 = 64;
/// Bounds of a state's `duration`.
pub const MIN_STATE_DURATION: Duration = Duration::from_secs(1);
pub const MAX_STATE_DURATION: Duration = Duration::from_secs(24 * 3600);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecorder {
    name: Spanned<String>,
    size: Option<Spanned<String>>,
    max_record: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnrich {
    resource_attributes: Spanned<Vec<Spanned<String>>>,
}

/// The `[enrich]` table.
pub(super) fn parse_enrich(
    src: &SourceText,
    t: &Spanned<DeValue>,
) -> Result<EnrichDef, Vec<Diagnostic>> {
    if !t.get_ref().is_table() {
        return Err(vec![
            src.diag(t.span(), "enrich must be a table: write [enrich]"),
        ]);
    }
    let (raw, mut diags) = read_table::<RawEnrich>(src, t);
    let Some(raw) = raw else {
        return Err(diags);
    };
    let mut attrs = 0;
    for name in raw.resource_attributes.get_ref() {
        match ENRICH_KEYS
            .iter()
            .position(|k| *k == name.get_ref().as_bytes())
        {
            Some(i) if attrs & 1 << i != 0 => {
                diags.push(src.diag(
                    name.span(),
                    format!("\"{}\" is listed twice", name.get_ref()),
                ));
            }
            Some(i) => attrs |= 1 << i,
            None => {
                let known = ["process.pid", "host.name", "container.id", "k8s.pod.uid"];
                let given = name.get_ref();
                // A typo, or the key without its namespace (`hostname`, `pid`).
                let meant = crate::rules::diag::closest(given, &known)
                    .or_else(|| {
                        let bare = given.replace(['_', '.', '-'], "").to_ascii_lowercase();
                        known.iter().copied().find(|k| {
                            let k = k.replace(['_', '.', '-'], "");
                            k.ends_with(&bare) && bare.len() >= 3
                        })
                    })
                    .map(|m| format!(" (did you mean \"{m}\"?)"))
                    .unwrap_or_default();
                diags.push(src.diag(
                    name.span(),
                    format!(
                        "unknown resource attribute \"{given}\"{meant}: dt adds \"process.pid\", \
                         \"host.name\", \"container.id\" and \"k8s.pod.uid\""
                    ),
                ))
            }
        }
    }
    if raw.resource_attributes.get_ref().is_empty() {
        diags.push(src.diag(
            raw.resource_attributes.span(),
            "resource_attributes must not be empty",
        ));
    }
    if !diags.is_empty() {
        return Err(diags);
    }
    Ok(EnrichDef {
        file: src.path.to_path_buf(),
        pos: src.pos(t.span().start),
        attrs,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawState {
    name: Spanned<String>,
    duration: Spanned<String>,
}

/// `table` read as a `T` ([`read_table`]): the value, and the problems found reading it; `Err`
/// when it cannot be read.
fn table<T: for<'de> Deserialize<'de>>(
    src: &SourceText,
    table: &Spanned<DeValue>,
    what: &str,
) -> Result<(T, Vec<Diagnostic>), Vec<Diagnostic>> {
    if !table.get_ref().is_table() {
        return Err(vec![src.diag(
            table.span(),
            format!("a {what} must be a table: write [[{what}]]"),
        )]);
    }
    match read_table(src, table) {
        (Some(t), read) => Ok((t, read)),
        (None, read) => Err(read),
    }
}

/// A name of a recorder or state: 1 to `MAX_NAME_LEN - 1` bytes (the pinned name table keeps
/// a kind byte before it).
pub(super) fn object_name(src: &SourceText, name: &Spanned<String>, diags: &mut Vec<Diagnostic>) {
    let len = name.get_ref().len();
    if len == 0 {
        diags.push(src.diag(name.span(), "name must not be empty"));
    } else if len > MAX_NAME_LEN - 1 {
        diags.push(src.diag(
            name.span(),
            format!("name is {len} bytes; the limit is {}", MAX_NAME_LEN - 1),
        ));
    } else if let Some(why) = super::bad_name_char(name.get_ref()) {
        diags.push(src.diag(name.span(), why));
    }
}

pub(super) fn parse_recorder(
    src: &SourceText,
    t: &Spanned<DeValue>,
) -> Result<RecorderDef, Vec<Diagnostic>> {
    let (raw, mut diags): (RawRecorder, _) = table(src, t, "recorder")?;
    object_name(src, &raw.name, &mut diags);
    let mut size = DEFAULT_RECORDER_SIZE;
    if let Some(s) = &raw.size {
        match recorder_size(s.get_ref()) {
            Ok(n) => size = n,
            Err(e) => diags.push(src.diag(s.span(), e)),
        }
    }
    // Whole ring blocks.
    size = size.div_ceil(RING_BLOCK as u64) * RING_BLOCK as u64;
    let mut max_record = DEFAULT_MAX_RECORD;
    if let Some(m) = &raw.max_record {
        let limit = (MAX_RECORD_CEILING as u64).min(size / 4);
        match u64::try_from(*m.get_ref()) {
            Ok(n) if n >= MIN_MAX_RECORD as u64 && n <= limit => max_record = n as u32,
            _ => diags.push(src.diag(
                m.span(),
                format!(
                    "max_record must be between {MIN_MAX_RECORD} and {limit} bytes (at most \
                     {MAX_RECORD_CEILING}, and a quarter of the recorder's size)"
                ),
            )),
        }
    }
    if !diags.is_empty() {
        return Err(diags);
    }
    Ok(RecorderDef {
        file: src.path.to_path_buf(),
        pos: src.pos(t.span().start),
        name: at(src, raw.name),
        size,
        max_record,
    })
}

pub(super) fn parse_state(
    src: &SourceText,
    t: &Spanned<DeValue>,
) -> Result<StateDef, Vec<Diagnostic>> {
    let (raw, mut diags): (RawState, _) = table(src, t, "state")?;
    object_name(src, &raw.name, &mut diags);
    if raw.name.get_ref().starts_with('!') {
        diags.push(src.diag(
            raw.name.span(),
            "a state's name must not start with \"!\": a rule's `state = \"!NAME\"` means \
             the state NAME is off",
        ));
    }
    let duration = match parse_duration(raw.duration.get_ref()) {
        Ok(d) if (MIN_STATE_DURATION..=MAX_STATE_DURATION).contains(&d) => Some(d),
        Ok(_) => {
            diags.push(src.diag(
                raw.duration.span(),
                "duration must be between \"1s\" and \"24h\"",
            ));
            None
        }
        Err(e) => {
            diags.push(src.diag(raw.duration.span(), e));
            None
        }
    };
    match duration {
        Some(duration) if diags.is_empty() => Ok(StateDef {
            file: src.path.to_path_buf(),
            pos: src.pos(t.span().start),
            name: at(src, raw.name),
            duration,
        }),
        _ => Err(diags),
    }
}

/// `"500ms"`, `"10s"`, `"5m"`, `"1h"`: a whole number and a unit.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!("\"{text}\" is not a duration: write a whole number and ms, s, m or h, as \"10s\"")
    };
    let digits = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = text.split_at(digits);
    let n: u64 = number.parse().map_err(|_| bad())?;
    let ms = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => None,
    }
    .ok_or_else(bad)?;
    Ok(Duration::from_millis(ms))
}

/// A recorder's `size`: [`parse_size`]'s forms, from `"64KiB"` to `"64MiB"`. Each mistake is
/// said as what it is (out of range, negative, a space, a unit spelt otherwise), and the units
/// offered are those a recorder can use: any GiB size is over the maximum.
fn recorder_size(text: &str) -> Result<u64, String> {
    const RANGE: &str = "a recorder's size is from \"64KiB\" to \"64MiB\"";
    const HOW: &str = "write a whole number and B, KiB or MiB, as \"4MiB\"";
    // (The text is shown as Rust writes a string: a control character in it is escaped.)
    // `None`: more bytes than a u64 holds.
    let out_of_range = |bytes: Option<u64>| match bytes {
        Some(n) if n < MIN_RECORDER_SIZE => "too small",
        _ => "too large",
    };
    let in_range = |n: u64| (MIN_RECORDER_SIZE..=MAX_RECORDER_SIZE).contains(&n);
    if let Ok(n) = parse_size(text) {
        return if in_range(n) {
            Ok(n)
        } else {
            Err(format!(
                "size {text:?} is {}: {RANGE}",
                out_of_range(Some(n))
            ))
        };
    }
    if text.trim().is_empty() {
        return Err(format!("size is empty: {HOW}"));
    }
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    if !number.is_empty() && matches!(unit, "" | "B" | "KiB" | "MiB" | "GiB") {
        // Digits and a unit, but more bytes than 2^64.
        return Err(format!("size {text:?} is too large: {RANGE}"));
    }
    if let Some(digits) = text.strip_prefix('-')
        && digits.starts_with(|c: char| c.is_ascii_digit())
    {
        return Err(format!("size {text:?} is negative: {RANGE}"));
    }
    // "4 MiB", " 4MiB": spaces.
    let joined: String = text.split_whitespace().collect();
    if joined != text
        && let Ok(n) = parse_size(&joined)
    {
        return Err(if in_range(n) {
            format!("{text:?} is not a size: write it without spaces, as {joined:?}")
        } else {
            format!(
                "{text:?} is not a size (write it without spaces), and it is {}: {RANGE}",
                out_of_range(Some(n))
            )
        });
    }
    // A unit spelt otherwise ("4MB", "4m", "4mib"): the binary unit is what it can mean.
    let meant = match unit.trim_start().to_ascii_lowercase().as_str() {
        "k" | "kb" | "kib" => Some("KiB"),
        "m" | "mb" | "mib" => Some("MiB"),
        "g" | "gb" | "gib" => Some("GiB"),
        _ => None,
    };
    if let Some(meant) = meant
        && !number.is_empty()
    {
        let fixed = format!("{number}{meant}");
        return Err(match parse_size(&fixed) {
            Ok(n) if in_range(n) => format!(
                "{text:?} is not a size: write {fixed:?} (the units are B, KiB and MiB, of \
                 1024)"
            ),
            // "4GB", "100MB": however it is meant, it is out of range.
            n => format!(
                "{text:?} is not a size, and as {fixed:?} it would be {}: {RANGE}",
                out_of_range(n.ok())
            ),
        });
    }
    if !number.is_empty() && unit.starts_with(['.', ',']) {
        return Err(format!(
            "{text:?} is not a size: write a whole number, of KiB if need be (\"1536KiB\" \
             for 1.5 MiB)"
        ));
    }
    if !number.is_empty() {
        return Err(format!(
            "{text:?} is not a size: {unit:?} is not a unit; {HOW}"
        ));
    }
    Err(format!("{text:?} is not a size: {HOW}"))
}

/// `"4MiB"`, `"512KiB"`, `"1GiB"`, `"1048576"`: a whole number of bytes, KiB, MiB or GiB.
/// (Each use checks its own range.)
pub fn parse_size(text: &str) -> Result<u64, String> {
    let bad = || {
        format!("\"{text}\" is not a size: write a whole number and KiB, MiB or GiB, as \"4MiB\"")
    };
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let n: u64 = number.parse().map_err(|_| bad())?;
    match unit {
        "" | "B" => Some(n),
        "KiB" => n.checked_mul(1 << 10),
        "MiB" => n.checked_mul(1 << 20),
        "GiB" => n.checked_mul(1 << 30),
        _ => None,
    }
    .ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("1.5s").is_err());
        assert_eq!(parse_size("4MiB"), Ok(4 << 20));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert!(parse_size("4MB").is_err());
    }
}
