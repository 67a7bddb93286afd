//! The incremental evaluation against the whole-cluster rule it replaces: the same fresh problems
//! at every tick, over scripted and generated histories.

use super::*;
use crate::monitor::summary::{ContainerSummary, Readiness};
use std::collections::BTreeMap;
use std::time::Duration;

const T: Thresholds = Thresholds {
    not_ready_after: Duration::from_secs(60),
    pending_after: Duration::from_secs(120),
};

fn ts(secs: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_second(1_800_000_000 + secs).unwrap()
}

/// The rule as the monitor applied it before: every pod judged at every tick.
struct Whole {
    baseline: Baseline,
    reported: BTreeSet<Key>,
}

impl Whole {
    fn tick(
        &mut self,
        pods: &[PodSummary],
        nodes: &[NodeSummary],
        now: jiff::Timestamp,
        exempt: &BTreeSet<String>,
        skipped: &BTreeSet<String>,
    ) -> BTreeSet<Key> {
        self.baseline.observe(pods, exempt, now, T);
        let mut problems = pods::new_problems(&self.baseline, pods, &[], now, T, exempt);
        let nodes: Vec<NodeSummary> = nodes
            .iter()
            .filter(|n| !skipped.contains(&n.name))
            .cloned()
            .collect();
        problems.extend(pods::new_problems(
            &self.baseline,
            &[],
            &nodes,
            now,
            T,
            exempt,
        ));
        let now: BTreeSet<Key> = problems.iter().map(key).collect();
        let fresh = now.difference(&self.reported).cloned().collect();
        self.reported = now;
        fresh
    }
}

fn pod(uid: &str, name: &str, node: &str) -> PodSummary {
    PodSummary {
        uid: uid.into(),
        key: format!("ns/{name}"),
        node: Some(node.into()),
        terminating: false,
        has_status: true,
        phase: Some("Running".into()),
        created: Some(ts(0)),
        ready: Some(Readiness {
            ready: true,
            since: Some(ts(0)),
            reason: None,
        }),
        containers: vec![ContainerSummary {
            name: "c".into(),
            restart_count: 0,
            waiting: None,
        }],
        ip: None,
        pingable: false,
    }
}

fn node(name: &str, ready: bool) -> NodeSummary {
    NodeSummary {
        name: name.into(),
        ready: Some((
            if ready { "True" } else { "False" }.into(),
            String::new(),
            String::new(),
        )),
    }
}

/// A tiny deterministic generator (no dependency, same history every run).
struct Rng(u64);

impl Rng {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

/// Changes one thing about a pod, as the cluster would.
fn mutate(p: &mut PodSummary, rng: &mut Rng, now: jiff::Timestamp) {
    let c = &mut p.containers[0];
    match rng.next(9) {
        0 => c.restart_count += 1,
        1 => {
            c.restart_count += 1;
            c.waiting = Some(("CrashLoopBackOff".into(), "boom".into()));
        }
        2 => c.waiting = None,
        3 => c.waiting = Some(("ImagePullBackOff".into(), "no".into())),
        4 => {
            let ready = !p.ready.as_ref().is_some_and(|r| r.ready);
            p.ready = Some(Readiness {
                ready,
                since: Some(now),
                reason: None,
            });
        }
        5 => p.phase = Some("Pending".into()),
        6 => p.phase = Some("Running".into()),
        7 => p.node = Some(format!("n{}", rng.next(4))),
        _ => p.terminating = true,
    }
}

fn sorted(problems: Vec<Problem>) -> BTreeSet<Key> {
    problems.iter().map(key).collect()
}

#[test]
fn judging_what_changed_reports_what_judging_everything_reports() {
    for seed in 0..40 {
        let mut rng = Rng(seed);
        let mut pods: BTreeMap<String, PodSummary> = BTreeMap::new();
        for i in 0..12 {
            let mut p = pod(&format!("u{i}"), &format!("p{i}"), &format!("n{}", i % 4));
            p.created = Some(ts(-(rng.next(200) as i64)));
            if rng.next(3) == 0 {
                let when = ts(-(rng.next(100) as i64));
                mutate(&mut p, &mut rng, when);
            }
            pods.insert(p.uid.to_string(), p);
        }
        let mut nodes: BTreeMap<String, NodeSummary> = (0..4)
            .map(|i| (format!("n{i}"), node(&format!("n{i}"), rng.next(4) != 0)))
            .collect();
        let all: Vec<PodSummary> = pods.values().cloned().collect();
        let nodes_now: Vec<NodeSummary> = nodes.values().cloned().collect();
        let baseline = Baseline::take(&all, &nodes_now, ts(0), T);
        let mut whole = Whole {
            baseline: baseline.clone(),
            reported: BTreeSet::new(),
        };
        let mut inc = Evaluator::new(baseline, T);
        let mut dirty: HashSet<Arc<str>> = pods.keys().map(|k| Arc::from(k.as_str())).collect();
        let mut dirty_nodes: HashSet<Arc<str>> =
            nodes.keys().map(|k| Arc::from(k.as_str())).collect();
        let (mut exempt, mut skipped) = (BTreeSet::new(), BTreeSet::new());
        let mut next_uid = 100;
        let mut at = 0;
        for step in 0..60 {
            at += rng.next(40) as i64;
            let now = ts(at);
            for _ in 0..rng.next(4) {
                match rng.next(10) {
                    0 => {
                        // A new pod, sometimes under the name of one that exists.
                        let name = format!("p{}", rng.next(16));
                        let mut p = pod(&format!("u{next_uid}"), &name, "n1");
                        p.created = Some(now);
                        p.phase = Some("Pending".into());
                        next_uid += 1;
                        dirty.insert(Arc::clone(&p.uid));
                        pods.insert(p.uid.to_string(), p);
                    }
                    1 => {
                        let nth = rng.next(pods.len().max(1) as u64) as usize;
                        if let Some(uid) = pods.keys().nth(nth) {
                            let uid = uid.clone();
                            pods.remove(&uid);
                            dirty.insert(uid.into());
                        }
                    }
                    2 => {
                        let n = format!("n{}", rng.next(4));
                        if !exempt.remove(&n) {
                            exempt.insert(n);
                        }
                    }
                    3 => {
                        let n = format!("n{}", rng.next(4));
                        if !skipped.remove(&n) {
                            skipped.insert(n);
                        }
                    }
                    4 => {
                        let n = format!("n{}", rng.next(4));
                        let ready = nodes[&n].ready.as_ref().is_some_and(|r| r.0 == "True");
                        nodes.insert(n.clone(), node(&n, !ready));
                        dirty_nodes.insert(n.into());
                    }
                    _ => {
                        let nth = rng.next(pods.len().max(1) as u64) as usize;
                        if let Some(p) = pods.values_mut().nth(nth) {
                            mutate(p, &mut rng, now);
                            dirty.insert(Arc::clone(&p.uid));
                        }
                    }
                }
            }
            let skipped_all: BTreeSet<String> = skipped.union(&exempt).cloned().collect();
            let all: Vec<PodSummary> = pods.values().cloned().collect();
            let nodes_now: Vec<NodeSummary> = nodes.values().cloned().collect();
            let want = whole.tick(&all, &nodes_now, now, &exempt, &skipped_all);
            let mut got = sorted(inc.judge_pods(
                std::mem::take(&mut dirty),
                |uid| pods.get(uid),
                now,
                &exempt,
            ));
            got.extend(sorted(inc.judge_nodes(
                std::mem::take(&mut dirty_nodes),
                |n| nodes.get(n),
                &skipped_all,
            )));
            assert_eq!(got, want, "seed {seed}, step {step} at {at}s");
        }
    }
}

#[test]
fn a_pod_is_judged_again_when_its_time_comes_without_changing() {
    let mut waiting = pod("u1", "slow", "n1");
    waiting.phase = Some("Pending".into());
    let pods: HashMap<&str, PodSummary> = [("u1", waiting)].into();
    let mut inc = Evaluator::new(Baseline::take(pods.values(), [], ts(0), T), T);
    let none = BTreeSet::new();
    let all: HashSet<Arc<str>> = [Arc::from("u1")].into();
    assert!(
        inc.judge_pods(all, |u| pods.get(u), ts(1), &none)
            .is_empty()
    );
    assert_eq!(
        inc.sizes(),
        (1, 1),
        "one pod, due when pending-after passes"
    );
    assert!(
        inc.judge_pods(HashSet::new(), |u| pods.get(u), ts(120), &none)
            .is_empty()
    );
    let got = inc.judge_pods(HashSet::new(), |u| pods.get(u), ts(121), &none);
    assert_eq!(
        sorted(got),
        [("ns/slow".to_string(), ProblemKind::Pending)].into()
    );
    assert_eq!(inc.sizes(), (1, 0), "nothing more to wait for");
}
