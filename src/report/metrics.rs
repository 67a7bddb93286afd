//! Prometheus metrics for a run, a consumer of run events, served at `/metrics` on
//! `metrics.listen` (loopback by default). Names follow Prometheus conventions: `rollgate_`
//! prefix, seconds, `_total` counters. Every series carries the run id.

use super::Consumer;
use crate::health::InFlight;
use crate::vocab::{Outcome, RunEvent, Stamped};
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub struct Metrics {
    registry: Registry,
    nodes: IntGaugeVec,
    node_step: IntGaugeVec,
    step_seconds: HistogramVec,
    evictions: IntCounterVec,
    pdb_blocks: IntCounterVec,
    probe_results: IntCounterVec,
    probe_seconds: HistogramVec,
    gate_decisions: IntCounterVec,
    problems: IntCounterVec,
    run_state: GaugeVec,
    slack_failures: IntCounterVec,
    phase_of: HashMap<String, String>,
    /// The step each node is in, as the events tell it.
    in_flight: InFlight,
}

fn opts(name: &str, help: &str, run_id: &str) -> Opts {
    Opts::new(name, help).const_label("run_id", run_id)
}

impl Metrics {
    pub fn new(run_id: &str) -> Arc<std::sync::Mutex<Self>> {
        let registry = Registry::new();
        let nodes = IntGaugeVec::new(
            opts(
                "rollgate_nodes",
                "Nodes per phase and state (total, in_progress, done, failed, skipped).",
                run_id,
            ),
            &["phase", "state"],
        )
        .expect("valid metric");
        let node_step = IntGaugeVec::new(
            opts(
                "rollgate_node_step",
                "1 for the step each node is in.",
                run_id,
            ),
            &["node", "step"],
        )
        .expect("valid metric");
        let step_seconds = HistogramVec::new(
            HistogramOpts::from(opts(
                "rollgate_step_duration_seconds",
                "Duration of node steps.",
                run_id,
            ))
            .buckets(vec![0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0]),
            &["step"],
        )
        .expect("valid metric");
        let evictions = IntCounterVec::new(
            opts("rollgate_evictions_total", "Pods evicted.", run_id),
            &["node"],
        )
        .expect("valid metric");
        let pdb_blocks = IntCounterVec::new(
            opts(
                "rollgate_pdb_blocks_total",
                "Evictions blocked by a PodDisruptionBudget.",
                run_id,
            ),
            &["pdb"],
        )
        .expect("valid metric");
        let probe_results = IntCounterVec::new(
            opts("rollgate_probe_results_total", "Probe results.", run_id),
            &["probe", "result"],
        )
        .expect("valid metric");
        let probe_seconds = HistogramVec::new(
            HistogramOpts::from(opts(
                "rollgate_probe_duration_seconds",
                "Probe durations.",
                run_id,
            )),
            &["probe"],
        )
        .expect("valid metric");
        let gate_decisions = IntCounterVec::new(
            opts("rollgate_gate_decisions_total", "Gate decisions.", run_id),
            &["signal", "decision"],
        )
        .expect("valid metric");
        let problems = IntCounterVec::new(
            opts(
                "rollgate_health_problems_total",
                "New health problems seen by the monitor.",
                run_id,
            ),
            &["kind"],
        )
        .expect("valid metric");
        let run_state = GaugeVec::new(
            opts(
                "rollgate_run_state",
                "1 for the run's current state.",
                run_id,
            ),
            &["state"],
        )
        .expect("valid metric");
        let slack_failures = IntCounterVec::new(
            opts(
                "rollgate_slack_delivery_failures_total",
                "Slack messages not delivered: refused (dropped), deferred (retried later) or lost at the end of the run.",
                run_id,
            ),
            &["outcome"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(slack_failures.clone()))
            .expect("unique metric");
        registry
            .register(Box::new(nodes.clone()))
            .expect("unique metric");
        registry
            .register(Box::new(node_step.clone()))
            .expect("unique metric");
        registry
            .register(Box::new(step_seconds.clone()))
            .expect("unique metric");
        registry
            .register(Box::new(evictions.clone()))
            .expect("unique metric");
        registry
            .register(Box::new(pdb_blocks.clone()))
            .expect("unique metric");
        registry
            .register(Box::new(probe_results.clone()))
            .expect("unique metric");
        registry
            .register(Box::new(probe_seconds.clone()))
            .expect("unique metric");
        registry
            .register(Box::new(gate_decisions.clone()))
            .expect("unique metric");
        registry
            .register(Box::new(problems.clone()))
            .expect("unique metric");
        registry
            .register(Box::new(run_state.clone()))
            .expect("unique metric");
        Arc::new(std::sync::Mutex::new(Self {
            registry,
            nodes,
            node_step,
            step_seconds,
            evictions,
            pdb_blocks,
            probe_results,
            probe_seconds,
            gate_decisions,
            problems,
            run_state,
            slack_failures,
            phase_of: HashMap::new(),
            in_flight: InFlight::default(),
        }))
    }

    fn set_state(&self, state: &str) {
        for s in [
            "running",
            "paused",
            "waiting-for-window",
            "aborted",
            "stopped",
            "finished",
        ] {
            self.run_state
                .with_label_values(&[s])
                .set(if s == state { 1.0 } else { 0.0 });
        }
    }

    /// The counter the Slack delivery task increments (it runs apart from the event stream).
    pub fn slack_failures(&self) -> IntCounterVec {
        self.slack_failures.clone()
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }

    fn handle(&mut self, event: &RunEvent) {
        match event {
            RunEvent::RunStarted { .. } => self.set_state("running"),
            RunEvent::WaveStarted { phase, nodes, .. } => {
                self.nodes
                    .with_label_values(&[phase.as_str(), "total"])
                    .add(nodes.len() as i64);
                for s in ["in_progress", "done", "failed", "skipped"] {
                    self.nodes.with_label_values(&[phase.as_str(), s]).add(0);
                }
                for n in nodes {
                    self.phase_of.insert(n.clone(), phase.clone());
                }
            }
            RunEvent::NodeStarted { node, phase } => {
                self.phase_of.insert(node.clone(), phase.clone());
                self.nodes
                    .with_label_values(&[phase.as_str(), "in_progress"])
                    .inc();
            }
            RunEvent::StepStarted { node, step } => {
                if let Some(old) = self.in_flight.enter(node, *step) {
                    self.node_step
                        .with_label_values(&[node.as_str(), old.name()])
                        .set(0);
                }
                self.node_step
                    .with_label_values(&[node.as_str(), step.name()])
                    .set(1);
            }
            RunEvent::StepFinished {
                step, elapsed_ms, ..
            } => self
                .step_seconds
                .with_label_values(&[step.name()])
                .observe(*elapsed_ms as f64 / 1000.0),
            RunEvent::PodEvicted { node, .. } => {
                self.evictions.with_label_values(&[node.as_str()]).inc()
            }
            RunEvent::EvictionBlocked { pdb, .. } => {
                self.pdb_blocks.with_label_values(&[pdb.as_str()]).inc()
            }
            RunEvent::NodeDone { node, .. }
            | RunEvent::NodeFailed { node, .. }
            | RunEvent::NodeSkipped { node, .. } => {
                let phase = self.phase_of.get(node).cloned().unwrap_or_default();
                self.nodes
                    .with_label_values(&[phase.as_str(), "in_progress"])
                    .dec();
                let state = match event {
                    RunEvent::NodeDone { .. } => "done",
                    RunEvent::NodeSkipped { .. } => "skipped",
                    _ => "failed",
                };
                self.nodes.with_label_values(&[phase.as_str(), state]).inc();
                if let Some(old) = self.in_flight.remove(node) {
                    self.node_step
                        .with_label_values(&[node.as_str(), old.name()])
                        .set(0);
                }
            }
            RunEvent::ProbeResult {
                probe,
                outcome,
                elapsed_ms,
                ..
            } => {
                let result = match outcome {
                    crate::vocab::ProbeOutcome::Pass => "pass",
                    crate::vocab::ProbeOutcome::Fail(_) => "fail",
                    crate::vocab::ProbeOutcome::Inconclusive(_) => "inconclusive",
                };
                self.probe_results
                    .with_label_values(&[probe.as_str(), result])
                    .inc();
                self.probe_seconds
                    .with_label_values(&[probe.as_str()])
                    .observe(*elapsed_ms as f64 / 1000.0);
            }
            RunEvent::GateDecision { decision } => {
                let d = serde_json::to_value(decision.decision)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                self.gate_decisions
                    .with_label_values(&[decision.signal.as_str(), d.as_str()])
                    .inc();
            }
            RunEvent::Problem { problem } => {
                let kind = serde_json::to_value(problem.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                self.problems.with_label_values(&[kind.as_str()]).inc();
            }
            RunEvent::Paused { .. } => self.set_state("paused"),
            RunEvent::Resumed { .. } => self.set_state("running"),
            RunEvent::WindowClosed { .. } => self.set_state("waiting-for-window"),
            RunEvent::WindowOpened => self.set_state("running"),
            RunEvent::RunFinished { outcome, .. } => self.set_state(match outcome {
                Outcome::Succeeded | Outcome::SucceededWithFailures => "finished",
                Outcome::Stopped(
                    crate::vocab::StopReason::GateAbort | crate::vocab::StopReason::OperatorAbort,
                ) => "aborted",
                Outcome::Stopped(_) => "stopped",
            }),
            _ => {}
        }
    }
}

/// The consumer side: a shared handle.
pub struct MetricsConsumer(pub Arc<std::sync::Mutex<Metrics>>);

impl Consumer for MetricsConsumer {
    fn handle(&mut self, event: &Stamped) {
        self.0.lock().expect("lock").handle(&event.event);
    }
}

/// Pushes the final figures to a Pushgateway, replacing the group of the previous run against
/// the same cluster lock (`job="rollgate"`, `lock=NAME`), so groups do not pile up. Bounded.
pub async fn push(
    pushgateway: &str,
    lock_name: &str,
    metrics: &Arc<std::sync::Mutex<Metrics>>,
) -> Result<(), String> {
    let body = metrics.lock().expect("lock").render();
    let url = format!(
        "{}/metrics/job/rollgate/lock/{}",
        pushgateway.trim_end_matches('/'),
        lock_name
    );
    // Messages name the URL redacted (credentials, token-like parameters).
    let shown = crate::redact::url(&url);
    let response = reqwest::Client::new()
        .put(&url)
        .header("Content-Type", "text/plain; version=0.0.4")
        .timeout(std::time::Duration::from_secs(10))
        .body(body)
        .send()
        .await
        .map_err(|e| format!("cannot push to {shown}: {}", e.without_url()))?;
    if response.status().is_success() {
        Ok(())
    } else {
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        Err(format!("{shown} answered {status}: {}", text.trim()))
    }
}

/// Serves `/metrics` until the task is aborted. A bind failure is returned, not fatal to the run.
pub async fn serve(
    listen: &str,
    metrics: Arc<std::sync::Mutex<Metrics>>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let metrics = Arc::clone(&metrics);
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let n = stream.read(&mut buf).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]);
                let (status, body) = if request.starts_with("GET /metrics") {
                    ("200 OK", metrics.lock().expect("lock").render())
                } else {
                    ("404 Not Found", "rollgate serves /metrics\n".to_owned())
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skipped_nodes_are_counted_apart_from_done_and_failed_ones() {
        let metrics = Metrics::new("r1");
        let mut m = metrics.lock().unwrap();
        m.handle(&RunEvent::WaveStarted {
            phase: "all".into(),
            wave: None,
            nodes: vec!["a".into(), "b".into()],
        });
        for node in ["a", "b"] {
            m.handle(&RunEvent::NodeStarted {
                node: node.into(),
                phase: "all".into(),
            });
        }
        m.handle(&RunEvent::NodeSkipped {
            node: "a".into(),
            reason: "held".into(),
            pdbs: vec!["ns/db".into()],
            pods: vec!["ns/db-0".into()],
        });
        m.handle(&RunEvent::NodeDone {
            node: "b".into(),
            elapsed_ms: 1,
        });
        let text = m.render();
        let value = |state: &str| {
            text.lines()
                .find(|l| {
                    l.starts_with("rollgate_nodes{") && l.contains(&format!("state=\"{state}\""))
                })
                .and_then(|l| l.rsplit(' ').next())
                .map(str::to_owned)
        };
        assert_eq!(value("skipped").as_deref(), Some("1"), "{text}");
        assert_eq!(value("done").as_deref(), Some("1"), "{text}");
        assert_eq!(value("failed").as_deref(), Some("0"), "{text}");
        assert_eq!(value("in_progress").as_deref(), Some("0"), "{text}");
    }
}
