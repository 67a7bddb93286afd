//! Failpoints for crash tests: `ROLLGATE_FAILPOINT=pause-after:STEP` makes the runner stop
//! dead right after the first node's STEP finished and was journaled, so a test can SIGKILL it
//! at exactly that step boundary (the way etcd's gofail failpoints are used);
//! `ROLLGATE_FAILPOINT=panic-after:STEP` makes that node's task panic there instead (a stand-in
//! for a bug). Unset in normal runs; a malformed value is ignored with a warning.

use crate::vocab::Step;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

pub const ENV: &str = "ROLLGATE_FAILPOINT";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Pause,
    Panic,
}

fn armed() -> Option<(Action, Step)> {
    static PARSED: OnceLock<Option<(Action, Step)>> = OnceLock::new();
    *PARSED.get_or_init(|| {
        let value = std::env::var(ENV).ok()?;
        let parsed = value.split_once(':').and_then(|(action, step)| {
            let action = match action {
                "pause-after" => Action::Pause,
                "panic-after" => Action::Panic,
                _ => return None,
            };
            Some((action, Step::ALL.into_iter().find(|x| x.name() == step)?))
        });
        if parsed.is_none() {
            eprintln!(
                "warning: ignoring {ENV}={value:?} (expected pause-after:STEP or panic-after:STEP)"
            );
        }
        parsed
    })
}

/// Called after `step` finished on a node: with the failpoint armed for that step, the first
/// node to get here never returns (the test kills the process), or panics.
pub async fn after_step(step: Step) {
    static FIRED: AtomicBool = AtomicBool::new(false);
    let Some((action, at)) = armed() else { return };
    if at == step && !FIRED.swap(true, Ordering::SeqCst) {
        match action {
            Action::Pause => {
                eprintln!("{ENV}: paused after {step}; waiting to be killed");
                std::future::pending::<()>().await;
            }
            Action::Panic => panic!("{ENV}: panic after {step}"),
        }
    }
}
