//! When new nodes may start: maintenance windows (days + start/end, or cron + duration, in a
//! time zone), the run deadline, and the clock they are read from. The [`Scheduler`] turns
//! them into a [`Schedule`] the engine obeys like a health pause: outside the window no new
//! node starts, nodes in flight finish.
//!
//! Time is injectable: with `ROLLGATE_CLOCK_FILE` set, "now" is the RFC 3339 timestamp in that
//! file (re-read every check), so tests can open and close windows at will.

use jiff::civil::{DateTime, Time, Weekday};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::watch;

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

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn weekday_index(d: Weekday) -> usize {
    d.to_monday_zero_offset() as usize
}

/// `"mon"`, `"Tuesday"`, `"SAT"`; ranges like `"mon-fri"` are expanded by [`parse_days`].
fn day_index(name: &str) -> Option<usize> {
    const FULL: [&str; 7] = [
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
    ];
    let lower = name.trim().to_ascii_lowercase();
    (0..7).find(|i| lower == DAY_NAMES[*i] || lower == FULL[*i])
}

/// Day names or ranges (`["mon-fri", "sun"]`) into a Monday-first mask.
pub fn parse_days(items: &[String]) -> Result<[bool; 7], String> {
    let mut days = [false; 7];
    for item in items {
        let (from, to) = match item.split_once('-') {
            Some((a, b)) => (a, b),
            None => (item.as_str(), item.as_str()),
        };
        let (Some(a), Some(b)) = (day_index(from), day_index(to)) else {
            return Err(format!("{item:?} is not a day or a range of days"));
        };
        let mut i = a;
        loop {
            days[i] = true;
            if i == b {
                break;
            }
            i = (i + 1) % 7;
        }
    }
    Ok(days)
}

/// `"01:00"` or `"23:30"` (24-hour clock).
pub fn parse_time(text: &str) -> Result<Time, String> {
    let (h, m) = text
        .split_once(':')
        .ok_or_else(|| format!("{text:?} is not a time of day"))?;
    let h: i8 = h
        .parse()
        .map_err(|_| format!("{text:?} is not a time of day"))?;
    let m: i8 = m
        .parse()
        .map_err(|_| format!("{text:?} is not a time of day"))?;
    Time::new(h, m, 0, 0).map_err(|_| format!("{text:?} is not a time of day"))
}

pub fn parse_timezone(name: &str) -> Result<TimeZone, String> {
    if name.eq_ignore_ascii_case("local") {
        return Ok(TimeZone::system());
    }
    TimeZone::get(name).map_err(|e| format!("unknown time zone {name:?}: {e}"))
}

/// A classic five-field cron expression (minute hour day-of-month month day-of-week) with
/// lists, ranges, steps and names. As in cron, when both day fields are restricted a day
/// matches if either does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    pub text: String,
    minutes: u64,
    hours: u64,
    days_of_month: u64,
    months: u64,
    days_of_week: u64,
    dom_any: bool,
    dow_any: bool,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const CRON_DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

impl Cron {
    pub fn parse(text: &str) -> Result<Cron, String> {
        let fields: Vec<&str> = text.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(format!(
                "{text:?} has {} fields; cron needs 5: minute hour day-of-month month day-of-week",
                fields.len()
            ));
        }
        let field = |i: usize, name: &str, min: u32, max: u32, names: &[&str]| {
            parse_field(fields[i], min, max, names).map_err(|e| format!("{name} field: {e}"))
        };
        let mut days_of_week = field(4, "day-of-week", 0, 7, &CRON_DAYS)?;
        if days_of_week & (1 << 7) != 0 {
            days_of_week |= 1; // 7 is Sunday too
        }
        Ok(Cron {
            text: text.to_owned(),
            minutes: field(0, "minute", 0, 59, &[])?,
            hours: field(1, "hour", 0, 23, &[])?,
            days_of_month: field(2, "day-of-month", 1, 31, &[])?,
            months: field(3, "month", 1, 12, &MONTHS)?,
            days_of_week,
            dom_any: fields[2] == "*",
            dow_any: fields[4] == "*",
        })
    }

    pub fn matches(&self, t: DateTime) -> bool {
        let bit = |set: u64, v: i64| set & (1u64 << v) != 0;
        let dom = bit(self.days_of_month, t.day().into());
        let dow = bit(
            self.days_of_week,
            t.weekday().to_sunday_zero_offset().into(),
        );
        let day = match (self.dom_any, self.dow_any) {
            (false, false) => dom || dow,
            _ => dom && dow,
        };
        bit(self.minutes, t.minute().into())
            && bit(self.hours, t.hour().into())
            && bit(self.months, t.month().into())
            && day
    }
}

fn parse_field(text: &str, min: u32, max: u32, names: &[&str]) -> Result<u64, String> {
    let value = |s: &str| -> Result<u32, String> {
        let lower = s.to_ascii_lowercase();
        if let Some(i) = names.iter().position(|n| *n == lower) {
            // Month names count from 1, day names from 0.
            return Ok(i as u32 + min);
        }
        s.parse::<u32>()
            .ok()
            .filter(|v| (min..=max).contains(v))
            .ok_or_else(|| format!("{s:?} is not between {min} and {max}"))
    };
    let mut set = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (
                r,
                s.parse::<u32>()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| format!("{s:?} is not a step"))?,
            ),
            None => (part, 1),
        };
        let (from, to) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a)?, value(b)?)
        } else {
            let v = value(range)?;
            (v, if step > 1 { max } else { v })
        };
        if from > to {
            return Err(format!("range {range:?} runs backwards"));
        }
        for v in (from..=to).step_by(step as usize) {
            set |= 1 << v;
        }
    }
    Ok(set)
}

/// The `[window]` table as written (playbook or config).
#[derive(serde::Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawWindow {
    days: Option<toml::Spanned<Vec<String>>>,
    start: Option<toml::Spanned<String>>,
    end: Option<toml::Spanned<String>>,
    cron: Option<toml::Spanned<String>>,
    duration: Option<toml::Spanned<String>>,
    timezone: Option<toml::Spanned<String>>,
    outside: Option<toml::Spanned<String>>,
}

/// A problem in a `[window]` table: where, what, and a hint.
pub type WindowError = (std::ops::Range<usize>, String, String);

impl RawWindow {
    /// Validates the table; `whole` is its span, for errors about missing keys.
    pub fn validate(self, whole: std::ops::Range<usize>) -> Result<Window, Vec<WindowError>> {
        let mut errors: Vec<WindowError> = Vec::new();
        let tz_name = self
            .timezone
            .as_ref()
            .map_or("UTC".to_owned(), |t| t.get_ref().clone());
        let tz = match parse_timezone(&tz_name) {
            Ok(tz) => tz,
            Err(e) => {
                let span = self.timezone.as_ref().map_or(whole.clone(), |t| t.span());
                errors.push((
                    span,
                    e,
                    "use an IANA name such as \"Europe/Berlin\", \"UTC\" or \"local\"".into(),
                ));
                TimeZone::UTC
            }
        };
        let outside = match self.outside.as_ref().map(|o| o.get_ref().as_str()) {
            None | Some("wait") => OutsideWindow::Wait,
            Some("exit") => OutsideWindow::Exit,
            Some(other) => {
                errors.push((
                    self.outside.as_ref().expect("set").span(),
                    format!("unknown value {other:?}"),
                    "use \"wait\" (stay up until the window reopens) or \"exit\" (stop resumable)"
                        .into(),
                ));
                OutsideWindow::Wait
            }
        };
        let daily_keys = self.days.is_some() || self.start.is_some() || self.end.is_some();
        let spec = match (&self.cron, daily_keys) {
            (Some(cron), true) => {
                errors.push((
                    cron.span(),
                    "a window is either `cron` + `duration` or `days` + `start` + `end`, not both"
                        .into(),
                    "keep one form".into(),
                ));
                None
            }
            (Some(cron), false) => {
                let parsed = Cron::parse(cron.get_ref()).map_err(|e| {
                    (
                        cron.span(),
                        e,
                        "e.g. cron = \"0 1 * * mon-fri\" (01:00 on weekdays)".to_owned(),
                    )
                });
                let duration = match &self.duration {
                    None => Err((
                        cron.span(),
                        "a cron window needs `duration`".to_owned(),
                        "add how long it stays open, e.g. duration = \"4h\"".to_owned(),
                    )),
                    Some(d) => humantime::parse_duration(d.get_ref())
                        .ok()
                        .filter(|d| {
                            *d >= Duration::from_secs(60)
                                && *d <= Duration::from_secs(7 * 24 * 3600)
                        })
                        .ok_or_else(|| {
                            (
                                d.span(),
                                format!("{:?} is not a window duration", d.get_ref()),
                                "use a duration between 1m and 7d, e.g. \"4h\"".to_owned(),
                            )
                        }),
                };
                match (parsed, duration) {
                    (Ok(cron), Ok(duration)) => Some(WindowSpec::Cron { cron, duration }),
                    (a, b) => {
                        errors.extend(a.err());
                        errors.extend(b.err());
                        None
                    }
                }
            }
            (None, _) => {
                if let Some(d) = &self.duration {
                    errors.push((
                        d.span(),
                        "`duration` belongs to a cron window".into(),
                        "with `start` and `end`, the window's length is given by them".into(),
                    ));
                }
                let days = match &self.days {
                    None => Ok([true; 7]),
                    Some(d) => parse_days(d.get_ref()).map_err(|e| {
                        (
                            d.span(),
                            e,
                            "write days like [\"mon-fri\"] or [\"sat\", \"sun\"]".to_owned(),
                        )
                    }),
                };
                let time = |t: &Option<toml::Spanned<String>>, key: &str| match t {
                    None => Err((
                        whole.clone(),
                        format!("the window has no `{key}`"),
                        "add e.g. start = \"01:00\" and end = \"05:00\", or cron + duration"
                            .to_owned(),
                    )),
                    Some(t) => parse_time(t.get_ref()).map_err(|e| {
                        (
                            t.span(),
                            e,
                            "write times as HH:MM on a 24-hour clock, e.g. \"23:30\"".to_owned(),
                        )
                    }),
                };
                match (days, time(&self.start, "start"), time(&self.end, "end")) {
                    (Ok(days), Ok(start), Ok(end)) if start == end => {
                        errors.push((
                            self.end.as_ref().expect("set").span(),
                            "the window starts and ends at the same time".into(),
                            "for a window that is always open, leave [window] out".into(),
                        ));
                        let _ = days;
                        None
                    }
                    (Ok(days), Ok(start), Ok(end)) => Some(WindowSpec::Daily { days, start, end }),
                    (a, b, c) => {
                        errors.extend(a.err());
                        errors.extend(b.err());
                        errors.extend(c.err());
                        None
                    }
                }
            }
        };
        match spec {
            Some(spec) if errors.is_empty() => Ok(Window {
                spec,
                tz,
                tz_name,
                outside,
            }),
            _ => Err(errors),
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
}

#[derive(Debug, Clone)]
pub struct Scheduler {
    pub window: Option<Window>,
    pub deadline: Option<Timestamp>,
    pub clock: Clock,
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
pub fn parse_deadline(text: &str, now: Timestamp) -> Result<Timestamp, String> {
    if let Ok(t) = text.parse::<Timestamp>() {
        return Ok(t);
    }
    let d = humantime::parse_duration(text).map_err(|_| {
        format!(
            "{text:?} is neither a duration (\"6h\") nor a timestamp (\"2026-11-26T06:00:00Z\")"
        )
    })?;
    let d = jiff::SignedDuration::try_from(d).map_err(|e| e.to_string())?;
    now.checked_add(d).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn daily(days: &[&str], start: &str, end: &str, tz: &str) -> Window {
        Window {
            spec: WindowSpec::Daily {
                days: parse_days(&days.iter().map(|d| d.to_string()).collect::<Vec<_>>()).unwrap(),
                start: parse_time(start).unwrap(),
                end: parse_time(end).unwrap(),
            },
            tz: parse_timezone(tz).unwrap(),
            tz_name: tz.into(),
            outside: OutsideWindow::Wait,
        }
    }

    #[test]
    fn a_daily_window_is_open_between_start_and_end_on_its_days_in_its_zone() {
        // 2026-11-25 is a Wednesday. Berlin is UTC+1 in November.
        let w = daily(&["mon-fri"], "01:00", "05:00", "Europe/Berlin");
        assert!(w.is_open(at("2026-11-25T00:00:00Z"))); // 01:00 Berlin
        assert!(w.is_open(at("2026-11-25T03:59:00Z"))); // 04:59
        assert!(!w.is_open(at("2026-11-25T04:00:00Z"))); // 05:00: closed
        assert!(!w.is_open(at("2026-11-24T23:59:00Z"))); // 00:59
        assert!(!w.is_open(at("2026-11-28T01:00:00Z"))); // Saturday
        assert_eq!(
            w.next_open(at("2026-11-25T04:00:00Z")),
            Some(at("2026-11-26T00:00:00Z"))
        );
        // Friday after the window: next is Monday.
        assert_eq!(
            w.next_open(at("2026-11-27T10:17:30Z")),
            Some(at("2026-11-30T00:00:00Z"))
        );
    }

    #[test]
    fn an_overnight_window_belongs_to_the_day_it_starts() {
        let w = daily(&["fri"], "22:00", "04:00", "UTC");
        assert!(w.is_open(at("2026-11-27T22:30:00Z"))); // Friday night
        assert!(w.is_open(at("2026-11-28T03:00:00Z"))); // Saturday morning, Friday's window
        assert!(!w.is_open(at("2026-11-28T22:30:00Z"))); // Saturday night
        assert!(!w.is_open(at("2026-11-27T03:00:00Z"))); // Friday morning: Thursday's, not listed
    }

    #[test]
    fn daylight_saving_shifts_the_window_with_local_time() {
        // Berlin switches to summer time on 2026-03-29 at 02:00 local.
        let w = daily(&["sun"], "01:00", "05:00", "Europe/Berlin");
        assert!(w.is_open(at("2026-03-29T00:30:00Z"))); // 01:30 CET
        assert!(w.is_open(at("2026-03-29T02:30:00Z"))); // 04:30 CEST
        assert!(!w.is_open(at("2026-03-29T03:00:00Z"))); // 05:00 CEST
    }

    #[test]
    fn a_cron_window_is_open_for_its_duration_after_each_match() {
        let w = Window {
            spec: WindowSpec::Cron {
                cron: Cron::parse("30 1 * * MON-FRI").unwrap(),
                duration: Duration::from_secs(2 * 3600),
            },
            tz: TimeZone::UTC,
            tz_name: "UTC".into(),
            outside: OutsideWindow::Exit,
        };
        assert!(!w.is_open(at("2026-11-25T01:29:00Z")));
        assert!(w.is_open(at("2026-11-25T01:30:00Z")));
        assert!(w.is_open(at("2026-11-25T03:29:59Z")));
        assert!(!w.is_open(at("2026-11-25T03:30:00Z")));
        assert!(!w.is_open(at("2026-11-28T01:45:00Z"))); // Saturday
        assert_eq!(
            w.next_open(at("2026-11-27T12:00:00Z")),
            Some(at("2026-11-30T01:30:00Z"))
        );
    }

    #[test]
    fn cron_fields_take_lists_ranges_steps_and_names() {
        let c = Cron::parse("*/15 22-23,0 1,15 jan-mar,dec sun").unwrap();
        let dt = |s: &str| s.parse::<DateTime>().unwrap();
        assert!(c.matches(dt("2026-12-01T22:45:00"))); // day 1 (dom matches)
        assert!(c.matches(dt("2026-12-06T00:00:00"))); // a Sunday (dow matches)
        assert!(!c.matches(dt("2026-12-02T22:45:00"))); // Wednesday the 2nd
        assert!(!c.matches(dt("2026-11-01T22:45:00"))); // November
        assert!(!c.matches(dt("2026-12-01T22:50:00"))); // not a quarter hour
        assert!(
            Cron::parse("0 7 * * 7")
                .unwrap()
                .matches(dt("2026-11-29T07:00:00"))
        );
        for (bad, why) in [
            ("0 1 * *", "needs 5"),
            ("61 1 * * *", "minute field"),
            ("0 1 * * mon-xyz", "day-of-week field"),
            ("0 5-1 * * *", "backwards"),
            ("*/0 1 * * *", "step"),
        ] {
            let e = Cron::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn days_times_zones_and_deadlines_reject_bad_input() {
        assert!(parse_days(&["funday".into()]).is_err());
        assert_eq!(
            parse_days(&["sat-mon".into()]).unwrap(),
            [true, false, false, false, false, true, true]
        );
        assert!(parse_time("25:00").is_err() && parse_time("1am").is_err());
        assert!(parse_timezone("Mars/Olympus").is_err());
        let now = at("2026-11-25T01:00:00Z");
        assert_eq!(
            parse_deadline("6h", now).unwrap(),
            at("2026-11-25T07:00:00Z")
        );
        assert_eq!(
            parse_deadline("2026-11-26T06:00:00Z", now).unwrap(),
            at("2026-11-26T06:00:00Z")
        );
        assert!(parse_deadline("soon", now).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn the_watch_follows_the_injected_clock_through_close_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("clock");
        std::fs::write(&file, "2026-11-25T01:00:00Z").unwrap();
        let scheduler = Scheduler {
            window: Some(daily(&["mon-fri"], "01:00", "05:00", "UTC")),
            deadline: Some(at("2026-11-27T00:00:00Z")),
            clock: Clock::File(file.clone()),
        };
        let mut rx = scheduler.watch(Duration::from_secs(1));
        assert_eq!(*rx.borrow_and_update(), Schedule::Open);
        std::fs::write(&file, "2026-11-25T05:00:00Z").unwrap();
        rx.changed().await.unwrap();
        assert_eq!(
            *rx.borrow_and_update(),
            Schedule::Closed {
                reopens_at: Some(at("2026-11-26T01:00:00Z"))
            }
        );
        std::fs::write(&file, "2026-11-26T01:00:00Z").unwrap();
        rx.changed().await.unwrap();
        assert_eq!(*rx.borrow_and_update(), Schedule::Open);
        std::fs::write(&file, "2026-11-27T02:00:00Z").unwrap();
        rx.changed().await.unwrap();
        assert!(matches!(
            *rx.borrow_and_update(),
            Schedule::DeadlinePassed { .. }
        ));
    }

    #[test]
    fn the_deadline_wins_over_the_window() {
        let s = Scheduler {
            window: Some(daily(&["mon-sun"], "01:00", "05:00", "UTC")),
            deadline: Some(at("2026-11-25T02:00:00Z")),
            clock: Clock::System,
        };
        assert_eq!(s.state_at(at("2026-11-25T01:30:00Z")), Schedule::Open);
        assert_eq!(
            s.state_at(at("2026-11-25T00:30:00Z")),
            Schedule::Closed {
                reopens_at: Some(at("2026-11-25T01:00:00Z"))
            }
        );
        assert!(matches!(
            s.state_at(at("2026-11-25T02:00:00Z")),
            Schedule::DeadlinePassed { .. }
        ));
    }
}
