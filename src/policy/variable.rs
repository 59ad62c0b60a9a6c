//! The condition variables: every name a CEL expression may read, listed once. The loader, the
//! cost analysis, the source templates and the activation all go through [`Variable`], so a new
//! variable is one variant here and one arm in [`super::activation`].

use std::fmt;

/// A variable of the CEL environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Variable {
    /// The verified token's claims (an empty map without a token).
    Claims,
    /// The token's header facts: `alg`, `kid`, `typ`, `issuer`.
    Token,
    /// The request: method, host, path, query, headers, params, client_ip.
    Request,
    /// The decision's time.
    Now,
    /// The route's derived attributes, read by name (`attr.NAME`).
    Attr,
    /// The parsed JSON body.
    Body,
    /// The client's location: country, continent.
    Geo,
    /// External source values, read by name (`ext.NAME`).
    Ext,
}

/// Which input limit bounds the size of a collection read from a variable (see
/// [`super::analysis::InputBounds`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizedBy {
    Token,
    Body,
    Headers,
    Source,
}

impl Variable {
    pub const ALL: [Variable; 8] = [
        Variable::Claims,
        Variable::Token,
        Variable::Request,
        Variable::Now,
        Variable::Attr,
        Variable::Body,
        Variable::Geo,
        Variable::Ext,
    ];

    /// The name expressions use.
    pub const fn name(self) -> &'static str {
        match self {
            Variable::Claims => "claims",
            Variable::Token => "token",
            Variable::Request => "request",
            Variable::Now => "now",
            Variable::Attr => "attr",
            Variable::Body => "body",
            Variable::Geo => "geo",
            Variable::Ext => "ext",
        }
    }

    /// The variable of that name. A `match` (not a search of [`Variable::ALL`]): the
    /// interpreter resolves a variable on every read; a test keeps the two lists equal.
    pub fn parse(name: &str) -> Option<Variable> {
        Some(match name {
            "claims" => Variable::Claims,
            "token" => Variable::Token,
            "request" => Variable::Request,
            "now" => Variable::Now,
            "attr" => Variable::Attr,
            "body" => Variable::Body,
            "geo" => Variable::Geo,
            "ext" => Variable::Ext,
            _ => return None,
        })
    }

    /// The same for every request that carries the same token: an expression reading only such
    /// variables is evaluated once per (cached) token.
    pub const fn per_token(self) -> bool {
        matches!(self, Variable::Claims | Variable::Token)
    }

    /// Readable by the request templates of external sources, which are rendered before
    /// attributes and source values exist.
    pub const fn in_templates(self) -> bool {
        !matches!(self, Variable::Attr | Variable::Ext)
    }

    /// Read member by member, each member declared (an attribute of the route, a source of
    /// `gateway.toml`): the loader checks every name read and refuses the variable read whole.
    pub const fn named_members(self) -> bool {
        matches!(self, Variable::Attr | Variable::Ext)
    }

    /// What bounds the size of a list or map read from this variable; `None` for values that
    /// are not request data (the analysis then uses the largest input).
    pub const fn sized_by(self) -> Option<SizedBy> {
        match self {
            Variable::Claims | Variable::Token => Some(SizedBy::Token),
            Variable::Body => Some(SizedBy::Body),
            Variable::Request => Some(SizedBy::Headers),
            Variable::Ext => Some(SizedBy::Source),
            Variable::Now | Variable::Attr | Variable::Geo => None,
        }
    }

    /// `claims, token, ...` for messages, of the variables that pass `keep`.
    pub fn list(keep: impl Fn(Variable) -> bool) -> String {
        Self::ALL
            .into_iter()
            .filter(|v| keep(*v))
            .map(Variable::name)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for Variable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_unique() {
        for v in Variable::ALL {
            assert_eq!(Variable::parse(v.name()), Some(v));
        }
        let mut names: Vec<_> = Variable::ALL.iter().map(|v| v.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Variable::ALL.len());
        assert_eq!(Variable::parse("claim"), None);
    }
}
