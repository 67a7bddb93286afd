//! Where a stopped or crashed run picks up again: from the [`RunHistory`], moved forward by what
//! the nodes' own annotations prove. The rule for a node stopped inside a step is written once,
//! in `pick_up`, from the step table (`Step::traits().resume_from`).

use super::{NodeState, RunHistory, SpanEnd};
use crate::vocab::{ResumeFrom, Step};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// Where a crashed run picks up again.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResumePoints {
    pub run_id: String,
    pub playbook_file: PathBuf,
    /// The nodes the run planned at its start (its header): a resume upgrades no other node,
    /// whatever the selectors match now (nodes `skip-upgraded` left out stay out). Empty in
    /// journals written before the plan was recorded: no restriction.
    pub planned: BTreeSet<String>,
    /// Finished nodes: skipped.
    pub done: BTreeSet<String>,
    /// Nodes the run skipped (`on-pdb-timeout = "skip"`): a recorded outcome, left as they are.
    pub skipped: BTreeSet<String>,
    /// Nodes that had started: the step they start from now.
    pub from: HashMap<String, Step>,
    /// Nodes whose remote command may have started (they start from the command step, which
    /// reattaches to it): resume checks each node's record of it first.
    pub uncertain: BTreeSet<String>,
    /// Nodes whose command ended and failed (a recorded node failure at the command step):
    /// the operator fixed the cause, so resume runs the command again (a new attempt).
    pub retry: BTreeSet<String>,
    /// The run's deadline, if it had one (the latest one a resume set).
    pub deadline: Option<jiff::Timestamp>,
    /// The lock the run held (None in journals written before it was recorded).
    pub lock_name: Option<String>,
    pub lock_duration: Option<std::time::Duration>,
    /// Journal lines that do not parse, 1-based: skipped (see [`super::Records`]).
    pub skipped_lines: Vec<usize>,
}

/// Where one node picks up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PickUp {
    From(Step),
    /// The step again, as a new attempt: its failure was recorded (the command failed).
    Retry(Step),
    /// The step, which reattaches to what may still run: the node's record decides.
    Uncertain(Step),
}

/// The resume rule: a node whose last step was `step` (`finished` or not) starts again from the
/// next step, or, stopped inside it, where the step table says. A step that must be checked
/// first (the remote command) goes on after it when the operator says it finished
/// (`command_done`), is tried again when its failure was recorded, and is uncertain otherwise.
fn pick_up(step: Step, finished: bool, command_done: bool, command_failed: bool) -> PickUp {
    let after = step.next().unwrap_or(step);
    if finished {
        return PickUp::From(after);
    }
    match step.traits().resume_from {
        ResumeFrom::Start => PickUp::From(Step::ALL[0]),
        ResumeFrom::ThisStep => PickUp::From(step),
        ResumeFrom::AfterCheckingTheCommand if command_done => PickUp::From(after),
        ResumeFrom::AfterCheckingTheCommand if command_failed => PickUp::Retry(step),
        ResumeFrom::AfterCheckingTheCommand => PickUp::Uncertain(step),
    }
}

impl ResumePoints {
    fn set(&mut self, node: &str, pick: PickUp) {
        let step = match pick {
            PickUp::From(step) => {
                self.retry.remove(node);
                self.uncertain.remove(node);
                step
            }
            PickUp::Retry(step) => {
                self.retry.insert(node.to_owned());
                self.uncertain.remove(node);
                step
            }
            PickUp::Uncertain(step) => {
                self.uncertain.insert(node.to_owned());
                step
            }
        };
        self.from.insert(node.to_owned(), step);
    }
}

/// Reads the journal and decides, per node, where to start again: a node interrupted while
/// cordoning or draining is drained again; one whose remote command may have started goes
/// back to the command step, which reattaches to the command (its record on the node decides;
/// see [`crate::remote`]), unless it is listed in `command_done` (the operator's word that it
/// finished); later steps restart where they stopped.
pub fn resume_points(path: &Path, command_done: &[String]) -> Result<ResumePoints, String> {
    let history =
        RunHistory::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let header = history
        .header
        .as_ref()
        .ok_or_else(|| format!("{} has no header", path.display()))?;
    if header.dry_run {
        return Err(format!(
            "run {} was a dry run: it changed nothing and cannot be resumed; start it again (with or without --dry-run)",
            header.run_id
        ));
    }
    if let Some(reason) = &history.refused {
        return Err(format!(
            "run {} never started ({reason}): nothing to resume; start it again with `rollgate run`",
            header.run_id
        ));
    }
    let mut points = ResumePoints {
        run_id: header.run_id.clone(),
        playbook_file: header.playbook_file.clone(),
        planned: header.nodes.iter().map(|(node, _)| node.clone()).collect(),
        deadline: history.deadline.as_deref().and_then(|d| d.parse().ok()),
        lock_name: header.lock_name.clone(),
        lock_duration: header
            .lock_duration_secs
            .map(std::time::Duration::from_secs),
        skipped_lines: history.skipped.clone(),
        ..Default::default()
    };
    for node in &history.nodes {
        if node.state == NodeState::Done {
            points.done.insert(node.name.clone());
            continue;
        }
        if node.state == NodeState::Skipped {
            points.skipped.insert(node.name.clone());
            continue;
        }
        let Some(last) = node.steps.last() else {
            continue;
        };
        // A failure recorded in its last step (a resume that started the node again but not yet
        // a step leaves it so).
        let pick = pick_up(
            last.step,
            last.end == SpanEnd::Finished,
            command_done.contains(&node.name),
            last.end == SpanEnd::Failed,
        );
        points.set(&node.name, pick);
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
    /// The step started, or `failed` (then `failed_step` says which).
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
    let index = |s: Step| Step::ALL.iter().position(|x| *x == s).expect("a step");
    for r in records {
        if points.done.contains(&r.node) || points.skipped.contains(&r.node) {
            continue;
        }
        let ours = r.cordoned_by.as_deref() == Some(points.run_id.as_str());
        let finished_here = r
            .last_run
            .as_deref()
            .is_some_and(|l| l.split_whitespace().next() == Some(points.run_id.as_str()));
        let failed_here = r.step.as_deref() == Some(crate::vocab::node_marks::STEP_FAILED);
        let step_name = if failed_here {
            r.failed_step.as_deref()
        } else {
            r.step.as_deref()
        };
        // Uncordoned by this run: only its settle may be left.
        let cluster = if finished_here {
            Some(Step::Settle)
        } else if ours {
            step_name.and_then(Step::from_name)
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
        // The annotations name the step started (not whether it finished).
        let pick = pick_up(
            cluster,
            false,
            command_done.contains(&r.node),
            failed_here || points.retry.contains(&r.node),
        );
        points.set(&r.node, pick);
    }
    Ok(())
}
