//! A fleet of test nodes at scale: `node add-many` creates hundreds of kwok nodes in bulk that
//! share one sshd, and M pods per node from Deployments (one per group of ~10 nodes, so an
//! evicted pod is recreated by its ReplicaSet on another node of its group).
//!
//! SSH: OpenSSH listens on at most 16 addresses (MAX_LISTEN_SOCKS), so one sshd per node does
//! not scale and one sshd cannot list hundreds of addresses. The fleet's sshd listens on the
//! wildcard address at its own port ([`paths::FLEET_SSH_PORT`] + offset) and so accepts every
//! 127.1.B.H; its one host key is written into known_hosts once per node address
//! (`[127.1.B.H]:PORT ssh-ed25519 ...`), so strict host key checking still holds for each node.
//! ssh_config gets a `Host 127.1.*` block with that port (added the first time, also in an
//! environment started before fleets existed).
//!
//! Addresses: fleet index f (allocated in ranges, never reused while the environment runs) is
//! 127.1.(f/254).(f%254+1) with pod CIDR 127.(64+f/254).(f%254+1).0/24.

use super::{EnvDescription, UpOptions, procs, read_env, run_quiet};
use crate::paths::{self, state_dir};
use crate::{Context, Result};
use serde_json::json;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How many fleet node addresses one environment hands out over its life.
const MAX_FLEET: u32 = 64 * 254;
/// Nodes per Deployment group.
const GROUP_SIZE: u32 = 10;

/// `node add-many` arguments.
#[derive(clap::Args)]
pub struct AddMany {
    /// Node names are PREFIX-0001, PREFIX-0002, ...; their label `fleet.rollgate.dev/prefix=PREFIX`.
    #[arg(long)]
    pub prefix: String,
    /// How many nodes.
    #[arg(long)]
    pub count: u32,
    /// Pods per node, from Deployments (one per group of ~10 nodes).
    #[arg(long, default_value_t = 0)]
    pub pods_per_node: u32,
    /// Namespace of the Deployments (created when missing; default: PREFIX).
    #[arg(long)]
    pub namespace: Option<String>,
    /// A label `key=value` on every node (repeatable).
    #[arg(long = "label", value_name = "K=V")]
    pub labels: Vec<String>,
    /// The kubelet version the nodes report.
    #[arg(long, default_value = "v1.35.4")]
    pub kubelet_version: String,
}

/// `testenv up --nodes N --pods-per-node M`: the fleet `fleet-0001`.. in namespace `fleet`.
pub fn up_fleet(opts: &UpOptions) -> Result<()> {
    if opts.nodes == 0 {
        if opts.pods_per_node > 0 {
            return Err("--pods-per-node needs --nodes N".into());
        }
        return Ok(());
    }
    add_many(&AddMany {
        prefix: "fleet".into(),
        count: opts.nodes,
        pods_per_node: opts.pods_per_node,
        namespace: None,
        labels: Vec::new(),
        kubelet_version: "v1.35.4".into(),
    })
    .map(|_| ())
}

fn fleet_address(f: u32) -> (String, String) {
    let (block, host) = (f / 254, f % 254 + 1);
    (
        format!("127.1.{block}.{host}"),
        format!("127.{}.{host}.0/24", 64 + block),
    )
}

/// Holds `STATE/fleet.lock` (a directory) while alive: allocation and the shared sshd's start.
struct Lock(std::path::PathBuf);

impl Lock {
    fn take(state: &Path) -> Result<Self> {
        let path = state.join("fleet.lock");
        procs::wait_for("the fleet lock", Duration::from_secs(120), || {
            fs::create_dir(&path).is_ok()
        })?;
        Ok(Self(path))
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.0);
    }
}

/// Starts the fleet's sshd unless it runs, and adds its `Host 127.1.*` block to ssh_config.
fn ensure_sshd(env: &EnvDescription, state: &Path, port: u16) -> Result<String> {
    let ssh = state.join("ssh");
    let host_key = ssh.join("fleet_host_ed25519_key");
    if !host_key.exists() {
        run_quiet(
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "fleet", "-f"])
                .arg(&host_key),
        )?;
    }
    let alive = fs::read_to_string(state.join("pids/sshd-fleet.pid"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .is_some_and(procs::is_alive);
    if !alive {
        let config = ssh.join("fleet_sshd_config");
        // MaxStartups/MaxSessions: rollgate at concurrency 20 and a 20-way hand-run loop at once.
        fs::write(
            &config,
            format!(
                "ListenAddress 0.0.0.0:{port}\nHostKey {hk}\nPidFile {pid}\nAuthorizedKeysFile {ak}\nPermitRootLogin prohibit-password\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nMaxSessions 200\n\
                 MaxStartups 200:30:400\nUseDNS no\nSubsystem sftp internal-sftp\n",
                hk = host_key.display(),
                pid = ssh.join("fleet_sshd.pid").display(),
                ak = ssh.join("authorized_keys").display(),
            ),
        )
        .context("write fleet sshd_config")?;
        procs::spawn(
            state,
            "sshd-fleet",
            Path::new("/usr/sbin/sshd"),
            &[
                "-D".into(),
                "-e".into(),
                "-f".into(),
                config.display().to_string(),
            ],
        )?;
        procs::wait_for(
            &format!("the fleet sshd on port {port}"),
            Duration::from_secs(10),
            || procs::port_open(&format!("127.1.0.1:{port}")),
        )?;
    }
    let ssh_config = fs::read_to_string(&env.ssh_config).context("read ssh_config")?;
    if !ssh_config.contains("Host 127.1.*") {
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(&env.ssh_config)
            .context("open ssh_config")?;
        write!(
            f,
            "# Fleet nodes (`node add-many`): one shared sshd on port {port}, one host key listed per address.\n\
             Host 127.1.*\n  Port {port}\n  User root\n  IdentityFile {key}\n  IdentitiesOnly yes\n  UserKnownHostsFile {kh}\n  \
             StrictHostKeyChecking yes\n  GlobalKnownHostsFile /dev/null\n  LogLevel ERROR\n  ConnectTimeout 5\n",
            key = env.client_key.display(),
            kh = env.known_hosts.display()
        )
        .context("append ssh_config")?;
    }
    let pubkey =
        fs::read_to_string(host_key.with_extension("pub")).context("read fleet host key")?;
    let mut parts = pubkey.split_whitespace();
    Ok(format!(
        "{} {}",
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default()
    ))
}

fn kubectl(env: &EnvDescription) -> Command {
    let mut cmd = Command::new(&env.kubectl);
    cmd.arg("--kubeconfig").arg(&env.kubeconfig);
    cmd
}

/// `kubectl create -f -` of a List, in `parallel` chunks at once.
fn create_all(env: &EnvDescription, items: Vec<serde_json::Value>, parallel: usize) -> Result<()> {
    let chunk = items.len().div_ceil(parallel.max(1)).max(1);
    let mut children = Vec::new();
    for part in items.chunks(chunk) {
        let list = json!({"apiVersion": "v1", "kind": "List", "items": part});
        let mut child = kubectl(env)
            .args(["create", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("run kubectl create")?;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(list.to_string().as_bytes())
            .context("write manifests")?;
        children.push(child);
    }
    for child in children {
        let out = child.wait_with_output().context("wait for kubectl")?;
        if !out.status.success() {
            return Err(format!(
                "kubectl create: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().context(format!("run {cmd:?}"))?;
    if !out.status.success() {
        return Err(format!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Creates the fleet; returns the node names (also printed, one a line, by the command).
pub fn add_many(a: &AddMany) -> Result<Vec<String>> {
    if a.count == 0 {
        return Err("--count must be at least 1".into());
    }
    let started = Instant::now();
    let env = read_env()?;
    let state = state_dir();
    let port = paths::port(paths::FLEET_SSH_PORT, env.port_offset);
    let (first, host_key) = {
        let _lock = Lock::take(&state)?;
        let host_key = ensure_sshd(&env, &state, port)?;
        let next_file = state.join("fleet-next");
        let first: u32 = fs::read_to_string(&next_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        if first + a.count > MAX_FLEET {
            return Err(format!(
                "only {} of the environment's {MAX_FLEET} fleet addresses are left: restart it",
                MAX_FLEET - first
            ));
        }
        fs::write(&next_file, (first + a.count).to_string()).context("write fleet-next")?;
        (first, host_key)
    };
    let width = a.count.to_string().len().max(4);
    let groups = (a.count / GROUP_SIZE).max(1);
    let group_name = |g: u32| format!("{}-g{g:03}", a.prefix);
    let mut names = Vec::new();
    let mut known = String::new();
    let mut items = Vec::new();
    for i in 0..a.count {
        let name = format!("{}-{:0width$}", a.prefix, i + 1);
        let (ip, pod_cidr) = fleet_address(first + i);
        known += &format!("[{ip}]:{port} {host_key}\n");
        let mut labels = serde_json::Map::new();
        labels.insert("kubernetes.io/hostname".into(), json!(name));
        labels.insert("kubernetes.io/os".into(), json!("linux"));
        labels.insert("type".into(), json!("kwok"));
        labels.insert("fleet.rollgate.dev/prefix".into(), json!(a.prefix));
        labels.insert(
            "fleet.rollgate.dev/group".into(),
            json!(group_name(i % groups)),
        );
        for label in &a.labels {
            let (k, v) = label.split_once('=').unwrap_or((label.as_str(), ""));
            labels.insert(k.into(), json!(v));
        }
        items.push(json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "labels": labels,
                "annotations": {"kwok.x-k8s.io/node": "fake", "rollgate.test/ssh-address": ip},
            },
            "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]},
            "status": {
                "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
                "nodeInfo": {"kubeletVersion": a.kubelet_version, "architecture": "amd64", "operatingSystem": "linux",
                              "bootID": "", "machineID": "", "systemUUID": "", "kernelVersion": "", "osImage": "kwok",
                              "containerRuntimeVersion": "kwok", "kubeProxyVersion": ""},
                "allocatable": {"cpu": "32", "memory": "256Gi", "pods": "250"},
                "capacity": {"cpu": "32", "memory": "256Gi", "pods": "250"},
            },
        }));
        names.push(name);
    }
    fs::OpenOptions::new()
        .append(true)
        .open(&env.known_hosts)
        .and_then(|mut f| f.write_all(known.as_bytes()))
        .context("append known_hosts")?;
    create_all(&env, items, 4)?;
    let selector = format!("fleet.rollgate.dev/prefix={}", a.prefix);
    wait_counted(
        &format!("{} nodes Ready", a.count),
        Duration::from_secs(60 + u64::from(a.count) / 5),
        a.count,
        || {
            let out = output(kubectl(&env).args([
                "get",
                "nodes",
                "-l",
                &selector,
                "-o",
                "jsonpath={range .items[*]}{.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}",
            ]))?;
            Ok(out.lines().filter(|l| *l == "True").count() as u32)
        },
    )?;
    let nodes_ready = started.elapsed();
    eprintln!(
        "[testenv] fleet {}: {} nodes Ready in {:.1}s",
        a.prefix,
        a.count,
        nodes_ready.as_secs_f64()
    );
    if a.pods_per_node > 0 {
        let ns = a.namespace.clone().unwrap_or_else(|| a.prefix.clone());
        if kubectl(&env)
            .args(["get", "namespace", &ns])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| !s.success())
            .unwrap_or(true)
        {
            output(kubectl(&env).args(["create", "namespace", &ns]))?;
        }
        let mut deployments = Vec::new();
        for g in 0..groups {
            let members = (0..a.count).filter(|i| i % groups == g).count() as u32;
            let app = group_name(g);
            deployments.push(json!({
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": app, "namespace": ns, "labels": {"fleet.rollgate.dev/prefix": a.prefix}},
                "spec": {
                    "replicas": members * a.pods_per_node,
                    "selector": {"matchLabels": {"app": app}},
                    "template": {
                        "metadata": {"labels": {"app": app, "fleet.rollgate.dev/prefix": a.prefix}},
                        "spec": {
                            "nodeSelector": {"fleet.rollgate.dev/group": app},
                            "terminationGracePeriodSeconds": 0,
                            "containers": [{"name": "c", "image": "app"}],
                        },
                    },
                },
            }));
        }
        create_all(&env, deployments, 2)?;
        let pods = a.count * a.pods_per_node;
        wait_counted(
            &format!("{pods} pods Ready"),
            Duration::from_secs(120 + u64::from(pods) / 20),
            pods,
            || {
                let out = output(kubectl(&env).args([
                    "-n",
                    &ns,
                    "get",
                    "deployments",
                    "-l",
                    &selector,
                    "-o",
                    "jsonpath={range .items[*]}{.status.readyReplicas}{\"\\n\"}{end}",
                ]))?;
                Ok(out
                    .lines()
                    .filter_map(|l| l.trim().parse::<u32>().ok())
                    .sum())
            },
        )?;
        eprintln!(
            "[testenv] fleet {}: {pods} pods Ready in {:.1}s more ({:.0} pods/s)",
            a.prefix,
            (started.elapsed() - nodes_ready).as_secs_f64(),
            f64::from(pods) / (started.elapsed() - nodes_ready).as_secs_f64()
        );
    }
    eprintln!(
        "[testenv] fleet {} built in {:.1}s; memory: {}",
        a.prefix,
        started.elapsed().as_secs_f64(),
        procs::memory_summary(&state)
    );
    Ok(names)
}

/// Polls `count` until it reaches `want`, saying how far it got every 15 s.
fn wait_counted(
    what: &str,
    timeout: Duration,
    want: u32,
    mut count: impl FnMut() -> Result<u32>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut said = Instant::now();
    loop {
        let n = count()?;
        if n >= want {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "timed out after {timeout:?} waiting for {what}: {n} so far"
            ));
        }
        if said.elapsed() > Duration::from_secs(15) {
            eprintln!("[testenv] waiting for {what}: {n} so far");
            said = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Deletes a fleet's Deployments (and so its pods), then its nodes. The shared sshd stays, and
/// so do the known_hosts lines (addresses are not reused while the environment runs).
pub fn rm_many(prefix: &str) -> Result<()> {
    let env = read_env()?;
    let selector = format!("fleet.rollgate.dev/prefix={prefix}");
    output(kubectl(&env).args([
        "delete",
        "deployments",
        "-A",
        "-l",
        &selector,
        "--wait=false",
    ]))?;
    // Pods go while their nodes are still managed by kwok (else they stay Terminating).
    let _ = procs::wait_for("the fleet's pods to go", Duration::from_secs(60), || {
        output(kubectl(&env).args(["get", "pods", "-A", "-l", &selector, "-o", "name"]))
            .map(|o| o.trim().is_empty())
            .unwrap_or(false)
    });
    output(kubectl(&env).args(["delete", "nodes", "-l", &selector, "--wait=false"]))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::fleet_address;

    #[test]
    fn fleet_addresses_are_distinct_and_apart_from_single_nodes() {
        assert_eq!(
            fleet_address(0),
            ("127.1.0.1".into(), "127.64.1.0/24".into())
        );
        assert_eq!(
            fleet_address(254),
            ("127.1.1.1".into(), "127.65.1.0/24".into())
        );
        let all: std::collections::BTreeSet<_> = (0..super::MAX_FLEET).map(fleet_address).collect();
        assert_eq!(all.len(), super::MAX_FLEET as usize);
        assert!(all.iter().all(|(ip, _)| ip.starts_with("127.1.")));
    }
}
