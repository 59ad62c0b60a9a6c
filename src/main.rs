//! The `claimgate` command line.

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

mod eval_cmd;
mod test_cmd;
mod token_cmd;

/// claimgate: a reverse proxy that verifies JWTs and enforces policies on their claims.
#[derive(Parser)]
#[command(
    name = "claimgate",
    version,
    about,
    long_about = None,
    after_help = "\
Changing a policy safely:
  1. edit rules/*.toml                      (add `mode = \"audit\"` to a new rule)
  2. claimgate check --deny-warnings        every error with file:line:column
  3. claimgate test                         the cases in rules/tests/ must pass
  4. claimgate eval --claims '{...}' PATH   see how one request is decided, rule by rule
  5. deploy: the running gateway reloads rules/ by itself (or on SIGHUP)
  6. watch claimgate_audit_denials_total on the admin listener's /metrics
  7. remove `mode = \"audit\"` to enforce"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        /// The gateway configuration file.
        #[arg(short, long, default_value = "gateway.toml")]
        config: PathBuf,
        /// Also serve a built-in echo upstream on this address (for trying claimgate out).
        #[arg(long, value_name = "ADDR")]
        echo_upstream: Option<SocketAddr>,
        /// With --echo-upstream: also answer `GET /_data/PATH` with the file DIR/PATH.json,
        /// the demo's stand-in for external services (e.g. dev/demo-data).
        #[arg(long, value_name = "DIR", requires = "echo_upstream")]
        echo_data: Option<PathBuf>,
        /// Testing only: decide every request as if it were this instant (RFC 3339, e.g.
        /// 2026-03-02T10:00:00+01:00) instead of the real time, token expiry included.
        #[arg(long, value_name = "TIME")]
        fixed_clock: Option<chrono::DateTime<chrono::FixedOffset>>,
        /// Log lines as JSON, or compact for a person (`auto`: pretty on a terminal).
        #[arg(long, value_enum, default_value = "auto")]
        log_format: claimgate::logging::LogFormat,
    },
    /// Validate the configuration, keys and rules; print every error with its location.
    ///
    /// Every error names file, line and column. Warnings point at what loads but can never take
    /// effect: routes that can never match, constant rules, open routes that read claims.
    #[command(after_help = "\
Exit status: 0 valid (warnings allowed unless --deny-warnings), 1 errors (or warnings with
--deny-warnings), 2 the crypto self-test failed.

Run it before every deploy, e.g. in CI:  claimgate check --config gateway.toml --deny-warnings")]
    Check {
        #[arg(short, long, default_value = "gateway.toml")]
        config: PathBuf,
        /// Fail on warnings too.
        #[arg(long)]
        deny_warnings: bool,
    },
    /// Decide one request offline and show why.
    ///
    /// The trace shows the route matched, each rule with its result, the attributes computed,
    /// the external sources (mocked), the upstream chosen and the headers it would receive.
    Eval(eval_cmd::EvalArgs),
    /// Run policy test files: described requests and the decisions they must get.
    Test(test_cmd::TestArgs),
    /// Mint a signed token for local testing.
    Token(token_cmd::TokenArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    ///
    /// e.g. `claimgate completions bash > /etc/bash_completion.d/claimgate`
    Completions { shell: clap_complete::Shell },
    /// Write a small country database (.mmdb) for tests and demos.
    GeoDb {
        /// Output file.
        #[arg(long)]
        out: PathBuf,
        /// Write the demo database shipped as dev/geo-demo.mmdb.
        #[arg(long, conflicts_with = "entry")]
        demo: bool,
        /// A network and its place: CIDR=COUNTRY:CONTINENT, e.g. 192.0.2.0/24=DE:EU.
        #[arg(long, value_name = "CIDR=CC:CONT")]
        entry: Vec<String>,
    },
}

// Pingora allocates per request (header maps, buffers, futures); mimalloc's thread-local free
// lists took most of the malloc time out of the decision core's profile (benches/load compares
// a plain passthrough with both allocators).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            config,
            echo_upstream,
            echo_data,
            fixed_clock,
            log_format,
        } => {
            claimgate::logging::init(log_format);
            let clock = match fixed_clock {
                Some(t) => claimgate::proxy::Clock::Fixed(t.into()),
                None => claimgate::proxy::Clock::System,
            };
            match claimgate::server::run(&config, echo_upstream.map(|a| (a, echo_data)), clock) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("claimgate: cannot start:\n{e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Check {
            config,
            deny_warnings,
        } => {
            if let Err(e) = claimgate::server::crypto_self_test() {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
            match claimgate::server::load(&config, &Default::default()) {
                Ok(s) => {
                    for w in &s.policy.warnings {
                        eprintln!("warning: {w}");
                    }
                    let warned = s.policy.warnings.len();
                    println!(
                        "ok: {} routes from {} files, {} issuers, {} sources, {warned} warning(s)",
                        s.policy.routes.len(),
                        s.policy.files.len(),
                        s.issuers.len(),
                        s.sources.iter().count(),
                    );
                    if deny_warnings && warned > 0 {
                        ExitCode::from(1)
                    } else {
                        ExitCode::SUCCESS
                    }
                }
                Err(errors) => {
                    for e in &errors.0 {
                        eprintln!("error: {e}");
                    }
                    eprintln!("{} error(s)", errors.0.len());
                    ExitCode::from(1)
                }
            }
        }
        Command::Token(args) => token_cmd::run(args),
        Command::Eval(args) => eval_cmd::run(args),
        Command::Test(args) => test_cmd::run(args),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "claimgate",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
        Command::GeoDb { out, demo, entry } => {
            use claimgate::geo::writer;
            let (entries, epoch) = if demo {
                (writer::demo_entries(), writer::DEMO_EPOCH)
            } else {
                let mut v = Vec::new();
                for e in &entry {
                    let parsed = e.split_once('=').and_then(|(net, place)| {
                        let (cc, cont) = place.split_once(':')?;
                        Some(writer::Entry {
                            network: net.parse().ok()?,
                            country: cc.to_string(),
                            continent: cont.to_string(),
                        })
                    });
                    match parsed {
                        Some(x) => v.push(x),
                        None => {
                            eprintln!(
                                "claimgate geo-db: `{e}` is not CIDR=COUNTRY:CONTINENT (IPv4)"
                            );
                            return ExitCode::from(1);
                        }
                    }
                }
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                (v, now)
            };
            match std::fs::write(&out, writer::build(&entries, epoch)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("claimgate geo-db: cannot write `{}`: {e}", out.display());
                    ExitCode::from(1)
                }
            }
        }
    }
}
