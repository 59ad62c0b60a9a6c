//! Issuers: who may sign tokens, for which audiences, with which keys.

use super::keys::{self, KeyError, KeySet, VerifyKey};
use crate::config::{Config, KeySource};
use crate::location::SourceError;
use jsonwebtoken::Algorithm;
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug)]
pub struct Issuer {
    /// The name used in `gateway.toml` and in policies.
    pub name: Arc<str>,
    /// The exact `iss` claim.
    pub iss: String,
    pub audiences: Vec<String>,
    pub algorithms: Vec<Algorithm>,
    pub leeway_seconds: u64,
    pub keys: KeySet,
}

/// All configured issuers, looked up by name (from policies) or by `iss` (from tokens).
#[derive(Debug, Default)]
pub struct IssuerSet {
    by_name: HashMap<Arc<str>, Arc<Issuer>>,
    by_iss: HashMap<String, Arc<Issuer>>,
}

impl IssuerSet {
    pub fn get(&self, name: &str) -> Option<&Arc<Issuer>> {
        self.by_name.get(name)
    }

    pub fn by_iss(&self, iss: &str) -> Option<&Arc<Issuer>> {
        self.by_iss.get(iss)
    }

    pub fn names(&self) -> impl Iterator<Item = &Arc<str>> {
        self.by_name.keys()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Issuer>> {
        self.by_name.values()
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Loads every issuer's keys. Errors point at the issuer or key entry in `gateway.toml`.
    pub fn load(config: &Config) -> Result<IssuerSet, Vec<SourceError>> {
        let mut set = IssuerSet::default();
        let mut errors = Vec::new();
        for (name, spanned) in &config.raw.issuers {
            let ic = spanned.get_ref();
            let mut algorithms = Vec::new();
            for a in &ic.algorithms {
                match keys::parse_algorithm(a.get_ref()) {
                    Ok(alg) if !algorithms.contains(&alg) => algorithms.push(alg),
                    Ok(_) => {}
                    Err(e) => errors.push(config.error_at(a.span(), e.to_string())),
                }
            }
            if let Err(e) = keys::check_algorithms(&algorithms) {
                errors.push(config.error_at(spanned.span(), format!("issuer `{name}`: {e}")));
                continue;
            }
            let mut all: Vec<VerifyKey> = Vec::new();
            for k in &ic.keys {
                match load_source(config, k.get_ref(), &algorithms) {
                    Ok(mut ks) => all.append(&mut ks),
                    Err(e) => {
                        errors.push(config.error_at(k.span(), format!("issuer `{name}`: {e}")))
                    }
                }
            }
            if set.by_iss.contains_key(&ic.issuer) {
                errors.push(config.error_at(
                    spanned.span(),
                    format!(
                        "issuer `{name}`: another issuer already has `issuer = \"{}\"`",
                        ic.issuer
                    ),
                ));
                continue;
            }
            let issuer = Arc::new(Issuer {
                name: Arc::from(name.as_str()),
                iss: ic.issuer.clone(),
                audiences: ic.audiences.clone(),
                algorithms,
                leeway_seconds: ic.leeway_seconds,
                keys: KeySet::new(all),
            });
            set.by_iss.insert(ic.issuer.clone(), issuer.clone());
            set.by_name.insert(issuer.name.clone(), issuer);
        }
        if errors.is_empty() {
            Ok(set)
        } else {
            Err(errors)
        }
    }
}

fn load_source(
    config: &Config,
    source: &KeySource,
    algorithms: &[Algorithm],
) -> Result<Vec<VerifyKey>, KeyError> {
    let kid = source.kid.as_deref();
    if let Some(p) = &source.pem_file {
        keys::from_pem_file(&config.resolve(p), kid, algorithms)
    } else if let Some(p) = &source.jwks_file {
        keys::from_jwks_file(&config.resolve(p), algorithms)
    } else if let Some(var) = &source.secret_env {
        keys::from_secret(&keys::secret_from_env(var)?, kid, algorithms)
    } else if let Some(p) = &source.secret_file {
        keys::from_secret(
            &keys::secret_from_file(&config.resolve(p))?,
            kid,
            algorithms,
        )
    } else {
        // Config validation guarantees exactly one source; this is unreachable in practice.
        Err(KeyError::InvalidPem {
            path: config.path.clone(),
        })
    }
}
