use super::*;
use jiff::civil::DateTime;

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
        finish_by_end: false,
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
        finish_by_end: false,
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
        assert!(e.to_string().contains(why), "{bad}: {e}");
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
        node_estimate: None,
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
        node_estimate: None,
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

#[test]
fn parse_errors_read_as_before_they_were_typed() {
    let now = at("2026-11-26T00:00:00Z");
    let cases: Vec<(String, &str)> = vec![
        (
            parse_days(&["mon-funday".into()]).unwrap_err().to_string(),
            "\"mon-funday\" is not a day or a range of days",
        ),
        (
            parse_time("25:00").unwrap_err().to_string(),
            "\"25:00\" is not a time of day",
        ),
        (
            parse_time("1am").unwrap_err().to_string(),
            "\"1am\" is not a time of day",
        ),
        (
            Cron::parse("0 1 * *").unwrap_err().to_string(),
            "\"0 1 * *\" has 4 fields; cron needs 5: minute hour day-of-month month day-of-week",
        ),
        (
            Cron::parse("61 1 * * *").unwrap_err().to_string(),
            "minute field: \"61\" is not between 0 and 59",
        ),
        (
            Cron::parse("*/0 1 * * *").unwrap_err().to_string(),
            "minute field: \"0\" is not a step",
        ),
        (
            Cron::parse("0 5-1 * * *").unwrap_err().to_string(),
            "hour field: range \"5-1\" runs backwards",
        ),
        (
            parse_deadline("soon", now).unwrap_err().to_string(),
            "\"soon\" is neither a duration (\"6h\") nor a timestamp (\"2026-11-26T06:00:00Z\")",
        ),
    ];
    for (got, want) in cases {
        assert_eq!(got, want);
    }
    let zone = parse_timezone("Mars/Olympus").unwrap_err().to_string();
    assert!(
        zone.starts_with("unknown time zone \"Mars/Olympus\": "),
        "{zone}"
    );
}

fn estimate(minutes: u64) -> NodeEstimate {
    NodeEstimate {
        p95: Duration::from_secs(minutes * 60),
        from_runs: 1,
    }
}

#[test]
fn a_window_closes_at_its_end_whatever_its_form() {
    let w = daily(&["mon-fri"], "01:00", "05:00", "Europe/Berlin");
    assert_eq!(
        w.closes_at(at("2026-11-25T03:52:30Z")),
        Some(at("2026-11-25T04:00:00Z"))
    );
    assert_eq!(w.closes_at(at("2026-11-25T04:00:00Z")), None, "closed");
    let overnight = daily(&["fri"], "22:00", "04:00", "UTC");
    assert_eq!(
        overnight.closes_at(at("2026-11-27T22:30:00Z")),
        Some(at("2026-11-28T04:00:00Z"))
    );
    assert_eq!(
        overnight.closes_at(at("2026-11-28T03:00:00Z")),
        Some(at("2026-11-28T04:00:00Z"))
    );
    let cron = |text: &str, minutes: u64| Window {
        spec: WindowSpec::Cron {
            cron: Cron::parse(text).unwrap(),
            duration: Duration::from_secs(minutes * 60),
        },
        tz: TimeZone::UTC,
        tz_name: "UTC".into(),
        outside: OutsideWindow::Wait,
        finish_by_end: true,
    };
    assert_eq!(
        cron("30 1 * * *", 120).closes_at(at("2026-11-25T02:10:20Z")),
        Some(at("2026-11-25T03:30:00Z"))
    );
    // Openings every hour for 90 minutes overlap: one long opening until the last one ends.
    assert_eq!(
        cron("0 1-3 * * *", 90).closes_at(at("2026-11-25T01:10:00Z")),
        Some(at("2026-11-25T04:30:00Z"))
    );
    // Always open: it never closes.
    assert_eq!(
        cron("* * * * *", 10).closes_at(at("2026-11-25T01:10:00Z")),
        None
    );
}

#[test]
fn finish_by_end_holds_a_node_whose_p95_passes_the_close() {
    let w = daily(&["mon-fri"], "01:00", "05:00", "UTC");
    // 8 minutes left: a 12-minute node does not start, a 5-minute one does.
    let now = at("2026-11-25T04:52:00Z");
    let held = too_late(&w, now, estimate(12)).expect("too late");
    assert_eq!(held.closes_at, at("2026-11-25T05:00:00Z"));
    assert_eq!(held.closes_in, Duration::from_secs(8 * 60));
    assert_eq!(held.needs, estimate(12));
    assert_eq!(held.reopens_at, Some(at("2026-11-26T01:00:00Z")));
    assert_eq!(too_late(&w, now, estimate(5)), None);
    // Exactly enough is enough.
    assert_eq!(too_late(&w, now, estimate(8)), None);
    // A closed window is the window's own rule, not finish-by-end.
    assert_eq!(too_late(&w, at("2026-11-25T06:00:00Z"), estimate(12)), None);
}

#[test]
fn the_scheduler_applies_finish_by_end_only_when_the_window_asks_for_it() {
    let mut window = daily(&["mon-fri"], "01:00", "05:00", "UTC");
    let mut s = Scheduler {
        window: Some(window.clone()),
        deadline: None,
        clock: Clock::System,
        node_estimate: Some(estimate(12)),
    };
    let late = at("2026-11-25T04:52:00Z");
    assert_eq!(s.state_at(late), Schedule::Open, "finish-by-end is off");
    window.finish_by_end = true;
    s.window = Some(window);
    assert!(
        matches!(s.state_at(late), Schedule::TooLate(t) if t.closes_in == Duration::from_secs(480)),
        "{:?}",
        s.state_at(late)
    );
    assert_eq!(s.state_at(at("2026-11-25T04:40:00Z")), Schedule::Open);
    assert!(matches!(
        s.state_at(at("2026-11-25T05:10:00Z")),
        Schedule::Closed { .. }
    ));
    s.node_estimate = None;
    assert_eq!(s.state_at(late), Schedule::Open, "no estimate, no hold");
}

#[test]
fn finish_by_end_is_read_from_the_window_table() {
    let text = "days = [\"mon-fri\"]\nstart = \"01:00\"\nend = \"05:00\"\nfinish-by-end = true\n";
    let raw: RawWindow = toml::from_str(text).unwrap();
    assert!(raw.validate(0..text.len()).unwrap().finish_by_end);
    let text = "start = \"01:00\"\nend = \"05:00\"\n";
    let raw: RawWindow = toml::from_str(text).unwrap();
    assert!(
        !raw.validate(0..text.len()).unwrap().finish_by_end,
        "off by default"
    );
}
