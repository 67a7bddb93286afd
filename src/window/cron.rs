//! Five-field cron expressions for `[window] cron`.

use super::{CronFieldError, ParseError};
use jiff::civil::DateTime;

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
    pub fn parse(text: &str) -> Result<Cron, ParseError> {
        let fields: Vec<&str> = text.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(ParseError::CronFields {
                text: text.to_owned(),
                count: fields.len(),
            });
        }
        let field = |i: usize, name: &'static str, min: u32, max: u32, names: &[&str]| {
            parse_field(fields[i], min, max, names).map_err(|problem| ParseError::CronField {
                field: name,
                problem,
            })
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

fn parse_field(text: &str, min: u32, max: u32, names: &[&str]) -> Result<u64, CronFieldError> {
    let value = |s: &str| -> Result<u32, CronFieldError> {
        let lower = s.to_ascii_lowercase();
        if let Some(i) = names.iter().position(|n| *n == lower) {
            // Month names count from 1, day names from 0.
            return Ok(i as u32 + min);
        }
        s.parse::<u32>()
            .ok()
            .filter(|v| (min..=max).contains(v))
            .ok_or_else(|| CronFieldError::OutOfRange {
                value: s.to_owned(),
                min,
                max,
            })
    };
    let mut set = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (
                r,
                s.parse::<u32>()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| CronFieldError::Step(s.to_owned()))?,
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
            return Err(CronFieldError::Backwards(range.to_owned()));
        }
        for v in (from..=to).step_by(step as usize) {
            set |= 1 << v;
        }
    }
    Ok(set)
}
