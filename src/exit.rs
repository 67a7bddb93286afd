//! Documented exit codes (also listed in the README and in `rollgate --help`).

/// Everything asked for was done.
pub const OK: u8 = 0;
/// An unexpected internal error.
pub const INTERNAL: u8 = 1;
/// The run journal could not be written and synced (a full disk, a read-only state directory):
/// the run stopped before the step it could not record; `rollgate resume` continues once the
/// journal can be written. The same code as an internal error.
pub const JOURNAL_UNWRITABLE: u8 = 1;
/// Bad input: a playbook, config file or command line that does not validate.
pub const BAD_INPUT: u8 = 2;
/// The cluster could not be reached or refused a read before anything changed, or the plan
/// does not fit the cluster (a listed node is missing, a node is selected twice).
pub const CLUSTER: u8 = 3;
/// The rollout stopped because nodes failed beyond the failure budget. Failed nodes stay
/// cordoned with the reason in their `rollgate.dev/reason` annotation.
pub const NODE_FAILED: u8 = 4;
/// The rollout was aborted by a health gate.
pub const GATE_ABORT: u8 = 5;
/// The operator stopped the run (Ctrl-C, SIGTERM, or declined the confirmation).
pub const INTERRUPTED: u8 = 6;
/// Another rollgate run holds the cluster lock.
pub const LOCKED: u8 = 7;
/// The maintenance window closed (with `outside = "exit"`) or the run's deadline passed: no
/// new node was started, the nodes in flight finished; `rollgate resume` continues.
pub const RESUMABLE: u8 = 8;
/// The pre-flight checks found a blocker (in a check not named by `--ignore-preflight`):
/// `rollgate preflight` says so; `run` and `resume` refuse to start (nothing was changed; the
/// refusal is in the run's journal and its notifications).
pub const PREFLIGHT_FAILED: u8 = 9;
/// The run lost the cluster lock while it ran (it could not renew it within its renew
/// deadline, or another run took it): no new node was started, nodes in flight stopped at
/// their next safe point and stay cordoned. `rollgate resume` continues once the lock is free.
pub const LOCK_LOST: u8 = 10;
/// The cluster does not grant rollgate a permission the command needs (RBAC; checked with
/// SelfSubjectAccessReviews at its start): the message names each one (verb, resource,
/// namespace) and the shipped role granting it. Nothing was changed.
pub const PERMISSION: u8 = 11;

/// A command or run that could not do its job: the message for stderr and the exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl Failure {
    /// The cluster could not be reached or refused a read (exit 3), with where to look.
    pub fn cluster(e: impl std::fmt::Display) -> Self {
        Failure::new(
            CLUSTER,
            format!(
                "error: {e}\n  hint: check --kubeconfig / --context, or `kubectl get nodes` with the same settings"
            ),
        )
    }
}

impl From<crate::diagnostics::SourceErrors> for Failure {
    fn from(e: crate::diagnostics::SourceErrors) -> Self {
        Failure::new(BAD_INPUT, e.to_string())
    }
}

/// The exit code of a run that ended with `outcome`.
pub fn for_outcome(outcome: crate::vocab::Outcome) -> u8 {
    use crate::vocab::{Outcome, StopReason};
    match outcome {
        Outcome::Succeeded | Outcome::SucceededWithFailures => OK,
        Outcome::Stopped(StopReason::NodeFailures) => NODE_FAILED,
        Outcome::Stopped(StopReason::GateAbort | StopReason::OperatorAbort) => GATE_ABORT,
        Outcome::Stopped(StopReason::OperatorGraceful | StopReason::OperatorImmediate) => {
            INTERRUPTED
        }
        Outcome::Stopped(StopReason::OutsideWindow | StopReason::Deadline) => RESUMABLE,
        Outcome::Stopped(StopReason::JournalUnwritable) => JOURNAL_UNWRITABLE,
        Outcome::Stopped(StopReason::LockLost) => LOCK_LOST,
    }
}

/// The exit codes as `--help` lists them (a macro so clap's `after_help` can `concat!` it).
#[macro_export]
macro_rules! exit_codes_help {
    () => {
        "Exit codes:
  0  success
  1  internal error, or the run journal cannot be written (the run stopped before the step it could not record)
  2  bad input (playbook, config or command line)
  3  cluster unreachable, or the plan does not fit the cluster
  4  rollout stopped: nodes failed beyond the failure budget (failed nodes stay cordoned)
  5  rollout aborted by a health gate
  6  interrupted by the operator (Ctrl-C, SIGTERM, or declined at the prompt)
  7  another run holds the cluster lock
  8  stopped at the end of the maintenance window or at the deadline (`rollgate resume` continues)
  9  pre-flight found a blocker (in a check not named by --ignore-preflight): `rollgate preflight`, or `run`/`resume` refused to start and changed nothing
 10  the run lost the cluster lock: nodes in flight stopped at their next safe point (`rollgate resume` continues)
 11  a permission the command needs is missing (RBAC): named with the shipped role to apply; nothing was changed"
    };
}

/// The exit codes, one line each (`rollgate --help`, `rollgate run --help`, the README).
pub const TABLE: &str = exit_codes_help!();
