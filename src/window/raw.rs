//! The `[window]` table as written (in a playbook or the config) and its validation.

use super::{Cron, OutsideWindow, Window, WindowSpec, parse_days, parse_time, parse_timezone};
use jiff::tz::TimeZone;
use std::time::Duration;

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
    finish_by_end: Option<bool>,
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
                    e.to_string(),
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
                        e.to_string(),
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
                            e.to_string(),
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
                            e.to_string(),
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
                finish_by_end: self.finish_by_end.unwrap_or(false),
            }),
            _ => Err(errors),
        }
    }
}
