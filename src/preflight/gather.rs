//! Runs the checks against the live cluster: lists nodes, pods and budgets once, asks the
//! apiserver its version, reads the state directory's history, and (unless told not to)
//! reaches every node over SSH.

use super::{Check, Finding, Report, Severity, capacity, drain_blockers, eta, skew, ssh};
use crate::cluster::{self, Clients};
use crate::config::Config;
use crate::plan::Plan;
use crate::playbook::Playbook;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ListParams};

/// What to check.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Skip the SSH reachability check (`--no-ssh-check`).
    pub no_ssh: bool,
    /// The run's deadline, if it has one.
    pub deadline: Option<jiff::Timestamp>,
}

/// Every check, for this plan. Err only when the cluster cannot be read.
pub async fn gather(
    clients: &Clients,
    config: &Config,
    playbook: &Playbook,
    plan: &Plan,
    options: &Options,
) -> Result<Report, kube::Error> {
    let nodes = cluster::list_nodes(&clients.api).await?;
    let pods = Api::<Pod>::all(clients.api.clone())
        .list(&ListParams::default())
        .await?
        .items;
    let pdbs = Api::<PodDisruptionBudget>::all(clients.api.clone())
        .list(&ListParams::default())
        .await?
        .items;
    let mut report = Report::default();

    report.ran.push(Check::DrainBlockers);
    report
        .findings
        .extend(drain_blockers::check(plan, &pods, &pdbs, &playbook.drain));

    report.ran.push(Check::Capacity);
    let drain = playbook.drain.clone();
    let groups = capacity::fit(plan, &nodes, &pods, |p| {
        crate::drain::filter::classify(p, &drain).drains()
            && crate::drain::filter::selected(p, &drain)
    });
    report.findings.extend(capacity::check(&groups));

    match &playbook.target_kubelet_version {
        Some(target) => {
            report.ran.push(Check::VersionSkew);
            let facts: Vec<_> = nodes.iter().map(cluster::facts).collect();
            match clients.api.apiserver_version().await {
                Ok(info) => report.findings.extend(skew::check(
                    target,
                    &info.git_version,
                    &facts,
                    plan,
                    playbook.skip_upgraded,
                )),
                Err(e) => report.findings.push(Finding::new(
                    Check::VersionSkew,
                    Severity::Warning,
                    format!("cannot read the apiserver's version: {e}"),
                )),
            }
        }
        None => report.skipped.push((
            Check::VersionSkew,
            "the playbook sets no target-kubelet-version".into(),
        )),
    }

    if options.no_ssh {
        report.skipped.push((Check::Ssh, "--no-ssh-check".into()));
    } else {
        report.ran.push(Check::Ssh);
        report
            .findings
            .extend(ssh::check(config, playbook, plan, &nodes).await);
    }

    report.ran.push(Check::Eta);
    let runs = crate::driver::state_dir::RunsDir::new(&config.state_dir);
    let (samples, history_runs) = eta::history(&runs, &playbook.name);
    let forecast = eta::Forecast::new(
        eta::step_times(samples, playbook.settle.soak),
        history_runs,
        plan,
    )
    .scheduled(
        crate::window::Clock::from_env().now(),
        playbook.window.as_ref(),
        options.deadline,
    );
    report
        .findings
        .extend(forecast.findings(playbook.window.as_ref().map(|w| w.outside)));
    report.eta = Some(forecast);
    Ok(report)
}
