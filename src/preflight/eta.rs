//! How long the run will take, from how long each step took in earlier runs of the same
//! playbook (their journals in the state directory): p50 and p95 per step, the expected
//! duration per wave (rounds of `concurrency` nodes) and for the run, and whether it fits the
//! maintenance window and the deadline. Without history, [`DEFAULT_STEP_SECS`] apply.
//! [`node_estimate`] is the same figure for one node, handed to a run whose window has
//! `finish-by-end` (`finish_by`: the forecast's verdicts about it).

use super::{Check, Finding, Severity};
use crate::plan::Plan;
use crate::vocab::Step;
use jiff::Timestamp;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

mod finish_by;

/// A step's typical duration (p50) when no earlier run of the playbook says otherwise, in
/// seconds; the p95 is twice that. Settle adds the playbook's `settle.soak`.
pub const DEFAULT_STEP_SECS: [(Step, u64); 6] = [
    (Step::Cordon, 1),
    (Step::Drain, 60),
    (Step::Command, 300),
    (Step::WaitReady, 60),
    (Step::Uncordon, 1),
    (Step::Settle, 10),
];

/// A step's durations: the median and the 95th percentile, and how many samples say so (0:
/// the default).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct StepTime {
    pub p50_secs: f64,
    pub p95_secs: f64,
    pub samples: usize,
}

/// The p-th percentile (nearest rank) of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Per-step times from samples (step, seconds); steps without samples get the default.
pub fn step_times(
    samples: impl IntoIterator<Item = (Step, f64)>,
    soak: Duration,
) -> BTreeMap<String, StepTime> {
    let mut by_step: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    for (step, secs) in samples {
        by_step.entry(step.name()).or_default().push(secs);
    }
    DEFAULT_STEP_SECS
        .iter()
        .map(|(step, default)| {
            let time = match by_step.get_mut(step.name()) {
                Some(v) if !v.is_empty() => {
                    v.sort_by(f64::total_cmp);
                    StepTime {
                        p50_secs: percentile(v, 50.0),
                        p95_secs: percentile(v, 95.0),
                        samples: v.len(),
                    }
                }
                _ => {
                    let extra = if *step == Step::Settle {
                        soak.as_secs_f64()
                    } else {
                        0.0
                    };
                    StepTime {
                        p50_secs: *default as f64 + extra,
                        p95_secs: 2.0 * *default as f64 + extra,
                        samples: 0,
                    }
                }
            };
            (step.name().to_owned(), time)
        })
        .collect()
}

/// Step durations of earlier real runs of `playbook` in the state directory: (step, seconds)
/// samples, and how many runs gave some.
pub fn history(
    runs: &crate::driver::state_dir::RunsDir,
    playbook: &str,
) -> (Vec<(Step, f64)>, usize) {
    let mut samples = Vec::new();
    let mut from_runs = 0;
    for (_, dir) in runs.list() {
        let Ok(records) = crate::journal::Records::read(&dir.journal()) else {
            continue;
        };
        let Some(header) = &records.header else {
            continue;
        };
        if header.playbook != playbook || header.dry_run {
            continue;
        }
        let before = samples.len();
        for r in &records.records {
            if let crate::vocab::RunEvent::StepFinished {
                step, elapsed_ms, ..
            } = &r.event
            {
                samples.push((*step, *elapsed_ms as f64 / 1000.0));
            }
        }
        if samples.len() > before {
            from_runs += 1;
        }
    }
    (samples, from_runs)
}

/// One node's expected durations (p50, p95): each step's, summed.
fn per_node(steps: &BTreeMap<String, StepTime>) -> (f64, f64) {
    (
        steps.values().map(|s| s.p50_secs).sum(),
        steps.values().map(|s| s.p95_secs).sum(),
    )
}

/// A node's slow-case duration for `[window] finish-by-end`, from the same history and
/// defaults as the forecast; computed once when a run starts.
pub fn node_estimate(
    runs: &crate::driver::state_dir::RunsDir,
    playbook: &crate::playbook::Playbook,
) -> crate::window::NodeEstimate {
    let (samples, from_runs) = history(runs, &playbook.name);
    let (_, p95) = per_node(&step_times(samples, playbook.settle.soak));
    crate::window::NodeEstimate {
        p95: Duration::from_secs_f64(p95),
        from_runs,
    }
}

/// One wave's expected duration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WaveEta {
    pub phase: String,
    pub wave: Option<String>,
    pub nodes: usize,
    /// Rounds of `concurrency` nodes.
    pub rounds: usize,
    pub p50_secs: f64,
    pub p95_secs: f64,
}

/// The forecast for the run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Forecast {
    pub steps: BTreeMap<String, StepTime>,
    /// Earlier runs of this playbook the step times come from.
    pub history_runs: usize,
    pub per_node_p50_secs: f64,
    pub per_node_p95_secs: f64,
    pub waves: Vec<WaveEta>,
    pub p50_secs: f64,
    pub p95_secs: f64,
    /// When the first node can start (now, or the window's next opening), RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub starts_at: Option<String>,
    /// How long the window stays open from then (None without a window).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_open_secs: Option<u64>,
    /// Whether the run has a maintenance window.
    pub window_set: bool,
    /// How long until the deadline from then (None without one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline_secs: Option<u64>,
    /// `[window] finish-by-end`: a node starts only while its p95 fits before the close.
    pub finish_by_end: bool,
    /// With finish-by-end: the window after this one, for a node that does not fit in what is
    /// left of this one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_window: Option<NextWindow>,
}

/// When a window opens (RFC 3339) and how long it stays open.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NextWindow {
    pub opens_at: String,
    pub open_secs: u64,
}

impl Forecast {
    pub fn new(steps: BTreeMap<String, StepTime>, history_runs: usize, plan: &Plan) -> Self {
        let (per_node_p50_secs, per_node_p95_secs) = per_node(&steps);
        let mut waves = Vec::new();
        for phase in &plan.phases {
            for wave in &phase.waves {
                let rounds = wave.nodes.len().div_ceil(phase.concurrency.max(1));
                waves.push(WaveEta {
                    phase: phase.name.clone(),
                    wave: wave.label.clone(),
                    nodes: wave.nodes.len(),
                    rounds,
                    p50_secs: per_node_p50_secs * rounds as f64,
                    p95_secs: per_node_p95_secs * rounds as f64,
                });
            }
        }
        Self {
            p50_secs: waves.iter().map(|w| w.p50_secs).sum(),
            p95_secs: waves.iter().map(|w| w.p95_secs).sum(),
            steps,
            history_runs,
            per_node_p50_secs,
            per_node_p95_secs,
            waves,
            starts_at: None,
            window_set: false,
            window_open_secs: None,
            deadline_secs: None,
            finish_by_end: false,
            next_window: None,
        }
    }

    /// Places the run in time: when it can start, how long its window and deadline give it.
    pub fn scheduled(
        mut self,
        now: Timestamp,
        window: Option<&crate::window::Window>,
        deadline: Option<Timestamp>,
    ) -> Self {
        let start = window.map_or(Some(now), |w| w.next_open(now));
        self.window_set = window.is_some();
        self.starts_at = start.map(|s| s.to_string());
        if let (Some(w), Some(start)) = (window, start) {
            let open = open_for(w, start);
            self.window_open_secs = Some(open.as_secs());
            self.finish_by_end = w.finish_by_end;
            if w.finish_by_end
                && let Some(next) = w.next_open(start + open)
            {
                self.next_window = Some(NextWindow {
                    opens_at: next.to_string(),
                    open_secs: open_for(w, next).as_secs(),
                });
            }
        }
        if let Some(d) = deadline {
            let from = start.unwrap_or(now);
            self.deadline_secs = Some(d.duration_since(from).as_secs().max(0) as u64);
        }
        self
    }

    /// Whether the run fits its window and deadline: a blocker when even the typical (p50)
    /// duration does not, a warning when the slow (p95) one does not.
    pub fn findings(&self, outside: Option<crate::window::OutsideWindow>) -> Vec<Finding> {
        let mut out = Vec::new();
        if self.window_set && self.starts_at.is_none() {
            out.push(
                Finding::new(
                    Check::Eta,
                    Severity::Blocker,
                    "the maintenance window does not open within a year: no node would start",
                )
                .fix("check the window's days, times, cron and time zone (`rollgate check` shows it)"),
            );
        }
        let mut judge = |limit: u64, what: &str, consequence: &str, worst: Severity| {
            let limit = limit as f64;
            let (severity, which, secs) = if self.p50_secs > limit {
                (worst, "typically (p50)", self.p50_secs)
            } else if self.p95_secs > limit {
                (Severity::Warning, "when slow (p95)", self.p95_secs)
            } else {
                return;
            };
            out.push(
                Finding::new(
                    Check::Eta,
                    severity,
                    format!(
                        "the run takes {} {which}, longer than {what} ({}): {consequence}",
                        human(secs),
                        human(limit)
                    ),
                )
                .fix("raise the phases' concurrency, run fewer nodes, widen the window or move the deadline; or --ignore-preflight eta"),
            );
        };
        if let Some(open) = self.window_open_secs {
            // Waiting for the next window is what `outside = "wait"` is for: slow, not blocked.
            let (consequence, worst) = match (outside, self.finish_by_end) {
                (Some(crate::window::OutsideWindow::Exit), false) => (
                    "it stops when the window closes and needs `rollgate resume` in the next one",
                    Severity::Blocker,
                ),
                (Some(crate::window::OutsideWindow::Exit), true) => (
                    "it stops before the first node that would not end before the window closes (finish-by-end) and needs `rollgate resume` in the next one",
                    Severity::Blocker,
                ),
                (_, false) => (
                    "it waits, holding the lock, for the next window",
                    Severity::Warning,
                ),
                (_, true) => (
                    "a node that would not end before the window closes (finish-by-end) waits, holding the lock, for the next window",
                    Severity::Warning,
                ),
            };
            judge(open, "the maintenance window", consequence, worst);
        }
        if let Some(d) = self.deadline_secs {
            judge(
                d,
                "the time to the deadline",
                "nodes left when it passes are not started (resumable)",
                Severity::Blocker,
            );
        }
        out.extend(self.finish_by_end_findings(outside));
        out
    }

    pub fn render(&self) -> String {
        let mut out = format!(
            "  eta: {} typical (p50), {} slow (p95); per node {} / {} (from {})\n",
            human(self.p50_secs),
            human(self.p95_secs),
            human(self.per_node_p50_secs),
            human(self.per_node_p95_secs),
            if self.history_runs == 0 {
                "default step times: no earlier run of this playbook".to_owned()
            } else {
                format!("{} earlier run(s)", self.history_runs)
            }
        );
        for w in &self.waves {
            out.push_str(&format!(
                "       {}{}: {} node(s) in {} round(s): {} / {}\n",
                w.phase,
                w.wave
                    .as_deref()
                    .map(|l| format!(" [{l}]"))
                    .unwrap_or_default(),
                w.nodes,
                w.rounds,
                human(w.p50_secs),
                human(w.p95_secs)
            ));
        }
        if let Some(open) = self.window_open_secs {
            out.push_str(&format!(
                "       window: starts {}, open for {}\n",
                self.starts_at.as_deref().unwrap_or("never within a year"),
                human(open as f64)
            ));
            if self.finish_by_end {
                out.push_str(&format!(
                    "       finish-by-end: a node starts only while its p95 ({}) is left before the close\n",
                    human(self.per_node_p95_secs)
                ));
            }
        }
        if let Some(d) = self.deadline_secs {
            out.push_str(&format!("       deadline: in {}\n", human(d as f64)));
        }
        out
    }
}

/// How long the window stays open from `start` (8 days for one that does not close).
fn open_for(window: &crate::window::Window, start: Timestamp) -> Duration {
    window
        .closes_at(start)
        .and_then(|end| Duration::try_from(end.duration_since(start)).ok())
        .unwrap_or(Duration::from_secs(8 * 24 * 3600))
}

/// `5400` → `1h30m`.
fn human(secs: f64) -> String {
    let s = secs.round() as u64;
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, m, _) => format!("{h}h{m:02}m"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{PhasePlan, Wave};
    use jiff::ToSpan;

    pub(super) fn plan(nodes: usize, concurrency: usize) -> Plan {
        Plan {
            phases: vec![PhasePlan {
                name: "workers".into(),
                concurrency,
                failure_budget: 0,
                waves: vec![Wave {
                    label: None,
                    nodes: (0..nodes).map(|i| format!("n{i}")).collect(),
                }],
            }],
            unselected: vec![],
            skipped: vec![],
            warnings: vec![],
        }
    }

    #[test]
    fn percentiles_come_from_history_and_defaults_fill_the_rest() {
        let samples = (1..=20).map(|i| (Step::Command, i as f64 * 10.0));
        let steps = step_times(samples, Duration::from_secs(30));
        let command = steps["command"];
        assert_eq!((command.p50_secs, command.p95_secs), (100.0, 190.0));
        assert_eq!(command.samples, 20);
        let settle = steps["settle"];
        assert_eq!(
            (settle.p50_secs, settle.p95_secs, settle.samples),
            (40.0, 50.0, 0)
        );
    }

    #[test]
    fn a_short_window_blocks_only_when_the_run_would_exit_and_a_dead_window_blocks() {
        use crate::window::OutsideWindow;
        let mut f = Forecast::new(step_times([], Duration::ZERO), 0, &plan(10, 4));
        f.window_set = true;
        f.starts_at = Some("2026-12-02T22:00:00Z".into());
        f.window_open_secs = Some(600);
        let wait = f.findings(Some(OutsideWindow::Wait));
        assert_eq!(wait[0].severity, Severity::Warning, "{wait:?}");
        let exit = f.findings(Some(OutsideWindow::Exit));
        assert_eq!(exit[0].severity, Severity::Blocker, "{exit:?}");
        f.starts_at = None;
        f.window_open_secs = None;
        let never = f.findings(Some(OutsideWindow::Wait));
        assert!(
            never[0].message.contains("does not open within a year"),
            "{never:?}"
        );
        assert_eq!(never[0].severity, Severity::Blocker);
    }

    #[test]
    fn waves_take_rounds_of_concurrency_and_a_short_deadline_is_found() {
        let steps = step_times([], Duration::ZERO);
        let per_node: f64 = DEFAULT_STEP_SECS.iter().map(|(_, s)| *s as f64).sum();
        let f = Forecast::new(steps, 0, &plan(10, 4));
        assert_eq!(f.waves[0].rounds, 3);
        assert_eq!(f.p50_secs, per_node * 3.0);
        let now: Timestamp = "2026-12-02T18:00:00Z".parse().unwrap();
        // p50 = 3 × 432 s = 21.6 min, p95 = 43.2 min.
        let tight = f.clone().scheduled(now, None, Some(now + 30.minutes()));
        let found = tight.findings(None);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].severity, Severity::Warning);
        let short = f.clone().scheduled(now, None, Some(now + 10.minutes()));
        assert_eq!(short.findings(None)[0].severity, Severity::Blocker);
        let ample = f.scheduled(now, None, Some(now + 2.hours()));
        assert!(ample.findings(None).is_empty());
        assert!(ample.render().contains("default step times"));
    }
}
