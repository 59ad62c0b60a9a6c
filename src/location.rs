//! Source locations for errors in operator-edited files.
//!
//! Every error an operator can cause by editing `gateway.toml` or `rules/*.toml` names the file, the
//! line and the column, so the fix starts at the right place.

use std::fmt;
use std::path::{Path, PathBuf};

/// An error at a place in a file: `file:line:column: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceError {
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, counted in characters.
    pub column: usize,
    pub message: String,
}

impl SourceError {
    /// An error at a byte offset of `src`, the text of `file`.
    pub fn at_offset(file: &Path, src: &str, offset: usize, message: impl Into<String>) -> Self {
        let (line, column) = line_col(src, offset);
        Self::at(file, line, column, message)
    }

    /// An error at a 1-based line and column.
    pub fn at(file: &Path, line: usize, column: usize, message: impl Into<String>) -> Self {
        SourceError {
            file: file.to_path_buf(),
            line,
            column,
            message: message.into(),
        }
    }

    /// An error about a whole file (it cannot be read, say): reported at 1:1.
    pub fn whole_file(file: &Path, message: impl Into<String>) -> Self {
        SourceError {
            file: file.to_path_buf(),
            line: 1,
            column: 1,
            message: message.into(),
        }
    }

    /// From a `toml` deserialisation error, which carries a byte span when it knows one.
    pub fn from_toml(file: &Path, src: &str, err: &toml::de::Error) -> Self {
        let offset = err.span().map(|s| s.start).unwrap_or(0);
        // toml's message is multi-line with a snippet; the first line is the reason itself.
        let message = err.message().trim().to_string();
        SourceError::at_offset(file, src, offset, message)
    }
}

impl fmt::Display for SourceError {
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

impl std::error::Error for SourceError {}

/// All the errors found in one pass, so an operator fixes them in one edit, not one per run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceErrors(pub Vec<SourceError>);

impl fmt::Display for SourceErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SourceErrors {}

/// Where each line of a file starts, so many positions in one file are found without
/// rescanning it from the top each time (a file of 10 000 routes has 10 000 route locations).
#[derive(Debug, Clone)]
pub struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    pub fn new(src: &str) -> LineIndex {
        let starts = std::iter::once(0)
            .chain(src.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        LineIndex { starts }
    }

    /// The same answer as [`line_col`], in logarithmic time plus the length of the line.
    pub fn line_col(&self, src: &str, offset: usize) -> (usize, usize) {
        let offset = floor_char_boundary(src, offset.min(src.len()));
        let line = self.starts.partition_point(|&start| start <= offset);
        let line_start = self.starts[line.saturating_sub(1)];
        (line, src[line_start..offset].chars().count() + 1)
    }
}

/// 1-based (line, column) of a byte offset; the column counts characters, not bytes.
pub fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = floor_char_boundary(src, offset.min(src.len()));
    let before = &src[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = src[line_start..offset].chars().count() + 1;
    (line, column)
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The byte offset in the file of a position inside a TOML string value.
///
/// `value_start` is the offset of the value's opening quote (as `toml::Spanned` reports it);
/// `line` and `column` (1-based) are a position inside the string's content, as an expression
/// parser reports it. Escapes inside basic strings are not undone, so a position after an escape
/// may be off by the escape's length; positions in literal and plain strings are exact.
pub fn offset_in_string_value(src: &str, value_start: usize, line: usize, column: usize) -> usize {
    let rest = src.get(value_start..).unwrap_or("");
    let mut start = value_start;
    if rest.starts_with("\"\"\"") || rest.starts_with("'''") {
        start += 3;
        // TOML trims a newline right after the opening delimiter of a multi-line string.
        let after = &src[start..];
        if after.starts_with("\r\n") {
            start += 2;
        } else if after.starts_with('\n') {
            start += 1;
        }
    } else if rest.starts_with('"') || rest.starts_with('\'') {
        start += 1;
    }
    let mut offset = start;
    let mut remaining_lines = line.saturating_sub(1);
    while remaining_lines > 0 {
        match src[offset..].find('\n') {
            Some(i) => offset += i + 1,
            None => break,
        }
        remaining_lines -= 1;
    }
    for (n, (i, _)) in src[offset..].char_indices().enumerate() {
        if n + 1 == column.max(1) {
            return offset + i;
        }
    }
    offset
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_line_index_answers_as_the_scan_does() {
        for src in ["", "a", "a\nb", "\n\n", "ab\ncé\n\nd", "x = 1\ny = \"é\"\n"] {
            let index = super::LineIndex::new(src);
            for offset in 0..=src.len() + 2 {
                assert_eq!(
                    index.line_col(src, offset),
                    super::line_col(src, offset),
                    "{src:?} at {offset}"
                );
            }
        }
    }

    use super::*;

    #[test]
    fn line_col_counts_from_one() {
        let src = "a = 1\nbb = 2\n";
        assert_eq!(line_col(src, 0), (1, 1));
        assert_eq!(line_col(src, 6), (2, 1));
        assert_eq!(line_col(src, 9), (2, 4));
    }

    #[test]
    fn offsets_inside_strings() {
        let src = "x = \"a && \"\ny = '''\nfoo\n  bar'''\n";
        // column 6 of the first string is the second '&' ... the content starts after the quote
        let off = offset_in_string_value(src, 4, 1, 3);
        assert_eq!(line_col(src, off), (1, 8));
        let start = src.find("'''").unwrap();
        let off = offset_in_string_value(src, start, 2, 3);
        assert_eq!(line_col(src, off), (4, 3));
    }
}
