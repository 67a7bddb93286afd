//! The scale path at a small size (issue 13): 300 kwok nodes on the test environment's shared
//! sshd (`testenv node add-many`), two pods each, upgraded by one `rollgate run` at concurrency
//! 20 with the health monitor on. The full 500-node size is `cargo xtask bench`'s.

mod support;

use std::time::Duration;
use support::*;

const NODES: u32 = 300;
const TARGET: &str = "v1.36.3";

#[test]
fn a_run_over_300_nodes_on_the_shared_sshd_upgrades_every_node_at_concurrency_20() {
    let suite = unique("scale");
    // Dropped in reverse: the fleet (Deployments, then nodes) goes before its namespace.
    let ns = TestNamespace::new("scale");
    let fleet = Fleet::add(&suite, NODES, 2, &ns.0);
    let dir = tempfile::tempdir().unwrap();
    // The command prints and sets the target version, as a package run would: one status write.
    let command = format!(
        "echo \"installing kubelet $ROLLGATE_TARGET_KUBELET_VERSION on $ROLLGATE_NODE\"; \
         {kubectl} --kubeconfig {kc} patch node \"$ROLLGATE_NODE\" --subresource=status --type=merge \
         -p \"{{\\\"status\\\":{{\\\"nodeInfo\\\":{{\\\"kubeletVersion\\\":\\\"$ROLLGATE_TARGET_KUBELET_VERSION\\\"}}}}}}\"",
        kubectl = env().kubectl.display(),
        kc = env().kubeconfig.display(),
    );
    let playbook = write_playbook_in(
        dir.path(),
        &format!(
            "name = \"scale\"\ntarget-kubelet-version = \"{TARGET}\"\n\
             [[phase]]\nname = \"all\"\nselector = \"rollgate.test/suite={suite}\"\nconcurrency = 20\norder = \"name\"\n\
             [drain]\ntimeout = \"2m\"\n[command]\nrun = '''{command}'''\ntimeout = \"1m\"\n\
             [ready]\ntimeout = \"1m\"\nstable-for = \"0s\"\n[settle]\ntimeout = \"2m\"\n"
        ),
        &ns.0,
    );
    let mut cmd = rollgate(dir.path());
    // `--no-ssh-check`: the run's own commands reach every node over SSH; the pre-flight's
    // separate connection to each of 300 nodes would double that (measured: ~80 s of a loaded
    // 2-core machine). The bench keeps it.
    cmd.args(["--log-format", "json", "run", "--yes", "--no-ssh-check"])
        .arg(&playbook);
    let (code, _stdout, stderr) = run_rollgate(cmd, Duration::from_secs(600));
    let events = events(&stderr);
    let tail: String = stderr.lines().rev().take(30).collect::<Vec<_>>().join("\n");
    assert_eq!(
        code, 0,
        "the run succeeds; last lines (newest first):\n{tail}"
    );
    let done = named(&events, "node-done");
    assert_eq!(done.len(), NODES as usize, "every node is done:\n{tail}");
    assert!(named(&events, "node-failed").is_empty(), "{tail}");
    assert!(
        named(&events, "gate-decision")
            .iter()
            .all(|d| d["decision"]["decision"] == "warn"),
        "no gate stopped or paused the run:\n{tail}"
    );
    // Every node reports the target and is schedulable again: one list, not 300 gets.
    let listed = kubectl_ok(&[
        "get",
        "nodes",
        "-l",
        &format!("rollgate.test/suite={suite}"),
        "-o",
        "jsonpath={range .items[*]}{.metadata.name} {.status.nodeInfo.kubeletVersion} {.spec.unschedulable}{\"\\n\"}{end}",
    ]);
    let rows: Vec<Vec<&str>> = listed.lines().map(|l| l.split(' ').collect()).collect();
    assert_eq!(rows.len(), fleet.names.len());
    for row in &rows {
        assert_eq!(row[1], TARGET, "{} upgraded", row[0]);
        assert_ne!(row.get(2), Some(&"true"), "{} uncordoned", row[0]);
    }
    // The commands ran on the nodes and said so.
    let printed = named(&events, "command-output")
        .iter()
        .filter(|e| {
            e.to_string()
                .contains(&format!("installing kubelet {TARGET}"))
        })
        .count();
    assert!(printed >= 1, "the command's output is reported:\n{tail}");
}
