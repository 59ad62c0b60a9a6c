//! Which claims of a token are decoded into its claims map: the ones some expression of the
//! policy set names. (The registered claims the gateway itself checks are decoded apart, into
//! their own slots: see [`super::claims::Registered`].) A claim nothing reads cannot change a decision,
//! so a new token's other claims are skipped by the parser instead of being built into maps and
//! strings (identity providers add many: Keycloak's `realm_access`, `resource_access`,
//! `allowed-origins`, profile fields, session ids).
//!
//! The set is found from the expressions' syntax trees at load ([`References`]): `claims.NAME`,
//! `claims['NAME']` and `has(claims.NAME)` name one claim; any other use of `claims` (whole,
//! `'x' in claims`, `claims[request.params.k]`, `claims.all(k, ...)`) reads all of them. It
//! belongs to one policy set, and so does the token cache: a reload builds both anew.

use crate::policy::references::References;
use crate::policy::variable::Variable;
use std::collections::BTreeSet;

/// The claims decoded from a new token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimNames {
    /// Every claim: some expression reads `claims` whole, or no policy set is involved.
    All,
    /// The names some expression reads.
    Only(Names),
}

/// A set of claim names, asked once per claim of every new token. Names of up to 15 bytes
/// (nearly all) are also kept packed with their length in one `u128` each, so a lookup is a
/// short scan of integer compares instead of string comparisons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    sorted: Box<[Box<str>]>,
    packed: Box<[u128]>,
    long: Box<[Box<str>]>,
}

impl Names {
    /// `name`'s bytes and length in one integer, if it has at most 15 bytes.
    fn pack(name: &str) -> Option<u128> {
        let b = name.as_bytes();
        if b.len() > 15 {
            return None;
        }
        let mut buf = [0u8; 16];
        buf[..b.len()].copy_from_slice(b);
        // The length tells `a` from `a` followed by NUL (`\u0000` is a valid name).
        buf[15] = b.len() as u8;
        Some(u128::from_le_bytes(buf))
    }

    fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> Names {
        let all: BTreeSet<&str> = names.into_iter().collect();
        Names {
            packed: all.iter().filter_map(|n| Names::pack(n)).collect(),
            long: all
                .iter()
                .filter(|n| n.len() > 15)
                .map(|n| Box::from(*n))
                .collect(),
            sorted: all.into_iter().map(Box::from).collect(),
        }
    }

    fn contains(&self, name: &str) -> bool {
        match Names::pack(name) {
            Some(key) => self.packed.contains(&key),
            None => self.long.iter().any(|n| **n == *name),
        }
    }

    fn iter(&self) -> impl Iterator<Item = &str> {
        self.sorted.iter().map(|n| &**n)
    }
}

impl ClaimNames {
    /// No claim: what a policy set that reads no claim decodes into the map.
    pub fn none() -> ClaimNames {
        ClaimNames::only([])
    }

    /// Exactly `names`.
    pub fn only<'a>(names: impl IntoIterator<Item = &'a str>) -> ClaimNames {
        ClaimNames::Only(Names::new(names))
    }

    /// Whether the claim `name` is decoded into the claims map.
    pub fn keeps(&self, name: &str) -> bool {
        match self {
            ClaimNames::All => true,
            ClaimNames::Only(names) => names.contains(name),
        }
    }

    /// The claims either set decodes.
    pub fn union(&self, other: &ClaimNames) -> ClaimNames {
        match (self, other) {
            (ClaimNames::Only(a), ClaimNames::Only(b)) => {
                ClaimNames::only(a.iter().chain(b.iter()))
            }
            _ => ClaimNames::All,
        }
    }
}

/// Gathers the claims read by the expressions of a policy set as they compile.
#[derive(Debug, Default)]
pub struct ClaimReads {
    names: BTreeSet<String>,
    whole: bool,
}

impl ClaimReads {
    /// Records what one expression reads of `claims`.
    pub fn add(&mut self, refs: &References) {
        if refs.whole.contains_key(&Variable::Claims) {
            self.whole = true;
        }
        self.names.extend(
            refs.members_of(Variable::Claims)
                .map(|(name, _)| name.to_string()),
        );
    }

    pub fn names(&self) -> ClaimNames {
        if self.whole {
            return ClaimNames::All;
        }
        ClaimNames::only(self.names.iter().map(String::as_str))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_by(exprs: &[&str]) -> ClaimNames {
        let mut r = ClaimReads::default();
        for e in exprs {
            r.add(&References::of(
                cel::Program::compile(e).unwrap().expression(),
            ));
        }
        r.names()
    }

    fn only(names: &[&str]) -> ClaimNames {
        ClaimNames::only(names.iter().copied())
    }

    #[test]
    fn claims_named_in_any_form_are_kept() {
        assert_eq!(
            read_by(&[
                "claims.tier == 'gold' && has(claims.features.beta)",
                "claims['org'].id == request.params.id",
                "claims.roles.exists(r, r == 'admin')",
                "request.method == 'GET' || claims.sub == 'x'",
            ]),
            only(&["features", "org", "roles", "sub", "tier"])
        );
        assert_eq!(read_by(&["request.method == 'GET'"]), ClaimNames::none());
    }

    #[test]
    fn claims_read_whole_keep_everything() {
        for e in [
            "'admin' in claims",
            "claims[request.params.k] == 1",
            "size(claims) > 3",
            "claims.all(k, k != 'x')",
            "claims == {}",
            "[claims][0].tier == 'gold'",
        ] {
            assert_eq!(read_by(&["claims.tier == 'a'", e]), ClaimNames::All, "{e}");
        }
    }

    #[test]
    fn a_bound_name_is_not_the_claims() {
        assert_eq!(
            read_by(&["[{'a': 1}].exists(claims, claims.a == 1) && claims.b == 2"]),
            only(&["b"])
        );
    }

    #[test]
    fn only_named_claims_are_kept() {
        let n = only(&["tier"]);
        assert!(n.keeps("tier"));
        for name in [
            // Registered claims are read apart (their own slots), not into the map.
            "iss",
            "sub",
            "exp",
            "tie",
            "tiers",
            "Tier",
            "scope",
            "",
            "ex",
            "exp2",
            &"x".repeat(70),
        ] {
            assert!(!n.keeps(name), "{name}");
        }
        for len in [14, 15, 16, 17, 64] {
            let name = "y".repeat(len);
            let n = only(&[&name]);
            assert!(n.keeps(&name), "{len}");
            assert!(
                !n.keeps(&"y".repeat(len - 1)) && !n.keeps(&"y".repeat(len + 1)),
                "{len}"
            );
            assert!(
                !n.keeps(&format!("{name}\0")) && !n.keeps(&name[1..]),
                "{len}"
            );
        }
        assert!(only(&["a\0"]).keeps("a\0") && !only(&["a\0"]).keeps("a"));
        assert!(!only(&["a"]).keeps("a\0"));
        assert!(ClaimNames::All.keeps("anything"));
        assert_eq!(
            only(&["a", "c"]).union(&only(&["b", "a"])),
            only(&["a", "b", "c"])
        );
        assert_eq!(only(&["a"]).union(&ClaimNames::All), ClaimNames::All);
    }
}
