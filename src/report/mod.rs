//! Consumers of the engine's [`RunEvent`](crate::vocab::RunEvent)s: live terminal progress, JSON lines, per-node log
//! files, metrics; and the run report, rebuilt from the journal afterwards ([`run_report`]).
//! [`dispatch`] feeds every event to every consumer until the engine's sink closes.

pub mod json;
pub mod metrics;
pub mod node_log;
pub mod run_report;
pub mod terminal;

use crate::vocab::Stamped;
use tokio::sync::mpsc;

/// Something that turns events into output.
pub trait Consumer: Send {
    fn handle(&mut self, event: &Stamped);
    /// Called once after the last event.
    fn finish(&mut self) {}
}

/// Runs until every sender is dropped; returns the consumers' `finish` having been called.
pub async fn dispatch(
    mut rx: mpsc::UnboundedReceiver<Stamped>,
    mut consumers: Vec<Box<dyn Consumer>>,
) {
    while let Some(event) = rx.recv().await {
        for c in consumers.iter_mut() {
            c.handle(&event);
        }
    }
    for c in consumers.iter_mut() {
        c.finish();
    }
}

/// Milliseconds as a short human duration ("1m 5s", "800ms").
pub fn short_duration(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = ms / 1000;
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{:.1}s", ms as f64 / 1000.0),
        (0, _) => format!("{m}m {s}s"),
        _ => format!("{h}h {m}m"),
    }
}
