//! The monitor's evaluation, proportional to change: at each tick only the pods and nodes that
//! changed since the last one are judged again (the tables' dirty sets), plus the pods whose
//! time came (a deadline queue: `pending-after`, `not-ready-after` or the recovery delay passing,
//! see [`pods::next_due`]) and the pods on nodes that entered or left the exempt set (an index by
//! node). Each pod keeps the problems it was last judged to have; a problem is fresh (reported)
//! when no pod or node had it, by object and kind, before the tick and one has it after, exactly
//! as if the whole cluster were judged each tick with [`pods::new_problems`].

use super::pods::{self, Baseline, Thresholds};
use super::summary::{NodeSummary, PodSummary};
use crate::vocab::{Problem, ProblemKind};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

type Key = (String, ProblemKind);

fn key(p: &Problem) -> Key {
    (p.object.clone(), p.kind)
}

/// What a pod was last judged to have.
#[derive(Debug, Default)]
struct Judged {
    problems: Vec<Key>,
    node: Option<String>,
    due: Option<jiff::Timestamp>,
}

#[derive(Debug)]
pub struct Evaluator {
    baseline: Baseline,
    t: Thresholds,
    pods: HashMap<Arc<str>, Judged>,
    /// Node name -> UIDs of the pods judged on it.
    by_node: HashMap<String, HashSet<Arc<str>>>,
    /// (when, pod UID): pods to judge again at a time, earliest first.
    due: BTreeSet<(jiff::Timestamp, Arc<str>)>,
    /// Node name -> its problems.
    nodes: HashMap<String, Vec<Key>>,
    /// How many pods or nodes have each problem now.
    reported: HashMap<Key, u32>,
    /// The exempt nodes at the last pod evaluation.
    pods_exempt: BTreeSet<String>,
    /// The nodes skipped (exempt or in their own readiness wait) at the last node evaluation.
    nodes_skipped: BTreeSet<String>,
}

/// The problems one tick added or removed.
#[derive(Default)]
struct Tally {
    /// How many had each touched problem before the tick.
    before: HashMap<Key, u32>,
    added: Vec<Problem>,
}

impl Tally {
    fn add(&mut self, reported: &mut HashMap<Key, u32>, p: Problem) {
        let k = key(&p);
        let n = reported.entry(k.clone()).or_default();
        self.before.entry(k).or_insert(*n);
        *n += 1;
        self.added.push(p);
    }

    fn remove(&mut self, reported: &mut HashMap<Key, u32>, k: Key) {
        let n = reported.get(&k).copied().unwrap_or(0);
        self.before.entry(k.clone()).or_insert(n);
        if n <= 1 {
            reported.remove(&k);
        } else {
            reported.insert(k, n - 1);
        }
    }

    /// The problems nobody had before the tick and someone has after it, once each.
    fn fresh(self, reported: &HashMap<Key, u32>) -> Vec<Problem> {
        let mut seen = HashSet::new();
        self.added
            .into_iter()
            .filter(|p| {
                let k = key(p);
                self.before.get(&k) == Some(&0)
                    && reported.get(&k).is_some_and(|n| *n > 0)
                    && seen.insert(k)
            })
            .collect()
    }
}

impl Evaluator {
    pub fn new(baseline: Baseline, t: Thresholds) -> Self {
        Evaluator {
            baseline,
            t,
            pods: HashMap::new(),
            by_node: HashMap::new(),
            due: BTreeSet::new(),
            nodes: HashMap::new(),
            reported: HashMap::new(),
            pods_exempt: BTreeSet::new(),
            nodes_skipped: BTreeSet::new(),
        }
    }

    /// Judges the pods in `dirty` (changed since the last call; `lookup` gives a pod's summary
    /// now, None once it is gone), those whose time came and those on nodes that entered or left
    /// `exempt`; returns the fresh problems.
    pub fn judge_pods<'a>(
        &mut self,
        mut dirty: HashSet<Arc<str>>,
        lookup: impl Fn(&str) -> Option<&'a PodSummary>,
        now: jiff::Timestamp,
        exempt: &BTreeSet<String>,
    ) -> Vec<Problem> {
        if *exempt != self.pods_exempt {
            for n in self.pods_exempt.symmetric_difference(exempt) {
                dirty.extend(self.by_node.get(n).into_iter().flatten().cloned());
            }
            self.pods_exempt = exempt.clone();
        }
        while let Some((at, _)) = self.due.first()
            && *at <= now
        {
            let (_, uid) = self.due.pop_first().expect("a first entry");
            dirty.insert(uid);
        }
        let mut tally = Tally::default();
        for uid in dirty {
            let old = self.pods.remove(&uid).unwrap_or_default();
            for k in old.problems {
                tally.remove(&mut self.reported, k);
            }
            if let Some(at) = old.due {
                self.due.remove(&(at, Arc::clone(&uid)));
            }
            if let Some(n) = &old.node
                && let Some(on) = self.by_node.get_mut(n)
            {
                on.remove(&uid);
                if on.is_empty() {
                    self.by_node.remove(n);
                }
            }
            let Some(p) = lookup(&uid) else {
                self.baseline.forget_pod(&uid);
                continue;
            };
            self.baseline.observe_pod(p, exempt, now, self.t);
            let problems = pods::pod_new_problems(&self.baseline, p, now, self.t, exempt);
            let due = pods::next_due(&self.baseline, p, now, self.t);
            let judged = Judged {
                problems: problems.iter().map(key).collect(),
                node: p.node.clone(),
                due,
            };
            for problem in problems {
                tally.add(&mut self.reported, problem);
            }
            if let Some(at) = due {
                self.due.insert((at, Arc::clone(&uid)));
            }
            if let Some(n) = &judged.node {
                self.by_node
                    .entry(n.clone())
                    .or_default()
                    .insert(Arc::clone(&uid));
            }
            self.pods.insert(uid, judged);
        }
        tally.fresh(&self.reported)
    }

    /// Judges the nodes in `dirty` and those that entered or left `skipped` (exempt, or waited
    /// for by their own step); returns the fresh problems.
    pub fn judge_nodes<'a>(
        &mut self,
        mut dirty: HashSet<Arc<str>>,
        lookup: impl Fn(&str) -> Option<&'a NodeSummary>,
        skipped: &BTreeSet<String>,
    ) -> Vec<Problem> {
        if *skipped != self.nodes_skipped {
            dirty.extend(
                self.nodes_skipped
                    .symmetric_difference(skipped)
                    .map(|n| Arc::from(n.as_str())),
            );
            self.nodes_skipped = skipped.clone();
        }
        let mut tally = Tally::default();
        for name in dirty {
            for k in self.nodes.remove(&*name).unwrap_or_default() {
                tally.remove(&mut self.reported, k);
            }
            let Some(n) = lookup(&name) else {
                continue;
            };
            let problems = pods::node_new_problems(&self.baseline, n, skipped);
            if !problems.is_empty() {
                self.nodes
                    .insert(name.to_string(), problems.iter().map(key).collect());
            }
            for problem in problems {
                tally.add(&mut self.reported, problem);
            }
        }
        tally.fresh(&self.reported)
    }

    /// How many pods are judged, and how many wait for a time to come (for tests and figures).
    pub fn sizes(&self) -> (usize, usize) {
        (self.pods.len(), self.due.len())
    }
}

#[cfg(test)]
mod tests;
