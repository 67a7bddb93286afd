//! The command line as a user meets it: `check` on good and bad files, help with examples and
//! exit codes, completions. No cluster needed.

use std::process::Command;

fn rollgate(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rollgate"))
        .args(args)
        .env_remove("ROLLGATE_CONFIG")
        .output()
        .expect("run rollgate");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_accepts_the_shipped_playbooks_with_a_summary() {
    let root = env!("CARGO_MANIFEST_DIR");
    let (code, stdout, stderr) = rollgate(&[
        "check",
        &format!("{root}/playbooks/k8s-upgrade-control-plane-first.toml"),
        "--config",
        &format!("{root}/config.example.toml"),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("is valid"), "{stdout}");
    assert!(
        stdout.contains(
            "phase 1 \"control-plane\": selector node-role.kubernetes.io/control-plane; 1 at a time"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("probes: create-vm, no-critical-alerts; gates: 3"),
        "{stdout}"
    );
}

#[test]
fn check_rejects_bad_input_with_exit_2_and_a_located_error() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "name = \"x\"\n[[phase]]\nname = \"w\"\nselector = \"a\"\nconcurrency = 0\n[command]\nrun = \"true\"\n").unwrap();
    let (code, _, stderr) = rollgate(&["check", bad.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains(&format!(
            "error: {}:5:15: `phase[1].concurrency`: concurrency must be at least 1, not 0",
            bad.display()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("hint:"), "{stderr}");

    let (code, _, stderr) = rollgate(&["check", "/nonexistent/playbook.toml"]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("cannot read the playbook") && stderr.contains("hint:"),
        "{stderr}"
    );

    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "[slack]\nchannel = \"#x\"\ntoken = \"xoxb-123\"\n").unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    let (code, _, stderr) = rollgate(&[
        "check",
        &format!("{root}/playbooks/demo.toml"),
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("Slack tokens are never written in the config file"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("xoxb-123"),
        "a secret must not be echoed: {stderr}"
    );

    let (code, _, _) = rollgate(&["plan"]);
    assert_eq!(code, 2, "usage errors are bad input too");
}

#[test]
fn help_has_examples_and_exit_codes_and_completions_are_generated() {
    let (code, stdout, _) = rollgate(&["--help"]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("Examples:")
            && stdout.contains("Exit codes:")
            && stdout.contains("4  rollout stopped"),
        "{stdout}"
    );
    for sub in [
        "runs",
        "check",
        "plan",
        "run",
        "report",
        "pause",
        "abort",
        "resume",
        "status",
        "completions",
    ] {
        let (code, stdout, _) = rollgate(&[sub, "--help"]);
        assert_eq!(code, 0);
        assert!(
            stdout.contains("Example"),
            "{sub} --help has examples: {stdout}"
        );
    }
    let (code, stdout, _) = rollgate(&["completions", "bash"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("_rollgate()"), "bash completion function");
}

#[test]
fn a_run_id_that_is_not_one_is_bad_input_before_any_file_is_touched() {
    for command in ["status", "resume", "pause", "abort", "report"] {
        let (code, _, stderr) = rollgate(&[command, "../../etc", "--state-dir", "/nonexistent"]);
        assert_eq!(code, 2, "{command}: {stderr}");
        assert!(stderr.contains("is not a run id"), "{command}: {stderr}");
    }
}

#[test]
fn check_shows_the_configs_maintenance_window_for_a_playbook_without_one() {
    let dir = std::env::temp_dir().join(format!("rollgate-cli-window-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        "[window]\ndays = [\"sat\"]\nstart = \"02:00\"\nend = \"06:00\"\n",
    )
    .unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    let (code, stdout, stderr) = rollgate(&[
        "check",
        &format!("{root}/playbooks/demo.toml"),
        "--config",
        config.to_str().unwrap(),
    ]);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("maintenance window: sat 02:00-06:00 UTC"),
        "{stdout}"
    );
}

#[test]
fn every_exit_code_is_listed_alike_in_the_readme_and_in_help() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("### Exit codes")
        .nth(1)
        .expect("the README has an exit code table");
    let readme_codes: Vec<u8> = section
        .lines()
        .skip_while(|l| !l.starts_with("| code"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .next()
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        })
        .collect();
    let table_codes: Vec<u8> = rollgate::exit::TABLE
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(readme_codes, table_codes, "README table vs exit::TABLE");
    for args in [&["--help"][..], &["run", "--help"], &["resume", "--help"]] {
        let (code, stdout, _) = rollgate(args);
        assert_eq!(code, 0);
        for line in rollgate::exit::TABLE.lines().skip(1) {
            let words: Vec<&str> = line.split_whitespace().collect();
            assert!(
                stdout
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .windows(words.len())
                    .any(|w| w == words),
                "`rollgate {}` lists {line:?}:\n{stdout}",
                args.join(" ")
            );
        }
    }
}

#[test]
fn check_shows_sudo_and_an_expected_reboot() {
    let root = env!("CARGO_MANIFEST_DIR");
    let (code, stdout, stderr) = rollgate(&[
        "check",
        &format!("{root}/playbooks/os-update-zone-by-zone.toml"),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("as root through sudo -n"), "{stdout}");
    assert!(
        stdout.contains("stable for 5s, the command reboots the node"),
        "{stdout}"
    );
}
