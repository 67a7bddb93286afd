//! `[window] finish-by-end` in the forecast: whether a node (by its p95) fits what is left of
//! the window when the run can start, and whether any window is long enough for one.

use super::{Check, Finding, Forecast, NextWindow, Severity, human};

impl Forecast {
    /// `finish-by-end`: whether the first node fits in what is left of the window (by its p95),
    /// and whether any window is long enough for one node at all.
    pub(super) fn finish_by_end_findings(
        &self,
        outside: Option<crate::window::OutsideWindow>,
    ) -> Vec<Finding> {
        let (true, Some(open)) = (self.finish_by_end, self.window_open_secs) else {
            return vec![];
        };
        let needs = self.per_node_p95_secs;
        let source = if self.history_runs == 0 {
            "default step times".to_owned()
        } else {
            format!("from {} earlier run(s)", self.history_runs)
        };
        let finding = |severity, message: String, fix: &str| {
            Finding::new(Check::Eta, severity, message).fix(fix)
        };
        if needs <= open as f64 {
            return vec![finding(
                Severity::Info,
                format!(
                    "finish-by-end: a node needs {} (p95, {source}); the window has {} left, so nodes start until {} before it closes",
                    human(needs),
                    human(open as f64),
                    human(needs)
                ),
                "",
            )];
        }
        let next_fits = self
            .next_window
            .as_ref()
            .filter(|next| needs <= next.open_secs as f64);
        let Some(NextWindow { opens_at, .. }) = next_fits else {
            return vec![finding(
                Severity::Blocker,
                format!(
                    "finish-by-end: a node needs {} (p95, {source}), longer than this window ({} left) and the next one{}: no node would ever start",
                    human(needs),
                    human(open as f64),
                    self.next_window
                        .as_ref()
                        .map(|next| format!(" ({})", human(next.open_secs as f64)))
                        .unwrap_or_default()
                ),
                "widen the window, or set finish-by-end = false (nodes may then be in flight when it closes)",
            )];
        };
        let (severity, consequence) = match outside {
            Some(crate::window::OutsideWindow::Exit) => (
                Severity::Blocker,
                "the run stops at once (outside = \"exit\"); `rollgate resume` in the next window",
            ),
            _ => (
                Severity::Warning,
                "the run waits, holding the lock, for the next window",
            ),
        };
        vec![finding(
            severity,
            format!(
                "finish-by-end: a node needs {} (p95, {source}) but the window closes in {}: no node starts now; {consequence}, which opens {opens_at}",
                human(needs),
                human(open as f64)
            ),
            "start in the next window, or --ignore-preflight eta",
        )]
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::plan;
    use super::super::*;
    use std::time::Duration;

    #[test]
    fn finish_by_end_verdicts_say_whether_a_node_fits_what_is_left_of_the_window() {
        use crate::window::{OutsideWindow, Window};
        let raw: crate::window::RawWindow = toml::from_str(
            "days = [\"mon-fri\"]\nstart = \"01:00\"\nend = \"05:00\"\nfinish-by-end = true\n",
        )
        .unwrap();
        let window: Window = raw.validate(0..0).unwrap();
        // One node: 60 s of command at p95 from history, the other steps' defaults.
        let samples = [(Step::Command, 30.0), (Step::Command, 60.0)];
        let f = Forecast::new(step_times(samples, Duration::ZERO), 1, &plan(1, 1));
        let needs = f.per_node_p95_secs;
        assert_eq!(needs, 60.0 + 2.0 * (1.0 + 60.0 + 60.0 + 1.0 + 10.0));
        let at = |t: &str| t.parse::<Timestamp>().unwrap();
        let eta = |now: &str, outside| {
            let f = f.clone().scheduled(at(now), Some(&window), None);
            f.findings(Some(outside))
        };
        // 10 minutes left: fits (324 s), said as info.
        let fits = eta("2026-11-25T04:50:00Z", OutsideWindow::Wait);
        assert_eq!(fits.len(), 1, "{fits:?}");
        assert_eq!(fits[0].severity, Severity::Info);
        assert!(
            fits[0].message.contains(
                "a node needs 5m24s (p95, from 1 earlier run(s)); the window has 10m00s left"
            ),
            "{fits:?}"
        );
        // 2 minutes left: no node starts now; the run waits (warning) or stops (blocker).
        let wait = eta("2026-11-25T04:58:00Z", OutsideWindow::Wait);
        let late = wait
            .iter()
            .find(|f| f.message.starts_with("finish-by-end"))
            .unwrap();
        assert_eq!(late.severity, Severity::Warning);
        assert!(
            late.message
                .contains("the window closes in 2m00s: no node starts now")
                && late.message.contains("opens 2026-11-26T01:00:00Z"),
            "{late:?}"
        );
        let exit = eta("2026-11-25T04:58:00Z", OutsideWindow::Exit);
        assert!(
            exit.iter()
                .any(|f| f.message.starts_with("finish-by-end") && f.severity == Severity::Blocker),
            "{exit:?}"
        );
        // A node longer than any window never starts.
        let slow = Forecast::new(
            step_times([(Step::Command, 5.0 * 3600.0)], Duration::ZERO),
            1,
            &plan(1, 1),
        )
        .scheduled(at("2026-11-25T01:00:00Z"), Some(&window), None);
        let never = slow.findings(Some(OutsideWindow::Wait));
        assert!(
            never.iter().any(|f| f.severity == Severity::Blocker
                && f.message.contains("no node would ever start")),
            "{never:?}"
        );
        assert!(
            slow.render()
                .contains("finish-by-end: a node starts only while its p95")
        );
    }
}
