//! The CEL environment: one standard environment and one root context, built when policies load;
//! each request evaluates in a child scope whose variables come from [`super::activation::Activation`].

use super::regexes::Regexes;
use cel::common::value::Val;
use cel::objects::{Key, Map};
use cel::{Context, Env, Program, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// Compiled-once CEL state shared by every request of a policy set.
pub struct CelRuntime {
    env: Arc<Env>,
    root: Context<'static, 'static>,
    /// The patterns of `matches` written as literals, compiled at load.
    regexes: Arc<Regexes>,
}

impl std::fmt::Debug for CelRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CelRuntime")
    }
}

impl Default for CelRuntime {
    fn default() -> Self {
        Self::new()
    }
}

impl CelRuntime {
    pub fn new() -> Self {
        let env = Arc::new(Env::stdlib());
        let mut root = Context::with_env(env.clone());
        let regexes = Arc::new(Regexes::default());
        super::functions::register(&mut root, regexes.clone());
        CelRuntime { env, root, regexes }
    }

    pub fn compile(&self, src: &str) -> Result<Program, cel::ParseErrors> {
        self.env.compile(src)
    }

    /// The root every request scope is a child of.
    pub fn root(&self) -> &Context<'static, 'static> {
        &self.root
    }

    /// The root context alone, for a caller that keeps it (load-time probes).
    pub fn into_root(self) -> Context<'static, 'static> {
        self.root
    }

    pub fn regexes(&self) -> &Regexes {
        &self.regexes
    }
}

/// Converts JSON (claims, bodies) to CEL. Integers stay integers so `claims.n == 3` holds; only
/// values beyond `i64` become `uint`, and fractions become `double`.
pub fn json_to_value(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::Int(i)
            } else if let Some(u) = n.as_u64() {
                Value::UInt(u)
            } else {
                Value::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        serde_json::Value::String(s) => Value::String(Arc::new(s.clone())),
        serde_json::Value::Array(a) => Value::List(Arc::new(a.iter().map(json_to_value).collect())),
        serde_json::Value::Object(o) => json_object_to_value(o),
    }
}

pub fn json_object_to_value(o: &serde_json::Map<String, serde_json::Value>) -> Value {
    let map: HashMap<Key, Value> = o
        .iter()
        .map(|(k, v)| (Key::String(Arc::new(k.clone())), json_to_value(v)))
        .collect();
    Value::Map(Map { map: Arc::new(map) })
}

/// A JSON value built straight as the interpreter stores variables: the same values as
/// `to_val(json_to_value(v))`, without the intermediate [`Value`] tree that conversion builds
/// and then copies (once for the tree, again for every map). Claims of an uncached token and
/// request bodies are converted once per request, so the copies were on the request path.
pub fn json_to_val(v: &serde_json::Value) -> Box<dyn Val> {
    use cel::common::types::{CelBool, CelDouble, CelInt, CelList, CelNull, CelString, CelUInt};
    match v {
        serde_json::Value::Null => Box::new(CelNull),
        serde_json::Value::Bool(b) => Box::new(CelBool::from(*b)),
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Box::new(CelInt::from(i))
            } else if let Some(u) = n.as_u64() {
                Box::new(CelUInt::from(u))
            } else {
                Box::new(CelDouble::from(n.as_f64().unwrap_or(f64::NAN)))
            }
        }
        serde_json::Value::String(s) => Box::new(CelString::from(s.clone())),
        serde_json::Value::Array(a) => {
            Box::new(CelList::from(a.iter().map(json_to_val).collect::<Vec<_>>()))
        }
        serde_json::Value::Object(o) => json_object_to_val(o),
    }
}

/// [`json_to_val`] of a JSON object.
pub fn json_object_to_val(o: &serde_json::Map<String, serde_json::Value>) -> Box<dyn Val> {
    use cel::common::types::{CelMap, CelMapKey, CelString};
    let map: HashMap<CelMapKey<'static>, Box<dyn Val>> = o
        .iter()
        .map(|(k, v)| {
            (
                CelMapKey::String(CelString::from(k.clone())),
                json_to_val(v),
            )
        })
        .collect();
    Box::new(CelMap::from(map))
}

/// Boxes a value as the interpreter stores variables.
pub fn to_val(v: Value) -> Box<dyn Val> {
    // Only `Function` values fail to convert, and none is ever built here.
    v.try_into().unwrap_or_else(|_| {
        let null: Box<dyn Val> = Value::Null.try_into().unwrap_or_else(|_| unreachable!());
        null
    })
}

/// A map of strings to strings built straight as the interpreter's value, for request facts read
/// on every request (`request.params`, `query`, `headers`): no intermediate `Value` to convert.
pub fn string_val_map<I>(entries: I) -> Box<dyn Val>
where
    I: IntoIterator<Item = (String, String)>,
{
    use cel::common::types::{CelMap, CelMapKey, CelString};
    let map: std::collections::HashMap<CelMapKey<'static>, Box<dyn Val>> = entries
        .into_iter()
        .map(|(k, v)| {
            let v: Box<dyn Val> = Box::new(CelString::from(v));
            (CelMapKey::String(CelString::from(k)), v)
        })
        .collect();
    Box::new(CelMap::from(map))
}

/// A map of string keys, for request facts.
pub fn string_map<I, K, V>(entries: I) -> Value
where
    I: IntoIterator<Item = (K, V)>,
    K: Into<String>,
    V: Into<Value>,
{
    let map: HashMap<Key, Value> = entries
        .into_iter()
        .map(|(k, v)| (Key::String(Arc::new(k.into())), v.into()))
        .collect();
    Value::Map(Map { map: Arc::new(map) })
}

/// Renders a CEL result as a header value: scalars as text, lists of scalars comma-separated,
/// maps and nested lists as JSON. `None` for null: the header is then not sent.
pub fn to_header_text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.to_string()),
        Value::Int(i) => Some(i.to_string()),
        Value::UInt(u) => Some(u.to_string()),
        Value::Float(f) => Some(f.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Timestamp(t) => Some(t.to_rfc3339()),
        Value::List(items)
            if items
                .iter()
                .all(|i| !matches!(i, Value::List(_) | Value::Map(_))) =>
        {
            Some(
                items
                    .iter()
                    .filter_map(to_header_text)
                    .collect::<Vec<_>>()
                    .join(","),
            )
        }
        other => other.json().ok().map(|j| j.to_string()),
    }
}

/// Renders a CEL result as a forwarded header value that the upstream can read back exactly:
/// scalars as text, lists and maps as compact JSON (`["a,b","c"]`), so an element containing a
/// comma stays one element. `None`: not sent (null). A string that HTTP cannot carry as it is
/// (surrounding spaces or tabs, which every HTTP parser strips, or control characters) is an
/// error: the request is denied rather than forwarded with another value.
pub fn to_forward_text(v: &Value) -> Result<Option<String>, String> {
    let text = match v {
        Value::Null => return Ok(None),
        Value::List(_) | Value::Map(_) => match v.json() {
            Ok(j) => j.to_string(),
            Err(_) => return Err("the value cannot be written as JSON".into()),
        },
        other => match to_header_text(other) {
            Some(t) => t,
            None => return Ok(None),
        },
    };
    if text.starts_with([' ', '\t']) || text.ends_with([' ', '\t']) {
        return Err("the value starts or ends with white space, which HTTP does not keep".into());
    }
    if text.chars().any(|c| c.is_control()) {
        return Err("the value has a control character".into());
    }
    Ok(Some(text))
}

/// Renders a CEL result as message text.
pub fn to_message_text(v: &Value) -> String {
    to_header_text(v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_numbers_keep_their_kind() {
        let v: serde_json::Value = serde_json::json!({"a": 3, "b": 2.5, "c": u64::MAX});
        let rt = CelRuntime::new();
        let mut ctx = rt.root().new_inner_scope();
        ctx.add_variable_from_value("claims", json_to_value(&v));
        let p = rt
            .compile("claims.a == 3 && claims.b > 2.0 && claims.c > 0u")
            .unwrap();
        assert_eq!(p.execute(&ctx), Ok(Value::Bool(true)));
    }

    #[test]
    fn json_converts_straight_to_what_the_two_step_conversion_gives() {
        let cases = [
            serde_json::json!(null),
            serde_json::json!(true),
            serde_json::json!(-7),
            serde_json::json!(u64::MAX),
            serde_json::json!(2.5),
            serde_json::json!(""),
            serde_json::json!("é"),
            serde_json::json!([]),
            serde_json::json!({}),
            serde_json::json!({
                "sub": "u", "n": [1, 2.5, u64::MAX, null, [true]],
                "m": {"a": {"b": []}, "": "empty key"}
            }),
        ];
        for v in &cases {
            let two_step = to_val(json_to_value(v));
            let direct = json_to_val(v);
            let a = Value::try_from(two_step.as_ref()).unwrap();
            let b = Value::try_from(direct.as_ref()).unwrap();
            assert_eq!(a, b, "{v}");
        }
    }

    #[test]
    fn header_text_of_lists_and_maps() {
        let v = json_to_value(&serde_json::json!(["a", 1, true]));
        assert_eq!(to_header_text(&v).as_deref(), Some("a,1,true"));
        let v = json_to_value(&serde_json::json!({"k": [1]}));
        assert_eq!(to_header_text(&v).as_deref(), Some(r#"{"k":[1]}"#));
        assert_eq!(to_header_text(&Value::Null), None);
    }

    #[test]
    fn forwarded_values_can_be_read_back_exactly() {
        let list = Value::List(Arc::new(vec![Value::from("a,b"), Value::from("c")]));
        assert_eq!(
            to_forward_text(&list).unwrap().as_deref(),
            Some(r#"["a,b","c"]"#)
        );
        let back: Vec<String> =
            serde_json::from_str(&to_forward_text(&list).unwrap().unwrap()).unwrap();
        assert_eq!(back, ["a,b", "c"]);
        assert_eq!(
            to_forward_text(&Value::from("alice")).unwrap().as_deref(),
            Some("alice")
        );
        assert_eq!(
            to_forward_text(&Value::Int(3)).unwrap().as_deref(),
            Some("3")
        );
        assert_eq!(to_forward_text(&Value::Null).unwrap(), None);
        for bad in [" alice", "alice\t", "a\nb", "a\u{0}b"] {
            assert!(to_forward_text(&Value::from(bad)).is_err(), "{bad:?}");
        }
    }
}
