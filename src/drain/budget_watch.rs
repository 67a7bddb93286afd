//! PodDisruptionBudget-aware retries: an eviction a budget refused is tried again as soon as the
//! budget's status allows a disruption again, not only after the fixed 5 s retry (which stays
//! as the bound when the watch says nothing: a lost watch, a budget the refusal did not name).
//!
//! One watch per budget a drain was refused by (a field selector on its name), shared by every
//! pod of the drain waiting on it; the watches end with the drain. A refused eviction waits for
//! a status *newer* than the one it was refused under that allows a disruption: a watch that
//! lags behind the apiserver cannot make the retry spin.

use futures::StreamExt;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the watch last saw of one budget: its resource version and `disruptionsAllowed`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen {
    pub version: Option<String>,
    pub allowed: i32,
}

/// Whether a status seen after a refusal (under `refused_under`) lets the eviction try again.
pub fn allows_retry(refused_under: &Seen, now: &Seen) -> bool {
    now.version.is_some() && now.version != refused_under.version && now.allowed > 0
}

/// How a wait for a budget ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woken {
    /// The budget allows a disruption again.
    ByBudget,
    /// The fallback bound passed first.
    ByTimer,
}

/// One budget's watch: what it has seen, and the task keeping it.
type BudgetWatch = (watch::Receiver<Seen>, JoinHandle<()>);

/// The budget watches of one drain, by (namespace, name); they stop when it is dropped.
pub struct BudgetWatches {
    client: kube::Client,
    watches: Mutex<HashMap<(String, String), BudgetWatch>>,
}

impl Drop for BudgetWatches {
    fn drop(&mut self) {
        for (_, (_, task)) in self.watches.lock().expect("lock").drain() {
            task.abort();
        }
    }
}

impl BudgetWatches {
    pub fn new(client: kube::Client) -> Self {
        Self {
            client,
            watches: Mutex::default(),
        }
    }

    /// The watch of budget `ns/name`, started on first use.
    fn receiver(&self, ns: &str, name: &str) -> watch::Receiver<Seen> {
        let mut watches = self.watches.lock().expect("lock");
        let key = (ns.to_owned(), name.to_owned());
        if let Some((rx, _)) = watches.get(&key) {
            return rx.clone();
        }
        let (tx, rx) = watch::channel(Seen::default());
        let api: Api<PodDisruptionBudget> = Api::namespaced(self.client.clone(), ns);
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let task = tokio::spawn(async move {
            // Backoff on errors (a role without `watch`, an outage): never a hot loop.
            let mut stream = watcher(api, config).default_backoff().boxed();
            while let Some(event) = stream.next().await {
                let pdb = match event {
                    Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => p,
                    // Errors: the watcher retries with backoff; the fixed retry bounds the wait.
                    _ => continue,
                };
                let seen = Seen {
                    version: pdb.metadata.resource_version.clone(),
                    allowed: pdb
                        .status
                        .as_ref()
                        .and_then(|s| s.disruptions_allowed)
                        .unwrap_or(0),
                };
                if tx.send(seen).is_err() {
                    return;
                }
            }
        });
        watches.insert(key, (rx.clone(), task));
        rx
    }

    /// What the watch of `ns/name` has seen so far (call it when the eviction is refused).
    pub fn seen(&self, ns: &str, name: &str) -> Seen {
        self.receiver(ns, name).borrow().clone()
    }

    /// Waits until budget `ns/name` allows a disruption under a status newer than
    /// `refused_under`, or `bound` passes.
    pub async fn wait(&self, ns: &str, name: &str, refused_under: &Seen, bound: Duration) -> Woken {
        let mut rx = self.receiver(ns, name);
        let allowed = rx.wait_for(|now| allows_retry(refused_under, now));
        match tokio::time::timeout(bound, allowed).await {
            Ok(Ok(_)) => Woken::ByBudget,
            _ => Woken::ByTimer,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(version: &str, allowed: i32) -> Seen {
        Seen {
            version: Some(version.into()),
            allowed,
        }
    }

    #[test]
    fn only_a_newer_status_that_allows_a_disruption_wakes_a_refused_eviction() {
        // Refused while the watch had seen nothing yet: the first status that allows one.
        assert!(allows_retry(&Seen::default(), &seen("5", 1)));
        assert!(!allows_retry(&Seen::default(), &Seen::default()));
        // A lagging watch showed "allowed" when the apiserver refused: not that status again.
        assert!(!allows_retry(&seen("5", 1), &seen("5", 1)));
        // The refusal's own decrement (allowed 0), then the replacement Ready (allowed 1).
        assert!(!allows_retry(&seen("5", 1), &seen("6", 0)));
        assert!(allows_retry(&seen("5", 1), &seen("7", 1)));
        assert!(allows_retry(&seen("5", 0), &seen("6", 2)));
    }
}
