//! The state directory's layout, owned here and nowhere else:
//!
//! ```text
//! STATE_DIR/runs/
//!   latest              id of the latest real run (what pause, resume, status, report act on)
//!   latest-dry-run      id of the latest dry run (a dry run never moves `latest`)
//!   RUN_ID/
//!     journal.jsonl     the run journal (crate::journal)
//!     playbook.toml     the playbook as the run started with it
//!     nodes/NODE.log    per-node logs
//!     report.html, report.md
//!     pid               the process running it
//!     paused            present while the run is paused
//! ```

use std::path::{Path, PathBuf};

const LATEST_FILE: &str = "latest";
const LATEST_DRY_RUN_FILE: &str = "latest-dry-run";
const PID_FILE: &str = "pid";
const PAUSED_FILE: &str = "paused";

/// `STATE_DIR/runs`.
#[derive(Debug, Clone)]
pub struct RunsDir(PathBuf);

/// Not a run id: nothing that could step outside the runs directory.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RunIdError {
    #[error("{0:?} is not a run id")]
    Invalid(String),
    #[error("no run found in {}", .0.display())]
    NoLatest(PathBuf),
}

impl RunsDir {
    pub fn new(state_dir: &Path) -> Self {
        Self(state_dir.join("runs"))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn run(&self, run_id: &str) -> RunDir {
        RunDir(self.0.join(run_id))
    }

    /// The run named, or the latest real run.
    pub fn resolve(&self, run: Option<&str>) -> Result<String, RunIdError> {
        match run {
            Some(r)
                if r.is_empty()
                    || !r
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') =>
            {
                Err(RunIdError::Invalid(r.to_owned()))
            }
            Some(r) => Ok(r.to_owned()),
            None => std::fs::read_to_string(self.0.join(LATEST_FILE))
                .map(|s| s.trim().to_owned())
                .map_err(|_| RunIdError::NoLatest(self.0.clone())),
        }
    }

    /// From now on `pause`, `resume`, `status` and `report` without a run id find this run.
    pub fn set_latest(&self, run_id: &str) {
        let _ = std::fs::write(self.0.join(LATEST_FILE), run_id);
    }

    pub fn set_latest_dry_run(&self, run_id: &str) {
        let _ = std::fs::write(self.0.join(LATEST_DRY_RUN_FILE), run_id);
    }

    /// The run directories here, in no particular order: (run id, directory).
    pub fn list(&self) -> Vec<(String, RunDir)> {
        std::fs::read_dir(&self.0)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().is_dir())
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    RunDir(e.path()),
                )
            })
            .collect()
    }
}

/// One run's directory.
#[derive(Debug, Clone)]
pub struct RunDir(PathBuf);

impl RunDir {
    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn journal(&self) -> PathBuf {
        self.0.join(crate::journal::FILE)
    }

    pub fn playbook_copy(&self) -> PathBuf {
        self.0.join(crate::journal::PLAYBOOK_COPY)
    }

    pub fn node_logs(&self) -> PathBuf {
        self.0.join("nodes")
    }

    /// Records that this process runs the run.
    pub fn write_pid(&self) {
        let _ = std::fs::write(self.0.join(PID_FILE), std::process::id().to_string());
    }

    /// Whether this machine ran the run and its process is gone (crashed, killed, ended): then
    /// the run is not live, whatever its lease in the cluster still says.
    pub fn process_gone(&self) -> bool {
        self.0.join(PID_FILE).exists() && !self.process_alive()
    }

    /// Whether the process that ran the run is still alive (a rollgate process with its pid).
    pub fn process_alive(&self) -> bool {
        let Some(pid) = std::fs::read_to_string(self.0.join(PID_FILE))
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
        else {
            return false;
        };
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains("rollgate"))
    }

    /// Whether the run's process marked it paused (a local marker; the cluster object is what
    /// `pause` and `resume` use).
    pub fn is_paused(&self) -> bool {
        self.0.join(PAUSED_FILE).exists()
    }

    pub fn set_paused(&self, paused: bool) {
        let path = self.0.join(PAUSED_FILE);
        let _ = if paused {
            std::fs::write(path, "")
        } else {
            std::fs::remove_file(path)
        };
    }
}
