//! Files -> [`Snapshot`]: the one loader. It reads the configuration, the rules files, the keys
//! and the geo database listed by [`Inputs`], and nothing else, and returns every error found,
//! each with its location. The proxy, reload and the CLI all load through here.

use crate::auth::remote::RemoteRegistry;
use crate::auth::IssuerSet;
use crate::config::{AuthMode, Config};
use crate::engine::{strip_headers, Snapshot};
use crate::geo::GeoResolver;
use crate::inputs::{Found, Inputs};
use crate::location::{SourceError, SourceErrors};
use crate::policy::analysis::InputBounds;
use crate::policy::{EvalBudget, LoadContext, PolicySet, SourceReads};
use crate::sources::SourceSet;
use std::path::Path;
use std::sync::Arc;

/// A snapshot and the inputs it was read from.
pub struct Loaded {
    pub snapshot: Snapshot,
    pub inputs: Inputs,
    /// The inputs' content hash, taken before they were read for the snapshot: an edit made
    /// while the process starts (or fetches keys) differs from it, so the first check after
    /// start loads it. A hash taken later would take that edit for the set in force.
    pub hash: String,
}

/// Loads everything a snapshot needs from the configuration at `path`: every error at once.
pub fn load(path: &Path, remote: &RemoteRegistry) -> Result<Loaded, SourceErrors> {
    let found = Inputs::find(path);
    let hash = found.inputs.content_hash();
    let snapshot = build(found.config?, &found.inputs, remote)?;
    Ok(Loaded {
        snapshot,
        inputs: found.inputs,
        hash,
    })
}

/// Builds a snapshot from a configuration found with its inputs ([`Inputs::find`]).
pub fn build_found(found: &Found, remote: &RemoteRegistry) -> Result<Snapshot, SourceErrors> {
    match &found.config {
        Ok(c) => build(c.clone(), &found.inputs, remote),
        Err(e) => Err(SourceErrors(e.0.clone())),
    }
}

/// Loads keys, sources, policies and the geo database for `config`, reading the rules files
/// `inputs` lists.
pub fn build(
    config: Config,
    inputs: &Inputs,
    remote: &RemoteRegistry,
) -> Result<Snapshot, SourceErrors> {
    let config = Arc::new(config);
    let issuers = IssuerSet::load(&config, remote);
    let sources = SourceSet::compile(&config);
    let ctx = load_context(&config, sources.as_ref().unwrap_or(&SourceSet::default()));
    // The files read are the ones `inputs` listed, once.
    let policy = match &inputs.rules_unreadable {
        Some(e) => Err(vec![SourceError::whole_file(&config.rules_dir, e.clone())]),
        None => PolicySet::load_files(&inputs.rules, &ctx),
    };
    let geo = load_geo(&config);
    let upstreams = crate::upstream::Upstreams::load(&config);
    let strip = strip_headers(&config);
    // Header names and certificates: their errors are reported together.
    let tls = match (strip, crate::tls::Certificates::load(&config), upstreams) {
        (Ok(_), Ok(tls), Ok(ups)) => Ok((tls, ups)),
        (strip, tls, ups) => Err(strip
            .err()
            .unwrap_or_default()
            .into_iter()
            .chain(tls.err().unwrap_or_default())
            .chain(ups.err().unwrap_or_default())
            .collect::<Vec<_>>()),
    };
    match (issuers, policy, geo, sources, tls) {
        (Ok(i), Ok(mut p), Ok(g), Ok(s), Ok((tls, upstreams))) => {
            p.warnings
                .extend(unmatched_allowed_past_routes(&config, &p));
            if let Some(certs) = &tls {
                p.warnings.extend(certificate_warnings(
                    &config,
                    certs,
                    &p,
                    crate::sync::unix_seconds(std::time::SystemTime::now()) as i64,
                ));
            }
            for w in i.warnings.iter().chain(&p.warnings) {
                tracing::warn!(warning = %w, "configuration warning");
            }
            Ok(
                Snapshot::new(config, Arc::new(i), Arc::new(p), Arc::new(g), Arc::new(s))
                    .with_tls(tls)
                    .with_upstreams(upstreams),
            )
        }
        (i, p, g, s, strip) => {
            let mut errors = strip.err().unwrap_or_default();
            errors.extend(i.err().unwrap_or_default());
            errors.extend(s.err().unwrap_or_default());
            errors.extend(p.err().unwrap_or_default());
            errors.extend(g.err());
            Err(SourceErrors(errors))
        }
    }
}

/// A host with routes of its own is decided by those routes only: the host-less routes are not
/// served for it, so their paths are unmatched there. With `[unmatched] action = "allow"`,
/// a protected host-less route is then open on that host.
fn unmatched_allowed_past_routes(config: &Config, p: &PolicySet) -> Vec<SourceError> {
    if config.raw.unmatched.action != crate::config::UnmatchedAction::Allow {
        return Vec::new();
    }
    let protected: Vec<&str> = p
        .routes
        .iter()
        .filter(|r| r.host.is_none() && (r.auth != AuthMode::None || !r.rules.is_empty()))
        .map(|r| &*r.name)
        .collect();
    if protected.is_empty() {
        return Vec::new();
    }
    let mut hosts: Vec<&str> = p.routes.iter().filter_map(|r| r.host.as_deref()).collect();
    hosts.sort_unstable();
    hosts.dedup();
    hosts
        .into_iter()
        .map(|h| {
            SourceError::whole_file(
                &config.path,
                format!(
                    "host `{h}` has routes of its own, so the host-less routes are not served for it; with `[unmatched] action = \"allow\"` the paths of the protected ones ({}) are let through unchecked on `{h}`",
                    protected.join(", ")
                ),
            )
        })
        .collect()
}

/// Certificates that load and that clients will refuse: expired, or expiring within 14 days
/// (at the certificate's entry), and route hosts no certificate names (a client for one is
/// served the first certificate, and refuses the handshake).
fn certificate_warnings(
    config: &Config,
    certs: &crate::tls::Certificates,
    policy: &PolicySet,
    now: i64,
) -> Vec<SourceError> {
    const SOON: i64 = 14 * 86_400;
    let mut out = Vec::new();
    let entries = config
        .raw
        .listen
        .tls
        .iter()
        .flat_map(|t| t.certificates.iter());
    for (entry, cert) in entries.zip(certs.iter()) {
        let date = chrono::DateTime::from_timestamp(cert.not_after, 0)
            .map(|d| d.format("%Y-%m-%d %H:%M UTC").to_string())
            .unwrap_or_default();
        let file = cert.file.display();
        let message = if cert.not_after <= now {
            format!("certificate `{file}` expired on {date}: clients refuse it")
        } else if cert.not_after - now < SOON {
            let days = (cert.not_after - now) / 86_400;
            format!("certificate `{file}` expires on {date}, in {days} day(s)")
        } else {
            continue;
        };
        out.push(config.error_at(entry.span(), message));
    }
    let mut hosts: Vec<(&str, &crate::policy::Route)> = policy
        .routes
        .iter()
        .filter_map(|r| r.host.as_deref().map(|h| (h, r)))
        .filter(|(h, _)| h.parse::<std::net::IpAddr>().is_err())
        .collect();
    hosts.sort_by_key(|(h, _)| *h);
    hosts.dedup_by_key(|(h, _)| *h);
    for (host, route) in hosts {
        if !certs.covers(host) {
            out.push(SourceError::whole_file(
                &route.file,
                format!(
                    "route `{}`: no certificate of `[listen.tls]` names host `{host}`: a TLS client for it is served the first certificate and refuses the handshake",
                    route.name
                ),
            ));
        }
    }
    out
}

/// Loads a snapshot for the offline tools (`check`, `eval`, `test`); with `fetch_keys`,
/// remote keys are fetched once so tokens of JWKS issuers can be verified.
pub fn for_tools(path: &Path, fetch_keys: bool) -> Result<Snapshot, SourceErrors> {
    let remote = RemoteRegistry::default();
    let mut snapshot = load(path, &remote)?.snapshot;
    // Each decision verifies its own token: cases decided at different `now`s must not see a
    // token another case's decision cached (a hit does not check `iat` again), and a case's
    // answer must not depend on the cases before it.
    snapshot.token_cache = None;
    if fetch_keys {
        initial_key_fetch(&snapshot);
    }
    Ok(snapshot)
}

/// Fetches every issuer's remote keys once, each within its own timeout. Failures are logged;
/// the gateway then starts not ready and keeps retrying in the background.
pub fn initial_key_fetch(snapshot: &Snapshot) {
    let remotes = snapshot.issuers.remotes();
    if remotes.is_empty() {
        return;
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot fetch keys at startup");
            return;
        }
    };
    rt.block_on(async {
        for r in remotes {
            if let Err(e) = r.refresh().await {
                tracing::error!(
                    issuer = %r.issuer,
                    url = r.url(),
                    error = %e,
                    "cannot fetch the issuer's keys at startup; its tokens are rejected until a fetch succeeds"
                );
            }
        }
    });
}

fn load_geo(config: &Config) -> Result<GeoResolver, SourceError> {
    let g = &config.raw.geo;
    let trusted: Vec<String> = config
        .raw
        .network
        .trusted_proxies
        .iter()
        .map(|t| t.get_ref().clone())
        .collect();
    let mmdb = g.mmdb.as_ref().map(|p| config.resolve(p.get_ref()));
    GeoResolver::new(
        mmdb.as_deref(),
        g.country_header.as_ref().map(|h| h.get_ref().as_str()),
        &trusted,
    )
    .map_err(|e| {
        let span = match (&e, &g.mmdb, &g.country_header) {
            (crate::geo::GeoError::Database { .. }, Some(p), _) => p.span(),
            (crate::geo::GeoError::BadHeader(_), _, Some(h)) => h.span(),
            _ => 0..0,
        };
        config.error_at(span, e.to_string())
    })
}

/// The names policies may refer to.
pub fn load_context(config: &Config, sources: &SourceSet) -> LoadContext {
    LoadContext {
        issuers: config.raw.issuers.keys().cloned().collect(),
        upstreams: config.raw.upstreams.keys().cloned().collect(),
        default_upstream: config.default_upstream().map(str::to_string),
        sources: sources
            .iter()
            .map(|s| {
                (
                    s.name.to_string(),
                    SourceReads {
                        body: s.reads_body,
                        request: s.request_reads.clone(),
                    },
                )
            })
            .collect(),
        eval: eval_budget(config, sources),
        config_file: config
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned()),
    }
}

/// The input sizes the limits allow, for the load-time evaluation budget.
fn eval_budget(config: &Config, sources: &SourceSet) -> EvalBudget {
    let limits = &config.raw.limits;
    let largest_source = sources
        .iter()
        .map(|s| s.settings.max_response_bytes)
        .max()
        .unwrap_or(1);
    EvalBudget {
        bounds: InputBounds::from_bytes(
            limits.max_token_bytes.min(limits.max_claims_bytes),
            crate::policy::MAX_BODY_LIMIT,
            limits.max_header_bytes,
            largest_source,
        ),
        max_steps: limits.max_eval_steps,
    }
}

#[cfg(test)]
mod tests {
    use crate::inputs::Inputs;
    use crate::testing::Workspace;

    const OPEN: &str = "[[route]]\nname = \"open\"\npath = \"/*\"\nauth = \"none\"\n";

    #[test]
    fn the_inputs_are_exactly_the_files_read() {
        let ws = Workspace::new(&[("b.toml", OPEN), ("a.toml", "")]);
        ws.write("rules/notes.md", "not a rules file");
        let loaded = ws.load();
        let i = &loaded.inputs;
        assert_eq!(i.config, ws.path("gateway.toml"));
        assert_eq!(i.rules, [ws.path("rules/a.toml"), ws.path("rules/b.toml")]);
        assert_eq!(i.keys, [ws.path("secret")]);
        assert_eq!(loaded.snapshot.policy.files, i.rules);
        let files: Vec<_> = i.files().collect();
        assert_eq!(files.len(), 4);
        assert!(i.watch_dirs().contains(&ws.path("rules")));
    }

    #[test]
    fn errors_from_every_input_come_back_together() {
        let ws = Workspace::new(&[("a.toml", "[[route]]\nname = 1\n")]);
        std::fs::remove_file(ws.path("secret")).unwrap();
        let e = super::load(&ws.path("gateway.toml"), &Default::default())
            .err()
            .expect("must fail");
        let text = e.to_string();
        assert!(text.contains("gateway.toml:"), "{text}");
        assert!(text.contains("a.toml:2:"), "{text}");
    }

    #[test]
    fn a_write_changes_the_hash_and_the_identities() {
        let ws = Workspace::new(&[("a.toml", OPEN)]);
        let before = Inputs::find(&ws.path("gateway.toml")).inputs;
        assert_eq!(before, Inputs::find(&ws.path("gateway.toml")).inputs);
        let hash = before.content_hash();
        ws.write("rules/a.toml", &format!("{OPEN}\n# edited, longer\n"));
        let after = Inputs::find(&ws.path("gateway.toml")).inputs;
        assert_ne!(before, after);
        assert_ne!(hash, after.content_hash());
        // A new rules file is a new input.
        ws.write("rules/b.toml", "");
        assert_eq!(Inputs::find(&ws.path("gateway.toml")).inputs.rules.len(), 2);
    }

    #[test]
    fn a_configuration_that_does_not_parse_is_its_only_input() {
        let ws = Workspace::new(&[]);
        ws.write("gateway.toml", "[listen\n");
        let found = Inputs::find(&ws.path("gateway.toml"));
        assert!(found.config.is_err());
        assert_eq!(found.inputs.files().count(), 1);
    }
}
