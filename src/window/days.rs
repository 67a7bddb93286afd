//! Day names and ranges, times of day and time zones, as a `[window]` table writes them.

use super::ParseError;
use jiff::civil::{Time, Weekday};
use jiff::tz::TimeZone;

pub(super) const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

pub(super) fn weekday_index(d: Weekday) -> usize {
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
pub fn parse_days(items: &[String]) -> Result<[bool; 7], ParseError> {
    let mut days = [false; 7];
    for item in items {
        let (from, to) = match item.split_once('-') {
            Some((a, b)) => (a, b),
            None => (item.as_str(), item.as_str()),
        };
        let (Some(a), Some(b)) = (day_index(from), day_index(to)) else {
            return Err(ParseError::Days(item.clone()));
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
pub fn parse_time(text: &str) -> Result<Time, ParseError> {
    let bad = || ParseError::Time(text.to_owned());
    let (h, m) = text.split_once(':').ok_or_else(bad)?;
    let h: i8 = h.parse().map_err(|_| bad())?;
    let m: i8 = m.parse().map_err(|_| bad())?;
    Time::new(h, m, 0, 0).map_err(|_| bad())
}

/// An IANA time zone name, or `local`.
pub fn parse_timezone(name: &str) -> Result<TimeZone, ParseError> {
    if name.eq_ignore_ascii_case("local") {
        return Ok(TimeZone::system());
    }
    TimeZone::get(name).map_err(|source| ParseError::TimeZone {
        name: name.to_owned(),
        source,
    })
}
