//! Issuers: who may sign tokens, for which audiences, with which keys.

use super::keys::{self, KeyError, KeySet, VerifyKey};
use super::remote::{RefreshSettings, RemoteKeys, RemoteRegistry, Source, TrustedCas};
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
    /// Accepted `typ` header values, lower-case without `application/` (empty: any, or none).
    pub types: Vec<String>,
    /// Tokens must be bound to the connection's client certificate (RFC 8705 §3).
    pub certificate_bound: bool,
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
    ) -> Result<R, KeyMiss> {
        if let Some(k) = self.keys.find(kid, alg) {
            return Ok(f(k));
        }
        let mut stale = None;
        for r in &self.remote {
            match r.current() {
                Some(set) => {
                    if let Some(k) = set.find(kid, alg) {
                        return Ok(f(k));
                    }
                }
                None => stale = Some(r.retry_after_seconds()),
            }
        }
        Err(match stale {
            Some(retry_after) => KeyMiss::Stale { retry_after },
            None => KeyMiss::Unknown,
        })
    }
}

/// A `typ` value as compared (RFC 7515 §4.1.9): case-insensitive, `application/` implied.
pub fn media_type(t: &str) -> String {
    let t = t.to_ascii_lowercase();
    match t.strip_prefix("application/") {
        Some(rest) => rest.to_string(),
        None => t,
    }
}

/// Why no key verifies a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyMiss {
    /// No key has the token's key id and algorithm.
    Unknown,
    /// Fetched keys are past their staleness (or never arrived): the key may well exist; the
    /// next fetch is due in `retry_after` seconds.
    Stale { retry_after: u64 },
}

/// All configured issuers, looked up by name (from policies) or by `iss` (from tokens).
#[derive(Debug, Default)]
pub struct IssuerSet {
    by_name: HashMap<Arc<str>, Arc<Issuer>>,
    by_iss: HashMap<String, Arc<Issuer>>,
    /// What loads but deserves a look: inferred key algorithms, clamped refresh settings.
    pub warnings: Vec<SourceError>,
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
            for w in refresh_warnings(ic) {
                set.warnings
                    .push(config.error_at(spanned.span(), format!("issuer `{name}`: {w}")));
            }
            let (all, remote) = load_keys(
                config,
                registry,
                (name, ic),
                &algorithms,
                &mut errors,
                &mut set.warnings,
            );
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
            for w in unusable_keys(config, ic, &algorithms, &all) {
                set.warnings
                    .push(config.error_at(spanned.span(), format!("issuer `{name}`: {w}")));
            }
            let issuer = Arc::new(Issuer {
                name: Arc::from(name.as_str()),
                iss: ic.issuer.clone(),
                audiences: ic.audiences.clone(),
                algorithms,
                leeway_seconds: ic.leeway_seconds,
                types: ic.types.iter().map(|t| media_type(t)).collect(),
                certificate_bound: ic.certificate_bound,
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

/// An issuer's keys: those read now, and the key sets fetched from its URLs. Errors and
/// warnings point at the key entry (or `ca_file`).
fn load_keys(
    config: &Config,
    registry: &RemoteRegistry,
    (name, ic): (&str, &crate::config::IssuerConfig),
    algorithms: &[Algorithm],
    errors: &mut Vec<SourceError>,
    warnings: &mut Vec<SourceError>,
) -> (Vec<VerifyKey>, Vec<Arc<RemoteKeys>>) {
    let mut all: Vec<VerifyKey> = Vec::new();
    let mut remote = Vec::new();
    let trusted_cas = trusted_cas(config, name, ic).unwrap_or_else(|e| {
        errors.push(e);
        None
    });
    let settings = refresh_settings(ic, trusted_cas);
    for k in &ic.keys {
        let at = |msg: String| config.error_at(k.span(), format!("issuer `{name}`: {msg}"));
        let source = match load_source(config, k.get_ref(), &ic.issuer, algorithms) {
            Ok(Keys::Loaded(p)) => {
                if p.inferred {
                    warnings.push(at(format!(
                        "this key's algorithm is inferred as {:?}; name it with `alg` (RFC 8725 §3.1)",
                        p.key.alg
                    )));
                }
                all.push(p.key);
                continue;
            }
            Ok(Keys::Many(mut doc)) => {
                warnings.extend(doc.skipped.iter().map(|why| at(why.to_string())));
                all.append(&mut doc.keys);
                continue;
            }
            Ok(Keys::Fetched(source)) => source,
            Err(e) => {
                errors.push(at(e.to_string()));
                continue;
            }
        };
        if algorithms
            .iter()
            .all(|a| a.family() == jsonwebtoken::AlgorithmFamily::Hmac)
        {
            errors.push(at(
                "fetched keys are public keys; `algorithms` names only HMAC (HS*) algorithms"
                    .to_string(),
            ));
            continue;
        }
        match registry.get(name, source, algorithms, &settings) {
            Ok(r) => remote.push(r),
            Err(e) => errors.push(at(e.to_string())),
        }
    }
    (all, remote)
}

/// The issuer's `ca_file`, read (`None` without one). It is for keys fetched from a URL; on
/// an issuer with none it would be silently unused, so it is an error there.
fn trusted_cas(
    config: &Config,
    name: &str,
    ic: &crate::config::IssuerConfig,
) -> Result<Option<TrustedCas>, SourceError> {
    let Some(file) = &ic.ca_file else {
        return Ok(None);
    };
    let at = |msg: String| config.error_at(file.span(), format!("issuer `{name}`: {msg}"));
    let fetched = ic.keys.iter().any(|k| {
        matches!(
            k.get_ref().kind,
            KeyKind::JwksUrl(_) | KeyKind::DiscoveryUrl(_)
        )
    });
    if !fetched {
        return Err(at("`ca_file` is the CA of the identity provider's https server, and this issuer fetches no keys (no `jwks_url` or `discovery_url`)".to_string()));
    }
    crate::upstream::read_chain(&config.resolve(file.get_ref()))
        .map(|ders| Some(TrustedCas(ders.into())))
        .map_err(at)
}

/// An issuer's fetch timing and bounds, as written, and the CAs its servers must chain to.
fn refresh_settings(
    ic: &crate::config::IssuerConfig,
    trusted_cas: Option<TrustedCas>,
) -> RefreshSettings {
    RefreshSettings {
        trusted_cas,
        interval: std::time::Duration::from_secs(ic.refresh_seconds),
        min_interval: std::time::Duration::from_secs(ic.min_refresh_seconds),
        max_interval: std::time::Duration::from_secs(
            ic.max_refresh_seconds.max(ic.min_refresh_seconds),
        ),
        unknown_kid_cooldown: std::time::Duration::from_secs(ic.unknown_kid_cooldown_seconds),
        max_staleness: std::time::Duration::from_secs(ic.max_staleness_seconds),
        timeout: std::time::Duration::from_millis(ic.fetch_timeout_ms),
        max_bytes: ic.max_jwks_bytes,
    }
}

/// Key setups that load and refuse every token: several keys of one algorithm without `kid`
/// (`KeySet::find` chooses none of them, so every token of that algorithm is `unknown_key`),
/// and a certificate-bound issuer (RFC 8705) with no listener that asks for client
/// certificates (only a `[listen.tls]` with `client_ca` does).
fn unusable_keys(
    config: &Config,
    ic: &crate::config::IssuerConfig,
    algorithms: &[jsonwebtoken::Algorithm],
    keys: &[VerifyKey],
) -> Vec<String> {
    let mut w = Vec::new();
    let unnamed: Vec<String> = algorithms
        .iter()
        .filter_map(|alg| {
            let n = keys
                .iter()
                .filter(|k| k.alg == *alg && k.kid.is_none())
                .count();
            (n > 1).then(|| format!("{n} {alg:?}"))
        })
        .collect();
    if !unnamed.is_empty() {
        w.push(format!(
            "several keys of one algorithm have no `kid` ({}): a token cannot name one, none is chosen, and every such token is refused (`unknown_key`); give each key a `kid`",
            unnamed.join(", ")
        ));
    }
    let client_ca = config
        .raw
        .listen
        .tls
        .as_ref()
        .is_some_and(|t| t.client_ca.is_some());
    if ic.certificate_bound && !client_ca {
        w.push("`certificate_bound` needs a client certificate, which only a `[listen.tls]` with `client_ca` asks for: every token of this issuer is refused (`certificate_binding`)".to_string());
    }
    w
}

/// Refresh settings that take effect other than written: `refresh_seconds` is kept between
/// `min_refresh_seconds` and `max_refresh_seconds`, and a maximum below the minimum is raised.
fn refresh_warnings(ic: &crate::config::IssuerConfig) -> Vec<String> {
    let mut w = Vec::new();
    let (r, min, max) = (
        ic.refresh_seconds,
        ic.min_refresh_seconds,
        ic.max_refresh_seconds,
    );
    if max < min {
        w.push(format!(
            "`max_refresh_seconds` ({max}) is below `min_refresh_seconds` ({min}); {min} is used"
        ));
    }
    if r < min {
        w.push(format!("`refresh_seconds` ({r}) is below `min_refresh_seconds` ({min}); keys are refreshed every {min} s"));
    } else if r > max.max(min) {
        w.push(format!("`refresh_seconds` ({r}) is above `max_refresh_seconds` ({max}); keys are refreshed every {} s", max.max(min)));
    }
    if ic.max_staleness_seconds < r.max(min) {
        w.push(format!("`max_staleness_seconds` ({}) is shorter than the refresh interval: keys go stale between two fetches", ic.max_staleness_seconds));
    }
    w
}

/// What a key source gives: keys read now, or a source to fetch them from.
enum Keys {
    /// One key from a PEM file or a secret.
    Loaded(keys::Pinned),
    /// The keys of a JWKS file, each pinned to the algorithm it names or its type fixes.
    Many(keys::Jwks),
    Fetched(Source),
}

fn load_source(
    config: &Config,
    source: &KeySource,
    iss: &str,
    algorithms: &[Algorithm],
) -> Result<Keys, KeyError> {
    let kid = source.kid.as_deref();
    let alg = source
        .alg
        .as_deref()
        .map(keys::parse_algorithm)
        .transpose()?;
    let keys = match &source.kind {
        KeyKind::PemFile(p) => keys::from_pem_file(&config.resolve(p), kid, alg, algorithms)?,
        KeyKind::JwksFile(p) => {
            // A JWKS file holds many keys, each pinned by `from_jwks_file`; they load as one.
            return keys::from_jwks_file(&config.resolve(p), algorithms).map(Keys::Many);
        }
        KeyKind::SecretEnv(var) => {
            keys::from_secret(&keys::secret_from_env(var)?, kid, alg, algorithms)?
        }
        KeyKind::SecretFile(p) => keys::from_secret(
            &keys::secret_from_file(&config.resolve(p))?,
            kid,
            alg,
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// A gateway.toml in `dir` with one issuer fetching its keys from an https URL and `extra`
    /// in the issuer's table.
    fn config(dir: &Path, keys: &str, extra: &str) -> Config {
        let text = format!(
            "[listen]\nproxy = \"127.0.0.1:8080\"\nadmin = \"127.0.0.1:9901\"\n[rules]\ndir = \"rules\"\n\
             [issuers.idp]\nissuer = \"https://idp.test\"\naudiences = [\"api\"]\nalgorithms = [\"RS256\"]\n\
             keys = [{keys}]\n{extra}\n"
        );
        Config::from_str(&dir.join("gateway.toml"), text).unwrap()
    }

    fn write_ca(dir: &Path, file: &str) {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        std::fs::write(dir.join(file), p.self_signed(&key).unwrap().pem()).unwrap();
    }

    const FETCHED: &str = "{ jwks_url = \"https://idp.test/jwks\" }";

    fn load_errors(c: &Config) -> Vec<String> {
        IssuerSet::load(c, &RemoteRegistry::default())
            .err()
            .unwrap_or_default()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn a_ca_file_is_for_fetched_keys_and_must_hold_certificates() {
        let dir = tempfile::tempdir().unwrap();
        write_ca(dir.path(), "ca.pem");
        // On an issuer that fetches nothing it would never be used: an error at the setting.
        let pem = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/keys/rsa-public.pem"
        );
        let c = config(
            dir.path(),
            &format!("{{ pem_file = \"{pem}\", alg = \"RS256\" }}"),
            "ca_file = \"ca.pem\"",
        );
        let errors = load_errors(&c);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("gateway.toml:11:11"), "{errors:?}");
        assert!(errors[0].contains("fetches no keys"), "{errors:?}");
        // Not a certificate, or missing: an error at the setting, naming the file.
        std::fs::write(dir.path().join("junk.pem"), "not pem").unwrap();
        for file in ["junk.pem", "missing.pem"] {
            let c = config(dir.path(), FETCHED, &format!("ca_file = \"{file}\""));
            let errors = load_errors(&c);
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert!(errors[0].contains("gateway.toml:11:11"), "{errors:?}");
            assert!(errors[0].contains(file), "{errors:?}");
        }
        let c = config(dir.path(), FETCHED, "ca_file = \"ca.pem\"");
        assert!(load_errors(&c).is_empty());
    }
}
