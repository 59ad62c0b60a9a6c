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

/// Routes sharing one host and path pattern, told apart by method.
#[derive(Debug, Default)]
struct Slot {
    /// (methods, route index); `None` methods means any.
    entries: Vec<(Option<Vec<String>>, usize)>,
}

impl Slot {
    fn find(&self, method: &str) -> Option<usize> {
        self.entries
            .iter()
            .find(|(m, _)| {
                m.as_ref()
                    .is_none_or(|ms| ms.iter().any(|x| x.eq_ignore_ascii_case(method)))
            })
            .map(|(_, i)| *i)
    }

    fn overlaps(&self, methods: &Option<Vec<String>>) -> bool {
        self.entries.iter().any(|(m, _)| match (m, methods) {
            (None, _) | (_, None) => true,
            (Some(a), Some(b)) => a.iter().any(|x| b.contains(x)),
        })
    }
}

#[derive(Default)]
struct Tree {
    router: matchit::Router<usize>,
    slots: Vec<Slot>,
    by_pattern: HashMap<String, usize>,
}

/// A match: the route's index and the path parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch {
    pub route: usize,
    pub params: Vec<(String, String)>,
}

#[derive(Default)]
pub struct RouteIndex {
    hosts: HashMap<String, Tree>,
    any_host: Tree,
}

impl std::fmt::Debug for RouteIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteIndex")
            .field("hosts", &self.hosts.len())
            .finish()
    }
}

impl RouteIndex {
    /// Adds a route. Fails when the pattern conflicts with another one in a way the tree cannot
    /// decide (`/a/{x}` next to `/a/{y}`), or when the same host, pattern and method is taken.
    pub fn insert(
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
        let pattern = to_matchit(pattern)?;
        let slot = match tree.by_pattern.get(&pattern) {
            Some(s) => *s,
            None => {
                let s = tree.slots.len();
                tree.router
                    .insert(pattern.clone(), s)
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

    /// Finds the route for a request. Host-specific routes win over host-less ones.
    pub fn lookup(&self, host: Option<&str>, method: &str, path: &str) -> Option<RouteMatch> {
        if let Some(tree) = host.and_then(|h| self.hosts.get(h)) {
            if let Some(m) = lookup_in(tree, method, path) {
                return Some(m);
            }
        }
        lookup_in(&self.any_host, method, path)
    }
}

fn lookup_in(tree: &Tree, method: &str, path: &str) -> Option<RouteMatch> {
    let m = tree.router.at(path).ok()?;
    let route = tree.slots[*m.value].find(method)?;
    let params = m
        .params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Some(RouteMatch { route, params })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn methods(m: &[&str]) -> Option<Vec<String>> {
        Some(m.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn params_wildcards_methods_hosts() {
        let mut ix = RouteIndex::default();
        ix.insert(None, "/users/{id}", methods(&["GET"]), 0)
            .unwrap();
        ix.insert(None, "/users/{id}", methods(&["POST"]), 1)
            .unwrap();
        ix.insert(None, "/files/*", None, 2).unwrap();
        ix.insert(Some("Admin.example.com"), "/users/{id}", None, 3)
            .unwrap();

        let m = ix.lookup(None, "GET", "/users/7").unwrap();
        assert_eq!(m.route, 0);
        assert_eq!(m.params, vec![("id".into(), "7".into())]);
        assert_eq!(ix.lookup(None, "post", "/users/7").unwrap().route, 1);
        assert_eq!(ix.lookup(None, "DELETE", "/users/7"), None);
        assert_eq!(ix.lookup(None, "GET", "/files/a/b").unwrap().route, 2);
        assert_eq!(
            ix.lookup(Some("admin.example.com"), "DELETE", "/users/7")
                .unwrap()
                .route,
            3
        );
        assert_eq!(
            ix.lookup(Some("other"), "GET", "/users/7").unwrap().route,
            0
        );
        assert_eq!(ix.lookup(None, "GET", "/nope"), None);
    }

    #[test]
    fn collisions_are_errors() {
        let mut ix = RouteIndex::default();
        ix.insert(None, "/a/{x}", None, 0).unwrap();
        assert!(ix.insert(None, "/a/{y}", None, 1).is_err());
        assert!(ix.insert(None, "/a/{x}", methods(&["GET"]), 1).is_err());
        assert!(to_matchit("a").is_err());
        assert!(to_matchit("/a/*/b").is_err());
    }
}
