//! Which PodDisruptionBudgets would block a drain now, as pure functions over listed pods and
//! budgets: a budget in the pod's namespace whose selector matches the pod's labels and whose
//! status allows no disruption (`disruptionsAllowed` 0 or not reported yet). `rollgate plan`
//! shows them per node; the drain itself learns of a block from the Eviction API's answer.

use super::filter::Classified;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use std::collections::BTreeMap;

/// Whether a Kubernetes LabelSelector (matchLabels + matchExpressions) matches these labels.
pub fn label_selector_matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = sel
        .match_labels
        .as_ref()
        .is_none_or(|ml| ml.iter().all(|(k, v)| labels.get(k) == Some(v)));
    let exprs_ok = sel.match_expressions.as_ref().is_none_or(|es| {
        es.iter().all(|e| {
            let values = e.values.clone().unwrap_or_default();
            match e.operator.as_str() {
                "In" => labels.get(&e.key).is_some_and(|v| values.contains(v)),
                "NotIn" => labels.get(&e.key).is_none_or(|v| !values.contains(v)),
                "Exists" => labels.contains_key(&e.key),
                "DoesNotExist" => !labels.contains_key(&e.key),
                _ => false,
            }
        })
    });
    labels_ok && exprs_ok
}

/// Whether this budget covers the pod (same namespace, its selector matches) and allows no
/// disruption now.
pub fn blocks(pdb: &PodDisruptionBudget, pod: &Pod) -> bool {
    let same_ns = pdb.metadata.namespace == pod.metadata.namespace;
    let allowed = pdb
        .status
        .as_ref()
        .and_then(|s| s.disruptions_allowed)
        .unwrap_or(0);
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    let covers = pdb
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .is_some_and(|sel| label_selector_matches(sel, &labels));
    same_ns && covers && allowed == 0
}

/// The budgets (`namespace/name`, each once, in the order first met) that block a pod the drain
/// waits for ([`super::filter::PodAction::drains`]).
pub fn blocking_budgets(pods: &[Classified<'_>], pdbs: &[PodDisruptionBudget]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for c in pods.iter().filter(|c| c.action.drains()) {
        for pdb in pdbs.iter().filter(|pdb| blocks(pdb, c.pod)) {
            let key = format!(
                "{}/{}",
                pdb.metadata.namespace.as_deref().unwrap_or(""),
                pdb.metadata.name.as_deref().unwrap_or("")
            );
            if !out.contains(&key) {
                out.push(key);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drain::filter::PodAction;
    use k8s_openapi::api::policy::v1::{PodDisruptionBudgetSpec, PodDisruptionBudgetStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn pod(ns: &str, app: &str) -> Pod {
        let mut p = Pod::default();
        p.metadata.namespace = Some(ns.into());
        p.metadata.name = Some(format!("{app}-1"));
        p.metadata.labels = Some([("app".to_string(), app.to_string())].into());
        p
    }

    fn pdb(ns: &str, name: &str, app: Option<&str>, allowed: Option<i32>) -> PodDisruptionBudget {
        let mut b = PodDisruptionBudget::default();
        b.metadata.namespace = Some(ns.into());
        b.metadata.name = Some(name.into());
        b.spec = Some(PodDisruptionBudgetSpec {
            selector: app.map(|a| LabelSelector {
                match_labels: Some([("app".to_string(), a.to_string())].into()),
                ..Default::default()
            }),
            ..Default::default()
        });
        b.status = allowed.map(|n| PodDisruptionBudgetStatus {
            disruptions_allowed: Some(n),
            ..Default::default()
        });
        b
    }

    #[test]
    fn a_budget_blocks_a_pod_it_covers_in_its_namespace_while_it_allows_no_disruption() {
        let web = pod("shop", "web");
        let cases = [
            (
                "covers, 0 allowed",
                pdb("shop", "web", Some("web"), Some(0)),
                true,
            ),
            (
                "covers, status not reported yet",
                pdb("shop", "web", Some("web"), None),
                true,
            ),
            (
                "covers, 1 allowed",
                pdb("shop", "web", Some("web"), Some(1)),
                false,
            ),
            (
                "other namespace",
                pdb("bank", "web", Some("web"), Some(0)),
                false,
            ),
            ("other app", pdb("shop", "db", Some("db"), Some(0)), false),
            ("no selector", pdb("shop", "all", None, Some(0)), false),
        ];
        for (name, budget, want) in cases {
            assert_eq!(blocks(&budget, &web), want, "{name}");
        }
    }

    #[test]
    fn a_node_lists_each_blocking_budget_once_and_only_for_pods_it_drains() {
        let (web1, web2, agent) = (pod("shop", "web"), pod("shop", "web"), pod("shop", "agent"));
        let pods = vec![
            Classified {
                pod: &web1,
                action: PodAction::Evict,
            },
            Classified {
                pod: &web2,
                action: PodAction::WaitOnly,
            },
            Classified {
                pod: &agent,
                action: PodAction::Skip("DaemonSet-managed (agent)".into()),
            },
        ];
        let pdbs = vec![
            pdb("shop", "agent", Some("agent"), Some(0)),
            pdb("shop", "web", Some("web"), Some(0)),
            pdb("shop", "web-loose", Some("web"), Some(2)),
        ];
        assert_eq!(blocking_budgets(&pods, &pdbs), vec!["shop/web".to_string()]);
    }

    #[test]
    fn label_selectors_match_as_kubernetes_does() {
        let labels: BTreeMap<String, String> = [
            ("app".to_string(), "web".to_string()),
            ("tier".to_string(), "front".to_string()),
        ]
        .into();
        let expr = |key: &str, op: &str, values: &[&str]| LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: key.into(),
                operator: op.into(),
                values: Some(values.iter().map(|v| v.to_string()).collect()),
            }]),
            ..Default::default()
        };
        let cases = [
            ("empty selector", LabelSelector::default(), true),
            ("In", expr("app", "In", &["web", "api"]), true),
            ("In, other value", expr("app", "In", &["db"]), false),
            ("NotIn", expr("app", "NotIn", &["db"]), true),
            ("NotIn, absent key", expr("zone", "NotIn", &["a"]), true),
            ("Exists", expr("tier", "Exists", &[]), true),
            ("DoesNotExist", expr("tier", "DoesNotExist", &[]), false),
            ("unknown operator", expr("app", "Gt", &["1"]), false),
        ];
        for (name, sel, want) in cases {
            assert_eq!(label_selector_matches(&sel, &labels), want, "{name}");
        }
    }
}
