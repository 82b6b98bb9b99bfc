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
            Some(prefix) => prefix.chars().count(),
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

#[cfg(test)]
mod tests {
    use super::*;

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
