//! The `claimgate` command line: parses and dispatches to `cli/`, one file per command.

// The command line's job is writing to standard output; the library's is not (`[lints]`).
#![allow(clippy::print_stdout)]

use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod cli;

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
    Run(cli::run::RunArgs),
    /// Validate the configuration, keys and rules; print every error with its location.
    ///
    /// Every error names file, line and column. Warnings point at what loads but can never take
    /// effect: routes that can never match, constant rules, open routes that read claims, weaker
    /// routes on the boundary of protected ones.
    Check(cli::check::CheckArgs),
    /// Decide one request offline and show why.
    ///
    /// The trace shows the route matched, each rule with its result, the attributes computed,
    /// the external sources (mocked), the upstream chosen and the headers it would receive.
    Eval(cli::eval::EvalArgs),
    /// Run policy test files: described requests and the decisions they must get.
    Test(cli::test::TestArgs),
    /// Mint a signed token for local testing.
    Token(cli::token::TokenArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    ///
    /// e.g. `claimgate completions bash > /etc/bash_completion.d/claimgate`
    Completions(cli::completions::CompletionsArgs),
    /// Write a small country database (.mmdb) for tests and demos.
    GeoDb(cli::geo_db::GeoDbArgs),
}

// Pingora allocates per request (header maps, buffers, futures); mimalloc's thread-local free
// lists took most of the malloc time out of the decision core's profile (benches/load compares
// a plain passthrough with both allocators).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Run(args) => cli::run::run(args),
        Command::Check(args) => cli::check::run(args),
        Command::Token(args) => cli::token::run(args),
        Command::Eval(args) => cli::eval::run(args),
        Command::Test(args) => cli::test::run(args),
        Command::Completions(args) => {
            cli::completions::run(args, <Cli as clap::CommandFactory>::command())
        }
        Command::GeoDb(args) => cli::geo_db::run(args),
    }
}
