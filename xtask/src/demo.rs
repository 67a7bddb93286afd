//! `cargo xtask demo`: the README's first command. Brings up the test environment with six
//! labelled nodes (two control-plane, four workers in two zones), sample workloads with
//! PodDisruptionBudgets and a DaemonSet, then runs `rollgate run playbooks/demo.toml` against
//! it with live progress. The environment stays up afterwards (`--down` stops it).

use crate::paths::workspace_root;
use crate::testenv::{self, EnvDescription};
use crate::{Context, Result};
use std::io::Write;
use std::process::{Command, ExitCode, Stdio};

const NODES: &[(&str, &[&str], &[&str])] = &[
    (
        "demo-cp-1",
        &[
            "node-role.kubernetes.io/control-plane=",
            "topology.kubernetes.io/zone=a",
        ],
        &["node-role.kubernetes.io/control-plane:NoSchedule"],
    ),
    (
        "demo-cp-2",
        &[
            "node-role.kubernetes.io/control-plane=",
            "topology.kubernetes.io/zone=b",
        ],
        &["node-role.kubernetes.io/control-plane:NoSchedule"],
    ),
    (
        "demo-worker-a1",
        &[
            "node-role.kubernetes.io/worker=",
            "topology.kubernetes.io/zone=a",
        ],
        &[],
    ),
    (
        "demo-worker-a2",
        &[
            "node-role.kubernetes.io/worker=",
            "topology.kubernetes.io/zone=a",
        ],
        &[],
    ),
    (
        "demo-worker-b1",
        &[
            "node-role.kubernetes.io/worker=",
            "topology.kubernetes.io/zone=b",
        ],
        &[],
    ),
    (
        "demo-worker-b2",
        &[
            "node-role.kubernetes.io/worker=",
            "topology.kubernetes.io/zone=b",
        ],
        &[],
    ),
];

const WORKLOADS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: demo}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: demo}
spec:
  replicas: 4
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      nodeSelector: {demo.rollgate.dev/node: "true"}
      containers: [{name: web, image: nginx}]
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: web, namespace: demo}
spec:
  maxUnavailable: 1
  selector: {matchLabels: {app: web}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: queue, namespace: demo}
spec:
  replicas: 2
  selector: {matchLabels: {app: queue}}
  template:
    metadata: {labels: {app: queue}}
    spec:
      nodeSelector: {demo.rollgate.dev/node: "true"}
      containers: [{name: rabbitmq, image: rabbitmq}]
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: queue, namespace: demo}
spec:
  minAvailable: 1
  selector: {matchLabels: {app: queue}}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: node-agent, namespace: demo}
spec:
  selector: {matchLabels: {app: node-agent}}
  template:
    metadata: {labels: {app: node-agent}}
    spec:
      nodeSelector: {demo.rollgate.dev/node: "true"}
      tolerations: [{operator: Exists}]
      containers: [{name: agent, image: node-exporter}]
"#;

fn kubectl(env: &EnvDescription, args: &[&str]) -> Command {
    let mut c = Command::new(&env.kubectl);
    c.arg("--kubeconfig").arg(&env.kubeconfig).args(args);
    c
}

fn check(mut cmd: Command, what: &str) -> Result<()> {
    let out = cmd.output().context(what)?;
    if !out.status.success() {
        return Err(format!("{what}: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(())
}

pub fn run(down_after: bool) -> Result<ExitCode> {
    testenv::install()?;
    testenv::up(&testenv::UpOptions::default())?;
    let env = testenv::read_env()?;
    let xtask = std::env::current_exe().context("locate xtask")?;
    for (name, labels, taints) in NODES {
        let exists = kubectl(&env, &["get", "node", name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if exists {
            // A second demo run upgrades again: put the old version back.
            check(
                kubectl(
                    &env,
                    &[
                        "patch",
                        "node",
                        name,
                        "--subresource=status",
                        "--type=merge",
                        "-p",
                        r#"{"status":{"nodeInfo":{"kubeletVersion":"v1.35.4"}}}"#,
                    ],
                ),
                "reset kubelet version",
            )?;
            continue;
        }
        let mut cmd = Command::new(&xtask);
        cmd.args([
            "testenv",
            "node",
            "add",
            name,
            "--label",
            "demo.rollgate.dev/node=true",
            "--kubelet-version",
            "v1.35.4",
        ]);
        for l in *labels {
            cmd.args(["--label", l]);
        }
        for t in *taints {
            cmd.args(["--taint", t]);
        }
        check(cmd, &format!("add node {name}"))?;
    }
    let mut apply = kubectl(&env, &["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("kubectl apply")?;
    apply
        .stdin
        .take()
        .expect("piped")
        .write_all(WORKLOADS.as_bytes())
        .context("write workloads")?;
    let out = apply.wait_with_output().context("kubectl apply")?;
    if !out.status.success() {
        return Err(format!(
            "kubectl apply: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    check(
        kubectl(
            &env,
            &[
                "-n",
                "demo",
                "wait",
                "--for=condition=Available",
                "deployment",
                "--all",
                "--timeout=90s",
            ],
        ),
        "wait for demo workloads",
    )?;
    eprintln!(
        "[demo] cluster ready: 6 nodes, Deployments web (PDB maxUnavailable 1) and queue (PDB minAvailable 1), DaemonSet node-agent"
    );
    eprintln!("[demo] running: rollgate run playbooks/demo.toml --yes");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(workspace_root())
        .args([
            "run",
            "--quiet",
            "--bin",
            "rollgate",
            "--",
            // Text for people even when the output is piped (JSON lines otherwise).
            "--log-format",
            "text",
            "run",
            "playbooks/demo.toml",
            "--yes",
        ])
        .arg("--kubeconfig")
        .arg(&env.kubeconfig)
        .arg("--ssh-config")
        .arg(&env.ssh_config)
        .arg("--state-dir")
        .arg(env.state_dir.join("rollgate"))
        .status()
        .context("run rollgate")?;
    let _ = kubectl(
        &env,
        &["get", "nodes", "-l", "demo.rollgate.dev/node", "-o", "wide"],
    )
    .status();
    if down_after {
        testenv::down()?;
    } else {
        eprintln!(
            "[demo] the cluster is still up: export KUBECONFIG={}; stop it with `cargo xtask testenv down`",
            env.kubeconfig.display()
        );
    }
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(status.code().unwrap_or(1) as u8)
    })
}
