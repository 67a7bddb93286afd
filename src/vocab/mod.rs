//! The run vocabulary: the words every other part of rollgate speaks (steps, events, outcomes,
//! stop reasons, gate decisions, problems) and the event sink. It sits at the bottom: it imports
//! none of the engine, health, monitor or journal, so they can all depend on it.

mod control;
mod event;
mod health;
pub mod node_marks;
mod preflight;
mod sink;
mod step;

pub use control::ControlAction;
pub use event::{FinishByEnd, Outcome, RetryCause, RunEvent, Stamped, StopReason, Stream};
pub use health::{
    Decision, GateDecision, ProbeOutcome, ProbeWhen, Problem, ProblemKind, when_name,
};
pub use preflight::{CheckVerdict, PreflightFinding, PreflightSummary, Verdict};
pub use sink::{EventSink, JournalError, Recorder};
pub use step::{ResumeFrom, Step, StepTraits};
