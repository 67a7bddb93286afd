//! The rollgate binary: parse the command line, set up logging and TLS, run the subcommand,
//! map the outcome to a documented exit code (see `rollgate --help`).

use clap::{CommandFactory, Parser};
use rollgate::cli::{Cli, Command};
use rollgate::commands::{self, Failure};
use rollgate::exit;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // kube and reqwest may bring different rustls providers; pick one for the process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // As for the run's events: the flag, else the config's `log.format` (a config that does
    // not load is reported by the command itself), else JSON when stderr is not a terminal.
    // The config is loaded once, here; a command that needs it reports why it did not load.
    let loaded = commands::load_config(&cli.global);
    if let Ok(c) = &loaded {
        c.register_secrets();
    }
    let json_logs = loaded.as_ref().ok().and_then(|c| c.log_format).map_or_else(
        || !std::io::IsTerminal::is_terminal(&std::io::stderr()),
        |f| f == rollgate::config::LogFormat::Json,
    );
    rollgate::logging::init(json_logs);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::INTERNAL);
        }
    };
    let result: Result<u8, Failure> = runtime.block_on(async {
        let config = || loaded;
        match &cli.command {
            Command::Check { playbook } => commands::check::run(config()?, playbook),
            Command::Plan {
                playbook,
                output,
                preflight,
            } => commands::plan::run(config()?, playbook, *output, preflight).await,
            Command::Preflight {
                playbook,
                output,
                preflight,
            } => commands::preflight::run(config()?, playbook, *output, preflight).await,
            Command::Run(args) => commands::run::run(config()?, args).await,
            Command::Runs { output } => commands::status::runs(config()?, *output).await,
            Command::Status { run, output } => {
                commands::status::status(config()?, run.as_deref(), *output).await
            }
            Command::Resume {
                run,
                command_done,
                schedule,
                preflight,
            } => {
                commands::resume::resume(
                    config()?,
                    run.as_deref(),
                    command_done,
                    schedule,
                    preflight,
                )
                .await
            }
            Command::Pause { run, reason } => {
                commands::pause::pause(config()?, run.as_deref(), reason.as_deref()).await
            }
            Command::Abort { run, reason } => {
                commands::pause::abort(config()?, run.as_deref(), reason.as_deref()).await
            }
            Command::Report { run, out, output } => {
                commands::report::run(config()?, run.as_deref(), out.as_deref(), *output).await
            }
            Command::Monitor { playbook, output } => {
                commands::monitor::run(config()?, playbook.as_deref(), *output).await
            }
            Command::Rbac(args) => commands::rbac::run(config()?, args),
            Command::Completions { shell } => {
                clap_complete::generate(
                    *shell,
                    &mut Cli::command(),
                    "rollgate",
                    &mut std::io::stdout(),
                );
                Ok(exit::OK)
            }
        }
    });
    // Do not wait for a blocking prompt that nobody will answer any more.
    runtime.shutdown_background();
    match result {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("{}", rollgate::redact::scrub(&f.message));
            ExitCode::from(f.code)
        }
    }
}
