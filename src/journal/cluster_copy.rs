//! The run's copy in the cluster: a ConfigMap in the state namespace (`state.namespace`) per run with its status, its
//! compressed journal and its playbook, kept up to date while the run lasts, so another machine
//! can list the runs, show a status, resume a run or write its report.

use super::{FILE, RunStatus};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The ConfigMap (in the state namespace) that mirrors a run's status, so another machine can see it.
pub fn configmap_name(run_id: &str) -> String {
    format!("rollgate-run-{run_id}")
}

/// Copies the journal (and the status read from it) into the cluster while the run lasts,
/// closely following its writes; call [`ClusterCopy::finish`] at the end for a last copy.
pub struct ClusterCopy {
    task: tokio::task::JoinHandle<()>,
    client: kube::Client,
    namespace: String,
    journal: PathBuf,
    run_id: String,
    lock_name: String,
}

/// The playbook as the run started with it, kept beside the journal (and in the cluster copy).
pub const PLAYBOOK_COPY: &str = "playbook.toml";
const JOURNAL_KEY: &str = "journal.jsonl.gz";
/// A ConfigMap holds at most 1 MiB; a longer compressed journal is not copied (status still is).
const MAX_JOURNAL_COPY: usize = 900 * 1024;

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use flate2::write::GzEncoder;
    let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::default());
    let _ = enc.write_all(bytes);
    enc.finish().unwrap_or_default()
}

fn gunzip(bytes: &[u8]) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .map_err(|e| format!("the journal copy does not decompress: {e}"))?;
    Ok(out)
}

/// The ConfigMap: the status (for `rollgate status`), the compressed journal and the playbook
/// (so `rollgate resume` and `rollgate report` work from another machine).
const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "rollgate");
/// The label naming the cluster lock a run holds (its runs are pruned by it).
pub const LOCK_LABEL: &str = "rollgate.dev/lock";

async fn copy_to_cluster(
    client: &kube::Client,
    namespace: &str,
    journal: &Path,
    run_id: &str,
    lock_name: &str,
) -> Result<(), String> {
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::{Api, Patch, PatchParams};
    let status = RunStatus::from_journal(journal).map_err(|e| e.to_string())?;
    let mut data = BTreeMap::from([(
        "status.json".to_owned(),
        serde_json::to_string_pretty(&status).unwrap_or_default(),
    )]);
    let dir = journal.parent().unwrap_or(Path::new("."));
    if let Ok(playbook) = std::fs::read_to_string(dir.join(PLAYBOOK_COPY)) {
        data.insert(PLAYBOOK_COPY.to_owned(), playbook);
    }
    let compressed = gzip(&std::fs::read(journal).map_err(|e| e.to_string())?);
    let binary_data = (compressed.len() <= MAX_JOURNAL_COPY)
        .then(|| BTreeMap::from([(JOURNAL_KEY.to_owned(), ByteString(compressed))]));
    let cm = ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(configmap_name(run_id)),
            labels: Some(BTreeMap::from([
                (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
                (LOCK_LABEL.to_owned(), lock_name.to_owned()),
            ])),
            ..Default::default()
        },
        data: Some(data),
        binary_data,
        ..Default::default()
    };
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    api.patch(
        &configmap_name(run_id),
        &PatchParams::apply("rollgate").force(),
        &Patch::Apply(&cm),
    )
    .await
    .map(|_| ())
    .map_err(|e| e.to_string())
}

/// Deletes the oldest copies of runs under the same lock name, keeping `keep` (run ids sort by
/// their start time). Returns how many were deleted.
pub async fn prune_cluster_copies(
    client: &kube::Client,
    namespace: &str,
    lock_name: &str,
    keep: usize,
) -> Result<usize, String> {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::{DeleteParams, ListParams};
    let api: kube::Api<ConfigMap> = kube::Api::namespaced(client.clone(), namespace);
    let selector = format!("{}={},{LOCK_LABEL}={lock_name}", MANAGED_BY.0, MANAGED_BY.1);
    let mut names: Vec<String> = api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| e.to_string())?
        .items
        .into_iter()
        .filter_map(|cm| cm.metadata.name)
        .filter(|n| n.starts_with("rollgate-run-"))
        .collect();
    names.sort();
    let old = names.len().saturating_sub(keep);
    for name in &names[..old] {
        api.delete(name, &DeleteParams::default())
            .await
            .map_err(|e| format!("cannot delete {name}: {e}"))?;
    }
    Ok(old)
}

/// Writes a run's journal and playbook from its cluster copy into `run_dir` (another machine
/// resuming or reporting a run). Refuses to overwrite a local journal.
pub async fn restore_from_cluster(
    client: &kube::Client,
    namespace: &str,
    run_id: &str,
    run_dir: &Path,
) -> Result<(), String> {
    use k8s_openapi::api::core::v1::ConfigMap;
    let api: kube::Api<ConfigMap> = kube::Api::namespaced(client.clone(), namespace);
    let name = configmap_name(run_id);
    let cm = api.get(&name).await.map_err(|e| {
        format!("no copy of run {run_id} in the cluster (ConfigMap {namespace}/{name}): {e}")
    })?;
    let journal = cm
        .binary_data
        .as_ref()
        .and_then(|d| d.get(JOURNAL_KEY))
        .ok_or_else(|| {
            format!("the cluster copy of run {run_id} has no journal (too long to copy?)")
        })?;
    let journal = gunzip(&journal.0)?;
    let path = run_dir.join(FILE);
    if path.exists() {
        return Err(format!("{} exists already", path.display()));
    }
    std::fs::create_dir_all(run_dir)
        .map_err(|e| format!("cannot create {}: {e}", run_dir.display()))?;
    std::fs::write(&path, journal).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    if let Some(playbook) = cm.data.as_ref().and_then(|d| d.get(PLAYBOOK_COPY)) {
        std::fs::write(run_dir.join(PLAYBOOK_COPY), playbook)
            .map_err(|e| format!("cannot write the playbook copy: {e}"))?;
    }
    Ok(())
}

/// How long after a journal write the next copy waits, given how long the last copy took:
/// 200 ms (a burst of events settles into one copy), or 10 times the last copy when longer. A
/// copy re-reads, parses and compresses the whole journal and the apiserver stores (and echoes
/// to the run's own watch of its object) the whole ConfigMap, so its cost grows with the run:
/// at 500 nodes the journal is ~800 KiB. Spacing copies by their own cost keeps them under a
/// tenth of the time however long the run, and `rollgate status` elsewhere a few copies behind
/// at most.
pub fn copy_spacing(last_copy: std::time::Duration) -> std::time::Duration {
    (last_copy * 10).max(std::time::Duration::from_millis(200))
}

impl ClusterCopy {
    /// Copies shortly ([`copy_spacing`]) after each journal write, retrying failed copies every
    /// 2 s. The copy is labelled with the lock name (runs against one cluster share it).
    pub fn start(
        client: kube::Client,
        namespace: String,
        journal: PathBuf,
        run_id: String,
        lock_name: String,
        written: Arc<tokio::sync::Notify>,
    ) -> Self {
        let (c, n, j, r, l) = (
            client.clone(),
            namespace.clone(),
            journal.clone(),
            run_id.clone(),
            lock_name.clone(),
        );
        let task = tokio::spawn(async move {
            // Copy when the journal changed; after a failed copy, retry every 2 s until one
            // succeeds (a new write also retries at once).
            let mut pending = true;
            let mut last_copy = std::time::Duration::ZERO;
            loop {
                if pending {
                    let started = std::time::Instant::now();
                    let copied = copy_to_cluster(&c, &n, &j, &r, &l).await;
                    last_copy = started.elapsed();
                    match copied {
                        Ok(()) => pending = false,
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot copy the run status into the cluster")
                        }
                    }
                }
                let retry = async {
                    if pending {
                        tokio::time::sleep(std::time::Duration::from_secs(2)).await
                    } else {
                        std::future::pending().await
                    }
                };
                tokio::select! {
                    _ = written.notified() => {
                        // Let a burst of events settle into one copy.
                        tokio::time::sleep(copy_spacing(last_copy)).await;
                        pending = true;
                    }
                    _ = retry => {}
                }
            }
        });
        Self {
            task,
            client,
            namespace,
            journal,
            run_id,
            lock_name,
        }
    }

    /// A last copy, then the oldest copies beyond `keep` (same lock name) are deleted.
    pub async fn finish(self, keep: usize) {
        self.task.abort();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            copy_to_cluster(
                &self.client,
                &self.namespace,
                &self.journal,
                &self.run_id,
                &self.lock_name,
            ),
        )
        .await;
        match tokio::time::timeout(
            std::time::Duration::from_secs(10),
            prune_cluster_copies(&self.client, &self.namespace, &self.lock_name, keep),
        )
        .await
        {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(deleted = n, keep, "pruned old run copies in the cluster"),
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot prune old run copies in the cluster"),
            Err(_) => tracing::warn!("pruning old run copies in the cluster timed out"),
        }
    }
}

/// A run copied into the cluster: its id, lock name and status.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterRun {
    pub run_id: String,
    pub lock: String,
    pub status: RunStatus,
}

/// Every run whose copy is in the cluster (any lock name), newest first.
pub async fn list_cluster_copies(
    client: &kube::Client,
    namespace: &str,
) -> Result<Vec<ClusterRun>, String> {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ListParams;
    let api: kube::Api<ConfigMap> = kube::Api::namespaced(client.clone(), namespace);
    let selector = format!("{}={}", MANAGED_BY.0, MANAGED_BY.1);
    let mut runs: Vec<ClusterRun> = api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| e.to_string())?
        .items
        .into_iter()
        .filter_map(|cm| {
            let run_id = cm
                .metadata
                .name
                .as_deref()?
                .strip_prefix("rollgate-run-")?
                .to_owned();
            let lock = cm
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(LOCK_LABEL).cloned())
                .unwrap_or_default();
            let status = serde_json::from_str(cm.data.as_ref()?.get("status.json")?).ok()?;
            Some(ClusterRun {
                run_id,
                lock,
                status,
            })
        })
        .collect();
    runs.sort_by(|a, b| b.run_id.cmp(&a.run_id));
    Ok(runs)
}

/// Reads a run's status from its cluster copy (for `rollgate status` on another machine).
pub async fn status_from_cluster(
    client: &kube::Client,
    namespace: &str,
    run_id: &str,
) -> Result<RunStatus, String> {
    use k8s_openapi::api::core::v1::ConfigMap;
    let api: kube::Api<ConfigMap> = kube::Api::namespaced(client.clone(), namespace);
    let cm = api
        .get(&configmap_name(run_id))
        .await
        .map_err(|e| format!("no status for run {run_id} in the cluster: {e}"))?;
    let text = cm
        .data
        .and_then(|d| d.get("status.json").cloned())
        .ok_or("the run's ConfigMap has no status.json")?;
    serde_json::from_str(&text).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::copy_spacing;
    use std::time::Duration;

    #[test]
    fn copies_are_spaced_by_their_own_cost() {
        let ms = Duration::from_millis;
        assert_eq!(copy_spacing(Duration::ZERO), ms(200));
        assert_eq!(copy_spacing(ms(15)), ms(200));
        assert_eq!(copy_spacing(ms(60)), ms(600));
        assert_eq!(copy_spacing(ms(300)), ms(3000));
    }
}
