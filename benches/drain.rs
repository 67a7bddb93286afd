//! Drain speed, side by side with `kubectl drain`, on the local test cluster.
//!
//! For each size, two identical kwok nodes get N pods each (a Deployment pinned to a pool of the
//! node and a spare that joins after placement, optionally with a PDB); one is drained by `kubectl drain` (v1.36.3, built by the test
//! environment), the other by rollgate's drain (the library function `rollgate run` uses).
//! Run with `cargo xtask bench` (starts and stops the environment) or, with the environment
//! up, `cargo bench --bench drain`. Prints a table; asserts nothing about timings.

#[path = "../tests/support/mod.rs"]
mod support;

use rollgate::playbook::{DrainOptions, PdbTimeoutPolicy};
use rollgate::vocab::EventSink;
use std::time::{Duration, Instant};
use support::*;

/// The Deployment `w` of `pods` pods on `node`'s pool, with a PDB when `budget` is its spec line
/// (e.g. `maxUnavailable: 1`).
fn workload(ns: &str, node: &str, pods: u32, budget: Option<&str>) {
    let mut yaml = format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: w, namespace: {ns}}}\nspec:\n  replicas: {pods}\n  selector: {{matchLabels: {{app: w}}}}\n  template:\n    metadata: {{labels: {{app: w}}}}\n    spec:\n      nodeSelector: {{bench.rollgate.dev/pool: {node}}}\n      terminationGracePeriodSeconds: 0\n      containers: [{{name: c, image: app}}]\n"
    );
    if let Some(budget) = budget {
        yaml += &format!(
            "---\napiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {{name: w, namespace: {ns}}}\nspec:\n  {budget}\n  selector: {{matchLabels: {{app: w}}}}\n"
        );
    }
    kubectl_apply(&yaml);
    kubectl_ok(&[
        "-n",
        ns,
        "wait",
        "--for=condition=Available",
        "deployment/w",
        "--timeout=120s",
    ]);
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = client().await;
    let mut no_retry = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&env().kubeconfig).unwrap(),
        &Default::default(),
    )
    .await
    .unwrap();
    no_retry.default_retry = false;
    let drain_client = kube::Client::try_from(no_retry).unwrap();
    let opts = DrainOptions {
        timeout: Duration::from_secs(600),
        grace_period: None,
        delete_emptydir_data: true,
        ignore_daemonsets: true,
        force: false,
        pod_selector: None,
        on_pdb_timeout: PdbTimeoutPolicy::Fail,
        eviction_concurrency: 16,
    };
    bench_row("drain of one node, side by side with kubectl drain (same cluster, same run):");
    bench_row(&format!(
        "  {:<8} {:<22} {:>14} {:>14} {:>7}",
        "pods", "PDB", "kubectl drain", "rollgate drain", "ratio"
    ));
    // With a PDB, kubectl retries a refused eviction every 5 s; rollgate as soon as the
    // budget allows one again (at the latest after 5 s).
    let cases: [(u32, Option<&str>); 6] = [
        (10, None),
        (50, None),
        (100, None),
        (10, Some("maxUnavailable: 1")),
        (50, Some("maxUnavailable: \"20%\"")),
        (10, Some("minAvailable: 9")),
    ];
    for (pods, pdb) in cases {
        let suite = unique("bench");
        let mut nodes = TestNodes::new(&suite);
        let a = format!("{suite}-kubectl");
        let b = format!("{suite}-rollgate");
        // Each drained node has a spare that joins its pool once the pods are placed, so evicted
        // pods have somewhere to go (and a PDB lets the drain finish).
        for n in [&a, &b] {
            nodes.add(
                n,
                &[&format!("bench.rollgate.dev/pool={n}")],
                &[],
                "v1.35.4",
            );
            nodes.add(&format!("{n}-spare"), &[], &[], "v1.35.4");
        }
        let ns_a = TestNamespace::new("bench");
        let ns_b = TestNamespace::new("bench");
        workload(&ns_a.0, &a, pods, pdb);
        workload(&ns_b.0, &b, pods, pdb);
        for n in [&a, &b] {
            kubectl_ok(&[
                "label",
                "node",
                &format!("{n}-spare"),
                &format!("bench.rollgate.dev/pool={n}"),
            ]);
        }

        let t = Instant::now();
        kubectl_ok(&[
            "drain",
            &a,
            "--ignore-daemonsets",
            "--delete-emptydir-data",
            "--timeout=10m",
        ]);
        let kubectl_time = t.elapsed();

        kubectl_ok(&["cordon", &b]);
        let (sink, _rx) = EventSink::channel();
        let t = Instant::now();
        let report = rollgate::drain::drain(&drain_client, &b, &opts, &sink)
            .await
            .expect("rollgate drain");
        let rollgate_time = t.elapsed();
        assert_eq!(report.evicted.len() as u32, pods, "every pod was evicted");
        bench_row(&format!(
            "  {:<8} {:<22} {:>13.2}s {:>13.2}s {:>6.2}x",
            pods,
            pdb.unwrap_or("none"),
            kubectl_time.as_secs_f64(),
            rollgate_time.as_secs_f64(),
            rollgate_time.as_secs_f64() / kubectl_time.as_secs_f64()
        ));
    }
    drop(client);
}
