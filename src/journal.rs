//! The run journal: `STATE_DIR/runs/RUN_ID/journal.jsonl`, append-only, one JSON object per line,
//! each line one write, fsynced before the step it announces runs. The first line describes the
//! run (playbook, plan order); then every decision and step transition, written before it takes
//! effect (see [`crate::vocab::EventSink`]). A record that cannot be written and synced stops
//! the run: nothing is done that the journal does not record first. [`Records`] is the one
//! reader of its text: a torn line (a crash, a full disk) is skipped wherever it is and its
//! place reported, by [`RunStatus`] (`rollgate status`), [`resume_points`] and the run report.

pub use crate::vocab::JournalError;
use crate::vocab::{Recorder, RunEvent, Stamped};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub const FILE: &str = "journal.jsonl";

/// The journal's first line: what the run is. Written once; fields added later are optional so
/// older journals still read.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Header {
    pub journal: u32,
    pub run_id: String,
    pub playbook: String,
    pub playbook_file: PathBuf,
    pub dry_run: bool,
    /// RFC 3339: no node starts after it (a resume may set a new one: `deadline-set`).
    pub deadline: Option<String>,
    /// `user@host`.
    pub started_by: Option<String>,
    /// The cluster lock the run holds; a resume takes the same one.
    pub lock_name: Option<String>,
    pub lock_duration_secs: Option<u64>,
    /// The plan's order: (node, phase).
    pub nodes: Vec<(String, String)>,
}

impl Header {
    pub fn parse(line: &str) -> Option<Header> {
        serde_json::from_str(line).ok()
    }
}

pub struct Journal {
    file: Mutex<File>,
    path: PathBuf,
    /// Woken after each write (the cluster copy follows the journal closely).
    written: Arc<tokio::sync::Notify>,
    /// The first record that could not be written and synced. Sticky: once set, nothing more
    /// is written (a later record after a gap would lie about what happened).
    failed: tokio::sync::watch::Sender<Option<JournalError>>,
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
            | RunEvent::DeadlineSet { .. }
            | RunEvent::RunFinished { .. }
            | RunEvent::RunRefused { .. }
    )
}

/// Appends `line` (which ends with a newline) in one write and syncs it. On failure the file is
/// cut back to its old length (best effort), so a half-written record does not stay behind.
fn append_line(file: &mut File, line: &[u8]) -> std::io::Result<()> {
    let before = file.metadata()?.len();
    let result = file.write_all(line).and_then(|()| file.sync_data());
    if result.is_err() {
        let _ = file.set_len(before).and_then(|()| file.sync_data());
    }
    result
}

impl Journal {
    fn new(file: File, path: PathBuf) -> Self {
        Self {
            file: Mutex::new(file),
            path,
            written: Arc::new(tokio::sync::Notify::new()),
            failed: tokio::sync::watch::Sender::new(None),
        }
    }

    /// Creates the journal with its header line.
    pub fn create(dir: &Path, header: &Header) -> std::io::Result<Self> {
        let header = serde_json::to_string(header).expect("a header serialises") + "\n";
        std::fs::create_dir_all(dir)?;
        let path = dir.join(FILE);
        let mut file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)?;
        if let Err(e) = append_line(&mut file, header.as_bytes()) {
            // No journal rather than an empty one.
            drop(file);
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Ok(Self::new(file, path))
    }

    /// Reopens a crashed run's journal to append to it. A torn last line (the run died while
    /// writing it) is ended first, so the next record starts on its own line; returns its line
    /// number, if there was one.
    pub fn open_append(dir: &Path) -> std::io::Result<(Self, Option<usize>)> {
        let path = dir.join(FILE);
        let mut file = OpenOptions::new().append(true).read(true).open(&path)?;
        let text = std::fs::read(&path)?;
        let torn = match text.last() {
            Some(b) if *b != b'\n' => {
                append_line(&mut file, b"\n")?;
                let last = text.rsplit(|b| *b == b'\n').next().unwrap_or_default();
                serde_json::from_slice::<serde_json::Value>(last)
                    .is_err()
                    .then(|| text.split(|b| *b == b'\n').count())
            }
            _ => None,
        };
        Ok((Self::new(file, path), torn))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Notified after every write.
    pub fn written(&self) -> Arc<tokio::sync::Notify> {
        Arc::clone(&self.written)
    }

    /// Why the journal stopped taking records, if it did.
    pub fn failure(&self) -> Option<JournalError> {
        self.failed.borrow().clone()
    }

    /// Changes once, when the journal stops taking records.
    pub fn watch_failure(&self) -> tokio::sync::watch::Receiver<Option<JournalError>> {
        self.failed.subscribe()
    }

    /// Appends the event if it belongs in the journal, as one write of one whole line, synced
    /// before this returns. After a failure every later record is refused with the same error.
    pub fn record(&self, event: &Stamped) -> Result<(), JournalError> {
        if !journaled(&event.event) {
            return Ok(());
        }
        let mut f = self.file.lock().expect("lock");
        if let Some(e) = self.failure() {
            return Err(e);
        }
        let result = serde_json::to_string(event)
            .map_err(|e| e.to_string())
            .and_then(|line| {
                append_line(&mut f, (line + "\n").as_bytes()).map_err(|e| e.to_string())
            });
        drop(f);
        if let Err(reason) = result {
            let e = JournalError {
                path: self.path.clone(),
                reason,
            };
            tracing::error!(error = %e, "the run stops: a journal record could not be written");
            self.failed.send_replace(Some(e.clone()));
            return Err(e);
        }
        self.written.notify_one();
        Ok(())
    }

    /// Tests: from now on, writes go to `file` (e.g. `/dev/full`, a disk that is full).
    #[cfg(test)]
    pub(crate) fn write_to(&self, file: File) {
        *self.file.lock().expect("lock") = file;
    }
}

impl Recorder for Journal {
    fn record(&self, event: &Stamped) -> Result<(), JournalError> {
        Journal::record(self, event)
    }
    fn failure(&self) -> Option<JournalError> {
        Journal::failure(self)
    }
    fn watch_failure(&self) -> tokio::sync::watch::Receiver<Option<JournalError>> {
        Journal::watch_failure(self)
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
    /// Journal lines that do not parse (torn by a crash or a full disk), 1-based: skipped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped_lines: Vec<usize>,
}

/// A journal's lines: the header, then the records. A line that does not parse (a record torn
/// by a crash, or cut short by a full disk) is skipped wherever it is and its number kept, so
/// what a resumed run appended after it still counts. The one reader of the journal's text.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Records {
    /// None when the first line is not a header.
    pub header: Option<Header>,
    pub records: Vec<serde_json::Value>,
    /// 1-based numbers of the lines skipped.
    pub skipped: Vec<usize>,
}

impl Records {
    pub fn parse(text: &str) -> Self {
        let mut lines = text.lines().enumerate();
        let mut out = Records {
            header: lines.next().and_then(|(_, l)| Header::parse(l)),
            ..Default::default()
        };
        for (i, line) in lines {
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<serde_json::Value>(line) {
                Ok(v) if v.is_object() => out.records.push(v),
                _ => out.skipped.push(i + 1),
            }
        }
        out
    }

    /// Reads a journal file (bytes that are not UTF-8, as in a torn line, do not stop it).
    pub fn read(path: &Path) -> std::io::Result<Self> {
        Ok(Self::parse(&String::from_utf8_lossy(&std::fs::read(path)?)))
    }
}

/// `line 7` / `lines 7, 12`: where the skipped lines are, for a warning; None when none was.
pub fn skipped_text(skipped: &[usize]) -> Option<String> {
    match skipped {
        [] => None,
        [one] => Some(format!(
            "1 line that does not parse was skipped (line {one})"
        )),
        many => Some(format!(
            "{} lines that do not parse were skipped (lines {})",
            many.len(),
            many.iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

impl RunStatus {
    pub fn from_journal(path: &Path) -> std::io::Result<Self> {
        Ok(Self::from_records(Records::read(path)?))
    }

    pub fn from_records(journal: Records) -> Self {
        let header = journal.header.unwrap_or_default();
        let mut status = RunStatus {
            run_id: header.run_id.clone(),
            playbook: header.playbook.clone(),
            state: "running".into(),
            nodes: BTreeMap::new(),
            decisions: vec![],
            skipped_lines: journal.skipped,
        };
        for (node, phase) in &header.nodes {
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
        for v in &journal.records {
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
                "run-refused" => {
                    status.state = format!("refused: {}", v["reason"].as_str().unwrap_or("?"))
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
        status
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
    pub from: std::collections::HashMap<String, crate::vocab::Step>,
    /// Nodes whose remote command may have started (they start from the command step, which
    /// reattaches to it): resume checks each node's record of it first.
    pub uncertain: std::collections::BTreeSet<String>,
    /// Nodes whose command ended and failed (a recorded `node-failed` at the command step):
    /// the operator fixed the cause, so resume runs the command again (a new attempt).
    pub retry: std::collections::BTreeSet<String>,
    /// The run's deadline, if it had one (the latest one a resume set).
    pub deadline: Option<jiff::Timestamp>,
    /// The lock the run held (None in journals written before it was recorded).
    pub lock_name: Option<String>,
    pub lock_duration: Option<std::time::Duration>,
    /// Journal lines that do not parse, 1-based: skipped (see [`Records`]).
    pub skipped_lines: Vec<usize>,
}

/// Reads the journal and decides, per node, where to start again: a node interrupted while
/// cordoning or draining is drained again; one whose remote command may have started goes
/// back to the command step, which reattaches to the command (its record on the node decides;
/// see [`crate::remote`]), unless it is listed in `command_done` (the operator's word that it
/// finished); later steps restart where they stopped.
pub fn resume_points(path: &Path, command_done: &[String]) -> Result<ResumePoints, String> {
    use crate::vocab::Step;
    let journal =
        Records::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let header = journal
        .header
        .ok_or_else(|| format!("{} has no header", path.display()))?;
    if header.dry_run {
        return Err(format!(
            "run {} was a dry run: it changed nothing and cannot be resumed; start it again (with or without --dry-run)",
            header.run_id
        ));
    }
    let mut points = ResumePoints {
        run_id: header.run_id.clone(),
        playbook_file: header.playbook_file.clone(),
        deadline: header.deadline.as_deref().and_then(|d| d.parse().ok()),
        lock_name: header.lock_name.clone(),
        lock_duration: header
            .lock_duration_secs
            .map(std::time::Duration::from_secs),
        skipped_lines: journal.skipped,
        ..Default::default()
    };
    // Per node: (last step started, whether it finished).
    let mut last: BTreeMap<String, (Step, bool)> = BTreeMap::new();
    // Nodes whose last attempt failed at the command step (its failure was recorded).
    let mut failed_at_command: std::collections::BTreeSet<String> = Default::default();
    let step_of = |v: &serde_json::Value| serde_json::from_value::<Step>(v["step"].clone()).ok();
    for v in &journal.records {
        if v["event"] == "deadline-set" {
            points.deadline = v["deadline"].as_str().and_then(|d| d.parse().ok());
        }
        if v["event"] == "run-refused" {
            return Err(format!(
                "run {} never started ({}): nothing to resume; start it again with `rollgate run`",
                header.run_id,
                v["reason"].as_str().unwrap_or("refused")
            ));
        }
        let Some(node) = v["node"].as_str().map(str::to_owned) else {
            continue;
        };
        match v["event"].as_str().unwrap_or("") {
            "step-started" => {
                if let Some(s) = step_of(v) {
                    failed_at_command.remove(&node);
                    last.insert(node, (s, false));
                }
            }
            "node-failed" if step_of(v) == Some(Step::Command) => {
                failed_at_command.insert(node);
            }
            "step-finished" => {
                if let (Some(s), Some(entry)) = (step_of(v), last.get_mut(&node))
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
    for (node, (step, finished)) in last {
        let from = match (step, finished) {
            (Step::Settle, true) => Step::Settle,
            (s, true) => Step::ALL[Step::ALL.iter().position(|x| *x == s).expect("a step") + 1],
            (Step::Cordon | Step::Drain, false) => Step::Cordon,
            (Step::Command, false) if command_done.contains(&node) => Step::WaitReady,
            (Step::Command, false) if failed_at_command.contains(&node) => {
                points.retry.insert(node.clone());
                Step::Command
            }
            (Step::Command, false) => {
                points.uncertain.insert(node.clone());
                Step::Command
            }
            (s, false) => s,
        };
        points.from.insert(node, from);
    }
    Ok(points)
}

/// What a node's `rollgate.dev/` annotations say about a run. They are written before each step
/// takes effect, like the journal, so on another machine (whose journal comes from a cluster
/// copy up to a few seconds old) they can be ahead of the journal.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeRecord {
    pub node: String,
    pub cordoned_by: Option<String>,
    pub step: Option<String>,
    pub failed_step: Option<String>,
    pub last_run: Option<String>,
}

/// Moves each unfinished node's resume point forward to what its annotations prove about this
/// run. A node whose annotations say its command started, where the journal does not know it,
/// is treated like one interrupted in its command (uncertain: its record on the node decides).
pub fn reconcile_with_nodes(
    points: &mut ResumePoints,
    records: &[NodeRecord],
    command_done: &[String],
) -> Result<(), String> {
    use crate::vocab::Step;
    let index = |s: Step| Step::ALL.iter().position(|x| *x == s).expect("a step");
    for r in records {
        if points.done.contains(&r.node) {
            continue;
        }
        let ours = r.cordoned_by.as_deref() == Some(points.run_id.as_str());
        let finished_here = r
            .last_run
            .as_deref()
            .is_some_and(|l| l.split_whitespace().next() == Some(points.run_id.as_str()));
        let step_name = match r.step.as_deref() {
            Some("failed") => r.failed_step.as_deref(),
            other => other,
        };
        let cluster = if finished_here {
            Some(Step::Settle)
        } else if ours {
            step_name.and_then(|n| Step::ALL.into_iter().find(|s| s.name() == n))
        } else {
            None
        };
        let Some(cluster) = cluster else { continue };
        let journal = points.from.get(&r.node).copied();
        // The journal is as far (a journal that would *start* the command the annotations say
        // has started is not).
        if journal
            .is_some_and(|j| index(j) > index(cluster) || (j == cluster && j != Step::Command))
        {
            continue;
        }
        let failed_here = r.step.as_deref() == Some("failed");
        let from = match cluster {
            Step::Cordon | Step::Drain => Step::Cordon,
            Step::Command if command_done.contains(&r.node) => Step::WaitReady,
            // The node records that its command failed: a new attempt, once the cause is fixed.
            Step::Command if failed_here || points.retry.contains(&r.node) => {
                points.retry.insert(r.node.clone());
                points.uncertain.remove(&r.node);
                Step::Command
            }
            Step::Command => {
                points.uncertain.insert(r.node.clone());
                Step::Command
            }
            later => later,
        };
        if from != Step::Command {
            points.retry.remove(&r.node);
            points.uncertain.remove(&r.node);
        }
        points.from.insert(r.node.clone(), from);
    }
    Ok(())
}

/// The ConfigMap (in kube-system) that mirrors a run's status, so another machine can see it.
pub fn configmap_name(run_id: &str) -> String {
    format!("rollgate-run-{run_id}")
}

/// Copies the journal (and the status read from it) into the cluster while the run lasts,
/// closely following its writes; call [`ClusterCopy::finish`] at the end for a last copy.
pub struct ClusterCopy {
    task: tokio::task::JoinHandle<()>,
    client: kube::Client,
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
const LOCK_LABEL: &str = "rollgate.dev/lock";

async fn copy_to_cluster(
    client: &kube::Client,
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

/// Deletes the oldest copies of runs under the same lock name, keeping `keep` (run ids sort by
/// their start time). Returns how many were deleted.
pub async fn prune_cluster_copies(
    client: &kube::Client,
    lock_name: &str,
    keep: usize,
) -> Result<usize, String> {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::{DeleteParams, ListParams};
    let api: kube::Api<ConfigMap> = kube::Api::namespaced(client.clone(), crate::lock::NAMESPACE);
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
    run_id: &str,
    run_dir: &Path,
) -> Result<(), String> {
    use k8s_openapi::api::core::v1::ConfigMap;
    let api: kube::Api<ConfigMap> = kube::Api::namespaced(client.clone(), crate::lock::NAMESPACE);
    let name = configmap_name(run_id);
    let cm = api.get(&name).await.map_err(|e| {
        format!(
            "no copy of run {run_id} in the cluster (ConfigMap {}/{name}): {e}",
            crate::lock::NAMESPACE
        )
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

impl ClusterCopy {
    /// Copies shortly (200 ms) after each journal write, retrying failed copies every 2 s. The
    /// copy is labelled with the lock name (runs against one cluster share it).
    pub fn start(
        client: kube::Client,
        journal: PathBuf,
        run_id: String,
        lock_name: String,
        written: Arc<tokio::sync::Notify>,
    ) -> Self {
        let (c, j, r, l) = (
            client.clone(),
            journal.clone(),
            run_id.clone(),
            lock_name.clone(),
        );
        let task = tokio::spawn(async move {
            // Copy when the journal changed; after a failed copy, retry every 2 s until one
            // succeeds (a new write also retries at once).
            let mut pending = true;
            loop {
                if pending {
                    match copy_to_cluster(&c, &j, &r, &l).await {
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
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                        pending = true;
                    }
                    _ = retry => {}
                }
            }
        });
        Self {
            task,
            client,
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
            copy_to_cluster(&self.client, &self.journal, &self.run_id, &self.lock_name),
        )
        .await;
        match tokio::time::timeout(
            std::time::Duration::from_secs(10),
            prune_cluster_copies(&self.client, &self.lock_name, keep),
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
pub async fn list_cluster_copies(client: &kube::Client) -> Result<Vec<ClusterRun>, String> {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ListParams;
    let api: kube::Api<ConfigMap> = kube::Api::namespaced(client.clone(), crate::lock::NAMESPACE);
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
    use crate::vocab::Step;

    #[test]
    fn status_is_rebuilt_from_the_journal_even_after_a_torn_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::create(
            dir.path(),
            &Header {
                run_id: "r1".into(),
                playbook: "p".into(),
                nodes: ["a", "b", "c"]
                    .map(|n| (n.to_owned(), "w".to_owned()))
                    .to_vec(),
                ..Default::default()
            },
        )
        .unwrap();
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
                stream: crate::vocab::Stream::Stdout,
                line: "not journaled".into(),
            },
        ] {
            j.record(&Stamped { at, event }).unwrap();
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
            &Header {
                run_id: "r1".into(),
                playbook_file: "/p.toml".into(),
                ..Default::default()
            },
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
            started("command-failed", Step::Command),
            RunEvent::NodeFailed {
                node: "command-failed".into(),
                step: Step::Command,
                reason: "exit 3".into(),
            },
        ] {
            j.record(&Stamped { at, event }).unwrap();
        }
        let path = dir.path().join(FILE);
        // A command that may have started goes back to the command step (which reattaches);
        // the node's record decides, so resume checks it first (uncertain).
        let p = resume_points(&path, &[]).unwrap();
        assert_eq!(p.from["in-command"], Step::Command);
        assert_eq!(p.uncertain.iter().collect::<Vec<_>>(), ["in-command"]);
        // A command whose failure was recorded runs again: a new attempt, not an attach.
        assert_eq!(p.from["command-failed"], Step::Command);
        assert_eq!(p.retry.iter().collect::<Vec<_>>(), ["command-failed"]);
        let p = resume_points(&path, &["in-command".into()]).unwrap();
        assert!(p.uncertain.is_empty());
        assert_eq!(p.run_id, "r1");
        assert!(p.done.contains("done") && !p.from.contains_key("done"));
        assert_eq!(p.from["draining"], Step::Cordon);
        assert_eq!(p.from["commanded"], Step::WaitReady);
        assert_eq!(p.from["in-command"], Step::WaitReady);
        assert_eq!(p.from["settling"], Step::Settle);
    }

    #[test]
    fn node_annotations_ahead_of_a_lagging_journal_copy_move_resume_points_forward() {
        let record = |node: &str, by: &str, step: &str, last: &str| NodeRecord {
            node: node.into(),
            cordoned_by: (!by.is_empty()).then(|| by.into()),
            step: (!step.is_empty()).then(|| step.into()),
            failed_step: None,
            last_run: (!last.is_empty()).then(|| last.into()),
        };
        let points = || {
            let mut p = ResumePoints {
                run_id: "r1".into(),
                ..Default::default()
            };
            p.done.insert("done".into());
            p.from.insert("ahead".into(), Step::Drain);
            // The journal saw drain finish, not the command start the annotations record.
            p.from.insert("lagging".into(), Step::Command);
            p
        };
        let records = [
            record("done", "", "", "r1 2026-11-25T01:00:00Z"),
            record("ahead", "r1", "wait-ready", ""),
            record("uncordoned", "", "", "r1 2026-11-25T01:00:00Z"),
            record("other-run", "r0", "command", ""),
            record("old-run", "", "", "r0 2026-11-24T01:00:00Z"),
            record("in-command", "r1", "command", ""),
            record("lagging", "r1", "command", ""),
        ];
        let mut p = points();
        reconcile_with_nodes(&mut p, &records, &[]).unwrap();
        assert_eq!(
            p.uncertain.iter().collect::<Vec<_>>(),
            ["in-command", "lagging"]
        );
        assert_eq!(p.from["in-command"], Step::Command);
        let mut p = points();
        reconcile_with_nodes(&mut p, &records, &["in-command".into(), "lagging".into()]).unwrap();
        assert!(p.uncertain.is_empty());
        assert_eq!(p.from["lagging"], Step::WaitReady);
        assert!(p.done.contains("done") && !p.from.contains_key("done"));
        assert_eq!(p.from["ahead"], Step::WaitReady);
        assert_eq!(p.from["uncordoned"], Step::Settle);
        assert_eq!(p.from["in-command"], Step::WaitReady);
        assert!(!p.from.contains_key("other-run") && !p.from.contains_key("old-run"));
    }

    #[test]
    fn a_dry_run_is_not_resumable_and_a_resumed_deadline_replaces_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let header = |dry_run| Header {
            run_id: "r1".into(),
            dry_run,
            deadline: Some("2026-11-25T02:00:00Z".into()),
            lock_name: Some("blue".into()),
            lock_duration_secs: Some(10),
            ..Default::default()
        };
        let dry = dir.path().join("dry");
        Journal::create(&dry, &header(true)).unwrap();
        let err = resume_points(&dry.join(FILE), &[]).unwrap_err();
        assert!(err.contains("dry run"), "{err}");
        let real = dir.path().join("real");
        let j = Journal::create(&real, &header(false)).unwrap();
        let p = resume_points(&real.join(FILE), &[]).unwrap();
        assert_eq!(p.deadline, Some("2026-11-25T02:00:00Z".parse().unwrap()));
        assert_eq!(p.lock_name.as_deref(), Some("blue"));
        assert_eq!(p.lock_duration, Some(std::time::Duration::from_secs(10)));
        j.record(&Stamped {
            at: std::time::SystemTime::now(),
            event: RunEvent::DeadlineSet {
                deadline: "2026-11-26T06:00:00Z".into(),
            },
        })
        .unwrap();
        let p = resume_points(&real.join(FILE), &[]).unwrap();
        assert_eq!(p.deadline, Some("2026-11-26T06:00:00Z".parse().unwrap()));
    }

    fn stamped(event: RunEvent) -> Stamped {
        Stamped {
            at: std::time::SystemTime::now(),
            event,
        }
    }

    fn started(node: &str, step: Step) -> RunEvent {
        RunEvent::StepStarted {
            node: node.into(),
            step,
        }
    }

    fn header(nodes: &[&str]) -> Header {
        Header {
            run_id: "r1".into(),
            playbook_file: "/p.toml".into(),
            nodes: nodes.iter().map(|n| (n.to_string(), "w".into())).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_record_that_cannot_be_written_is_refused_and_so_is_every_later_one() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::create(dir.path(), &header(&["a"])).unwrap();
        j.record(&stamped(started("a", Step::Cordon))).unwrap();
        assert_eq!(j.failure(), None);
        // The disk fills up.
        j.write_to(OpenOptions::new().append(true).open("/dev/full").unwrap());
        let err = j.record(&stamped(started("a", Step::Drain))).unwrap_err();
        assert!(
            err.to_string().contains("No space left on device") && err.to_string().contains(FILE),
            "{err}"
        );
        assert_eq!(j.failure(), Some(err.clone()));
        assert!(j.watch_failure().borrow().is_some());
        // Space again: still refused (a record after a gap would lie), with the first reason.
        j.write_to(
            OpenOptions::new()
                .append(true)
                .open(dir.path().join(FILE))
                .unwrap(),
        );
        assert_eq!(
            j.record(&stamped(started("a", Step::Drain))),
            Err(err.clone())
        );
        // Events that are not journaled still pass.
        j.record(&stamped(RunEvent::Warning {
            node: None,
            message: "x".into(),
        }))
        .unwrap();
        let text = std::fs::read_to_string(dir.path().join(FILE)).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text.ends_with("\n"));
    }

    #[test]
    fn a_torn_line_anywhere_is_skipped_by_every_reader_and_its_place_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        let j = Journal::create(dir.path(), &header(&["a", "b"])).unwrap();
        for e in [
            RunEvent::NodeStarted {
                node: "a".into(),
                phase: "w".into(),
            },
            started("a", Step::Cordon),
        ] {
            j.record(&stamped(e)).unwrap();
        }
        drop(j);
        // The run dies in the middle of a record (and of a multi-byte character).
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(
            &"{\"at\":\"2026-11-25T01:00:00Z\",\"event\":\"step-finished\",\"reason\":\"—"
                .as_bytes()[..60],
        )
        .unwrap();
        drop(f);
        let (j, torn) = Journal::open_append(dir.path()).unwrap();
        assert_eq!(torn, Some(4));
        for e in [
            RunEvent::RunStarted {
                run_id: "r1".into(),
                playbook: "p".into(),
                nodes: 2,
                dry_run: false,
                by: None,
            },
            RunEvent::StepFinished {
                node: "a".into(),
                step: Step::Cordon,
                elapsed_ms: 1,
                detail: None,
            },
            started("a", Step::Drain),
            RunEvent::NodeDone {
                node: "b".into(),
                elapsed_ms: 1,
            },
        ] {
            j.record(&stamped(e)).unwrap();
        }
        drop(j);
        // Reopening a journal that ends cleanly adds nothing.
        let (_, torn) = Journal::open_append(dir.path()).unwrap();
        assert_eq!(torn, None);
        let records = Records::read(&path).unwrap();
        assert_eq!(records.skipped, vec![4]);
        assert_eq!(records.records.len(), 6);
        let status = RunStatus::from_journal(&path).unwrap();
        assert_eq!(status.skipped_lines, vec![4]);
        assert_eq!(status.nodes["a"].step.as_deref(), Some("drain"));
        assert_eq!(status.nodes["b"].state, "done");
        let points = resume_points(&path, &[]).unwrap();
        assert_eq!(points.skipped_lines, vec![4]);
        assert_eq!(points.from["a"], Step::Cordon);
        assert!(points.done.contains("b"));
        let report = crate::report::run_report::RunReport::load(&path).unwrap();
        assert_eq!(report.skipped_lines, vec![4]);
        assert_eq!(report.counts().0, 1);
        assert_eq!(
            skipped_text(&[4]).unwrap(),
            "1 line that does not parse was skipped (line 4)"
        );
        assert_eq!(
            skipped_text(&[4, 9]).unwrap(),
            "2 lines that do not parse were skipped (lines 4, 9)"
        );
        assert_eq!(skipped_text(&[]), None);
    }

    #[test]
    fn a_run_refused_before_it_started_is_marked_and_not_resumable() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::create(dir.path(), &header(&["a"])).unwrap();
        j.record(&stamped(RunEvent::RunRefused {
            reason: "refusing to start: gate pods failed before the run".into(),
        }))
        .unwrap();
        let path = dir.path().join(FILE);
        let status = RunStatus::from_journal(&path).unwrap();
        assert!(
            status.state.starts_with("refused: refusing to start"),
            "{}",
            status.state
        );
        let err = resume_points(&path, &[]).unwrap_err();
        assert!(err.contains("never started"), "{err}");
        let report = crate::report::run_report::RunReport::load(&path).unwrap();
        assert!(report.outcome.starts_with("refused"), "{}", report.outcome);
    }
}
