//! The run journal: `STATE_DIR/runs/RUN_ID/journal.jsonl`, append-only, one JSON object per line,
//! each line one write, fsynced before the step it announces runs. The first line describes the
//! run (playbook, plan order); then every decision and step transition, written before it takes
//! effect (see [`crate::vocab::EventSink`]). A record that cannot be written and synced stops
//! the run: nothing is done that the journal does not record first.
//!
//! - [`writer`]: [`Header`] and [`Journal`], the writer (a [`crate::vocab::Recorder`]).
//! - [`records`]: [`Records`], the one reader of its text, into the typed events the writer
//!   wrote; a torn line (a crash, a full disk) is skipped wherever it is and its place kept.
//! - [`fold`]: [`RunHistory`], the one fold over those records, and the one model of a node's
//!   state ([`NodeHistory`]); [`status`] ([`RunStatus`], `rollgate status`), [`resume`]
//!   ([`resume_points`]) and the run report (`report::run_report`) are views of it.
//! - [`cluster_copy`]: the run's copy in the cluster, for other machines.

pub mod cluster_copy;
pub mod fold;
pub mod records;
pub mod resume;
pub mod status;
pub mod writer;

pub use crate::vocab::JournalError;
pub use cluster_copy::{
    ClusterCopy, ClusterRun, LOCK_LABEL, PLAYBOOK_COPY, configmap_name, list_cluster_copies,
    prune_cluster_copies, restore_from_cluster, status_from_cluster,
};
pub use fold::{
    Failure, NodeHistory, NodeState, RunEnd, RunHistory, RunState, Skip, SpanEnd, StepSpan, Wait,
    WaitCause, wire_name,
};
pub use records::{Records, skipped_text};
pub use resume::{NodeRecord, ResumePoints, reconcile_with_nodes, resume_points};
pub use status::{NodeStatus, RunStatus};
pub use writer::{Header, Journal};

pub const FILE: &str = "journal.jsonl";

#[cfg(test)]
mod tests;
