//! The pod and node rules, table-style, on hand-built objects.

use super::*;
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateWaiting, ContainerStatus, Node, NodeCondition, NodeStatus, Pod,
    PodCondition, PodSpec, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

const T: Thresholds = Thresholds {
    not_ready_after: Duration::from_secs(60),
    pending_after: Duration::from_secs(120),
};

fn ts(secs: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_second(1_800_000_000 + secs).unwrap()
}

fn pod(
    name: &str,
    node: &str,
    phase: &str,
    ready: bool,
    waiting: Option<&str>,
    restarts: i32,
) -> Pod {
    let mut p = Pod::default();
    p.metadata.name = Some(name.into());
    p.metadata.uid = Some(format!("uid-{name}"));
    p.metadata.namespace = Some("ns".into());
    p.metadata.creation_timestamp = Some(Time(ts(0)));
    p.spec = Some(PodSpec {
        node_name: Some(node.into()),
        ..Default::default()
    });
    p.status = Some(PodStatus {
        phase: Some(phase.into()),
        conditions: Some(vec![PodCondition {
            type_: "Ready".into(),
            status: if ready { "True" } else { "False" }.into(),
            last_transition_time: Some(Time(ts(0))),
            ..Default::default()
        }]),
        container_statuses: Some(vec![ContainerStatus {
            name: "c".into(),
            restart_count: restarts,
            state: waiting.map(|r| ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some(r.into()),
                    message: Some("boom".into()),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }]),
        ..Default::default()
    });
    p
}

/// What the monitor keeps of these pods.
fn sums(pods: &[Pod]) -> Vec<PodSummary> {
    pods.iter().map(PodSummary::from).collect()
}

/// What the monitor keeps of these nodes.
fn nsums(nodes: &[Node]) -> Vec<NodeSummary> {
    nodes.iter().map(NodeSummary::from).collect()
}

fn node(name: &str, ready: bool) -> Node {
    let mut n = Node::default();
    n.metadata.name = Some(name.into());
    n.status = Some(NodeStatus {
        conditions: Some(vec![NodeCondition {
            type_: "Ready".into(),
            status: if ready { "True" } else { "False" }.into(),
            ..Default::default()
        }]),
        ..Default::default()
    });
    n
}

#[test]
fn problems_of_a_pod() {
    let cases: Vec<(Pod, i64, Vec<ProblemKind>)> = vec![
        (pod("ok", "n", "Running", true, None, 0), 1000, vec![]),
        (
            pod("crash", "n", "Running", false, Some("CrashLoopBackOff"), 4),
            10,
            vec![ProblemKind::CrashLoop],
        ),
        (
            pod("pull", "n", "Pending", false, Some("ImagePullBackOff"), 0),
            10,
            vec![ProblemKind::WaitingError],
        ),
        (pod("slow", "n", "Pending", false, None, 0), 100, vec![]),
        (
            pod("stuck", "n", "Pending", false, None, 0),
            121,
            vec![ProblemKind::Pending],
        ),
        (pod("unready", "n", "Running", false, None, 0), 30, vec![]),
        (
            pod("unready-long", "n", "Running", false, None, 0),
            61,
            vec![ProblemKind::NotReady],
        ),
        (pod("done", "n", "Succeeded", false, None, 0), 1000, vec![]),
    ];
    for (p, at, want) in cases {
        let got: Vec<ProblemKind> = pod_problems(&PodSummary::from(&p), ts(at), T)
            .into_iter()
            .map(|x| x.kind)
            .collect();
        assert_eq!(got, want, "{}", p.metadata.name.unwrap());
    }
}

#[test]
fn only_new_or_worse_problems_count_and_upgrading_nodes_are_exempt() {
    let before = vec![
        pod(
            "old-crash",
            "n1",
            "Running",
            false,
            Some("CrashLoopBackOff"),
            3,
        ),
        pod("fine", "n1", "Running", true, None, 0),
        pod("flaky", "n2", "Running", true, None, 1),
    ];
    let baseline = Baseline::take(
        &sums(&before),
        &nsums(&[node("n1", true), node("n2", true), node("n4", false)]),
        ts(0),
        T,
    );
    let now = vec![
        pod(
            "old-crash",
            "n1",
            "Running",
            false,
            Some("CrashLoopBackOff"),
            9,
        ), // already broken: not held against the run
        pod("fine", "n1", "Running", false, Some("CrashLoopBackOff"), 2), // new crash loop
        pod("flaky", "n2", "Running", true, None, 2),                     // restarts rising
        pod(
            "draining",
            "n3",
            "Running",
            false,
            Some("CrashLoopBackOff"),
            1,
        ), // on a node being upgraded
    ];
    let nodes = [
        node("n1", true),
        node("n2", false),
        node("n3", false),
        node("n4", false),
    ];
    let exempt: BTreeSet<String> = ["n3".to_string()].into();
    let got: Vec<(String, ProblemKind)> =
        new_problems(&baseline, &sums(&now), &nsums(&nodes), ts(5), T, &exempt)
            .into_iter()
            .map(|p| (p.object, p.kind))
            .collect();
    assert_eq!(
        got,
        vec![
            ("ns/fine".into(), ProblemKind::CrashLoop),
            ("ns/flaky".into(), ProblemKind::RestartsRising),
            ("n2".into(), ProblemKind::NodeNotReady)
        ]
    );
}

/// `pod` with another UID: the same name recreated.
fn recreated(mut p: Pod, uid: &str) -> Pod {
    p.metadata.uid = Some(uid.into());
    p
}

/// `pod` Ready since `since` (seconds from the test epoch).
fn ready_since(mut p: Pod, since: i64) -> Pod {
    let status = p.status.as_mut().unwrap();
    status.conditions = Some(vec![PodCondition {
        type_: "Ready".into(),
        status: "True".into(),
        last_transition_time: Some(Time(ts(since))),
        ..Default::default()
    }]);
    p
}

/// Observes `pods` at `at` (seconds), then returns the new problems' (object, kind).
fn judge(b: &mut Baseline, pods: &[Pod], at: i64, exempt: &[&str]) -> Vec<(String, ProblemKind)> {
    let exempt: BTreeSet<String> = exempt.iter().map(|s| s.to_string()).collect();
    let pods = sums(pods);
    b.observe(&pods, &exempt, ts(at), T);
    new_problems(b, &pods, &[], ts(at), T, &exempt)
        .into_iter()
        .map(|p| (p.object, p.kind))
        .collect()
}

#[test]
fn restarts_during_a_nodes_own_upgrade_are_not_held_against_it_afterwards() {
    let agent = |restarts| pod("agent", "n1", "Running", true, None, restarts);
    let mut b = Baseline::take(&sums(&[agent(0)]), &nsums(&[node("n1", true)]), ts(0), T);
    // The node reboots during its upgrade (it is down: exempt): its DaemonSet pod restarts.
    assert!(judge(&mut b, &[agent(1)], 1, &["n1"]).is_empty());
    // Back up and soaking (not exempt): the restart during the upgrade is not held against it.
    assert!(judge(&mut b, &[agent(1)], 5, &[]).is_empty());
    // A restart during the soak is a new problem.
    assert_eq!(
        judge(&mut b, &[agent(2)], 9, &[]),
        vec![("ns/agent".into(), ProblemKind::RestartsRising)]
    );
}

#[test]
fn a_pod_crash_looping_on_a_node_being_soaked_is_a_new_problem() {
    let web = |waiting, restarts| pod("web", "n1", "Running", true, waiting, restarts);
    let mut b = Baseline::take(
        &sums(&[web(None, 0)]),
        &nsums(&[node("n1", true)]),
        ts(0),
        T,
    );
    let crash = web(Some("CrashLoopBackOff"), 3);
    assert!(judge(&mut b, std::slice::from_ref(&crash), 1, &["n1"]).is_empty());
    assert_eq!(
        judge(&mut b, &[crash], 2, &[]),
        vec![("ns/web".into(), ProblemKind::CrashLoop)]
    );
}

#[test]
fn the_baseline_follows_pod_uids_not_names() {
    let fine = pod("db-0", "n1", "Running", true, None, 4);
    let broken = pod("old", "n1", "Running", false, Some("CrashLoopBackOff"), 7);
    let mut b = Baseline::take(
        &sums(&[fine.clone(), broken.clone()]),
        &nsums(&[]),
        ts(0),
        T,
    );
    assert_eq!(b.describe(), vec!["ns/old: {CrashLoop}".to_string()]);
    type Case = (&'static str, Vec<Pod>, Vec<(String, ProblemKind)>);
    let cases: Vec<Case> = vec![
        (
            "the broken pod keeps crash-looping, restarts rising with it: forgiven",
            vec![
                fine.clone(),
                pod("old", "n1", "Running", false, Some("CrashLoopBackOff"), 9),
            ],
            vec![],
        ),
        (
            "recreated under the same name, crash-looping: the new pod is not forgiven",
            vec![
                fine.clone(),
                recreated(
                    pod("old", "n1", "Running", false, Some("CrashLoopBackOff"), 1),
                    "uid-old-2",
                ),
            ],
            vec![("ns/old".into(), ProblemKind::CrashLoop)],
        ),
        (
            "recreated under the same name with fewer restarts: tracked from its first sight",
            vec![recreated(
                pod("db-0", "n2", "Running", true, None, 0),
                "uid-db-2",
            )],
            vec![],
        ),
        (
            "a new pod that restarts after it was first seen",
            vec![recreated(
                pod("db-0", "n2", "Running", true, None, 2),
                "uid-db-2",
            )],
            vec![("ns/db-0".into(), ProblemKind::RestartsRising)],
        ),
    ];
    for (what, pods, want) in cases {
        assert_eq!(judge(&mut b, &pods, 10, &[]), want, "{what}");
    }
}

#[test]
fn a_pod_broken_at_the_start_is_forgiven_until_it_recovers_and_its_restarts_count() {
    let unready = |restarts| pod("slow", "n1", "Running", false, None, restarts);
    // Not Ready for longer than the threshold at the start: forgiven.
    let mut b = Baseline::take(&sums(&[unready(0)]), &nsums(&[]), ts(100), T);
    assert!(judge(&mut b, &[unready(0)], 110, &[]).is_empty());
    // It was not crash-looping: a restart is a change for the worse.
    assert_eq!(
        judge(&mut b, &[unready(1)], 120, &[]),
        vec![("ns/slow".into(), ProblemKind::RestartsRising)]
    );

    let crash = |restarts| {
        pod(
            "c",
            "n1",
            "Running",
            false,
            Some("CrashLoopBackOff"),
            restarts,
        )
    };
    let mut b = Baseline::take(&sums(&[crash(5)]), &nsums(&[]), ts(100), T);
    // Ready for a moment between crashes: not recovered yet.
    let blip = ready_since(pod("c", "n1", "Running", true, None, 6), 110);
    assert!(judge(&mut b, &[blip], 111, &[]).is_empty());
    assert!(judge(&mut b, &[crash(7)], 112, &[]).is_empty());
    // Ready and healthy for RECOVERED_AFTER: recovered, held to the usual rules again.
    let well = ready_since(pod("c", "n1", "Running", true, None, 7), 200);
    assert!(
        judge(
            &mut b,
            std::slice::from_ref(&well),
            200 + RECOVERED_AFTER.as_secs() as i64,
            &[]
        )
        .is_empty()
    );
    assert_eq!(
        judge(&mut b, &[crash(8)], 300, &[]),
        vec![
            ("ns/c".into(), ProblemKind::CrashLoop),
            ("ns/c".into(), ProblemKind::NotReady)
        ]
    );
}
