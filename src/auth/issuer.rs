//! Issuers: who may sign tokens, for which audiences, with which keys.

use super::keys::{self, KeyError, KeySet, VerifyKey};
use super::remote::{RefreshSettings, RemoteKeys, RemoteRegistry, Source};
use crate::config::{Config, KeyKind, KeySource};
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
    /// Keys from files and secrets, loaded with the configuration.
    pub keys: KeySet,
    /// Keys fetched from the identity provider, refreshed in the background.
    pub remote: Vec<Arc<RemoteKeys>>,
}

impl Issuer {
    /// Which keys the issuer has now: changes when fetched keys change; `None` when fetched
    /// keys are missing or stale. Configured keys only change with a reload (a new `Issuer`).
    pub fn key_generation(&self) -> Option<u64> {
        self.remote
            .iter()
            .try_fold(0u64, |sum, r| r.generation().map(|g| sum.wrapping_add(g)))
    }

    /// Runs `f` with the key for `kid` and `alg`: configured keys first, then fetched ones.
    pub fn with_key<R>(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
        f: impl FnOnce(&VerifyKey) -> R,
    ) -> Option<R> {
        if let Some(k) = self.keys.find(kid, alg) {
            return Some(f(k));
        }
        for r in &self.remote {
            if let Some(set) = r.current() {
                if let Some(k) = set.find(kid, alg) {
                    return Some(f(k));
                }
            }
        }
        None
    }
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

    /// Every fetched key set of every issuer.
    pub fn remotes(&self) -> Vec<Arc<RemoteKeys>> {
        self.by_name
            .values()
            .flat_map(|i| i.remote.iter().cloned())
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Loads every issuer's keys. Errors point at the issuer or key entry in `gateway.toml`.
    pub fn load(config: &Config, registry: &RemoteRegistry) -> Result<IssuerSet, Vec<SourceError>> {
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
            let mut remote = Vec::new();
            let settings = RefreshSettings {
                interval: std::time::Duration::from_secs(ic.refresh_seconds),
                min_interval: std::time::Duration::from_secs(ic.min_refresh_seconds),
                max_interval: std::time::Duration::from_secs(
                    ic.max_refresh_seconds.max(ic.min_refresh_seconds),
                ),
                unknown_kid_cooldown: std::time::Duration::from_secs(
                    ic.unknown_kid_cooldown_seconds,
                ),
                max_staleness: std::time::Duration::from_secs(ic.max_staleness_seconds),
                timeout: std::time::Duration::from_millis(ic.fetch_timeout_ms),
                max_bytes: ic.max_jwks_bytes,
            };
            for k in &ic.keys {
                let ks = k.get_ref();
                let source = match load_source(config, ks, &ic.issuer, &algorithms) {
                    Ok(Keys::Loaded(mut keys)) => {
                        all.append(&mut keys);
                        continue;
                    }
                    Ok(Keys::Fetched(source)) => source,
                    Err(e) => {
                        errors.push(config.error_at(k.span(), format!("issuer `{name}`: {e}")));
                        continue;
                    }
                };
                if algorithms
                    .iter()
                    .any(|a| a.family() == jsonwebtoken::AlgorithmFamily::Hmac)
                {
                    errors.push(config.error_at(
                        k.span(),
                        format!("issuer `{name}`: fetched keys are public keys; HS algorithms take a secret"),
                    ));
                    continue;
                }
                remote.push(registry.get(name, source, &algorithms, &settings));
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
                remote,
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

/// What a key source gives: keys read now, or a source to fetch them from.
enum Keys {
    Loaded(Vec<VerifyKey>),
    Fetched(Source),
}

fn load_source(
    config: &Config,
    source: &KeySource,
    iss: &str,
    algorithms: &[Algorithm],
) -> Result<Keys, KeyError> {
    let kid = source.kid.as_deref();
    let keys = match &source.kind {
        KeyKind::PemFile(p) => keys::from_pem_file(&config.resolve(p), kid, algorithms)?,
        KeyKind::JwksFile(p) => keys::from_jwks_file(&config.resolve(p), algorithms)?,
        KeyKind::SecretEnv(var) => {
            keys::from_secret(&keys::secret_from_env(var)?, kid, algorithms)?
        }
        KeyKind::SecretFile(p) => keys::from_secret(
            &keys::secret_from_file(&config.resolve(p))?,
            kid,
            algorithms,
        )?,
        KeyKind::JwksUrl(u) => return Ok(Keys::Fetched(Source::Jwks(u.clone()))),
        KeyKind::DiscoveryUrl(u) => {
            return Ok(Keys::Fetched(Source::Discovery {
                url: u.clone(),
                issuer: iss.to_string(),
            }))
        }
    };
    Ok(Keys::Loaded(keys))
}
