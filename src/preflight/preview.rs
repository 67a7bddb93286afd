//! The plan preview `rollgate plan` and `rollgate run` show: the playbook resolved against one
//! [`Snapshot`] of the cluster into waves, with per node its state and what a drain would do
//! (evict / skip / refuse, budgets that block now), the time estimate and the window. The
//! pre-flight checks read the same snapshot ([`super::gather`]).

use crate::cluster::Snapshot;
use crate::drain::budget::blocking_budgets;
use crate::drain::filter::{PodAction, classify_pods};
use crate::plan::{self, NodeFacts, Plan, PlanError};
use crate::playbook::Playbook;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

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
    /// The pre-flight checks (`rollgate plan` shows them; `run` checks them before it starts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preflight: Option<super::Report>,
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

impl PlanReport {
    /// Keeps only the nodes `keep` says (a resumed run leaves out those it finished; the rest
    /// keep the plan's order) and estimates again for them.
    pub fn keep_only(&mut self, keep: impl Fn(&str) -> bool, playbook: &Playbook) {
        for phase in &mut self.plan.phases {
            for wave in &mut phase.waves {
                wave.nodes.retain(|n| keep(n));
            }
            phase.waves.retain(|w| !w.nodes.is_empty());
        }
        self.nodes.retain(|n, _| keep(n));
        let (worst, least) = plan::estimate(playbook, &self.plan);
        self.estimate_worst_secs = worst.as_secs();
        self.estimate_min_secs = least.as_secs();
    }
}

/// Resolves the playbook against the snapshot and previews each planned node's drain.
/// `cluster`: how the cluster is named to the operator (context and server).
pub fn preview(
    snapshot: &Snapshot,
    playbook: &Playbook,
    cluster: &str,
) -> Result<PlanReport, PlanError> {
    let facts = snapshot.facts();
    let plan = plan::resolve(playbook, &facts)?;
    let by_node = snapshot.pods_by_node();
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
        preview.blocking_pdbs = blocking_budgets(&classified, &snapshot.pdbs);
        previews.insert(name.to_owned(), preview);
    }
    let (worst, least) = plan::estimate(playbook, &plan);
    Ok(PlanReport {
        playbook: playbook.name.clone(),
        cluster: cluster.to_owned(),
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
