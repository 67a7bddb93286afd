//! The run's health state, shared by the monitor, the probes and the engine: every signal's
//! result goes through [`Guard::report`], which applies the gates and moves the run between
//! running, paused and aborted. The engine watches the state; abort always wins over pause.

use crate::gate::{GateTracker, signal_name, trackers_for};
use crate::playbook::{Decision, Playbook, ProbeWhen, Signal};
use crate::probe::{ProbeContext, ProbeRunner};
use crate::vocab::{EventSink, GateDecision, ProbeOutcome, RunEvent, Step, when_name};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::watch;

/// The `signal` of a pause the operator asked for (`rollgate pause`).
pub const OPERATOR: &str = "operator";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthState {
    Running,
    Paused(GateDecision),
    Aborted(GateDecision),
}

pub struct Guard {
    state: watch::Sender<HealthState>,
    trackers: Mutex<Vec<GateTracker>>,
    in_flight: Mutex<BTreeMap<String, Step>>,
    /// Nodes that failed in this run: their failure is counted by the failure budget, so their
    /// state (and their pods') no longer goes to the gates.
    failed: Mutex<BTreeSet<String>>,
    sink: EventSink,
    probes: Option<(Arc<Playbook>, Arc<ProbeRunner>)>,
    run_id: String,
    resumes: AtomicU64,
}

impl Guard {
    /// `signals` are the signals this run produces (defaults are added for those without a gate).
    pub fn new(
        playbook: Arc<Playbook>,
        runner: Option<Arc<ProbeRunner>>,
        signals: &[Signal],
        sink: EventSink,
        run_id: &str,
    ) -> Arc<Self> {
        let mut all: Vec<Signal> = signals.to_vec();
        all.extend(
            playbook
                .probes
                .iter()
                .map(|p| Signal::Probe(p.name.clone())),
        );
        let trackers = trackers_for(&playbook.gates, &all);
        let (state, _) = watch::channel(HealthState::Running);
        Arc::new(Self {
            state,
            trackers: Mutex::new(trackers),
            in_flight: Mutex::default(),
            failed: Mutex::default(),
            sink,
            probes: runner.map(|r| (playbook, r)),
            run_id: run_id.into(),
            resumes: AtomicU64::new(0),
        })
    }

    pub fn subscribe(&self) -> watch::Receiver<HealthState> {
        self.state.subscribe()
    }

    pub fn state(&self) -> HealthState {
        self.state.borrow().clone()
    }

    pub fn aborted(&self) -> Option<GateDecision> {
        match &*self.state.borrow() {
            HealthState::Aborted(d) => Some(d.clone()),
            _ => None,
        }
    }

    pub fn set_step(&self, node: &str, step: Option<Step>) {
        let mut f = self.in_flight.lock().expect("lock");
        match step {
            Some(s) => f.insert(node.to_owned(), s),
            None => f.remove(node),
        };
    }

    /// The node failed: from now on it is exempt like a node in flight, for the rest of the run
    /// (its failure is already counted by the failure budget; a NotReady node or its broken
    /// pods must not also trip the `nodes`/`pods` gates). It leaves the nodes in flight only
    /// after it is marked failed, so the monitor never sees it unexempt in between.
    pub fn node_failed(&self, node: &str) {
        self.failed.lock().expect("lock").insert(node.to_owned());
        self.set_step(node, None);
    }

    /// Every node in flight, whatever its step: a node's own readiness is watched by its step
    /// (wait-ready, and uncordon and settle wait for a node that went down again).
    pub fn nodes_in_flight(&self) -> BTreeSet<String> {
        self.in_flight
            .lock()
            .expect("lock")
            .keys()
            .cloned()
            .collect()
    }

    /// Nodes whose pods are expected to be disrupted: the ones down for their upgrade now
    /// (cordon to wait-ready; once uncordoned, during settle and its soak, a node is watched
    /// again), and the ones that failed in this run.
    pub fn exempt_nodes(&self) -> BTreeSet<String> {
        let mut exempt: BTreeSet<String> = self
            .in_flight
            .lock()
            .expect("lock")
            .iter()
            .filter(|(_, step)| step.traits().takes_node_down)
            .map(|(node, _)| node.clone())
            .collect();
        exempt.extend(self.failed.lock().expect("lock").iter().cloned());
        exempt
    }

    /// How many times the run was resumed so far.
    pub fn resumes(&self) -> u64 {
        self.resumes.load(Ordering::SeqCst)
    }

    /// Feeds a signal's result through its gates; returns the decision taken, if any.
    pub fn report(&self, signal: &Signal, outcome: ProbeOutcome) -> Option<Decision> {
        let name = signal_name(signal);
        let decision = {
            let mut trackers = self.trackers.lock().expect("lock");
            trackers
                .iter_mut()
                .filter(|t| &t.gate.signal == signal)
                .filter_map(|t| t.record(&outcome))
                .max_by_key(|d| severity(*d))
        };
        let decision = decision?;
        let evidence = match &outcome {
            ProbeOutcome::Fail(e) => e.clone(),
            ProbeOutcome::Inconclusive(e) => format!("inconclusive: {e}"),
            ProbeOutcome::Pass => String::new(),
        };
        let in_flight: Vec<(String, Step)> = self
            .in_flight
            .lock()
            .expect("lock")
            .iter()
            .map(|(n, s)| (n.clone(), *s))
            .collect();
        let d = GateDecision {
            decision,
            signal: name,
            evidence,
            in_flight,
        };
        self.sink.emit(RunEvent::GateDecision {
            decision: d.clone(),
        });
        match decision {
            Decision::Warn => {}
            Decision::Pause => {
                self.state.send_if_modified(|s| {
                    if *s == HealthState::Running {
                        *s = HealthState::Paused(d.clone());
                        true
                    } else {
                        false
                    }
                });
            }
            Decision::Abort => {
                self.state.send_if_modified(|s| {
                    if matches!(s, HealthState::Aborted(_)) {
                        false
                    } else {
                        *s = HealthState::Aborted(d.clone());
                        true
                    }
                });
            }
        }
        Some(decision)
    }

    /// The operator pauses the run (`rollgate pause`): recorded like a gate's pause, with
    /// `operator` as the signal. Returns false if the run was not running (already paused or
    /// aborted).
    pub fn pause_by_operator(&self, reason: &str) -> bool {
        let d = GateDecision {
            decision: Decision::Pause,
            signal: OPERATOR.into(),
            evidence: reason.to_owned(),
            in_flight: self
                .in_flight
                .lock()
                .expect("lock")
                .iter()
                .map(|(n, s)| (n.clone(), *s))
                .collect(),
        };
        let paused = self.state.send_if_modified(|s| {
            if *s == HealthState::Running {
                *s = HealthState::Paused(d.clone());
                true
            } else {
                false
            }
        });
        if paused {
            self.sink.emit(RunEvent::GateDecision { decision: d });
        }
        paused
    }

    /// Continues a paused run (the operator's decision); gate counters start over.
    pub fn resume(&self) -> bool {
        let resumed = self.state.send_if_modified(|s| {
            if matches!(s, HealthState::Paused(_)) {
                *s = HealthState::Running;
                true
            } else {
                false
            }
        });
        if resumed {
            self.resumes.fetch_add(1, Ordering::SeqCst);
            self.trackers
                .lock()
                .expect("lock")
                .iter_mut()
                .for_each(GateTracker::reset);
            self.sink.emit(RunEvent::Resumed);
        }
        resumed
    }

    /// Runs the playbook's probes for this moment, reporting each result. Probes run one after
    /// another (they may create VMs; no need to pile them up).
    pub async fn run_probes(&self, when: ProbeWhen, node: Option<&str>, phase: Option<&str>) {
        let Some((playbook, runner)) = &self.probes else {
            return;
        };
        for probe in playbook.probes.iter().filter(|p| p.when.contains(&when)) {
            self.run_probe(runner, probe, when, node, phase).await;
        }
    }

    /// Runs one probe and reports its result.
    pub async fn run_probe(
        &self,
        runner: &ProbeRunner,
        probe: &crate::playbook::Probe,
        when: ProbeWhen,
        node: Option<&str>,
        phase: Option<&str>,
    ) -> ProbeOutcome {
        let ctx = ProbeContext {
            when,
            node: node.map(str::to_owned),
            phase: phase.map(str::to_owned),
            run_id: self.run_id.clone(),
        };
        let started = Instant::now();
        let outcome = runner.run(probe, &ctx).await;
        self.sink.emit(RunEvent::ProbeResult {
            probe: probe.name.clone(),
            when: when_name(when).into(),
            node: node.map(str::to_owned),
            outcome: outcome.clone(),
            elapsed_ms: started.elapsed().as_millis() as u64,
        });
        self.report(&Signal::Probe(probe.name.clone()), outcome.clone());
        outcome
    }

    /// The probes that run periodically, with their intervals.
    pub fn periodic_probes(&self) -> Vec<crate::playbook::Probe> {
        self.probes
            .as_ref()
            .map(|(pb, _)| {
                pb.probes
                    .iter()
                    .filter(|p| p.when.contains(&ProbeWhen::Periodic))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn probe_runner(&self) -> Option<Arc<ProbeRunner>> {
        self.probes.as_ref().map(|(_, r)| Arc::clone(r))
    }
}

fn severity(d: Decision) -> u8 {
    match d {
        Decision::Warn => 0,
        Decision::Pause => 1,
        Decision::Abort => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> Arc<Guard> {
        let playbook = crate::playbook::parse(
            std::path::Path::new("t.toml"),
            "name = \"t\"\n[[phase]]\nname = \"p\"\nnodes = [\"a\"]\n[command]\nrun = \"true\"\n",
        )
        .unwrap();
        let (sink, _rx) = EventSink::channel();
        Guard::new(Arc::new(playbook), None, &[Signal::Pods], sink, "run")
    }

    #[test]
    fn a_node_is_exempt_only_while_it_is_down_for_its_upgrade() {
        let g = guard();
        for step in Step::ALL {
            g.set_step("n1", Some(step));
            let exempt = g.exempt_nodes().contains("n1");
            let down = !matches!(step, Step::Uncordon | Step::Settle);
            assert_eq!(exempt, down, "{step}");
        }
        g.set_step("n1", None);
        assert!(g.exempt_nodes().is_empty());
    }

    #[test]
    fn resuming_counts_resumes() {
        let g = guard();
        assert!(g.pause_by_operator("look"));
        assert_eq!(g.resumes(), 0);
        assert!(g.resume());
        assert!(!g.resume(), "not paused any more");
        assert_eq!(g.resumes(), 1);
    }
}
