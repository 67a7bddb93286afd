//! The remote command where it meets the operator and the node (issue 10): Ctrl-C at a real
//! terminal, a runner that dies mid-command, `sudo`, and commands that reboot the node. The
//! health monitor is on in every test, scoped to the test's own nodes and namespace.

mod support;

use k8s_openapi::api::core::v1::Node;
use std::path::Path;
use std::time::Duration;
use support::*;

const MINUTE: Duration = Duration::from_secs(60);

/// A playbook over the suite's nodes, one at a time, the monitor watching them and `ns`.
fn playbook(dir: &Path, suite: &str, ns: &str, rest: &str) -> std::path::PathBuf {
    write_playbook(
        dir,
        &format!(
            "name = \"cmd\"\n[[phase]]\nname = \"all\"\nselector = \"rollgate.test/suite={suite}\"\norder = \"name\"\n{rest}\n\
             [monitor]\nnamespaces = [\"{ns}\"]\nnode-selector = \"rollgate.test/suite={suite}\"\n"
        ),
    )
}

/// A command that prints as it goes, like a Chef run, for about three seconds.
fn chef_like(count_file: &Path) -> String {
    format!(
        "for i in 1 2 3 4 5 6; do echo \"chef: resource $i of 6\"; sleep 0.5; done; echo \"$ROLLGATE_NODE\" >> {}; echo chef: converged",
        count_file.display()
    )
}

fn runs_on(count_file: &Path, node: &str) -> usize {
    std::fs::read_to_string(count_file)
        .unwrap_or_default()
        .lines()
        .filter(|l| *l == node)
        .count()
}

#[tokio::test]
async fn ctrl_c_once_at_a_terminal_lets_the_command_in_flight_finish_and_starts_no_new_node() {
    let suite = unique("ctrlc");
    let (_nodes, names) = TestNodes::numbered(&suite, 2);
    let ns = TestNamespace::new("ctrlc");
    let dir = tempfile::tempdir().unwrap();
    let count = dir.path().join("count");
    let pb = playbook(
        dir.path(),
        &suite,
        &ns.0,
        &format!("[command]\nrun = '{}'\n", chef_like(&count)),
    );
    let mut cmd = rollgate(dir.path());
    cmd.args(["--log-format", "json", "run", "--yes"]).arg(&pb);
    let mut term = Terminal::start(&cmd);
    term.wait_for("chef: resource 2 of 6", MINUTE);
    term.ctrl_c();
    let (code, screen) = term.wait(2 * MINUTE);
    let events = events(&screen.replace('\r', ""));
    assert_eq!(code, 6, "{screen}");
    assert!(
        screen.contains("chef: converged"),
        "the command in flight ran to its end: {screen}"
    );
    assert_eq!(runs_on(&count, &names[0]), 1);
    assert!(
        !screen.contains("lost the SSH session"),
        "the terminal's Ctrl-C did not reach the SSH session: {screen}"
    );
    assert_eq!(
        named(&events, "node-done").len(),
        1,
        "the node in flight finished: {screen}"
    );
    assert!(!unschedulable(&names[0]), "{screen}");
    assert!(
        named(&events, "node-started")
            .iter()
            .all(|e| e["node"] == names[0].as_str()),
        "no new node started after Ctrl-C: {screen}"
    );
    assert_eq!(runs_on(&count, &names[1]), 0);
}

#[tokio::test]
async fn ctrl_c_twice_leaves_the_command_running_on_the_node_says_where_and_resume_reattaches() {
    let suite = unique("ctrlc2");
    let (_nodes, names) = TestNodes::numbered(&suite, 1);
    let ns = TestNamespace::new("ctrlc2");
    let dir = tempfile::tempdir().unwrap();
    let count = dir.path().join("count");
    let pb = playbook(
        dir.path(),
        &suite,
        &ns.0,
        &format!("[command]\nrun = '{}'\n", chef_like(&count)),
    );
    let lock = unique("ctrlc2-lock");
    let mut cmd = rollgate(dir.path());
    cmd.env("ROLLGATE_LOCK_NAME", &lock)
        .args(["--log-format", "json", "run", "--yes"])
        .arg(&pb);
    let mut term = Terminal::start(&cmd);
    term.wait_for("chef: resource 1 of 6", MINUTE);
    term.ctrl_c();
    std::thread::sleep(Duration::from_millis(300));
    term.ctrl_c();
    let (code, screen) = term.wait(MINUTE);
    assert_eq!(code, 6, "{screen}");
    let run_id = std::fs::read_to_string(dir.path().join("runs/latest")).unwrap();
    let record = format!("/var/tmp/rollgate-{}-{}", run_id.trim(), names[0]);
    assert!(
        screen.contains(&format!("{record}/output"))
            && screen.contains(&format!("{record}/status")),
        "rollgate says where the command's output and status are: {screen}"
    );
    assert!(unschedulable(&names[0]), "the node stays cordoned");
    // The command goes on without rollgate, to its end.
    let status = format!("{record}/status");
    eventually("the command to finish on the node", MINUTE, || {
        let status = status.clone();
        async move { std::fs::read_to_string(&status).is_ok_and(|s| s.trim() == "0") }
    })
    .await;
    let output = std::fs::read_to_string(format!("{record}/output")).unwrap();
    assert!(output.contains("chef: converged"), "{output}");
    let mut resume = rollgate(dir.path());
    resume
        .env("ROLLGATE_LOCK_NAME", &lock)
        .args(["--log-format", "json", "resume"]);
    let (code, _, stderr) = run_rollgate(resume, 2 * MINUTE);
    assert_eq!(
        code, 0,
        "resume reattaches without --command-done: {stderr}"
    );
    assert_eq!(
        runs_on(&count, &names[0]),
        1,
        "the command ran once: {stderr}"
    );
    assert!(!unschedulable(&names[0]));
    assert!(journal_has(
        dir.path(),
        &names[0],
        "step-finished",
        "settle"
    ));
}

#[tokio::test]
async fn with_sudo_the_command_timeout_kills_the_command_of_a_non_root_ssh_user() {
    let suite = unique("sudo");
    let (_nodes, names) = TestNodes::numbered(&suite, 1);
    let ns = TestNamespace::new("sudo");
    let dir = tempfile::tempdir().unwrap();
    // A marker in the command line to find the process by.
    let marker = 4000 + (std::process::id() % 1000);
    let pb = playbook(
        dir.path(),
        &suite,
        &ns.0,
        &format!(
            "[command]\nrun = 'echo \"as $(id -un)\"; sleep {marker}.5'\nuser = \"{SUDO_USER}\"\nsudo = true\ntimeout = \"3s\"\n"
        ),
    );
    let mut cmd = rollgate(dir.path());
    cmd.args(["--log-format", "json", "run", "--yes"]).arg(&pb);
    let (code, _, stderr) = run_rollgate(cmd, 2 * MINUTE);
    assert_eq!(code, 4, "{stderr}");
    let events = events(&stderr);
    let failed = named(&events, "node-failed");
    assert!(
        failed[0]["reason"].as_str().unwrap().contains("timeout"),
        "{stderr}"
    );
    assert!(
        named(&events, "command-output")
            .iter()
            .any(|e| e["line"] == "as root"),
        "the command ran as root through sudo: {stderr}"
    );
    let left = std::process::Command::new("pgrep")
        .args(["-f", &format!("sleep {marker}.5")])
        .output()
        .unwrap();
    assert!(
        !left.status.success(),
        "the command was killed at its timeout: {}",
        String::from_utf8_lossy(&left.stdout)
    );
    assert!(unschedulable(&names[0]));
}

/// Watches one node and records whether it was ever seen schedulable while not Ready.
struct ReadyWatch {
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ReadyWatch {
    async fn start(name: &str) -> Self {
        use futures::StreamExt;
        use kube::runtime::watcher;
        let api: kube::Api<Node> = kube::Api::all(client().await);
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = std::sync::Arc::clone(&seen);
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let task = tokio::spawn(async move {
            let mut stream = watcher(api, config).boxed();
            while let Some(Ok(event)) = stream.next().await {
                if let watcher::Event::Apply(n) | watcher::Event::InitApply(n) = event {
                    let ready = n
                        .status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|cs| {
                            cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                        });
                    let cordoned = n
                        .spec
                        .as_ref()
                        .and_then(|s| s.unschedulable)
                        .unwrap_or(false);
                    let boot = n
                        .status
                        .as_ref()
                        .and_then(|s| s.node_info.as_ref())
                        .map(|i| i.boot_id.clone())
                        .unwrap_or_default();
                    sink.lock()
                        .unwrap()
                        .push(format!("ready={ready} cordoned={cordoned} boot={boot}"));
                }
            }
        });
        Self { seen, task }
    }

    fn states(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for ReadyWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_reboots_the_node_is_done_only_once_the_node_is_back_on_a_new_boot() {
    let suite = unique("reboot");
    let (_nodes, names) = TestNodes::numbered(&suite, 1);
    let ns = TestNamespace::new("reboot");
    let dir = tempfile::tempdir().unwrap();
    let pb = playbook(
        dir.path(),
        &suite,
        &ns.0,
        &format!(
            "[command]\nrun = '{}'\nenv = {{ FAKE_REBOOT = \"async\", FAKE_UPGRADE_SECONDS = \"1\" }}\n[ready]\nreboot = true\ntimeout = \"1m\"\n",
            upgrade_script()
        ),
    );
    let watch = ReadyWatch::start(&names[0]).await;
    let mut cmd = rollgate(dir.path());
    cmd.args(["--log-format", "json", "run", "--yes"]).arg(&pb);
    let (code, _, stderr) = tokio::task::spawn_blocking(move || run_rollgate(cmd, 2 * MINUTE))
        .await
        .unwrap();
    assert_eq!(code, 0, "{stderr}");
    let events = events(&stderr);
    let ready = named(&events, "step-finished")
        .into_iter()
        .find(|e| e["step"] == "wait-ready")
        .unwrap()
        .clone();
    assert!(
        ready["detail"].as_str().unwrap().contains("rebooted"),
        "{ready}"
    );
    let states = watch.states();
    assert!(
        states.iter().any(|s| s.contains("ready=false")),
        "the node went down: {states:?}"
    );
    assert!(
        !states
            .iter()
            .any(|s| s.contains("ready=false cordoned=false")),
        "the node was never schedulable while NotReady: {states:?}"
    );
    assert!(
        states
            .last()
            .unwrap()
            .starts_with("ready=true cordoned=false")
            && !states.last().unwrap().ends_with("boot="),
        "back, uncordoned, on a new boot: {states:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undeclared_reboot_right_after_the_command_is_waited_for_and_said() {
    let suite = unique("reboot2");
    let (_nodes, names) = TestNodes::numbered(&suite, 1);
    let ns = TestNamespace::new("reboot2");
    let dir = tempfile::tempdir().unwrap();
    // The command schedules a reboot and returns at once, the node still Ready (as
    // `apt-get upgrade && systemctl reboot` does); the playbook does not say it reboots.
    let pb = playbook(
        dir.path(),
        &suite,
        &ns.0,
        &format!(
            "[command]\nrun = '{}'\nenv = {{ FAKE_REBOOT = \"async\", FAKE_UPGRADE_SECONDS = \"1\" }}\n[ready]\ntimeout = \"1m\"\n",
            upgrade_script()
        ),
    );
    let watch = ReadyWatch::start(&names[0]).await;
    let mut cmd = rollgate(dir.path());
    cmd.args(["--log-format", "json", "run", "--yes"]).arg(&pb);
    let (code, _, stderr) = tokio::task::spawn_blocking(move || run_rollgate(cmd, 2 * MINUTE))
        .await
        .unwrap();
    assert_eq!(code, 0, "{stderr}");
    let events = events(&stderr);
    assert!(
        named(&events, "warning").iter().any(|w| w["message"]
            .as_str()
            .unwrap()
            .contains("turned NotReady or rebooted")),
        "rollgate says it waits for the node: {stderr}"
    );
    let states = watch.states();
    assert!(
        states.iter().any(|s| s.contains("ready=false")),
        "the node went down: {states:?}"
    );
    assert!(
        !states
            .iter()
            .any(|s| s.contains("ready=false cordoned=false")),
        "the node was never uncordoned while NotReady: {states:?}"
    );
    assert!(
        states
            .last()
            .unwrap()
            .starts_with("ready=true cordoned=false"),
        "{states:?}"
    );
}

#[tokio::test]
async fn a_new_run_never_starts_a_second_command_beside_another_runs_command_in_flight() {
    let suite = unique("twice");
    let (_nodes, names) = TestNodes::numbered(&suite, 1);
    let ns = TestNamespace::new("twice");
    let dir = tempfile::tempdir().unwrap();
    let count = dir.path().join("count");
    let pb = playbook(
        dir.path(),
        &suite,
        &ns.0,
        &format!("[command]\nrun = '{}'\n", chef_like(&count)),
    );
    // Run 1 dies in the middle of its command (as a runner that crashed or lost its lock).
    let mut first = rollgate(dir.path());
    first
        .args(["--log-format", "json", "run", "--yes"])
        .arg(&pb)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut first = first.spawn().unwrap();
    let (node, state) = (names[0].clone(), dir.path().to_owned());
    // The command really runs on the node: its output is in its record.
    eventually("run 1's command to start", MINUTE, || {
        let (node, state) = (node.clone(), state.clone());
        async move {
            std::fs::read_to_string(state.join("runs/latest")).is_ok_and(|run| {
                std::fs::read_to_string(format!("/var/tmp/rollgate-{}-{node}/output", run.trim()))
                    .is_ok_and(|o| o.contains("resource 1"))
            })
        }
    })
    .await;
    first.kill().unwrap();
    let _ = first.wait();
    let first_run = std::fs::read_to_string(dir.path().join("runs/latest")).unwrap();
    // Run 2 (its own lock, as after the first one's lease expired) over the same node.
    let other = tempfile::tempdir().unwrap();
    let mut second = rollgate(other.path());
    second
        .args(["--log-format", "json", "run", "--yes"])
        .arg(&pb);
    let (code, _, stderr) = run_rollgate(second, 2 * MINUTE);
    assert_eq!(code, 4, "{stderr}");
    let events = events(&stderr);
    let reason = named(&events, "node-failed")[0]["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        reason.contains(first_run.trim()) && reason.contains("rollgate resume"),
        "{reason}"
    );
    // Run 1's command ran to its end on the node, once; resuming run 1 finishes the node.
    let status = format!("/var/tmp/rollgate-{}-{}/status", first_run.trim(), names[0]);
    eventually("run 1's command to finish", MINUTE, || {
        let status = status.clone();
        async move { std::fs::read_to_string(&status).is_ok_and(|s| s.trim() == "0") }
    })
    .await;
    let mut resume = rollgate(dir.path());
    resume.args(["--log-format", "json", "resume"]);
    let (code, _, stderr) = run_rollgate(resume, 2 * MINUTE);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(runs_on(&count, &names[0]), 1, "one command ran on the node");
    assert!(!unschedulable(&names[0]));
}
