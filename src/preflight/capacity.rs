//! Capacity: can the nodes that stay schedulable take the pods of `concurrency` drained nodes at
//! once? For each wave, each group of `concurrency` nodes the engine drains together is taken
//! out; the pods the drain moves are placed (largest CPU request first, first fit) on the
//! other Ready, schedulable nodes against their allocatable CPU, memory and pod count minus
//! what their pods request, honouring nodeSelector, required node affinity and NoSchedule /
//! NoExecute taints. Good enough to be useful, not the scheduler: preferences, pod affinity,
//! topology spread and volumes are not considered.

use super::{Check, Finding, Severity};
use crate::plan::Plan;
use k8s_openapi::api::core::v1::{Node, Pod};
use std::collections::BTreeMap;

/// CPU in millicores, memory in bytes, pods.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Resources {
    pub cpu_m: i64,
    pub memory: i64,
    pub pods: i64,
}

impl Resources {
    fn fits(&self, need: &Resources) -> bool {
        self.cpu_m >= need.cpu_m && self.memory >= need.memory && self.pods >= need.pods
    }

    fn take(&mut self, need: &Resources) {
        self.cpu_m -= need.cpu_m;
        self.memory -= need.memory;
        self.pods -= need.pods;
    }

    fn describe(&self) -> String {
        format!(
            "{} CPU, {} memory, {} pod(s)",
            cpu_text(self.cpu_m),
            memory_text(self.memory),
            self.pods
        )
    }
}

fn cpu_text(m: i64) -> String {
    if m % 1000 == 0 {
        format!("{}", m / 1000)
    } else {
        format!("{m}m")
    }
}

fn memory_text(b: i64) -> String {
    const GI: i64 = 1 << 30;
    const MI: i64 = 1 << 20;
    if b >= GI {
        format!("{:.1}Gi", b as f64 / GI as f64)
    } else {
        format!("{}Mi", b / MI)
    }
}

/// Parses a Kubernetes quantity: CPU into millicores (`scale` 1000) or memory into bytes
/// (`scale` 1). None when it does not parse.
pub fn quantity(text: &str, scale: f64) -> Option<i64> {
    let text = text.trim();
    let suffixes: [(&str, f64); 15] = [
        ("Ki", 1024.0),
        ("Mi", 1024f64.powi(2)),
        ("Gi", 1024f64.powi(3)),
        ("Ti", 1024f64.powi(4)),
        ("Pi", 1024f64.powi(5)),
        ("Ei", 1024f64.powi(6)),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    let (number, factor) = suffixes
        .iter()
        .find_map(|(s, f)| text.strip_suffix(s).map(|n| (n, *f)))
        .unwrap_or((text, 1.0));
    let value: f64 = number.parse().ok()?;
    // Rounded up as Kubernetes does, but not for float noise: 0.009 * 1000 is 9, not 9.000…1.
    let exact = value * factor * scale;
    let nearest = exact.round();
    Some(if (exact - nearest).abs() < 1e-6 {
        nearest
    } else {
        exact.ceil()
    } as i64)
}

/// What a pod asks for: the larger of its containers' summed requests and its largest init
/// container's request, plus one pod slot.
pub fn requests(pod: &Pod) -> Resources {
    let Some(spec) = &pod.spec else {
        return Resources::default();
    };
    let of = |c: &k8s_openapi::api::core::v1::Container| {
        let r = c.resources.as_ref().and_then(|r| r.requests.as_ref());
        let get = |k: &str, scale| {
            r.and_then(|r| r.get(k))
                .and_then(|q| quantity(&q.0, scale))
                .unwrap_or(0)
        };
        (get("cpu", 1000.0), get("memory", 1.0))
    };
    let (mut cpu, mut mem) = spec
        .containers
        .iter()
        .map(of)
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    for init in spec.init_containers.iter().flatten() {
        let (c, m) = of(init);
        cpu = cpu.max(c);
        mem = mem.max(m);
    }
    Resources {
        cpu_m: cpu,
        memory: mem,
        pods: 1,
    }
}

fn allocatable(node: &Node) -> Resources {
    let a = node.status.as_ref().and_then(|s| s.allocatable.as_ref());
    let get = |k: &str, scale| {
        a.and_then(|a| a.get(k))
            .and_then(|q| quantity(&q.0, scale))
            .unwrap_or(0)
    };
    Resources {
        cpu_m: get("cpu", 1000.0),
        memory: get("memory", 1.0),
        pods: get("pods", 1.0),
    }
}

fn name(node: &Node) -> &str {
    node.metadata.name.as_deref().unwrap_or("")
}

fn ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn running(pod: &Pod) -> bool {
    !matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

fn node_of(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref().and_then(|s| s.node_name.as_deref())
}

/// Whether the pod may run on the node: its nodeSelector, its required node affinity and the
/// node's NoSchedule / NoExecute taints.
pub fn may_run_on(pod: &Pod, node: &Node) -> bool {
    let labels = node.metadata.labels.clone().unwrap_or_default();
    let Some(spec) = &pod.spec else {
        return true;
    };
    if let Some(sel) = &spec.node_selector
        && !sel.iter().all(|(k, v)| labels.get(k) == Some(v))
    {
        return false;
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    if let Some(required) = required {
        let term_matches = |t: &k8s_openapi::api::core::v1::NodeSelectorTerm| {
            t.match_expressions.iter().flatten().all(|e| {
                let value = labels.get(&e.key);
                let values = e.values.clone().unwrap_or_default();
                match e.operator.as_str() {
                    "In" => value.is_some_and(|v| values.contains(v)),
                    "NotIn" => value.is_none_or(|v| !values.contains(v)),
                    "Exists" => value.is_some(),
                    "DoesNotExist" => value.is_none(),
                    "Gt" | "Lt" => {
                        let (Some(v), Some(w)) = (
                            value.and_then(|v| v.parse::<i64>().ok()),
                            values.first().and_then(|w| w.parse::<i64>().ok()),
                        ) else {
                            return false;
                        };
                        if e.operator == "Gt" { v > w } else { v < w }
                    }
                    _ => false,
                }
            })
        };
        if !required.node_selector_terms.iter().any(term_matches) {
            return false;
        }
    }
    let tolerations = spec.tolerations.clone().unwrap_or_default();
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    taints
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        // The taints Kubernetes puts on a cordoned or NotReady node say what `fit` judges from
        // the node itself (a node coming back from rollgate loses them).
        .filter(|t| !CONDITION_TAINTS.contains(&t.key.as_str()))
        .all(|t| {
            tolerations.iter().any(|tol| {
                let key_ok = tol
                    .key
                    .as_deref()
                    .is_none_or(|k| k.is_empty() || k == t.key);
                let effect_ok = tol
                    .effect
                    .as_deref()
                    .is_none_or(|e| e.is_empty() || e == t.effect);
                let value_ok = tol.operator.as_deref() == Some("Exists")
                    || tol.value.as_deref().unwrap_or("") == t.value.as_deref().unwrap_or("");
                key_ok && effect_ok && value_ok
            })
        })
}

/// One group of nodes drained at once, and what happened to its pods.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupFit {
    pub phase: String,
    pub nodes: Vec<String>,
    pub moved: Resources,
    /// Free on the nodes that stay schedulable, before the move.
    pub free: Resources,
    pub schedulable_nodes: usize,
    /// Pods that found no place (`namespace/name`).
    pub unplaced: Vec<String>,
}

/// Taints the control plane sets from a node's state (cordon, readiness).
const CONDITION_TAINTS: [&str; 3] = [
    "node.kubernetes.io/unschedulable",
    "node.kubernetes.io/not-ready",
    "node.kubernetes.io/unreachable",
];

/// Whether the run gives the node back when done with it: rollgate cordoned it, and it was
/// not cordoned by someone else before (that cordon stays).
fn comes_back_from_rollgate(node: &Node) -> bool {
    use crate::vocab::node_marks::{CORDONED_BY, PRECORDONED};
    let annotations = node.metadata.annotations.as_ref();
    let has = |key: &str| annotations.is_some_and(|a| a.contains_key(key));
    has(CORDONED_BY) && !has(PRECORDONED)
}

/// Fits each group of each wave. `moves(pod)` says whether the drain moves the pod (not a
/// DaemonSet or mirror pod, not completed).
pub fn fit(
    plan: &Plan,
    nodes: &[Node],
    pods: &[Pod],
    moves: impl Fn(&Pod) -> bool,
) -> Vec<GroupFit> {
    let mut used: BTreeMap<&str, Resources> = BTreeMap::new();
    for pod in pods.iter().filter(|p| running(p)) {
        if let Some(n) = node_of(pod) {
            let r = requests(pod);
            let u = used.entry(n).or_default();
            u.cpu_m += r.cpu_m;
            u.memory += r.memory;
            u.pods += r.pods;
        }
    }
    let mut out = Vec::new();
    // Plan nodes drained in earlier groups: one that rollgate cordoned (a resumed run's node
    // mid-upgrade) is uncordoned, Ready, before the later groups start.
    let mut earlier: Vec<&str> = Vec::new();
    for phase in &plan.phases {
        for wave in &phase.waves {
            for group in wave.nodes.chunks(phase.concurrency.max(1)) {
                let mut targets: Vec<(&Node, Resources)> = nodes
                    .iter()
                    .filter(|n| !group.iter().any(|g| g == name(n)))
                    .filter(|n| {
                        let schedulable = !n
                            .spec
                            .as_ref()
                            .and_then(|s| s.unschedulable)
                            .unwrap_or(false);
                        (ready(n) && schedulable)
                            || (earlier.contains(&name(n)) && comes_back_from_rollgate(n))
                    })
                    .map(|n| {
                        let mut free = allocatable(n);
                        free.take(&used.get(name(n)).copied().unwrap_or_default());
                        (n, free)
                    })
                    .collect();
                let free_before = targets.iter().fold(Resources::default(), |mut a, (_, f)| {
                    a.cpu_m += f.cpu_m.max(0);
                    a.memory += f.memory.max(0);
                    a.pods += f.pods.max(0);
                    a
                });
                let mut moving: Vec<&Pod> = pods
                    .iter()
                    .filter(|p| {
                        running(p) && node_of(p).is_some_and(|n| group.iter().any(|g| g == n))
                    })
                    .filter(|p| moves(p))
                    .collect();
                moving.sort_by_key(|p| std::cmp::Reverse((requests(p).cpu_m, requests(p).memory)));
                let mut moved = Resources::default();
                let mut unplaced = Vec::new();
                for pod in moving {
                    let need = requests(pod);
                    moved.cpu_m += need.cpu_m;
                    moved.memory += need.memory;
                    moved.pods += need.pods;
                    match targets
                        .iter_mut()
                        .find(|(n, free)| free.fits(&need) && may_run_on(pod, n))
                    {
                        Some((_, free)) => free.take(&need),
                        None => unplaced.push(crate::drain::pod_key(pod)),
                    }
                }
                out.push(GroupFit {
                    phase: phase.name.clone(),
                    nodes: group.to_vec(),
                    moved,
                    free: free_before,
                    schedulable_nodes: targets.len(),
                    unplaced,
                });
                earlier.extend(group.iter().map(String::as_str));
            }
        }
    }
    out
}

/// The findings: a blocker per group whose pods do not all fit, and the worst group's figures.
pub fn check(groups: &[GroupFit]) -> Vec<Finding> {
    let mut out = Vec::new();
    for g in groups.iter().filter(|g| !g.unplaced.is_empty()) {
        let shown: Vec<&str> = g.unplaced.iter().take(5).map(String::as_str).collect();
        out.push(
            Finding::new(
                Check::Capacity,
                Severity::Blocker,
                format!(
                    "draining {} at once leaves no place for {} pod(s) ({}{}): they move {} onto {} schedulable node(s) with {} free",
                    g.nodes.join(", "),
                    g.unplaced.len(),
                    shown.join(", "),
                    if g.unplaced.len() > shown.len() { ", ..." } else { "" },
                    g.moved.describe(),
                    g.schedulable_nodes,
                    g.free.describe()
                ),
            )
            .object(format!("phase {}", g.phase))
            .fix(format!(
                "lower phase {:?}'s concurrency, add capacity, or relax the pods' nodeSelector/affinity",
                g.phase
            )),
        );
    }
    // The worst group: the largest share of the free CPU (then memory) it needs.
    let share = |g: &GroupFit| {
        let cpu = g.moved.cpu_m as f64 / g.free.cpu_m.max(1) as f64;
        let mem = g.moved.memory as f64 / g.free.memory.max(1) as f64;
        cpu.max(mem)
    };
    if let Some(worst) = groups.iter().max_by(|a, b| share(a).total_cmp(&share(b))) {
        out.push(
            Finding::new(
                Check::Capacity,
                Severity::Info,
                format!(
                    "worst wave: draining {} moves {} onto {} schedulable node(s) with {} free ({:.0}% of the free CPU or memory)",
                    worst.nodes.join(", "),
                    worst.moved.describe(),
                    worst.schedulable_nodes,
                    worst.free.describe(),
                    100.0 * share(worst)
                ),
            )
            .object(format!("phase {}", worst.phase)),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn quantities_parse_like_kubernetes() {
        assert_eq!(quantity("100m", 1000.0), Some(100));
        for m in 1..=4000 {
            assert_eq!(quantity(&format!("{m}m"), 1000.0), Some(m), "{m}m");
        }
        assert_eq!(quantity("1P", 1.0), Some(1_000_000_000_000_000));
        assert_eq!(quantity("2", 1000.0), Some(2000));
        assert_eq!(quantity("0.5", 1000.0), Some(500));
        assert_eq!(quantity("128Mi", 1.0), Some(128 << 20));
        assert_eq!(quantity("1G", 1.0), Some(1_000_000_000));
        assert_eq!(quantity("110", 1.0), Some(110));
        assert_eq!(quantity("lots", 1.0), None);
    }

    fn node(name: &str, cpu: &str, taint: bool, labels: serde_json::Value) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels},
            "spec": if taint { json!({"taints": [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]}) } else { json!({}) },
            "status": {
                "allocatable": {"cpu": cpu, "memory": "8Gi", "pods": "110"},
                "conditions": [{"type": "Ready", "status": "True"}]
            }
        }))
        .unwrap()
    }

    fn pod(name: &str, node: &str, cpu: &str, extra: serde_json::Value) -> Pod {
        let mut spec = json!({
            "nodeName": node,
            "containers": [{"name": "c", "resources": {"requests": {"cpu": cpu, "memory": "1Gi"}}}]
        });
        spec.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "ns"}, "spec": spec}))
            .unwrap()
    }

    fn plan(nodes: &[&str], concurrency: usize) -> Plan {
        Plan {
            phases: vec![crate::plan::PhasePlan {
                name: "workers".into(),
                concurrency,
                failure_budget: 0,
                waves: vec![crate::plan::Wave {
                    label: None,
                    nodes: nodes.iter().map(|n| (*n).into()).collect(),
                }],
            }],
            unselected: vec![],
            skipped: vec![],
            warnings: vec![],
        }
    }

    #[test]
    fn pods_that_find_no_room_block_and_the_worst_wave_is_named() {
        let nodes = vec![
            node("a", "2", false, json!({})),
            node("b", "2", false, json!({})),
            node("c", "2", false, json!({})),
        ];
        let pods = vec![
            pod("p1", "a", "1500m", json!({})),
            pod("p2", "b", "1500m", json!({})),
            pod("p3", "c", "100m", json!({})),
        ];
        // One at a time: a's pod fits on c (b is full), b's on c too? c has 1.9 free: p1 fits.
        let one = fit(&plan(&["a", "b"], 1), &nodes, &pods, |_| true);
        assert!(one.iter().all(|g| g.unplaced.is_empty()), "{one:?}");
        // Both at once: only c stays, with 1.9 CPU free for 3 CPU of pods.
        let two = fit(&plan(&["a", "b"], 2), &nodes, &pods, |_| true);
        assert_eq!(two[0].unplaced, vec!["ns/p2".to_owned()], "{two:?}");
        let found = check(&two);
        assert_eq!(found[0].severity, Severity::Blocker);
        assert!(found[0].message.contains("a, b at once"), "{found:?}");
        assert!(found.last().unwrap().message.starts_with("worst wave"));
    }

    #[test]
    fn selectors_affinity_and_taints_limit_where_pods_go() {
        let tainted = node("t", "8", true, json!({"disk": "ssd"}));
        let plain = node("p", "8", false, json!({"disk": "hdd"}));
        let bare = pod("x", "a", "1", json!({}));
        assert!(!may_run_on(&bare, &tainted));
        assert!(may_run_on(&bare, &plain));
        let tolerant = pod(
            "x",
            "a",
            "1",
            json!({"tolerations": [{"key": "dedicated", "operator": "Exists"}]}),
        );
        assert!(may_run_on(&tolerant, &tainted));
        let ssd = pod("x", "a", "1", json!({"nodeSelector": {"disk": "ssd"}}));
        assert!(!may_run_on(&ssd, &plain));
        let affinity = pod(
            "x",
            "a",
            "1",
            json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "disk", "operator": "In", "values": ["hdd"]}]}]}}}}),
        );
        assert!(may_run_on(&affinity, &plain));
        assert!(!may_run_on(&affinity, &tainted));
    }

    #[test]
    fn a_node_rollgate_cordoned_earlier_in_the_plan_takes_pods_of_later_groups() {
        let cordoned = |annotations: serde_json::Value| {
            let mut n = node("a", "2", false, json!({}));
            let spec = n.spec.get_or_insert_default();
            spec.unschedulable = Some(true);
            spec.taints = serde_json::from_value(
                json!([{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]),
            )
            .unwrap();
            n.metadata.annotations = serde_json::from_value(annotations).unwrap();
            n
        };
        let pods = vec![pod("p", "b", "1", json!({}))];
        let unplaced = |a: Node| {
            fit(
                &plan(&["a", "b"], 1),
                &[a, node("b", "2", false, json!({}))],
                &pods,
                |_| true,
            )[1]
            .unplaced
            .len()
        };
        // A resumed run's node mid-upgrade: uncordoned before b drains.
        assert_eq!(
            unplaced(cordoned(json!({"rollgate.dev/cordoned-by": "r1"}))),
            0
        );
        // Cordoned by someone else (before rollgate, or by hand): it stays cordoned.
        assert_eq!(unplaced(cordoned(json!({}))), 1);
        assert_eq!(
            unplaced(cordoned(
                json!({"rollgate.dev/cordoned-by": "r1", "rollgate.dev/precordoned": "kubectl"})
            )),
            1
        );
        // Not in an earlier group (b drains first): no.
        let later = fit(
            &plan(&["b", "a"], 1),
            &[
                cordoned(json!({"rollgate.dev/cordoned-by": "r1"})),
                node("b", "2", false, json!({})),
            ],
            &pods,
            |_| true,
        );
        assert_eq!(later[0].unplaced.len(), 1);
    }
}
