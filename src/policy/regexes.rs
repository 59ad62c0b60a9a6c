//! The regular expressions of `matches`: a pattern written as a literal is compiled once, when
//! the policy loads (and refused there if it does not compile); a pattern computed from request
//! data is compiled when called. Both with a size limit, so a pattern from a token cannot make
//! the gateway build an automaton of unbounded size.

use regex::{Regex, RegexBuilder};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// The compiled size a pattern may take (the `regex` crate's default is 10 MiB).
const SIZE_LIMIT: usize = 1 << 20;

/// The patterns of one policy set, compiled at load.
#[derive(Debug, Default)]
pub struct Regexes(RwLock<HashMap<String, Arc<Regex>>>);

impl Regexes {
    /// Compiles a literal pattern and keeps it; the error says why it does not compile.
    pub fn precompile(&self, pattern: &str) -> Result<(), String> {
        if crate::sync::read(&self.0).contains_key(pattern) {
            return Ok(());
        }
        let re = compile(pattern)?;
        crate::sync::write(&self.0).insert(pattern.to_string(), Arc::new(re));
        Ok(())
    }

    /// The compiled pattern: kept from load, or compiled now.
    pub fn get(&self, pattern: &str) -> Result<Arc<Regex>, String> {
        if let Some(re) = crate::sync::read(&self.0).get(pattern) {
            return Ok(re.clone());
        }
        compile(pattern).map(Arc::new)
    }

    /// How many patterns were compiled at load.
    pub fn len(&self) -> usize {
        crate::sync::read(&self.0).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn compile(pattern: &str) -> Result<Regex, String> {
    RegexBuilder::new(pattern)
        .size_limit(SIZE_LIMIT)
        .build()
        .map_err(|e| match e {
            regex::Error::Syntax(s) => s,
            other => other.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_patterns_are_kept_and_bad_ones_refused() {
        let r = Regexes::default();
        r.precompile("^a+$").unwrap();
        assert_eq!(r.len(), 1);
        assert!(r.get("^a+$").unwrap().is_match("aaa"));
        assert!(r.precompile("[").is_err());
        // A pattern known only at run time is compiled, not kept.
        assert!(r.get("b").unwrap().is_match("abc"));
        assert_eq!(r.len(), 1);
        // A pattern whose automaton would be huge is refused.
        assert!(r.get("(\\w{100}){100}").is_err());
    }
}
