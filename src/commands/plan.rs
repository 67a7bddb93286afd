//! `rollgate plan`: resolve the playbook against the cluster and show, per wave and node, the
//! node's state and what a drain would do (evict / skip / refuse, PDBs that would block now).
//! Reads only: nodes, pods and PodDisruptionBudgets.

use super::{Failure, load_playbook_with};
use crate::cli::OutputFormat;
use crate::cluster::{self, Clients, Snapshot};
use crate::config::Config;
use crate::exit;
use crate::playbook::Playbook;
pub use crate::preflight::preview::PlanReport;
use std::path::Path;

pub fn connect_failure(e: impl std::fmt::Display) -> Failure {
    Failure::cluster(e)
}

/// Lists the cluster once and resolves the plan with its preview (shared by `plan`,
/// `preflight`, `run` and `resume`); the snapshot is for the pre-flight checks.
pub async fn survey(
    clients: &Clients,
    playbook: &Playbook,
) -> Result<(Snapshot, PlanReport), Failure> {
    let snapshot = Snapshot::list(&clients.api)
        .await
        .map_err(connect_failure)?;
    let report = crate::preflight::preview::preview(&snapshot, playbook, &clients.describe)
        .map_err(|e| Failure::new(exit::CLUSTER, format!("error: {e}")))?;
    Ok((snapshot, report))
}

pub fn render_table(report: &PlanReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "plan for {:?} on {}: {} node(s)",
        report.playbook,
        report.cluster,
        report.plan.node_count()
    );
    for phase in &report.plan.phases {
        let _ = writeln!(
            s,
            "\nphase {} ({} at a time, failure budget {})",
            phase.name, phase.concurrency, phase.failure_budget
        );
        if phase.waves.is_empty() {
            let _ = writeln!(s, "  (no nodes)");
        }
        for wave in &phase.waves {
            if let Some(l) = &wave.label {
                let _ = writeln!(s, "  wave {l}");
            }
            let _ = writeln!(
                s,
                "    {:<22} {:<9} {:<10} {:<12} {:>5} {:>5} {:>6}  notes",
                "NODE", "STATUS", "CORDONED", "KUBELET", "EVICT", "SKIP", "REFUSE"
            );
            for name in &wave.nodes {
                let n = &report.nodes[name];
                let cordoned = match (&n.facts.cordoned_by_rollgate, n.facts.unschedulable) {
                    (Some(_), _) => "rollgate",
                    (None, true) => "yes",
                    (None, false) => "no",
                };
                let mut notes = Vec::new();
                if !n.blocking_pdbs.is_empty() {
                    notes.push(format!(
                        "PDB allows 0 disruptions now: {}",
                        n.blocking_pdbs.join(", ")
                    ));
                }
                for (pod, why) in &n.refuse {
                    notes.push(format!("refuses {pod}: {why}"));
                }
                let _ = writeln!(
                    s,
                    "    {:<22} {:<9} {:<10} {:<12} {:>5} {:>5} {:>6}  {}",
                    name,
                    if n.facts.ready { "Ready" } else { "NotReady" },
                    cordoned,
                    n.facts.kubelet_version,
                    n.evict.len(),
                    n.skip.len(),
                    n.refuse.len(),
                    notes.join("; ")
                );
            }
        }
    }
    for w in &report.plan.warnings {
        let _ = writeln!(s, "warning: {w}");
    }
    if let Some(w) = &report.window {
        let state = match (w.open_now, &w.next_open) {
            (true, _) => "open now".to_owned(),
            (false, Some(t)) => format!("closed now; opens {t}"),
            (false, None) => "closed now and not open within a year".to_owned(),
        };
        let _ = writeln!(s, "\nmaintenance window: {} ({state})", w.window);
    }
    let fmt =
        |secs: u64| humantime::format_duration(std::time::Duration::from_secs(secs)).to_string();
    let _ = writeln!(
        s,
        "\nestimate: at most {} if every step used its whole timeout; at least {} of soak time",
        fmt(report.estimate_worst_secs),
        fmt(report.estimate_min_secs)
    );
    s
}

pub async fn run(
    config: Config,
    path: &Path,
    output: OutputFormat,
    preflight: &crate::cli::PreflightArgs,
) -> Result<u8, Failure> {
    let playbook = load_playbook_with(path, &config)?;
    let clients = cluster::connect(&config).await.map_err(connect_failure)?;
    crate::rbac::check(
        &clients.api,
        crate::rbac::Use::Read,
        &config,
        Some(&playbook),
        "plan",
    )
    .await?;
    let (snapshot, mut report) = survey(&clients, &playbook).await?;
    let deadline = crate::driver::run_deadline(
        None,
        None,
        &playbook,
        crate::window::Clock::from_env().now(),
    )?;
    report.preflight = Some(
        super::preflight::check(
            &clients,
            &config,
            &playbook,
            &report.plan,
            &snapshot,
            preflight,
            deadline,
        )
        .await,
    );
    match output {
        OutputFormat::Table => {
            print!("{}", render_table(&report));
            if let Some(p) = &report.preflight {
                print!("{}", p.render(&preflight.ignore_preflight));
            }
        }
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("serialisable")
        ),
    }
    Ok(exit::OK)
}
