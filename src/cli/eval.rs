//! `claimgate eval`: decide one described request offline and show why.

use claimgate::explain::{
    check_names, explain, parse_header, EvalRequest, Mock, TokenInput, Verdict,
};
use clap::Args;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
#[command(after_help = "\
Exit status: 0 allowed, 1 denied, 2 the configuration or the arguments are wrong.

Examples:
  # As a verified token (signature, iss, aud, exp checked against gateway.toml):
  claimgate eval --token \"$TOKEN\" /api/profile

  # Raw claims, no signature checked (the report says UNVERIFIED):
  claimgate eval --claims '{\"sub\":\"bob\",\"permissions\":[\"transfer\"]}' \\
      --method POST --body '{\"amount\": 50}' --country DE /api/transfer

  # A time rule at a fixed instant, with a mocked external source:
  claimgate eval --claims '{\"sub\":\"alice\"}' --now 2026-03-04T10:00:00-05:00 \\
      --source 'balance={\"balance\":0}' /api/game/play --json")]
pub struct EvalArgs {
    /// The gateway configuration file (its rules directory is used).
    #[arg(short, long, default_value = "gateway.toml")]
    config: PathBuf,
    /// The request target, as a client sends it: a path with an optional ?query, or an
    /// absolute URL (its host is then the request's host).
    path: String,
    /// The method, exactly as a client sends it (methods are case-sensitive).
    #[arg(short = 'X', long, default_value = "GET")]
    method: String,
    /// Host header (for host-specific routes). Without it, the request is decided as one
    /// without a Host header (HTTP/1.0): by the host-less routes where no route names a host,
    /// else refused (400 bad_host), as the gateway does.
    #[arg(long)]
    host: Option<String>,
    /// A bearer token, verified as the gateway would.
    #[arg(long, conflicts_with = "claims")]
    token: Option<String>,
    /// Claims as a JSON object, taken as they are: NO signature is checked.
    #[arg(long, value_name = "JSON")]
    claims: Option<String>,
    /// With --claims: the issuer (name in gateway.toml) they are attributed to; default: the
    /// route's first issuer.
    #[arg(long, requires = "claims")]
    issuer: Option<String>,
    /// A request header, `Name: value`; repeatable.
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// JSON request body (`@FILE` reads a file).
    #[arg(long)]
    body: Option<String>,
    /// Decide at this instant (RFC 3339); default: now.
    #[arg(long, value_name = "TIME")]
    now: Option<chrono::DateTime<chrono::FixedOffset>>,
    /// The client address (the connection's peer).
    #[arg(long, value_name = "IP")]
    client_ip: Option<IpAddr>,
    /// Decide as if the client were in this country (ISO 3166 code, e.g. DE).
    #[arg(long, value_name = "CC")]
    country: Option<String>,
    /// Units of a limit already used in its window: NAME=N; repeatable.
    #[arg(long = "limit-used", value_name = "NAME=N")]
    limits_used: Vec<String>,
    /// Decide as if the request came over TLS (the TLS listener), TLS 1.3.
    #[arg(long)]
    tls: bool,
    /// ... with this client certificate (PEM file); implies --tls.
    #[arg(long, value_name = "PEM")]
    client_cert: Option<std::path::PathBuf>,
    /// Mocked answer of an external source: NAME=JSON, NAME=@FILE, NAME=not-found or
    /// NAME=unavailable; repeatable. Sources without a mock are unavailable.
    #[arg(long = "source", value_name = "NAME=VALUE")]
    sources: Vec<String>,
    /// Print the decision and trace as JSON.
    #[arg(long)]
    json: bool,
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("claimgate eval: {msg}");
    ExitCode::from(2)
}

/// `@FILE` or the text itself.
fn text_or_file(s: &str) -> Result<String, String> {
    match s.strip_prefix('@') {
        Some(f) => std::fs::read_to_string(f).map_err(|e| format!("cannot read `{f}`: {e}")),
        None => Ok(s.to_string()),
    }
}

pub fn parse_mock(s: &str) -> Result<(String, Mock), String> {
    let (name, v) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not NAME=VALUE"))?;
    let mock = match v {
        "not-found" => Mock::NotFound,
        "unavailable" => Mock::Unavailable,
        other => {
            let text = text_or_file(other)?;
            Mock::Json(
                serde_json::from_str(&text)
                    .map_err(|e| format!("source `{name}`: not JSON: {e}"))?,
            )
        }
    };
    Ok((name.to_string(), mock))
}

pub fn run(a: EvalArgs) -> ExitCode {
    // A token given with `--token` or in an `Authorization` header (`-H`) is verified with the
    // issuers' keys, fetched ones included, as the gateway would.
    let bearer = a.headers.iter().any(|h| {
        h.trim_start()
            .to_ascii_lowercase()
            .starts_with("authorization")
    });
    let snapshot = match claimgate::load::for_tools(&a.config, a.token.is_some() || bearer) {
        Ok(s) => s,
        Err(e) => return fail(format!("the configuration does not load:\n{e}")),
    };
    let mut req = EvalRequest {
        method: a.method.clone(),
        host: a.host,
        target: a.path,
        client_ip: a.client_ip,
        country: a.country,
        ..Default::default()
    };
    for u in &a.limits_used {
        match u
            .split_once('=')
            .and_then(|(n, v)| Some((n.trim().to_string(), v.trim().parse::<f64>().ok()?)))
        {
            Some((name, used)) if used.is_finite() && used >= 0.0 => {
                req.limits_used.insert(name, used);
            }
            _ => return fail(format!("--limit-used `{u}`: write NAME=N")),
        }
    }
    if a.tls || a.client_cert.is_some() {
        match claimgate::tls::described_connection(
            a.client_cert.as_deref(),
            snapshot.tls.as_deref(),
        ) {
            Ok(t) => req.tls = Some(t),
            Err(e) => return fail(e),
        }
    }
    for h in &a.headers {
        match parse_header(h) {
            Ok((n, v)) => {
                req.headers.append(n, v);
            }
            Err(e) => return fail(e),
        }
    }
    if let Some(b) = &a.body {
        match text_or_file(b) {
            Ok(t) => req.body = Some(t.into_bytes()),
            Err(e) => return fail(e),
        }
        // `--body` is JSON: typed so unless a `-H` types it otherwise.
        if !req.headers.contains_key(http::header::CONTENT_TYPE) {
            req.headers.insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
        }
    }
    let token = match (&a.token, &a.claims) {
        (Some(t), _) => TokenInput::Token(t.clone()),
        (None, Some(c)) => match serde_json::from_str::<serde_json::Value>(c) {
            Ok(serde_json::Value::Object(claims)) => TokenInput::Claims {
                claims,
                issuer: a.issuer,
            },
            _ => return fail("--claims must be a JSON object"),
        },
        (None, None) => TokenInput::FromHeaders,
    };
    let mut mocks = BTreeMap::new();
    for s in &a.sources {
        match parse_mock(s) {
            Ok((name, m)) => {
                mocks.insert(name, m);
            }
            Err(e) => return fail(e),
        }
    }
    if let Err(e) = check_names(&snapshot, &token, &mocks, &req.limits_used) {
        return fail(e);
    }
    let now = a
        .now
        .map(Into::into)
        .unwrap_or_else(std::time::SystemTime::now);
    let result = explain(&snapshot, &req, &token, &mocks, now);
    if a.json {
        match serde_json::to_string_pretty(&result) {
            Ok(j) => println!("{j}"),
            Err(e) => return fail(e),
        }
    } else {
        print!("{}", super::render::explanation(&result));
    }
    if result.summary.decision == Verdict::Allow {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
