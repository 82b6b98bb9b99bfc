//! Text from outside (a sender's attribute values, a process's name, a remote rule file's keys)
//! made safe to print on an operator's terminal or in a log line.

/// `text` with every character that could move the cursor, change the terminal or reorder
/// what is shown escaped as Rust writes it in a string (`\n`, `\u{1b}`, `\u{202e}`): control
/// characters, the invisible and direction-changing format characters, and line and paragraph
/// separators. Backslashes are doubled so that an escape is never ambiguous.
pub fn printable(text: &str) -> String {
    if !text.chars().any(needs_escape) {
        return text.to_string();
    }
    text.chars()
        .map(|c| {
            if needs_escape(c) {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || c == '\\'
        || matches!(
            c,
            '\u{00ad}'
                | '\u{061c}'
                | '\u{180e}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{2069}'
                | '\u{feff}'
                | '\u{fff9}'..='\u{fffb}'
        )
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn what_could_change_the_terminal_is_escaped() {
        assert_eq!(printable("plain ünïcødé ✓"), "plain ünïcødé ✓");
        assert_eq!(printable("\u{1b}[2Jx"), "\\u{1b}[2Jx");
        assert_eq!(printable("a\rb\nc\td"), "a\\rb\\nc\\td");
        assert_eq!(printable("a\\b"), "a\\\\b");
        assert_eq!(printable("abc\u{202e}fed"), "abc\\u{202e}fed");
        assert_eq!(printable("zero\u{200b}width"), "zero\\u{200b}width");
        assert_eq!(printable("line\u{2028}sep"), "line\\u{2028}sep");
    }
}
