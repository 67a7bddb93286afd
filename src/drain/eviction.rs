//! What one answer of the policy/v1 Eviction API means for a drain, as pure functions so every
//! answer is table-tested ([`classify`], [`retry_delay`]).
//!
//! kubectl drain retries a 429 every 5 s and fails on anything else. Many drains at once under
//! one PodDisruptionBudget also meet answers that retrying fixes, and rollgate retries them:
//! - 409 on `poddisruptionbudgets`: evictions (or the disruption controller) updated the budget's
//!   status at the same moment and the apiserver's own retries (20 in 10 s) all lost the race;
//! - 409 on the pod, other than its UID precondition: the pod changed during the eviction;
//! - 429 without a `DisruptionBudget` cause: API priority and fairness throttled the request;
//! - 5xx: the apiserver could not answer now.
//!
//! A 409 on the pod's UID precondition means this pod (this UID) is gone and another one took its
//! name: nothing to evict and no deletion to wait for.

use crate::vocab::RetryCause;
use kube::core::Status;
use std::time::Duration;

/// What the drain does after one eviction request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// 201: the pod is being deleted; wait for it to go.
    Evicted,
    /// 404, or 409 on the UID precondition: this pod no longer exists.
    Gone,
    /// A PodDisruptionBudget allows no disruption now (429 with cause `DisruptionBudget`, or 403
    /// on a budget already violated). `pdb` is its name when the answer gives it.
    Blocked {
        pdb: Option<String>,
        message: String,
        retry_after: Option<Duration>,
    },
    /// Not now, for another reason; try again.
    Retry {
        cause: RetryCause,
        /// The budget whose status update conflicted, for [`RetryCause::BudgetConflict`].
        pdb: Option<String>,
        message: String,
        retry_after: Option<Duration>,
    },
    /// Retrying cannot help: the drain fails with this answer.
    Fatal,
}

/// Reads one answer of `POST pods/NAME/eviction`: `None` is success (201).
pub fn classify(answer: Option<&Status>) -> Answer {
    let Some(s) = answer else {
        return Answer::Evicted;
    };
    let details = s.details.as_ref();
    let kind = details.map(|d| d.kind.as_str()).unwrap_or_default();
    let on_budget = kind.starts_with("poddisruptionbudget")
        || s.message.contains("poddisruptionbudgets")
        || s.message.contains("PodDisruptionBudget");
    let retry_after = details
        .map(|d| d.retry_after_seconds)
        .filter(|r| *r > 0)
        .map(|r| Duration::from_secs(u64::from(r)));
    let budget_name = || {
        details
            .filter(|d| d.kind.starts_with("poddisruptionbudget") && !d.name.is_empty())
            .map(|d| d.name.clone())
            .or_else(|| quoted_name(&s.message))
    };
    let retry = |cause: RetryCause, pdb: Option<String>| Answer::Retry {
        cause,
        pdb,
        message: s.message.clone(),
        retry_after,
    };
    match s.code {
        404 => Answer::Gone,
        409 if s.message.contains("UID in precondition") => Answer::Gone,
        409 if on_budget => retry(RetryCause::BudgetConflict, budget_name()),
        409 => retry(RetryCause::PodConflict, None),
        429 => {
            let cause =
                details.and_then(|d| d.causes.iter().find(|c| c.reason == "DisruptionBudget"));
            match cause {
                Some(c) => Answer::Blocked {
                    pdb: pdb_name_from(&c.message),
                    message: c.message.clone(),
                    retry_after,
                },
                None => retry(RetryCause::Throttled, None),
            }
        }
        // A budget already violated (more pods unavailable than it allows).
        403 if on_budget || s.message.contains("disruption budget") => Answer::Blocked {
            pdb: budget_name(),
            message: s.message.clone(),
            retry_after,
        },
        // Older apiservers give up on budget conflicts with a timeout.
        504 if on_budget && s.message.contains("conflicts") => {
            retry(RetryCause::BudgetConflict, budget_name())
        }
        // "This pod has more than one PodDisruptionBudget": no retry changes that.
        500 if s.message.contains("more than one PodDisruptionBudget") => Answer::Fatal,
        500..=599 => retry(RetryCause::ServerError, None),
        _ => Answer::Fatal,
    }
}

/// How long an eviction a budget refused waits before it is tried again (kubectl's interval),
/// unless the server asks for longer.
pub const BUDGET_RETRY: Duration = Duration::from_secs(5);

/// How long to wait before the `attempt`-th retry (1 = the first) after this answer, before
/// jitter. A PDB block waits 5 s as kubectl does (longer if the server asks); a budget or pod
/// conflict 1 s (the apiserver has already retried for 10 s); throttling and server errors back
/// off exponentially to 16 s unless the server says when.
pub fn retry_delay(answer: &Answer, attempt: u32) -> Duration {
    let exponential = Duration::from_secs(1u64 << attempt.clamp(1, 5).saturating_sub(1));
    let capped = |d: Duration| d.min(Duration::from_secs(30));
    match answer {
        Answer::Blocked { retry_after, .. } => {
            capped(retry_after.unwrap_or_default().max(BUDGET_RETRY))
        }
        Answer::Retry {
            cause, retry_after, ..
        } => match cause {
            RetryCause::BudgetConflict | RetryCause::PodConflict => Duration::from_secs(1),
            RetryCause::Throttled | RetryCause::ServerError => {
                capped(retry_after.unwrap_or(exponential))
            }
        },
        Answer::Evicted | Answer::Gone | Answer::Fatal => Duration::ZERO,
    }
}

/// The name in "The disruption budget NAME needs N healthy pods ..." or "The disruption budget
/// NAME is still being processed by the server."
pub fn pdb_name_from(message: &str) -> Option<String> {
    let rest = message.split("disruption budget ").nth(1)?;
    let name = rest.split_whitespace().next()?;
    (!name.is_empty() && name != "is").then(|| name.trim_end_matches(['.', ',']).to_owned())
}

/// The first double-quoted word: `NAME` in `... on poddisruptionbudgets.policy "NAME": ...`.
fn quoted_name(message: &str) -> Option<String> {
    let rest = message.split('"').nth(1)?;
    (!rest.is_empty() && message.matches('"').count() >= 2).then(|| rest.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::response::{StatusCause, StatusDetails};

    fn status(code: u16, message: &str, kind: &str, name: &str, causes: &[(&str, &str)]) -> Status {
        let mut s = Status::failure(message, "").with_code(code);
        if !kind.is_empty() || !causes.is_empty() {
            s.details = Some(StatusDetails {
                name: name.into(),
                kind: kind.into(),
                causes: causes
                    .iter()
                    .map(|(reason, message)| StatusCause {
                        reason: (*reason).into(),
                        message: (*message).into(),
                        field: String::new(),
                    })
                    .collect(),
                group: String::new(),
                uid: String::new(),
                retry_after_seconds: 0,
            });
        }
        s
    }

    const BUDGET_CONFLICT: &str = "Operation cannot be fulfilled on poddisruptionbudgets.policy \"web\": the object has been modified; please apply your changes to the latest version and try again";
    const UID_CONFLICT: &str = "Operation cannot be fulfilled on pods \"web-1\": Precondition failed: UID in precondition: 6b1c, UID in object meta: 9f2e";
    const RV_CONFLICT: &str = "Operation cannot be fulfilled on pods \"web-1\": Precondition failed: ResourceVersion in precondition: 41, ResourceVersion in object meta: 42";
    const APF: &str = "Too many requests, please try again later.";

    #[test]
    fn every_eviction_answer_is_classified() {
        let blocked = |pdb: &str, message: &str, after: Option<u64>| Answer::Blocked {
            pdb: Some(pdb.into()),
            message: message.into(),
            retry_after: after.map(Duration::from_secs),
        };
        let retry = |cause, pdb: Option<&str>, message: &str| Answer::Retry {
            cause,
            pdb: pdb.map(str::to_owned),
            message: message.into(),
            retry_after: None,
        };
        let needs = "The disruption budget web needs 9 healthy pods and has 9 currently";
        let processing = "The disruption budget web is still being processed by the server.";
        let mut not_observed = status(
            429,
            "Cannot evict pod as it would violate the pod's disruption budget.",
            "",
            "",
            &[("DisruptionBudget", processing)],
        );
        not_observed.details.as_mut().unwrap().retry_after_seconds = 10;
        let violated =
            "poddisruptionbudget.policy \"web\" is forbidden: pdb disruptions allowed is negative";
        let cases: Vec<(&str, Option<Status>, Answer)> = vec![
            ("201 evicted", None, Answer::Evicted),
            (
                "404 gone",
                Some(status(
                    404,
                    "pods \"web-1\" not found",
                    "pods",
                    "web-1",
                    &[],
                )),
                Answer::Gone,
            ),
            (
                "409 UID precondition: replaced",
                Some(status(409, UID_CONFLICT, "pods", "web-1", &[])),
                Answer::Gone,
            ),
            (
                "409 budget status conflict",
                Some(status(
                    409,
                    BUDGET_CONFLICT,
                    "poddisruptionbudgets",
                    "web",
                    &[],
                )),
                retry(RetryCause::BudgetConflict, Some("web"), BUDGET_CONFLICT),
            ),
            (
                "409 budget conflict without details",
                Some(status(409, BUDGET_CONFLICT, "", "", &[])),
                retry(RetryCause::BudgetConflict, Some("web"), BUDGET_CONFLICT),
            ),
            (
                "409 pod changed (resourceVersion precondition)",
                Some(status(409, RV_CONFLICT, "pods", "web-1", &[])),
                retry(RetryCause::PodConflict, None, RV_CONFLICT),
            ),
            (
                "429 DisruptionBudget",
                Some(status(
                    429,
                    "Cannot evict pod as it would violate the pod's disruption budget.",
                    "",
                    "",
                    &[("DisruptionBudget", needs)],
                )),
                blocked("web", needs, None),
            ),
            (
                "429 budget not yet observed",
                Some(not_observed),
                blocked("web", processing, Some(10)),
            ),
            (
                "429 API priority and fairness (plain-text body)",
                Some(status(429, APF, "", "", &[])),
                retry(RetryCause::Throttled, None, APF),
            ),
            (
                "403 budget violated",
                Some(status(403, violated, "poddisruptionbudget", "web", &[])),
                blocked("web", violated, None),
            ),
            (
                "403 RBAC",
                Some(status(
                    403,
                    "pods \"web-1\" is forbidden: User \"x\" cannot create resource \"pods/eviction\"",
                    "pods",
                    "web-1",
                    &[],
                )),
                Answer::Fatal,
            ),
            (
                "500 several budgets",
                Some(status(
                    500,
                    "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
                    "",
                    "",
                    &[],
                )),
                Answer::Fatal,
            ),
            (
                "500 server error",
                Some(status(500, "etcdserver: request timed out", "", "", &[])),
                retry(
                    RetryCause::ServerError,
                    None,
                    "etcdserver: request timed out",
                ),
            ),
            (
                "504 budget conflicts (older apiservers)",
                Some(status(
                    504,
                    "couldn't update PodDisruptionBudget \"web\" due to conflicts",
                    "",
                    "",
                    &[],
                )),
                retry(
                    RetryCause::BudgetConflict,
                    Some("web"),
                    "couldn't update PodDisruptionBudget \"web\" due to conflicts",
                ),
            ),
            (
                "400 bad request",
                Some(status(400, "name in URL does not match", "", "", &[])),
                Answer::Fatal,
            ),
        ];
        for (what, answer, expected) in cases {
            assert_eq!(classify(answer.as_ref()), expected, "{what}");
        }
    }

    #[test]
    fn retry_delays_follow_the_cause() {
        let retry = |cause, after: Option<u64>| Answer::Retry {
            cause,
            pdb: None,
            message: String::new(),
            retry_after: after.map(Duration::from_secs),
        };
        let blocked = |after: Option<u64>| Answer::Blocked {
            pdb: None,
            message: String::new(),
            retry_after: after.map(Duration::from_secs),
        };
        let s = Duration::from_secs;
        let cases = [
            (blocked(None), 1, s(5)),
            (blocked(None), 9, s(5)),
            (blocked(Some(10)), 1, s(10)),
            (blocked(Some(600)), 1, s(30)),
            (retry(RetryCause::BudgetConflict, None), 7, s(1)),
            (retry(RetryCause::PodConflict, None), 1, s(1)),
            (retry(RetryCause::Throttled, None), 1, s(1)),
            (retry(RetryCause::Throttled, None), 2, s(2)),
            (retry(RetryCause::Throttled, None), 5, s(16)),
            (retry(RetryCause::Throttled, None), 50, s(16)),
            (retry(RetryCause::Throttled, Some(3)), 50, s(3)),
            (retry(RetryCause::ServerError, None), 3, s(4)),
        ];
        for (answer, attempt, expected) in cases {
            assert_eq!(
                retry_delay(&answer, attempt),
                expected,
                "{answer:?} attempt {attempt}"
            );
        }
    }

    #[test]
    fn pdb_name_is_read_from_the_eviction_message() {
        assert_eq!(
            pdb_name_from("The disruption budget web needs 3 healthy pods and has 3 currently")
                .as_deref(),
            Some("web")
        );
        assert_eq!(
            pdb_name_from("Cannot evict pod as it would violate the pod's disruption budget."),
            None
        );
    }
}
