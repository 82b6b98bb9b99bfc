//! Severity conditions (the README's "Severity"): level names, comparisons, ranges and bare
//! SeverityNumbers, compiled to an inclusive range of OTLP SeverityNumbers.

use std::fmt;

/// Highest OTLP SeverityNumber (FATAL4).
const MAX_SEVERITY: u8 = 24;

/// Level names and the first SeverityNumber of each; every level spans four numbers.
const LEVELS: [(&str, u8); 6] = [
    ("TRACE", 1),
    ("DEBUG", 5),
    ("INFO", 9),
    ("WARN", 13),
    ("ERROR", 17),
    ("FATAL", 21),
];
const NUMBERS_PER_LEVEL: u8 = 4;

const EXPECTED: &str =
    "expected TRACE, DEBUG, INFO, WARN, ERROR, FATAL, a number 1-24, or UNSPECIFIED";

/// An inclusive range of OTLP SeverityNumbers, as the kernel compares them
/// (`sev_lo <= severity_number <= sev_hi`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct SeverityRange {
    pub lo: u8,
    pub hi: u8,
}

impl SeverityRange {
    /// No severity condition: every record, including severity 0 and out-of-range numbers.
    pub const ANY: SeverityRange = SeverityRange { lo: 0, hi: u8::MAX };
    /// `"UNSPECIFIED"`: exactly SeverityNumber 0.
    pub const UNSPECIFIED: SeverityRange = SeverityRange { lo: 0, hi: 0 };

    /// Parses a severity string: `"DEBUG"`, `"<INFO"`, `"<=DEBUG"`, `">WARN"`, `">=WARN"`,
    /// `"DEBUG..WARN"`, the same forms with numbers 1-24, or `"UNSPECIFIED"`. Level names are
    /// case-insensitive and whitespace around operators is allowed. A form that matches no
    /// SeverityNumber (`"<TRACE"`, `"WARN..DEBUG"`) is an error.
    pub fn parse(text: &str) -> Result<SeverityRange, String> {
        parse_spec(text.trim()).map_err(|detail| format!("invalid severity \"{text}\": {detail}"))
    }

    /// A bare SeverityNumber 1-24 given as a TOML integer (`severity = 9`).
    pub fn from_number(number: i64) -> Result<SeverityRange, String> {
        let n = severity_number(number)?;
        Ok(SeverityRange { lo: n, hi: n })
    }

    /// Whether a record with this SeverityNumber matches.
    pub fn contains(self, severity_number: u8) -> bool {
        (self.lo..=self.hi).contains(&severity_number)
    }
}

impl fmt::Display for SeverityRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..={}", self.lo, self.hi)
    }
}

fn parse_spec(spec: &str) -> Result<SeverityRange, String> {
    if spec.eq_ignore_ascii_case("UNSPECIFIED") {
        return Ok(SeverityRange::UNSPECIFIED);
    }
    let (lo, hi) = if let Some((first, last)) = spec.split_once("..") {
        (term(first)?.lo, term(last)?.hi)
    } else if let Some(rest) = spec.strip_prefix("<=") {
        (1, term(rest)?.hi)
    } else if let Some(rest) = spec.strip_prefix(">=") {
        (term(rest)?.lo, MAX_SEVERITY)
    } else if let Some(rest) = spec.strip_prefix('<') {
        // `term` never returns 0, so this cannot underflow; `<1` gives the empty 1..=0.
        (1, term(rest)?.lo - 1)
    } else if let Some(rest) = spec.strip_prefix('>') {
        (term(rest)?.hi + 1, MAX_SEVERITY)
    } else {
        let t = term(spec)?;
        (t.lo, t.hi)
    };
    if lo > hi {
        return Err("it matches no severity number".to_string());
    }
    Ok(SeverityRange { lo, hi })
}

/// One SeverityNumber: a level name (case-insensitive; its first number, `"ERROR"` is 17) or a
/// number 1-24 written as text. For `severity_map` values and a probe's constant `severity`.
pub(crate) fn single_number(text: &str) -> Result<u8, String> {
    let t = term(text).map_err(|detail| format!("invalid severity \"{text}\": {detail}"))?;
    Ok(t.lo)
}

/// One SeverityNumber given as a TOML integer (1-24).
pub(crate) fn number(number: i64) -> Result<u8, String> {
    severity_number(number)
}

/// What an unknown level likely meant: an operator written backwards (`=>WARN`), a level of
/// another logging system (`WARNING`, `CRITICAL`), a typo within two edits.
fn level_hint(text: &str) -> String {
    let meant = if let Some(rest) = text.strip_prefix("=>") {
        Some(format!(">={rest}"))
    } else if let Some(rest) = text.strip_prefix("=<") {
        Some(format!("<={rest}"))
    } else {
        const OTHER: [(&str, &str); 7] = [
            ("WARNING", "WARN"),
            ("CRITICAL", "FATAL"),
            ("CRIT", "FATAL"),
            ("EMERG", "FATAL"),
            ("ALERT", "FATAL"),
            ("NOTICE", "INFO"),
            ("ERR", "ERROR"),
        ];
        let names: Vec<&str> = LEVELS.iter().map(|(n, _)| *n).collect();
        OTHER
            .iter()
            .find(|(other, _)| other.eq_ignore_ascii_case(text))
            .map(|(_, ours)| ours.to_string())
            .or_else(|| crate::rules::diag::closest(text, &names).map(str::to_string))
    };
    meant
        .map(|m| format!("; did you mean \"{m}\"?"))
        .unwrap_or_default()
}

/// One operand: a level name (its four numbers) or a number 1-24 (itself).
fn term(text: &str) -> Result<SeverityRange, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err(format!("a level or number is missing ({EXPECTED})"));
    }
    if text.eq_ignore_ascii_case("UNSPECIFIED") {
        return Err("UNSPECIFIED cannot be combined with an operator or a range".to_string());
    }
    if let Some(&(_, first)) = LEVELS
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(text))
    {
        return Ok(SeverityRange {
            lo: first,
            hi: first + NUMBERS_PER_LEVEL - 1,
        });
    }
    match text.parse::<i64>() {
        Ok(number) => SeverityRange::from_number(number),
        Err(_) => Err(format!(
            "unknown level \"{text}\"{} ({EXPECTED})",
            level_hint(text)
        )),
    }
}

fn severity_number(number: i64) -> Result<u8, String> {
    match u8::try_from(number) {
        Ok(n @ 1..=MAX_SEVERITY) => Ok(n),
        _ if number == 0 => Err(format!(
            "severity number 0 is out of range 1-{MAX_SEVERITY} (use \"UNSPECIFIED\" for 0)"
        )),
        _ => Err(format!(
            "severity number {number} is out of range 1-{MAX_SEVERITY}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(text: &str) -> (u8, u8) {
        let r = SeverityRange::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        (r.lo, r.hi)
    }

    fn error(text: &str) -> String {
        SeverityRange::parse(text).expect_err(text)
    }

    #[test]
    fn level_names_cover_four_numbers_each() {
        assert_eq!(range("TRACE"), (1, 4));
        assert_eq!(range("DEBUG"), (5, 8));
        assert_eq!(range("INFO"), (9, 12));
        assert_eq!(range("WARN"), (13, 16));
        assert_eq!(range("ERROR"), (17, 20));
        assert_eq!(range("FATAL"), (21, 24));
    }

    #[test]
    fn level_names_are_case_insensitive() {
        assert_eq!(range("debug"), (5, 8));
        assert_eq!(range("Warn"), (13, 16));
        assert_eq!(range("<info"), (1, 8));
        assert_eq!(range("unspecified"), (0, 0));
    }

    #[test]
    fn comparisons_by_level() {
        assert_eq!(range("<INFO"), (1, 8));
        assert_eq!(range("<=DEBUG"), (1, 8));
        assert_eq!(range(">WARN"), (17, 24));
        assert_eq!(range(">=WARN"), (13, 24));
        assert_eq!(range("<=FATAL"), (1, 24));
        assert_eq!(range(">=TRACE"), (1, 24));
    }

    #[test]
    fn inclusive_level_ranges() {
        assert_eq!(range("DEBUG..WARN"), (5, 16));
        assert_eq!(range("INFO..INFO"), (9, 12));
        assert_eq!(range("TRACE..FATAL"), (1, 24));
    }

    #[test]
    fn bare_numbers_compare_the_number_itself() {
        assert_eq!(range("9"), (9, 9));
        assert_eq!(range("<5"), (1, 4));
        assert_eq!(range("<=5"), (1, 5));
        assert_eq!(range(">20"), (21, 24));
        assert_eq!(range(">=13"), (13, 24));
        assert_eq!(range("3..7"), (3, 7));
        assert_eq!(range("24"), (24, 24));
    }

    #[test]
    fn numbers_and_levels_mix_in_ranges() {
        assert_eq!(range("3..INFO"), (3, 12));
        assert_eq!(range("DEBUG..10"), (5, 10));
    }

    #[test]
    fn whitespace_around_operators_is_allowed() {
        assert_eq!(range("  < INFO "), (1, 8));
        assert_eq!(range(">= WARN"), (13, 24));
        assert_eq!(range("DEBUG .. WARN"), (5, 16));
        assert_eq!(range(" 3 .. 7 "), (3, 7));
    }

    #[test]
    fn unspecified_is_exactly_zero() {
        assert_eq!(range("UNSPECIFIED"), (0, 0));
        assert!(SeverityRange::UNSPECIFIED.contains(0));
        assert!(!SeverityRange::UNSPECIFIED.contains(1));
    }

    #[test]
    fn no_other_form_matches_severity_zero() {
        for text in ["TRACE", "<INFO", "<=DEBUG", ">=TRACE", "1..24", "<2", "1"] {
            assert!(!SeverityRange::parse(text).unwrap().contains(0), "{text}");
        }
        assert!(SeverityRange::ANY.contains(0));
    }

    #[test]
    fn integer_values_are_bare_numbers() {
        assert_eq!(
            SeverityRange::from_number(9),
            Ok(SeverityRange { lo: 9, hi: 9 })
        );
        assert_eq!(
            SeverityRange::from_number(1),
            Ok(SeverityRange { lo: 1, hi: 1 })
        );
        assert!(
            SeverityRange::from_number(0)
                .unwrap_err()
                .contains("UNSPECIFIED")
        );
        assert!(
            SeverityRange::from_number(25)
                .unwrap_err()
                .contains("out of range")
        );
        assert!(
            SeverityRange::from_number(-3)
                .unwrap_err()
                .contains("out of range")
        );
        assert!(SeverityRange::from_number(i64::MAX).is_err());
    }

    #[test]
    fn empty_ranges_are_errors() {
        for text in ["<TRACE", ">FATAL", "WARN..DEBUG", "<1", ">24", "7..3"] {
            let e = error(text);
            assert!(e.contains("matches no severity number"), "{text}: {e}");
            assert!(
                e.starts_with(&format!("invalid severity \"{text}\"")),
                "{e}"
            );
        }
    }

    #[test]
    fn out_of_range_numbers_are_errors() {
        assert!(error("0").contains("use \"UNSPECIFIED\" for 0"));
        assert!(error("25").contains("out of range 1-24"));
        assert!(error("<=30").contains("out of range 1-24"));
        assert!(error("0..5").contains("out of range"));
    }

    #[test]
    fn malformed_forms_are_errors() {
        assert!(error("").contains("missing"));
        assert!(error("   ").contains("missing"));
        assert!(error("<").contains("missing"));
        assert!(error("..WARN").contains("missing"));
        assert!(error("DEBUG..").contains("missing"));
        assert!(error("VERBOSE").contains("unknown level \"VERBOSE\""));
        assert!(error("EROR").contains("unknown level \"EROR\"; did you mean \"ERROR\"?"));
        assert!(error("=>WARN").contains("did you mean \">=WARN\"?"));
        assert!(error("warning").contains("did you mean \"WARN\"?"));
        assert!(error("<=critical").contains("did you mean \"FATAL\"?"));
        assert!(error("=INFO").contains("unknown level"));
        assert!(error("<<INFO").contains("unknown level"));
        assert!(error("DEBUG..WARN..ERROR").contains("unknown level"));
        assert!(error("INFO2").contains("unknown level"));
        assert!(error("<UNSPECIFIED").contains("cannot be combined"));
        assert!(error("UNSPECIFIED..INFO").contains("cannot be combined"));
    }
}
