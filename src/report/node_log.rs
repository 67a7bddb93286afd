//! Per-node log files (`STATE_DIR/runs/RUN_ID/nodes/NODE.log`): every event about a node,
//! including each line of the remote command's output, with timestamps.

use super::Consumer;
use crate::engine::{RunEvent, Stamped, Stream};
use std::collections::HashMap;
use std::fs::File;
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
            let Ok(f) = File::create(self.dir.join(format!("{node}.log"))) else {
                return;
            };
            self.files.insert(node.to_owned(), f);
        }
        if let Some(f) = self.files.get_mut(node) {
            let _ = writeln!(
                f,
                "{} {}",
                humantime::format_rfc3339_millis(event.at),
                line(&event.event)
            );
        }
    }
}
