//! A token's claims set, decoded once: the claims some expression reads become JSON values in
//! the claims map, the registered claims the gateway itself reads go to their own slots
//! ([`Registered`]), the others are skipped by the parser (never allocated), and every claim,
//! read or not, is held to `limits.max_claims_depth`, so which claims a policy names never
//! changes which tokens pass.

use super::claim_names::ClaimNames;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;

/// What of a new token's claims is decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimsRead {
    pub names: ClaimNames,
    /// Deepest nesting allowed in a claim (a scalar is 1); a deeper claim refuses the token.
    pub max_depth: usize,
}

impl ClaimsRead {
    /// Every claim, any depth: verification outside a policy set.
    pub fn everything() -> ClaimsRead {
        ClaimsRead {
            names: ClaimNames::All,
            max_depth: usize::MAX,
        }
    }
}

/// The decoded claims, and whether one of them (read or not) is nested too deeply.
#[derive(Debug)]
pub struct Decoded {
    /// The claims some expression names (all of them with [`ClaimNames::All`]).
    pub claims: Map<String, Value>,
    pub registered: Registered,
    pub too_deep: bool,
}

/// The registered claims the gateway reads whatever the rules name: `iss`, `aud`, `exp`, `nbf`,
/// `iat` (checked on every token), `sub` (decision logs) and `cnf` (tokens bound to a client
/// certificate). Each has its own slot instead of a place in the claims map: a map entry costs
/// its name's allocation and an ordered insert (string compares), and most policies name none
/// of them. A claim a policy names is in the map as well.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Registered {
    pub iss: Option<Value>,
    pub aud: Option<Value>,
    pub exp: Option<Value>,
    pub nbf: Option<Value>,
    pub iat: Option<Value>,
    pub sub: Option<Value>,
    pub cnf: Option<Value>,
}

impl Registered {
    /// The slot of the registered claim `name`; `None` for any other claim.
    fn slot(&mut self, name: &str) -> Option<&mut Option<Value>> {
        Some(match name {
            "iss" => &mut self.iss,
            "aud" => &mut self.aud,
            "exp" => &mut self.exp,
            "nbf" => &mut self.nbf,
            "iat" => &mut self.iat,
            "sub" => &mut self.sub,
            "cnf" => &mut self.cnf,
            _ => return None,
        })
    }

    /// The registered claims of a whole claims map (tokens built by tools and tests).
    pub fn from_map(claims: &Map<String, Value>) -> Registered {
        let mut r = Registered::default();
        for (name, value) in claims {
            if let Some(slot) = r.slot(name) {
                *slot = Some(value.clone());
            }
        }
        r
    }
}

/// Decodes a claims set (a JSON object, RFC 7519 §7.2) from `json`.
pub fn decode(json: &str, read: &ClaimsRead) -> serde_json::Result<Decoded> {
    let mut de = serde_json::Deserializer::from_str(json);
    let decoded = de.deserialize_map(ClaimsVisitor(read))?;
    de.end()?;
    Ok(decoded)
}

struct ClaimsVisitor<'r>(&'r ClaimsRead);

impl<'de> Visitor<'de> for ClaimsVisitor<'_> {
    type Value = Decoded;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut entries: A) -> Result<Decoded, A::Error> {
        let read = self.0;
        let mut claims = Map::new();
        let mut registered = Registered::default();
        let mut too_deep = false;
        // A repeated name: the last one counts, in the map and in a slot alike.
        while let Some(name) = entries.next_key::<Name<'de>>()? {
            let named = read.names.keeps(name.as_str());
            let slot = registered.slot(name.as_str());
            if slot.is_none() && !named {
                too_deep |= entries.next_value_seed(Skip {
                    room: read.max_depth,
                })?;
                continue;
            }
            let value: Value = entries.next_value()?;
            too_deep |= depth(&value, read.max_depth) > read.max_depth;
            match slot {
                Some(slot) => {
                    if named {
                        claims.insert(name.into_owned(), value.clone());
                    }
                    *slot = Some(value);
                }
                None => {
                    claims.insert(name.into_owned(), value);
                }
            }
        }
        Ok(Decoded {
            claims,
            registered,
            too_deep,
        })
    }
}

/// A claim's name: borrowed from the text unless it had escapes.
enum Name<'de> {
    Borrowed(&'de str),
    Owned(String),
}

impl Name<'_> {
    fn as_str(&self) -> &str {
        match self {
            Name::Borrowed(s) => s,
            Name::Owned(s) => s,
        }
    }

    fn into_owned(self) -> String {
        match self {
            Name::Borrowed(s) => s.to_string(),
            Name::Owned(s) => s,
        }
    }
}

impl<'de> serde::Deserialize<'de> for Name<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a claim name")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Name<'de>, E> {
                Ok(Name::Borrowed(s))
            }
            fn visit_str<E>(self, s: &str) -> Result<Name<'de>, E> {
                Ok(Name::Owned(s.to_string()))
            }
            fn visit_string<E>(self, s: String) -> Result<Name<'de>, E> {
                Ok(Name::Owned(s))
            }
        }
        d.deserialize_str(V)
    }
}

/// Skips a value nothing reads, telling whether it nests deeper than `room` levels (a scalar
/// takes one).
#[derive(Clone, Copy)]
struct Skip {
    room: usize,
}

impl<'de> DeserializeSeed<'de> for Skip {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        // Not `deserialize_ignored_any`: the parser would skip the value without showing its
        // structure, and its depth must be judged.
        d.deserialize_any(self)
    }
}

impl Skip {
    /// The seed for the elements of a container at this level; `None` when any element is
    /// already too deep (then the rest is skipped unseen).
    fn inner(self) -> Option<Skip> {
        match self.room {
            0 | 1 => None,
            room => Some(Skip { room: room - 1 }),
        }
    }
}

impl<'de> Visitor<'de> for Skip {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    // A scalar takes one level: too deep only where no level is left.
    fn visit_bool<E>(self, _: bool) -> Result<bool, E> {
        Ok(self.room == 0)
    }
    fn visit_i64<E>(self, _: i64) -> Result<bool, E> {
        Ok(self.room == 0)
    }
    fn visit_u64<E>(self, _: u64) -> Result<bool, E> {
        Ok(self.room == 0)
    }
    fn visit_f64<E>(self, _: f64) -> Result<bool, E> {
        Ok(self.room == 0)
    }
    fn visit_str<E>(self, _: &str) -> Result<bool, E> {
        Ok(self.room == 0)
    }
    fn visit_unit<E>(self) -> Result<bool, E> {
        Ok(self.room == 0)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<bool, A::Error> {
        let mut deep = self.room == 0;
        match self.inner() {
            Some(inner) => {
                while let Some(d) = items.next_element_seed(inner)? {
                    deep |= d;
                }
            }
            None => {
                while items.next_element::<IgnoredAny>()?.is_some() {
                    deep = true;
                }
            }
        }
        Ok(deep)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut entries: A) -> Result<bool, A::Error> {
        let mut deep = self.room == 0;
        let inner = self.inner();
        while entries.next_key::<IgnoredAny>()?.is_some() {
            match inner {
                Some(i) => deep |= entries.next_value_seed(i)?,
                None => {
                    entries.next_value::<IgnoredAny>()?;
                    deep = true;
                }
            }
        }
        Ok(deep)
    }
}

/// Nesting depth of a JSON value (a scalar is 1), counting no further than `stop + 1`.
pub fn depth(v: &Value, stop: usize) -> usize {
    if stop == 0 {
        return 1;
    }
    1 + match v {
        Value::Array(a) => a.iter().map(|x| depth(x, stop - 1)).max().unwrap_or(0),
        Value::Object(o) => o.values().map(|x| depth(x, stop - 1)).max().unwrap_or(0),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn read(names: &[&str], max_depth: usize) -> ClaimsRead {
        ClaimsRead {
            names: ClaimNames::only(names.iter().copied()),
            max_depth,
        }
    }

    #[test]
    fn only_registered_and_named_claims_are_decoded() {
        let json = r#"{"iss":"i","sub":"s","tier":"gold","scope":"a b","realm_access":{"roles":["x"]},"t\u0069er2":1}"#;
        let d = decode(json, &read(&["tier", "tier2"], 8)).unwrap();
        let names: Vec<&str> = d.claims.keys().map(String::as_str).collect();
        assert_eq!(names, ["tier", "tier2"]);
        assert_eq!(d.registered.iss, Some(Value::from("i")));
        assert_eq!(d.registered.sub, Some(Value::from("s")));
        assert!(!d.too_deep);
        // A registered claim a policy names is in both.
        let d = decode(json, &read(&["sub"], 8)).unwrap();
        assert_eq!(d.claims.get("sub"), Some(&Value::from("s")));
        assert_eq!(d.registered.sub, Some(Value::from("s")));
        let all = decode(json, &ClaimsRead::everything()).unwrap();
        let whole = serde_json::from_str::<Map<String, Value>>(json).unwrap();
        assert_eq!(all.claims, whole);
        assert_eq!(all.registered, Registered::from_map(&whole));
        assert_eq!(all.registered, d.registered);
    }

    /// A hostile token spells a registered claim twice, or with an escape: the claim the gateway
    /// checks and the claim a rule reads are one and the same (the last, as a whole decode).
    #[test]
    fn a_repeated_or_escaped_registered_claim_is_the_same_claim_in_slot_and_map() {
        for json in [
            r#"{"iss":"good","iss":"evil"}"#,
            r#"{"iss":"good","i\u0073s":"evil"}"#,
            r#"{"\u0069ss":"good","iss":"evil"}"#,
        ] {
            for named in [&["iss"][..], &[]] {
                let d = decode(json, &read(named, 8)).unwrap();
                assert_eq!(d.registered.iss, Some(Value::from("evil")), "{json}");
                if !named.is_empty() {
                    assert_eq!(d.claims.get("iss"), Some(&Value::from("evil")), "{json}");
                }
            }
            let whole: Map<String, Value> = serde_json::from_str(json).unwrap();
            assert_eq!(whole.get("iss"), Some(&Value::from("evil")), "{json}");
        }
    }

    #[test]
    fn what_is_not_a_json_object_is_refused() {
        for bad in [
            "[1]",
            "1",
            "\"x\"",
            "null",
            "{",
            r#"{"a":1} x"#,
            r#"{"a":}"#,
            r#"{"a":[1,}"#,
            "",
            // The claim `a` is skipped when no rule reads it, yet still parsed to the letter: a
            // bad escape, number or literal refuses the token as when it was decoded.
            r#"{"a":"\q"}"#,
            r#"{"a":"\ud800x"}"#,
            r#"{"a":01}"#,
            r#"{"a":[{"b":tru}]}"#,
            r#"{"a":1,}"#,
        ] {
            assert!(decode(bad, &read(&[], 8)).is_err(), "{bad}");
            assert!(decode(bad, &ClaimsRead::everything()).is_err(), "{bad}");
        }
    }

    /// A value `levels` deep, objects and arrays alternating.
    fn nested(levels: usize) -> Value {
        (1..levels).fold(Value::from(1), |v, i| {
            if i % 2 == 0 {
                Value::Array(vec![v])
            } else {
                serde_json::json!({ "k": v })
            }
        })
    }

    #[test]
    fn empty_containers_count_one_level() {
        for (v, depth_of) in [
            ("[]", 1),
            ("{}", 1),
            ("[[]]", 2),
            (r#"{"a":{}}"#, 2),
            ("[{},[1]]", 3),
        ] {
            let json = format!(r#"{{"x":{v}}}"#);
            for max in 0..4 {
                let want = depth_of > max;
                assert_eq!(
                    decode(&json, &read(&["x"], max)).unwrap().too_deep,
                    want,
                    "{v} {max}"
                );
                assert_eq!(
                    decode(&json, &read(&[], max)).unwrap().too_deep,
                    want,
                    "{v} {max} (skipped)"
                );
            }
        }
    }

    /// A claim name: registered, named by a policy, or neither.
    fn claim_name() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            "iss", "aud", "exp", "nbf", "iat", "sub", "cnf", "tier", "roles", "jti", "scope",
        ])
        .prop_map(str::to_string)
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            "[a-z]{0,6}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 12, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                prop::collection::btree_map("[a-z]{1,3}", inner, 0..3)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        // Whatever a policy names: the map holds exactly the named claims, and the registered
        // slots exactly the registered claims, as a whole decode of the set sees them.
        #[test]
        fn the_map_holds_the_named_claims_and_the_slots_the_registered_ones(
            set in prop::collection::btree_map(claim_name(), json_value(), 0..8),
            named in prop::collection::btree_set(claim_name(), 0..5),
        ) {
            let whole: Map<String, Value> = set.into_iter().collect();
            let json = Value::Object(whole.clone()).to_string();
            let names: Vec<&str> = named.iter().map(String::as_str).collect();
            let d = decode(&json, &read(&names, 64)).unwrap();
            let expected: Map<String, Value> = whole
                .iter()
                .filter(|(k, _)| named.contains(*k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            prop_assert_eq!(d.claims, expected);
            prop_assert_eq!(d.registered, Registered::from_map(&whole));
        }

        // Read or skipped, a claim is too deep exactly when its depth exceeds the limit.
        #[test]
        fn depth_is_judged_the_same_whether_the_claim_is_read_or_not(levels in 1usize..12, max in 0usize..10) {
            let v = nested(levels);
            let json = serde_json::json!({"iss": "i", "x": v, "y": "z"}).to_string();
            let expected = levels > max;
            prop_assert_eq!(depth(&v, max) > max, expected);
            prop_assert_eq!(decode(&json, &read(&["x"], max)).unwrap().too_deep, expected);
            prop_assert_eq!(decode(&json, &read(&[], max)).unwrap().too_deep, expected);
        }
    }
}
