//! `rollgate preflight PLAYBOOK`: the pre-flight checks against the live cluster, as a table or
//! JSON; exit 9 when a check not ignored finds a blocker. `plan` shows them too ([`check`]).

use super::Failure;
use super::plan::{build, connect_failure};
use crate::cli::{OutputFormat, PreflightArgs};
use crate::cluster::{self, Clients};
use crate::config::Config;
use crate::exit;
use crate::plan::Plan;
use crate::playbook::Playbook;
use crate::preflight::{self, Report};
use std::path::Path;

/// Runs the checks for this plan (the playbook's deadline counted from now).
pub(super) async fn check(
    clients: &Clients,
    config: &Config,
    playbook: &Playbook,
    plan: &Plan,
    args: &PreflightArgs,
) -> Result<Report, Failure> {
    let deadline = playbook.deadline.and_then(|d| {
        let d = jiff::SignedDuration::try_from(d).ok()?;
        crate::window::Clock::from_env().now().checked_add(d).ok()
    });
    let options = preflight::Options {
        no_ssh: args.no_ssh_check,
        deadline,
    };
    preflight::gather(clients, config, playbook, plan, &options)
        .await
        .map_err(connect_failure)
}

pub async fn run(
    config: Config,
    path: &Path,
    output: OutputFormat,
    args: &PreflightArgs,
) -> Result<u8, Failure> {
    let playbook = super::load_playbook_with(path, &config)?;
    let clients = cluster::connect(&config).await.map_err(connect_failure)?;
    let plan = build(&clients, &playbook).await?.plan;
    let report = check(&clients, &config, &playbook, &plan, args).await?;
    match output {
        OutputFormat::Table => print!("{}", report.render(&args.ignore_preflight)),
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("serialisable")
        ),
    }
    Ok(if report.blockers(&args.ignore_preflight).is_empty() {
        exit::OK
    } else {
        exit::PREFLIGHT_FAILED
    })
}
