//! `rollgate run`: plan, confirm, run the engine with the real (or dry-run) steps, report.

use super::plan::{build, connect_failure, render_table};
use super::{Failure, load_config, load_playbook};
use crate::cli::{GlobalArgs, RunArgs};
use crate::cluster::{self, DryRunSteps, KubeSteps};
use crate::config::LogFormat;
use crate::engine::{Confirm, Engine, EventSink, Outcome, RunSummary, StopReason, StopRequest};
use crate::exit;
use crate::report::{self, Consumer};
use std::io::{BufRead, IsTerminal, Write};
use std::sync::Arc;
use tokio::sync::watch;

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
        Outcome::Stopped(StopReason::OperatorGraceful | StopReason::OperatorImmediate) => {
            exit::INTERRUPTED
        }
    }
}

pub async fn run(global: &GlobalArgs, args: &RunArgs) -> Result<u8, Failure> {
    let playbook = Arc::new(load_playbook(&args.playbook)?);
    let config = Arc::new(load_config(global)?);
    let tty = std::io::stderr().is_terminal();
    // No terminal, or asked for: JSON lines and no prompts.
    let json = config.log_format.map_or(!tty, |f| f == LogFormat::Json);
    let interactive = tty && std::io::stdin().is_terminal() && !json;
    let clients = cluster::connect(&config).await.map_err(connect_failure)?;
    let report = build(&clients, &playbook).await?;
    if !json {
        eprint!("{}", render_table(&report));
    }
    if report.plan.node_count() == 0 {
        return Err(Failure::new(
            exit::CLUSTER,
            "error: the plan selects no node: nothing to do\n  hint: check the phases' selectors with `rollgate plan`",
        ));
    }
    if interactive
        && !args.yes
        && !args.dry_run
        && !args.step
        && !ask(&format!("\nupgrade {} node(s)?", report.plan.node_count()))
    {
        eprintln!("not started: nothing was changed");
        return Ok(exit::INTERRUPTED);
    }

    let run_id = new_run_id();
    let run_dir = config.state_dir.join("runs").join(&run_id);
    let (sink, rx) = EventSink::channel();
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
            return Err(Failure::new(
                exit::BAD_INPUT,
                format!(
                    "error: cannot create the run directory {}: {e}\n  hint: set `state.dir` in the config or --state-dir",
                    run_dir.display()
                ),
            ));
        }
    }
    let reporting = tokio::spawn(report::dispatch(rx, consumers));

    let (stop_tx, stop_rx) = watch::channel(StopRequest::None);
    watch_signals(stop_tx);
    let confirm: Option<Confirm> = args
        .step
        .then(|| Arc::new(|node: &str| ask(&format!("upgrade node {node} now?"))) as Confirm);
    let summary = if args.dry_run {
        let steps = DryRunSteps {
            clients,
            playbook: Arc::clone(&playbook),
            config: Arc::clone(&config),
            run_id: run_id.clone(),
            sink: sink.clone(),
        };
        let mut engine = Engine::new(steps, sink, stop_rx);
        engine
            .run(
                &run_id,
                &playbook.name,
                &report.plan,
                playbook.max_failed_nodes,
                true,
            )
            .await
    } else {
        let steps = KubeSteps {
            clients,
            playbook: Arc::clone(&playbook),
            config: Arc::clone(&config),
            run_id: run_id.clone(),
            sink: sink.clone(),
        };
        let mut engine = Engine::new(steps, sink, stop_rx);
        if let Some(c) = confirm {
            engine = engine.with_confirm(c);
        }
        engine
            .run(
                &run_id,
                &playbook.name,
                &report.plan,
                playbook.max_failed_nodes,
                false,
            )
            .await
    };
    let _ = reporting.await;
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
        }
        eprintln!(
            "  after fixing the cause, uncordon with `kubectl uncordon NODE` or rerun the playbook"
        );
    }
    eprintln!("per-node logs: {}", run_dir.join("nodes").display());
    Ok(exit_code(&summary))
}
