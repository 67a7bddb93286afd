//! When new nodes may start: maintenance windows (days + start/end, or cron + duration, in a
//! time zone), the run deadline, and the clock they are read from. The [`Scheduler`] turns
//! them into a [`Schedule`] the engine obeys like a health pause: outside the window no new
//! node starts, nodes in flight finish.
//!
//! Time is injectable: with `ROLLGATE_CLOCK_FILE` set, "now" is the RFC 3339 timestamp in that
//! file (re-read every check), so tests can open and close windows at will.
//!
//! Inside: `days` (day names, times of day, time zones), `cron` (five-field cron), `raw` (the
//! `[window]` table as written and its validation), `finish_by` (`finish-by-end`: no node
//! starts that would, by its p95, still be in flight when the window closes).

use jiff::civil::Time;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::watch;

mod cron;
mod days;
mod finish_by;
mod raw;

pub use cron::Cron;
pub use days::{parse_days, parse_time, parse_timezone};
pub use finish_by::{NodeEstimate, TooLate, too_late};
pub use raw::{RawWindow, WindowError};

use days::{DAY_NAMES, weekday_index};

/// Why the text of a window's key or of a deadline is not valid.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// A `days` item that names no day or range of days.
    #[error("{0:?} is not a day or a range of days")]
    Days(String),
    /// Not `HH:MM` on a 24-hour clock.
    #[error("{0:?} is not a time of day")]
    Time(String),
    /// Not an IANA time zone name (nor `local`).
    #[error("unknown time zone {name:?}: {source}")]
    TimeZone {
        name: String,
        #[source]
        source: jiff::Error,
    },
    /// A cron expression without exactly five fields.
    #[error(
        "{text:?} has {count} fields; cron needs 5: minute hour day-of-month month day-of-week"
    )]
    CronFields { text: String, count: usize },
    /// One field of a cron expression.
    #[error("{field} field: {problem}")]
    CronField {
        field: &'static str,
        #[source]
        problem: CronFieldError,
    },
    /// A deadline that is neither a duration nor a timestamp.
    #[error("{0:?} is neither a duration (\"6h\") nor a timestamp (\"2026-11-26T06:00:00Z\")")]
    Deadline(String),
    /// A deadline too far away to be a timestamp.
    #[error(transparent)]
    OutOfRange(#[from] jiff::Error),
}

/// What is wrong with one field of a cron expression.
#[derive(Debug, thiserror::Error)]
pub enum CronFieldError {
    #[error("{value:?} is not between {min} and {max}")]
    OutOfRange { value: String, min: u32, max: u32 },
    #[error("{0:?} is not a step")]
    Step(String),
    #[error("range {0:?} runs backwards")]
    Backwards(String),
}

/// What to do when the window is closed and nothing is in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutsideWindow {
    /// Wait for the next opening (the process stays up, holding the lock).
    Wait,
    /// Stop resumable; `rollgate resume` continues (e.g. from a cron job at the next opening).
    Exit,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WindowSpec {
    /// Opens on each listed weekday at `start`, closes at `end` (the next day if `end <= start`).
    Daily {
        days: [bool; 7],
        start: Time,
        end: Time,
    },
    /// Opens at every cron match, stays open for `duration`.
    Cron { cron: Cron, duration: Duration },
}

#[derive(Debug, Clone)]
pub struct Window {
    pub spec: WindowSpec,
    pub tz: TimeZone,
    pub tz_name: String,
    pub outside: OutsideWindow,
    /// `finish-by-end = true`: a node starts only if its p95 ends before the window closes.
    pub finish_by_end: bool,
}

/// How far ahead to look for the next opening (a yearly cron still fits).
const LOOKAHEAD_MINUTES: i64 = 366 * 24 * 60;

impl Window {
    pub fn is_open(&self, t: Timestamp) -> bool {
        let local = t.to_zoned(self.tz.clone()).datetime();
        match &self.spec {
            WindowSpec::Daily { days, start, end } => {
                let today = days[weekday_index(local.weekday())];
                let yesterday = days[weekday_index(local.weekday().wrapping_sub(1))];
                let time = local.time();
                if start < end {
                    today && time >= *start && time < *end
                } else {
                    // Overnight: tonight's window, or the tail of yesterday's.
                    (today && time >= *start) || (yesterday && time < *end)
                }
            }
            WindowSpec::Cron { cron, duration } => {
                let minutes = (duration.as_secs() / 60) as i64;
                (0..minutes.max(1)).any(|back| {
                    t.checked_sub(back.minutes())
                        .is_ok_and(|m| cron.matches(m.to_zoned(self.tz.clone()).datetime()))
                })
            }
        }
    }

    /// The first minute at or after `t` when the window is open.
    pub fn next_open(&self, t: Timestamp) -> Option<Timestamp> {
        if self.is_open(t) {
            return Some(t);
        }
        let first = t.round(jiff::Unit::Minute).ok()?;
        (0..LOOKAHEAD_MINUTES)
            .filter_map(|i| first.checked_add(i.minutes()).ok())
            .find(|m| *m >= t && self.opens_at(*m))
    }

    /// Whether a minute `m` is inside the window (cron: whether it is a start, which is cheaper
    /// and enough when the window was closed the minute before).
    fn opens_at(&self, m: Timestamp) -> bool {
        match &self.spec {
            WindowSpec::Cron { cron, .. } => cron.matches(m.to_zoned(self.tz.clone()).datetime()),
            WindowSpec::Daily { .. } => self.is_open(m),
        }
    }

    pub fn describe(&self) -> String {
        match &self.spec {
            WindowSpec::Daily { days, start, end } => {
                let names: Vec<&str> = DAY_NAMES
                    .iter()
                    .zip(days)
                    .filter(|(_, on)| **on)
                    .map(|(n, _)| *n)
                    .collect();
                let days = if names.len() == 7 {
                    "daily".to_owned()
                } else {
                    names.join(",")
                };
                format!(
                    "{days} {}-{} {}",
                    start.strftime("%H:%M"),
                    end.strftime("%H:%M"),
                    self.tz_name
                )
            }
            WindowSpec::Cron { cron, duration } => format!(
                "cron {:?} for {} ({})",
                cron.text,
                humantime::format_duration(*duration),
                self.tz_name
            ),
        }
    }
}

/// Where "now" comes from.
#[derive(Debug, Clone)]
pub enum Clock {
    System,
    /// Tests: the RFC 3339 timestamp in this file.
    File(PathBuf),
}

pub const CLOCK_ENV: &str = "ROLLGATE_CLOCK_FILE";

impl Clock {
    pub fn from_env() -> Clock {
        match std::env::var_os(CLOCK_ENV) {
            Some(path) => Clock::File(path.into()),
            None => Clock::System,
        }
    }

    pub fn now(&self) -> Timestamp {
        match self {
            Clock::System => Timestamp::now(),
            Clock::File(path) => std::fs::read_to_string(path)
                .ok()
                .and_then(|t| t.trim().parse().ok())
                .unwrap_or_else(|| {
                    tracing::warn!(path = %path.display(), "{CLOCK_ENV}: unreadable, using the system clock");
                    Timestamp::now()
                }),
        }
    }
}

/// Whether new nodes may start now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    Open,
    /// Outside the maintenance window; `reopens_at` is None if it never opens within a year.
    Closed {
        reopens_at: Option<Timestamp>,
    },
    /// Past the run deadline: no new node starts in this run.
    DeadlinePassed {
        deadline: Timestamp,
    },
    /// `finish-by-end`: the window is open, but a node started now would not end (by its p95)
    /// before it closes: treated as closed.
    TooLate(TooLate),
}

#[derive(Debug, Clone)]
pub struct Scheduler {
    pub window: Option<Window>,
    pub deadline: Option<Timestamp>,
    pub clock: Clock,
    /// A node's expected duration, for a window with `finish-by-end` (ignored without one).
    pub node_estimate: Option<NodeEstimate>,
}

impl Scheduler {
    pub fn is_unbounded(&self) -> bool {
        self.window.is_none() && self.deadline.is_none()
    }

    pub fn state_at(&self, now: Timestamp) -> Schedule {
        if let Some(deadline) = self.deadline
            && now >= deadline
        {
            return Schedule::DeadlinePassed { deadline };
        }
        match &self.window {
            Some(w) if !w.is_open(now) => Schedule::Closed {
                reopens_at: w.next_open(now),
            },
            Some(w) if w.finish_by_end => self
                .node_estimate
                .and_then(|needs| too_late(w, now, needs))
                .map_or(Schedule::Open, Schedule::TooLate),
            _ => Schedule::Open,
        }
    }

    pub fn state(&self) -> Schedule {
        self.state_at(self.clock.now())
    }

    /// Re-checks every `every` and publishes changes; the task ends when all receivers are gone.
    pub fn watch(self, every: Duration) -> watch::Receiver<Schedule> {
        let (tx, rx) = watch::channel(self.state());
        tokio::spawn(async move {
            let mut last = self.clock.now();
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = tx.closed() => return,
                }
                let now = self.clock.now();
                // Closed until a known time (and the clock did not jump back): nothing to
                // recompute; searching for the next opening of a rare cron costs a year of minutes.
                let still_closed = matches!(&*tx.borrow(), Schedule::Closed { reopens_at: Some(t) } if now < *t && now >= last)
                    && self.deadline.is_none_or(|d| now < d);
                last = now;
                if still_closed {
                    continue;
                }
                let state = self.state_at(now);
                tx.send_if_modified(|s| {
                    let changed = *s != state;
                    *s = state;
                    changed
                });
            }
        });
        rx
    }
}

/// A deadline given as a duration from now (`"6h"`) or an RFC 3339 timestamp.
pub fn parse_deadline(text: &str, now: Timestamp) -> Result<Timestamp, ParseError> {
    if let Ok(t) = text.parse::<Timestamp>() {
        return Ok(t);
    }
    let d = humantime::parse_duration(text).map_err(|_| ParseError::Deadline(text.to_owned()))?;
    let d = jiff::SignedDuration::try_from(d)?;
    Ok(now.checked_add(d)?)
}

#[cfg(test)]
mod tests;
