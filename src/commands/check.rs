//! `rollgate check`: offline validation of a playbook (and the config), with a one-screen summary.

use super::{Failure, load_playbook_with};
use crate::config::Config;
use crate::exit;
use crate::playbook::{NodeSelection, Ordering, PdbTimeoutPolicy, Playbook};
use std::fmt::Write;
use std::path::Path;

pub fn run(config: Config, path: &Path) -> Result<u8, Failure> {
    let playbook = load_playbook_with(path, &config)?;
    print!("{}", summary(path, &playbook));
    match &config.source {
        Some(p) => println!("config {}: valid", p.display()),
        None => {
            println!("config: none given (defaults; kubeconfig from $KUBECONFIG or ~/.kube/config)")
        }
    }
    Ok(exit::OK)
}

fn d(d: std::time::Duration) -> String {
    humantime::format_duration(d).to_string()
}

pub fn summary(path: &Path, pb: &Playbook) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "playbook {}: {:?} is valid", path.display(), pb.name);
    if let Some(v) = &pb.target_kubelet_version {
        let _ = writeln!(s, "  target kubelet: {v}");
    }
    for (i, p) in pb.phases.iter().enumerate() {
        let sel = match &p.selection {
            NodeSelection::Selector(sel) => format!("selector {sel}"),
            NodeSelection::Names(n) => format!("nodes {}", n.join(", ")),
        };
        let order = match &p.order {
            Ordering::AsListed => "as listed".to_owned(),
            Ordering::ByName => "by name".to_owned(),
            Ordering::ByLabel(l) => format!("wave per {l}"),
        };
        let _ = writeln!(
            s,
            "  phase {} {:?}: {sel}; {} at a time; {order}; failure budget {}",
            i + 1,
            p.name,
            p.concurrency,
            p.failure_budget
        );
    }
    if let Some(m) = pb.max_failed_nodes {
        let _ = writeln!(s, "  run failure budget: {m} node(s)");
    }
    if let Some(w) = &pb.window {
        let outside = match w.outside {
            crate::window::OutsideWindow::Wait => "wait for it",
            crate::window::OutsideWindow::Exit => "stop resumable (exit 8)",
        };
        let _ = writeln!(
            s,
            "  maintenance window: {}; outside it: {outside}{}",
            w.describe(),
            if w.finish_by_end {
                "; finish-by-end: a node starts only if its p95 (see `rollgate preflight`) ends before the window closes"
            } else {
                ""
            }
        );
    }
    if let Some(d) = pb.deadline {
        let _ = writeln!(
            s,
            "  deadline: no node starts {} after the run started",
            humantime::format_duration(d)
        );
    }
    let dr = &pb.drain;
    let _ = writeln!(
        s,
        "  drain: timeout {}{}; daemonsets {}; emptyDir data {}; unmanaged pods {}; PDB still blocking at timeout: {}",
        d(dr.timeout),
        dr.grace_period
            .map(|g| format!(", grace period {}", d(g)))
            .unwrap_or_default(),
        if dr.ignore_daemonsets {
            "ignored"
        } else {
            "refuse"
        },
        if dr.delete_emptydir_data {
            "deleted"
        } else {
            "refuse"
        },
        if dr.force { "evicted" } else { "refuse" },
        match dr.on_pdb_timeout {
            PdbTimeoutPolicy::Fail => "fail the node",
            PdbTimeoutPolicy::DisableEviction => "delete the pods",
            PdbTimeoutPolicy::Skip => "skip the node (uncordoned, without its command)",
        }
    );
    let c = &pb.command;
    let _ = writeln!(
        s,
        "  command: {:?} (timeout {}, {}{})",
        c.run,
        d(c.timeout),
        if c.safe_to_rerun {
            "safe to rerun"
        } else {
            "not safe to rerun"
        },
        if c.sudo {
            ", as root through sudo -n"
        } else {
            ""
        }
    );
    let _ = writeln!(
        s,
        "  ready: timeout {}, stable for {}{}; settle: timeout {}, soak {}",
        d(pb.ready.timeout),
        d(pb.ready.stable_for),
        if pb.ready.reboot {
            ", the command reboots the node (new boot ID awaited)"
        } else {
            ""
        },
        d(pb.settle.timeout),
        d(pb.settle.soak)
    );
    let _ = writeln!(
        s,
        "  probes: {}; gates: {}",
        pb.probes
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
            .if_empty("none"),
        pb.gates.len()
    );
    s
}

trait IfEmpty {
    fn if_empty(self, other: &str) -> String;
}

impl IfEmpty for String {
    fn if_empty(self, other: &str) -> String {
        if self.is_empty() {
            other.to_owned()
        } else {
            self
        }
    }
}
