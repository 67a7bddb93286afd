//! The permissions rollgate needs, in one table ([`ROLES`]): `rollgate rbac` prints them as
//! Kubernetes RBAC (`deploy/rbac.yaml` is that output), the cluster tests apply that output and
//! run rollgate as a ServiceAccount bound to it, and `run`, `resume`, `plan`, `preflight` and
//! `monitor` check each permission they need with a SelfSubjectAccessReview before they change
//! anything ([`check`]).
//!
//! - `render`: the table as YAML for a namespace and a name;
//! - `check`: what a command needs ([`needs`]), asked of the apiserver.

mod check;
mod render;

pub use check::{Need, Use, check, missing, needs};
pub use render::{Options, render};

/// The name the shipped RBAC uses unless `rollgate rbac --name` says otherwise: the
/// ServiceAccount, and the prefix of each role (`rollgate-runner`...).
pub const DEFAULT_NAME: &str = "rollgate";

/// Where a role applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// A ClusterRole bound cluster-wide (nodes, and pods in every namespace).
    Cluster,
    /// A Role in the state namespace (`state.namespace`).
    State,
    /// A ClusterRole bound by a RoleBinding in each namespace a job probe runs in.
    ProbeNamespace,
}

/// One RBAC rule and why rollgate needs it.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    pub group: &'static str,
    /// A resource, or `resource/subresource`.
    pub resources: &'static [&'static str],
    pub verbs: &'static [&'static str],
    pub why: &'static str,
}

/// A shipped role: its name is `NAME-suffix`.
#[derive(Debug, Clone, Copy)]
pub struct RoleDef {
    pub suffix: &'static str,
    pub scope: Scope,
    pub purpose: &'static str,
    pub rules: &'static [Rule],
}

impl RoleDef {
    /// `Role` or `ClusterRole`, as RBAC calls it.
    pub fn kind(&self) -> &'static str {
        match self.scope {
            Scope::State => "Role",
            Scope::Cluster | Scope::ProbeNamespace => "ClusterRole",
        }
    }

    pub fn name(&self, name: &str) -> String {
        format!("{name}-{}", self.suffix)
    }
}

const NODES_READ: Rule = Rule {
    group: "",
    resources: &["nodes"],
    verbs: &["get", "list", "watch"],
    why: "the plan (selectors, versions, addresses), pre-flight, the health monitor",
};
const PODS_READ: Rule = Rule {
    group: "",
    resources: &["pods"],
    verbs: &["get", "list", "watch"],
    why: "the pods on each node (drain, pre-flight), evicted pods going away, the health monitor",
};
const BUDGETS_READ: Rule = Rule {
    group: "policy",
    resources: &["poddisruptionbudgets"],
    verbs: &["list", "watch"],
    why: "pre-flight's drain blockers; a refused eviction waits for its budget to allow one",
};

/// The run: `run` and `resume`.
pub const RUNNER: RoleDef = RoleDef {
    suffix: "runner",
    scope: Scope::Cluster,
    purpose: "run and resume: cordon, drain by eviction, wait Ready, uncordon, settle",
    rules: &[
        Rule {
            group: "",
            resources: &["nodes"],
            verbs: &["get", "list", "watch", "patch"],
            why: "cordon and uncordon, rollgate.dev/ annotations (who cordoned, step, reason); waiting for Ready",
        },
        PODS_READ,
        Rule {
            group: "",
            resources: &["pods/eviction"],
            verbs: &["create"],
            why: "drain through the Eviction API (PodDisruptionBudgets are honoured)",
        },
        BUDGETS_READ,
        Rule {
            group: "apps",
            resources: &["replicasets", "statefulsets"],
            verbs: &["get", "list", "watch"],
            why: "settle: the evicted pods' controllers have their replicas Ready again",
        },
    ],
};

/// The run's own objects in the state namespace.
pub const STATE: RoleDef = RoleDef {
    suffix: "state",
    scope: Scope::State,
    purpose: "run and resume: the cluster lock and the run's copy (status, journal, playbook)",
    rules: &[
        Rule {
            group: "coordination.k8s.io",
            resources: &["leases"],
            verbs: &["get", "list", "watch", "create", "update"],
            why: "the cluster lock rollgate-lock-NAME: taken, renewed, watched, released",
        },
        Rule {
            group: "",
            resources: &["configmaps"],
            verbs: &["get", "list", "watch", "create", "patch", "delete"],
            why: "rollgate-run-RUN_ID: the run's copy, kept up to date, watched for pause/resume/abort requests (answered there); the oldest beyond state.keep-runs deleted",
        },
    ],
};

/// Read-only: `plan`, `preflight`, `monitor` and `run --dry-run`.
pub const READER: RoleDef = RoleDef {
    suffix: "reader",
    scope: Scope::Cluster,
    purpose: "plan, preflight, monitor, run --dry-run: read nodes, pods and budgets",
    rules: &[NODES_READ, PODS_READ, BUDGETS_READ],
};

/// Read-only: `runs`, `status`, `report` and `resume` of a run from another machine.
pub const STATE_READER: RoleDef = RoleDef {
    suffix: "state-reader",
    scope: Scope::State,
    purpose: "runs, status, report: read the runs' copies",
    rules: &[Rule {
        group: "",
        resources: &["configmaps"],
        verbs: &["get", "list"],
        why: "rollgate-run-RUN_ID: runs listed, a run's status, journal and playbook",
    }],
};

/// `pause`, `resume` (of a live run) and `abort` from anywhere, without the right to drain.
pub const CONTROLLER: RoleDef = RoleDef {
    suffix: "control",
    scope: Scope::State,
    purpose: "pause, resume and abort live runs (no right to touch nodes or pods)",
    rules: &[
        Rule {
            group: "",
            resources: &["configmaps"],
            verbs: &["get", "list", "watch", "patch"],
            why: "rollgate-run-RUN_ID: the request written on the run's object, its answer awaited by watch",
        },
        Rule {
            group: "coordination.k8s.io",
            resources: &["leases"],
            verbs: &["get"],
            why: "whether the run is live (it holds its cluster lock)",
        },
    ],
};

/// Optional: `[drain] on-pdb-timeout = "disable-eviction"`.
pub const DISABLE_EVICTION: RoleDef = RoleDef {
    suffix: "disable-eviction",
    scope: Scope::Cluster,
    purpose: "only for [drain] on-pdb-timeout = \"disable-eviction\": delete the pods a budget blocked past the drain timeout",
    rules: &[Rule {
        group: "",
        resources: &["pods"],
        verbs: &["delete"],
        why: "deleting a pod bypasses its PodDisruptionBudget: grant it only to runs that ask for it",
    }],
};

/// Optional: probes of `kind = "job"`, bound in each namespace such probes run in.
pub const JOB_PROBES: RoleDef = RoleDef {
    suffix: "job-probes",
    scope: Scope::ProbeNamespace,
    purpose: "probes of kind = \"job\": bound in each probe namespace only",
    rules: &[Rule {
        group: "batch",
        resources: &["jobs"],
        verbs: &["create", "get", "list", "watch", "delete"],
        why: "the probe Job: created, watched until it finishes, deleted with its pods",
    }],
};

/// Every shipped role, in the order `rollgate rbac` prints them.
pub const ROLES: [&RoleDef; 7] = [
    &RUNNER,
    &STATE,
    &READER,
    &STATE_READER,
    &CONTROLLER,
    &DISABLE_EVICTION,
    &JOB_PROBES,
];
