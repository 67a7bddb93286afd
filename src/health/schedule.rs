//! When probes run, decided in one place: before the run, after the steps the step table says
//! ([`crate::vocab::StepTraits::probes_after`]), after each wave, and periodically (each on its
//! own interval). Pure: the shell ([`super::Guard`]) runs what is due.

use crate::playbook::{Probe, ProbeWhen, Signal};
use crate::vocab::Step;
use std::time::Duration;

/// How often a periodic probe without an `interval` runs.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);

/// A moment of the run at which probes may be due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moment {
    BeforeRun,
    AfterStep(Step),
    AfterWave,
    Periodic,
}

impl Moment {
    /// The playbook's name for this moment (`when = [...]`), if probes can run at it.
    pub fn when(self) -> Option<ProbeWhen> {
        match self {
            Moment::BeforeRun => Some(ProbeWhen::BeforeRun),
            Moment::AfterStep(step) => step.traits().probes_after,
            Moment::AfterWave => Some(ProbeWhen::AfterWave),
            Moment::Periodic => Some(ProbeWhen::Periodic),
        }
    }
}

/// The playbook's probes and when each runs.
#[derive(Debug, Clone, Default)]
pub struct ProbeSchedule {
    probes: Vec<Probe>,
}

impl ProbeSchedule {
    pub fn new(probes: &[Probe]) -> Self {
        Self {
            probes: probes.to_vec(),
        }
    }

    /// The probes due at `moment`, in the playbook's order (they run one after another).
    pub fn due(&self, moment: Moment) -> Vec<&Probe> {
        let Some(when) = moment.when() else {
            return vec![];
        };
        self.probes
            .iter()
            .filter(|p| p.when.contains(&when))
            .collect()
    }

    /// The periodic probes, with their intervals.
    pub fn periodic(&self) -> Vec<(Probe, Duration)> {
        self.due(Moment::Periodic)
            .into_iter()
            .map(|p| (p.clone(), p.interval.unwrap_or(DEFAULT_INTERVAL)))
            .collect()
    }

    /// The signal of each probe (each has a gate: the playbook's, or a default one).
    pub fn signals(&self) -> impl Iterator<Item = Signal> + '_ {
        self.probes.iter().map(|p| Signal::Probe(p.name.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::playbook::ProbeKind;

    fn probe(name: &str, when: &[ProbeWhen], interval: Option<u64>) -> Probe {
        Probe {
            name: name.into(),
            kind: ProbeKind::Command {
                argv: vec!["true".into()],
            },
            timeout: Duration::from_secs(1),
            retries: 0,
            when: when.to_vec(),
            interval: interval.map(Duration::from_secs),
        }
    }

    #[test]
    fn probes_run_at_their_moments_and_after_the_steps_the_step_table_says() {
        use ProbeWhen::*;
        let schedule = ProbeSchedule::new(&[
            probe("vm", &[BeforeRun, AfterCommand, AfterWave], None),
            probe("http", &[AfterDrain, AfterUncordon, Periodic], Some(5)),
            probe("alerts", &[Periodic], None),
        ]);
        let due = |m| -> Vec<String> {
            schedule
                .due(m)
                .into_iter()
                .map(|p| p.name.clone())
                .collect()
        };
        let cases: Vec<(Moment, &[&str])> = vec![
            (Moment::BeforeRun, &["vm"]),
            (Moment::AfterStep(Step::Cordon), &[]),
            (Moment::AfterStep(Step::Drain), &["http"]),
            (Moment::AfterStep(Step::Command), &["vm"]),
            (Moment::AfterStep(Step::WaitReady), &[]),
            (Moment::AfterStep(Step::Uncordon), &["http"]),
            (Moment::AfterStep(Step::Settle), &[]),
            (Moment::AfterWave, &["vm"]),
            (Moment::Periodic, &["http", "alerts"]),
        ];
        for (moment, want) in cases {
            assert_eq!(due(moment), want, "{moment:?}");
        }
        let periodic: Vec<(String, Duration)> = schedule
            .periodic()
            .into_iter()
            .map(|(p, every)| (p.name, every))
            .collect();
        assert_eq!(
            periodic,
            [
                ("http".to_owned(), Duration::from_secs(5)),
                ("alerts".to_owned(), DEFAULT_INTERVAL)
            ]
        );
        assert_eq!(schedule.signals().count(), 3);
    }
}
