//! The Kubernetes side of a node's upgrade, and the real
//! [`NodeSteps`](crate::engine::NodeSteps) implementations: [`KubeSteps`] (cordon with a record of who cordoned, drain, remote command, wait for Ready and
//! the target kubelet version, uncordon, settle) and [`DryRunSteps`] (reads only; reports each
//! write and command it would make).
//!
//! rollgate records its work on the Node as annotations under `rollgate.dev/`:
//! `cordoned-by` (run id), `precordoned` (the node was cordoned by someone else before: it
//! stays cordoned), `step` (current step), `reason` and `failed-step` (why a node failed: it
//! stays cordoned), `boot-id` (the boot ID when the command started), `last-run` (after
//! success). Its node patches carry the field manager [`FIELD_MANAGER`], so the node's
//! `managedFields` tell whose cordon `spec.unschedulable` is: rollgate uncordons a node only
//! when this run (or the run it resumes) set that cordon.
//!
//! Readiness around reboots: wait-ready wants the node Ready (and the target kubelet, and with
//! `[ready] reboot = true` a new boot ID) and staying so on one boot for `[ready] stable-for`;
//! uncordon never uncordons a NotReady node (it waits for it); a node that turns NotReady or
//! reboots during settle is waited for and settled again. Each wait is bounded by the ready
//! timeout and said on the node's events.
//!
//! - `connect`: the clients, connected as kubectl would;
//! - `node`: what a Node says (Ready, boot ID, kubelet, address, plan facts);
//! - `marks`: rollgate's annotations on a Node and whose cordon it carries;
//! - `kube_steps`: the real steps (with its readiness waits and settle);
//! - `dry_run`: the steps of `--dry-run`;
//! - `snapshot`: nodes, pods and budgets listed once for plan, preview and pre-flight;
//! - `outage`: a node's reads and writes ride out a short API outage (retry, bounded);
//! - `state_namespace`: the namespace of the lock and the run copies, made if missing.

mod connect;
mod dry_run;
mod kube_steps;
mod marks;
mod node;
pub mod outage;
mod snapshot;
pub mod state_namespace;

pub use connect::{Clients, ConnectError, connect};
pub use dry_run::DryRunSteps;
pub use kube_steps::{KubeSteps, replicas_to_wait_for};
pub use marks::{CordonOwner, cordon_owner, node_record, unschedulable_set_by};
pub use node::{boot_id, facts, is_ready, kubelet_version, list_nodes, ssh_address};
pub use snapshot::Snapshot;

use crate::config::Config;
use crate::playbook::Playbook;
use crate::vocab::EventSink;
use std::sync::Arc;

pub use crate::vocab::node_marks::*;

/// What both kinds of steps work with.
pub struct StepContext {
    pub clients: Clients,
    pub playbook: Arc<Playbook>,
    pub config: Arc<Config>,
    pub run_id: String,
    pub sink: EventSink,
}
