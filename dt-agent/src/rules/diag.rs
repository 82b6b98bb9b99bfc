//! Diagnostics (`file:line:column: message`) and source positions.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// A position in a rule file. Both numbers are 1-based; the column counts characters.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

impl Pos {
    /// The start of a file (line 1, column 1), for problems with the file as a whole.
    pub const START: Pos = Pos { line: 1, column: 1 };
}

/// One problem found in a rule file. Its `Display` is `file:line:column: message`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    pub message: String,
}

impl Diagnostic {
    /// A diagnostic at `pos` in `file`.
    pub fn new(file: &Path, pos: Pos, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            file: file.to_path_buf(),
            line: pos.line,
            column: pos.column,
            message: message.into(),
        }
    }

    /// Where the diagnostic points.
    pub fn pos(&self) -> Pos {
        Pos {
            line: self.line,
            column: self.column,
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

impl std::error::Error for Diagnostic {}

/// The text of one rule file, able to turn byte offsets into [`Pos`]itions.
pub(crate) struct SourceText<'a> {
    pub path: &'a Path,
    pub text: &'a str,
    /// Byte offset of the start of every line.
    line_starts: Vec<usize>,
}

impl<'a> SourceText<'a> {
    pub fn new(path: &'a Path, text: &'a str) -> SourceText<'a> {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        SourceText {
            path,
            text,
            line_starts,
        }
    }

    /// The position of byte `offset` (clamped to the text).
    pub fn pos(&self, offset: usize) -> Pos {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&start| start <= offset);
        let start = self.line_starts[line - 1];
        let column = match self.text.get(start..offset) {
            // A byte order mark at the start of the file is no column an editor shows.
            Some(prefix) => {
                prefix.chars().count() - usize::from(start == 0 && prefix.starts_with('\u{feff}'))
            }
            None => offset - start,
        };
        Pos {
            line,
            column: column + 1,
        }
    }

    /// A diagnostic at the start of `span`.
    pub fn diag(&self, span: Range<usize>, message: impl Into<String>) -> Diagnostic {
        Diagnostic::new(self.path, self.pos(span.start), message)
    }
}

/// A TOML or serde error message in the words of a rule or config file: `key` rather than
/// `field`, `list` rather than `sequence`, `a whole number` rather than `i64`, a table rather
/// than a Rust struct's name, and a likely key for an unknown one. `text` is the key or value
/// the error points at, when known. Messages it does not recognise come back as they are.
pub(crate) fn plain_message(message: &str, text: Option<&str>) -> String {
    let message = message.trim_end();
    if let Some((key, choices)) = unknown_key(message) {
        let hint = closest(key, &choices)
            .map(|c| format!(" (did you mean `{c}`?)"))
            .unwrap_or_default();
        return if choices.is_empty() {
            format!("unknown key `{key}`{hint}")
        } else {
            format!(
                "unknown key `{key}`{hint}; the keys here are {}",
                choices
                    .iter()
                    .map(|c| format!("`{c}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
    }
    if let Some(rest) = message.strip_prefix("missing field `")
        && let Some(key) = rest.strip_suffix('`')
    {
        return format!("missing key `{key}`: this table needs it");
    }
    if message == "duplicate key" {
        return match text {
            Some(key) => format!("duplicate key `{}`: a table sets each key once", key.trim()),
            None => "duplicate key: a table sets each key once".to_string(),
        };
    }
    if let Some(m) = message.strip_suffix(", expected literal string") {
        return m.to_string();
    }
    // 2^63 to 2^64 - 1 come as a u64 that is no i64.
    if let Some(n) = message
        .strip_prefix("invalid value: integer `")
        .and_then(|r| r.strip_suffix("`, expected i64"))
    {
        return out_of_range(n);
    }
    let Some(rest) = message.strip_prefix("invalid type: ") else {
        return message.to_string();
    };
    // The last one: what was found may be a string holding the words.
    let Some((found, expected)) = rest.rsplit_once(", expected ") else {
        return message.to_string();
    };
    // A number too large for 64 bits comes as an i128.
    if let Some(n) = found
        .strip_prefix("integer `")
        .and_then(|f| f.strip_suffix("` as i128"))
    {
        return out_of_range(n);
    }
    let found = plain_found(found);
    let expected = match expected {
        "i64" | "u64" | "i32" | "u32" | "u16" | "u8" | "usize" => {
            "a whole number (without quotes)".to_string()
        }
        "a sequence" => "a list, such as [\"a\", \"b\"]".to_string(),
        "a boolean" => "true or false (without quotes)".to_string(),
        "a string" => "a string in quotes".to_string(),
        e if e.starts_with("struct ") || e == "a map" => {
            "a table: { key = value, ... }, or a [section] of its own".to_string()
        }
        e => e.to_string(),
    };
    format!("expected {expected}, found {found}")
}

/// serde's `unknown field` message: the key, and the keys the table has.
fn unknown_key(message: &str) -> Option<(&str, Vec<&str>)> {
    let rest = message.trim_end().strip_prefix("unknown field `")?;
    let (key, expected) = rest.split_once('`')?;
    let choices = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|c| !c.is_empty())
        .collect();
    Some((key, choices))
}

/// For serde's `unknown field` message, the key it was likely meant to be (within two edits).
pub(crate) fn meant_key(message: &str) -> Option<String> {
    let (key, choices) = unknown_key(message)?;
    closest(key, &choices).map(str::to_string)
}

fn out_of_range(n: &str) -> String {
    format!(
        "{n} is out of range: a whole number here is between {} and {}",
        i64::MIN,
        i64::MAX
    )
}

/// serde's name for what it found: `string "x"`, ``integer `3` ``, `sequence`, `map`, ...
fn plain_found(found: &str) -> String {
    let unquote = |s: &str| s.trim_matches('`').to_string();
    if let Some(s) = found.strip_prefix("string ") {
        format!("the string {s}")
    } else if let Some(n) = found.strip_prefix("integer ") {
        format!("the number {}", unquote(n))
    } else if let Some(n) = found.strip_prefix("floating point ") {
        format!("the number {}", unquote(n))
    } else if let Some(b) = found.strip_prefix("boolean ") {
        unquote(b)
    } else if found == "sequence" {
        "a list".to_string()
    } else if found == "map" {
        "a table".to_string()
    } else {
        found.to_string()
    }
}

/// The choice within two edits of `key` (one for a key of four letters or fewer, case aside),
/// if one is.
pub(crate) fn closest<'c>(key: &str, choices: &[&'c str]) -> Option<&'c str> {
    let key = key.to_ascii_lowercase();
    let most = if key.chars().count() <= 4 { 1 } else { 2 };
    choices
        .iter()
        .map(|c| (edits(&key, &c.to_ascii_lowercase()), *c))
        .filter(|(d, _)| *d <= most)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Edit distance, a swap of two neighbours counting as one edit (optimal string alignment).
fn edits(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_words_become_the_files_words() {
        let p = |m: &str| plain_message(m, None);
        assert_eq!(
            p("unknown field `acton`, expected one of `name`, `action`, `hooks`"),
            "unknown key `acton` (did you mean `action`?); the keys here are `name`, `action`, \
             `hooks`"
        );
        assert_eq!(
            p("unknown field `zzz`, expected `a` or `b`"),
            "unknown key `zzz`; the keys here are `a`, `b`"
        );
        assert_eq!(
            p("missing field `action`"),
            "missing key `action`: this table needs it"
        );
        assert_eq!(
            p("invalid type: string \"10\", expected i64"),
            "expected a whole number (without quotes), found the string \"10\""
        );
        assert_eq!(
            p("invalid type: integer `99999999999999999999` as i128, expected i64"),
            "99999999999999999999 is out of range: a whole number here is between \
             -9223372036854775808 and 9223372036854775807"
        );
        assert_eq!(
            p("invalid type: string \"user.email\", expected a sequence"),
            "expected a list, such as [\"a\", \"b\"], found the string \"user.email\""
        );
        assert_eq!(
            p("invalid type: sequence, expected a string"),
            "expected a string in quotes, found a list"
        );
        assert_eq!(
            p("invalid type: integer `10`, expected a string"),
            "expected a string in quotes, found the number 10"
        );
        assert_eq!(
            p("invalid type: string \"severity >= WARN\", expected struct RawMatch"),
            "expected a table: { key = value, ... }, or a [section] of its own, found the \
             string \"severity >= WARN\""
        );
        assert_eq!(
            p("string values must be quoted, expected literal string"),
            "string values must be quoted"
        );
        assert_eq!(
            plain_message("duplicate key", Some("action ")),
            "duplicate key `action`: a table sets each key once"
        );
        assert_eq!(
            p("invalid type: string \"1, expected 2\", expected i64"),
            "expected a whole number (without quotes), found the string \"1, expected 2\""
        );
        assert_eq!(
            p("invalid value: integer `18446744073709551615`, expected i64"),
            "18446744073709551615 is out of range: a whole number here is between \
             -9223372036854775808 and 9223372036854775807"
        );
        // Its own words, and ones it does not know, stay.
        assert_eq!(p("name must not be empty"), "name must not be empty");
        assert_eq!(
            p("invalid type: map, expected a severity string such as \"<INFO\""),
            "expected a severity string such as \"<INFO\", found a table"
        );
    }

    #[test]
    fn positions_are_one_based_and_count_characters() {
        let text = "ab\n\u{e9}x\n\nz";
        let src = SourceText::new(Path::new("f.toml"), text);
        assert_eq!(src.pos(0), Pos { line: 1, column: 1 });
        assert_eq!(src.pos(2), Pos { line: 1, column: 3 });
        assert_eq!(src.pos(3), Pos { line: 2, column: 1 });
        // 'é' is two bytes but one column.
        assert_eq!(src.pos(5), Pos { line: 2, column: 2 });
        assert_eq!(src.pos(7), Pos { line: 3, column: 1 });
        assert_eq!(src.pos(8), Pos { line: 4, column: 1 });
        assert_eq!(src.pos(100), Pos { line: 4, column: 2 });
        // A byte order mark takes no column.
        let src = SourceText::new(Path::new("f.toml"), "\u{feff}ab");
        assert_eq!(src.pos(3), Pos { line: 1, column: 1 });
        assert_eq!(src.pos(4), Pos { line: 1, column: 2 });
        // Elsewhere, U+FEFF is a character like any other.
        let src = SourceText::new(Path::new("f.toml"), "a\u{feff}b");
        assert_eq!(src.pos(4), Pos { line: 1, column: 3 });
    }

    #[test]
    fn display_is_file_line_column_message() {
        let d = Diagnostic::new(Path::new("rules/a.toml"), Pos { line: 3, column: 7 }, "bad");
        assert_eq!(d.to_string(), "rules/a.toml:3:7: bad");
    }
}

/// Every problem of a rule set that was refused, as `file:line:column: message` lines.
#[derive(Debug)]
pub struct RuleErrors(pub Vec<Diagnostic>);

impl std::fmt::Display for RuleErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for RuleErrors {}
