//! Runs the checks against the live cluster: reads the [`Snapshot`] the plan was resolved
//! from (nodes, pods and budgets listed once), asks the apiserver its version, reads the state
//! directory's history, and (unless told not to) reaches every node over SSH.

use super::{Check, Finding, Report, Severity, capacity, drain_blockers, eta, skew, ssh};
use crate::cluster::{self, Clients, Snapshot};
use crate::config::Config;
use crate::plan::Plan;
use crate::playbook::Playbook;
use crate::vocab::Step;
use std::collections::HashMap;

/// What to check.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Skip the SSH reachability check (`--no-ssh-check`).
    pub no_ssh: bool,
    /// The run's deadline, if it has one.
    pub deadline: Option<jiff::Timestamp>,
    /// A resume: the nodes that pick up mid-way and the step they start from. Those past
    /// their remote command are not reached over SSH (they need no SSH, and may be rebooting).
    pub resumed_from: HashMap<String, Step>,
}

/// Whether a node picking up at `step` still runs its remote command.
fn runs_its_command(step: Step) -> bool {
    let at = |s: Step| Step::ALL.iter().position(|x| *x == s);
    at(step) <= at(Step::Command)
}

/// Every check, for this plan (resolved from `snapshot`). Reads the cluster only for the
/// apiserver's version (a failure is a finding).
pub async fn gather(
    clients: &Clients,
    config: &Config,
    playbook: &Playbook,
    plan: &Plan,
    snapshot: &Snapshot,
    options: &Options,
) -> Report {
    let Snapshot { nodes, pods, pdbs } = snapshot;
    let mut report = Report::default();

    report.ran.push(Check::DrainBlockers);
    report
        .findings
        .extend(drain_blockers::check(plan, pods, pdbs, &playbook.drain));

    report.ran.push(Check::Capacity);
    let drain = playbook.drain.clone();
    let groups = capacity::fit(plan, nodes, pods, |p| {
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
        let mut to_reach = plan.clone();
        for phase in &mut to_reach.phases {
            for wave in &mut phase.waves {
                wave.nodes.retain(|n| match options.resumed_from.get(n) {
                    Some(step) if !runs_its_command(*step) => {
                        report.findings.push(
                            Finding::new(
                                Check::Ssh,
                                Severity::Info,
                                format!(
                                    "not reached: the resumed run picks it up at {step}, after its command"
                                ),
                            )
                            .node(n),
                        );
                        false
                    }
                    _ => true,
                });
            }
        }
        report
            .findings
            .extend(ssh::check(config, playbook, &to_reach, nodes).await);
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
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resumed_node_is_reached_over_ssh_only_while_its_command_is_ahead() {
        let reached: Vec<Step> = Step::ALL
            .into_iter()
            .filter(|s| runs_its_command(*s))
            .collect();
        assert_eq!(reached, [Step::Cordon, Step::Drain, Step::Command]);
    }
}
