//! Per-node log files (`STATE_DIR/runs/RUN_ID/nodes/NODE.log`): every event about a node,
//! including each line of the remote command's output, with timestamps. A resumed run appends
//! to them (the operator may be reading them to decide `--command-done`), after a marker line.

use super::Consumer;
use crate::vocab::{RunEvent, Stamped, Stream};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;

pub struct NodeLogs {
    dir: PathBuf,
    files: HashMap<String, File>,
}

impl NodeLogs {
    pub fn new(dir: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            dir,
            files: HashMap::new(),
        })
    }
}

/// The line between an earlier process's lines and a resumed run's.
fn resumed_marker(at: std::time::SystemTime) -> String {
    format!(
        "{} ===== resumed (rollgate resume): the lines above are from before =====\n",
        humantime::format_rfc3339_millis(at)
    )
}

fn line(event: &RunEvent) -> String {
    match event {
        RunEvent::CommandOutput { stream, line, .. } => {
            let stream = match stream {
                Stream::Stdout => "stdout",
                Stream::Stderr => "stderr",
            };
            format!("{stream}: {line}")
        }
        other => serde_json::to_string(other).unwrap_or_default(),
    }
}

impl Consumer for NodeLogs {
    fn handle(&mut self, event: &Stamped) {
        let Some(node) = event.event.node() else {
            return;
        };
        if !self.files.contains_key(node) {
            let Ok(mut f) = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join(format!("{node}.log")))
            else {
                return;
            };
            // Written by an earlier process of this run: say where this one starts.
            if f.metadata().is_ok_and(|m| m.len() > 0) {
                let _ = f.write_all(resumed_marker(event.at).as_bytes());
            }
            self.files.insert(node.to_owned(), f);
        }
        if let Some(f) = self.files.get_mut(node) {
            // One write per line: lines stay whole.
            let text = format!(
                "{} {}\n",
                humantime::format_rfc3339_millis(event.at),
                line(&event.event)
            );
            let _ = f.write_all(text.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(node: &str, text: &str) -> Stamped {
        Stamped {
            at: std::time::SystemTime::now(),
            event: RunEvent::CommandOutput {
                node: node.into(),
                stream: Stream::Stdout,
                line: text.into(),
            },
        }
    }

    #[test]
    fn a_resumed_run_appends_to_the_node_logs_after_a_marker() {
        let dir = tempfile::tempdir().unwrap();
        let mut first = NodeLogs::new(dir.path().to_owned()).unwrap();
        first.handle(&output("a", "before the crash"));
        drop(first);
        let mut resumed = NodeLogs::new(dir.path().to_owned()).unwrap();
        resumed.handle(&output("a", "after the resume"));
        resumed.handle(&output("b", "first line of b"));
        let a = std::fs::read_to_string(dir.path().join("a.log")).unwrap();
        let lines: Vec<&str> = a.lines().collect();
        assert_eq!(lines.len(), 3, "{a}");
        assert!(lines[0].ends_with("stdout: before the crash"), "{a}");
        assert!(lines[1].contains("resumed (rollgate resume)"), "{a}");
        assert!(lines[2].ends_with("stdout: after the resume"), "{a}");
        // A node the earlier process never logged gets no marker.
        let b = std::fs::read_to_string(dir.path().join("b.log")).unwrap();
        assert_eq!(b.lines().count(), 1, "{b}");
    }
}
