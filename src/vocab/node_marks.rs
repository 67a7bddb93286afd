//! What rollgate writes on a Node: its annotations under `rollgate.dev/` and the field manager
//! of its patches, and how an operator removes them by hand.

pub const CORDONED_BY: &str = "rollgate.dev/cordoned-by";
pub const PRECORDONED: &str = "rollgate.dev/precordoned";
pub const STEP: &str = "rollgate.dev/step";
/// The [`STEP`] value of a node whose step failed ([`FAILED_STEP`] says which).
pub const STEP_FAILED: &str = "failed";
pub const REASON: &str = "rollgate.dev/reason";
pub const FAILED_STEP: &str = "rollgate.dev/failed-step";
pub const LAST_RUN: &str = "rollgate.dev/last-run";
/// The node's boot ID when its command started (a changed boot ID means it rebooted since).
pub const BOOT_ID: &str = "rollgate.dev/boot-id";
/// The field manager of rollgate's node patches (see `metadata.managedFields`).
pub const FIELD_MANAGER: &str = "rollgate";

/// The commands that give a node back by hand: uncordon it and clear rollgate's annotations
/// (a bare `kubectl uncordon` leaves them, and the record of a failure with them).
pub fn hand_back_command(node: &str) -> String {
    format!(
        "kubectl uncordon {node} && kubectl annotate node {node} {CORDONED_BY}- {PRECORDONED}- {STEP}- {REASON}- {FAILED_STEP}- {BOOT_ID}-"
    )
}
