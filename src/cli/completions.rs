//! `claimgate completions`: a shell completion script for the whole command line.

use clap::Args;
use std::process::ExitCode;

#[derive(Args)]
pub struct CompletionsArgs {
    /// bash, zsh, fish, elvish or powershell.
    shell: clap_complete::Shell,
}

/// Writes the script for `command` (the parsed command line's definition) to standard output.
pub fn run(a: CompletionsArgs, mut command: clap::Command) -> ExitCode {
    clap_complete::generate(a.shell, &mut command, "claimgate", &mut std::io::stdout());
    ExitCode::SUCCESS
}
