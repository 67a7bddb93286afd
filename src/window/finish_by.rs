//! `[window] finish-by-end = true`: a node starts only if its expected p95 duration ends
//! before the current window closes; otherwise it waits for the next window (or the run stops,
//! with `outside = "exit"`), so no node is in flight when the window closes. The estimate is
//! computed once when the run starts (by the pre-flight ETA, from earlier runs' journals) and
//! handed in as a plain [`NodeEstimate`]; [`too_late`] is the pure decision.

use super::{Window, WindowSpec};
use jiff::{Timestamp, ToSpan};
use std::time::Duration;

/// How long one node is expected to take, slow case (p95 of each step, summed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeEstimate {
    pub p95: Duration,
    /// Earlier runs of the playbook the step times come from (0: the documented defaults).
    pub from_runs: usize,
}

/// The window is open but closes before a node started now would end (its p95).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TooLate {
    pub needs: NodeEstimate,
    pub closes_at: Timestamp,
    /// From the decision to the close.
    pub closes_in: Duration,
    /// The next opening after this one closes; None if not within a year.
    pub reopens_at: Option<Timestamp>,
}

/// How far ahead a window that never closes is looked at (the longest window is 7 days).
const CLOSE_LOOKAHEAD_MINUTES: i64 = 8 * 24 * 60;

impl Window {
    /// When the opening `t` is in ends: the first moment after `t` the window is closed. None
    /// when it is closed at `t`, or does not close within 8 days (overlapping cron openings).
    pub fn closes_at(&self, t: Timestamp) -> Option<Timestamp> {
        if !self.is_open(t) {
            return None;
        }
        match &self.spec {
            WindowSpec::Daily { start, end, .. } => {
                let local = t.to_zoned(self.tz.clone()).datetime();
                // Overnight and past the start: tonight's window ends tomorrow.
                let day = if start >= end && local.time() >= *start {
                    local.date().tomorrow().ok()?
                } else {
                    local.date()
                };
                day.to_datetime(*end)
                    .to_zoned(self.tz.clone())
                    .ok()
                    .map(|z| z.timestamp())
            }
            WindowSpec::Cron { cron, duration } => {
                let minutes = (duration.as_secs() / 60).max(1) as i64;
                let floor = t
                    .round(
                        jiff::TimestampRound::new()
                            .smallest(jiff::Unit::Minute)
                            .mode(jiff::RoundMode::Trunc),
                    )
                    .ok()?;
                let matches = |m: Timestamp| cron.matches(m.to_zoned(self.tz.clone()).datetime());
                // The latest opening at or before `t` (it is open, so there is one).
                let last_start = (0..minutes)
                    .filter_map(|back| floor.checked_sub(back.minutes()).ok())
                    .find(|m| matches(*m))?;
                let mut end = last_start.checked_add(minutes.minutes()).ok()?;
                // Openings before this one ends keep it open longer.
                let mut m = floor.checked_add(1.minutes()).ok()?;
                let limit = floor.checked_add(CLOSE_LOOKAHEAD_MINUTES.minutes()).ok()?;
                while m < end {
                    if m >= limit {
                        return None;
                    }
                    if matches(m) {
                        end = end.max(m.checked_add(minutes.minutes()).ok()?);
                    }
                    m = m.checked_add(1.minutes()).ok()?;
                }
                Some(end)
            }
        }
    }
}

/// Whether a node started at `now` would still be in flight (by its p95) when the window
/// closes. None when it fits, when the window is closed (that is the window's own rule), or
/// when it does not close within 8 days.
pub fn too_late(window: &Window, now: Timestamp, needs: NodeEstimate) -> Option<TooLate> {
    let closes_at = window.closes_at(now)?;
    let closes_in = closes_at.duration_since(now);
    let closes_in = Duration::try_from(closes_in).unwrap_or_default();
    if closes_in >= needs.p95 {
        return None;
    }
    Some(TooLate {
        needs,
        closes_at,
        closes_in,
        reopens_at: window.next_open(closes_at),
    })
}
