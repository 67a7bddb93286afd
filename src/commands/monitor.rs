//! `rollgate monitor`: the run's health monitor alone — unhealthy pods, node readiness, pings
//! and periodic probes — as a table refreshed in place, or a stream of JSON events.

use super::plan::connect_failure;
use super::{Failure, load_playbook};
use crate::cli::OutputFormat;
use crate::cluster;
use crate::config::Config;
use crate::exit;
use crate::health::{Guard, monitor_signals};
use crate::monitor;
use crate::playbook::MonitorOptions;
use crate::probe::ProbeRunner;
use crate::report::{self, Consumer};
use crate::vocab::ProbeOutcome;
use crate::vocab::{EventSink, RunEvent, Stamped};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Keeps the latest state per object and redraws it.
struct LiveTable {
    problems: BTreeMap<String, String>,
    probes: BTreeMap<String, String>,
    decisions: Vec<String>,
    baseline: Vec<String>,
    dirty: bool,
}

impl LiveTable {
    fn render(&mut self) {
        if !self.dirty {
            return;
        }
        self.dirty = false;
        let mut out = String::from("\x1b[2J\x1b[H");
        let now = jiff::Timestamp::now().strftime("%H:%M:%S");
        out += &format!("rollgate monitor — {now} — Ctrl-C to stop\n\n");
        out += &format!("unhealthy since start ({}):\n", self.problems.len());
        for (object, detail) in &self.problems {
            out += &format!("  {object:<50} {detail}\n");
        }
        if !self.probes.is_empty() {
            out += "\nprobes:\n";
            for (name, result) in &self.probes {
                out += &format!("  {name:<30} {result}\n");
            }
        }
        if !self.baseline.is_empty() {
            out += &format!("\nalready unhealthy at start ({}):\n", self.baseline.len());
            for b in self.baseline.iter().take(20) {
                out += &format!("  {b}\n");
            }
        }
        if !self.decisions.is_empty() {
            out += "\ngate decisions (a run would act on these):\n";
            for d in self.decisions.iter().rev().take(10) {
                out += &format!("  {d}\n");
            }
        }
        let mut stdout = std::io::stdout();
        let _ = stdout.write_all(out.as_bytes());
        let _ = stdout.flush();
    }
}

impl Consumer for std::sync::Arc<std::sync::Mutex<LiveTable>> {
    fn handle(&mut self, event: &Stamped) {
        let mut t = self.lock().expect("lock");
        match &event.event {
            RunEvent::Problem { problem } => {
                t.problems.insert(
                    problem.object.clone(),
                    format!("{:?}: {}", problem.kind, problem.detail),
                );
            }
            RunEvent::ProbeResult { probe, outcome, .. } => {
                let r = match outcome {
                    ProbeOutcome::Pass => "pass".to_owned(),
                    ProbeOutcome::Fail(e) => format!("FAIL: {e}"),
                    ProbeOutcome::Inconclusive(e) => format!("inconclusive: {e}"),
                };
                t.probes.insert(probe.clone(), r);
            }
            RunEvent::GateDecision { decision } => t.decisions.push(format!(
                "{:?} by {}: {}",
                decision.decision, decision.signal, decision.evidence
            )),
            RunEvent::Baseline { problems } => t.baseline = problems.clone(),
            RunEvent::WatchLost { watch, error } => {
                t.problems.insert(
                    format!("(watch) {watch}"),
                    format!("LOST, retrying: {error}"),
                );
            }
            RunEvent::WatchRestored { watch, .. } => {
                t.problems.remove(&format!("(watch) {watch}"));
            }
            _ => return,
        }
        t.dirty = true;
    }
}

pub async fn run(
    config: Config,
    playbook_path: Option<&Path>,
    output: OutputFormat,
) -> Result<u8, Failure> {
    let playbook = playbook_path.map(load_playbook).transpose()?;
    let clients = cluster::connect(&config).await.map_err(connect_failure)?;
    crate::rbac::check(
        &clients.api,
        crate::rbac::Use::Monitor,
        &config,
        playbook.as_ref(),
        "monitor",
    )
    .await?;
    let (sink, rx) = EventSink::channel();
    let table = Arc::new(std::sync::Mutex::new(LiveTable {
        problems: BTreeMap::new(),
        probes: BTreeMap::new(),
        decisions: vec![],
        baseline: vec![],
        dirty: true,
    }));
    let consumer: Box<dyn Consumer> = match output {
        OutputFormat::Json => Box::new(report::json::JsonLines::to_writer(
            "monitor",
            Box::new(std::io::stdout()),
        )),
        OutputFormat::Table => Box::new(Arc::clone(&table)),
    };
    let reporting = tokio::spawn(report::dispatch(rx, vec![consumer]));
    let runner = Arc::new(ProbeRunner::new(
        Some(clients.api.clone()),
        config.prometheus_url.clone(),
        playbook_path.unwrap_or(Path::new(".")),
    ));
    // Without a playbook: watch everything, with the default gates and no probes.
    let (guard, options) = match &playbook {
        Some(p) => (
            Guard::for_playbook(p, Some(runner), sink.clone(), "monitor"),
            p.monitor.clone(),
        ),
        None => {
            let options = MonitorOptions::default();
            let signals = monitor_signals(&options);
            let guard = Guard::new(&[], &[], Some(runner), &signals, sink.clone(), "monitor");
            (guard, options)
        }
    };
    let monitor = monitor::start(
        clients.api.clone(),
        options,
        Arc::clone(&guard),
        sink.clone(),
    )
    .await
    .map_err(connect_failure)?;
    // Decisions are shown, never acted on (the guard reports each one whatever its state).
    let mut redraw = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = redraw.tick() => {
                if output == OutputFormat::Table {
                    table.lock().expect("lock").render();
                }
            }
        }
    }
    drop(monitor);
    drop(guard);
    drop(sink);
    let _ = reporting.await;
    Ok(exit::OK)
}
