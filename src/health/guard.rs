//! The async shell around the run's [`Health`]: it feeds the state machine from the monitor,
//! the probes, the engine and the operator, records its decisions as events, publishes the
//! run's state on a watch channel (the engine obeys it), and runs the probes the
//! [`ProbeSchedule`] says are due.

use super::{Health, HealthState, Input, Moment, Output, ProbeSchedule};
use crate::playbook::{Gate, MonitorOptions, Playbook, Probe, ProbeWhen, Signal};
use crate::probe::{ProbeContext, ProbeRunner};
use crate::vocab::{EventSink, GateDecision, ProbeOutcome, RunEvent, Step, when_name};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The signals the health monitor produces with these options (probes add their own).
pub fn monitor_signals(monitor: &MonitorOptions) -> Vec<Signal> {
    let mut s = vec![Signal::Pods, Signal::Nodes];
    if monitor.ping.is_some() {
        s.push(Signal::Pings);
    }
    s
}

pub struct Guard {
    health: Mutex<Health>,
    state: watch::Sender<HealthState>,
    sink: EventSink,
    schedule: ProbeSchedule,
    runner: Option<Arc<ProbeRunner>>,
    run_id: String,
}

impl Guard {
    /// `signals` are the signals the monitor produces (each probe adds its own); signals without
    /// a gate in `gates` get a default one. Without a `runner`, no probe runs.
    pub fn new(
        gates: &[Gate],
        probes: &[Probe],
        runner: Option<Arc<ProbeRunner>>,
        signals: &[Signal],
        sink: EventSink,
        run_id: &str,
    ) -> Arc<Self> {
        let schedule = ProbeSchedule::new(probes);
        let mut all: Vec<Signal> = signals.to_vec();
        all.extend(schedule.signals());
        let (state, _) = watch::channel(HealthState::Running);
        Arc::new(Self {
            health: Mutex::new(Health::new(gates, &all)),
            state,
            sink,
            schedule,
            runner,
            run_id: run_id.into(),
        })
    }

    /// The guard of a run of `playbook`: its gates, its probes, its monitor's signals.
    pub fn for_playbook(
        playbook: &Playbook,
        runner: Option<Arc<ProbeRunner>>,
        sink: EventSink,
        run_id: &str,
    ) -> Arc<Self> {
        Self::new(
            &playbook.gates,
            &playbook.probes,
            runner,
            &monitor_signals(&playbook.monitor),
            sink,
            run_id,
        )
    }

    /// A guard without gates or probes: nothing ever pauses or aborts the run; it only keeps
    /// the nodes in flight (for an engine run without health gating).
    pub fn unguarded(sink: EventSink) -> Arc<Self> {
        Self::new(&[], &[], None, &[], sink, "")
    }

    /// Applies one input and carries out its outputs in order, under the lock, so the events
    /// and the published state follow the order of the decisions.
    fn apply(&self, input: Input) -> Vec<Output> {
        let mut health = self.health.lock().expect("lock");
        let outputs = health.apply(input);
        for output in &outputs {
            match output {
                Output::Decided(d) => self.sink.emit(RunEvent::GateDecision {
                    decision: d.clone(),
                }),
                Output::State(s) => {
                    self.state.send_replace(s.clone());
                }
                Output::Resumed(by) => self.sink.emit(RunEvent::Resumed { by: by.clone() }),
            }
        }
        outputs
    }

    fn read<T>(&self, f: impl FnOnce(&Health) -> T) -> T {
        f(&self.health.lock().expect("lock"))
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

    /// The node enters `step`, or (None) its steps are over: it is watched like any other.
    pub fn set_step(&self, node: &str, step: Option<Step>) {
        self.apply(match step {
            Some(s) => Input::Step(node.to_owned(), s),
            None => Input::Left(node.to_owned()),
        });
    }

    /// A node in flight is down again after its wait-ready (`true`, e.g. it rebooted during
    /// settle) or up again: while down, it is treated as down for its upgrade.
    pub fn held_down(&self, node: &str, down: bool) {
        self.apply(Input::DownAgain(node.to_owned(), down));
    }

    /// The node failed where it stays cordoned: from now on it is exempt like a node down for
    /// its upgrade, for the rest of the run (its failure is already counted by the failure
    /// budget; a NotReady node or its broken pods must not also trip the `nodes`/`pods` gates).
    pub fn node_failed(&self, node: &str) {
        self.apply(Input::Failed(node.to_owned()));
    }

    /// The engine collected the node's task: the node is forgotten.
    pub fn collected(&self, node: &str) {
        self.apply(Input::Collected(node.to_owned()));
    }

    /// The step the node entered last, until the engine collects it (also once done or failed).
    pub fn step_of(&self, node: &str) -> Option<Step> {
        self.read(|h| h.in_flight().step_of(node))
    }

    /// Every node the engine has not collected yet, by name, with the step it entered last.
    pub fn tracked(&self) -> Vec<(String, Step)> {
        self.read(|h| h.in_flight().all())
    }

    /// Every node in flight, whatever its step: a node's own readiness is watched by its step
    /// (wait-ready, and uncordon and settle wait for a node that went down again).
    pub fn nodes_in_flight(&self) -> BTreeSet<String> {
        self.read(|h| h.in_flight().nodes())
    }

    /// Nodes whose pods are expected to be disrupted: the ones down for their upgrade now
    /// (cordon to wait-ready, or down again after it; once uncordoned, during settle and its
    /// soak, a node is watched again), and the ones that failed in this run and stay cordoned.
    pub fn exempt_nodes(&self) -> BTreeSet<String> {
        self.read(Health::exempt_nodes)
    }

    /// How many times the run was resumed so far.
    pub fn resumes(&self) -> u64 {
        self.read(Health::resumes)
    }

    /// Feeds a signal's result through its gates; returns the decision taken, if any.
    pub fn report(&self, signal: &Signal, outcome: ProbeOutcome) -> Option<crate::vocab::Decision> {
        self.apply(Input::Result(signal.clone(), outcome))
            .into_iter()
            .find_map(|o| match o {
                Output::Decided(d) => Some(d.decision),
                _ => None,
            })
    }

    /// The operator pauses the run (`rollgate pause`): recorded like a gate's pause, with
    /// `operator` as the signal. Returns false if the run was not running (already paused or
    /// aborted).
    pub fn pause_by_operator(&self, reason: &str) -> bool {
        !self.apply(Input::Pause(reason.to_owned())).is_empty()
    }

    /// Continues a paused run (the operator's decision); gate counters start over.
    pub fn resume(&self) -> bool {
        self.resume_by(None)
    }

    /// [`Guard::resume`], recording who resumed it.
    pub fn resume_by(&self, by: Option<String>) -> bool {
        !self.apply(Input::Resume(by)).is_empty()
    }

    /// The operator aborts the run (recorded as a decision by `operator` with `reason`): no new
    /// node starts, nodes in flight stop at their next safe point. False if already aborted.
    pub fn abort_by_operator(&self, reason: &str) -> bool {
        !self.apply(Input::Abort(reason.to_owned())).is_empty()
    }

    /// Runs the before-run probes; the run may start only if, then, nothing paused or aborted
    /// it (a probe, or the monitor already watching).
    pub async fn before_run(&self) -> Result<(), GateDecision> {
        self.run_probes(Moment::BeforeRun, None, None).await;
        match self.state() {
            HealthState::Aborted(d) | HealthState::Paused(d) => Err(d),
            HealthState::Running => Ok(()),
        }
    }

    /// Runs the probes due once the node finished `step` (per the step table).
    pub async fn after_step(&self, step: Step, node: &str, phase: &str) {
        self.run_probes(Moment::AfterStep(step), Some(node), Some(phase))
            .await;
    }

    /// Runs the probes due after a wave of `phase`.
    pub async fn after_wave(&self, phase: &str) {
        self.run_probes(Moment::AfterWave, None, Some(phase)).await;
    }

    /// Runs the probes due at `moment`, reporting each result. Probes run one after another
    /// (they may create VMs; no need to pile them up).
    pub async fn run_probes(&self, moment: Moment, node: Option<&str>, phase: Option<&str>) {
        let Some(when) = moment.when() else { return };
        if self.runner.is_none() {
            return;
        }
        for probe in self.schedule.due(moment) {
            self.run_probe(probe, when, node, phase).await;
        }
    }

    /// Runs one probe and reports its result (inconclusive without a probe runner).
    pub async fn run_probe(
        &self,
        probe: &Probe,
        when: ProbeWhen,
        node: Option<&str>,
        phase: Option<&str>,
    ) -> ProbeOutcome {
        let Some(runner) = &self.runner else {
            return ProbeOutcome::Inconclusive("no probe runner".into());
        };
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

    /// The probes that run periodically, with their intervals (none without a probe runner).
    pub fn periodic_probes(&self) -> Vec<(Probe, Duration)> {
        if self.runner.is_none() {
            return vec![];
        }
        self.schedule.periodic()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> Arc<Guard> {
        let (sink, _rx) = EventSink::channel();
        Guard::new(&[], &[], None, &[Signal::Pods], sink, "run")
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

    #[test]
    fn decisions_are_recorded_before_the_state_they_cause_and_published_on_the_watch() {
        let (sink, mut rx) = EventSink::channel();
        let g = Guard::new(&[], &[], None, &[Signal::Pods], sink, "run");
        let state = g.subscribe();
        g.set_step("n1", Some(Step::Drain));
        let fail = ProbeOutcome::Fail("web crash-looping".into());
        assert_eq!(
            g.report(&Signal::Pods, fail),
            Some(crate::vocab::Decision::Abort)
        );
        assert!(state.has_changed().unwrap());
        let Some(d) = g.aborted() else {
            panic!("aborted")
        };
        assert_eq!(d.in_flight, [("n1".to_owned(), Step::Drain)]);
        assert!(matches!(
            rx.try_recv().unwrap().event,
            RunEvent::GateDecision { .. }
        ));
        assert!(!g.pause_by_operator("too late"), "abort wins over pause");
        assert!(rx.try_recv().is_err(), "nothing more recorded");
    }
}
