//! The run's health: a pure state machine ([`Health`]: signal and probe results, step
//! transitions, node failures and the operator's pause and resume in; gate decisions and state
//! changes out), the nodes in flight kept once ([`InFlight`]), when probes run decided in one
//! place ([`ProbeSchedule`]), and the async shell the engine, the monitor and the run share
//! ([`Guard`]: it records decisions as events, publishes the state, runs the probes due).
//!
//! The gates themselves (how results turn into a decision) are in [`crate::gate`].

mod guard;
mod in_flight;
mod schedule;
mod state;

pub use guard::{Guard, monitor_signals};
pub use in_flight::InFlight;
pub use schedule::{DEFAULT_INTERVAL, Moment, ProbeSchedule};
pub use state::{Health, HealthState, Input, OPERATOR, Output};
