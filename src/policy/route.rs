//! The route index: host, then path through a radix tree (`matchit`), then method. Lookup cost
//! does not grow with the number of routes the way a linear scan does.

use std::collections::HashMap;

/// Converts a policy path pattern to `matchit` syntax. Patterns use `{name}` for one segment and
/// either `{*name}` or a trailing `/*` for the rest of the path.
pub fn to_matchit(pattern: &str) -> Result<String, String> {
    if !pattern.starts_with('/') {
        return Err(format!("path `{pattern}` must start with `/`"));
    }
    if let Some(prefix) = pattern.strip_suffix("/*") {
        if prefix.contains('*') {
            return Err(format!("path `{pattern}`: `*` may only end the pattern"));
        }
        return Ok(format!("{prefix}/{{*rest}}"));
    }
    if pattern.contains('*') && !pattern.contains("{*") {
        return Err(format!(
            "path `{pattern}`: a wildcard is written `/*` at the end or `{{*name}}`"
        ));
    }
    Ok(pattern.to_string())
}

/// The names of a pattern's path parameters (`/x/{id}/*`: `id`, `rest`), as `request.params`
/// holds them; `None` when the pattern does not parse.
pub fn param_names(pattern: &str) -> Option<Vec<String>> {
    let m = to_matchit(pattern).ok()?;
    Some(
        m.split('{')
            .skip(1)
            .filter_map(|s| s.split_once('}'))
            .map(|(name, _)| name.trim_start_matches('*').to_string())
            .collect(),
    )
}

/// Routes sharing one host and path pattern, told apart by method.
#[derive(Debug, Default)]
struct Slot {
    /// (methods, route index); `None` methods means any.
    entries: Vec<(Option<Vec<String>>, usize)>,
}

impl Slot {
    /// Methods are case-sensitive (RFC 9110 §9.1); routes name them upper-case.
    fn find(&self, method: &str) -> Option<usize> {
        self.entries
            .iter()
            .find(|(m, _)| m.as_ref().is_none_or(|ms| ms.iter().any(|x| x == method)))
            .map(|(_, i)| *i)
    }

    fn overlaps(&self, methods: &Option<Vec<String>>) -> bool {
        self.entries.iter().any(|(m, _)| match (m, methods) {
            (None, _) | (_, None) => true,
            (Some(a), Some(b)) => a.iter().any(|x| b.contains(x)),
        })
    }

    /// The methods this slot serves, upper-cased and sorted, for a 405's `Allow`.
    fn allowed(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .entries
            .iter()
            .flat_map(|(m, _)| m.iter().flatten())
            .map(|m| m.to_ascii_uppercase())
            .collect();
        all.sort();
        all.dedup();
        all
    }
}

/// What a matched pattern leads to: its slot, and for the boundary of a wildcard (`/x` and
/// `/x/` for `/x/*`), the wildcard's parameter, which is then empty.
#[derive(Debug, Clone)]
struct Target {
    slot: usize,
    empty_param: Option<String>,
}

#[derive(Default)]
struct Tree {
    router: matchit::Router<Target>,
    slots: Vec<Slot>,
    by_pattern: HashMap<String, usize>,
}

/// A match: the route's index and the path parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch {
    pub route: usize,
    pub params: Vec<(String, String)>,
}

/// Where a request lands in the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Route(RouteMatch),
    /// Routes serve the path, for other methods only: the methods (listed, upper-case) and
    /// the first of those routes, which the refusal is counted under.
    MethodNotAllowed {
        allowed: Vec<String>,
        route: usize,
    },
    /// No route serves the path: the unmatched action decides.
    NoRoute,
}

/// A route whose path can be reached on the boundary of a more protected route's pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundaryCatch {
    /// The route whose pattern has the boundary.
    pub protected: usize,
    /// The route that serves the boundary path instead.
    pub catcher: usize,
    /// The boundary path, with `0` for each parameter.
    pub path: String,
    pub method: String,
}

/// One table of routes: host, then path, then method.
#[derive(Default)]
struct Trees {
    hosts: HashMap<String, Tree>,
    any_host: Tree,
}

/// Two routes whose patterns are one path to an upstream that ignores letter case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseCollision {
    /// The route added later, which the case-folded table could not hold.
    pub route: usize,
    pub message: String,
}

#[derive(Default)]
pub struct RouteIndex {
    exact: Trees,
    /// The same routes with the letters of every pattern's literal parts in lower case: where
    /// an upstream that ignores letter case serves a lower-cased path. Admission compares the
    /// two lookups (see `Snapshot::route`).
    folded: Trees,
    /// Whether some pattern has an upper-case letter in its literal parts: then even a
    /// lower-case path may be served by another route than its folded form's.
    upper_patterns: bool,
    case_collisions: Vec<CaseCollision>,
}

impl std::fmt::Debug for RouteIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteIndex")
            .field("hosts", &self.exact.hosts.len())
            .finish()
    }
}

impl RouteIndex {
    /// Adds a route. Fails when the pattern conflicts with another one in a way the tree cannot
    /// decide (`/a/{x}` next to `/a/{y}`), or when the same host, pattern and method is taken.
    /// `fold`: also into the case-folded table (not for a pattern no normalised path reaches).
    pub fn insert(
        &mut self,
        host: Option<&str>,
        pattern: &str,
        methods: Option<Vec<String>>,
        route: usize,
        fold: bool,
    ) -> Result<(), String> {
        let pattern = to_matchit(pattern)?;
        self.exact.insert(host, &pattern, methods.clone(), route)?;
        if !fold {
            return Ok(());
        }
        let folded = fold_literals(&pattern);
        self.upper_patterns |= folded != pattern;
        if let Err(message) = self.folded.insert(host, &folded, methods, route) {
            self.case_collisions.push(CaseCollision { route, message });
        }
        Ok(())
    }

    /// Routes that the case-folded table could not hold beside another route (`/Admin` and
    /// `/admin` for the same method): the policy set does not load.
    pub fn case_collisions(&self) -> &[CaseCollision] {
        &self.case_collisions
    }

    /// Completes the index once every route is in (see [`Trees::seal`]).
    pub fn seal(&mut self) {
        self.exact.seal();
        self.folded.seal();
    }

    /// Whether any route names a host.
    pub fn has_host_routes(&self) -> bool {
        !self.exact.hosts.is_empty()
    }

    /// Finds the route for a request. A host with host-specific routes is decided by those
    /// routes alone; other hosts (and requests without one) by the host-less routes.
    pub fn lookup(&self, host: Option<&str>, method: &str, path: &str) -> Lookup {
        self.exact.lookup(host, method, path)
    }

    /// Where an upstream that ignores letter case would have this request decided: the
    /// lower-cased path in the table of lower-cased patterns. `None` when that is the exact
    /// lookup's answer by construction (no capitals in the path or in any pattern).
    pub fn lookup_folded(&self, host: Option<&str>, method: &str, path: &str) -> Option<Lookup> {
        // An escape's hex digits are capitals too: a path with escapes is always folded.
        let upper = path.bytes().any(|b| b.is_ascii_uppercase());
        if !self.upper_patterns && !upper {
            return None;
        }
        // Only a path with capitals is copied (a table with gRPC's `/pkg.Service/Method` looks
        // up every path twice).
        let lower = if upper {
            std::borrow::Cow::Owned(fold_path(path))
        } else {
            std::borrow::Cow::Borrowed(path)
        };
        Some(self.folded.lookup(host, method, &lower))
    }

    /// Every route that serves a path on the boundary of another route's pattern (`/x` and
    /// `/x/` for `/x/*` and `/x/{id}`, `/x/` for `/x`, `/x` for `/x/`), for the same method.
    /// `check` compares their protection.
    pub fn boundary_catches(
        &self,
        methods_of: impl Fn(usize) -> Option<Vec<String>>,
    ) -> Vec<BoundaryCatch> {
        self.exact.boundary_catches(methods_of)
    }
}

/// The characters outside ASCII that a Unicode case mapping turns into an ASCII letter, as a
/// normalised path spells them (escaped, upper-case hex), and that letter. .NET's
/// `OrdinalIgnoreCase` (ASP.NET Core routing's default) compares upper-case forms, so the
/// dotless `ı` and the long `ſ` are `I` and `S` to it; Java's `equalsIgnoreCase` also compares
/// lower-case forms, so the dotted `İ` and the Kelvin sign are `i` and `k`. `/adm%C4%B1n` is
/// `/admin` to both.
const FOLDS_TO_ASCII: [(&str, &str); 4] = [
    ("%C4%B0", "i"),
    ("%C4%B1", "i"),
    ("%C5%BF", "s"),
    ("%E2%84%AA", "k"),
];

/// A normalised path as an upstream that ignores letter case reads it: ASCII letters and the
/// characters of [`FOLDS_TO_ASCII`] in lower case. A match cannot start inside another
/// character: the path is valid UTF-8, and each spelling starts with a lead byte.
fn fold_path(path: &str) -> String {
    let mut text = std::borrow::Cow::Borrowed(path);
    if path.contains('%') {
        for (escaped, letter) in FOLDS_TO_ASCII {
            if text.contains(escaped) {
                text = std::borrow::Cow::Owned(text.replace(escaped, letter));
            }
        }
    }
    text.to_ascii_lowercase()
}

/// A matchit pattern with the letters outside `{...}` in lower case (parameter names are
/// names, not path text).
fn fold_literals(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len());
    let mut depth = 0usize;
    for c in pattern.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        out.push(if depth == 0 {
            c.to_ascii_lowercase()
        } else {
            c
        });
    }
    out
}

impl Trees {
    fn insert(
        &mut self,
        host: Option<&str>,
        pattern: &str,
        methods: Option<Vec<String>>,
        route: usize,
    ) -> Result<(), String> {
        let tree = match host {
            Some(h) => self.hosts.entry(h.to_ascii_lowercase()).or_default(),
            None => &mut self.any_host,
        };
        let pattern = pattern.to_string();
        let slot = match tree.by_pattern.get(&pattern) {
            Some(s) => *s,
            None => {
                let s = tree.slots.len();
                let target = Target {
                    slot: s,
                    empty_param: None,
                };
                tree.router
                    .insert(pattern.clone(), target)
                    .map_err(|e| format!("path `{pattern}` conflicts with another route: {e}"))?;
                tree.slots.push(Slot::default());
                tree.by_pattern.insert(pattern.clone(), s);
                s
            }
        };
        if tree.slots[slot].overlaps(&methods) {
            return Err(format!(
                "another route already serves `{pattern}` for the same method(s)"
            ));
        }
        tree.slots[slot].entries.push((methods, route));
        Ok(())
    }

    /// Completes the table once every route is in: a wildcard `/x/*` also serves `/x` and `/x/`
    /// unless a route names that exact pattern. Done last, so the order of files and routes
    /// does not matter.
    fn seal(&mut self) {
        for tree in std::iter::once(&mut self.any_host).chain(self.hosts.values_mut()) {
            let mut aliases = Vec::new();
            for (pattern, slot) in &tree.by_pattern {
                let Some((prefix, param)) = split_catch_all(pattern) else {
                    continue;
                };
                for alias in [prefix.to_string(), format!("{prefix}/")] {
                    if alias.is_empty() || tree.by_pattern.contains_key(&alias) {
                        continue;
                    }
                    aliases.push((alias, *slot, param.to_string()));
                }
            }
            aliases.sort();
            for (alias, slot, param) in aliases {
                let target = Target {
                    slot,
                    empty_param: Some(param),
                };
                // A pattern the tree cannot hold beside an explicit one (`/a/{id}` next to an
                // alias `/a/{x}`) leaves the boundary to that route; `check` reports it when
                // that route is less protected.
                let _ = tree.router.insert(alias, target);
            }
        }
    }

    fn lookup(&self, host: Option<&str>, method: &str, path: &str) -> Lookup {
        let tree = host
            .and_then(|h| self.hosts.get(h))
            .unwrap_or(&self.any_host);
        lookup_in(tree, method, path)
    }

    fn boundary_catches(
        &self,
        methods_of: impl Fn(usize) -> Option<Vec<String>>,
    ) -> Vec<BoundaryCatch> {
        let mut out = Vec::new();
        for tree in std::iter::once(&self.any_host).chain(self.hosts.values()) {
            let mut patterns: Vec<(&String, &usize)> = tree.by_pattern.iter().collect();
            patterns.sort();
            for (pattern, slot) in patterns {
                for &(_, protected) in &tree.slots[*slot].entries {
                    let methods = methods_of(protected).unwrap_or_else(|| vec!["GET".to_string()]);
                    for path in boundary_paths(pattern) {
                        for method in &methods {
                            if let Lookup::Route(m) = lookup_in(tree, method, &path) {
                                if m.route != protected {
                                    out.push(BoundaryCatch {
                                        protected,
                                        catcher: m.route,
                                        path: path.clone(),
                                        method: method.clone(),
                                    });
                                }
                            }
                        }
                    }
                }
            }
        }
        out
    }
}

/// `("/x", "rest")` for `/x/{*rest}`.
fn split_catch_all(pattern: &str) -> Option<(&str, &str)> {
    let (prefix, last) = pattern.rsplit_once('/')?;
    let param = last.strip_prefix("{*")?.strip_suffix('}')?;
    Some((prefix, param))
}

/// Concrete paths next to a pattern that an upstream may serve as the same resource, with
/// parameters filled with `0`.
fn boundary_paths(pattern: &str) -> Vec<String> {
    let concrete = |p: &str| {
        p.split('/')
            .map(|seg| if seg.contains('{') { "0" } else { seg })
            .collect::<Vec<_>>()
            .join("/")
    };
    let mut out = Vec::new();
    if let Some((prefix, _)) = split_catch_all(pattern) {
        out.push(concrete(prefix));
        out.push(format!("{}/", concrete(prefix)));
    } else if let Some(stem) = pattern.strip_suffix('/') {
        out.push(concrete(stem));
    } else {
        out.push(format!("{}/", concrete(pattern)));
        if let Some((prefix, last)) = pattern.rsplit_once('/') {
            if last.starts_with('{') {
                out.push(concrete(prefix));
                out.push(format!("{}/", concrete(prefix)));
            }
        }
    }
    out.retain(|p| !p.is_empty() && p != pattern);
    out.dedup();
    out
}

fn lookup_in(tree: &Tree, method: &str, path: &str) -> Lookup {
    let Ok(m) = tree.router.at(path) else {
        return Lookup::NoRoute;
    };
    let slot = &tree.slots[m.value.slot];
    let Some(route) = slot.find(method) else {
        return Lookup::MethodNotAllowed {
            allowed: slot.allowed(),
            route: slot.entries.first().map_or(0, |(_, r)| *r),
        };
    };
    let mut params: Vec<(String, String)> = m
        .params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if let Some(p) = &m.value.empty_param {
        params.push((p.clone(), String::new()));
    }
    Lookup::Route(RouteMatch { route, params })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn methods(m: &[&str]) -> Option<Vec<String>> {
        Some(m.iter().map(|s| s.to_string()).collect())
    }

    fn route(l: Lookup) -> Option<usize> {
        match l {
            Lookup::Route(m) => Some(m.route),
            _ => None,
        }
    }

    #[test]
    fn params_wildcards_methods_hosts() {
        let mut ix = RouteIndex::default();
        ix.insert(None, "/users/{id}", methods(&["GET"]), 0, true)
            .unwrap();
        ix.insert(None, "/users/{id}", methods(&["POST"]), 1, true)
            .unwrap();
        ix.insert(None, "/files/*", None, 2, true).unwrap();
        ix.insert(Some("Admin.example.com"), "/users/{id}", None, 3, true)
            .unwrap();
        ix.seal();

        let Lookup::Route(m) = ix.lookup(None, "GET", "/users/7") else {
            panic!("no match")
        };
        assert_eq!(m.route, 0);
        assert_eq!(m.params, vec![("id".into(), "7".into())]);
        assert_eq!(route(ix.lookup(None, "POST", "/users/7")), Some(1));
        assert_eq!(
            ix.lookup(None, "DELETE", "/users/7"),
            Lookup::MethodNotAllowed {
                allowed: vec!["GET".into(), "POST".into()],
                route: 0
            }
        );
        assert_eq!(route(ix.lookup(None, "GET", "/files/a/b")), Some(2));
        assert_eq!(
            route(ix.lookup(Some("admin.example.com"), "DELETE", "/users/7")),
            Some(3)
        );
        assert_eq!(route(ix.lookup(Some("other"), "GET", "/users/7")), Some(0));
        assert_eq!(ix.lookup(None, "GET", "/nope"), Lookup::NoRoute);
    }

    #[test]
    fn a_host_with_its_own_routes_never_falls_through_to_host_less_ones() {
        let mut ix = RouteIndex::default();
        ix.insert(Some("admin.test"), "/admin/*", methods(&["GET"]), 0, true)
            .unwrap();
        ix.insert(None, "/*", None, 1, true).unwrap();
        ix.seal();
        assert_eq!(
            ix.lookup(Some("admin.test"), "POST", "/admin/x"),
            Lookup::MethodNotAllowed {
                allowed: vec!["GET".into()],
                route: 0
            }
        );
        assert_eq!(
            ix.lookup(Some("admin.test"), "GET", "/public"),
            Lookup::NoRoute
        );
        assert_eq!(
            route(ix.lookup(Some("other.test"), "POST", "/admin/x")),
            Some(1)
        );
    }

    #[test]
    fn a_wildcard_covers_its_own_boundary_unless_a_route_names_it() {
        let mut ix = RouteIndex::default();
        ix.insert(None, "/x/*", None, 0, true).unwrap();
        ix.insert(None, "/y/{*tail}", None, 1, true).unwrap();
        ix.insert(None, "/y", None, 2, true).unwrap();
        ix.insert(None, "/*", None, 3, true).unwrap();
        ix.seal();
        for p in ["/x", "/x/", "/x/a", "/x/a/b"] {
            assert_eq!(route(ix.lookup(None, "GET", p)), Some(0), "{p}");
        }
        let Lookup::Route(m) = ix.lookup(None, "GET", "/y/") else {
            panic!()
        };
        assert_eq!(
            (m.route, m.params),
            (1, vec![("tail".into(), String::new())])
        );
        assert_eq!(route(ix.lookup(None, "GET", "/y")), Some(2));
        assert_eq!(route(ix.lookup(None, "GET", "/xy")), Some(3));
        assert_eq!(route(ix.lookup(None, "GET", "/")), Some(3));
        let catches = ix.boundary_catches(|_| None);
        assert!(catches
            .iter()
            .any(|c| c.protected == 1 && c.catcher == 2 && c.path == "/y"));
        assert!(!catches.iter().any(|c| c.protected == 0));
    }

    #[test]
    fn trailing_slash_and_parameter_boundaries_are_reported() {
        let mut ix = RouteIndex::default();
        ix.insert(None, "/admin", None, 0, true).unwrap();
        ix.insert(None, "/users/{id}", None, 1, true).unwrap();
        ix.insert(None, "/*", None, 2, true).unwrap();
        ix.seal();
        let catches = ix.boundary_catches(|_| None);
        let paths: Vec<(usize, &str)> = catches
            .iter()
            .map(|c| (c.protected, c.path.as_str()))
            .collect();
        assert!(paths.contains(&(0, "/admin/")), "{paths:?}");
        assert!(paths.contains(&(1, "/users")), "{paths:?}");
        assert!(paths.contains(&(1, "/users/")), "{paths:?}");
    }

    #[test]
    fn the_folded_table_lower_cases_literals_and_reports_patterns_one_by_case() {
        assert_eq!(fold_literals("/Api/{Id}/X/{*Rest}"), "/api/{Id}/x/{*Rest}");
        let mut ix = RouteIndex::default();
        ix.insert(None, "/admin/*", None, 0, true).unwrap();
        ix.insert(None, "/*", None, 1, true).unwrap();
        ix.seal();
        // No capitals anywhere: the folded lookup is the exact one, and is skipped.
        assert_eq!(ix.lookup_folded(None, "GET", "/admin/x"), None);
        assert_eq!(
            ix.lookup_folded(None, "GET", "/ADMIN/x").map(route),
            Some(Some(0))
        );
        assert_eq!(route(ix.lookup(None, "GET", "/ADMIN/x")), Some(1));
        // Letters outside ASCII that .NET or Java fold to ASCII ones.
        for path in [
            "/adm%C4%B1n/x",
            "/adm%C4%B0n/x",
            "/ADM%C4%B1N/x",
            "/admin/%C5%BF",
            "/%E2%84%AA",
        ] {
            let expected = if path.starts_with("/%E2") { 1 } else { 0 };
            assert_eq!(
                ix.lookup_folded(None, "GET", path).map(route),
                Some(Some(expected)),
                "{path}"
            );
        }
        assert_eq!(fold_path("/%E2%84%AAey/%C5%BFet/%C3%A9"), "/key/set/%c3%a9");

        let mut ix = RouteIndex::default();
        ix.insert(None, "/Orders/{id}", methods(&["GET"]), 0, true)
            .unwrap();
        ix.insert(None, "/orders/{id}", methods(&["GET"]), 1, true)
            .unwrap();
        ix.insert(None, "/orders/{id}", methods(&["POST"]), 2, true)
            .unwrap();
        ix.seal();
        // A capital in a pattern: every path is looked up folded as well.
        assert_eq!(
            ix.lookup_folded(None, "GET", "/orders/1").map(route),
            Some(Some(0))
        );
        assert_eq!(
            ix.case_collisions()
                .iter()
                .map(|c| c.route)
                .collect::<Vec<_>>(),
            vec![1]
        );
    }

    #[test]
    fn collisions_are_errors() {
        let mut ix = RouteIndex::default();
        ix.insert(None, "/a/{x}", None, 0, true).unwrap();
        assert!(ix.insert(None, "/a/{y}", None, 1, true).is_err());
        assert!(ix
            .insert(None, "/a/{x}", methods(&["GET"]), 1, true)
            .is_err());
        assert!(to_matchit("a").is_err());
        assert!(to_matchit("/a/*/b").is_err());
    }
}
