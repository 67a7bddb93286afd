//! Pause and resume from another shell on this machine: `rollgate pause` and `rollgate resume`
//! leave requests in the run's directory ([`super::state_dir::RunDir`]); the live run takes
//! them, marks itself paused there, and (at a terminal) also offers to resume at a prompt.

use super::operator::ask;
use super::state_dir::RunDir;
use crate::health::{Guard, HealthState};
use std::sync::Arc;
use std::time::Duration;

/// How often the run looks for requests.
const POLL: Duration = Duration::from_millis(300);

/// Watches for pause and resume requests until aborted. The returned task must be aborted
/// when the run ends (it keeps the guard, and so the event sink, alive).
pub fn watch_requests(
    guard: Arc<Guard>,
    run_dir: RunDir,
    interactive: bool,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut rx = guard.subscribe();
        loop {
            let paused = matches!(&*rx.borrow_and_update(), HealthState::Paused(_));
            if paused {
                run_dir.set_paused(true);
                if interactive {
                    // Weak: a prompt still waiting when the run ends must not keep the run alive.
                    let g = Arc::downgrade(&guard);
                    tokio::task::spawn_blocking(move || {
                        if ask("run paused; resume now?")
                            && let Some(g) = g.upgrade()
                        {
                            g.resume();
                        }
                    });
                }
                while matches!(&*rx.borrow(), HealthState::Paused(_)) {
                    if run_dir.take_resume_request() {
                        guard.resume();
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(POLL) => {}
                        changed = rx.changed() => if changed.is_err() { return },
                    }
                }
                run_dir.set_paused(false);
            } else if let Some(reason) = run_dir.take_pause_request() {
                guard.pause_by_operator(&reason);
            } else {
                tokio::select! {
                    _ = tokio::time::sleep(POLL) => {}
                    changed = rx.changed() => if changed.is_err() { return },
                }
            }
        }
    })
}

/// How long `rollgate pause` and `rollgate resume` wait for the live run to take the request.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// Waits until `done` holds, checking every 200 ms, for at most [`ANSWER_WITHIN`].
pub async fn wait_for_answer(done: impl Fn() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + ANSWER_WITHIN;
    while tokio::time::Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    done()
}
