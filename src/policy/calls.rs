//! Calls checked at load: every function an expression calls must exist, in the form it is
//! called (`f(x)` or `x.f()`), with that many arguments, and literal arguments must be valid
//! where the function defines them (time zones, regular expressions, timestamps, durations,
//! and the arguments of claimgate's own functions). The interpreter's registry is asked, never
//! a list kept beside it: a name is known when the interpreter resolves a call to it.

use super::cel::CelRuntime;
use super::functions::{literal_check, CUSTOM};
use super::variable::Variable;
use cel::common::ast::{CallExpr, EntryExpr, Expr, LiteralValue};
use cel::{Context, ExecutionError, IdedExpr, Program, Value};
use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

/// A call that cannot work, at node `id` of the expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallError {
    pub id: u64,
    /// For an error about the call itself, the function name's length: the parser places a
    /// call at its `(`, and the name written before it is what the error is about.
    pub name_len: usize,
    pub message: String,
}

/// Every call of `e` that cannot work.
pub fn check(e: &IdedExpr, cel: &CelRuntime) -> Vec<CallError> {
    let mut out = Vec::new();
    walk(e, &mut |node| {
        if let Expr::Call(c) = &node.expr {
            if let Some(err) = check_call(node.id, c, cel) {
                out.push(err);
            }
        }
    });
    out
}

fn walk(e: &IdedExpr, f: &mut dyn FnMut(&IdedExpr)) {
    f(e);
    match &e.expr {
        Expr::Call(c) => {
            if let Some(t) = &c.target {
                walk(t, f);
            }
            for a in &c.args {
                walk(a, f);
            }
        }
        Expr::Select(s) => walk(&s.operand, f),
        Expr::List(l) => l.elements.iter().for_each(|x| walk(x, f)),
        Expr::Map(m) => m.entries.iter().for_each(|en| entry(en, f)),
        Expr::Struct(s) => s.entries.iter().for_each(|en| entry(en, f)),
        Expr::Comprehension(c) => {
            for x in [
                &c.iter_range,
                &c.accu_init,
                &c.loop_cond,
                &c.loop_step,
                &c.result,
            ] {
                walk(x, f);
            }
        }
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => {}
    }
}

fn entry(en: &cel::common::ast::IdedEntryExpr, f: &mut dyn FnMut(&IdedExpr)) {
    match &en.expr {
        EntryExpr::MapEntry(m) => {
            walk(&m.key, f);
            walk(&m.value, f);
        }
        EntryExpr::StructField(s) => walk(&s.value, f),
    }
}

/// How a function is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Form {
    /// `f(x, y)`
    Global,
    /// `x.f(y)`
    Member,
}

/// The macros the parser expands, with how they are written: a call that still carries one of
/// these names after parsing was written with the wrong shape.
const MACROS: &[(&str, &str)] = &[
    ("has", "has(x.field)"),
    ("all", "list.all(x, predicate)"),
    ("exists", "list.exists(x, predicate)"),
    ("exists_one", "list.exists_one(x, predicate)"),
    (
        "map",
        "list.map(x, expression) or list.map(x, predicate, expression)",
    ),
    ("filter", "list.filter(x, predicate)"),
];

/// Functions of the CEL standard library, offered as suggestions for a misspelt name (only
/// those the registry knows are offered), with the [`TIME_ZONE_ACCESSORS`]. Acceptance never
/// depends on these lists.
const STANDARD: &[&str] = &[
    "bool",
    "bytes",
    "contains",
    "double",
    "duration",
    "dyn",
    "endsWith",
    "int",
    "matches",
    "size",
    "startsWith",
    "string",
    "timestamp",
    "type",
    "uint",
    "max",
    "min",
    "optional.of",
    "optional.none",
    "optional.ofNonZeroValue",
    "hasValue",
    "value",
    "or",
    "orValue",
    "lowerAscii",
    "upperAscii",
    "trim",
    "split",
    "join",
    "replace",
    "indexOf",
    "lastIndexOf",
    "substring",
    "charAt",
    "base64.encode",
    "base64.decode",
];

/// Timestamp accessors whose one argument is a time zone.
const TIME_ZONE_ACCESSORS: &[&str] = &[
    "getDate",
    "getDayOfMonth",
    "getDayOfWeek",
    "getDayOfYear",
    "getFullYear",
    "getHours",
    "getMilliseconds",
    "getMinutes",
    "getMonth",
    "getSeconds",
];

/// The most arguments whose count is checked (type combinations grow as 12^(n+1)).
const MAX_CHECKED_ARGS: usize = 3;

fn check_call(id: u64, c: &CallExpr, cel: &CelRuntime) -> Option<CallError> {
    let name = c.func_name.as_str();
    // Operators (`_+_`, `@in`, `!_`) come from the parser and always exist.
    if !name.starts_with(|ch: char| ch.is_ascii_alphabetic()) {
        return None;
    }
    let err = |message: String| {
        Some(CallError {
            id,
            name_len: c.func_name.len(),
            message,
        })
    };
    let n = c.args.len();
    let (form, name) = match qualified(c) {
        Some(q) if PROBE.known(Form::Global, &q) => (Form::Global, q),
        _ if c.target.is_some() => (Form::Member, name.to_string()),
        _ => (Form::Global, name.to_string()),
    };
    if !PROBE.known(form, &name) {
        return err(unknown(form, &name));
    }
    // claimgate's own functions take their declared count (the interpreter would ignore
    // extra arguments); the standard library's are asked.
    let declared = CUSTOM.iter().find(|f| f.name == name).map(|f| match form {
        Form::Global => vec![f.arity],
        Form::Member => vec![f.arity.saturating_sub(1)],
    });
    let counts = match declared {
        Some(d) => (!d.contains(&n)).then_some(d),
        None if n <= MAX_CHECKED_ARGS && !PROBE.takes(form, &name, n) => Some(
            (0..=MAX_CHECKED_ARGS)
                .filter(|k| PROBE.takes(form, &name, *k))
                .collect(),
        ),
        None => None,
    };
    if let Some(counts) = counts {
        if counts.is_empty() {
            return err(format!(
                "`{name}` cannot be called with {n} argument(s) on any kind of value"
            ));
        }
        let counts: Vec<String> = counts.iter().map(|k| k.to_string()).collect();
        let how = match form {
            Form::Global => "",
            Form::Member => " after its receiver",
        };
        return err(format!(
            "`{name}` takes {} argument(s){how}, not {n}",
            counts.join(" or ")
        ));
    }
    literal_arguments(c, form, &name, cel).map(|(arg, message)| CallError {
        id: arg.unwrap_or(id),
        name_len: if arg.is_some() { 0 } else { c.func_name.len() },
        message,
    })
}

/// `optional.of` for `optional.of(x)`: a call whose target spells a name that, with the
/// function's, names a function. Never a variable's member (`claims.x.startsWith`).
fn qualified(c: &CallExpr) -> Option<String> {
    let mut parts = vec![c.func_name.clone()];
    let mut t = c.target.as_deref()?;
    loop {
        match &t.expr {
            Expr::Select(s) if !s.test => {
                parts.push(s.field.clone());
                t = &s.operand;
            }
            Expr::Ident(root) if Variable::parse(root).is_none() => {
                parts.push(root.clone());
                parts.reverse();
                return Some(parts.join("."));
            }
            _ => return None,
        }
    }
}

fn unknown(form: Form, name: &str) -> String {
    let other = match form {
        Form::Global => Form::Member,
        Form::Member => Form::Global,
    };
    if PROBE.known(other, name) {
        return match other {
            Form::Member => format!("`{name}` is called on a value: write `x.{name}(...)`"),
            Form::Global => format!("`{name}` is not called on a value: write `{name}(x, ...)`"),
        };
    }
    if let Some((_, shape)) = MACROS.iter().find(|(m, _)| *m == name) {
        return format!("`{name}` is written `{shape}`");
    }
    let known = STANDARD
        .iter()
        .chain(TIME_ZONE_ACCESSORS)
        .copied()
        .chain(CUSTOM.iter().map(|c| c.name))
        .filter(|k| PROBE.known(Form::Global, k) || PROBE.known(Form::Member, k));
    let best = known
        .map(|k| (strsim::damerau_levenshtein(name, k), k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min();
    match best {
        Some((_, k)) => format!("unknown function `{name}`; did you mean `{k}`?"),
        None => format!("unknown function `{name}`"),
    }
}

/// A literal argument the function defines as invalid: its node id and why.
fn literal_arguments(
    c: &CallExpr,
    form: Form,
    name: &str,
    cel: &CelRuntime,
) -> Option<(Option<u64>, String)> {
    let lit = |i: usize| -> Option<(&str, u64)> {
        let a = c.args.get(i)?;
        match &a.expr {
            Expr::Literal(LiteralValue::String(s)) => Some((s.inner(), a.id)),
            _ => None,
        }
    };
    let n = c.args.len();
    if form == Form::Member && n == 1 && TIME_ZONE_ACCESSORS.contains(&name) {
        let (tz, at) = lit(0)?;
        return PROBE
            .run(&format!("timestamp('2000-01-01T00:00:00Z').{name}(v)"), tz)
            .err()
            .map(|_| (Some(at), format!("`{tz}` is not a time zone (an IANA name such as `Europe/Berlin`, or an offset such as `+05:30`)")));
    }
    if name == "matches" && (n == 2 || form == Form::Member && n == 1) {
        let (pattern, at) = lit(n - 1)?;
        return cel.regexes().precompile(pattern).err().map(|e| {
            (
                Some(at),
                format!("`{pattern}` is not a valid regular expression: {e}"),
            )
        });
    }
    if form == Form::Global && n == 1 && (name == "timestamp" || name == "duration") {
        let (text, at) = lit(0)?;
        return PROBE.run(&format!("{name}(v)"), text).err().map(|e| {
            let what = if name == "timestamp" {
                "an RFC 3339 timestamp such as `2025-01-31T00:00:00Z`"
            } else {
                "a duration such as `90s`, `1h30m`"
            };
            (Some(at), format!("`{text}` is not {what} ({e})"))
        });
    }
    // As `x.f(a)`, `x` is the function's first argument and `a` its second.
    let shift = usize::from(form == Form::Member);
    let target = c.target.as_deref().and_then(|t| match &t.expr {
        Expr::Literal(LiteralValue::String(s)) if shift == 1 => Some((s.inner(), t.id)),
        _ => None,
    });
    if let Some(e) =
        target.and_then(|(text, at)| literal_check(name, 0, text).err().map(|e| (Some(at), e)))
    {
        return Some(e);
    }
    (0..n).find_map(|i| {
        let (text, at) = lit(i)?;
        literal_check(name, i + shift, text)
            .err()
            .map(|e| (Some(at), e))
    })
}

/// Asks the interpreter whether calls resolve. The registry is the same for every policy set
/// (the standard library and claimgate's functions), so answers are kept for the process.
struct Probe {
    root: Context<'static, 'static>,
    samples: Vec<Value>,
    known: Mutex<HashMap<(Form, String), bool>>,
    takes: Mutex<HashMap<(Form, String, usize), bool>>,
}

static PROBE: LazyLock<Probe> = LazyLock::new(Probe::new);

/// One value of each kind a function can be given.
const SAMPLES: &[&str] = &[
    "true",
    "1",
    "1u",
    "1.5",
    "'a'",
    "b'a'",
    "[1]",
    "{'a': 1}",
    "null",
    "timestamp('2000-01-01T00:00:00Z')",
    "duration('1s')",
    "optional.of(1)",
];

impl Probe {
    fn new() -> Probe {
        let rt = CelRuntime::new();
        let root = rt.into_root();
        let samples = SAMPLES
            .iter()
            .filter_map(|s| Program::compile(s).ok()?.execute(&root).ok())
            .collect();
        Probe {
            root,
            samples,
            known: Mutex::default(),
            takes: Mutex::default(),
        }
    }

    /// Whether a function of that name exists in that form.
    fn known(&self, form: Form, name: &str) -> bool {
        let key = (form, name.to_string());
        if let Some(k) = crate::sync::lock(&self.known).get(&key) {
            return *k;
        }
        let src = match form {
            Form::Global => format!("{name}()"),
            Form::Member => format!("null.{name}()"),
        };
        // Any undeclared name: the function, or, for `a.b()` where `a` names no namespace of
        // functions, `a` (then `b` is a method called on the value `a`).
        let known = match Program::compile(&src) {
            Ok(p) => !matches!(
                p.execute(&self.root),
                Err(ExecutionError::UndeclaredReference(_))
            ),
            Err(_) => false,
        };
        crate::sync::lock(&self.known).insert(key, known);
        known
    }

    /// Whether a call with `n` arguments resolves for some kinds of arguments.
    fn takes(&self, form: Form, name: &str, n: usize) -> bool {
        let key = (form, name.to_string(), n);
        if let Some(t) = crate::sync::lock(&self.takes).get(&key) {
            return *t;
        }
        let args: Vec<String> = (0..n).map(|i| format!("a{i}")).collect();
        let mut vars = args.clone();
        let src = match form {
            Form::Global => format!("{name}({})", args.join(", ")),
            Form::Member => {
                vars.insert(0, "r".into());
                format!("r.{name}({})", args.join(", "))
            }
        };
        let takes = Program::compile(&src).is_ok_and(|p| self.any_resolves(&p, &vars));
        crate::sync::lock(&self.takes).insert(key, takes);
        takes
    }

    /// Tries every combination of sample values for `vars`; whether one reaches a function.
    fn any_resolves(&self, p: &Program, vars: &[String]) -> bool {
        let k = self.samples.len();
        let total = k.pow(vars.len() as u32);
        (0..total).any(|mut combo| {
            let mut ctx = self.root.new_inner_scope();
            for v in vars {
                ctx.add_variable_from_value(v.as_str(), self.samples[combo % k].clone());
                combo /= k;
            }
            !matches!(
                p.execute(&ctx),
                Err(ExecutionError::NoSuchOverload(_)
                    | ExecutionError::InvalidArgumentCount { .. }
                    | ExecutionError::MissingArgumentOrTarget
                    | ExecutionError::UndeclaredReference(_))
            )
        })
    }

    /// Runs `src` with `v` bound to `text`: the function's own verdict on a literal.
    fn run(&self, src: &str, text: &str) -> Result<Value, String> {
        let p = Program::compile(src).map_err(|e| e.to_string())?;
        let mut ctx = self.root.new_inner_scope();
        ctx.add_variable_from_value("v", Value::from(text));
        p.execute(&ctx).map_err(|e| match e {
            ExecutionError::FunctionError { message, .. } => message,
            other => other.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(src: &str) -> Vec<String> {
        let cel = CelRuntime::new();
        let p = cel.compile(src).unwrap();
        check(p.expression(), &cel)
            .into_iter()
            .map(|e| e.message)
            .collect()
    }

    #[test]
    fn correct_calls_pass() {
        for src in [
            "now.getDayOfWeek('Europe/Berlin') < 6 && now.getHours('+05:30') > 1",
            "request.path.startsWith('/a') && size(claims) > 0 && claims.s.matches('^a+$')",
            "matches(request.path, '^/x') && timestamp('2025-01-01T00:00:00Z') < now",
            "duration('1h30m') > duration('1s') && int('3') == 3 && string(1) == '1'",
            "daysBetween(now, now) == 0 && inCidr(request.client_ip, '10.0.0.0/8')",
            "optional.of(1).hasValue() && claims.roles.exists(r, r == 'a')",
        ] {
            assert_eq!(errors(src), Vec::<String>::new(), "{src}");
        }
    }

    #[test]
    fn misspelt_functions_are_named_with_a_suggestion() {
        assert_eq!(
            errors("now.getDayOfWek() == 1"),
            ["unknown function `getDayOfWek`; did you mean `getDayOfWeek`?"]
        );
        assert_eq!(
            errors("request.path.startWith('/a')"),
            ["unknown function `startWith`; did you mean `startsWith`?"]
        );
        assert_eq!(errors("frobnicate(1)"), ["unknown function `frobnicate`"]);
        assert_eq!(
            errors("startsWith(request.path, '/a')"),
            ["`startsWith` is called on a value: write `x.startsWith(...)`"]
        );
    }

    #[test]
    fn wrong_argument_counts_are_refused() {
        assert_eq!(
            errors("now.getDayOfWeek('UTC', 1) == 1"),
            ["`getDayOfWeek` takes 0 or 1 argument(s) after its receiver, not 2"]
        );
        assert_eq!(errors("size() == 0"), ["`size` takes 1 argument(s), not 0"]);
        assert_eq!(
            errors("daysBetween(now) == 0"),
            ["`daysBetween` takes 2 argument(s), not 1"]
        );
    }

    #[test]
    fn literal_arguments_are_checked_where_the_function_defines_them() {
        let e = errors("now.getDayOfWeek('Europe/Berln') == 1");
        assert!(
            e[0].starts_with("`Europe/Berln` is not a time zone"),
            "{e:?}"
        );
        let e = errors("request.path.matches('[')");
        assert!(
            e[0].starts_with("`[` is not a valid regular expression"),
            "{e:?}"
        );
        let e = errors("timestamp('2025-13-01T00:00:00Z') < now");
        assert!(
            e[0].starts_with("`2025-13-01T00:00:00Z` is not an RFC 3339 timestamp"),
            "{e:?}"
        );
        let e = errors("duration('5 minutes') > duration('1s')");
        assert!(e[0].starts_with("`5 minutes` is not a duration"), "{e:?}");
        let e = errors("inCidr(request.client_ip, '10.0.0.0/33')");
        assert!(e[0].contains("10.0.0.0/33"), "{e:?}");
        // As a method, the receiver is the first argument.
        let e = errors("request.client_ip.inCidr('10.0.0.0/33')");
        assert!(
            e[0].starts_with("`10.0.0.0/33` is not a CIDR block"),
            "{e:?}"
        );
        assert_eq!(
            errors("request.client_ip.inCidr('10.0.0.0/8')"),
            Vec::<String>::new()
        );
        let e = errors("'10.0.0.x'.inCidr('10.0.0.0/8')");
        assert!(e[0].starts_with("`10.0.0.x` is not an IP address"), "{e:?}");
    }

    #[test]
    fn macros_written_with_the_wrong_shape_say_how() {
        let e = errors("claims.roles.exists(r)");
        assert_eq!(e, ["`exists` is written `list.exists(x, predicate)`"]);
    }

    #[test]
    fn claimgates_own_functions_are_declared_as_they_are_registered() {
        for c in CUSTOM {
            for form in [Form::Global, Form::Member] {
                assert!(PROBE.known(form, c.name), "{}", c.name);
            }
            // The interpreter runs them with any count (a missing argument is its error at run
            // time): the declared count is what the loader holds calls to.
            assert!(PROBE.takes(Form::Global, c.name, c.arity), "{}", c.name);
        }
    }
}
