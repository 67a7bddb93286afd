//! The run driver: owns one run from the cluster lock to the teardown. Built from a plain
//! [`RunRequest`] (no CLI types: `rollgate run` fills it from flags, `rollgate resume` from the
//! journal), it takes the lock, opens the run directory and journal, wires the reporters,
//! metrics and notifications, records the pre-flight checks' summary (and refuses to start on
//! a blocker, exit 9), starts the health monitor, runs the before-run gate, runs the engine with the real (or dry-run) steps, and tears all of it down on exactly one path. It
//! returns a [`RunEnd`] for the command to print; it never prompts except through
//! [`operator`].
//!
//! - [`state_dir`]: the state directory's layout (runs, latest, node logs, reports).
//! - [`operator`]: prompts, stop signals, who runs this, run ids.
//! - [`control`]: pause and resume requests from another shell.

mod cluster_lock;
pub mod control;
pub mod operator;
pub mod state_dir;

use crate::cluster::{Clients, DryRunSteps, KubeSteps, StepContext};
use crate::config::Config;
use crate::engine::{Confirm, Engine, RunSummary, StopRequest};
use crate::exit::{self, Failure};
use crate::health::Guard;
use crate::journal::{Journal, ResumePoints};
use crate::lock::HeldLock;
use crate::notify;
use crate::plan::Plan;
use crate::playbook::Playbook;
use crate::probe::ProbeRunner;
use crate::report::{self, Consumer};
use crate::vocab::{EventSink, JournalError, PreflightSummary, RunEvent};
use cluster_lock::{acquire_lock, watch_lock};
use operator::Interaction;
use state_dir::{RunDir, RunsDir};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The cluster lock a run takes.
#[derive(Debug, Clone)]
pub struct LockRequest {
    /// `rollgate-lock-NAME` in the lock's namespace.
    pub name: String,
    pub duration: Duration,
    /// Take it even if another run holds it.
    pub force: bool,
}

/// How to run: what `rollgate run` takes from flags and `rollgate resume` from the journal.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub dry_run: bool,
    /// Ask before each node.
    pub confirm_each_node: bool,
    /// Show the remote command's output lines live.
    pub show_output: bool,
    pub lock: LockRequest,
    /// The metrics endpoint's address (else the config's).
    pub metrics_listen: Option<String>,
    /// Push the final metrics here (else the config's).
    pub pushgateway: Option<String>,
    /// `--deadline`: a duration from now or an RFC 3339 time.
    pub deadline: Option<String>,
    /// Start nodes even outside the maintenance window.
    pub ignore_window: bool,
}

/// Everything a run needs to know, in plain data.
pub struct RunRequest {
    pub config: Arc<Config>,
    pub playbook: Arc<Playbook>,
    /// The playbook file the run reads (kept beside the journal as the run's copy).
    pub playbook_file: PathBuf,
    /// Where relative probe paths resolve: the original playbook's file (a resume reads the
    /// copy the run kept).
    pub probe_base: PathBuf,
    /// The resolved plan (for a resume: without the nodes already done).
    pub plan: Plan,
    pub options: RunOptions,
    /// Continue a stopped or crashed run under its run id.
    pub resume: Option<ResumePoints>,
    pub interaction: Interaction,
    /// Where notifications go (secrets already read from the environment, see
    /// [`notify::resolve`]).
    pub notify: Vec<notify::Target>,
    /// A node's expected duration (the pre-flight ETA's, from earlier runs), for a window with
    /// `finish-by-end`; None without one.
    pub node_estimate: Option<crate::window::NodeEstimate>,
    /// What the pre-flight checks said over the plan's nodes (None: not run). Recorded and
    /// told with the run's first message; a blocker refuses the run before anything changes.
    pub preflight: Option<PreflightSummary>,
}

/// How a run ended, for the command to print.
pub struct RunEnd {
    pub run_id: String,
    pub run_dir: RunDir,
    pub summary: RunSummary,
    /// The run report's files, or why it was not written.
    pub report: Result<Vec<PathBuf>, String>,
    /// Why the journal stopped taking records, if it did.
    pub journal_failure: Option<JournalError>,
}

impl RunEnd {
    /// The exit code this run ends with.
    pub fn exit_code(&self) -> u8 {
        if self.journal_failure.is_some() {
            exit::JOURNAL_UNWRITABLE
        } else {
            exit::for_outcome(self.summary.outcome)
        }
    }
}

/// Marks the journal of a run that never started (so no header-only journal looks like a
/// crashed run): `status` and `report` show why, `resume` refuses it.
fn refuse(sink: &EventSink, message: &str) {
    let reason = message.strip_prefix("error: ").unwrap_or(message);
    sink.emit(RunEvent::RunRefused {
        reason: reason.lines().next().unwrap_or(reason).to_owned(),
    });
}

/// What runs beside the engine and is taken down when the run ends, on one path.
#[derive(Default)]
struct Running {
    lock: Option<HeldLock>,
    reporting: Option<tokio::task::JoinHandle<()>>,
    notifier: Option<notify::Notifier>,
    metrics_server: Option<tokio::task::JoinHandle<()>>,
    metrics: Option<Arc<std::sync::Mutex<report::metrics::Metrics>>>,
    cluster_copy: Option<crate::journal::ClusterCopy>,
}

impl Running {
    /// Stops everything in order: the cluster copy's last write, the metrics endpoint, the
    /// lock, the reporters (all events delivered), the notifications (bounded by
    /// [`notify::FINISH_BOUND`]), then the final metrics push (after the last notification, so
    /// its delivery failures are counted). The
    /// event sink must be dropped before (the reporters end when it closes).
    async fn teardown(self, keep_runs: usize, push: Option<(&str, &str)>) {
        if let Some(copy) = self.cluster_copy {
            copy.finish(keep_runs).await;
        }
        if let Some(server) = self.metrics_server {
            server.abort();
        }
        if let Some(lock) = self.lock {
            lock.release().await;
        }
        if let Some(reporting) = self.reporting {
            let _ = reporting.await;
        }
        if let Some(notifier) = self.notifier {
            notifier.finish().await;
        }
        if let (Some((url, lock_name)), Some(metrics)) = (push, &self.metrics)
            && let Err(e) = report::metrics::push(url, lock_name, metrics).await
        {
            eprintln!("warning: final metrics not pushed: {e}");
        }
    }
}

/// The run's deadline: `--deadline` (a duration from `now` or a time), else the resumed run's,
/// else the playbook's `deadline` from `now`.
pub fn run_deadline(
    text: Option<&str>,
    resume: Option<&ResumePoints>,
    playbook: &Playbook,
    now: jiff::Timestamp,
) -> Result<Option<jiff::Timestamp>, Failure> {
    match text {
        Some(text) => Ok(Some(crate::window::parse_deadline(text, now).map_err(|e| {
            Failure::new(
                exit::BAD_INPUT,
                format!("error: --deadline: {e}\n  hint: e.g. --deadline 6h or --deadline 2026-11-26T06:00:00Z"),
            )
        })?)),
        None => Ok(match resume {
            Some(r) => r.deadline,
            None => playbook.deadline.and_then(|d| {
                let d = jiff::SignedDuration::try_from(d).ok()?;
                now.checked_add(d).ok()
            }),
        }),
    }
}

/// Runs the request to its end. Err when the run could not start (nothing was changed; a run
/// directory that exists says why in its journal).
pub async fn run(request: RunRequest, clients: Clients) -> Result<RunEnd, Failure> {
    let RunRequest {
        config,
        playbook,
        playbook_file,
        probe_base,
        plan,
        options,
        resume,
        interaction,
        notify: notify_targets,
        node_estimate,
        preflight,
    } = request;
    let RunOptions {
        dry_run,
        confirm_each_node,
        show_output,
        lock: lock_request,
        metrics_listen,
        pushgateway,
        deadline: deadline_text,
        ignore_window,
    } = options;
    let run_id = resume
        .as_ref()
        .map(|r| r.run_id.clone())
        .unwrap_or_else(operator::new_run_id);
    crate::logging::set_run_id(&run_id);
    let me = operator::user_at_host();
    let clock = crate::window::Clock::from_env();
    let deadline = run_deadline(
        deadline_text.as_deref(),
        resume.as_ref(),
        &playbook,
        clock.now(),
    )?;
    let window = playbook.window.clone();
    if ignore_window && window.is_some() {
        eprintln!("WARNING: --ignore-window: nodes start even outside the maintenance window");
    }
    let scheduler = crate::window::Scheduler {
        window: window.filter(|_| !ignore_window),
        deadline,
        clock,
        node_estimate,
    };
    let mut running = Running {
        // One runner per cluster (a dry run changes nothing and takes no lock).
        lock: if dry_run {
            None
        } else {
            Some(
                acquire_lock(
                    &clients,
                    &config.state_namespace,
                    &lock_request,
                    &me,
                    &run_id,
                )
                .await?,
            )
        },
        ..Default::default()
    };
    let runs = RunsDir::new(&config.state_dir);
    let run_dir = runs.run(&run_id);
    let journal = match open_journal(
        &run_dir,
        &run_id,
        &playbook,
        &playbook_file,
        &plan,
        dry_run,
        deadline,
        &me,
        &lock_request,
        resume.is_some(),
    ) {
        Ok(j) => Arc::new(j),
        Err(f) => {
            running.teardown(config.keep_runs, None).await;
            return Err(f);
        }
    };
    let journal_written = journal.written();
    let (sink, rx) = EventSink::channel();
    let sink = sink.with_journal(Arc::clone(&journal));
    // A resume given a new deadline records it, so later resumes keep it.
    let new_deadline = deadline.filter(|_| resume.is_some() && deadline_text.is_some());
    let mut consumers: Vec<Box<dyn Consumer>> = Vec::new();
    if interaction.json {
        consumers.push(Box::new(report::json::JsonLines::stderr(&run_id)));
    } else {
        let mut t = report::terminal::Terminal::new(interaction.interactive);
        t.show_output = show_output;
        consumers.push(Box::new(t));
    }
    match report::node_log::NodeLogs::new(run_dir.node_logs()) {
        Ok(logs) => consumers.push(Box::new(logs)),
        Err(e) => {
            let message = format!(
                "error: cannot create the run directory {}: {e}\n  hint: set `state.dir` in the config or --state-dir; nothing was changed",
                run_dir.path().display()
            );
            refuse(&sink, &message);
            drop(sink);
            running.teardown(config.keep_runs, None).await;
            return Err(Failure::new(exit::BAD_INPUT, message));
        }
    }
    run_dir.write_pid();
    let metrics = report::metrics::Metrics::new(&run_id);
    consumers.push(Box::new(report::metrics::MetricsConsumer(Arc::clone(
        &metrics,
    ))));
    let listen = metrics_listen.unwrap_or_else(|| config.metrics_listen.clone());
    running.metrics_server = match report::metrics::serve(&listen, Arc::clone(&metrics)).await {
        Ok(task) => Some(task),
        Err(e) => {
            eprintln!(
                "warning: metrics endpoint not started on {listen}: {e} (the run goes on; set metrics.listen or --metrics-listen)"
            );
            None
        }
    };
    let report_file = run_dir.path().join(report::run_report::HTML_FILE);
    let told = notify::RunInfo {
        run_id: &run_id,
        playbook: &playbook,
        report_file: &report_file,
        dry_run,
    };
    let mut notifier = notify::start(
        &notify_targets,
        &told,
        metrics.lock().expect("lock").slack_failures(),
    );
    consumers.push(notifier.consumer());
    running.notifier = Some(notifier);
    running.metrics = Some(Arc::clone(&metrics));
    running.reporting = Some(tokio::spawn(report::dispatch(rx, consumers)));
    if let Some(d) = new_deadline {
        sink.emit(RunEvent::DeadlineSet {
            deadline: d.to_string(),
        });
    }
    if let Some(summary) = preflight {
        let refusal = summary.refusal();
        sink.emit(RunEvent::Preflight { summary });
        if let Some(message) = refusal {
            refuse(&sink, &message);
            drop(sink);
            running.teardown(config.keep_runs, None).await;
            return Err(Failure::new(exit::PREFLIGHT_FAILED, message));
        }
    }

    let (stop_tx, stop_rx) = watch::channel(StopRequest::None);
    // The sender lives as long as the run: a closed channel would read as "never lost".
    let (_lock_lost_tx, lock_lost_rx) = watch_lock(running.lock.as_ref(), &sink);
    operator::watch_signals(stop_tx);
    let confirm: Option<Confirm> = confirm_each_node.then(|| {
        Arc::new(|node: &str| operator::ask(&format!("upgrade node {node} now?"))) as Confirm
    });
    let context = StepContext {
        clients,
        playbook: Arc::clone(&playbook),
        config: Arc::clone(&config),
        run_id: run_id.clone(),
        sink: sink.clone(),
    };
    let summary = if dry_run {
        runs.set_latest_dry_run(&run_id);
        let mut engine = Engine::new(DryRunSteps(context), sink, stop_rx).by(me.clone());
        engine
            .run(
                &run_id,
                &playbook.name,
                &plan,
                playbook.max_failed_nodes,
                true,
            )
            .await
    } else {
        let runner = Arc::new(ProbeRunner::new(
            Some(context.clients.api.clone()),
            config.prometheus_url.clone(),
            &probe_base,
        ));
        let guard = Guard::for_playbook(&playbook, Some(runner), sink.clone(), &run_id);
        let started = crate::monitor::start(
            context.clients.api.clone(),
            playbook.monitor.clone(),
            Arc::clone(&guard),
            sink.clone(),
        )
        .await;
        let refused = match &started {
            Err(e) => Some(Failure::cluster(e)),
            Ok(_) => guard.before_run().await.err().map(|d| {
                Failure::new(
                    exit::GATE_ABORT,
                    format!(
                        "error: refusing to start: gate {} failed before the run: {}\n  nothing was changed; fix the cause and run again",
                        d.signal, d.evidence
                    ),
                )
            }),
        };
        if let Some(failure) = refused {
            refuse(&sink, &failure.message);
            drop((started, sink, guard, context));
            running.teardown(config.keep_runs, None).await;
            return Err(failure);
        }
        let monitor = started.expect("started");
        // The run starts: `pause` and `resume` without a run id find it from now on.
        runs.set_latest(&run_id);
        let requests = control::watch_requests(
            Arc::clone(&guard),
            context.clients.api.clone(),
            config.state_namespace.clone(),
            run_id.clone(),
            run_dir.clone(),
            interaction.interactive,
        );
        let buttons = notify::listen_for_buttons(
            &notify_targets,
            &told,
            Arc::new(control::ClusterController {
                client: context.clients.api.clone(),
                namespace: config.state_namespace.clone(),
                run_id: run_id.clone(),
                sink: sink.clone(),
            }),
        )
        .await;
        running.cluster_copy = Some(crate::journal::ClusterCopy::start(
            context.clients.api.clone(),
            config.state_namespace.clone(),
            run_dir.journal(),
            run_id.clone(),
            lock_request.name.clone(),
            journal_written,
        ));
        let steps = KubeSteps::new(context)
            .retrying(resume.as_ref().map(|r| r.retry.clone()).unwrap_or_default())
            .watched_by(Arc::clone(&guard));
        let hint = format!(
            "Continue with `rollgate resume {run_id}` from any machine with cluster access{}, or stop with Ctrl-C.",
            if interaction.interactive {
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
                &plan,
                playbook.max_failed_nodes,
                false,
            )
            .await;
        requests.abort();
        let _ = requests.await;
        // Its controller holds the event sink: closed before the reporters can end.
        if let Some(buttons) = buttons {
            buttons.stop().await;
        }
        drop((monitor, engine, guard, sink));
        summary
    };
    let push = pushgateway
        .as_deref()
        .or(config.pushgateway.as_deref())
        .filter(|_| !dry_run)
        .map(|url| (url, lock_request.name.as_str()));
    running.teardown(config.keep_runs, push).await;
    // Best effort: a report that cannot be written never changes the run's exit code.
    let report = report::run_report::write_for_run(run_dir.path()).map_err(|e| e.to_string());
    Ok(RunEnd {
        run_id,
        run_dir,
        summary,
        report,
        journal_failure: journal.failure(),
    })
}

/// Opens the run's journal: a new one with its header, or (resuming) the existing one for
/// appending. Keeps a copy of the playbook beside a new journal.
#[allow(clippy::too_many_arguments)]
fn open_journal(
    run_dir: &RunDir,
    run_id: &str,
    playbook: &Playbook,
    playbook_file: &std::path::Path,
    plan: &Plan,
    dry_run: bool,
    deadline: Option<jiff::Timestamp>,
    me: &str,
    lock: &LockRequest,
    resuming: bool,
) -> Result<Journal, Failure> {
    let header = crate::journal::Header {
        journal: 1,
        run_id: run_id.to_owned(),
        playbook: playbook.name.clone(),
        playbook_file: std::fs::canonicalize(playbook_file)
            .unwrap_or_else(|_| playbook_file.to_owned()),
        dry_run,
        deadline: deadline.map(|d| d.to_string()),
        started_by: Some(me.to_owned()),
        lock_name: Some(lock.name.clone()),
        lock_duration_secs: Some(lock.duration.as_secs()),
        nodes: plan
            .phases
            .iter()
            .flat_map(|p| {
                p.waves
                    .iter()
                    .flat_map(|w| w.nodes.iter().map(|n| (n.clone(), p.name.clone())))
            })
            .collect(),
    };
    let journal = if resuming {
        Journal::open_append(run_dir.path()).map(|(journal, torn)| {
            if let Some(line) = torn {
                eprintln!(
                    "warning: the journal's last line ({line}) was torn (the run died while writing it): it is skipped, and the resumed run starts on a new line"
                );
            }
            journal
        })
    } else {
        Journal::create(run_dir.path(), &header)
    };
    let journal = journal.map_err(|e| {
        Failure::new(
            exit::BAD_INPUT,
            format!(
                "error: cannot write the run journal in {}: {e}\n  hint: set `state.dir` in the config or --state-dir; nothing was changed",
                run_dir.path().display()
            ),
        )
    })?;
    // The playbook as it was run, beside the journal (and in its cluster copy), its secrets
    // redacted (`command.env` values, header values, URL credentials).
    if !resuming
        && let Err(e) = std::fs::read_to_string(playbook_file)
            .map_err(|e| e.to_string())
            .and_then(|text| {
                crate::playbook::redacted_text(playbook_file, &text).map_err(|e| e.to_string())
            })
            .and_then(|text| {
                std::fs::write(run_dir.playbook_copy(), text).map_err(|e| e.to_string())
            })
    {
        eprintln!(
            "warning: cannot keep a copy of the playbook in {}: {e}",
            run_dir.path().display()
        );
    }
    Ok(journal)
}
