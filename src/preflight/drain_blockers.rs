//! Drain blockers, per node, from the pods on it and the PodDisruptionBudgets that cover them,
//! with the drain's own classification ([`crate::drain::filter::classify_pods`]: kubectl-drain
//! semantics and the playbook's drain options):
//!
//! - a budget that can never allow an eviction (`maxUnavailable: 0`, `minAvailable` at or above
//!   the pods it covers) or allows none now because its workload is short — blocker (a warning
//!   with `on-pdb-timeout = "disable-eviction"`: the pods are deleted past the drain timeout;
//!   with `on-pdb-timeout = "skip"`: the node will be skipped, not upgraded);
//! - a budget that lets the node's pods go only a few at a time — info, with the rounds and
//!   the extra time they take at least (a refused eviction is retried after 5 s);
//! - pods the drain options refuse (no controller, emptyDir data, DaemonSet) — blocker;
//! - single-replica workloads without a budget: the drain means downtime for them — warning;
//! - one budget covering pods on several nodes drained at once in one wave (the wave
//!   serialises, or deadlocks) — warning, naming the wave.

use super::{Check, Finding, Severity};
use crate::drain::budget::label_selector_matches;
use crate::drain::filter::{PodAction, classify_pods, controller_of};
use crate::plan::Plan;
use crate::playbook::{DrainOptions, PdbTimeoutPolicy};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::{BTreeMap, BTreeSet};

fn pdb_key(pdb: &PodDisruptionBudget) -> String {
    format!(
        "{}/{}",
        pdb.metadata.namespace.as_deref().unwrap_or(""),
        pdb.metadata.name.as_deref().unwrap_or("")
    )
}

fn covers(pdb: &PodDisruptionBudget, pod: &Pod) -> bool {
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    pdb.metadata.namespace == pod.metadata.namespace
        && pdb
            .spec
            .as_ref()
            .and_then(|s| s.selector.as_ref())
            .is_some_and(|sel| label_selector_matches(sel, &labels))
}

/// `n` or `p%` of `total`, rounded up as the disruption controller does.
fn resolve(v: &IntOrString, total: i32) -> i32 {
    match v {
        IntOrString::Int(n) => *n,
        IntOrString::String(s) => s
            .trim_end_matches('%')
            .parse::<f64>()
            .map(|p| (p / 100.0 * total as f64).ceil() as i32)
            .unwrap_or(0),
    }
}

/// Why a budget can never allow an eviction, if it cannot: covering `covered` pods.
fn never_allows(pdb: &PodDisruptionBudget, covered: i32) -> Option<String> {
    let spec = pdb.spec.as_ref()?;
    let expected = pdb
        .status
        .as_ref()
        .and_then(|s| s.expected_pods)
        .filter(|e| *e > 0)
        .unwrap_or(covered);
    if let Some(max) = &spec.max_unavailable
        && resolve(max, expected) <= 0
    {
        return Some("maxUnavailable is 0: it never allows an eviction".into());
    }
    if let Some(min) = &spec.min_available {
        let min = resolve(min, expected);
        if min >= expected {
            return Some(format!(
                "minAvailable {min} is at or above the {expected} pod(s) it covers: it never allows an eviction"
            ));
        }
    }
    None
}

/// The pods on a node.
fn on_node<'a>(pods: &'a [Pod], node: &'a str) -> impl Iterator<Item = &'a Pod> + 'a {
    pods.iter()
        .filter(move |p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
}

/// The findings for the plan's nodes.
pub fn check(
    plan: &Plan,
    pods: &[Pod],
    pdbs: &[PodDisruptionBudget],
    opts: &DrainOptions,
) -> Vec<Finding> {
    let mut out = Vec::new();
    // Pods per controller (kind/namespace/name), for single-replica workloads.
    let mut replicas: BTreeMap<String, usize> = BTreeMap::new();
    for pod in pods {
        if let Some((kind, name)) = controller_of(pod) {
            let ns = pod.metadata.namespace.clone().unwrap_or_default();
            *replicas.entry(format!("{kind} {ns}/{name}")).or_default() += 1;
        }
    }
    let mut said_single: BTreeSet<String> = BTreeSet::new();
    for node in plan.nodes() {
        let classified = classify_pods(on_node(pods, node), opts);
        // Budget -> pods of this node it covers.
        let mut by_budget: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        for c in &classified {
            match &c.action {
                PodAction::Refuse(reason) => out.push(
                    Finding::new(
                        Check::DrainBlockers,
                        Severity::Blocker,
                        format!("the drain refuses pod {}: {reason}", c.key()),
                    )
                    .node(node)
                    .object(format!("Pod {}", c.key()))
                    .fix(refuse_fix(reason)),
                ),
                action if action.drains() => {
                    let budgets: Vec<usize> = pdbs
                        .iter()
                        .enumerate()
                        .filter(|(_, b)| covers(b, c.pod))
                        .map(|(i, _)| i)
                        .collect();
                    for i in &budgets {
                        by_budget.entry(*i).or_default().push(c.key());
                    }
                    if budgets.is_empty()
                        && let Some((kind, name)) = controller_of(c.pod)
                        && kind != "Job"
                    {
                        let ns = c.pod.metadata.namespace.clone().unwrap_or_default();
                        let workload = format!("{kind} {ns}/{name}");
                        if replicas.get(&workload) == Some(&1)
                            && said_single.insert(workload.clone())
                        {
                            out.push(
                                Finding::new(
                                    Check::DrainBlockers,
                                    Severity::Warning,
                                    format!(
                                        "{} is the only replica of its workload and no PodDisruptionBudget covers it: the drain means downtime for it",
                                        c.key()
                                    ),
                                )
                                .node(node)
                                .object(workload)
                                .fix("run two replicas with a PodDisruptionBudget, or accept the downtime"),
                            );
                        }
                    }
                }
                _ => {}
            }
        }
        for (i, node_pods) in by_budget {
            let pdb = &pdbs[i];
            let covered = pods.iter().filter(|p| covers(pdb, p)).count() as i32;
            let allowed = pdb
                .status
                .as_ref()
                .and_then(|s| s.disruptions_allowed)
                .unwrap_or(0);
            let object = format!("PodDisruptionBudget {}", pdb_key(pdb));
            // No status yet (the disruption controller has not computed it): only what the
            // spec alone says can be judged.
            let computed = pdb.status.is_some();
            let blocked = never_allows(pdb, covered).or_else(|| {
                (computed && allowed <= 0).then(|| {
                    let s = pdb.status.as_ref();
                    format!(
                        "it allows no disruption now ({} of {} desired pods healthy): its workload is already short",
                        s.and_then(|s| s.current_healthy).unwrap_or(0),
                        s.and_then(|s| s.desired_healthy).unwrap_or(0)
                    )
                })
            });
            if let Some(why) = blocked {
                let (severity, fix) = match opts.on_pdb_timeout {
                    PdbTimeoutPolicy::DisableEviction => (
                        Severity::Warning,
                        "on-pdb-timeout = \"disable-eviction\" deletes these pods past the drain timeout, bypassing the budget".to_owned(),
                    ),
                    PdbTimeoutPolicy::Skip => (
                        Severity::Warning,
                        format!(
                            "the node will be skipped (on-pdb-timeout = \"skip\"): after the drain waits {} it is uncordoned without its command, not upgraded; relax the budget (or scale the workload up) before the run to upgrade it",
                            humantime::format_duration(opts.timeout)
                        ),
                    ),
                    PdbTimeoutPolicy::Fail => (
                        Severity::Blocker,
                        format!(
                            "relax the budget (or scale the workload up) before the run; the drain would wait {} and fail the node",
                            humantime::format_duration(opts.timeout)
                        ),
                    ),
                };
                out.push(
                    Finding::new(
                        Check::DrainBlockers,
                        severity,
                        format!("{why}; it covers {} on this node", node_pods.join(", ")),
                    )
                    .node(node)
                    .object(object)
                    .fix(fix),
                );
            } else if computed && allowed > 0 && (node_pods.len() as i32) > allowed {
                let rounds = (node_pods.len() as i32 + allowed - 1) / allowed;
                // Each round after the first starts with a refused eviction, retried after
                // the budget's retry interval at the earliest.
                let extra = crate::drain::eviction::BUDGET_RETRY * (rounds - 1) as u32;
                out.push(
                    Finding::new(
                        Check::DrainBlockers,
                        Severity::Info,
                        format!(
                            "it allows {allowed} eviction(s) at a time for the node's {} pod(s): the drain goes in {rounds} rounds, each waiting for replacements to become Ready: at least {} more than an unbudgeted drain, plus the replacements' start-up",
                            node_pods.len(),
                            humantime::format_duration(extra)
                        ),
                    )
                    .node(node)
                    .object(object),
                );
            }
        }
    }
    // One budget over several nodes drained at once.
    for phase in &plan.phases {
        for wave in &phase.waves {
            for group in wave.nodes.chunks(phase.concurrency.max(1)) {
                for pdb in pdbs {
                    let nodes: Vec<&String> = group
                        .iter()
                        .filter(|n| on_node(pods, n).any(|p| covers(pdb, p)))
                        .collect();
                    let allowed = pdb
                        .status
                        .as_ref()
                        .and_then(|s| s.disruptions_allowed)
                        .unwrap_or(0);
                    if pdb.status.is_some() && nodes.len() >= 2 && (allowed as usize) < nodes.len()
                    {
                        let wave_name = match &wave.label {
                            Some(l) => format!("phase {} wave {l}", phase.name),
                            None => format!("phase {}", phase.name),
                        };
                        out.push(
                            Finding::new(
                                Check::DrainBlockers,
                                Severity::Warning,
                                format!(
                                    "{wave_name} drains {} at once, and its budget (allowing {allowed}) covers pods on each: the drains serialise, or deadlock until the drain timeout",
                                    nodes.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(", ")
                                ),
                            )
                            .object(format!("PodDisruptionBudget {}", pdb_key(pdb)))
                            .fix(format!(
                                "lower phase {:?}'s concurrency, or spread the workload's pods over waves",
                                phase.name
                            )),
                        );
                    }
                }
            }
        }
    }
    out
}

fn refuse_fix(reason: &str) -> &'static str {
    if reason.contains("emptyDir") || reason.contains("local storage") {
        "set delete-emptydir-data = true in [drain] if the data may go, or move the pod"
    } else if reason.contains("DaemonSet") {
        "set ignore-daemonsets = true in [drain]"
    } else {
        "give the pod a controller (Deployment, StatefulSet), delete it, or set force = true in [drain] (it will not come back)"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{PhasePlan, Wave};
    use serde_json::json;

    fn opts() -> DrainOptions {
        crate::playbook::parse(
            std::path::Path::new("t.toml"),
            "name = \"t\"\n[[phase]]\nname = \"w\"\nselector = \"a\"\n[command]\nrun = \"true\"\n",
        )
        .expect("a playbook")
        .drain
    }

    fn pod(name: &str, node: &str, app: &str, owner: Option<(&str, &str)>) -> Pod {
        let owners = owner.map(|(kind, name)| {
            json!([{"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": "u", "controller": true}])
        });
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns", "labels": {"app": app}, "ownerReferences": owners},
            "spec": {"nodeName": node, "containers": [{"name": "c"}]},
            "status": {"phase": "Running"}
        }))
        .unwrap()
    }

    fn pdb(name: &str, app: &str, spec: serde_json::Value, allowed: i32) -> PodDisruptionBudget {
        let mut s = json!({"selector": {"matchLabels": {"app": app}}});
        s.as_object_mut()
            .unwrap()
            .extend(spec.as_object().unwrap().clone());
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns"},
            "spec": s,
            "status": {"disruptionsAllowed": allowed, "currentHealthy": 2, "desiredHealthy": 2, "expectedPods": 2}
        }))
        .unwrap()
    }

    fn plan(waves: &[&[&str]], concurrency: usize) -> Plan {
        Plan {
            phases: vec![PhasePlan {
                name: "workers".into(),
                concurrency,
                failure_budget: 0,
                waves: waves
                    .iter()
                    .map(|w| Wave {
                        label: None,
                        nodes: w.iter().map(|n| (*n).into()).collect(),
                    })
                    .collect(),
            }],
            unselected: vec![],
            skipped: vec![],
            warnings: vec![],
        }
    }

    #[test]
    fn budgets_that_never_allow_an_eviction_and_refused_pods_block() {
        let pods = [
            pod("db-0", "n1", "db", Some(("StatefulSet", "db"))),
            pod("db-1", "n2", "db", Some(("StatefulSet", "db"))),
            pod("loner", "n1", "x", None),
        ];
        let pdbs = [pdb("db", "db", json!({"maxUnavailable": 0}), 0)];
        let found = check(&plan(&[&["n1"]], 1), &pods, &pdbs, &opts());
        let budget = found
            .iter()
            .find(|f| f.object.as_deref() == Some("PodDisruptionBudget ns/db"))
            .expect("the budget");
        assert_eq!(budget.severity, Severity::Blocker, "{found:#?}");
        assert!(budget.message.contains("maxUnavailable is 0"), "{budget:?}");
        let loner = found
            .iter()
            .find(|f| f.object.as_deref() == Some("Pod ns/loner"))
            .expect("the unmanaged pod");
        assert_eq!(loner.severity, Severity::Blocker);
        assert!(loner.fix.contains("force"), "{loner:?}");
        // With on-pdb-timeout = "skip" the budget only warns: the node will be skipped.
        let skip = DrainOptions {
            on_pdb_timeout: PdbTimeoutPolicy::Skip,
            ..opts()
        };
        let found = check(&plan(&[&["n1"]], 1), &pods[..2], &pdbs, &skip);
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!(found[0].severity, Severity::Warning);
        assert_eq!(found[0].node.as_deref(), Some("n1"));
        assert!(
            found[0].fix.starts_with("the node will be skipped"),
            "{found:#?}"
        );
        let min = [pdb("db", "db", json!({"minAvailable": "100%"}), 0)];
        let found = check(&plan(&[&["n1"]], 1), &pods[..2], &min, &opts());
        assert!(
            found[0].message.contains("minAvailable 2 is at or above"),
            "{found:#?}"
        );
    }

    #[test]
    fn serialising_budgets_single_replicas_and_shared_budgets_in_a_wave_are_said() {
        let pods = [
            pod("web-1", "n1", "web", Some(("ReplicaSet", "web-1a"))),
            pod("web-2", "n1", "web", Some(("ReplicaSet", "web-1a"))),
            pod("web-3", "n2", "web", Some(("ReplicaSet", "web-1a"))),
            pod("solo", "n2", "solo", Some(("ReplicaSet", "solo-5f"))),
        ];
        let pdbs = [pdb("web", "web", json!({"maxUnavailable": 1}), 1)];
        let found = check(&plan(&[&["n1", "n2"]], 2), &pods, &pdbs, &opts());
        let info = found
            .iter()
            .find(|f| f.severity == Severity::Info)
            .expect("info");
        assert!(
            info.message.contains("2 rounds") && info.message.contains("at least 5s more"),
            "{info:?}"
        );
        assert!(
            found
                .iter()
                .any(|f| f.severity == Severity::Warning && f.message.contains("only replica")),
            "{found:#?}"
        );
        let shared = found
            .iter()
            .find(|f| f.message.contains("drains n1, n2 at once"))
            .expect("the shared budget");
        assert_eq!(shared.severity, Severity::Warning);
        // One node at a time: no shared-budget warning.
        let one = check(&plan(&[&["n1", "n2"]], 1), &pods, &pdbs, &opts());
        assert!(!one.iter().any(|f| f.message.contains("at once")));
        assert!(
            one.iter().all(|f| f.severity != Severity::Blocker),
            "{one:#?}"
        );
    }
}
