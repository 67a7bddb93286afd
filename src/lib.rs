//! rollgate: upgrade the nodes of a Kubernetes cluster one by one, safely, with health gating.
//!
//! Architecture (data flows top to bottom):
//! - [`playbook`] and [`config`]: the two input files, parsed into validated domain types
//!   ([`diagnostics`] renders their errors with file, line, key and hint).
//! - [`plan`]: pure functions that resolve phases to ordered waves of nodes.
//! - [`drain`]: kubectl-drain semantics; the pod filter is pure, eviction talks to the API.
//! - [`cluster`]: the Kubernetes side of a node's steps (cordon, wait Ready, uncordon, settle).
//! - [`remote`]: the remote command over SSH (system ssh through the openssh crate).
//! - [`engine`]: walks the waves with bounded concurrency; generic over [`engine::NodeSteps`]
//!   so its logic is tested with fakes and run for real with [`cluster::KubeSteps`]. It never
//!   prints: it emits [`engine::RunEvent`]s.
//! - [`monitor`], [`probe`], [`gate`], [`health`]: the health monitor (pod and node states from
//!   watches, pings), user probes, gate decisions, and the shared run health the engine obeys.
//! - [`window`]: maintenance windows, the deadline and the clock: when nodes may start.
//! - [`lock`], [`journal`]: one runner per cluster (a Lease); the fsynced run journal, its
//!   cluster copy, and where a stopped or crashed run resumes.
//! - [`report`]: consumers of those events (terminal progress, JSON lines, per-node logs,
//!   metrics) and the run report rebuilt from the journal.
//! - [`notify`]: notifications (what to say at each event, bounded delivery, channels: Slack
//!   and a JSON webhook).
//! - [`logging`], [`failpoint`]: JSON diagnostic lines with the run id; the crash-test hook.
//! - [`commands`]: the CLI subcommands gluing it together; [`exit`] holds the exit codes.

pub mod cli;
pub mod cluster;
pub mod commands;
pub mod config;
pub mod diagnostics;
pub mod drain;
pub mod driver;
pub mod engine;
pub mod exit;
pub mod failpoint;
pub mod gate;
pub mod health;
pub mod journal;
pub mod lock;
pub mod logging;
pub mod monitor;
pub mod notify;
pub mod plan;
pub mod playbook;
pub mod preflight;
pub mod probe;
pub mod remote;
pub mod report;
pub mod selector;
pub mod vocab;
pub mod window;

/// Prefix of the annotations rollgate writes on nodes.
pub const ANNOTATION_PREFIX: &str = "rollgate.dev";
