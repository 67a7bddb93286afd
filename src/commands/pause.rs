//! `rollgate pause` and `rollgate abort`: ask a live run, from any machine with cluster access,
//! to start no new node, or to stop (see [`crate::driver::control`]). `rollgate resume` of a
//! live paused run goes through [`ask_live_run`] too.

use super::Failure;
use super::plan::connect_failure;
use super::status::resolve_run;
use crate::cluster;
use crate::config::Config;
use crate::driver::control::{self, Action, ControlError, Request};
use crate::driver::operator::user_at_host;
use crate::driver::state_dir::RunsDir;
use crate::exit;

/// `rollgate pause [RUN]`: the live run starts no new node (nodes in flight finish) until
/// `rollgate resume`. Recorded as a pause decision by `operator`, naming who and why.
pub async fn pause(config: Config, run: Option<&str>, reason: Option<&str>) -> Result<u8, Failure> {
    let run_id = resolve_run(&RunsDir::new(&config.state_dir), run)?;
    ask_live_run(&config, &run_id, Action::Pause, reason).await
}

/// `rollgate abort [RUN]`: the live run starts no new node and its nodes in flight stop at
/// their next safe point (they stay cordoned, with the reason); it exits 5. Recorded as an
/// abort decision by `operator`, naming who and why.
pub async fn abort(config: Config, run: Option<&str>, reason: Option<&str>) -> Result<u8, Failure> {
    let run_id = resolve_run(&RunsDir::new(&config.state_dir), run)?;
    ask_live_run(&config, &run_id, Action::Abort, reason).await
}

/// Writes the request on the run's object in the cluster and reports the run's answer.
pub async fn ask_live_run(
    config: &Config,
    run_id: &str,
    action: Action,
    reason: Option<&str>,
) -> Result<u8, Failure> {
    if RunsDir::new(&config.state_dir).run(run_id).process_gone() {
        return Err(Failure::new(
            exit::BAD_INPUT,
            format!(
                "error: run {run_id} is not running (its process on this machine is gone)\n  hint: only a live run can be {}; `rollgate status {run_id}` shows where it stopped, `rollgate resume {run_id}` continues it",
                action.past()
            ),
        ));
    }
    let clients = cluster::connect(config).await.map_err(connect_failure)?;
    let request = Request::new(action, user_at_host(), reason.map(str::to_owned));
    match control::send(&clients.api, &config.state_namespace, run_id, &request).await {
        Ok(answer) if answer.done => {
            eprintln!("run {run_id} {}", answer.said);
            Ok(exit::OK)
        }
        // Already so (paused, not paused, aborting): nothing to do, said plainly.
        Ok(answer) => {
            eprintln!("run {run_id}: {}", answer.said);
            Ok(exit::OK)
        }
        Err(e @ (ControlError::NoSuchRun(..) | ControlError::NotLive(..))) => Err(Failure::new(
            exit::BAD_INPUT,
            format!(
                "error: {e}\n  hint: only a live run can be {}; `rollgate runs` lists runs, `rollgate status {run_id}` shows where it stopped",
                action.past()
            ),
        )),
        Err(e @ ControlError::Api(_)) => Err(connect_failure(e)),
        Err(e @ ControlError::NoAnswer(..)) => Err(Failure::new(
            exit::INTERNAL,
            format!(
                "error: {e}\n  hint: the request stays on the run's object; `rollgate status {run_id}` shows whether it took it"
            ),
        )),
    }
}
