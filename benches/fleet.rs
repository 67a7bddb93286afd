//! Rollgate at fleet scale on the local test cluster (issue 13): N kwok nodes sharing one sshd
//! with M pods each (default 500 x 60; `ROLLGATE_BENCH_NODES`, `ROLLGATE_BENCH_PODS_PER_NODE`).
//!
//! - the environment: how long the fleet takes to build, and the memory of each process;
//! - `rollgate monitor` during a steady watch: RSS, CPU, and the apiserver requests per second
//!   it adds beyond its watches (`apiserver_request_total`, a window with the monitor against
//!   one without: nothing else runs then);
//! - detection latency: a crash loop patched into one pod -> the gate decision in the
//!   monitor's output, 20 trials;
//! - the whole rollout at concurrency 20 with an instant command that sets the target kubelet
//!   version: wall time and rollgate's overhead per node from the journal's step timings, side
//!   by side with the hand-run method (`kubectl drain`, `ssh NODE COMMAND`, `kubectl uncordon`,
//!   20 at a time with `xargs -P 20`) over the same nodes.
//!
//! Run with `cargo xtask bench` (its own environment), or `cargo bench --bench fleet` with an
//! environment up. Prints figures; asserts nothing about timings.

#[path = "../tests/support/mod.rs"]
mod support;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use support::*;

const TARGET: &str = "v1.36.3";
const CONCURRENCY: u32 = 20;

fn size(var: &str, default: u32) -> u32 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The environment's processes (name, pid) from `STATE/pids`, sshd left out.
fn env_pids() -> Vec<(String, u32)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(env().state_dir.join("pids"))
        .unwrap()
        .flatten()
    {
        let path = entry.path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if let Some(pid) = std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            out.push((name, pid));
        }
    }
    out.sort();
    out
}

fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// utime + stime of a process, in clock ticks (1/100 s).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    fields
        .get(11)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        + fields
            .get(12)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
}

/// `apiserver_request_total` summed by `VERB resource`.
fn request_totals() -> BTreeMap<String, f64> {
    let metrics = kubectl_ok(&["get", "--raw", "/metrics"]);
    let mut out = BTreeMap::new();
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
    {
        let label = |name: &str| {
            line.split(&format!("{name}=\""))
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or("")
                .to_owned()
        };
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        *out.entry(format!("{} {}", label("verb"), label("resource")))
            .or_default() += value;
    }
    out
}

/// Requests per second by key in the window `a`..`b` of `secs`.
fn rates(a: &BTreeMap<String, f64>, b: &BTreeMap<String, f64>, secs: f64) -> BTreeMap<String, f64> {
    b.iter()
        .map(|(k, v)| (k.clone(), (v - a.get(k).copied().unwrap_or(0.0)) / secs))
        .collect()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v
}

/// Waits until the namespace's Deployments have `want` Ready pods again.
fn wait_pods_ready(ns: &str, want: u32, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let out = kubectl_ok(&[
            "-n",
            ns,
            "get",
            "deployments",
            "-o",
            "jsonpath={range .items[*]}{.status.readyReplicas} {.status.replicas}{\"\\n\"}{end}",
        ]);
        let (mut ready, mut all) = (0, 0);
        for line in out.lines() {
            let mut f = line
                .split(' ')
                .map(|v| v.trim().parse::<u32>().unwrap_or(0));
            ready += f.next().unwrap_or(0);
            all += f.next().unwrap_or(0);
        }
        if ready >= want && all == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{ready} of {want} pods Ready after {timeout:?}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// A pod status in CrashLoopBackOff with restarts, as the tests patch it.
fn crash_loop() -> serde_json::Value {
    serde_json::json!({"status": {"containerStatuses": [{
        "name": "c", "image": "app", "imageID": "", "ready": false, "restartCount": 6, "started": false,
        "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off restarting failed container"}},
        "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}},
    }]}})
}

/// The instant "upgrade": prints and sets the target kubelet version (one status write).
fn upgrade_command(node: &str, version: &str) -> String {
    format!(
        "echo installing kubelet {version}; {kubectl} --kubeconfig {kc} patch node {node} --subresource=status --type=merge \
         -p '{{\"status\":{{\"nodeInfo\":{{\"kubeletVersion\":\"{version}\"}}}}}}' >/dev/null",
        kubectl = env().kubectl.display(),
        kc = env().kubeconfig.display(),
    )
}

fn playbook(dir: &Path, suite: &str, ns: &str) -> std::path::PathBuf {
    // The patch body in double quotes, so that $ROLLGATE_TARGET_KUBELET_VERSION expands.
    let run = format!(
        "echo \"installing kubelet $ROLLGATE_TARGET_KUBELET_VERSION\"; {kubectl} --kubeconfig {kc} patch node \"$ROLLGATE_NODE\" \
         --subresource=status --type=merge -p \"{{\\\"status\\\":{{\\\"nodeInfo\\\":{{\\\"kubeletVersion\\\":\\\"$ROLLGATE_TARGET_KUBELET_VERSION\\\"}}}}}}\" >/dev/null",
        kubectl = env().kubectl.display(),
        kc = env().kubeconfig.display(),
    );
    write_playbook_in(
        dir,
        &format!(
            "name = \"fleet bench\"\ntarget-kubelet-version = \"{TARGET}\"\n\
             [[phase]]\nname = \"all\"\nselector = \"rollgate.test/suite={suite}\"\nconcurrency = {CONCURRENCY}\norder = \"name\"\n\
             [drain]\ntimeout = \"10m\"\n[command]\nrun = '''{run}'''\ntimeout = \"5m\"\n\
             [ready]\ntimeout = \"5m\"\nstable-for = \"0s\"\n[settle]\ntimeout = \"10m\"\n"
        ),
        ns,
    )
}

/// Starts `rollgate monitor` (JSON lines); its stdout lines arrive with the instant they were read.
fn start_monitor(
    dir: &Path,
    playbook: &Path,
) -> (std::process::Child, mpsc::Receiver<(Instant, String)>) {
    let mut cmd = rollgate(dir);
    cmd.args(["monitor", "--output", "json"])
        .arg(playbook)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().expect("start rollgate monitor");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

#[tokio::main]
async fn main() {
    let nodes = size("ROLLGATE_BENCH_NODES", 500);
    let per_node = size("ROLLGATE_BENCH_PODS_PER_NODE", 60);
    let pods = nodes * per_node;
    let client = client().await;
    let suite = unique("fleet");
    let ns = TestNamespace::new("fleet");

    // The environment.
    let t = Instant::now();
    let fleet = Fleet::add(&suite, nodes, per_node, &ns.0);
    let built = t.elapsed();
    bench_row(&format!(
        "\nfleet: {nodes} kwok nodes (one shared sshd), {pods} pods, concurrency {CONCURRENCY}, {} cores:",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    ));
    bench_row(&format!(
        "  {:<52} {:.0} s",
        "environment built (nodes Ready, pods Ready)",
        built.as_secs_f64()
    ));
    let mut memory: Vec<(String, u64)> = Vec::new();
    for (name, pid) in env_pids() {
        let name = if name.starts_with("sshd-") {
            "sshd".into()
        } else {
            name
        };
        let mb = status_kb(pid, "VmRSS:") / 1024;
        match memory.iter_mut().find(|(n, _)| *n == name) {
            Some((_, t)) => *t += mb,
            None => memory.push((name, mb)),
        }
    }
    memory.sort_by_key(|m| std::cmp::Reverse(m.1));
    let total: u64 = memory.iter().map(|(_, mb)| mb).sum();
    bench_row(&format!(
        "  {:<52} {total} MB: {}",
        "environment memory (RSS)",
        memory
            .iter()
            .map(|(n, mb)| format!("{n} {mb}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));

    // The monitor during a steady watch.
    let dir = tempfile::tempdir().unwrap();
    let playbook = playbook(dir.path(), &suite, &ns.0);
    let quiet = Duration::from_secs(30);
    let before = request_totals();
    std::thread::sleep(quiet);
    let baseline = rates(&before, &request_totals(), quiet.as_secs_f64());
    // One pod crash-looping before the monitor starts: its `baseline` event says the initial
    // lists are done (the monitor prints nothing else while all is well).
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns.0);
    let listed = api.list(&ListParams::default().limit(500)).await.unwrap();
    let (trial_pods, early) = listed.items.split_at(listed.items.len() - 1);
    let early = early[0].metadata.name.clone().unwrap();
    api.patch_status(
        &early,
        &PatchParams::default(),
        &Patch::Merge(&crash_loop()),
    )
    .await
    .unwrap();
    let t = Instant::now();
    let (mut monitor, lines) = start_monitor(dir.path(), &playbook);
    let first = lines
        .recv_timeout(Duration::from_secs(300))
        .expect("the monitor starts");
    let _ = api
        .delete(&early, &DeleteParams::default().grace_period(0))
        .await;
    let started = first.0 - t;
    std::thread::sleep(Duration::from_secs(5));
    while lines.try_recv().is_ok() {}
    let window = Duration::from_secs(60);
    let (ticks, totals) = (cpu_ticks(monitor.id()), request_totals());
    std::thread::sleep(window);
    let cpu = (cpu_ticks(monitor.id()) - ticks) as f64 / 100.0 / window.as_secs_f64() * 100.0;
    let with = rates(&totals, &request_totals(), window.as_secs_f64());
    let (rss, peak) = (
        status_kb(monitor.id(), "VmRSS:") / 1024,
        status_kb(monitor.id(), "VmHWM:") / 1024,
    );
    let mut extra: BTreeMap<String, f64> = BTreeMap::new();
    for (k, v) in &with {
        let verb = k.split(' ').next().unwrap().to_owned();
        if verb != "WATCH" {
            *extra.entry(verb).or_default() += v - baseline.get(k).copied().unwrap_or(0.0);
        }
    }
    let lists: Vec<String> = with
        .iter()
        .filter(|(k, _)| k.starts_with("LIST ") || k.starts_with("GET "))
        .map(|(k, v)| (k, v - baseline.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| v.abs() >= 0.05)
        .map(|(k, v)| format!("{k} {v:+.2}/s"))
        .collect();
    bench_row(&format!(
        "  {:<52} {:.1} s",
        "monitor: first event after start (initial lists)",
        started.as_secs_f64()
    ));
    bench_row(&format!(
        "  {:<52} {rss} MB (peak {peak} MB)   goal < 200 MB",
        &format!(
            "monitor: RSS ({} build)",
            if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            }
        )
    ));
    bench_row(&format!(
        "  {:<52} {cpu:.1}% of one core   goal < 5%",
        "monitor: CPU over 60 s of steady watch"
    ));
    bench_row(&format!(
        "  {:<52} {}   goal: no periodic LIST/GET",
        "monitor: apiserver requests/s beyond watches",
        extra
            .iter()
            .filter(|(_, v)| v.abs() >= 0.05)
            .map(|(k, v)| format!("{k} {v:+.2}"))
            .collect::<Vec<_>>()
            .join(", ")
            + &if lists.is_empty() {
                " (LIST/GET: none)".to_owned()
            } else {
                format!(" (LIST/GET: {})", lists.join(", "))
            }
    ));

    // Detection latency: a crash loop patched into one of the pods -> the gate decision.
    let step = (trial_pods.len() / 20).max(1);
    let mut latencies = Vec::new();
    for pod in trial_pods.iter().step_by(step).take(20) {
        let name = pod.metadata.name.clone().unwrap();
        let t = Instant::now();
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&crash_loop()))
            .await
            .unwrap();
        let seen = loop {
            match lines.recv_timeout(Duration::from_secs(30)) {
                Ok((at, line)) if line.contains("gate-decision") && line.contains(&name) => {
                    break Some(at);
                }
                Ok(_) => continue,
                Err(_) => break None,
            }
        };
        match seen {
            Some(at) => latencies.push((at - t).as_secs_f64()),
            None => bench_row(&format!(
                "  detection: no gate decision for {name} within 30 s"
            )),
        }
        // Its ReplicaSet replaces it.
        let _ = api
            .delete(&name, &DeleteParams::default().grace_period(0))
            .await;
    }
    let lat = sorted(latencies);
    bench_row(&format!(
        "  {:<52} p50 {:.2} s, p95 {:.2} s ({} trials)   goal p95 < 1 s",
        "detection: crash loop -> gate decision",
        percentile(&lat, 0.5),
        percentile(&lat, 0.95),
        lat.len()
    ));
    let _ = Command::new("kill")
        .args(["-INT", &monitor.id().to_string()])
        .status();
    let _ = monitor.wait();

    // The whole rollout: rollgate, then the hand-run method over the same nodes.
    // The rollout moves every pod twice (rollgate, then by hand): at full size that alone would
    // take most of the bench's time on 2 cores, so the Deployments are scaled to
    // ROLLGATE_BENCH_ROLLOUT_PODS_PER_NODE (default 6) pods per node first.
    let rollout_per_node = size("ROLLGATE_BENCH_ROLLOUT_PODS_PER_NODE", 6).min(per_node);
    let rollout_pods = nodes * rollout_per_node;
    if rollout_per_node < per_node {
        let listed = kubectl_ok(&[
            "-n",
            &ns.0,
            "get",
            "deployments",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.spec.replicas}{\"\\n\"}{end}",
        ]);
        for line in listed.lines() {
            let (name, replicas) = line.split_once(' ').unwrap();
            let replicas: u32 = replicas.trim().parse().unwrap();
            kubectl_ok(&[
                "-n",
                &ns.0,
                "scale",
                "deployment",
                name,
                &format!("--replicas={}", replicas / per_node * rollout_per_node),
            ]);
        }
    }
    wait_pods_ready(&ns.0, rollout_pods, Duration::from_secs(900));
    let run_dir = tempfile::tempdir().unwrap();
    let mut cmd = rollgate(run_dir.path());
    cmd.args(["--log-format", "json", "run", "--yes"])
        .arg(&playbook);
    let t = Instant::now();
    let start = jiff::Timestamp::now();
    let (code, _, stderr) = run_rollgate(cmd, Duration::from_secs(3600));
    let rollgate_wall = t.elapsed();
    let events = events(&stderr);
    // Pre-flight (drain blockers, capacity, SSH to every node, ...): start to `run-started`.
    let preflight = named(&events, "run-started")
        .first()
        .and_then(|e| e["at"].as_str()?.parse::<jiff::Timestamp>().ok())
        .map_or(f64::NAN, |at| {
            (at - start).total(jiff::Unit::Second).unwrap_or(f64::NAN)
        });
    let done = named(&events, "node-done").len();
    if code != 0 {
        let tail: Vec<&str> = stderr.lines().rev().take(20).collect();
        bench_row(&format!(
            "  rollgate run exited {code}: {}",
            tail.join(" | ")
        ));
    }
    let (overhead, steps) = overhead_per_node(run_dir.path());
    let upgraded = kubectl_ok(&[
        "get",
        "nodes",
        "-l",
        &format!("rollgate.test/suite={suite}"),
        "-o",
        "jsonpath={range .items[*]}{.status.nodeInfo.kubeletVersion}{\"\\n\"}{end}",
    ])
    .lines()
    .filter(|v| *v == TARGET)
    .count();

    wait_pods_ready(&ns.0, rollout_pods, Duration::from_secs(900));
    let hand_wall = hand_run(dir.path(), &fleet.names);

    bench_row(&format!(
        "  {:<52} {:.0} s ({done} nodes done, {upgraded} at {TARGET}, exit {code})   goal < 10 min",
        &format!("rollout ({nodes} nodes, {rollout_pods} pods): rollgate run, wall time"),
        rollgate_wall.as_secs_f64()
    ));
    bench_row(&format!(
        "  {:<52} mean {:.2} s, p50 {:.2} s, p95 {:.2} s   goal < 0.5 s",
        "rollout: rollgate overhead per node",
        overhead.iter().sum::<f64>() / overhead.len().max(1) as f64,
        percentile(&overhead, 0.5),
        percentile(&overhead, 0.95)
    ));
    bench_row(&format!(
        "  {:<52} pre-flight {preflight:.1} s; {steps}",
        "rollout: rollgate pre-flight, step p50s"
    ));
    bench_row(&format!(
        "  {:<52} {:.0} s   ratio rollgate/hand-run {:.2}x",
        "rollout: hand-run (kubectl drain; ssh; uncordon; xargs -P 20)",
        hand_wall.as_secs_f64(),
        rollgate_wall.as_secs_f64() / hand_wall.as_secs_f64()
    ));
    drop(fleet);
    drop(client);
}

/// Per node: node-done's elapsed minus its drain, command, wait-ready and settle steps (what
/// rollgate itself adds: cordon, uncordon, bookkeeping, scheduling of the node), sorted; and the
/// steps' p50s.
fn overhead_per_node(state: &Path) -> (Vec<f64>, String) {
    let runs = state.join("runs");
    let id = std::fs::read_to_string(runs.join("latest")).unwrap_or_default();
    let journal =
        std::fs::read_to_string(runs.join(id.trim()).join("journal.jsonl")).unwrap_or_default();
    let mut waits: BTreeMap<String, f64> = BTreeMap::new();
    // Cordon and uncordon: the overhead that is steps; the rest is between steps.
    let mut own_steps: BTreeMap<String, f64> = BTreeMap::new();
    let mut totals: BTreeMap<String, f64> = BTreeMap::new();
    let mut by_step: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for line in journal.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let node = v["node"].as_str().unwrap_or_default().to_owned();
        let ms = v["elapsed_ms"].as_f64().unwrap_or(0.0) / 1000.0;
        match v["event"].as_str() {
            Some("step-finished") => {
                let step = v["step"].as_str().unwrap_or_default().to_owned();
                if matches!(step.as_str(), "drain" | "command" | "wait-ready" | "settle") {
                    *waits.entry(node).or_default() += ms;
                } else {
                    *own_steps.entry(node).or_default() += ms;
                }
                by_step.entry(step).or_default().push(ms);
            }
            Some("node-done") => {
                totals.insert(node, ms);
            }
            _ => {}
        }
    }
    let overhead = sorted(
        totals
            .iter()
            .map(|(n, t)| t - waits.get(n).copied().unwrap_or(0.0))
            .collect(),
    );
    let between = sorted(
        totals
            .iter()
            .map(|(n, t)| {
                t - waits.get(n).copied().unwrap_or(0.0) - own_steps.get(n).copied().unwrap_or(0.0)
            })
            .collect(),
    );
    let steps = rollgate::vocab::Step::ALL
        .iter()
        .map(|step| {
            let s = step.name();
            format!(
                "{s} {:.2}",
                percentile(&sorted(by_step.remove(s).unwrap_or_default()), 0.5)
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let between = format!(
        "; between steps (overhead - cordon - uncordon) p50 {:.2}, p95 {:.2} s",
        percentile(&between, 0.5),
        percentile(&between, 0.95)
    );
    (overhead, steps + " s" + &between)
}

/// What the operators did before rollgate: per node `kubectl drain`, `ssh NODE COMMAND`,
/// `kubectl uncordon`, 20 nodes at a time with `xargs -P 20`. Returns the wall time.
fn hand_run(dir: &Path, names: &[String]) -> Duration {
    let e = env();
    let kubectl = format!(
        "{} --kubeconfig {}",
        e.kubectl.display(),
        e.kubeconfig.display()
    );
    let script = dir.join("hand-upgrade.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n# hand-upgrade.sh NODE ADDRESS\nset -e\n\
             {kubectl} drain \"$1\" --ignore-daemonsets --delete-emptydir-data --timeout=10m >/dev/null 2>&1\n\
             ssh -F {cfg} -o BatchMode=yes \"$2\" \"{remote}\"\n\
             {kubectl} uncordon \"$1\" >/dev/null\n",
            cfg = e.ssh_config.display(),
            remote = upgrade_command("$1", TARGET).replace('"', "\\\""),
        ),
    )
    .unwrap();
    let addresses = kubectl_ok(&[
        "get",
        "nodes",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name} {.status.addresses[?(@.type==\"InternalIP\")].address}{\"\\n\"}{end}",
    ]);
    let wanted: std::collections::HashSet<&str> = names.iter().map(String::as_str).collect();
    let mut list: Vec<&str> = addresses
        .lines()
        .filter(|l| l.split(' ').next().is_some_and(|n| wanted.contains(n)))
        .collect();
    list.sort();
    let input = list.join("\n") + "\n";
    let t = Instant::now();
    let mut child = Command::new("xargs")
        .args(["-P", &CONCURRENCY.to_string(), "-n", "2", "sh"])
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run xargs");
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), input.as_bytes()).unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    let wall = t.elapsed();
    if !out.status.success() {
        bench_row(&format!(
            "  hand-run: xargs exited {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .take(3)
                .collect::<Vec<_>>()
                .join(" | ")
        ));
    }
    wall
}
