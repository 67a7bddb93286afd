//! Where each pod's drain stands, kept so a timeout can say why a pod is still on the node.

use crate::vocab::RetryCause;
use k8s_openapi::api::core::v1::Pod;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Where a pod's drain stands, kept so a timeout can say why the pod is still there.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Progress {
    /// Waiting for one of the node's `eviction-concurrency` slots.
    Queued,
    /// Its first eviction request is in flight.
    Evicting,
    /// A PodDisruptionBudget (`namespace/name`) allows no disruption now.
    Blocked { pdb: String, message: String },
    /// Retried; `attempts` requests answered so far, the last with this cause.
    Retrying {
        cause: RetryCause,
        message: String,
        attempts: u32,
    },
    /// The eviction was accepted at `at`; waiting for the pod to terminate.
    Evicted { at: Instant },
    /// Already terminating when the drain started.
    Terminating,
    /// Deleted after a budget blocked it past the timeout (`disable-eviction`).
    Deleted,
}

/// Progress per pod UID.
pub(super) type ProgressMap = Arc<Mutex<BTreeMap<String, Progress>>>;

/// Why `pod` (as listed now) is still on the node, given its drain's last `progress`.
pub(super) fn still_there(
    progress: Option<&Progress>,
    pod: &Pod,
    now: Instant,
    eviction_concurrency: usize,
) -> String {
    let terminating = || {
        let finalizers = pod.metadata.finalizers.clone().unwrap_or_default();
        if !finalizers.is_empty() {
            format!(
                "still terminating, held by finalizer(s) {}",
                finalizers.join(", ")
            )
        } else if let Some(g) = pod.metadata.deletion_grace_period_seconds {
            format!("still terminating (grace period {g}s)")
        } else {
            "not deleted yet".to_owned()
        }
    };
    match progress {
        None | Some(Progress::Queued) => format!(
            "not evicted yet: all {eviction_concurrency} eviction slots of the node were busy (eviction-concurrency)"
        ),
        Some(Progress::Evicting) => "its eviction request was not answered".to_owned(),
        Some(Progress::Blocked { pdb, message }) => {
            format!("eviction blocked by PodDisruptionBudget {pdb}: {message}")
        }
        Some(Progress::Retrying {
            cause,
            message,
            attempts,
        }) => format!(
            "eviction {}, {attempts} attempt(s); last answer: {message}",
            cause.describe()
        ),
        Some(Progress::Evicted { at }) => format!(
            "evicted {}s ago, {}",
            now.saturating_duration_since(*at).as_secs(),
            terminating()
        ),
        Some(Progress::Terminating) => format!("was already terminating, {}", terminating()),
        Some(Progress::Deleted) => format!(
            "deleted despite its PodDisruptionBudget (on-pdb-timeout = \"disable-eviction\"), {}",
            terminating()
        ),
    }
}

/// The budgets that explain a drain timeout, when they explain all of it: at least one pod
/// still there is blocked by a PodDisruptionBudget, and every other one only waits for an
/// eviction slot (which the blocked pods hold). None when anything else keeps a pod: evicted
/// but not terminating, retried for another cause, already terminating, unanswered.
pub(super) fn budgets_holding<'a>(
    progress: impl IntoIterator<Item = Option<&'a Progress>>,
) -> Option<BTreeSet<String>> {
    let mut pdbs = BTreeSet::new();
    for p in progress {
        match p {
            Some(Progress::Blocked { pdb, .. }) => {
                pdbs.insert(pdb.clone());
            }
            None | Some(Progress::Queued) => {}
            Some(_) => return None,
        }
    }
    (!pdbs.is_empty()).then_some(pdbs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pod(finalizers: &[&str], grace: Option<i64>) -> Pod {
        let mut p = Pod::default();
        p.metadata.finalizers = Some(finalizers.iter().map(|f| (*f).to_owned()).collect());
        p.metadata.deletion_grace_period_seconds = grace;
        p
    }

    #[test]
    fn a_timeout_says_why_each_pod_is_still_there() {
        let now = Instant::now();
        let ago = now - Duration::from_secs(42);
        let cases: Vec<(Option<Progress>, Pod, &str)> = vec![
            (None, pod(&[], None), "not evicted yet: all 16 eviction slots of the node were busy (eviction-concurrency)"),
            (Some(Progress::Queued), pod(&[], None), "not evicted yet: all 16 eviction slots of the node were busy (eviction-concurrency)"),
            (Some(Progress::Evicting), pod(&[], None), "its eviction request was not answered"),
            (
                Some(Progress::Blocked { pdb: "shop/web".into(), message: "The disruption budget web needs 9 healthy pods and has 9 currently".into() }),
                pod(&[], None),
                "eviction blocked by PodDisruptionBudget shop/web: The disruption budget web needs 9 healthy pods and has 9 currently",
            ),
            (
                Some(Progress::Retrying { cause: RetryCause::Throttled, message: "Too many requests, please try again later.".into(), attempts: 12 }),
                pod(&[], None),
                "eviction was throttled by the API server (429), 12 attempt(s); last answer: Too many requests, please try again later.",
            ),
            (
                Some(Progress::Retrying { cause: RetryCause::BudgetConflict, message: "Operation cannot be fulfilled on poddisruptionbudgets.policy \"web\": the object has been modified".into(), attempts: 3 }),
                pod(&[], None),
                "eviction conflicted with another update of its PodDisruptionBudget (409), 3 attempt(s); last answer: Operation cannot be fulfilled on poddisruptionbudgets.policy \"web\": the object has been modified",
            ),
            (Some(Progress::Evicted { at: ago }), pod(&["example.com/hold"], Some(30)), "evicted 42s ago, still terminating, held by finalizer(s) example.com/hold"),
            (Some(Progress::Evicted { at: ago }), pod(&[], Some(30)), "evicted 42s ago, still terminating (grace period 30s)"),
            (Some(Progress::Terminating), pod(&[], Some(600)), "was already terminating, still terminating (grace period 600s)"),
            (Some(Progress::Deleted), pod(&[], None), "deleted despite its PodDisruptionBudget (on-pdb-timeout = \"disable-eviction\"), not deleted yet"),
        ];
        for (progress, p, expected) in cases {
            assert_eq!(
                still_there(progress.as_ref(), &p, now, 16),
                expected,
                "{progress:?}"
            );
        }
    }

    #[test]
    fn only_budgets_blocking_and_pods_queued_behind_them_make_a_timeout_the_budgets_doing() {
        let blocked = |pdb: &str| Progress::Blocked {
            pdb: pdb.into(),
            message: "no".into(),
        };
        let evicted = Progress::Evicted { at: Instant::now() };
        let retrying = Progress::Retrying {
            cause: RetryCause::Throttled,
            message: "slow down".into(),
            attempts: 2,
        };
        let (a, b) = (blocked("ns/a"), blocked("ns/b"));
        let set = |v: &[&str]| Some(v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>());
        type Case<'a> = (Vec<Option<&'a Progress>>, Option<BTreeSet<String>>);
        let cases: Vec<Case> = vec![
            (vec![Some(&a)], set(&["ns/a"])),
            (vec![Some(&a), Some(&b), Some(&a)], set(&["ns/a", "ns/b"])),
            (
                vec![Some(&a), Some(&Progress::Queued), None],
                set(&["ns/a"]),
            ),
            // Nothing blocked: not a budget's doing.
            (vec![], None),
            (vec![Some(&Progress::Queued)], None),
            // A pod that does not terminate, a retry, a pod already terminating, a request
            // never answered: a failure even beside a blocked pod.
            (vec![Some(&a), Some(&evicted)], None),
            (vec![Some(&retrying), Some(&a)], None),
            (vec![Some(&a), Some(&Progress::Terminating)], None),
            (vec![Some(&a), Some(&Progress::Evicting)], None),
            (vec![Some(&Progress::Deleted)], None),
        ];
        for (progress, want) in cases {
            assert_eq!(budgets_holding(progress.clone()), want, "{progress:?}");
        }
    }
}
