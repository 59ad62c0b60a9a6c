//! Templates for source requests: literal text with `{cel expression}` holes, e.g.
//! `http://game:9100/players/{claims.sub}/balance`. `{{` and `}}` are literal braces.
//!
//! A hole's value is text (strings as they are, numbers and bools formatted); in a URL it is
//! percent-encoded as one path segment or query value, so a claim can never add a `/`, `?`
//! or `#` to the request the gateway sends, and the scheme and host are never templated; in a
//! JSON body it is escaped as JSON string content, so a value can never close its string and
//! add a member.

use crate::policy::activation::Activation;
use crate::policy::cel::to_header_text;
use ::cel::{Program, Value};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// Everything but RFC 3986 "unreserved" characters is encoded.
const HOLE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// One piece of a template: literal text or an expression hole, with the hole's byte offset in
/// the template (for error locations).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    Hole { expr: String, offset: usize },
}

/// Splits a template into pieces. Braces inside quoted strings of an expression do not close
/// it, nor do balanced braces (a CEL map literal).
pub fn parse(template: &str) -> Result<Vec<Piece>, (usize, String)> {
    let bytes = template.as_bytes();
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'{' if bytes.get(i + 1) == Some(&b'{') => {
                text.push('{');
                i += 2;
            }
            b'}' if bytes.get(i + 1) == Some(&b'}') => {
                text.push('}');
                i += 2;
            }
            b'}' => return Err((i, "a `}` without its `{` (write `}}` for a brace)".into())),
            b'{' => {
                let start = i + 1;
                let end = hole_end(bytes, start).ok_or((i, "a `{` that is never closed".into()))?;
                let expr = template[start..end].trim();
                if expr.is_empty() {
                    return Err((i, "an empty `{}` (write `{{` for a brace)".into()));
                }
                if !text.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut text)));
                }
                pieces.push(Piece::Hole {
                    expr: expr.to_string(),
                    offset: start,
                });
                i = end + 1;
            }
            _ => {
                let ch_len = template[i..].chars().next().map_or(1, char::len_utf8);
                text.push_str(&template[i..i + ch_len]);
                i += ch_len;
            }
        }
    }
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(pieces)
}

/// The index of the `}` closing a hole opened just before `start`.
fn hole_end(bytes: &[u8], start: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut quote: Option<u8> = None;
    let mut i = start;
    while i < bytes.len() {
        let b = bytes[i];
        match quote {
            Some(_) if b == b'\\' => i += 1,
            Some(q) if b == q => quote = None,
            Some(_) => {}
            None => match b {
                b'\'' | b'"' => quote = Some(b),
                b'{' => depth += 1,
                b'}' if depth == 0 => return Some(i),
                b'}' => depth -= 1,
                _ => {}
            },
        }
        i += 1;
    }
    None
}

/// A template whose holes are compiled.
#[derive(Debug)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug)]
enum Part {
    Text(String),
    Hole(Program),
}

/// Where a rendered value goes: URL holes are percent-encoded, JSON body holes escaped as
/// string content, others (headers, which refuse CR and LF themselves) taken as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escape {
    Url,
    Json,
    None,
}

impl Template {
    /// Builds a template from parsed pieces and their compiled programs, in hole order.
    pub fn new(pieces: Vec<Piece>, mut programs: Vec<Program>) -> Template {
        programs.reverse();
        let parts = pieces
            .into_iter()
            .filter_map(|p| match p {
                Piece::Text(t) => Some(Part::Text(t)),
                Piece::Hole { .. } => programs.pop().map(Part::Hole),
            })
            .collect();
        Template { parts }
    }

    /// Fills the holes from `act`.
    pub fn render(&self, act: &Activation<'_>, escape: Escape) -> Result<String, String> {
        let mut out = String::new();
        self.each_piece(act, escape, |piece| out.push_str(piece))?;
        if escape == Escape::Url {
            no_dot_segments(&out)?;
        }
        Ok(out)
    }

    /// The rendered pieces, literal text and holes apart, in order (a cache key hashes each
    /// with its length, so text that moves between two holes is another key).
    pub fn each_piece(
        &self,
        act: &Activation<'_>,
        escape: Escape,
        mut f: impl FnMut(&str),
    ) -> Result<(), String> {
        for part in &self.parts {
            match part {
                Part::Text(t) => f(t),
                Part::Hole(p) => {
                    let v = act.execute_program(p).map_err(|e| e.to_string())?;
                    let text = hole_text(&v)?;
                    match escape {
                        Escape::Url => {
                            // `.` and `..` stay unencoded by RFC 3986 and would walk the path.
                            if text.is_empty() || text == "." || text == ".." {
                                return Err(format!("`{text}` cannot be a URL segment"));
                            }
                            let encoded: String = utf8_percent_encode(&text, HOLE).collect();
                            f(&encoded);
                        }
                        Escape::Json => f(&json_string_content(&text)),
                        Escape::None => f(&text),
                    }
                }
            }
        }
        Ok(())
    }

    /// The literal text before the first hole (all of it, without holes).
    pub fn prefix(&self) -> &str {
        match self.parts.first() {
            Some(Part::Text(t)) => t,
            _ => "",
        }
    }
}

/// `text` as the content of a JSON string: quotes, backslashes and control characters escaped.
fn json_string_content(text: &str) -> String {
    let quoted = serde_json::Value::String(text.to_string()).to_string();
    quoted[1..quoted.len() - 1].to_string()
}

/// A rendered URL whose path has a `.` or `..` segment: holes next to each other (or to text)
/// can make one that no hole holds alone, and a URL parser would walk the path with it.
fn no_dot_segments(url: &str) -> Result<(), String> {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let Some(slash) = after_scheme.find('/') else {
        return Ok(());
    };
    let path = after_scheme[slash..]
        .split(['?', '#'])
        .next()
        .unwrap_or_default();
    match path.split('/').find(|seg| *seg == "." || *seg == "..") {
        Some(seg) => Err(format!("the URL's path has a `{seg}` segment")),
        None => Ok(()),
    }
}

fn hole_text(v: &Value) -> Result<String, String> {
    match v {
        Value::List(_) | Value::Map(_) | Value::Null | Value::Bytes(_) => Err(format!(
            "a template hole gave a {}, not text or a number",
            v.type_of()
        )),
        other => to_header_text(other).ok_or_else(|| "a template hole gave no value".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holes(t: &str) -> Vec<String> {
        parse(t)
            .unwrap()
            .into_iter()
            .filter_map(|p| match p {
                Piece::Hole { expr, .. } => Some(expr),
                Piece::Text(_) => None,
            })
            .collect()
    }

    #[test]
    fn splits_text_and_holes() {
        let p = parse("http://h/p/{claims.sub}/b?x={request.query['x']}").unwrap();
        assert_eq!(
            p,
            vec![
                Piece::Text("http://h/p/".into()),
                Piece::Hole {
                    expr: "claims.sub".into(),
                    offset: 12
                },
                Piece::Text("/b?x=".into()),
                Piece::Hole {
                    expr: "request.query['x']".into(),
                    offset: 29
                },
            ]
        );
    }

    #[test]
    fn braces_in_strings_and_maps_do_not_close_a_hole() {
        assert_eq!(holes("{'}' + claims.a}"), vec!["'}' + claims.a"]);
        assert_eq!(holes("{ {'a': 1}['a'] }"), vec!["{'a': 1}['a']"]);
        assert_eq!(holes(r#"{"\"}"}"#), vec![r#""\"}""#]);
    }

    #[test]
    fn doubled_braces_are_literal() {
        assert_eq!(parse("a{{b}}c").unwrap(), vec![Piece::Text("a{b}c".into())]);
    }

    #[test]
    fn unbalanced_braces_are_errors_with_offsets() {
        assert_eq!(parse("ab{claims.x").unwrap_err().0, 2);
        assert_eq!(parse("ab}").unwrap_err().0, 2);
        assert_eq!(parse("x{ }").unwrap_err().0, 1);
    }

    #[test]
    fn json_holes_stay_inside_their_string() {
        assert_eq!(
            json_string_content("x\",\"player\":\"victim\\\n"),
            "x\\\",\\\"player\\\":\\\"victim\\\\\\n"
        );
        assert_eq!(json_string_content("plain 42"), "plain 42");
    }

    #[test]
    fn a_rendered_path_has_no_dot_segment() {
        for bad in [
            "http://h/a/../b",
            "http://h/./b",
            "https://h:1/a/..?x=1",
            "http://h/..",
        ] {
            assert!(no_dot_segments(bad).is_err(), "{bad}");
        }
        for ok in [
            "http://h/a/..b/c",
            "http://h/a?x=..",
            "http://h",
            "http://h/a.b/.c",
        ] {
            assert_eq!(no_dot_segments(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn url_holes_cannot_change_the_path() {
        let enc: String = utf8_percent_encode("../a/b?c#d é", HOLE).collect();
        assert_eq!(enc, "..%2Fa%2Fb%3Fc%23d%20%C3%A9");
    }
}
