use super::*;

static EMPTY: BTreeMap<String, String> = BTreeMap::new();

fn invocation<'a>(
    env: &'a BTreeMap<String, String>,
    run: &'a str,
    record: &'a str,
) -> RemoteInvocation<'a> {
    RemoteInvocation {
        address: "10.0.0.1",
        user: None,
        run,
        env,
        timeout: Duration::from_secs(90),
        record,
        sudo: false,
        secret_env: &EMPTY,
    }
}

#[test]
fn facts_travel_as_env_words_and_the_run_line_as_one_argument() {
    let env: BTreeMap<String, String> =
        [("ROLLGATE_NODE".to_string(), "n1; rm -rf /".to_string())].into();
    let inv = invocation(&env, "chef-client -o 'role[x]'", "/var/tmp/rollgate-r1-n1");
    let words = remote_words(&inv, Mode::Start, 0);
    assert_eq!(words[..2], ["env", "ROLLGATE_NODE=n1; rm -rf /"]);
    assert_eq!(words[2..4], ["sh", "-c"]);
    assert_eq!(
        words[5..],
        [
            "rollgate-wrapper",
            "start",
            "/var/tmp/rollgate-r1-n1",
            "90",
            "chef-client -o 'role[x]'",
            "0"
        ]
    );
    let sudo = RemoteInvocation { sudo: true, ..inv };
    assert_eq!(
        remote_words(&sudo, Mode::Probe, 3)[..3],
        ["sudo", "-n", "env"]
    );
    assert_eq!(
        describe_words(&sudo),
        r#"sudo -n env 'ROLLGATE_NODE=n1; rm -rf /' sh -c '<rollgate wrapper: detached, timeout -s KILL, record>' rollgate-wrapper start /var/tmp/rollgate-r1-n1 90 'chef-client -o '\''role[x]'\''' 0"#
    );
}

#[test]
fn record_states_parse_from_the_wrappers_words() {
    assert_eq!(RecordState::parse("exit 0"), Some(RecordState::Exited(0)));
    assert_eq!(
        RecordState::parse("exit 137\n"),
        Some(RecordState::Exited(137))
    );
    assert_eq!(RecordState::parse("running"), Some(RecordState::Running));
    assert_eq!(RecordState::parse("starting"), Some(RecordState::Running));
    assert_eq!(RecordState::parse("no-record"), Some(RecordState::NoRecord));
    assert_eq!(RecordState::parse("rebooted"), Some(RecordState::Rebooted));
    assert_eq!(RecordState::parse("lost"), Some(RecordState::Lost));
    assert_eq!(RecordState::parse("exit x"), None);
}

/// Runs the wrapper with the local `sh` (the node's side without SSH): (stdout, stderr).
fn wrapper(mode: &str, dir: &std::path::Path, run: &str) -> (String, String) {
    let out = std::process::Command::new("sh")
        .args(["-c", WRAPPER, "rollgate-wrapper", mode])
        .arg(dir)
        .args(["30", run, "0"])
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_wrapper_records_output_and_status_and_never_starts_a_command_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("record");
    let count = tmp.path().join("count");
    let run = format!(
        "echo run >> {}; echo one; echo two >&2; exit 3",
        count.display()
    );
    let (probe_out, probe) = wrapper("probe", &dir, &run);
    assert_eq!(
        (probe_out.as_str(), probe.trim()),
        ("", "ROLLGATE:state no-record")
    );
    let (out, err) = wrapper("start", &dir, &run);
    assert_eq!(out, "one\ntwo\n", "{err}");
    assert!(err.contains("ROLLGATE:started"), "{err}");
    assert!(err.trim_end().ends_with("ROLLGATE:end exit 3"), "{err}");
    // Again: it attaches to the record (replaying the output) and does not run it again.
    let (out, err) = wrapper("start", &dir, &run);
    assert_eq!(out, "one\ntwo\n");
    assert!(err.contains("ROLLGATE:attached"), "{err}");
    assert!(err.trim_end().ends_with("ROLLGATE:end exit 3"), "{err}");
    assert_eq!(std::fs::read_to_string(&count).unwrap(), "run\n");
    assert_eq!(
        wrapper("probe", &dir, &run).1.trim(),
        "ROLLGATE:state exit 3"
    );
}

#[test]
fn a_restart_moves_a_failed_record_aside_and_runs_the_command_again() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("record");
    let count = tmp.path().join("count");
    let run = format!("echo run >> {}; exit 3", count.display());
    assert!(
        wrapper("start", &dir, &run)
            .1
            .contains("ROLLGATE:end exit 3")
    );
    let (_, err) = wrapper("restart", &dir, &run);
    assert!(err.contains("ROLLGATE:archived"), "{err}");
    assert!(err.contains("ROLLGATE:started"), "{err}");
    assert_eq!(std::fs::read_to_string(&count).unwrap(), "run\nrun\n");
    assert!(tmp.path().join("record.attempt-1/status").exists());
    // A success is never run again, not even by a restart: it is attached to.
    let ok = tmp.path().join("ok");
    let run = format!("echo run >> {}", count.display());
    assert!(
        wrapper("start", &ok, &run)
            .1
            .contains("ROLLGATE:end exit 0")
    );
    let (_, err) = wrapper("restart", &ok, &run);
    assert!(err.contains("ROLLGATE:attached"), "{err}");
    assert!(err.trim_end().ends_with("ROLLGATE:end exit 0"), "{err}");
    assert_eq!(std::fs::read_to_string(&count).unwrap(), "run\nrun\nrun\n");
}

#[test]
fn a_record_that_is_a_link_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::write(elsewhere.join("status"), "0\n").unwrap();
    let dir = tmp.path().join("record");
    std::os::unix::fs::symlink(&elsewhere, &dir).unwrap();
    for mode in ["start", "restart", "probe"] {
        let (out, err) = wrapper(mode, &dir, "echo must not run");
        assert_eq!(out, "", "{mode}");
        assert!(
            err.contains("ROLLGATE:error") && err.contains("refusing"),
            "{mode}: {err}"
        );
    }
}

#[tokio::test]
async fn output_in_another_encoding_is_read_to_the_end() {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let bytes: &[u8] = b"caf\xe9\r\nafter\n";
    forward_lines(Stream::Stdout, bytes, tx).await;
    let mut lines = Vec::new();
    while let Ok((_, line)) = rx.try_recv() {
        lines.push(line);
    }
    assert_eq!(lines, ["caf\u{fffd}", "after"]);
}

#[test]
fn the_command_outlives_the_wrapper_that_started_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("record");
    let mut child = std::process::Command::new("sh")
        .args(["-c", WRAPPER, "rollgate-wrapper", "start"])
        .arg(&dir)
        .args(["30", "echo begin; sleep 1; echo finished", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(400));
    // The session goes away (as when ssh dies): the wrapper is killed, the command is not.
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        wrapper("probe", &dir, "").1.trim(),
        "ROLLGATE:state running"
    );
    let (out, err) = wrapper("start", &dir, "echo must not run");
    assert_eq!(out, "begin\nfinished\n", "{err}");
    assert!(err.trim_end().ends_with("ROLLGATE:end exit 0"), "{err}");
}

#[test]
fn secrets_go_on_stdin_and_come_back_whole_in_the_shell() {
    let value = "-----BEGIN KEY-----\nab'c \"$(id)\" `x` \\\n-----END KEY-----\n";
    let secrets = BTreeMap::from([("CHEF_KEY".to_owned(), value.to_owned())]);
    let env = BTreeMap::new();
    let inv = RemoteInvocation {
        secret_env: &secrets,
        ..invocation(&env, "true", "/var/tmp/r")
    };
    // Never a word of the command line.
    assert!(
        remote_words(&inv, Mode::Start, 0)
            .iter()
            .all(|w| !w.contains("BEGIN KEY") && !w.contains("CHEF_KEY"))
    );
    // The wrapper's first line of work: `eval "$(cat)"`.
    let mut child = std::process::Command::new("sh")
        .args(["-c", r#"s=$(cat) && eval "$s"; printf %s "$CHEF_KEY""#])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&secret_input(&secrets))
        .unwrap();
    let out = child.wait_with_output().unwrap();
    // Byte for byte, trailing newline included (it is inside the quotes).
    assert_eq!(String::from_utf8(out.stdout).unwrap(), value);
}
