//! `rollgate pause`: asks the live run on this machine to start no new node.

use super::Failure;
use super::status::resolve_run;
use crate::config::Config;
use crate::driver::control::wait_for_answer;
use crate::driver::operator::user_at_host;
use crate::driver::state_dir::RunsDir;
use crate::exit;

/// `rollgate pause [RUN]`: the live run starts no new node (nodes in flight finish) until
/// `rollgate resume`. Recorded as a pause decision by `operator`, with the reason.
pub async fn pause(config: Config, run: Option<&str>, reason: Option<&str>) -> Result<u8, Failure> {
    let runs = RunsDir::new(&config.state_dir);
    let run_id = resolve_run(&runs, run)?;
    let dir = runs.run(&run_id);
    if !dir.process_alive() {
        return Err(Failure::new(
            exit::BAD_INPUT,
            format!(
                "error: run {run_id} is not running here\n  hint: only a live run can be paused; `rollgate status {run_id}` shows where it stopped"
            ),
        ));
    }
    if dir.is_paused() {
        eprintln!("run {run_id} is already paused; `rollgate resume` continues it");
        return Ok(exit::OK);
    }
    let reason = reason
        .map(str::to_owned)
        .unwrap_or_else(|| format!("paused by {}", user_at_host()));
    dir.request_pause(&reason).map_err(|e| {
        Failure::new(
            exit::INTERNAL,
            format!("error: cannot write {}: {e}", dir.path().display()),
        )
    })?;
    if wait_for_answer(|| dir.is_paused()).await {
        eprintln!(
            "run {run_id} paused: no new node starts, nodes in flight finish; `rollgate resume` continues"
        );
        return Ok(exit::OK);
    }
    Err(Failure::new(
        exit::INTERNAL,
        format!(
            "error: run {run_id} did not take the pause request within 10 s (is it a dry run, or finishing?)"
        ),
    ))
}
