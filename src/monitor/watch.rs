//! Watches that know when they are blind, and what a blind watch means for a signal.
//!
//! Each watch (the pods of a namespace, the nodes) feeds its events to the monitor's table (see
//! [`super::table`]) and records whether it sees the cluster now ([`WatchState`]). Any error — a watch that broke, a list or watch
//! refused (a revoked permission), the API unreachable — starts that watch over from a fresh
//! list after a backoff (0.5 s doubling to 5 s); it sees again once that list is complete and
//! the watch after it has run for 2 s without error.
//! Each watch call is renewed, and so re-authorised, at least every [`RENEW_EVERY_SECS`]: the
//! renewal is a new watch call from the last resourceVersion seen (bookmarks keep it recent), not
//! a list, so a steady watch costs the API server one watch request per minute per watch and no
//! list; a revoked permission refuses that watch call (403), which is an error as above.
//!
//! [`Sight`] is the pure rule for one signal (pods, nodes): while a watch it depends on has been
//! lost for less than `monitor.blind-after` (default [`DEFAULT_BLIND_AFTER`]) it is judged on
//! what was last seen; past that, every evaluation reports it inconclusive (so its gate's
//! `consecutive-errors` and `on-inconclusive`, default pause, apply) until a gate decides, and
//! again after the operator resumes; once the watch is back it is judged on the fresh list.

use crate::vocab::{EventSink, RunEvent};
use futures::StreamExt;
use kube::Resource;
use kube::api::Api;
use kube::runtime::watcher;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// The default of `monitor.blind-after`: how long a watch may stay lost before the signals that
/// depend on it turn inconclusive.
pub use crate::playbook::DEFAULT_BLIND_AFTER;

/// The server-side timeout of each watch call: a watch is renewed (and its permission checked
/// again) at least this often, so a revoked permission is noticed within it.
pub const RENEW_EVERY_SECS: u32 = 60;

const BACKOFF_FIRST: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long the watch after a fresh list must run without error before the watch sees again.
const CONFIRM_AFTER: Duration = Duration::from_secs(2);

/// Since when a watch has been lost, and the last error.
#[derive(Debug, Clone)]
pub struct Lost {
    pub since: Instant,
    pub error: String,
}

/// Whether one watch sees the cluster now. It starts lost (nothing listed yet).
#[derive(Debug)]
pub struct WatchState {
    /// What it watches, for messages: `pods in namespace web`, `nodes`.
    pub name: String,
    lost: Mutex<Option<Lost>>,
    /// A `watch-lost` event was emitted for the current outage.
    announced: Mutex<bool>,
}

impl WatchState {
    pub fn new(name: String) -> Arc<Self> {
        Arc::new(Self {
            name,
            lost: Mutex::new(Some(Lost {
                since: Instant::now(),
                error: "not listed yet".into(),
            })),
            announced: Mutex::new(false),
        })
    }

    pub fn lost(&self) -> Option<Lost> {
        self.lost.lock().expect("lock").clone()
    }

    /// Records an error; returns true for the first error of an outage (to announce it).
    fn fail(&self, error: String) -> bool {
        let mut lost = self.lost.lock().expect("lock");
        let since = lost.as_ref().map_or_else(Instant::now, |l| l.since);
        *lost = Some(Lost { since, error });
        !std::mem::replace(&mut *self.announced.lock().expect("lock"), true)
    }

    /// The watch sees again; returns how long it was lost if the outage was announced.
    fn listed(&self) -> Option<Duration> {
        let lost = self.lost.lock().expect("lock").take();
        let announced = std::mem::replace(&mut *self.announced.lock().expect("lock"), false);
        lost.filter(|_| announced).map(|l| l.since.elapsed())
    }
}

/// Runs a watch for as long as the task lives, handing each event to `apply`, recording its
/// state in `state` and emitting `watch-lost` / `watch-restored` events once per outage.
pub fn spawn<K>(
    api: Api<K>,
    mut apply: impl FnMut(watcher::Event<K>) + Send + 'static,
    state: Arc<WatchState>,
    sink: EventSink,
) -> JoinHandle<()>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    tokio::spawn(async move {
        let mut delay = BACKOFF_FIRST;
        loop {
            let config = watcher::Config::default().timeout(RENEW_EVERY_SECS);
            let mut stream = std::pin::pin!(watcher(api.clone(), config));
            // A complete list counts once the watch that follows it has started without error
            // (a list may be allowed while the watch is not).
            let mut confirm_at: Option<tokio::time::Instant> = None;
            let error = loop {
                let next = tokio::select! {
                    next = stream.next() => next,
                    _ = tokio::time::sleep_until(confirm_at.unwrap_or_else(tokio::time::Instant::now)), if confirm_at.is_some() => {
                        confirm_at = None;
                        delay = BACKOFF_FIRST;
                        if let Some(lost) = state.listed() {
                            sink.emit(RunEvent::WatchRestored {
                                watch: state.name.clone(),
                                lost_ms: lost.as_millis() as u64,
                            });
                        }
                        continue;
                    }
                };
                match next {
                    Some(Ok(event)) => {
                        if matches!(event, watcher::Event::InitDone) {
                            confirm_at = Some(tokio::time::Instant::now() + CONFIRM_AFTER);
                        }
                        apply(event);
                    }
                    Some(Err(e)) => break e.to_string(),
                    None => break "the watch stream ended".to_owned(),
                }
            };
            if state.fail(error.clone()) {
                sink.emit(RunEvent::WatchLost {
                    watch: state.name.clone(),
                    error,
                });
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(BACKOFF_MAX);
        }
    })
}

/// What the monitor does about a signal at one evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Judge it on the stores; `restored`: its watches just came back with a fresh list after it
    /// was blind (report a pass, so earlier inconclusive results stop counting).
    Evaluate { restored: bool },
    /// Blind: report this inconclusive result.
    Inconclusive(String),
    /// Blind, and a gate already decided on it: report nothing more until the run is resumed.
    Hold,
}

/// One signal's sight (pure): fed, at each evaluation, with the longest-lost of its watches.
#[derive(Debug, Default)]
pub struct Sight {
    blind: bool,
    /// The run's resume count when a gate decided on this blindness.
    decided_at: Option<u64>,
}

impl Sight {
    /// `lost`: (watch name, lost for, last error) of the watch lost longest, None if all see.
    /// `resumes`: how often the run was resumed so far (a resume re-arms a held signal).
    pub fn step(
        &mut self,
        lost: Option<(&str, Duration, &str)>,
        blind_after: Duration,
        resumes: u64,
    ) -> Action {
        match lost {
            Some((watch, for_, error)) if for_ >= blind_after => {
                self.blind = true;
                if self.decided_at == Some(resumes) {
                    return Action::Hold;
                }
                self.decided_at = None;
                Action::Inconclusive(format!(
                    "the monitor cannot see: watching {watch} failed for {}s (limit monitor.blind-after = {}s): {error}",
                    for_.as_secs(),
                    blind_after.as_secs()
                ))
            }
            Some(_) if self.blind => Action::Hold,
            _ => {
                self.decided_at = None;
                Action::Evaluate {
                    restored: std::mem::take(&mut self.blind),
                }
            }
        }
    }

    /// A gate decided on the last inconclusive result.
    pub fn decided(&mut self, resumes: u64) {
        self.decided_at = Some(resumes);
    }
}

/// The longest-lost of `watches` now, for [`Sight::step`].
pub fn longest_lost(watches: &[Arc<WatchState>]) -> Option<(String, Duration, String)> {
    watches
        .iter()
        .filter_map(|w| {
            w.lost()
                .map(|l| (w.name.clone(), l.since.elapsed(), l.error))
        })
        .max_by_key(|(_, for_, _)| *for_)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUND: Duration = Duration::from_secs(30);

    type Lost = Option<(&'static str, Duration, &'static str)>;

    fn lost(secs: u64) -> Lost {
        Some(("nodes", Duration::from_secs(secs), "403 forbidden"))
    }

    #[test]
    fn a_signal_is_judged_on_what_it_saw_until_the_bound_then_inconclusive_until_a_fresh_list() {
        let mut s = Sight::default();
        let steps: Vec<(Lost, u64, &str)> = vec![
            (None, 0, "evaluate"),
            (lost(1), 0, "evaluate"),
            (lost(29), 0, "evaluate"),
            (lost(30), 0, "inconclusive"),
            (lost(31), 0, "inconclusive"),
            (None, 0, "restored"),
            (None, 0, "evaluate"),
        ];
        for (i, (l, resumes, want)) in steps.into_iter().enumerate() {
            let got = match s.step(l, BOUND, resumes) {
                Action::Evaluate { restored: false } => "evaluate",
                Action::Evaluate { restored: true } => "restored",
                Action::Inconclusive(why) => {
                    assert!(
                        why.contains("nodes")
                            && why.contains("403 forbidden")
                            && why.contains("blind-after"),
                        "{why}"
                    );
                    "inconclusive"
                }
                Action::Hold => "hold",
            };
            assert_eq!(got, want, "step {i}");
        }
    }

    #[test]
    fn once_a_gate_decided_the_signal_holds_until_the_run_is_resumed_or_the_watch_is_back() {
        let mut s = Sight::default();
        assert!(matches!(
            s.step(lost(30), BOUND, 0),
            Action::Inconclusive(_)
        ));
        s.decided(0);
        assert_eq!(s.step(lost(31), BOUND, 0), Action::Hold);
        // The operator resumes while it is still blind: inconclusive again (the gate decides again).
        assert!(matches!(
            s.step(lost(40), BOUND, 1),
            Action::Inconclusive(_)
        ));
        s.decided(1);
        assert_eq!(s.step(lost(41), BOUND, 1), Action::Hold);
        // Lost again soon after coming back: still blind, waiting for a complete list.
        assert_eq!(s.step(lost(1), BOUND, 1), Action::Hold);
        assert_eq!(s.step(None, BOUND, 1), Action::Evaluate { restored: true });
        // A later outage is a new one.
        assert!(matches!(
            s.step(lost(30), BOUND, 1),
            Action::Inconclusive(_)
        ));
    }
}
