//! The nodes in flight and the step each is in: kept once, in the run's health state
//! ([`super::Health`]); the engine, the monitor and the gate decisions read it. The metrics
//! keep the same model, fed from the events they consume.
//!
//! A node enters when it starts its first step and is forgotten when the engine has collected
//! its task's result. In between, it may have *left*: its steps are over (done, or failed), so
//! the health monitor watches it again (or, failed and cordoned, exempts it for good), while
//! the engine still knows which step it was in.

use crate::vocab::Step;
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    step: Step,
    /// Down again after its wait-ready (NotReady or rebooting during uncordon or settle): to
    /// the health monitor it is down for its upgrade, as during wait-ready.
    down_again: bool,
    /// Its steps are over: not in flight to the health monitor any more.
    left: bool,
}

/// Node name -> the step it is in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InFlight {
    nodes: BTreeMap<String, Entry>,
}

impl InFlight {
    /// The node enters `step`; returns the step it was in before, if any.
    pub fn enter(&mut self, node: &str, step: Step) -> Option<Step> {
        self.nodes
            .insert(
                node.to_owned(),
                Entry {
                    step,
                    down_again: false,
                    left: false,
                },
            )
            .map(|e| e.step)
    }

    /// The node's steps are over: it is no longer in flight to the health monitor.
    pub fn leave(&mut self, node: &str) {
        if let Some(e) = self.nodes.get_mut(node) {
            e.left = true;
        }
    }

    /// The node went down again after its wait-ready (`true`) or is back up (`false`).
    pub fn down_again(&mut self, node: &str, down: bool) {
        if let Some(e) = self.nodes.get_mut(node).filter(|e| !e.left) {
            e.down_again = down;
        }
    }

    /// Forgets the node; returns the step it was in.
    pub fn remove(&mut self, node: &str) -> Option<Step> {
        self.nodes.remove(node).map(|e| e.step)
    }

    /// The step the node entered last, even if its steps are over (until it is removed).
    pub fn step_of(&self, node: &str) -> Option<Step> {
        self.nodes.get(node).map(|e| e.step)
    }

    /// Every node not removed yet, by name, with the step it entered last.
    pub fn all(&self) -> Vec<(String, Step)> {
        self.nodes
            .iter()
            .map(|(n, e)| (n.clone(), e.step))
            .collect()
    }

    fn active(&self) -> impl Iterator<Item = (&String, &Entry)> {
        self.nodes.iter().filter(|(_, e)| !e.left)
    }

    /// The nodes in flight, whatever their step.
    pub fn nodes(&self) -> BTreeSet<String> {
        self.active().map(|(n, _)| n.clone()).collect()
    }

    /// The nodes in flight that are out of service now: in a step that takes the node down
    /// (cordon to wait-ready), or down again after it.
    pub fn down(&self) -> BTreeSet<String> {
        self.active()
            .filter(|(_, e)| e.down_again || e.step.traits().takes_node_down)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// The nodes in flight with their step as the health monitor sees it (a node down again
    /// shows as waiting for Ready), for gate decisions.
    pub fn listed(&self) -> Vec<(String, Step)> {
        self.active()
            .map(|(n, e)| {
                let step = if e.down_again {
                    Step::WaitReady
                } else {
                    e.step
                };
                (n.clone(), step)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_down_only_while_its_step_takes_it_down_or_it_went_down_again() {
        let mut f = InFlight::default();
        for step in Step::ALL {
            f.enter("n1", step);
            let down = !matches!(step, Step::Uncordon | Step::Settle);
            assert_eq!(f.down().contains("n1"), down, "{step}");
            f.down_again("n1", true);
            assert!(f.down().contains("n1"), "{step}, down again");
            assert_eq!(f.listed(), [("n1".to_owned(), Step::WaitReady)]);
            f.down_again("n1", false);
            assert_eq!(f.listed(), [("n1".to_owned(), step)]);
        }
        // Entering the next step starts from up.
        f.down_again("n1", true);
        f.enter("n1", Step::Settle);
        assert!(f.down().is_empty());
    }

    #[test]
    fn a_node_that_left_is_not_in_flight_but_its_step_is_known_until_removed() {
        let mut f = InFlight::default();
        assert_eq!(f.enter("a", Step::Cordon), None);
        assert_eq!(f.enter("a", Step::Drain), Some(Step::Cordon));
        f.enter("b", Step::Settle);
        f.leave("a");
        f.down_again("a", true); // ignored: its steps are over
        assert_eq!(f.nodes(), ["b".to_owned()].into());
        assert!(f.down().is_empty());
        assert_eq!(f.listed(), [("b".to_owned(), Step::Settle)]);
        assert_eq!(f.step_of("a"), Some(Step::Drain));
        assert_eq!(
            f.all(),
            [
                ("a".to_owned(), Step::Drain),
                ("b".to_owned(), Step::Settle)
            ]
        );
        assert_eq!(f.remove("a"), Some(Step::Drain));
        assert_eq!(f.step_of("a"), None);
    }
}
