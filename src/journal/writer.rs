//! The writing side: the header line, then one synced line per journaled event.

use super::FILE;
use crate::vocab::{JournalError, Recorder, RunEvent, Stamped};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The journal's first line: what the run is. Written once; fields added later are optional so
/// older journals still read.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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

/// Whether an event belongs in the journal: decisions and transitions, not output lines or
/// what the monitor sees. Every variant is listed, so a new event is a decision here.
pub(super) fn journaled(e: &RunEvent) -> bool {
    use RunEvent::*;
    match e {
        RunStarted { .. }
        | WaveStarted { .. }
        | NodeStarted { .. }
        | StepStarted { .. }
        | StepFinished { .. }
        | NodeDone { .. }
        | NodeFailed { .. }
        | NodeSkipped { .. }
        | NodeAbandoned { .. }
        | Stopping { .. }
        | GateDecision { .. }
        | Paused { .. }
        | Resumed { .. }
        | ControlRefused { .. }
        | WindowClosed { .. }
        | WindowOpened
        | FinishByEnd(_)
        | DeadlineSet { .. }
        | RunFinished { .. }
        | Preflight { .. }
        | RunRefused { .. } => true,
        PodEvicted { .. }
        | PodSkipped { .. }
        | EvictionBlocked { .. }
        | EvictionRetried { .. }
        | PodDeleted { .. }
        | CommandOutput { .. }
        | DryRunAction { .. }
        | Warning { .. }
        | Baseline { .. }
        | ProbeResult { .. }
        | Problem { .. }
        | WatchLost { .. }
        | WatchRestored { .. }
        | ReportWritten { .. } => false,
    }
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
