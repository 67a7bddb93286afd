//! The run journal: `STATE_DIR/runs/RUN_ID/journal.jsonl`, append-only, one JSON object per line,
//! fsynced after each write. The first line describes the run (playbook, plan order); then every
//! decision and step transition, written before it takes effect (see [`crate::engine::EventSink`]).
//! [`RunStatus::from_journal`] rebuilds each node's state from it for `rollgate status`; a crashed
//! run's journal still reads up to its last complete line.

use crate::engine::{RunEvent, Stamped};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub const FILE: &str = "journal.jsonl";

pub struct Journal {
    file: Mutex<File>,
    path: PathBuf,
}

/// Whether an event belongs in the journal (decisions and transitions, not output lines).
fn journaled(e: &RunEvent) -> bool {
    matches!(
        e,
        RunEvent::RunStarted { .. }
            | RunEvent::WaveStarted { .. }
            | RunEvent::NodeStarted { .. }
            | RunEvent::StepStarted { .. }
            | RunEvent::StepFinished { .. }
            | RunEvent::NodeDone { .. }
            | RunEvent::NodeFailed { .. }
            | RunEvent::NodeAbandoned { .. }
            | RunEvent::Stopping { .. }
            | RunEvent::GateDecision { .. }
            | RunEvent::Paused { .. }
            | RunEvent::Resumed
            | RunEvent::WindowClosed { .. }
            | RunEvent::WindowOpened
            | RunEvent::RunFinished { .. }
    )
}

impl Journal {
    /// Creates the journal with its header line.
    pub fn create(dir: &Path, header: &serde_json::Value) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(FILE);
        let mut file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)?;
        writeln!(file, "{header}")?;
        file.sync_data()?;
        Ok(Self {
            file: Mutex::new(file),
            path,
        })
    }

    /// Reopens a crashed run's journal to append to it.
    pub fn open_append(dir: &Path) -> std::io::Result<Self> {
        let path = dir.join(FILE);
        let file = OpenOptions::new().append(true).open(&path)?;
        Ok(Self {
            file: Mutex::new(file),
            path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn record(&self, event: &Stamped) {
        if !journaled(&event.event) {
            return;
        }
        let line = serde_json::to_string(event).unwrap_or_default();
        let mut f = self.file.lock().expect("lock");
        if writeln!(f, "{line}").and_then(|_| f.sync_data()).is_err() {
            tracing::error!(path = %self.path.display(), "cannot write the run journal");
        }
    }
}

/// One node's state as the journal tells it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct NodeStatus {
    pub phase: String,
    /// `pending`, `in-progress`, `done`, `failed`, `abandoned`.
    pub state: String,
    pub step: Option<String>,
    pub since: Option<String>,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct RunStatus {
    pub run_id: String,
    pub playbook: String,
    /// `running` (or crashed: the journal has no end), `paused`, `waiting for the maintenance
    /// window (...)`, `succeeded`, `succeeded-with-failures`, `stopped: REASON`.
    pub state: String,
    pub nodes: BTreeMap<String, NodeStatus>,
    pub decisions: Vec<String>,
}

impl RunStatus {
    pub fn from_journal(path: &Path) -> std::io::Result<Self> {
        let reader = std::io::BufReader::new(File::open(path)?);
        let mut lines = reader.lines();
        let header: serde_json::Value = lines
            .next()
            .transpose()?
            .and_then(|l| serde_json::from_str(&l).ok())
            .unwrap_or_default();
        let mut status = RunStatus {
            run_id: header["run_id"].as_str().unwrap_or("").into(),
            playbook: header["playbook"].as_str().unwrap_or("").into(),
            state: "running".into(),
            nodes: BTreeMap::new(),
            decisions: vec![],
        };
        for (node, phase) in header["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| Some((n[0].as_str()?, n[1].as_str()?)))
        {
            status.nodes.insert(
                node.into(),
                NodeStatus {
                    phase: phase.into(),
                    state: "pending".into(),
                    step: None,
                    since: None,
                    last_error: None,
                },
            );
        }
        // A crash can leave a half-written last line: stop at the first line that does not parse.
        for line in lines.map_while(Result::ok) {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                break;
            };
            let at = v["at"].as_str().map(str::to_owned);
            let node = v["node"].as_str().map(str::to_owned);
            let mut update = |f: &mut dyn FnMut(&mut NodeStatus)| {
                if let Some(n) = &node {
                    let entry = status.nodes.entry(n.clone()).or_insert(NodeStatus {
                        phase: String::new(),
                        state: "pending".into(),
                        step: None,
                        since: None,
                        last_error: None,
                    });
                    f(entry);
                }
            };
            match v["event"].as_str().unwrap_or("") {
                "node-started" => update(&mut |n| {
                    n.state = "in-progress".into();
                    n.last_error = None;
                }),
                "step-started" => update(&mut |n| {
                    n.step = v["step"].as_str().map(str::to_owned);
                    n.since = at.clone();
                }),
                "node-done" => update(&mut |n| {
                    n.state = "done".into();
                    n.step = None;
                    n.since = at.clone();
                }),
                "node-failed" => update(&mut |n| {
                    n.state = "failed".into();
                    n.last_error = v["reason"].as_str().map(str::to_owned);
                }),
                "node-abandoned" => update(&mut |n| n.state = "abandoned".into()),
                "gate-decision" => status.decisions.push(format!(
                    "{} by {}: {}",
                    v["decision"]["decision"].as_str().unwrap_or(""),
                    v["decision"]["signal"].as_str().unwrap_or(""),
                    v["decision"]["evidence"].as_str().unwrap_or("")
                )),
                "paused" => status.state = "paused".into(),
                // A resumed run appends a new start after the old end.
                "resumed" | "window-opened" | "run-started" => status.state = "running".into(),
                "window-closed" => {
                    status.state = format!(
                        "waiting for the maintenance window (reopens {})",
                        v["reopens_at"].as_str().unwrap_or("not within a year")
                    )
                }
                "run-finished" => {
                    status.state = match &v["outcome"] {
                        serde_json::Value::String(s) => s.clone(),
                        other => format!("stopped: {}", other["stopped"].as_str().unwrap_or("?")),
                    }
                }
                _ => {}
            }
        }
        Ok(status)
    }
}

/// Where a crashed run picks up again.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResumePoints {
    pub run_id: String,
    pub playbook_file: PathBuf,
    /// Finished nodes: skipped.
    pub done: std::collections::BTreeSet<String>,
    /// Nodes that had started: the step they start from now.
    pub from: std::collections::HashMap<String, crate::engine::Step>,
    /// The run's deadline, if it had one.
    pub deadline: Option<jiff::Timestamp>,
}

/// Reads the journal and decides, per node, where to start again: a node interrupted while
/// cordoning or draining is drained again; one whose remote command may have started runs it
/// again only when the playbook marks it safe to repeat (or it is listed in `command_done`,
/// the operator's word that it finished); later steps restart where they stopped.
pub fn resume_points(
    path: &Path,
    safe_to_rerun: bool,
    command_done: &[String],
) -> Result<ResumePoints, String> {
    use crate::engine::Step;
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut lines = text.lines();
    let header: serde_json::Value = lines
        .next()
        .and_then(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| format!("{} has no header", path.display()))?;
    let mut points = ResumePoints {
        run_id: header["run_id"].as_str().unwrap_or("").into(),
        playbook_file: PathBuf::from(header["playbook_file"].as_str().unwrap_or("")),
        deadline: header["deadline"].as_str().and_then(|d| d.parse().ok()),
        ..Default::default()
    };
    // Per node: (last step started, whether it finished).
    let mut last: BTreeMap<String, (Step, bool)> = BTreeMap::new();
    let step_of = |v: &serde_json::Value| serde_json::from_value::<Step>(v["step"].clone()).ok();
    for line in lines {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            break;
        };
        let Some(node) = v["node"].as_str().map(str::to_owned) else {
            continue;
        };
        match v["event"].as_str().unwrap_or("") {
            "step-started" => {
                if let Some(s) = step_of(&v) {
                    last.insert(node, (s, false));
                }
            }
            "step-finished" => {
                if let (Some(s), Some(entry)) = (step_of(&v), last.get_mut(&node))
                    && entry.0 == s
                {
                    entry.1 = true;
                }
            }
            "node-done" => {
                last.remove(&node);
                points.done.insert(node);
            }
            _ => {}
        }
    }
    let mut refused = Vec::new();
    for (node, (step, finished)) in last {
        let from = match (step, finished) {
            (Step::Settle, true) => Step::Settle,
            (s, true) => Step::ALL[Step::ALL.iter().position(|x| *x == s).expect("a step") + 1],
            (Step::Cordon | Step::Drain, false) => Step::Cordon,
            (Step::Command, false) if safe_to_rerun => Step::Command,
            (Step::Command, false) if command_done.contains(&node) => Step::WaitReady,
            (Step::Command, false) => {
                refused.push(node);
                continue;
            }
            (s, false) => s,
        };
        points.from.insert(node, from);
    }
    if !refused.is_empty() {
        return Err(format!(
            "the remote command may have started on {} and the playbook does not mark it safe-to-rerun.\n  \
             Check the node(s); then resume with --command-done NODE (it finished) for each, or set safe-to-rerun = true in the playbook",
            refused.join(", ")
        ));
    }
    Ok(points)
}

/// The ConfigMap (in kube-system) that mirrors a run's status, so another machine can see it.
pub fn configmap_name(run_id: &str) -> String {
    format!("rollgate-run-{run_id}")
}

/// Copies the journal's status into the cluster every few seconds while the run lasts; call
/// [`ClusterCopy::finish`] at the end for a last copy.
pub struct ClusterCopy {
    task: tokio::task::JoinHandle<()>,
    client: kube::Client,
    journal: PathBuf,
    run_id: String,
}

async fn copy_to_cluster(
    client: &kube::Client,
    journal: &Path,
    run_id: &str,
) -> Result<(), String> {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::{Api, Patch, PatchParams};
    let status = RunStatus::from_journal(journal).map_err(|e| e.to_string())?;
    let cm = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": configmap_name(run_id), "labels": {"app.kubernetes.io/managed-by": "rollgate"}},
        "data": {"status.json": serde_json::to_string_pretty(&status).unwrap_or_default()},
    });
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), crate::lock::NAMESPACE);
    api.patch(
        &configmap_name(run_id),
        &PatchParams::apply("rollgate").force(),
        &Patch::Apply(&cm),
    )
    .await
    .map(|_| ())
    .map_err(|e| e.to_string())
}

impl ClusterCopy {
    pub fn start(client: kube::Client, journal: PathBuf, run_id: String) -> Self {
        let (c, j, r) = (client.clone(), journal.clone(), run_id.clone());
        let task = tokio::spawn(async move {
            loop {
                if let Err(e) = copy_to_cluster(&c, &j, &r).await {
                    tracing::warn!(error = %e, "cannot copy the run status into the cluster");
                }
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            }
        });
        Self {
            task,
            client,
            journal,
            run_id,
        }
    }

    pub async fn finish(self) {
        self.task.abort();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            copy_to_cluster(&self.client, &self.journal, &self.run_id),
        )
        .await;
    }
}

/// Reads a run's status from its cluster copy (for `rollgate status` on another machine).
pub async fn status_from_cluster(client: &kube::Client, run_id: &str) -> Result<RunStatus, String> {
    use k8s_openapi::api::core::v1::ConfigMap;
    let api: kube::Api<ConfigMap> = kube::Api::namespaced(client.clone(), crate::lock::NAMESPACE);
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
    use super::*;
    use crate::engine::Step;

    #[test]
    fn status_is_rebuilt_from_the_journal_even_after_a_torn_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::create(dir.path(), &serde_json::json!({"run_id": "r1", "playbook": "p", "nodes": [["a", "w"], ["b", "w"], ["c", "w"]]})).unwrap();
        let at = std::time::SystemTime::now();
        for event in [
            RunEvent::NodeStarted {
                node: "a".into(),
                phase: "w".into(),
            },
            RunEvent::StepStarted {
                node: "a".into(),
                step: Step::Cordon,
            },
            RunEvent::NodeDone {
                node: "a".into(),
                elapsed_ms: 5,
            },
            RunEvent::NodeStarted {
                node: "b".into(),
                phase: "w".into(),
            },
            RunEvent::StepStarted {
                node: "b".into(),
                step: Step::Command,
            },
            RunEvent::CommandOutput {
                node: "b".into(),
                stream: crate::engine::Stream::Stdout,
                line: "not journaled".into(),
            },
        ] {
            j.record(&Stamped { at, event });
        }
        drop(j);
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join(FILE))
            .unwrap();
        write!(f, r#"{{"event":"node-do"#).unwrap();
        let s = RunStatus::from_journal(&dir.path().join(FILE)).unwrap();
        assert_eq!(s.nodes["a"].state, "done");
        assert_eq!(
            (s.nodes["b"].state.as_str(), s.nodes["b"].step.as_deref()),
            ("in-progress", Some("command"))
        );
        assert_eq!(s.nodes["c"].state, "pending");
        assert_eq!(s.state, "running");
        let text = std::fs::read_to_string(dir.path().join(FILE)).unwrap();
        assert!(!text.contains("not journaled"));
    }

    #[test]
    fn resume_points_follow_the_last_step_of_each_node() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::create(
            dir.path(),
            &serde_json::json!({"run_id": "r1", "playbook_file": "/p.toml"}),
        )
        .unwrap();
        let at = std::time::SystemTime::now();
        let started = |n: &str, s| RunEvent::StepStarted {
            node: n.into(),
            step: s,
        };
        let finished = |n: &str, s| RunEvent::StepFinished {
            node: n.into(),
            step: s,
            elapsed_ms: 1,
            detail: None,
        };
        for event in [
            started("done", Step::Settle),
            RunEvent::NodeDone {
                node: "done".into(),
                elapsed_ms: 1,
            },
            started("draining", Step::Cordon),
            finished("draining", Step::Cordon),
            started("draining", Step::Drain),
            started("commanded", Step::Command),
            finished("commanded", Step::Command),
            started("in-command", Step::Command),
            started("settling", Step::Settle),
        ] {
            j.record(&Stamped { at, event });
        }
        let path = dir.path().join(FILE);
        let err = resume_points(&path, false, &[]).unwrap_err();
        assert!(
            err.contains("in-command") && err.contains("--command-done"),
            "{err}"
        );
        let p = resume_points(&path, false, &["in-command".into()]).unwrap();
        assert_eq!(p.run_id, "r1");
        assert!(p.done.contains("done") && !p.from.contains_key("done"));
        assert_eq!(p.from["draining"], Step::Cordon);
        assert_eq!(p.from["commanded"], Step::WaitReady);
        assert_eq!(p.from["in-command"], Step::WaitReady);
        assert_eq!(p.from["settling"], Step::Settle);
        assert_eq!(
            resume_points(&path, true, &[]).unwrap().from["in-command"],
            Step::Command
        );
    }
}
