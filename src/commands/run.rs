//! `rollgate run`: flags to a [`RunRequest`], the plan and the pre-flight checks shown and
//! confirmed, the run driven by [`crate::driver`], its end printed. `rollgate resume`
//! ([`super::resume`]) ends here too.

use super::plan::{connect_failure, render_table, survey};
use super::{Failure, load_playbook_with};
use crate::cli::{PreflightArgs, RunArgs};
use crate::config::Config;
use crate::driver::operator::{Interaction, ask};
use crate::driver::{self, LockRequest, RunEnd, RunOptions, RunRequest};
use crate::exit;
use crate::journal::ResumePoints;
use crate::vocab::{Outcome, RunEvent, Stamped, Step, StopReason};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub async fn run(config: Config, args: &RunArgs) -> Result<u8, Failure> {
    let config = Arc::new(config);
    let options = RunOptions {
        dry_run: args.dry_run,
        confirm_each_node: args.step,
        show_output: args.show_output,
        lock: LockRequest {
            name: args.lock_name.clone(),
            duration: args.lock_duration,
            force: args.force_unlock,
        },
        metrics_listen: args.metrics_listen.clone(),
        pushgateway: args.pushgateway.clone(),
        deadline: args.schedule.deadline.clone(),
        ignore_window: args.schedule.ignore_window,
    };
    let ask_first = !args.yes && !args.dry_run && !args.step;
    plan_and_run(
        config,
        args.playbook.clone(),
        options,
        None,
        ask_first,
        &args.preflight,
    )
    .await
}

/// What a resume brings to [`plan_and_run`].
pub(super) struct Resuming {
    /// Where relative probe paths resolve: the original playbook's file.
    pub probe_base: PathBuf,
    /// Where each node picks up.
    pub points: ResumePoints,
    /// The resume's connection to the cluster (made once for all it asks).
    pub clients: crate::cluster::Clients,
}

/// What `run` and `resume` share: the plan against the live cluster (for a resume, without the
/// nodes done) and the pre-flight checks over its nodes, shown and (at a terminal, when
/// `ask_first`, unless a blocker refuses the run) confirmed, the run, its end.
pub(super) async fn plan_and_run(
    config: Arc<Config>,
    playbook_file: PathBuf,
    options: RunOptions,
    resuming: Option<Resuming>,
    ask_first: bool,
    checks: &PreflightArgs,
) -> Result<u8, Failure> {
    let (probe_base, resume, connected) = match resuming {
        Some(r) => (Some(r.probe_base), Some(r.points), Some(r.clients)),
        None => (None, None, None),
    };
    let mut playbook = load_playbook_with(&playbook_file, &config)?;
    // env-from-runner: a variable that is not set stops here, before anything changes.
    crate::playbook::resolve_runner_env(&mut playbook, &playbook_file)?;
    if resume.is_some() {
        // The nodes a resume picks up are finished whatever version they report now (their
        // command may have upgraded them): `skip-upgraded` applies when a run starts, and the
        // nodes it left out then stay out (a resume keeps to the run's planned nodes).
        playbook.skip_upgraded = false;
    }
    let playbook = Arc::new(playbook);
    // Secrets are read before anything changes: a missing one stops here (exit 2).
    let notify = crate::notify::resolve(&config)
        .map_err(|e| Failure::new(exit::BAD_INPUT, e.to_string()))?;
    let interaction = Interaction::detect(config.log_format);
    // (A resume has connected already.)
    let clients = match connected {
        Some(clients) => clients,
        None => crate::cluster::connect(&config)
            .await
            .map_err(connect_failure)?,
    };
    // Every permission the run needs, asked before anything changes (exit 11 if one is missing).
    let (what, command) = match (options.dry_run, resume.is_some()) {
        (true, _) => (crate::rbac::Use::Read, "run --dry-run"),
        (false, false) => (crate::rbac::Use::Run, "run"),
        (false, true) => (crate::rbac::Use::Run, "resume"),
    };
    crate::rbac::check(&clients.api, what, &config, Some(&playbook), command).await?;
    let (snapshot, mut report) = survey(&clients, &playbook).await?;
    if let Some(r) = &resume {
        // Finished and skipped nodes are left out, and nodes the run did not plan at its
        // start; the rest keep the plan's order.
        report.keep_only(
            |n| {
                !r.done.contains(n)
                    && !r.skipped.contains(n)
                    && (r.planned.is_empty() || r.planned.contains(n))
            },
            &playbook,
        );
    }
    if !interaction.json {
        eprint!("{}", render_table(&report));
    }
    if report.plan.node_count() == 0 {
        return Err(Failure::new(
            exit::CLUSTER,
            "error: the plan selects no node: nothing to do\n  hint: check the phases' selectors with `rollgate plan`",
        ));
    }
    // Pre-flight over the nodes the run will touch, from the listing the plan came from. A
    // resumed run's nodes past their command are not reached over SSH; a node this run cordoned
    // is not a blocker for being cordoned (no check counts a cordon against a node).
    let deadline = driver::run_deadline(
        options.deadline.as_deref(),
        resume.as_ref(),
        &playbook,
        crate::window::Clock::from_env().now(),
    )?;
    let preflight_options = crate::preflight::Options {
        no_ssh: checks.no_ssh_check,
        deadline,
        resumed_from: resume.as_ref().map(|r| r.from.clone()).unwrap_or_default(),
    };
    let found = crate::preflight::gather(
        &clients,
        &config,
        &playbook,
        &report.plan,
        &snapshot,
        &preflight_options,
    )
    .await;
    if !interaction.json {
        eprint!("\n{}", found.render(&checks.ignore_preflight));
    }
    let preflight = found.summary(&checks.ignore_preflight);
    let refused = preflight.refusal().is_some();
    if resume.is_none()
        && !refused
        && interaction.interactive
        && ask_first
        && !ask(&format!("\nupgrade {} node(s)?", report.plan.node_count()))
    {
        eprintln!("not started: nothing was changed");
        return Ok(exit::INTERRUPTED);
    }
    let node_estimate = finish_by_end_estimate(&config, &playbook, &options);
    if let Some(e) = node_estimate
        && !interaction.json
    {
        eprintln!(
            "finish-by-end: a node needs {} (p95{}); none starts with less of the window left",
            humantime::format_duration(Duration::from_secs(e.p95.as_secs())),
            match e.from_runs {
                0 => ", default step times: no earlier run of this playbook".to_owned(),
                n => format!(" from {n} earlier run(s)"),
            }
        );
    }
    let request = RunRequest {
        config,
        playbook,
        probe_base: probe_base.unwrap_or_else(|| playbook_file.clone()),
        playbook_file,
        plan: report.plan,
        options,
        resume,
        interaction,
        notify,
        node_estimate,
        preflight: Some(preflight),
    };
    let end = driver::run(request, clients).await?;
    print_end(&end, interaction.json)
}

/// With `[window] finish-by-end` (and a window the run obeys), a node's expected p95 duration
/// from the pre-flight ETA's history, computed once for the run.
fn finish_by_end_estimate(
    config: &Config,
    playbook: &crate::playbook::Playbook,
    options: &RunOptions,
) -> Option<crate::window::NodeEstimate> {
    let applies = playbook.window.as_ref().is_some_and(|w| w.finish_by_end)
        && !options.ignore_window
        && !options.dry_run;
    applies.then(|| {
        crate::preflight::eta::node_estimate(
            &crate::driver::state_dir::RunsDir::new(&config.state_dir),
            playbook,
        )
    })
}

/// Prints how the run ended: nodes left cordoned and how to continue, where the logs and the
/// report are; a journal that could not be written is the run's error.
fn print_end(end: &RunEnd, json: bool) -> Result<u8, Failure> {
    let (summary, run_id) = (&end.summary, &end.run_id);
    if !summary.skipped.is_empty() {
        eprintln!(
            "nodes skipped (on-pdb-timeout = \"skip\"): uncordoned without their command, NOT upgraded; a new run includes them again:"
        );
        for (node, why) in &summary.skipped {
            eprintln!("  {node}: {why}");
        }
    }
    if !summary.failed.is_empty() || !summary.abandoned.is_empty() {
        eprintln!("nodes left cordoned:");
        for (node, step, reason) in &summary.failed {
            eprintln!("  {node}: failed at {step}: {reason}");
        }
        for (node, step) in &summary.abandoned {
            eprintln!(
                "  {node}: stopped during {}",
                step.map(|s| s.name()).unwrap_or("?")
            );
            if *step == Some(Step::Command) {
                let record = crate::remote::record_dir(run_id, node);
                eprintln!(
                    "    its command goes on running on the node: output in {record}/output, exit status in {record}/status (once it ends); `rollgate resume` reattaches to it"
                );
            }
        }
        eprintln!(
            "  after fixing the cause, `rollgate resume {run_id}` retries them and uncordons them when done; \
             to give a node back by hand instead: {}",
            crate::vocab::node_marks::hand_back_command("NODE")
        );
    }
    if summary.outcome == Outcome::Stopped(StopReason::LockLost) {
        eprintln!(
            "this run lost the cluster lock and stopped acting; once no other run holds it, `rollgate resume {run_id}` continues"
        );
    }
    eprintln!("per-node logs: {}", end.run_dir.node_logs().display());
    match &end.report {
        Ok(paths) => {
            use crate::report::Consumer;
            let mut out: Box<dyn Consumer> = if json {
                Box::new(crate::report::json::JsonLines::stderr(run_id))
            } else {
                Box::new(crate::report::terminal::Terminal::new(false))
            };
            out.handle(&Stamped {
                at: std::time::SystemTime::now(),
                event: RunEvent::ReportWritten {
                    paths: paths.clone(),
                },
            });
            out.finish();
        }
        Err(e) => eprintln!("warning: the run report was not written: {e}"),
    }
    if let Some(e) = &end.journal_failure {
        let mut message = if summary.outcome == Outcome::Stopped(StopReason::JournalUnwritable) {
            format!(
                "error: {e}\n  the run stopped: nothing is done that the journal cannot record first\n"
            )
        } else {
            format!(
                "error: {e}\n  the run ended ({:?}) but its journal misses its last records\n",
                summary.outcome
            )
        };
        for (node, step) in &summary.unrecorded {
            message.push_str(&format!(
                "  {node}: stopped before {step} (not done: its start could not be recorded)\n"
            ));
        }
        message.push_str(&format!(
            "  hint: free space in {} (or make it writable), then `rollgate resume {run_id}`",
            end.run_dir.path().display()
        ));
        return Err(Failure::new(exit::JOURNAL_UNWRITABLE, message));
    }
    Ok(end.exit_code())
}
