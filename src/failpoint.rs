//! Failpoints for crash tests: `ROLLGATE_FAILPOINT=pause-after:STEP` makes the runner stop
//! dead right after the first node's STEP finished and was journaled, so a test can SIGKILL it
//! at exactly that step boundary (the way etcd's gofail failpoints are used). Unset in normal
//! runs; a malformed value is ignored with a warning.

use crate::engine::Step;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

pub const ENV: &str = "ROLLGATE_FAILPOINT";

fn pause_after() -> Option<Step> {
    static PARSED: OnceLock<Option<Step>> = OnceLock::new();
    *PARSED.get_or_init(|| {
        let value = std::env::var(ENV).ok()?;
        let step = value
            .strip_prefix("pause-after:")
            .and_then(|s| Step::ALL.into_iter().find(|x| x.name() == s));
        if step.is_none() {
            eprintln!("warning: ignoring {ENV}={value:?} (expected pause-after:STEP)");
        }
        step
    })
}

/// Called after `step` finished on a node: with the failpoint armed for that step, the first
/// node to get here never returns (the test kills the process).
pub async fn after_step(step: Step) {
    static FIRED: AtomicBool = AtomicBool::new(false);
    if pause_after() == Some(step) && !FIRED.swap(true, Ordering::SeqCst) {
        eprintln!("{ENV}: paused after {step}; waiting to be killed");
        std::future::pending::<()>().await;
    }
}
