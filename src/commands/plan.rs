//! `rollgate plan`: resolve the playbook against the cluster and show, per wave and node, the
//! node's state and what a drain would do (evict / skip / refuse, PDBs that would block now).
//! Reads only: nodes, pods and PodDisruptionBudgets.

use super::{Failure, load_playbook_with};
use crate::cli::OutputFormat;
use crate::cluster::{self, Clients};
use crate::config::Config;
use crate::drain::budget::blocking_budgets;
use crate::drain::filter::{PodAction, classify_pods};
use crate::exit;
use crate::plan::{self, NodeFacts, Plan};
use crate::playbook::Playbook;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ListParams};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

#[derive(Debug, Serialize)]
pub struct NodePreview {
    pub facts: NodeFacts,
    pub evict: Vec<String>,
    pub skip: Vec<(String, String)>,
    pub refuse: Vec<(String, String)>,
    /// PDBs (namespace/name) that allow 0 disruptions now and cover pods to evict.
    pub blocking_pdbs: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct PlanReport {
    pub playbook: String,
    pub cluster: String,
    pub plan: Plan,
    pub nodes: BTreeMap<String, NodePreview>,
    /// Worst case if every step used its whole timeout, in seconds.
    pub estimate_worst_secs: u64,
    /// Lower bound from soak times alone, in seconds.
    pub estimate_min_secs: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<WindowPreview>,
    /// The pre-flight checks (`rollgate plan` shows them; `run` checks them itself).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preflight: Option<crate::preflight::Report>,
}

/// The maintenance window as of now.
#[derive(Debug, Serialize)]
pub struct WindowPreview {
    pub window: String,
    pub open_now: bool,
    /// RFC 3339; absent when it is open now or never opens within a year.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_open: Option<String>,
}

pub fn connect_failure(e: impl std::fmt::Display) -> Failure {
    Failure::cluster(e)
}

/// Builds the plan and the per-node preview (shared by `plan` and `run`).
pub async fn build(clients: &Clients, playbook: &Playbook) -> Result<PlanReport, Failure> {
    let nodes = cluster::list_nodes(&clients.api)
        .await
        .map_err(connect_failure)?;
    let facts: Vec<NodeFacts> = nodes.iter().map(cluster::facts).collect();
    let plan = plan::resolve(playbook, &facts)
        .map_err(|e| Failure::new(exit::CLUSTER, format!("error: {e}")))?;
    let pods = Api::<Pod>::all(clients.api.clone())
        .list(&ListParams::default())
        .await
        .map_err(connect_failure)?
        .items;
    let pdbs = Api::<PodDisruptionBudget>::all(clients.api.clone())
        .list(&ListParams::default())
        .await
        .map_err(connect_failure)?
        .items;
    let mut by_node: HashMap<&str, Vec<&Pod>> = HashMap::new();
    for p in &pods {
        if let Some(n) = p.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
            by_node.entry(n).or_default().push(p);
        }
    }
    let facts_by_name: HashMap<&str, &NodeFacts> =
        facts.iter().map(|f| (f.name.as_str(), f)).collect();
    let mut previews = BTreeMap::new();
    for name in plan.nodes() {
        let mut preview = NodePreview {
            facts: facts_by_name[name].clone(),
            evict: vec![],
            skip: vec![],
            refuse: vec![],
            blocking_pdbs: vec![],
        };
        let pods = by_node.get(name).map(Vec::as_slice).unwrap_or_default();
        let classified = classify_pods(pods.iter().copied(), &playbook.drain);
        for c in &classified {
            match &c.action {
                PodAction::Evict | PodAction::EvictUnmanaged | PodAction::WaitOnly => {
                    preview.evict.push(c.key())
                }
                PodAction::Skip(r) => preview.skip.push((c.key(), r.clone())),
                PodAction::Refuse(r) => preview.refuse.push((c.key(), r.clone())),
            }
        }
        preview.blocking_pdbs = blocking_budgets(&classified, &pdbs);
        previews.insert(name.to_owned(), preview);
    }
    let (worst, least) = plan::estimate(playbook, &plan);
    Ok(PlanReport {
        playbook: playbook.name.clone(),
        cluster: clients.describe.clone(),
        plan,
        nodes: previews,
        estimate_worst_secs: worst.as_secs(),
        estimate_min_secs: least.as_secs(),
        window: playbook.window.as_ref().map(|w| {
            let now = crate::window::Clock::from_env().now();
            let open_now = w.is_open(now);
            WindowPreview {
                window: w.describe(),
                open_now,
                next_open: (!open_now)
                    .then(|| w.next_open(now))
                    .flatten()
                    .map(|t| t.to_string()),
            }
        }),
        preflight: None,
    })
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
    let mut report = build(&clients, &playbook).await?;
    report.preflight =
        Some(super::preflight::check(&clients, &config, &playbook, &report.plan, preflight).await?);
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
