//! `claimgate token`: mint a dev token signed with an HMAC secret or a PEM private key.

use clap::Args;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Args)]
#[command(after_help = "\
Example (the repository's development issuer):
  claimgate token --key dev/keys/es256-private.pem --alg ES256 --kid dev-es256 \\
      --iss https://dev.claimgate.local --aud claimgate-demo --sub alice \\
      --claims '{\"permissions\":[\"transfer\"]}' --ttl 600

The token is printed on stdout. Tokens minted with a key from this repository's dev/ are for
local testing only.")]
pub struct TokenArgs {
    /// Signing algorithm, e.g. ES256, RS256, HS256, EdDSA.
    #[arg(long, default_value = "ES256")]
    alg: String,
    /// PEM private key file (for RS*, PS*, ES*, EdDSA).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["secret_env", "secret_file"])]
    key: Option<PathBuf>,
    /// Environment variable holding the HMAC secret (for HS*).
    #[arg(long, value_name = "VAR")]
    secret_env: Option<String>,
    /// File holding the HMAC secret (for HS*).
    #[arg(long, value_name = "FILE")]
    secret_file: Option<PathBuf>,
    /// Key id to put in the header.
    #[arg(long)]
    kid: Option<String>,
    /// `iss` claim (required unless `--claims` has it).
    #[arg(long)]
    iss: Option<String>,
    /// `aud` claim (required unless `--claims` has it).
    #[arg(long)]
    aud: Option<String>,
    /// `sub` claim; `dev-user` unless given here or in `--claims`.
    #[arg(long)]
    sub: Option<String>,
    /// Lifetime in seconds, unless `--claims` has `exp`.
    #[arg(long, default_value_t = 3600)]
    ttl: u64,
    /// Claims as a JSON object, e.g. '{"permissions":["transfer"]}'. What it sets wins over
    /// every default; a claim given both here and by its own flag must agree.
    #[arg(long, default_value = "{}")]
    claims: String,
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("claimgate token: {msg}");
    ExitCode::from(1)
}

pub fn run(a: TokenArgs) -> ExitCode {
    let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
    let alg: Algorithm = match a.alg.parse() {
        Ok(x) => x,
        Err(_) => return fail(format!("unknown algorithm `{}`", a.alg)),
    };
    let key = match (&a.key, &a.secret_env, &a.secret_file) {
        (Some(path), None, None) => {
            let pem = match std::fs::read(path) {
                Ok(p) => p,
                Err(e) => return fail(format!("cannot read `{}`: {e}", path.display())),
            };
            let k = match alg {
                Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512 => EncodingKey::from_rsa_pem(&pem),
                Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem),
                Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
                _ => return fail("HS* algorithms take --secret-env or --secret-file"),
            };
            match k {
                Ok(k) => k,
                Err(e) => {
                    return fail(format!(
                        "`{}` is not a usable private key: {e}",
                        path.display()
                    ))
                }
            }
        }
        (None, Some(var), None) => match std::env::var(var) {
            Ok(s) if !s.is_empty() => EncodingKey::from_secret(s.as_bytes()),
            _ => return fail(format!("environment variable `{var}` is not set")),
        },
        (None, None, Some(path)) => match claimgate::auth::keys::secret_from_file(path) {
            Ok(s) => EncodingKey::from_secret(&s),
            Err(e) => return fail(e),
        },
        _ => return fail("give exactly one of --key, --secret-env, --secret-file"),
    };
    let mut claims: serde_json::Map<String, serde_json::Value> =
        match serde_json::from_str(&a.claims) {
            Ok(c) => c,
            Err(e) => return fail(format!("--claims is not a JSON object: {e}")),
        };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    for (name, flag, default) in [
        ("iss", a.iss, None),
        ("aud", a.aud, None),
        ("sub", a.sub, Some("dev-user")),
    ] {
        match (flag, claims.get(name)) {
            (Some(v), Some(given)) if given.as_str() != Some(v.as_str()) => {
                return fail(format!(
                    "`{name}` is given by --{name} and by --claims with different values"
                ))
            }
            (Some(v), _) => {
                claims.insert(name.into(), v.into());
            }
            (None, Some(_)) => {}
            (None, None) => match default {
                Some(d) => {
                    claims.insert(name.into(), d.into());
                }
                None => return fail(format!("give --{name} (or `{name}` in --claims)")),
            },
        }
    }
    claims.entry("iat").or_insert(now.into());
    claims.entry("exp").or_insert((now + a.ttl).into());
    let mut header = Header::new(alg);
    header.kid = a.kid;
    match jsonwebtoken::encode(&header, &claims, &key) {
        Ok(t) => {
            println!("{t}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}
