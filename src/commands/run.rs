//! `rollgate run`: plan, confirm, start the health monitor and notifications, run the before-run
//! probes (a failing gate refuses to start), run the engine with the real (or dry-run) steps,
//! report. `rollgate resume` continues a paused run from another shell.

use super::plan::{build, connect_failure, render_table};
use super::{Failure, load_config, load_playbook, load_playbook_with};
use crate::cli::{GlobalArgs, RunArgs};
use crate::cluster::{self, DryRunSteps, KubeSteps, StepContext};
use crate::config::{Config, LogFormat};
use crate::engine::{Confirm, Engine, RunSummary, StopRequest};
use crate::exit;
use crate::health::{Guard, HealthState};
use crate::monitor;
use crate::probe::ProbeRunner;
use crate::report::{self, Consumer, slack};
use crate::vocab::{EventSink, Outcome, StopReason};
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Files in a run's directory that `rollgate resume` uses to talk to a paused run.
const PAUSED_FILE: &str = "paused";
const RESUME_FILE: &str = "resume";
/// Written by `rollgate pause` (holding the reason), taken by the run.
const PAUSE_REQUEST_FILE: &str = "pause-request";
/// The latest real run: what `pause`, `resume`, `status` and `report` act on without a run id.
const LATEST_FILE: &str = "latest";
/// The latest dry run (a dry run never moves `latest`, so it cannot be paused or resumed by
/// mistake in place of the real run).
const LATEST_DRY_RUN_FILE: &str = "latest-dry-run";
const PID_FILE: &str = "pid";

/// Who runs this: `user@host` (in the lock holder and the journal header).
fn user_at_host() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown-host".into());
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| {
            // No login variables (a service, a container): the name of the real uid.
            let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
            let uid = status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().next())
                .unwrap_or("?")
                .to_owned();
            std::fs::read_to_string("/etc/passwd")
                .unwrap_or_default()
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() > 2 && f[2] == uid)
                .map_or_else(|| format!("uid {uid}"), |f| f[0].to_owned())
        });
    format!("{user}@{host}")
}

/// A sortable, readable run id: UTC time plus a few random hex digits.
pub fn new_run_id() -> String {
    let now = jiff::Timestamp::now();
    let nanos = now.subsec_nanosecond() as u32 ^ std::process::id().wrapping_mul(2654435761);
    format!("{}-{:04x}", now.strftime("%Y%m%d-%H%M%S"), nanos & 0xffff)
}

fn ask(question: &str) -> bool {
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    if std::io::stdin().lock().read_line(&mut line).is_err() {
        return false;
    }
    matches!(line.trim(), "y" | "Y" | "yes" | "YES" | "Yes")
}

/// Ctrl-C once → graceful, twice → immediate; SIGTERM → graceful.
fn watch_signals(tx: watch::Sender<StopRequest>) {
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        loop {
            let sigterm = async {
                match term.as_mut() {
                    Some(t) => t.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = tokio::signal::ctrl_c() => {
                    if r.is_err() { return; }
                    let next = if *tx.borrow() == StopRequest::None { StopRequest::Graceful } else { StopRequest::Immediate };
                    let _ = tx.send(next);
                }
                _ = sigterm => {
                    if *tx.borrow() == StopRequest::None {
                        let _ = tx.send(StopRequest::Graceful);
                    }
                }
            }
        }
    });
}

pub fn exit_code(summary: &RunSummary) -> u8 {
    match summary.outcome {
        Outcome::Succeeded | Outcome::SucceededWithFailures => exit::OK,
        Outcome::Stopped(StopReason::NodeFailures) => exit::NODE_FAILED,
        Outcome::Stopped(StopReason::GateAbort) => exit::GATE_ABORT,
        Outcome::Stopped(StopReason::OperatorGraceful | StopReason::OperatorImmediate) => {
            exit::INTERRUPTED
        }
        Outcome::Stopped(StopReason::OutsideWindow | StopReason::Deadline) => exit::RESUMABLE,
        Outcome::Stopped(StopReason::JournalUnwritable) => exit::JOURNAL_UNWRITABLE,
        Outcome::Stopped(StopReason::LockLost) => exit::LOCK_LOST,
    }
}

/// The Slack target from the config, reading the secret from the environment variable it names.
pub fn slack_target(config: &Config) -> Result<Option<slack::SlackTarget>, Failure> {
    let Some(s) = &config.slack else {
        return Ok(None);
    };
    let read = |var: &str| {
        std::env::var(var).ok().filter(|v| !v.is_empty()).ok_or_else(|| {
            Failure::new(exit::BAD_INPUT, format!("error: the config names environment variable {var} for Slack, but it is not set\n  hint: export {var}=... or remove the [slack] table"))
        })
    };
    if let Some(var) = &s.token_env {
        let api_url = if s.api_url.ends_with('/') {
            s.api_url.clone()
        } else {
            format!("{}/", s.api_url)
        };
        return Ok(Some(slack::SlackTarget::Bot {
            api_url,
            token: read(var)?,
            channel: s.channel.clone(),
        }));
    }
    if let Some(var) = &s.webhook_url_env {
        return Ok(Some(slack::SlackTarget::Webhook { url: read(var)? }));
    }
    Ok(None)
}

/// Where the final Slack message points for the run report: under `slack.report-url` when the
/// config has one (the operator publishes the runs directory there), else the local path.
fn report_link(config: &Config, run_dir: &std::path::Path, run_id: &str) -> String {
    let file = report::run_report::HTML_FILE;
    match config.slack.as_ref().and_then(|s| s.report_url.as_deref()) {
        Some(base) => format!("{}/{run_id}/{file}", base.trim_end_matches('/')),
        None => run_dir.join(file).display().to_string(),
    }
}

/// Lets `rollgate pause` and `rollgate resume` (another shell) pause this run and continue it.
/// The returned task must be aborted when the run ends (it keeps the guard, and so the event
/// sink, alive).
fn watch_resume_requests(
    guard: Arc<Guard>,
    run_dir: PathBuf,
    interactive: bool,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut rx = guard.subscribe();
        loop {
            let paused = matches!(&*rx.borrow_and_update(), HealthState::Paused(_));
            if paused {
                let _ = std::fs::write(run_dir.join(PAUSED_FILE), "");
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
                    if run_dir.join(RESUME_FILE).exists() {
                        let _ = std::fs::remove_file(run_dir.join(RESUME_FILE));
                        guard.resume();
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(300)) => {}
                        changed = rx.changed() => if changed.is_err() { return },
                    }
                }
                let _ = std::fs::remove_file(run_dir.join(PAUSED_FILE));
            } else if let Ok(reason) = std::fs::read_to_string(run_dir.join(PAUSE_REQUEST_FILE)) {
                let _ = std::fs::remove_file(run_dir.join(PAUSE_REQUEST_FILE));
                guard.pause_by_operator(reason.trim());
            } else {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(300)) => {}
                    changed = rx.changed() => if changed.is_err() { return },
                }
            }
        }
    })
}

/// Gives the cluster lock back (a run that stops early must not leave it held).
async fn release(lock: Option<crate::lock::HeldLock>) {
    if let Some(l) = lock {
        l.release().await;
    }
}

/// Marks the journal of a run that never started (so no header-only journal looks like a
/// crashed run): `status` and `report` show why, `resume` refuses it.
fn refuse(sink: &EventSink, message: &str) {
    let reason = message.strip_prefix("error: ").unwrap_or(message);
    sink.emit(crate::vocab::RunEvent::RunRefused {
        reason: reason.lines().next().unwrap_or(reason).to_owned(),
    });
}

pub async fn run(global: &GlobalArgs, args: &RunArgs) -> Result<u8, Failure> {
    run_with(global, args, None).await
}

/// A run, or (with `resume`) the continuation of a crashed one under the same run id.
async fn run_with(
    global: &GlobalArgs,
    args: &RunArgs,
    resume: Option<crate::journal::ResumePoints>,
) -> Result<u8, Failure> {
    let config = Arc::new(load_config(global)?);
    let playbook = Arc::new(load_playbook_with(&args.playbook, &config)?);
    let slack_target = slack_target(&config)?;
    let tty = std::io::stderr().is_terminal();
    // No terminal, or asked for: JSON lines and no prompts.
    let json = config.log_format.map_or(!tty, |f| f == LogFormat::Json);
    let interactive = tty && std::io::stdin().is_terminal() && !json;
    let clients = cluster::connect(&config).await.map_err(connect_failure)?;
    let mut report = build(&clients, &playbook).await?;
    if let Some(r) = &resume {
        // Finished nodes are skipped; the rest keep the plan's order.
        for phase in &mut report.plan.phases {
            for wave in &mut phase.waves {
                wave.nodes.retain(|n| !r.done.contains(n));
            }
            phase.waves.retain(|w| !w.nodes.is_empty());
        }
    }
    if !json {
        eprint!("{}", render_table(&report));
    }
    if report.plan.node_count() == 0 {
        return Err(Failure::new(
            exit::CLUSTER,
            "error: the plan selects no node: nothing to do\n  hint: check the phases' selectors with `rollgate plan`",
        ));
    }
    if resume.is_none()
        && interactive
        && !args.yes
        && !args.dry_run
        && !args.step
        && !ask(&format!("\nupgrade {} node(s)?", report.plan.node_count()))
    {
        eprintln!("not started: nothing was changed");
        return Ok(exit::INTERRUPTED);
    }

    let run_id = resume
        .as_ref()
        .map(|r| r.run_id.clone())
        .unwrap_or_else(new_run_id);
    crate::logging::set_run_id(&run_id);
    let me = user_at_host();
    let clock = crate::window::Clock::from_env();
    let deadline = match &args.schedule.deadline {
        Some(text) => Some(crate::window::parse_deadline(text, clock.now()).map_err(|e| {
            Failure::new(
                exit::BAD_INPUT,
                format!("error: --deadline: {e}\n  hint: e.g. --deadline 6h or --deadline 2026-11-26T06:00:00Z"),
            )
        })?),
        None => match &resume {
            Some(r) => r.deadline,
            None => playbook.deadline.and_then(|d| {
                let d = jiff::SignedDuration::try_from(d).ok()?;
                clock.now().checked_add(d).ok()
            }),
        },
    };
    let window = playbook.window.clone();
    if args.schedule.ignore_window && window.is_some() {
        eprintln!("WARNING: --ignore-window: nodes start even outside the maintenance window");
    }
    let scheduler = crate::window::Scheduler {
        window: window.filter(|_| !args.schedule.ignore_window),
        deadline,
        clock,
    };
    // One runner per cluster (a dry run changes nothing and takes no lock).
    let lock = if args.dry_run {
        None
    } else {
        let holder = format!("{me} pid {} run {run_id}", std::process::id());
        if args.force_unlock {
            eprintln!(
                "WARNING: --force-unlock: taking the cluster lock {:?} even if another run holds it",
                args.lock_name
            );
        }
        let contender = crate::lock::Contender {
            holder,
            timing: crate::lock::Timing::for_lease(args.lock_duration),
            force: args.force_unlock,
            clock: crate::window::Clock::from_env(),
        };
        let watching = |w: &crate::lock::Watching| {
            eprintln!(
                "the cluster lock {} looks expired (held by {}, last renewed {} by its clock): making sure nobody renews it, watching it for {} before taking it over",
                w.lease,
                w.holder,
                w.renewed,
                humantime::format_duration(w.wait)
            );
        };
        match crate::lock::acquire(clients.api.clone(), &args.lock_name, contender, watching).await
        {
            Ok(l) => Some(l),
            Err(e @ crate::lock::LockError::Held { .. }) => {
                return Err(Failure::new(exit::LOCKED, format!("error: {e}
  hint: wait for it to finish; if that run is gone, its lock expires {} after its last renewal; --force-unlock takes it now", humantime::format_duration(args.lock_duration))));
            }
            Err(e) => return Err(Failure::new(exit::CLUSTER, format!("error: {e}"))),
        }
    };
    let runs_dir = config.state_dir.join("runs");
    let run_dir = runs_dir.join(&run_id);
    let header = crate::journal::Header {
        journal: 1,
        run_id: run_id.clone(),
        playbook: playbook.name.clone(),
        playbook_file: std::fs::canonicalize(&args.playbook)
            .unwrap_or_else(|_| args.playbook.clone()),
        dry_run: args.dry_run,
        deadline: deadline.map(|d| d.to_string()),
        started_by: Some(me.clone()),
        lock_name: Some(args.lock_name.clone()),
        lock_duration_secs: Some(args.lock_duration.as_secs()),
        nodes: report
            .plan
            .phases
            .iter()
            .flat_map(|p| {
                p.waves
                    .iter()
                    .flat_map(|w| w.nodes.iter().map(|n| (n.clone(), p.name.clone())))
            })
            .collect(),
    };
    let journal = if resume.is_some() {
        crate::journal::Journal::open_append(&run_dir).map(|(journal, torn)| {
            if let Some(line) = torn {
                eprintln!(
                    "warning: the journal's last line ({line}) was torn (the run died while writing it): it is skipped, and the resumed run starts on a new line"
                );
            }
            journal
        })
    } else {
        crate::journal::Journal::create(&run_dir, &header)
    };
    let journal = match journal {
        Ok(j) => j,
        Err(e) => {
            release(lock).await;
            return Err(Failure::new(
                exit::BAD_INPUT,
                format!(
                    "error: cannot write the run journal in {}: {e}\n  hint: set `state.dir` in the config or --state-dir; nothing was changed",
                    run_dir.display()
                ),
            ));
        }
    };
    let journal = Arc::new(journal);
    // The playbook as it was run, beside the journal (and in its cluster copy).
    if resume.is_none()
        && let Err(e) = std::fs::copy(&args.playbook, run_dir.join(crate::journal::PLAYBOOK_COPY))
    {
        eprintln!(
            "warning: cannot keep a copy of the playbook in {}: {e}",
            run_dir.display()
        );
    }
    let journal_written = journal.written();
    let (sink, rx) = EventSink::channel();
    let sink = sink.with_journal(Arc::clone(&journal));
    // A resume given a new deadline records it, so later resumes keep it.
    let new_deadline = deadline.filter(|_| resume.is_some() && args.schedule.deadline.is_some());
    let mut consumers: Vec<Box<dyn Consumer>> = Vec::new();
    if json {
        consumers.push(Box::new(report::json::JsonLines::stderr(&run_id)));
    } else {
        let mut t = report::terminal::Terminal::new(interactive);
        t.show_output = args.show_output;
        consumers.push(Box::new(t));
    }
    match report::node_log::NodeLogs::new(run_dir.join("nodes")) {
        Ok(logs) => consumers.push(Box::new(logs)),
        Err(e) => {
            let message = format!(
                "error: cannot create the run directory {}: {e}\n  hint: set `state.dir` in the config or --state-dir; nothing was changed",
                run_dir.display()
            );
            refuse(&sink, &message);
            release(lock).await;
            return Err(Failure::new(exit::BAD_INPUT, message));
        }
    }
    let _ = std::fs::write(run_dir.join(PID_FILE), std::process::id().to_string());
    let metrics = report::metrics::Metrics::new(&run_id);
    consumers.push(Box::new(report::metrics::MetricsConsumer(Arc::clone(
        &metrics,
    ))));
    let listen = args
        .metrics_listen
        .clone()
        .unwrap_or_else(|| config.metrics_listen.clone());
    let metrics_server = match report::metrics::serve(&listen, Arc::clone(&metrics)).await {
        Ok(task) => Some(task),
        Err(e) => {
            eprintln!(
                "warning: metrics endpoint not started on {listen}: {e} (the run goes on; set metrics.listen or --metrics-listen)"
            );
            None
        }
    };
    let mut slack_task = None;
    if let Some(target) = slack_target.filter(|_| playbook.notify.slack && !args.dry_run) {
        let (consumer, task) = slack::Slack::start(
            target,
            &run_id,
            &playbook.name,
            playbook.notify.mention.clone(),
            metrics.lock().expect("lock").slack_failures(),
            Some(report_link(&config, &run_dir, &run_id)),
        );
        consumers.push(Box::new(consumer));
        slack_task = Some(task);
    }
    let reporting = tokio::spawn(report::dispatch(rx, consumers));
    if let Some(d) = new_deadline {
        sink.emit(crate::vocab::RunEvent::DeadlineSet {
            deadline: d.to_string(),
        });
    }

    let (stop_tx, stop_rx) = watch::channel(StopRequest::None);
    // Lost the lock (not renewed in time, or taken by another run): the engine stops.
    let (lock_lost_tx, lock_lost_rx) = watch::channel(None::<String>);
    if let Some(l) = &lock {
        let (mut lost, sink, lease) = (l.lost.clone(), sink.clone(), l.lease.clone());
        let lock_lost_tx = lock_lost_tx.clone();
        tokio::spawn(async move {
            if let Ok(why) = lost.wait_for(Option::is_some).await
                && let Some(why) = why.clone()
            {
                sink.emit(crate::vocab::RunEvent::Warning {
                    node: None,
                    message: format!(
                        "lost the cluster lock {lease}: {why}: starting no new node; nodes in flight stop at their next safe point"
                    ),
                });
                let _ = lock_lost_tx.send(Some(why.to_string()));
            }
        });
    }
    watch_signals(stop_tx);
    let confirm: Option<Confirm> = args
        .step
        .then(|| Arc::new(|node: &str| ask(&format!("upgrade node {node} now?"))) as Confirm);
    let mut cluster_copy = None;
    let summary = if args.dry_run {
        let _ = std::fs::write(runs_dir.join(LATEST_DRY_RUN_FILE), &run_id);
        let steps = DryRunSteps(StepContext {
            clients,
            playbook: Arc::clone(&playbook),
            config: Arc::clone(&config),
            run_id: run_id.clone(),
            sink: sink.clone(),
        });
        let mut engine = Engine::new(steps, sink, stop_rx).by(me.clone());
        Some(
            engine
                .run(
                    &run_id,
                    &playbook.name,
                    &report.plan,
                    playbook.max_failed_nodes,
                    true,
                )
                .await,
        )
    } else {
        // Relative probe paths resolve against the original playbook's directory (a resume
        // reads the copy the run kept).
        let playbook_origin = resume
            .as_ref()
            .map_or(args.playbook.as_path(), |r| r.playbook_file.as_path());
        let runner = Arc::new(ProbeRunner::new(
            Some(clients.api.clone()),
            config.prometheus_url.clone(),
            playbook_origin,
        ));
        let guard = Guard::for_playbook(&playbook, Some(runner), sink.clone(), &run_id);
        let monitor = match monitor::start(
            clients.api.clone(),
            playbook.monitor.clone(),
            Arc::clone(&guard),
            sink.clone(),
        )
        .await
        {
            Ok(m) => m,
            Err(e) => {
                let failure = connect_failure(e);
                refuse(&sink, &failure.message);
                drop(sink);
                drop(guard);
                release(lock).await;
                let _ = reporting.await;
                return Err(failure);
            }
        };
        if let Err(d) = guard.before_run().await {
            let message = format!(
                "error: refusing to start: gate {} failed before the run: {}\n  nothing was changed; fix the cause and run again",
                d.signal, d.evidence
            );
            refuse(&sink, &message);
            drop(monitor);
            drop(sink);
            drop(guard);
            release(lock).await;
            let _ = reporting.await;
            if let Some(t) = slack_task {
                let _ = tokio::time::timeout(Duration::from_secs(40), t).await;
            }
            return Err(Failure::new(exit::GATE_ABORT, message));
        }
        // The run starts: `pause` and `resume` without a run id find it from now on.
        let _ = std::fs::write(runs_dir.join(LATEST_FILE), &run_id);
        let resume_watch = watch_resume_requests(Arc::clone(&guard), run_dir.clone(), interactive);
        cluster_copy = Some(crate::journal::ClusterCopy::start(
            clients.api.clone(),
            run_dir.join(crate::journal::FILE),
            run_id.clone(),
            args.lock_name.clone(),
            journal_written,
        ));
        let steps = KubeSteps::new(StepContext {
            clients,
            playbook: Arc::clone(&playbook),
            config: Arc::clone(&config),
            run_id: run_id.clone(),
            sink: sink.clone(),
        })
        .retrying(resume.as_ref().map(|r| r.retry.clone()).unwrap_or_default())
        .watched_by(Arc::clone(&guard));
        let hint = format!(
            "Continue with `rollgate resume {run_id}` from another shell{}, or stop with Ctrl-C.",
            if interactive {
                " (or answer the prompt)"
            } else {
                ""
            }
        );
        let mut engine = Engine::new(steps, sink.clone(), stop_rx)
            .by(me.clone())
            .with_guard(Arc::clone(&guard), &hint)
            .with_lock(lock_lost_rx)
            .resuming(resume.as_ref().map(|r| r.from.clone()).unwrap_or_default());
        if !scheduler.is_unbounded() {
            let outside = scheduler
                .window
                .as_ref()
                .map_or(crate::window::OutsideWindow::Exit, |w| w.outside);
            let describe = scheduler
                .window
                .as_ref()
                .map(|w| w.describe())
                .unwrap_or_default();
            engine =
                engine.with_schedule(scheduler.watch(Duration::from_secs(1)), outside, &describe);
        }
        if let Some(c) = confirm {
            engine = engine.with_confirm(c);
        }
        let summary = engine
            .run(
                &run_id,
                &playbook.name,
                &report.plan,
                playbook.max_failed_nodes,
                false,
            )
            .await;
        resume_watch.abort();
        let _ = resume_watch.await;
        drop(monitor);
        drop(engine);
        drop(guard);
        drop(sink);
        Some(summary)
    };
    let summary = summary.expect("the run produced a summary");
    if let Some(copy) = cluster_copy {
        copy.finish(config.keep_runs).await;
    }
    if let Some(server) = metrics_server {
        server.abort();
    }
    release(lock).await;
    let _ = reporting.await;
    if let Some(t) = slack_task {
        let _ = tokio::time::timeout(Duration::from_secs(40), t).await;
    }
    // After Slack's last flush, so its delivery failures are in the figures.
    if let Some(url) = args.pushgateway.as_ref().or(config.pushgateway.as_ref())
        && !args.dry_run
        && let Err(e) = report::metrics::push(url, &args.lock_name, &metrics).await
    {
        eprintln!("warning: final metrics not pushed: {e}");
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
            if *step == Some(crate::vocab::Step::Command) {
                let record = crate::remote::record_dir(&run_id, node);
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
    eprintln!("per-node logs: {}", run_dir.join("nodes").display());
    // Best effort: a report that cannot be written never changes the run's exit code.
    match report::run_report::write_for_run(&run_dir) {
        Ok(paths) if json => eprintln!(
            "{}",
            serde_json::json!({"at": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(), "event": "report-written", "run_id": run_id, "paths": paths})
        ),
        Ok(paths) => eprintln!(
            "report: {}",
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Err(e) => eprintln!("warning: the run report was not written: {e}"),
    }
    if let Some(e) = journal.failure() {
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
            run_dir.display()
        ));
        return Err(Failure::new(exit::JOURNAL_UNWRITABLE, message));
    }
    Ok(exit_code(&summary))
}

pub(super) fn latest_run(runs: &std::path::Path, run: Option<&str>) -> Result<String, Failure> {
    match run {
        // A run id names a directory: nothing that could step outside the runs directory.
        Some(r)
            if r.is_empty()
                || !r
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') =>
        {
            Err(Failure::new(
                exit::BAD_INPUT,
                format!(
                    "error: {r:?} is not a run id\n  hint: run ids look like 20261125-013000-ab12; `rollgate runs` lists them"
                ),
            ))
        }
        Some(r) => Ok(r.to_owned()),
        None => std::fs::read_to_string(runs.join(LATEST_FILE)).map(|s| s.trim().to_owned()).map_err(|_| {
            Failure::new(exit::BAD_INPUT, format!("error: no run found in {}\n  hint: pass the run id, or the --state-dir the run uses", runs.display()))
        }),
    }
}

/// `rollgate runs`: the runs this machine has (state directory) and those copied into the
/// cluster (from any machine), newest first: id, state, playbook, progress, where.
pub async fn runs(global: &GlobalArgs, output: crate::cli::OutputFormat) -> Result<u8, Failure> {
    #[derive(serde::Serialize)]
    struct Row {
        run_id: String,
        state: String,
        playbook: String,
        done: usize,
        nodes: usize,
        lock: Option<String>,
        local: bool,
        cluster: bool,
    }
    let config = load_config(global)?;
    let mut rows: std::collections::BTreeMap<String, Row> = Default::default();
    let row = |id: &str, s: &crate::journal::RunStatus| Row {
        run_id: id.to_owned(),
        state: s.state.clone(),
        playbook: s.playbook.clone(),
        done: s.nodes.values().filter(|n| n.state == "done").count(),
        nodes: s.nodes.len(),
        lock: None,
        local: false,
        cluster: false,
    };
    let runs_dir = config.state_dir.join("runs");
    for entry in std::fs::read_dir(&runs_dir).into_iter().flatten().flatten() {
        let id = entry.file_name().to_string_lossy().into_owned();
        if let Ok(s) =
            crate::journal::RunStatus::from_journal(&entry.path().join(crate::journal::FILE))
        {
            let mut r = row(&id, &s);
            r.local = true;
            rows.insert(id, r);
        }
    }
    let from_cluster = match cluster::connect(&config).await {
        Ok(clients) => crate::journal::list_cluster_copies(&clients.api).await,
        Err(e) => Err(e.to_string()),
    };
    match from_cluster {
        Ok(copies) => {
            for c in copies {
                let r = rows
                    .entry(c.run_id.clone())
                    .or_insert_with(|| row(&c.run_id, &c.status));
                r.cluster = true;
                r.lock = Some(c.lock);
            }
        }
        Err(e) => eprintln!("warning: runs in the cluster not listed: {e}"),
    }
    let rows: Vec<Row> = rows.into_values().rev().collect();
    if output == crate::cli::OutputFormat::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).expect("serialisable")
        );
        return Ok(exit::OK);
    }
    println!(
        "{:<22} {:<28} {:>7}  {:<14} {:<16} PLAYBOOK",
        "RUN", "STATE", "DONE", "WHERE", "LOCK"
    );
    for r in &rows {
        let place = match (r.local, r.cluster) {
            (true, true) => "here+cluster",
            (true, false) => "here",
            _ => "cluster",
        };
        let state: String = r.state.chars().take(28).collect();
        println!(
            "{:<22} {:<28} {:>7}  {:<14} {:<16} {}",
            r.run_id,
            state,
            format!("{}/{}", r.done, r.nodes),
            place,
            r.lock.as_deref().unwrap_or("-"),
            r.playbook
        );
    }
    Ok(exit::OK)
}

/// `rollgate status [RUN]`: each node's state, step, since when and last error, from the journal.
pub async fn status(
    global: &GlobalArgs,
    run: Option<&str>,
    output: crate::cli::OutputFormat,
) -> Result<u8, Failure> {
    let config = load_config(global)?;
    let runs = config.state_dir.join("runs");
    let run_id = latest_run(&runs, run)?;
    let path = runs.join(&run_id).join(crate::journal::FILE);
    // No local journal (another machine): the run's copy in the cluster.
    let status = match crate::journal::RunStatus::from_journal(&path) {
        Ok(s) => s,
        Err(local) => {
            let clients = crate::cluster::connect(&config)
                .await
                .map_err(connect_failure)?;
            crate::journal::status_from_cluster(&clients.api, &run_id)
                .await
                .map_err(|e| {
                    Failure::new(
                        exit::BAD_INPUT,
                        format!("error: cannot read {}: {local}; and {e}", path.display()),
                    )
                })?
        }
    };
    if output == crate::cli::OutputFormat::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&status).expect("serialisable")
        );
        return Ok(exit::OK);
    }
    println!(
        "run {}: {} — {}",
        status.run_id, status.playbook, status.state
    );
    println!(
        "  {:<28} {:<14} {:<12} {:<12} {:<26} last error",
        "NODE", "PHASE", "STATE", "STEP", "SINCE"
    );
    for (node, n) in &status.nodes {
        println!(
            "  {:<28} {:<14} {:<12} {:<12} {:<26} {}",
            node,
            n.phase,
            n.state,
            n.step.as_deref().unwrap_or("-"),
            n.since.as_deref().unwrap_or("-"),
            n.last_error.as_deref().unwrap_or("")
        );
    }
    for d in &status.decisions {
        println!("  gate: {d}");
    }
    if let Some(t) = crate::journal::skipped_text(&status.skipped_lines) {
        println!("  journal: {t} (torn by a crash or a full disk)");
    }
    Ok(exit::OK)
}

fn process_alive(pid_file: &std::path::Path) -> bool {
    let Some(pid) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
    else {
        return false;
    };
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| String::from_utf8_lossy(&c).contains("rollgate"))
}

/// Writes a run's journal and playbook from its cluster copy into `dir`.
pub(super) async fn fetch_run_from_cluster(
    config: &Config,
    run_id: &str,
    dir: &std::path::Path,
) -> Result<(), Failure> {
    let clients = cluster::connect(config).await.map_err(connect_failure)?;
    crate::journal::restore_from_cluster(&clients.api, run_id, dir)
        .await
        .map_err(|e| {
            Failure::new(
                exit::BAD_INPUT,
                format!(
                    "error: no run {run_id} here ({}) and {e}\n  hint: pass the run id shown by the run (`rollgate status RUN` reads the cluster copy too)",
                    dir.display()
                ),
            )
        })?;
    eprintln!(
        "run {run_id}: journal and playbook fetched from the cluster (ConfigMap {}/{}) into {}",
        crate::lock::NAMESPACE,
        crate::journal::configmap_name(run_id),
        dir.display()
    );
    Ok(())
}

/// `rollgate pause [RUN]`: the live run starts no new node (nodes in flight finish) until
/// `rollgate resume`. Recorded as a pause decision by `operator`, with the reason.
pub async fn pause(
    global: &GlobalArgs,
    run: Option<&str>,
    reason: Option<&str>,
) -> Result<u8, Failure> {
    let config = load_config(global)?;
    let runs = config.state_dir.join("runs");
    let run_id = latest_run(&runs, run)?;
    let dir = runs.join(&run_id);
    if !process_alive(&dir.join(PID_FILE)) {
        return Err(Failure::new(
            exit::BAD_INPUT,
            format!(
                "error: run {run_id} is not running here\n  hint: only a live run can be paused; `rollgate status {run_id}` shows where it stopped"
            ),
        ));
    }
    if dir.join(PAUSED_FILE).exists() {
        eprintln!("run {run_id} is already paused; `rollgate resume` continues it");
        return Ok(exit::OK);
    }
    let reason = reason
        .map(str::to_owned)
        .unwrap_or_else(|| format!("paused by {}", user_at_host()));
    std::fs::write(dir.join(PAUSE_REQUEST_FILE), &reason).map_err(|e| {
        Failure::new(
            exit::INTERNAL,
            format!("error: cannot write {}: {e}", dir.display()),
        )
    })?;
    for _ in 0..50 {
        if dir.join(PAUSED_FILE).exists() {
            eprintln!(
                "run {run_id} paused: no new node starts, nodes in flight finish; `rollgate resume` continues"
            );
            return Ok(exit::OK);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(Failure::new(
        exit::INTERNAL,
        format!(
            "error: run {run_id} did not take the pause request within 10 s (is it a dry run, or finishing?)"
        ),
    ))
}

/// Before resuming, asks each node whose command may have started what its record on the node
/// says (see [`crate::remote`]): running or finished, the command step reattaches; no record
/// (never started, or the node was reinstalled) is refused unless the command is safe to
/// rerun: the operator says `--command-done NODE` once they checked it.
async fn check_command_records(
    config: &crate::config::Config,
    playbook: &crate::playbook::Playbook,
    points: &crate::journal::ResumePoints,
    nodes: &[k8s_openapi::api::core::v1::Node],
) -> Result<(), String> {
    use crate::remote::{self, RecordState};
    let mut refused = Vec::new();
    for name in &points.uncertain {
        let record = remote::record_dir(&points.run_id, name);
        let Some(address) = nodes
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(name))
            .and_then(|n| cluster::ssh_address(n, &config.ssh.address))
        else {
            refused.push(format!(
                "{name}: the node is gone or has no address to SSH to"
            ));
            continue;
        };
        let env = Default::default();
        let inv = remote::RemoteInvocation {
            address: &address,
            user: playbook.command.user.as_deref(),
            run: "",
            env: &env,
            timeout: playbook.command.timeout,
            record: &record,
            sudo: playbook.command.sudo,
        };
        match remote::probe(&config.ssh, &inv).await {
            Ok(RecordState::NoRecord) if playbook.command.safe_to_rerun => eprintln!(
                "{name}: no record of its command on the node ({record}); it is safe to rerun: running it"
            ),
            Ok(RecordState::NoRecord) => refused.push(format!(
                "{name}: no record of its command on the node ({record} is missing: it never started, or the node was reinstalled or its /var/tmp cleared)"
            )),
            Ok(RecordState::Running) => {
                eprintln!("{name}: its command is still running on the node: reattaching")
            }
            Ok(state) => eprintln!(
                "{name}: its command ended on the node ({state:?}): its record decides (output in {record}/output)"
            ),
            Err(e) => refused.push(format!("{name}: cannot read its command's record: {e}")),
        }
    }
    if refused.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the remote command may have started on these nodes and rollgate cannot tell how it ended:\n  {}\n  \
             Check the node(s); then resume with --command-done NODE (it finished) for each, or set safe-to-rerun = true in the playbook",
            refused.join("\n  ")
        ))
    }
}

/// The playbook a resumed run continues with: the copy the run kept (what it started with),
/// saying so on stderr when the original has changed since or is gone; the original only for
/// runs that kept no copy.
fn resume_playbook(original: &std::path::Path, copy: &std::path::Path) -> PathBuf {
    let Ok(kept) = std::fs::read(copy) else {
        return original.to_owned();
    };
    match std::fs::read(original) {
        Ok(now) if now == kept => {}
        Ok(_) => eprintln!(
            "warning: {} changed since the run started: resuming with the playbook the run started with ({}); to use the edited one, start a new run",
            original.display(),
            copy.display()
        ),
        Err(_) => eprintln!(
            "{} is not here: using the copy the run kept, {}",
            original.display(),
            copy.display()
        ),
    }
    copy.to_owned()
}

/// `rollgate resume [RUN]`: continues a run. A live run that a gate paused is told to go on;
/// a run whose process is gone (crashed, killed, stopped) continues from its journal.
pub async fn resume(
    global: &GlobalArgs,
    run: Option<&str>,
    command_done: &[String],
    schedule: &crate::cli::ScheduleArgs,
) -> Result<u8, Failure> {
    let config = load_config(global)?;
    let runs = config.state_dir.join("runs");
    let run_id = latest_run(&runs, run)?;
    let dir = runs.join(&run_id);
    if !dir.join(crate::journal::FILE).exists() {
        // Another machine started it: continue from its copy in the cluster.
        fetch_run_from_cluster(&config, &run_id, &dir).await?;
    }
    if !process_alive(&dir.join(PID_FILE)) {
        let journal = dir.join(crate::journal::FILE);
        if let Ok(status) = crate::journal::RunStatus::from_journal(&journal)
            && status.state == "succeeded"
        {
            eprintln!("run {run_id} finished: nothing to resume");
            return Ok(exit::OK);
        }
        // The header names the playbook; whether its command is safe to rerun decides the rest.
        let original = crate::journal::resume_points(&journal, &[])
            .map(|p| p.playbook_file)
            .map_err(|e| Failure::new(exit::BAD_INPUT, format!("error: {e}")))?;
        let playbook_file = resume_playbook(&original, &dir.join(crate::journal::PLAYBOOK_COPY));
        let playbook = load_playbook(&playbook_file)?;
        let cannot = |e: String| {
            Failure::new(
                exit::BAD_INPUT,
                format!("error: cannot resume run {run_id}: {e}"),
            )
        };
        let mut points = crate::journal::resume_points(&journal, command_done).map_err(cannot)?;
        // The nodes' annotations can be ahead of a journal fetched from the cluster copy.
        let clients = cluster::connect(&config).await.map_err(connect_failure)?;
        let nodes = cluster::list_nodes(&clients.api)
            .await
            .map_err(connect_failure)?;
        let records: Vec<_> = nodes.iter().map(cluster::node_record).collect();
        crate::journal::reconcile_with_nodes(&mut points, &records, command_done)
            .map_err(cannot)?;
        if let Some(t) = crate::journal::skipped_text(&points.skipped_lines) {
            eprintln!(
                "warning: journal {}: {t} (torn by a crash or a full disk)",
                journal.display()
            );
        }
        check_command_records(&config, &playbook, &points, &nodes)
            .await
            .map_err(cannot)?;
        eprintln!(
            "resuming run {run_id} from its journal: {} node(s) done, {} to pick up where they stopped",
            points.done.len(),
            points.from.len()
        );
        let args = RunArgs {
            playbook: playbook_file,
            yes: true,
            step: false,
            dry_run: false,
            show_output: false,
            force_unlock: false,
            // The lock the run held; an explicit ROLLGATE_LOCK_NAME wins.
            lock_name: std::env::var("ROLLGATE_LOCK_NAME")
                .ok()
                .or_else(|| points.lock_name.clone())
                .unwrap_or_else(|| "default".into()),
            lock_duration: points.lock_duration.unwrap_or(Duration::from_secs(30)),
            metrics_listen: None,
            pushgateway: std::env::var("ROLLGATE_PUSHGATEWAY").ok(),
            schedule: schedule.clone(),
        };
        return Box::pin(run_with(global, &args, Some(points))).await;
    }
    if !dir.join(PAUSED_FILE).exists() {
        return Err(Failure::new(
            exit::BAD_INPUT,
            format!(
                "error: run {run_id} is running and not paused\n  hint: `rollgate resume` continues a paused run, or one whose process is gone"
            ),
        ));
    }
    std::fs::write(dir.join(RESUME_FILE), "").map_err(|e| {
        Failure::new(
            exit::INTERNAL,
            format!("error: cannot write {}: {e}", dir.display()),
        )
    })?;
    for _ in 0..50 {
        if !dir.join(PAUSED_FILE).exists() {
            eprintln!("run {run_id} resumed");
            return Ok(exit::OK);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "resume requested for run {run_id}; it continues as soon as it sees the request (is the run still alive?)"
    );
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_runs_the_playbook_copy_the_run_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (original, copy) = (
            dir.path().join("upgrade.toml"),
            dir.path().join("copy.toml"),
        );
        // No copy (a run from before copies were kept): the original.
        std::fs::write(&original, "name = \"a\"").unwrap();
        assert_eq!(resume_playbook(&original, &copy), original);
        // A copy: always the copy, whether the original is unchanged, edited or gone.
        std::fs::write(&copy, "name = \"a\"").unwrap();
        assert_eq!(resume_playbook(&original, &copy), copy);
        std::fs::write(&original, "name = \"edited\"").unwrap();
        assert_eq!(resume_playbook(&original, &copy), copy);
        std::fs::remove_file(&original).unwrap();
        assert_eq!(resume_playbook(&original, &copy), copy);
    }
}
