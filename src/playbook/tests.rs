//! Table tests: every playbook error message, with its line, key path and hint.

use super::*;
use std::path::Path;

const VALID_TAIL: &str = "[command]\nrun = \"true\"\n";

fn errors(text: &str) -> Vec<String> {
    match parse(Path::new("p.toml"), text) {
        Ok(_) => vec![],
        Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
    }
}

fn phase(extra: &str) -> String {
    format!(
        "name = \"t\"\n[[phase]]\nname = \"w\"\nselector = \"role=worker\"\n{extra}\n{VALID_TAIL}"
    )
}

#[test]
fn every_error_names_file_line_key_and_hint() {
    let cases: Vec<(String, &str)> = vec![
        // syntax and unknown keys (serde), with "did you mean"
        ("name = \n".into(), "p.toml:1:"),
        (
            format!("name = \"t\"\n[drain]\ngrace_period = \"5s\"\n{VALID_TAIL}"),
            "p.toml:3:1: `drain.grace_period`: unknown field `grace_period`\n  hint: did you mean `grace-period`?",
        ),
        (
            format!("name = \"t\"\nphases = []\n{VALID_TAIL}"),
            "unknown field `phases`",
        ),
        (
            format!(
                "name = \"t\"\n[[phase]]\nname = \"w\"\nselector = \"a\"\nconcurency = 2\n{VALID_TAIL}"
            ),
            "`phase[1].concurency`: unknown field `concurency`\n  hint: did you mean `concurrency`?",
        ),
        (
            format!("name = \"t\"\n[[phase]]\nname = \"w\"\nselector = 3\n{VALID_TAIL}"),
            "p.toml:4:12: `phase[1].selector`: invalid type",
        ),
        // required pieces
        (
            format!("name = \"t\"\n{VALID_TAIL}"),
            "p.toml: `phase`: the playbook has no phases\n  hint: add at least one",
        ),
        (
            "name = \"t\"\n[[phase]]\nname = \"w\"\nselector = \"a\"\n".into(),
            "p.toml: `command`: the playbook has no [command] table",
        ),
        (
            "name = \" \"\n[[phase]]\nname = \"w\"\nselector = \"a\"\n[command]\nrun = \"true\"\n"
                .into(),
            "p.toml:1:8: `name`: the playbook name is empty",
        ),
        (
            "name = \"t\"\n[[phase]]\nname = \"w\"\nselector = \"a\"\n[command]\nrun = \"  \"\n"
                .into(),
            "p.toml:6:7: `command.run`: the remote command is empty",
        ),
        // maintenance window and deadline
        (
            format!("name = \"t\"\n[window]\nstart = \"1:00\"\nend = \"25:00\"\n{VALID_TAIL}"),
            "p.toml:4:7: `window.end`: \"25:00\" is not a time of day\n  hint: write times as HH:MM",
        ),
        (
            format!("name = \"t\"\n[window]\nstart = \"01:00\"\n{VALID_TAIL}"),
            "`window`: the window has no `end`",
        ),
        (
            format!("name = \"t\"\n[window]\ndays = [\"mon-fry\"]\nstart = \"01:00\"\nend = \"05:00\"\n{VALID_TAIL}"),
            "p.toml:3:8: `window.days`: \"mon-fry\" is not a day or a range of days",
        ),
        (
            format!("name = \"t\"\n[window]\ncron = \"0 1 * * mon-fri\"\ntimezone = \"Europe/Berln\"\n{VALID_TAIL}"),
            "`window.timezone`: unknown time zone \"Europe/Berln\"",
        ),
        (
            format!("name = \"t\"\n[window]\ncron = \"0 1 * * mon-fri\"\n{VALID_TAIL}"),
            "`window.cron`: a cron window needs `duration`\n  hint: add how long it stays open",
        ),
        (
            format!("name = \"t\"\n[window]\ncron = \"0 25 * * *\"\nduration = \"2h\"\n{VALID_TAIL}"),
            "`window.cron`: hour field: \"25\" is not between 0 and 23",
        ),
        (
            format!("name = \"t\"\n[window]\ncron = \"0 1 * * *\"\nduration = \"2h\"\nstart = \"01:00\"\n{VALID_TAIL}"),
            "not both",
        ),
        (
            format!("name = \"t\"\n[window]\nstart = \"01:00\"\nend = \"05:00\"\noutside = \"leave\"\n{VALID_TAIL}"),
            "`window.outside`: unknown value \"leave\"\n  hint: use \"wait\"",
        ),
        (
            format!("name = \"t\"\ndeadline = \"soon\"\n{VALID_TAIL}"),
            "p.toml:2:12: `deadline`: \"soon\" is not a duration",
        ),
        // phases
        (
            phase("concurrency = 0"),
            "p.toml:5:15: `phase[1].concurrency`: concurrency must be at least 1, not 0\n  hint: 1 upgrades one node at a time",
        ),
        (
            phase("concurrency = 5000"),
            "`phase[1].concurrency`: concurrency 5000 is out of range",
        ),
        (
            phase("order = \"zone\""),
            "`phase[1].order`: unknown order \"zone\"\n  hint: use \"as-listed\", \"name\" or \"label:KEY\"",
        ),
        (
            phase("nodes = [\"a\"]"),
            "`phase[1].nodes`: a phase selects nodes by `selector` or by `nodes`, not both",
        ),
        (
            format!("name = \"t\"\n[[phase]]\nname = \"w\"\n{VALID_TAIL}"),
            "`phase[1]`: phase \"w\" selects no nodes\n  hint: add `selector",
        ),
        (
            format!("name = \"t\"\n[[phase]]\nname = \"w\"\nnodes = []\n{VALID_TAIL}"),
            "`phase[1].nodes`: phase \"w\" has an empty node list",
        ),
        (
            format!(
                "name = \"t\"\n[[phase]]\nname = \"w\"\nselector = \"zone in a\"\n{VALID_TAIL}"
            ),
            "`phase[1].selector`: invalid label selector \"zone in a\": `zone in` needs a parenthesised list",
        ),
        (
            format!(
                "name = \"t\"\n[[phase]]\nname = \"a\"\nnodes = [\"n1\"]\n[[phase]]\nname = \"b\"\nnodes = [\"n1\"]\n{VALID_TAIL}"
            ),
            "p.toml:7:9: `phase[2].nodes`: node \"n1\" is selected by phases \"a\" and \"b\"\n  hint: a node is upgraded once",
        ),
        (
            format!(
                "name = \"t\"\n[[phase]]\nname = \"a\"\nnodes = [\"n1\", \"n1\"]\n{VALID_TAIL}"
            ),
            "node \"n1\" is listed twice in phase \"a\"",
        ),
        (
            format!(
                "name = \"t\"\n[[phase]]\nname = \"a\"\nselector = \"x\"\n[[phase]]\nname = \"a\"\nselector = \"y\"\n{VALID_TAIL}"
            ),
            "`phase[2].name`: phase name \"a\" is used twice (also phase[1])",
        ),
        (
            format!(
                "name = \"t\"\n[[phase]]\nname = \"a\"\nselector = \"x\"\n[[phase]]\nname = \"b\"\nselector = \" x\"\n{VALID_TAIL}"
            ),
            "`phase[2].selector`: phases \"a\" and \"b\" use the same selector",
        ),
        // durations and ranges
        (
            phase("[drain]\ntimeout = \"5 parsecs\""),
            "`drain.timeout`: \"5 parsecs\" is not a duration",
        ),
        (
            phase("[drain]\ntimeout = \"0s\""),
            "`drain.timeout`: duration \"0s\" is out of range\n  hint: use a value between 1s and 1day",
        ),
        (
            phase("[settle]\nsoak = \"30days\""),
            "`settle.soak`: duration \"30days\" is out of range",
        ),
        (
            phase("[drain]\neviction-concurrency = 0"),
            "`drain.eviction-concurrency`: eviction-concurrency 0 is out of range",
        ),
        (
            phase("[drain]\non-pdb-timeout = \"disable_eviction\""),
            "`drain.on-pdb-timeout`: unknown value \"disable_eviction\"\n  hint: did you mean \"disable-eviction\"?",
        ),
        (
            phase("[drain]\non-pdb-timeout = \"skp\""),
            "`drain.on-pdb-timeout`: unknown value \"skp\"\n  hint: did you mean \"skip\"?",
        ),
        (
            phase("[drain]\non-pdb-timeout = \"uncordon\""),
            "`drain.on-pdb-timeout`: unknown value \"uncordon\"\n  hint: use one of: fail, disable-eviction, skip",
        ),
        (
            phase("[drain]\npod-selector = \"a b\""),
            "`drain.pod-selector`: invalid label selector",
        ),
        (
            format!(
                "name = \"t\"\ntarget-kubelet-version = \"1.36\"\n[[phase]]\nname = \"w\"\nselector = \"a\"\n{VALID_TAIL}"
            ),
            "`target-kubelet-version`: \"1.36\" is not a kubelet version\n  hint: write it as the node reports it, e.g. \"v1.36.3\"",
        ),
        // probes
        (
            phase("[[probe]]\nname = \"p\"\nkind = \"shell\""),
            "`probe[1].kind`: unknown probe kind \"shell\"\n  hint: use one of: command, http, job, prometheus",
        ),
        (
            phase("[[probe]]\nname = \"p\"\nkind = \"htp\"\nurl = \"http://x\""),
            "unknown probe kind \"htp\"\n  hint: did you mean \"http\"?",
        ),
        (
            phase("[[probe]]\nname = \"p\"\nkind = \"command\""),
            "`probe[1].command`: a command probe needs `command`",
        ),
        (
            phase("[[probe]]\nname = \"p\"\nkind = \"http\""),
            "`probe[1].url`: a http probe needs `url`",
        ),
        (
            phase("[[probe]]\nname = \"p\"\nkind = \"http\"\nurl = \"ftp://x\""),
            "`probe[1].url`: \"ftp://x\" is not an http(s) URL",
        ),
        (
            phase("[[probe]]\nname = \"p\"\nkind = \"job\""),
            "`probe[1].manifest`: a job probe needs `manifest`",
        ),
        (
            phase("[[probe]]\nname = \"p\"\nkind = \"prometheus\""),
            "`probe[1]`: a prometheus probe needs exactly one of `query` or `alerts-matching`",
        ),
        (
            phase(
                "[[probe]]\nname = \"p\"\nkind = \"prometheus\"\nquery = \"up\"\nmin = 2.0\nmax = 1.0",
            ),
            "`probe[1].min`: min 2 is above max 1",
        ),
        (
            phase("[[probe]]\nname = \"p\"\nkind = \"prometheus\"\nalerts-matching = \"\""),
            "`probe[1].alerts-matching`: the alert pattern is empty",
        ),
        (
            phase(
                "[[probe]]\nname = \"p\"\nkind = \"http\"\nurl = \"http://x\"\nwhen = [\"after-drian\"]",
            ),
            "`probe[1].when`: unknown value \"after-drian\"\n  hint: did you mean \"after-drain\"?",
        ),
        (
            phase(
                "[[probe]]\nname = \"p\"\nkind = \"http\"\nurl = \"http://x\"\nwhen = [\"periodic\"]",
            ),
            "`probe[1].interval`: probe \"p\" runs periodically but has no interval",
        ),
        (
            phase(
                "[[probe]]\nname = \"p\"\nkind = \"http\"\nurl = \"http://x\"\n[[probe]]\nname = \"p\"\nkind = \"http\"\nurl = \"http://y\"",
            ),
            "`probe[2].name`: probe name \"p\" is used twice",
        ),
        (
            phase("[[probe]]\nname = \"\"\nkind = \"http\"\nurl = \"http://x\""),
            "`probe[1].name`: the probe name is empty",
        ),
        // gates
        (
            phase("[[gate]]\nsignal = \"probe:vm\""),
            "`gate[1].signal`: gate refers to probe \"vm\", which is not defined\n  hint: define it in a [[probe]] table",
        ),
        (
            phase(
                "[[probe]]\nname = \"create-vm\"\nkind = \"command\"\ncommand = [\"x\"]\n[[gate]]\nsignal = \"probe:create-mv\"",
            ),
            "gate refers to probe \"create-mv\", which is not defined\n  hint: did you mean \"probe:create-vm\"?",
        ),
        (
            phase("[[gate]]\nsignal = \"alerts\""),
            "`gate[1].signal`: unknown gate signal \"alerts\"\n  hint: use \"pods\", \"pings\", \"nodes\" or \"probe:NAME\"",
        ),
        (
            phase("[[gate]]\nsignal = \"pod\""),
            "unknown gate signal \"pod\"\n  hint: did you mean \"pods\"?",
        ),
        (
            phase("[[gate]]\nsignal = \"pods\"\non-fail = \"stop\""),
            "`gate[1].on-fail`: unknown value \"stop\"\n  hint: use one of: abort, pause, warn",
        ),
        // monitor and environment
        (
            phase("[monitor]\nnot-ready-after = \"never\""),
            "`monitor.not-ready-after`: \"never\" is not a duration",
        ),
        (
            phase("[monitor]\nblind-after = \"100ms\""),
            "`monitor.blind-after`: duration \"100ms\" is out of range\n  hint: use a value between 1s and",
        ),
        (
            phase("[monitor.ping]\nselector = \"app in ()\""),
            "`monitor.ping.selector`: invalid label selector",
        ),
        (
            "name = \"t\"\n[[phase]]\nname = \"w\"\nselector = \"a\"\n[command]\nrun = \"x\"\nenv = { \"BAD-NAME\" = \"1\" }\n".to_string(),
            "`command.env.BAD-NAME`: \"BAD-NAME\" is not a valid environment variable name",
        ),
    ];
    for (text, want) in cases {
        let errs = errors(&text);
        assert!(
            errs.iter().any(|e| e.contains(want)),
            "want {want:?}\n  in {errs:#?}\n  for:\n{text}"
        );
    }
}

#[test]
fn all_problems_are_reported_at_once() {
    let errs = errors(
        "name = \"t\"\n[[phase]]\nname = \"w\"\nselector = \"a\"\nconcurrency = 0\n[drain]\ntimeout = \"x\"\n[[gate]]\nsignal = \"nope\"\n[command]\nrun = \"true\"\n",
    );
    assert_eq!(errs.len(), 3, "{errs:#?}");
}

#[test]
fn defaults_are_safe() {
    let pb = parse(Path::new("p.toml"), &phase("")).unwrap();
    assert_eq!(pb.phases[0].concurrency, 1);
    assert_eq!(pb.phases[0].failure_budget, 0);
    assert!(pb.drain.ignore_daemonsets && !pb.drain.force && !pb.drain.delete_emptydir_data);
    assert_eq!(pb.drain.on_pdb_timeout, PdbTimeoutPolicy::Fail);
    assert!(!pb.command.safe_to_rerun);
    assert_eq!(pb.drain.timeout, std::time::Duration::from_secs(300));
    assert_eq!(pb.max_failed_nodes, None);
}

#[test]
fn each_pdb_timeout_policy_parses() {
    for (name, want) in [
        ("fail", PdbTimeoutPolicy::Fail),
        ("disable-eviction", PdbTimeoutPolicy::DisableEviction),
        ("skip", PdbTimeoutPolicy::Skip),
    ] {
        let text = phase(&format!("[drain]\non-pdb-timeout = \"{name}\""));
        let pb = parse(Path::new("p.toml"), &text).unwrap();
        assert_eq!(pb.drain.on_pdb_timeout, want, "{name}");
    }
}

#[test]
fn the_default_monitor_options_are_those_of_a_playbook_without_a_monitor_table() {
    let pb = parse(Path::new("p.toml"), &phase("")).unwrap();
    assert_eq!(
        format!("{:?}", MonitorOptions::default()),
        format!("{:?}", pb.monitor)
    );
    assert_eq!(
        MonitorOptions::default().not_ready_after,
        std::time::Duration::from_secs(120)
    );
}

#[test]
fn shipped_playbooks_are_valid() {
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/playbooks")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
    }
}

const PHASE: &str = "name = \"t\"\n[[phase]]\nname = \"w\"\nselector = \"role=worker\"\n";

#[test]
fn env_from_runner_names_are_checked_and_a_missing_variable_names_its_line() {
    let with = |list: &str, env: &str| {
        format!("{PHASE}[command]\nrun = \"true\"\nenv = {{ {env} }}\nenv-from-runner = [{list}]\n")
    };
    for (list, env, want) in [
        (
            "\"1BAD\"",
            "",
            "p.toml:8:20: `command.env-from-runner`: \"1BAD\" is not a valid environment variable name",
        ),
        ("\"ROLLGATE_NODE\"", "", "is a name rollgate sets itself"),
        (
            "\"A_KEY\"",
            "A_KEY = \"x\"",
            "A_KEY is both in env and in env-from-runner",
        ),
        ("\"A_KEY\", \"A_KEY\"", "", "A_KEY is named twice"),
    ] {
        let got = errors(&with(list, env)).join("\n");
        assert!(got.contains(want) && got.contains("hint:"), "{list}: {got}");
    }
    // (Setting a variable needs unsafe code, which the crate forbids: the set case is in
    // tests/secrets_cluster.rs.)
    let text = with("\"RG_TEST_UNSET_VAR_1\"", "");
    let mut playbook = parse(Path::new("p.toml"), &text).unwrap();
    let err = resolve_runner_env(&mut playbook, Path::new("p.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("p.toml:8:20: `command.env-from-runner`: RG_TEST_UNSET_VAR_1 is named in env-from-runner but is not set in rollgate's environment")
            && err.contains("hint: export RG_TEST_UNSET_VAR_1"),
        "{err}"
    );
    // Debug shows names, never values.
    playbook.command.secret_env = SecretEnv([("K".to_owned(), "v4lue-hidden".to_owned())].into());
    assert!(!format!("{playbook:?}").contains("v4lue-hidden"));
}

#[test]
fn the_kept_copy_redacts_env_values_header_values_and_url_credentials() {
    let text = format!(
        "{PHASE}[command]\nrun = \"true\"\nenv = {{ A = \"env-secret-1\", B = \"x\" }} # kept\n\
         [[probe]]\nname = \"api\"\nkind = \"http\"\nurl = \"https://bob:pw-secret-2@api.example/h?token=tk-secret-3&n=1\"\n\
         headers = {{ Authorization = \"Bearer hdr-secret-4\" }}\n"
    );
    let shown = redacted_text(Path::new("p.toml"), &text).unwrap();
    for s in [
        "env-secret-1",
        "pw-secret-2",
        "tk-secret-3",
        "hdr-secret-4",
        "bob",
    ] {
        assert!(!shown.contains(s), "{s} in {shown}");
    }
    assert!(shown.contains("# kept") && shown.contains("n=1"), "{shown}");
    assert!(parse(Path::new("p.toml"), &shown).is_ok());
}
