//! JSON bodies read one way only. serde_json keeps the last of duplicate keys, other parsers
//! keep the first or fail, and Go's `encoding/json` matches field names without regard to case
//! (`AMOUNT` fills `Amount`); a rule that checks `body.amount` must see the number the upstream
//! will act on, so an object with two keys that are equal, or equal when case is folded, at any
//! depth, is refused.
//!
//! Numbers: integers in the 64-bit ranges are exact; any other number is an IEEE 754 double
//! (as in JavaScript, Python and Go), and a number of 2^64 or more, or below -2^63, is refused,
//! because parsers disagree about what such a number is (a rounded double, a big integer, an
//! error).

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;
use thiserror::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum StrictJsonError {
    #[error("not valid JSON")]
    Syntax,
    #[error("an object has a duplicate key")]
    DuplicateKey,
    #[error("a number's magnitude is 2^64 or more")]
    NumberOutOfRange,
}

const DUPLICATE: &str = "claimgate: duplicate key";
const OUT_OF_RANGE: &str = "claimgate: number out of range";
/// 2^64 and -2^63 as doubles: the ends of the exact integer ranges.
const UPPER: f64 = 18_446_744_073_709_551_616.0;
const LOWER: f64 = -9_223_372_036_854_775_808.0;

/// Parses `bytes` as one JSON value under the rules above.
pub fn parse(bytes: &[u8]) -> Result<Value, StrictJsonError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = Strict.deserialize(&mut de).map_err(classify)?;
    de.end().map_err(|_| StrictJsonError::Syntax)?;
    Ok(value)
}

fn classify(e: serde_json::Error) -> StrictJsonError {
    let text = e.to_string();
    if text.starts_with(DUPLICATE) {
        StrictJsonError::DuplicateKey
    } else if text.starts_with(OUT_OF_RANGE) || text.contains("number out of range") {
        StrictJsonError::NumberOutOfRange
    } else {
        StrictJsonError::Syntax
    }
}

#[derive(Clone, Copy)]
struct Strict;

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = Value;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        // An integer literal of exactly -2^63 arrives as an i64; here it stands for a rounded one.
        if !v.is_finite() || v >= UPPER || v <= LOWER {
            return Err(E::custom(OUT_OF_RANGE));
        }
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom(OUT_OF_RANGE))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(Strict)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        let mut folded = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !folded.insert(fold(&key)) {
                return Err(de::Error::custom(DUPLICATE));
            }
            let v = map.next_value_seed(Strict)?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

/// A key as a case-insensitive matcher sees it (Unicode lower case; `ſ` and the Kelvin sign
/// fold to `s` and `k`, as in Go's `strings.EqualFold`).
fn fold(key: &str) -> String {
    key.chars()
        .flat_map(char::to_lowercase)
        .map(|c| if c == 'ſ' { 's' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_json_parses_as_serde_json_does() {
        for text in [
            r#"{"a":1,"b":[1,2,{"c":null}],"d":"x","e":-2.5,"f":true}"#,
            "[]",
            "1",
            "18446744073709551615",
            "-9223372036854775808",
            "1e19",
            r#"{"a":{"a":1}}"#,
            r#"[{"k":1},{"k":2}]"#,
            r#"{"\u0061":1,"b":2}"#,
        ] {
            let strict = parse(text.as_bytes()).unwrap();
            let plain: Value = serde_json::from_str(text).unwrap();
            assert_eq!(strict, plain, "{text}");
        }
    }

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        for text in [
            r#"{"amount":1,"amount":1000000}"#,
            r#"{"x":{"a":1,"a":2}}"#,
            r#"[{"a":1,"a":1}]"#,
            r#"{"a":1,"\u0061":2}"#,
            r#"{"amount":1,"AMOUNT":1000000}"#,
            r#"{"Amount":1,"amount":2}"#,
            r#"{"s":1,"ſ":2}"#,
            r#"{"k":1,"\u212a":2}"#,
        ] {
            assert_eq!(
                parse(text.as_bytes()),
                Err(StrictJsonError::DuplicateKey),
                "{text}"
            );
        }
    }

    #[test]
    fn numbers_beyond_64_bits_and_bad_syntax_are_refused() {
        for text in [
            "18446744073709551616",
            "-1e20",
            "1e400",
            "[1e300]",
            "-9223372036854775809",
        ] {
            assert_eq!(
                parse(text.as_bytes()),
                Err(StrictJsonError::NumberOutOfRange),
                "{text}"
            );
        }
        for text in ["{", "{\"a\":1} x", "", "NaN", "[1,]"] {
            assert_eq!(
                parse(text.as_bytes()),
                Err(StrictJsonError::Syntax),
                "{text}"
            );
        }
    }
}
