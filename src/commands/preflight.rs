//! `rollgate preflight PLAYBOOK`: the pre-flight checks against the live cluster, as a table or
//! JSON; exit 9 when a check not ignored finds a blocker. `plan` shows them too ([`check`]).

use super::Failure;
use super::plan::{connect_failure, survey};
use crate::cli::{OutputFormat, PreflightArgs};
use crate::cluster::{self, Clients, Snapshot};
use crate::config::Config;
use crate::exit;
use crate::plan::Plan;
use crate::playbook::Playbook;
use crate::preflight::{self, Report};
use std::path::Path;

/// Runs the checks for this plan, resolved from `snapshot` (`deadline`: the run's).
pub(super) async fn check(
    clients: &Clients,
    config: &Config,
    playbook: &Playbook,
    plan: &Plan,
    snapshot: &Snapshot,
    args: &PreflightArgs,
    deadline: Option<jiff::Timestamp>,
) -> Report {
    let options = preflight::Options {
        no_ssh: args.no_ssh_check,
        deadline,
        resumed_from: Default::default(),
    };
    preflight::gather(clients, config, playbook, plan, snapshot, &options).await
}

pub async fn run(
    config: Config,
    path: &Path,
    output: OutputFormat,
    args: &PreflightArgs,
) -> Result<u8, Failure> {
    let playbook = super::load_playbook_with(path, &config)?;
    let clients = cluster::connect(&config).await.map_err(connect_failure)?;
    crate::rbac::check(
        &clients.api,
        crate::rbac::Use::Read,
        &config,
        Some(&playbook),
        "preflight",
    )
    .await?;
    let (snapshot, preview) = survey(&clients, &playbook).await?;
    let deadline = crate::driver::run_deadline(
        None,
        None,
        &playbook,
        crate::window::Clock::from_env().now(),
    )?;
    let report = check(
        &clients,
        &config,
        &playbook,
        &preview.plan,
        &snapshot,
        args,
        deadline,
    )
    .await;
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
