//! The health monitor: runs from the start of a run to its end (or alone in `rollgate monitor`).
//!
//! - Pods and nodes come from watches kept in reflector stores (managed fields stripped), over
//!   the playbook's namespaces, pod selector and node selector (default: everything). A watch
//!   that cannot be re-established within `monitor.blind-after` turns its signal inconclusive
//!   ([`watch`]).
//! - A baseline is taken at start; every half second the stores are compared with it and only
//!   new or worse problems go to the gates ([`pods`] holds the pure rules). Nodes down for their
//!   upgrade right now (cordon to wait-ready) are exempt, with their pods: their disruption is
//!   the point. Once uncordoned, during settle and soak, they are watched again.
//! - Pings: ICMP echo ([`icmp`]) or TCP connects to the selected pods' IPs, bounded concurrency; a pod is unreachable
//!   after `misses` failures in a row.
//! - Periodic probes run on their own intervals.

pub mod icmp;
pub mod pods;
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
use kube::runtime::reflector::{self, Store};
use pods::{Baseline, Thresholds};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
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

fn reflect<K>(
    api: Api<K>,
    name: String,
    sink: &EventSink,
) -> (Store<K>, Arc<WatchState>, JoinHandle<()>)
where
    K: kube::Resource
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (reader, writer) = reflector::store();
    let state = WatchState::new(name);
    let task = watch::spawn(api, writer, Arc::clone(&state), sink.clone());
    (reader, state, task)
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

fn selected(pod: &Pod, opts: &MonitorOptions) -> bool {
    opts.pod_selector
        .as_ref()
        .is_none_or(|s| s.matches(pod.labels()))
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
    let node_ok = |n: &Node| {
        opts.node_selector
            .as_ref()
            .is_none_or(|s| s.matches(n.labels()))
    };

    let mut tasks = Vec::new();
    let mut pod_stores = Vec::new();
    let mut pod_watches = Vec::new();
    for (api, name) in pod_apis(&client, &opts) {
        let (store, state, task) = reflect(api, name, &sink);
        pod_stores.push(store);
        pod_watches.push(state);
        tasks.push(task);
    }
    let (node_store, node_watch, task) =
        reflect(Api::<Node>::all(client.clone()), "nodes".into(), &sink);
    tasks.push(task);
    let node_watches = vec![node_watch];
    // The watches retry forever; a monitor that cannot see the cluster must not start a run.
    let ready = async {
        for s in &pod_stores {
            let _ = s.wait_until_ready().await;
        }
        let _ = node_store.wait_until_ready().await;
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

    // The baseline comes from the stores' initial lists, before anything changes.
    let pods_now: Vec<Pod> = pod_stores
        .iter()
        .flat_map(|s| s.state())
        .map(|p| (*p).clone())
        .filter(|p| selected(p, &opts))
        .collect();
    let nodes_now: Vec<Node> = node_store
        .state()
        .into_iter()
        .map(|n| (*n).clone())
        .filter(|n| node_ok(n))
        .collect();
    let baseline = Baseline::take(&pods_now, &nodes_now, jiff::Timestamp::now(), thresholds);
    let described = baseline.describe();
    if !described.is_empty() {
        sink.emit(RunEvent::Baseline {
            problems: described,
        });
    }

    let pod_stores = Arc::new(pod_stores);
    {
        let (guard, sink, opts, pod_stores, node_store) = (
            Arc::clone(&guard),
            sink.clone(),
            opts.clone(),
            Arc::clone(&pod_stores),
            node_store.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut baseline = baseline;
            let mut reported: BTreeSet<(String, crate::vocab::ProblemKind)> = BTreeSet::new();
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
                let pods: Vec<Pod> = pod_stores
                    .iter()
                    .flat_map(|s| s.state())
                    .map(|p| (*p).clone())
                    .filter(|p| selected(p, &opts))
                    .collect();
                let nodes: Vec<Node> = node_store
                    .state()
                    .into_iter()
                    .map(|n| (*n).clone())
                    .filter(|n| {
                        opts.node_selector
                            .as_ref()
                            .is_none_or(|s| s.matches(n.labels()))
                    })
                    .collect();
                let exempt = guard.exempt_nodes();
                // A node in flight after its wait-ready (uncordon, settle, soak) that turns
                // NotReady is its step's business: the step waits for it (bounded by the ready
                // timeout) and fails the node if it does not come back. Its pods still count.
                let own_readiness = guard.nodes_in_flight();
                let nodes: Vec<Node> = nodes
                    .into_iter()
                    .filter(|n| !own_readiness.contains(n.metadata.name.as_deref().unwrap_or("")))
                    .collect();
                let now = jiff::Timestamp::now();
                if see_pods {
                    baseline.observe(&pods, &exempt, now, thresholds);
                }
                // A blind signal is not judged on what it saw last (it may be long out of date).
                let problems: Vec<Problem> = pods::new_problems(
                    &baseline,
                    if see_pods { &pods } else { &[] },
                    if see_nodes { &nodes } else { &[] },
                    now,
                    thresholds,
                    &exempt,
                );
                let fresh: Vec<&Problem> = problems
                    .iter()
                    .filter(|p| !reported.contains(&(p.object.clone(), p.kind)))
                    .collect();
                for p in &fresh {
                    sink.emit(RunEvent::Problem {
                        problem: (*p).clone(),
                    });
                }
                let (node_problems, pod_problems): (Vec<&&Problem>, Vec<&&Problem>) = fresh
                    .iter()
                    .partition(|p| p.kind == crate::vocab::ProblemKind::NodeNotReady);
                if !pod_problems.is_empty() {
                    guard.report(&Signal::Pods, ProbeOutcome::Fail(evidence(&pod_problems)));
                }
                if !node_problems.is_empty() {
                    guard.report(&Signal::Nodes, ProbeOutcome::Fail(evidence(&node_problems)));
                }
                // A problem that went away may be reported again if it comes back. What a blind
                // signal reported stays reported until it sees again.
                reported.retain(|(_, kind)| {
                    let is_node = *kind == crate::vocab::ProblemKind::NodeNotReady;
                    (is_node && !see_nodes) || (!is_node && !see_pods)
                });
                reported.extend(problems.iter().map(|p| (p.object.clone(), p.kind)));
            }
        }));
    }
    if let Some(ping) = opts.ping.clone() {
        let (guard, sink, opts, pod_stores) = (
            Arc::clone(&guard),
            sink.clone(),
            opts.clone(),
            Arc::clone(&pod_stores),
        );
        tasks.push(tokio::spawn(async move {
            ping_loop(ping, opts, pod_stores, guard, sink).await
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

fn evidence(problems: &[&&Problem]) -> String {
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

async fn ping_loop(
    ping: PingOptions,
    opts: MonitorOptions,
    stores: Arc<Vec<Store<Pod>>>,
    guard: Arc<Guard>,
    sink: EventSink,
) {
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
        let targets: Vec<(String, String)> = stores
            .iter()
            .flat_map(|s| s.state())
            .filter(|p| {
                selected(p, &opts)
                    && ping.selector.matches(p.labels())
                    && p.metadata.deletion_timestamp.is_none()
            })
            .filter(|p| {
                !p.spec
                    .as_ref()
                    .and_then(|s| s.node_name.as_ref())
                    .is_some_and(|n| exempt.contains(n))
            })
            .filter_map(|p| {
                Some((
                    crate::drain::pod_key(&p),
                    p.status.as_ref()?.pod_ip.clone()?,
                ))
            })
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
