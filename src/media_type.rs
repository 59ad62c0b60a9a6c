//! `Content-Type` of a body the rules read (or whose field names they check), parsed to the letter of RFC 9110 §8.3.1: one
//! `type/subtype` of tokens, then `; name=value` parameters. Anything else is refused rather
//! than read one way here and another by the upstream: PHP, for one, cuts the type at the
//! first `;`, `,` or space, so `application/x-www-form-urlencoded,x/y+json` is JSON to a
//! lenient `+json` check and a form to PHP.

/// Why a body's `Content-Type` is not JSON the rules can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaTypeError {
    /// Not one `type/subtype` with well-formed parameters.
    Malformed,
    /// Well-formed, not `application/json` nor `application/*+json`.
    NotJson,
    /// A `charset` other than UTF-8 (RFC 8259 §8.1: JSON exchanged between systems is UTF-8).
    Charset,
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Reads `*( OWS ";" OWS [ name "=" value ] )` (RFC 9110 §5.6.6) and gives the parameters,
/// quoted values unescaped; `None` when it is not that.
fn parameters(mut rest: &str) -> Option<Vec<(&str, String)>> {
    let ows = |s: &str| s.trim_start_matches([' ', '\t']).len();
    let mut out = Vec::new();
    loop {
        rest = &rest[rest.len() - ows(rest)..];
        if rest.is_empty() {
            return Some(out);
        }
        rest = rest.strip_prefix(';')?;
        rest = &rest[rest.len() - ows(rest)..];
        if rest.is_empty() || rest.starts_with(';') {
            continue;
        }
        let name_len = rest.bytes().take_while(|b| is_tchar(*b)).count();
        let name = &rest[..name_len];
        rest = rest[name_len..].strip_prefix('=')?;
        if name.is_empty() {
            return None;
        }
        let value = if let Some(quoted) = rest.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let end = loop {
                match chars.next()? {
                    (_, '\\') => value.push(chars.next()?.1),
                    (i, '"') => break i,
                    (_, c) if c == '\t' || (' '..='~').contains(&c) => value.push(c),
                    _ => return None,
                }
            };
            rest = &quoted[end + 1..];
            value
        } else {
            let len = rest.bytes().take_while(|b| is_tchar(*b)).count();
            if len == 0 {
                return None;
            }
            let value = rest[..len].to_string();
            rest = &rest[len..];
            value
        };
        out.push((name, value));
    }
}

/// One well-formed media type: `type/subtype` and its parameters (names as sent, quoted
/// values unescaped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaType<'a> {
    pub ty: &'a str,
    pub subtype: &'a str,
    pub params: Vec<(&'a str, String)>,
}

impl MediaType<'_> {
    /// Whether this is `ty/subtype`, ignoring letter case.
    pub fn is(&self, ty: &str, subtype: &str) -> bool {
        self.ty.eq_ignore_ascii_case(ty) && self.subtype.eq_ignore_ascii_case(subtype)
    }

    /// `application/json` or `application/*+json`.
    pub fn is_json(&self) -> bool {
        let s = self.subtype;
        self.ty.eq_ignore_ascii_case("application")
            && (s.eq_ignore_ascii_case("json")
                || s.len() > 5 && s[s.len() - 5..].eq_ignore_ascii_case("+json"))
    }

    /// The one value of parameter `name` (`Err` when it is given twice).
    pub fn param(&self, name: &str) -> Result<Option<&str>, MediaTypeError> {
        let mut values = self
            .params
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str());
        let value = values.next();
        if values.next().is_some() {
            return Err(MediaTypeError::Malformed);
        }
        Ok(value)
    }
}

/// Parses `value` as one media type, or refuses it.
pub fn parse(value: &str) -> Result<MediaType<'_>, MediaTypeError> {
    let value = value.trim_matches([' ', '\t']);
    let type_len = value.bytes().take_while(|b| is_tchar(*b)).count();
    let (ty, rest) = value.split_at(type_len);
    let rest = rest.strip_prefix('/').ok_or(MediaTypeError::Malformed)?;
    let subtype_len = rest.bytes().take_while(|b| is_tchar(*b)).count();
    let (subtype, rest) = rest.split_at(subtype_len);
    if ty.is_empty() || subtype.is_empty() {
        return Err(MediaTypeError::Malformed);
    }
    let params = parameters(rest).ok_or(MediaTypeError::Malformed)?;
    Ok(MediaType {
        ty,
        subtype,
        params,
    })
}

/// Whether the body has a content coding other than `identity` (or an unreadable
/// `Content-Encoding`): bytes the rules cannot read as they are, and an upstream that inflates
/// them would read others.
pub fn has_content_coding(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(http::header::CONTENT_ENCODING)
        .iter()
        .any(|v| {
            v.to_str().map_or(true, |v| {
                v.split(',')
                    .map(|c| c.trim_matches([' ', '\t']))
                    .any(|c| !c.is_empty() && !c.eq_ignore_ascii_case("identity"))
            })
        })
}

/// Checks that `value` is one JSON media type the rules may read.
pub fn check_json(value: &str) -> Result<(), MediaTypeError> {
    let media = parse(value)?;
    let charset = media.param("charset")?;
    if !media.is_json() {
        return Err(MediaTypeError::NotJson);
    }
    match charset {
        Some(c) if !c.eq_ignore_ascii_case("utf-8") && !c.eq_ignore_ascii_case("utf8") => {
            Err(MediaTypeError::Charset)
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use MediaTypeError::*;

    #[test]
    fn json_types_with_well_formed_parameters_pass() {
        for v in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            "application/json;charset=\"UTF-8\"",
            "application/json ; charset=utf-8 ; v=1",
            "application/problem+json",
            "application/vnd.api+json; ext=\"a;b\"",
            "application/json;",
        ] {
            assert_eq!(check_json(v), Ok(()), "{v}");
        }
    }

    #[test]
    fn a_list_or_a_space_in_the_type_is_malformed() {
        for v in [
            "application/x-www-form-urlencoded,x/y+json",
            "application/x-www-form-urlencoded x+json",
            "application/json, text/plain",
            "application /json",
            "application/json/x",
            "application/",
            "/json",
            "application/json; charset",
            "application/json; charset=utf-8; charset=latin1",
            "application/json; a=\"unterminated",
            "application/json; a=b c",
            "",
        ] {
            assert_eq!(check_json(v), Err(Malformed), "{v}");
        }
    }

    #[test]
    fn other_types_and_charsets_are_not_json() {
        assert_eq!(check_json("text/plain"), Err(NotJson));
        assert_eq!(
            check_json("application/x-www-form-urlencoded"),
            Err(NotJson)
        );
        assert_eq!(check_json("application/+json"), Err(NotJson));
        assert_eq!(check_json("application/json; charset=utf-7"), Err(Charset));
        assert_eq!(
            check_json("application/json; charset=\"iso-8859-1\""),
            Err(Charset)
        );
    }
}
