//! The health state machine, table-style: a sequence of inputs and what each one yields.

use super::*;

fn gate(signal: Signal, on_fail: Decision, failure_limit: u32, consecutive_errors: u32) -> Gate {
    Gate {
        signal,
        on_fail,
        failure_limit,
        consecutive_errors,
        on_inconclusive: Decision::Pause,
    }
}

fn fail(signal: Signal) -> Input {
    Input::Result(signal, ProbeOutcome::Fail("broken".into()))
}

fn inconclusive(signal: Signal) -> Input {
    Input::Result(signal, ProbeOutcome::Inconclusive("cannot see".into()))
}

fn pass(signal: Signal) -> Input {
    Input::Result(signal, ProbeOutcome::Pass)
}

fn step(node: &str, step: Step) -> Input {
    Input::Step(node.into(), step)
}

fn word(d: Decision) -> &'static str {
    match d {
        Decision::Abort => "abort",
        Decision::Pause => "pause",
        Decision::Warn => "warn",
    }
}

/// One output in a word or three: `decided pause by pods`, `paused`, `aborted`, `running`,
/// `resumed`.
fn describe(o: &Output) -> String {
    match o {
        Output::Decided(d) => format!("decided {} by {}", word(d.decision), d.signal),
        Output::State(HealthState::Running) => "running".into(),
        Output::State(HealthState::Paused(_)) => "paused".into(),
        Output::State(HealthState::Aborted(_)) => "aborted".into(),
        Output::Resumed(_) => "resumed".into(),
    }
}

type Case = (
    &'static str,
    Vec<Gate>,
    Vec<(Input, &'static [&'static str])>,
);

#[test]
fn inputs_yield_decisions_and_state_changes() {
    use Signal::{Nodes, Pings, Pods};
    let cases: Vec<Case> = vec![
        (
            "a failure with the default gate aborts; abort wins over a later pause",
            vec![],
            vec![
                (pass(Pods), &[]),
                (fail(Pods), &["decided abort by pods", "aborted"]),
                (Input::Pause("look".into()), &[]),
                (fail(Pings), &["decided pause by pings"]),
                (Input::Resume(None), &[]),
            ],
        ),
        (
            "a pause, then an abort while paused",
            vec![],
            vec![
                (fail(Pings), &["decided pause by pings", "paused"]),
                (fail(Pings), &["decided pause by pings"]),
                (fail(Nodes), &["decided abort by nodes", "aborted"]),
                (fail(Nodes), &["decided abort by nodes"]),
            ],
        ),
        (
            "the operator pauses a running run only, and resumes a paused one only",
            vec![],
            vec![
                (Input::Resume(None), &[]),
                (
                    Input::Pause("look at db".into()),
                    &["paused", "decided pause by operator"],
                ),
                (Input::Pause("again".into()), &[]),
                (Input::Resume(None), &["running", "resumed"]),
                (Input::Resume(None), &[]),
            ],
        ),
        (
            "the operator aborts a running or paused run, once; a gate abort is not overridden",
            vec![],
            vec![
                (
                    Input::Pause("look".into()),
                    &["paused", "decided pause by operator"],
                ),
                (
                    Input::Abort("queue broke (aborted by ops@b)".into()),
                    &["aborted", "decided abort by operator"],
                ),
                (Input::Abort("again".into()), &[]),
                (Input::Resume(Some("ops@b".into())), &[]),
            ],
        ),
        (
            "inconclusive results count in a row; a conclusive one starts the count over",
            vec![gate(Pods, Decision::Abort, 1, 3)],
            vec![
                (inconclusive(Pods), &[]),
                (inconclusive(Pods), &[]),
                (pass(Pods), &[]),
                (inconclusive(Pods), &[]),
                (inconclusive(Pods), &[]),
                (inconclusive(Pods), &["decided pause by pods", "paused"]),
            ],
        ),
        (
            "resuming starts the gate counters over",
            vec![gate(Pods, Decision::Abort, 2, 2)],
            vec![
                (fail(Pods), &[]),
                (inconclusive(Pods), &[]),
                (
                    Input::Pause("look".into()),
                    &["paused", "decided pause by operator"],
                ),
                (Input::Resume(None), &["running", "resumed"]),
                (fail(Pods), &[]),
                (inconclusive(Pods), &[]),
                (fail(Pods), &["decided abort by pods", "aborted"]),
            ],
        ),
        (
            "a warning changes nothing",
            vec![gate(Nodes, Decision::Warn, 1, 1)],
            vec![
                (fail(Nodes), &["decided warn by nodes"]),
                (fail(Pods), &["decided abort by pods", "aborted"]),
            ],
        ),
        (
            "step transitions and failures yield nothing",
            vec![],
            vec![
                (step("a", Step::Cordon), &[]),
                (Input::DownAgain("a".into(), true), &[]),
                (Input::Failed("a".into()), &[]),
                (Input::Left("a".into()), &[]),
                (Input::Collected("a".into()), &[]),
            ],
        ),
    ];
    for (what, gates, inputs) in cases {
        let mut health = Health::new(&gates, &[Pods, Nodes, Pings]);
        for (i, (input, want)) in inputs.into_iter().enumerate() {
            let got: Vec<String> = health.apply(input.clone()).iter().map(describe).collect();
            assert_eq!(got, want, "{what}: input {i} ({input:?})");
        }
    }
}

#[test]
fn a_decision_names_the_nodes_in_flight_with_their_step() {
    let mut health = Health::new(&[], &[Signal::Pods]);
    for input in [
        step("a", Step::Settle),
        step("b", Step::Uncordon),
        Input::DownAgain("b".into(), true),
        step("c", Step::Command),
        Input::Left("c".into()),
    ] {
        health.apply(input);
    }
    let outputs = health.apply(fail(Signal::Pods));
    let Some(Output::Decided(d)) = outputs.first() else {
        panic!("{outputs:?}")
    };
    assert_eq!(d.evidence, "broken");
    assert_eq!(
        d.in_flight,
        [
            ("a".to_owned(), Step::Settle),
            ("b".to_owned(), Step::WaitReady)
        ],
        "c is done; b is down again: waiting for Ready"
    );
    assert_eq!(health.state(), &HealthState::Aborted(d.clone()));
    let outputs = health.apply(inconclusive(Signal::Pods));
    assert!(outputs.is_empty());
}

/// (inputs so far, the nodes exempt from the gates, the nodes in flight)
type ExemptCase = (Input, &'static [&'static str], &'static [&'static str]);

#[test]
fn nodes_down_for_their_upgrade_and_failed_nodes_are_exempt() {
    let cases: Vec<ExemptCase> = vec![
        (step("a", Step::Cordon), &["a"], &["a"]),
        (step("b", Step::Drain), &["a", "b"], &["a", "b"]),
        (step("a", Step::WaitReady), &["a", "b"], &["a", "b"]),
        // Uncordoned: watched again, still in flight.
        (step("a", Step::Uncordon), &["b"], &["a", "b"]),
        // It reboots during settle: down again, exempt until it is up.
        (step("a", Step::Settle), &["b"], &["a", "b"]),
        (Input::DownAgain("a".into(), true), &["a", "b"], &["a", "b"]),
        (Input::DownAgain("a".into(), false), &["b"], &["a", "b"]),
        // Done: not in flight any more, watched like any other node.
        (Input::Left("a".into()), &["b"], &["b"]),
        (Input::Collected("a".into()), &["b"], &["b"]),
        // b fails at its drain and stays cordoned: exempt for the rest of the run.
        (Input::Failed("b".into()), &["b"], &[]),
        (Input::Collected("b".into()), &["b"], &[]),
        // A node failing after its uncordon takes pods again: it just leaves.
        (step("c", Step::Settle), &["b"], &["c"]),
        (Input::Left("c".into()), &["b"], &[]),
    ];
    let mut health = Health::new(&[], &[Signal::Pods]);
    for (i, (input, exempt, in_flight)) in cases.into_iter().enumerate() {
        health.apply(input.clone());
        let names = |s: &[&str]| -> BTreeSet<String> { s.iter().map(|n| n.to_string()).collect() };
        assert_eq!(health.exempt_nodes(), names(exempt), "{i}: {input:?}");
        assert_eq!(
            health.in_flight().nodes(),
            names(in_flight),
            "{i}: {input:?}"
        );
    }
}

#[test]
fn the_engine_still_knows_the_step_of_a_node_that_left_until_it_collects_it() {
    let mut health = Health::new(&[], &[]);
    health.apply(step("a", Step::Command));
    health.apply(Input::Failed("a".into()));
    assert_eq!(health.in_flight().step_of("a"), Some(Step::Command));
    assert_eq!(health.in_flight().all(), [("a".to_owned(), Step::Command)]);
    health.apply(Input::Collected("a".into()));
    assert!(health.in_flight().all().is_empty());
    assert_eq!(health.resumes(), 0);
}

#[test]
fn resumes_are_counted() {
    let mut health = Health::new(&[], &[Signal::Pings]);
    for _ in 0..2 {
        health.apply(fail(Signal::Pings));
        health.apply(Input::Resume(None));
    }
    health.apply(Input::Resume(None));
    assert_eq!(health.resumes(), 2);
    assert_eq!(health.state(), &HealthState::Running);
}
