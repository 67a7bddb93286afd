//! The health monitor: runs from the start of a run to its end (or alone in `rollgate monitor`).
//!
//! - Pods and nodes come from watches over the playbook's namespaces, pod selector and node
//!   selector (default: everything). Each watch event is reduced to a summary of what the rules
//!   read ([`summary`]: no spec, labels or managed fields are kept) in a table per watch
//!   ([`table`]) that also records which objects changed (its dirty set). A watch that cannot be
//!   re-established within `monitor.blind-after` turns its signal inconclusive ([`watch`]); a
//!   restored watch starts from a fresh list, whose differences from the table count as changes.
//! - A baseline is taken at start from the first complete lists; every half second the
//!   evaluation ([`evaluate`]) judges only what changed since the last tick, the pods whose time
//!   came (a pod Pending or not Ready reaching its threshold, a pod broken at the start reaching
//!   its recovery delay: a deadline queue) and the pods of nodes entering or leaving the exempt
//!   set, and sends only new or worse problems to the gates ([`pods`] holds the pure rules). A
//!   steady cluster costs one timer tick and a few empty set checks, whatever its size. Nodes
//!   down for their upgrade right now (cordon to wait-ready) are exempt, with their pods: their
//!   disruption is the point. Once uncordoned, during settle and soak, they are watched again.
//! - Pings: ICMP echo ([`icmp`]) or TCP connects to the selected pods' IPs, bounded concurrency; a pod is unreachable
//!   after `misses` failures in a row.
//! - Periodic probes run on their own intervals.

pub mod evaluate;
pub mod icmp;
pub mod pods;
pub mod summary;
pub mod table;
pub mod watch;

use crate::health::Guard;
use crate::playbook::{MonitorOptions, PingOptions, ProbeWhen, Signal};
use crate::vocab::ProbeOutcome;
use crate::vocab::Problem;
use crate::vocab::{EventSink, RunEvent};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt;
use kube::api::Api;
use pods::{Baseline, Thresholds};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, MutexGuard};
use std::time::Duration;
use summary::{NodeSummary, PodSummary};
use table::{Shared, Table};
use tokio::task::JoinHandle;
use watch::{Action, Sight, WatchState};

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const EVALUATE_EVERY: Duration = Duration::from_millis(500);
const PING_TIMEOUT: Duration = Duration::from_secs(1);
const PING_CONCURRENCY: usize = 32;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct MonitorError(String);

/// The running monitor; its tasks stop when it is dropped.
pub struct Monitor {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Monitor {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Starts a watch feeding a new table with `summarize`d objects.
fn watch_into<K, S>(
    api: Api<K>,
    name: String,
    sink: &EventSink,
    summarize: impl Fn(&K) -> (Arc<str>, Option<S>) + Send + 'static,
) -> (Shared<S>, Arc<WatchState>, JoinHandle<()>)
where
    K: kube::Resource
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
    S: PartialEq + Send + 'static,
{
    let table = Table::shared();
    let state = WatchState::new(name);
    let fed = Arc::clone(&table);
    let apply = move |event| fed.lock().expect("lock").apply(event, &summarize);
    let task = watch::spawn(api, apply, Arc::clone(&state), sink.clone());
    (table, state, task)
}

fn pod_apis(client: &kube::Client, opts: &MonitorOptions) -> Vec<(Api<Pod>, String)> {
    if opts.namespaces.is_empty() {
        vec![(Api::all(client.clone()), "pods in all namespaces".into())]
    } else {
        opts.namespaces
            .iter()
            .map(|ns| {
                (
                    Api::namespaced(client.clone(), ns),
                    format!("pods in namespace {ns}"),
                )
            })
            .collect()
    }
}

/// A pod's table key (its UID) and summary; no summary for a pod outside the pod selector.
fn summarize_pod(pod: &Pod, opts: &MonitorOptions) -> (Arc<str>, Option<PodSummary>) {
    let selected = opts
        .pod_selector
        .as_ref()
        .is_none_or(|s| s.matches(pod.labels()));
    let pingable = opts
        .ping
        .as_ref()
        .is_some_and(|p| p.selector.matches(pod.labels()));
    let summary = PodSummary::of(pod, pingable);
    (Arc::clone(&summary.uid), selected.then_some(summary))
}

/// A node's table key (its name) and summary; none for a node outside the node selector.
fn summarize_node(node: &Node, opts: &MonitorOptions) -> (Arc<str>, Option<NodeSummary>) {
    let selected = opts
        .node_selector
        .as_ref()
        .is_none_or(|s| s.matches(node.labels()));
    let summary = NodeSummary::from(node);
    (summary.name.as_str().into(), selected.then_some(summary))
}

type PodTables = Arc<Vec<Shared<PodSummary>>>;

fn lock<S>(tables: &[Shared<S>]) -> Vec<MutexGuard<'_, Table<S>>> {
    tables.iter().map(|t| t.lock().expect("lock")).collect()
}

/// Starts watching; the baseline is taken before this returns.
pub async fn start(
    client: kube::Client,
    opts: MonitorOptions,
    guard: Arc<Guard>,
    sink: EventSink,
) -> Result<Monitor, MonitorError> {
    let thresholds = Thresholds {
        not_ready_after: opts.not_ready_after,
        pending_after: opts.pending_after,
    };

    let mut tasks = Vec::new();
    let mut pod_tables = Vec::new();
    let mut pod_watches = Vec::new();
    for (api, name) in pod_apis(&client, &opts) {
        let o = opts.clone();
        let (table, state, task) = watch_into(api, name, &sink, move |p| summarize_pod(p, &o));
        pod_tables.push(table);
        pod_watches.push(state);
        tasks.push(task);
    }
    let o = opts.clone();
    let (node_table, node_watch, task) = watch_into(
        Api::<Node>::all(client.clone()),
        "nodes".into(),
        &sink,
        move |n| summarize_node(n, &o),
    );
    tasks.push(task);
    let node_watches = vec![node_watch];
    // The watches retry forever; a monitor that cannot see the cluster must not start a run.
    let ready = async {
        while !(lock(&pod_tables).iter().all(|t| t.listed())
            && node_table.lock().expect("lock").listed())
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    if tokio::time::timeout(READY_TIMEOUT, ready).await.is_err() {
        for t in &tasks {
            t.abort();
        }
        let why: Vec<String> = pod_watches
            .iter()
            .chain(&node_watches)
            .filter_map(|w| w.lost().map(|l| format!("{}: {}", w.name, l.error)))
            .collect();
        return Err(MonitorError(format!(
            "the health monitor cannot watch pods and nodes (no complete list within {READY_TIMEOUT:?}): {}\n  hint: check the API server is reachable and that your credentials may list and watch pods and nodes",
            why.join("; ")
        )));
    }

    // The baseline comes from the first complete lists, before anything changes. Everything
    // listed is still marked changed, so the first evaluation judges every pod once.
    let baseline = {
        let pods = lock(&pod_tables);
        let nodes = node_table.lock().expect("lock");
        Baseline::take(
            pods.iter().flat_map(|t| t.values()),
            nodes.values(),
            jiff::Timestamp::now(),
            thresholds,
        )
    };
    let described = baseline.describe();
    if !described.is_empty() {
        sink.emit(RunEvent::Baseline {
            problems: described,
        });
    }

    let pod_tables: PodTables = Arc::new(pod_tables);
    {
        let (guard, sink, opts, pod_tables, node_table) = (
            Arc::clone(&guard),
            sink.clone(),
            opts.clone(),
            Arc::clone(&pod_tables),
            Arc::clone(&node_table),
        );
        tasks.push(tokio::spawn(async move {
            let mut eval = evaluate::Evaluator::new(baseline, thresholds);
            let (mut pods_sight, mut nodes_sight) = (Sight::default(), Sight::default());
            let mut tick = tokio::time::interval(EVALUATE_EVERY);
            loop {
                tick.tick().await;
                let resumes = guard.resumes();
                let judge = |sight: &mut Sight, watches: &[Arc<WatchState>], signal: Signal| {
                    let lost = watch::longest_lost(watches);
                    let lost = lost
                        .as_ref()
                        .map(|(w, for_, e)| (w.as_str(), *for_, e.as_str()));
                    match sight.step(lost, opts.blind_after, resumes) {
                        Action::Evaluate { restored } => {
                            if restored {
                                guard.report(&signal, ProbeOutcome::Pass);
                            }
                            true
                        }
                        Action::Inconclusive(why) => {
                            if guard
                                .report(&signal, ProbeOutcome::Inconclusive(why))
                                .is_some()
                            {
                                sight.decided(resumes);
                            }
                            false
                        }
                        Action::Hold => false,
                    }
                };
                let see_pods = judge(&mut pods_sight, &pod_watches, Signal::Pods);
                let see_nodes = judge(&mut nodes_sight, &node_watches, Signal::Nodes);
                let exempt = guard.exempt_nodes();
                let now = jiff::Timestamp::now();
                // A blind signal is not judged on what it saw last (it may be long out of date):
                // its changes wait in the tables, and what it reported stays reported, until it
                // sees again.
                let mut fresh: Vec<Problem> = Vec::new();
                if see_pods {
                    let mut tables = lock(&pod_tables);
                    let dirty: HashSet<Arc<str>> =
                        tables.iter_mut().flat_map(|t| t.take_dirty()).collect();
                    let tables = &tables;
                    let lookup = |uid: &str| tables.iter().find_map(|t| t.get(uid));
                    fresh.extend(eval.judge_pods(dirty, lookup, now, &exempt));
                }
                if see_nodes {
                    // A node in flight after its wait-ready (uncordon, settle, soak) that turns
                    // NotReady is its step's business: the step waits for it (bounded by the
                    // ready timeout) and fails the node if it does not come back. Its pods
                    // still count.
                    let mut skipped = guard.nodes_in_flight();
                    skipped.extend(exempt.iter().cloned());
                    let mut table = node_table.lock().expect("lock");
                    let dirty = table.take_dirty();
                    let table = &table;
                    fresh.extend(eval.judge_nodes(dirty, |n| table.get(n), &skipped));
                }
                for p in &fresh {
                    sink.emit(RunEvent::Problem { problem: p.clone() });
                }
                let (node_problems, pod_problems): (Vec<&Problem>, Vec<&Problem>) = fresh
                    .iter()
                    .partition(|p| p.kind == crate::vocab::ProblemKind::NodeNotReady);
                if !pod_problems.is_empty() {
                    guard.report(&Signal::Pods, ProbeOutcome::Fail(evidence(&pod_problems)));
                }
                if !node_problems.is_empty() {
                    guard.report(&Signal::Nodes, ProbeOutcome::Fail(evidence(&node_problems)));
                }
            }
        }));
    }
    if let Some(ping) = opts.ping.clone() {
        let (guard, sink, pod_tables) = (Arc::clone(&guard), sink.clone(), Arc::clone(&pod_tables));
        tasks.push(tokio::spawn(async move {
            ping_loop(ping, pod_tables, guard, sink).await
        }));
    }
    for (probe, interval) in guard.periodic_probes() {
        let guard = Arc::clone(&guard);
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                guard
                    .run_probe(&probe, ProbeWhen::Periodic, None, None)
                    .await;
            }
        }));
    }
    Ok(Monitor { tasks })
}

fn evidence(problems: &[&Problem]) -> String {
    problems
        .iter()
        .map(|p| {
            format!(
                "{}{}: {}",
                p.object,
                p.node
                    .as_ref()
                    .map(|n| format!(" on node {n}"))
                    .unwrap_or_default(),
                p.detail
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

async fn ping_loop(ping: PingOptions, tables: PodTables, guard: Arc<Guard>, sink: EventSink) {
    let mut misses: HashMap<String, u32> = HashMap::new();
    let mut tick = tokio::time::interval(ping.interval);
    let mut seq: u16 = 0;
    // Without a port, pings are ICMP: say so once if this machine cannot open ICMP sockets.
    if ping.port.is_none()
        && let Err(e) = tokio::task::spawn_blocking(|| {
            icmp::ping(std::net::Ipv4Addr::LOCALHOST.into(), PING_TIMEOUT, 0)
        })
        .await
        .unwrap_or(Ok(false))
    {
        guard.report(&Signal::Pings, ProbeOutcome::Inconclusive(format!("cannot send ICMP pings here ({e}): set monitor.ping.port for TCP, or allow unprivileged ICMP (net.ipv4.ping_group_range)")));
    }
    loop {
        tick.tick().await;
        let exempt = guard.exempt_nodes();
        let targets: Vec<(String, String)> = lock(&tables)
            .iter()
            .flat_map(|t| t.values())
            .filter(|p| p.pingable && !p.terminating)
            .filter(|p| !p.node.as_ref().is_some_and(|n| exempt.contains(n)))
            .filter_map(|p| Some((p.key.clone(), p.ip.clone()?)))
            .collect();
        let port = ping.port;
        seq = seq.wrapping_add(1);
        let results: Vec<(String, String, bool)> = futures::stream::iter(targets)
            .map(|(pod, ip)| async move {
                let ok = match port {
                    Some(port) => tokio::time::timeout(
                        PING_TIMEOUT,
                        tokio::net::TcpStream::connect((ip.as_str(), port)),
                    )
                    .await
                    .is_ok_and(|r| r.is_ok()),
                    None => match ip.parse::<std::net::IpAddr>() {
                        Ok(addr) => {
                            tokio::task::spawn_blocking(move || icmp::ping(addr, PING_TIMEOUT, seq))
                                .await
                                .ok()
                                .and_then(Result::ok)
                                .unwrap_or(false)
                        }
                        Err(_) => false,
                    },
                };
                (pod, ip, ok)
            })
            .buffer_unordered(PING_CONCURRENCY)
            .collect()
            .await;
        let live: BTreeSet<&String> = results.iter().map(|(p, _, _)| p).collect();
        misses.retain(|p, _| live.contains(p));
        let mut unreachable = Vec::new();
        for (pod, ip, ok) in &results {
            let m = misses.entry(pod.clone()).or_default();
            *m = if *ok { 0 } else { *m + 1 };
            if *m == ping.misses {
                let target = port
                    .map(|p| format!("{ip}:{p}"))
                    .unwrap_or_else(|| format!("{ip} (ICMP)"));
                unreachable.push(format!(
                    "{pod} ({target}) unreachable {} times in a row",
                    ping.misses
                ));
                sink.emit(RunEvent::Problem {
                    problem: Problem {
                        object: pod.clone(),
                        node: None,
                        kind: crate::vocab::ProblemKind::Unreachable,
                        detail: format!("{target} does not answer"),
                    },
                });
            }
        }
        if unreachable.is_empty() {
            if misses.values().all(|m| *m == 0) {
                guard.report(&Signal::Pings, ProbeOutcome::Pass);
            }
        } else {
            guard.report(&Signal::Pings, ProbeOutcome::Fail(unreachable.join("; ")));
        }
    }
}
