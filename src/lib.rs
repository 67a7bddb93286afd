//! rollgate: upgrade the nodes of a Kubernetes cluster one by one, safely, with health gating.
//!
//! The flow is one way: playbook + config → [`plan`] → [`driver`] (one run, lock to
//! teardown) → [`engine`] → events ([`vocab::RunEvent`]) → [`journal`] / [`report`] /
//! [`notify`] / metrics; [`health`] decides from the [`monitor`] and the probes. The module map,
//! its layers (checked by `tests/architecture.rs`) and where a change goes are in
//! `ARCHITECTURE.md` at the repository's root.

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
pub mod rbac;
pub mod redact;
pub mod remote;
pub mod report;
pub mod selector;
pub mod vocab;
pub mod window;

/// Prefix of the annotations rollgate writes on nodes.
pub const ANNOTATION_PREFIX: &str = "rollgate.dev";
