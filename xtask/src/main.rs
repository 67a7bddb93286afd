//! `cargo xtask`: rollgate's developer tasks.
//!
//! - `testenv install|up|down|status|node add|rm|add-many|rm-many`: the local test environment (a real
//!   kube-apiserver, controller-manager and scheduler with kwok nodes, one sshd per node,
//!   Prometheus and a Slack stand-in), run as plain local processes on loopback.
//! - `test`: install, start the environment, run lint + the whole test suite, stop the environment.
//! - `demo`: start the environment with a few labelled nodes and workloads and run the demo playbook.
//! - `slack-standin`: the Slack Web API stand-in server (started by `testenv up`).

mod demo;
mod paths;
mod slack_standin;
mod testenv;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "rollgate developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Manage the local test environment.
    Testenv {
        #[command(subcommand)]
        command: testenv::TestenvCommand,
    },
    /// Install and start the test environment, run fmt/clippy and every test, stop the environment.
    Test {
        /// Extra arguments passed to `cargo test` (after `--`).
        #[arg(last = true)]
        cargo_test_args: Vec<String>,
        /// Skip `cargo fmt --check` and `cargo clippy`.
        #[arg(long)]
        no_lint: bool,
    },
    /// Bring up the test environment with demo nodes and workloads and run playbooks/demo.toml.
    Demo {
        /// Stop the environment afterwards (by default it stays up to explore).
        #[arg(long)]
        down: bool,
    },
    /// Start an environment of its own (/tmp/rollgate-bench, ports +100), run the drain, fleet and
    /// offline benchmarks, stop it, print their figures as one table.
    Bench,
    /// Run the Slack Web API stand-in in the foreground.
    SlackStandin(slack_standin::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Testenv { command } => testenv::run(command),
        Command::Test {
            cargo_test_args,
            no_lint,
        } => testenv::run_test_suite(&cargo_test_args, no_lint),
        Command::Demo { down } => demo::run(down),
        Command::Bench => testenv::run_bench(),
        Command::SlackStandin(args) => slack_standin::serve(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("xtask: error: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Errors in xtask are reported as text: this is developer tooling, not the product.
pub type Result<T> = std::result::Result<T, String>;

/// Adds context to an error, like anyhow's `context` without the dependency.
pub trait Context<T> {
    fn context(self, what: impl std::fmt::Display) -> Result<T>;
}

impl<T, E: std::fmt::Display> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl std::fmt::Display) -> Result<T> {
        self.map_err(|e| format!("{what}: {e}"))
    }
}
