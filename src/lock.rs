//! One runner per cluster: a coordination.k8s.io Lease (`STATE_NAMESPACE/rollgate-lock-NAME`,
//! the namespace from `state.namespace`),
//! held and given up as client-go leader election does, so that it stays safe when the
//! runner is cut off from the apiserver or the machines' clocks disagree:
//!
//! - The holder renews it every [`Timing::retry`] (a sixth of the lease duration). If it has
//!   not renewed within its [`Timing::renew_deadline`] (two thirds of the duration), measured on
//!   its own monotonic clock from the start of its last successful renewal, the lock is lost
//!   ([`HeldLock::lost`]); also when another run took it (`--force-unlock`) or it was deleted.
//! - A contender never compares the lease's `renewTime` with its own clock to take it over. A
//!   lease that looks live (renewed within one duration of the contender's clock, either way)
//!   is refused at once with who holds it; one that looks expired is watched, and taken over
//!   only once it stayed unchanged (holder, renewTime...) for the whole duration on the
//!   contender's monotonic clock. If it changes meanwhile, its holder is alive (its clock may be
//!   off): refused. A released lease (no holder) is taken at once; `--force-unlock` takes it
//!   regardless (loudly).
//!
//! The third of the duration between the renew deadline and expiry covers the time the holder
//! takes to notice and clocks that run at slightly different rates. The holder writes its
//! `renewTime` strictly increasing, so each renewal is a visible change even if its clock stalls.

use futures::StreamExt;
use futures::stream::BoxStream;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Bound on each lease request of a contender and of the release.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// The lock's timing, all derived from the lease duration (client-go: LeaseDuration,
/// RenewDeadline, RetryPeriod; its defaults 15 s / 10 s / 2 s have the same proportions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How long a lease outlives its last change, on a contender's clock.
    pub lease: Duration,
    /// A holder that has not renewed for this long stops acting: two thirds of `lease`.
    pub renew_deadline: Duration,
    /// How often the holder renews (and how often a contender looks): a sixth of `lease`.
    pub retry: Duration,
}

impl Timing {
    pub fn for_lease(lease: Duration) -> Self {
        // The lease stores whole seconds: every runner derives its timing from the same value.
        let lease = Duration::from_secs(lease.as_secs().max(1));
        Self {
            lease,
            renew_deadline: lease * 2 / 3,
            retry: lease / 6,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The lease is held by a live runner.
    #[error(
        "another rollgate run holds the cluster lock {lease}: {holder}, since {since}, last renewed {renewed}{why}"
    )]
    Held {
        lease: String,
        holder: String,
        since: String,
        renewed: String,
        /// Empty, or why a lease that looked expired is live.
        why: String,
    },
    /// Reading or writing the lease failed.
    #[error("cannot take the cluster lock {lease}: {source}")]
    Api {
        lease: String,
        #[source]
        source: StoreError,
    },
}

/// A lease request that failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Someone else wrote the lease since it was read (resourceVersion precondition).
    #[error("the lease changed meanwhile")]
    Conflict,
    /// The apiserver did not answer in time.
    #[error("no answer from the apiserver within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Api(#[from] kube::Error),
}

/// The lease requests the lock makes: [`KubeLease`] for real, a fake in unit tests.
pub trait LeaseStore: Send + Sync + 'static {
    fn get(&self) -> impl Future<Output = Result<Option<Lease>, StoreError>> + Send;
    fn create(&self, lease: Lease) -> impl Future<Output = Result<Lease, StoreError>> + Send;
    /// Replaces the lease; its resourceVersion must still be current ([`StoreError::Conflict`]).
    fn replace(&self, lease: Lease) -> impl Future<Output = Result<Lease, StoreError>> + Send;
    /// The lease as it changes, so a takeover is noticed at once (renewals remain the truth).
    fn changes(&self) -> BoxStream<'static, Lease>;
}

/// The Lease `NAMESPACE/rollgate-lock-NAME` in the cluster.
pub struct KubeLease {
    api: Api<Lease>,
    name: String,
}

impl KubeLease {
    pub fn new(client: kube::Client, namespace: &str, lock_name: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: format!("rollgate-lock-{lock_name}"),
        }
    }
}

fn store_error(e: kube::Error) -> StoreError {
    match e {
        kube::Error::Api(s) if s.code == 409 => StoreError::Conflict,
        e => StoreError::Api(e),
    }
}

impl LeaseStore for KubeLease {
    async fn get(&self) -> Result<Option<Lease>, StoreError> {
        self.api.get_opt(&self.name).await.map_err(store_error)
    }
    async fn create(&self, lease: Lease) -> Result<Lease, StoreError> {
        self.api
            .create(&PostParams::default(), &lease)
            .await
            .map_err(store_error)
    }
    async fn replace(&self, lease: Lease) -> Result<Lease, StoreError> {
        self.api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
            .map_err(store_error)
    }
    fn changes(&self) -> BoxStream<'static, Lease> {
        use kube::runtime::{WatchStreamExt, watcher};
        watcher(
            self.api.clone(),
            watcher::Config::default().fields(&format!("metadata.name={}", self.name)),
        )
        .default_backoff()
        .applied_objects()
        .filter_map(|r| std::future::ready(r.ok()))
        .boxed()
    }
}

/// Why a held lock was lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockLost {
    /// No renewal succeeded within the renew deadline (apiserver unreachable, or too slow).
    NotRenewed {
        deadline: Duration,
        last_error: Option<String>,
    },
    /// Another run holds it now (`--force-unlock`, or it took over an expired lease).
    TakenBy(String),
    /// Someone deleted the lease.
    Deleted,
}

impl std::fmt::Display for LockLost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LockLost::NotRenewed {
                deadline,
                last_error,
            } => {
                write!(
                    f,
                    "not renewed within its renew deadline of {}",
                    humantime::format_duration(*deadline)
                )?;
                match last_error {
                    Some(e) => write!(f, " (last error: {e})"),
                    None => Ok(()),
                }
            }
            LockLost::TakenBy(h) => write!(f, "taken by another run: {h}"),
            LockLost::Deleted => f.write_str("the lease was deleted"),
        }
    }
}

/// What a contender saw of a lease, and since when on its monotonic clock.
#[derive(Debug, Clone)]
pub struct Observation {
    seen: LeaseSpec,
    since: Instant,
}

impl Observation {
    pub fn new(spec: &LeaseSpec, now: Instant) -> Self {
        Self {
            seen: spec.clone(),
            since: now,
        }
    }

    /// Whether the lease differs from what was seen (any field of its record).
    pub fn changed(&self, spec: &LeaseSpec) -> bool {
        self.seen != *spec
    }

    /// Time left until the lease, unchanged since it was first seen, has expired (zero: it has).
    pub fn remaining(&self, now: Instant, lease: Duration) -> Duration {
        (self.since + lease).saturating_duration_since(now)
    }
}

/// Whether `spec` was renewed within one lease duration of `now` on this machine's clock
/// (either way): a hint for refusing at once, never a reason to take over.
pub fn looks_live(spec: &LeaseSpec, now: jiff::Timestamp) -> bool {
    let Some(renewed) = &spec.renew_time else {
        return false;
    };
    let lease = jiff::SignedDuration::from_secs(spec.lease_duration_seconds.unwrap_or(0).into());
    now.duration_since(renewed.0).abs() < lease
}

/// Whether run `run_id` holds the lock `lock_name` now (its lease names the run as holder and
/// was renewed within its duration on this machine's clock): the run is alive somewhere.
pub async fn held_by_run(
    client: &kube::Client,
    namespace: &str,
    lock_name: &str,
    run_id: &str,
) -> Result<bool, kube::Error> {
    let lease = Api::<Lease>::namespaced(client.clone(), namespace)
        .get_opt(&format!("rollgate-lock-{lock_name}"))
        .await?;
    Ok(lease.and_then(|l| l.spec).is_some_and(|spec| {
        spec.holder_identity
            .as_deref()
            .is_some_and(|h| h.ends_with(&format!(" run {run_id}")))
            && looks_live(&spec, jiff::Timestamp::now())
    }))
}

fn has_holder(spec: &LeaseSpec) -> bool {
    !spec.holder_identity.as_deref().unwrap_or("").is_empty()
}

fn describe(t: &Option<MicroTime>) -> String {
    t.as_ref()
        .map(|t| t.0.to_string())
        .unwrap_or_else(|| "never".into())
}

/// Told to the caller when a lease that looks expired is watched before being taken over.
#[derive(Debug, Clone)]
pub struct Watching {
    pub lease: String,
    pub holder: String,
    pub renewed: String,
    pub wait: Duration,
}

/// A stricly later renewTime than `previous`: every renewal is a visible change.
fn later(now: jiff::Timestamp, previous: Option<&MicroTime>) -> MicroTime {
    let floor = previous.and_then(|p| p.0.checked_add(jiff::SignedDuration::from_millis(1)).ok());
    MicroTime(floor.map_or(now, |f| now.max(f)))
}

async fn bounded<T>(
    fut: impl Future<Output = Result<T, StoreError>>,
    limit: Duration,
) -> Result<T, StoreError> {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or(Err(StoreError::Timeout(limit)))
}

/// Who asks for the lock, and how.
pub struct Contender {
    /// Written as the lease's holder (`user@host pid N run ID`).
    pub holder: String,
    pub timing: Timing,
    /// `--force-unlock`: take it even if held.
    pub force: bool,
    /// The wall clock written into the lease (and used only to refuse at once).
    pub clock: crate::window::Clock,
}

/// Takes the lock `NAMESPACE/rollgate-lock-NAME` in the cluster (see the module doc).
pub async fn acquire(
    client: kube::Client,
    namespace: &str,
    name: &str,
    contender: Contender,
    on_watch: impl FnOnce(&Watching),
) -> Result<HeldLock, LockError> {
    let lease = format!("{namespace}/rollgate-lock-{name}");
    acquire_from(
        Arc::new(KubeLease::new(client, namespace, name)),
        &lease,
        contender,
        on_watch,
    )
    .await
}

/// [`acquire`] over any [`LeaseStore`]; `lease` names it in messages.
pub async fn acquire_from<S: LeaseStore>(
    store: Arc<S>,
    lease: &str,
    contender: Contender,
    on_watch: impl FnOnce(&Watching),
) -> Result<HeldLock, LockError> {
    let api_err = |source| LockError::Api {
        lease: lease.to_owned(),
        source,
    };
    let timing = contender.timing;
    let ours = |now: jiff::Timestamp, transitions: Option<i32>| LeaseSpec {
        holder_identity: Some(contender.holder.clone()),
        lease_duration_seconds: Some(timing.lease.as_secs() as i32),
        acquire_time: Some(MicroTime(now)),
        renew_time: Some(MicroTime(now)),
        lease_transitions: transitions,
        ..Default::default()
    };
    let poll = timing
        .retry
        .clamp(Duration::from_millis(100), Duration::from_secs(2));
    let mut on_watch = Some(on_watch);
    let mut watched: Option<Observation> = None;
    let (taken, sent) = loop {
        let current = bounded(store.get(), CALL_TIMEOUT).await.map_err(api_err)?;
        let Some(mut current) = current else {
            let sent = Instant::now();
            let new = Lease {
                metadata: ObjectMeta {
                    name: lease.rsplit('/').next().map(str::to_owned),
                    ..Default::default()
                },
                spec: Some(ours(contender.clock.now(), Some(0))),
            };
            match bounded(store.create(new), CALL_TIMEOUT).await {
                Ok(l) => break (l, sent),
                Err(StoreError::Conflict) => continue,
                Err(e) => return Err(api_err(e)),
            }
        };
        let spec = current.spec.clone().unwrap_or_default();
        if has_holder(&spec)
            && spec.holder_identity != Some(contender.holder.clone())
            && !contender.force
        {
            let held = |why: String| LockError::Held {
                lease: lease.to_owned(),
                holder: spec.holder_identity.clone().unwrap_or_default(),
                since: describe(&spec.acquire_time),
                renewed: describe(&spec.renew_time),
                why,
            };
            // Its holder's promise, or ours if longer.
            let wait = timing.lease.max(Duration::from_secs(
                spec.lease_duration_seconds.unwrap_or(0).max(0) as u64,
            ));
            match &watched {
                None => {
                    if looks_live(&spec, contender.clock.now()) {
                        return Err(held(String::new()));
                    }
                    if let Some(tell) = on_watch.take() {
                        tell(&Watching {
                            lease: lease.to_owned(),
                            holder: spec.holder_identity.clone().unwrap_or_default(),
                            renewed: describe(&spec.renew_time),
                            wait,
                        });
                    }
                    watched = Some(Observation::new(&spec, Instant::now()));
                    tokio::time::sleep(poll).await;
                    continue;
                }
                Some(seen) if seen.changed(&spec) => {
                    return Err(held(
                        " (its renewTime looked expired on this machine's clock, but the lease changed while watched: its holder is alive and its clock or this one is off)".into(),
                    ));
                }
                Some(seen) => {
                    let left = seen.remaining(Instant::now(), wait);
                    if !left.is_zero() {
                        tokio::time::sleep(left.min(poll)).await;
                        continue;
                    }
                    // Unchanged for the whole lease duration here: expired.
                }
            }
        }
        let transitions = spec.lease_transitions.unwrap_or(0)
            + i32::from(spec.holder_identity != Some(contender.holder.clone()));
        current.spec = Some(ours(contender.clock.now(), Some(transitions)));
        let sent = Instant::now();
        // resourceVersion is kept: if someone else wrote it meanwhile, this is a conflict.
        match bounded(store.replace(current), CALL_TIMEOUT).await {
            Ok(l) => break (l, sent),
            Err(StoreError::Conflict) => continue,
            Err(e) => return Err(api_err(e)),
        }
    };
    Ok(HeldLock::start(
        store,
        lease.to_owned(),
        contender.holder,
        timing,
        contender.clock,
        sent,
        taken,
    ))
}

/// The held lock. Call [`HeldLock::release`] at the end; if the process dies, the lease expires.
pub struct HeldLock {
    /// `NAMESPACE/rollgate-lock-NAME`.
    pub lease: String,
    release: Box<dyn FnOnce() -> futures::future::BoxFuture<'static, ()> + Send>,
    renew: JoinHandle<()>,
    /// Becomes `Some` when the lock is lost: the run must stop acting.
    pub lost: watch::Receiver<Option<LockLost>>,
}

impl HeldLock {
    fn start<S: LeaseStore>(
        store: Arc<S>,
        lease: String,
        holder: String,
        timing: Timing,
        clock: crate::window::Clock,
        renewed_at: Instant,
        taken: Lease,
    ) -> Self {
        let (lost_tx, lost) = watch::channel(None);
        let renew = tokio::spawn(keep_renewed(
            Arc::clone(&store),
            holder.clone(),
            timing,
            clock,
            renewed_at,
            taken,
            lost_tx,
        ));
        let release = Box::new(move || {
            Box::pin(async move {
                let _ = tokio::time::timeout(CALL_TIMEOUT, give_up(&*store, &holder)).await;
            }) as futures::future::BoxFuture<'static, ()>
        });
        Self {
            lease,
            release,
            renew,
            lost,
        }
    }

    /// Gives the lease up, unless it was lost (best effort, bounded: an unreleased lease
    /// expires by itself).
    pub async fn release(self) {
        self.renew.abort();
        let _ = self.renew.await;
        if self.lost.borrow().is_none() {
            (self.release)().await;
        }
    }
}

async fn give_up<S: LeaseStore>(store: &S, holder: &str) {
    if let Ok(Some(mut lease)) = store.get().await
        && lease
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref())
            == Some(holder)
    {
        if let Some(spec) = lease.spec.as_mut() {
            spec.holder_identity = None;
            spec.renew_time = None;
        }
        let _ = store.replace(lease).await;
    }
}

fn holder_of(lease: &Lease) -> Option<&str> {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref())
}

/// Why one renewal did not renew.
#[derive(Debug, thiserror::Error)]
enum RenewError {
    /// The lease is not ours any more: the lock is lost.
    #[error("{0}")]
    Lost(LockLost),
    /// The request failed: a later attempt may still renew within the renew deadline.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One renewal: the lease must still be ours; its renewTime moves forward.
async fn renew_once<S: LeaseStore>(
    store: &S,
    holder: &str,
    clock: &crate::window::Clock,
    last: &mut Lease,
) -> Result<(), RenewError> {
    let Some(mut lease) = store.get().await? else {
        return Err(RenewError::Lost(LockLost::Deleted));
    };
    match holder_of(&lease) {
        Some(h) if h == holder => {}
        other => {
            return Err(RenewError::Lost(LockLost::TakenBy(
                other.unwrap_or("nobody").to_owned(),
            )));
        }
    }
    let previous = last.spec.as_ref().and_then(|s| s.renew_time.clone());
    let current_renew = lease.spec.as_ref().and_then(|s| s.renew_time.clone());
    let floor = previous.max(current_renew);
    if let Some(spec) = lease.spec.as_mut() {
        spec.renew_time = Some(later(clock.now(), floor.as_ref()));
    }
    *last = store.replace(lease).await?;
    Ok(())
}

/// The holder's loop: renews every `retry`; reports the lock lost when no renewal succeeded
/// within the renew deadline of the start of the last good one, or when it is not ours.
async fn keep_renewed<S: LeaseStore>(
    store: Arc<S>,
    holder: String,
    timing: Timing,
    clock: crate::window::Clock,
    mut renewed_at: Instant,
    mut last: Lease,
    lost: watch::Sender<Option<LockLost>>,
) {
    let mut changes = store.changes();
    let mut next_try = renewed_at + timing.retry;
    let mut last_error: Option<String> = None;
    let why = loop {
        let deadline = renewed_at + timing.renew_deadline;
        tokio::select! {
            biased;
            _ = tokio::time::sleep_until(deadline) => {
                break LockLost::NotRenewed { deadline: timing.renew_deadline, last_error };
            }
            Some(lease) = changes.next() => {
                if holder_of(&lease) != Some(holder.as_str()) {
                    break match holder_of(&lease) {
                        Some(h) if !h.is_empty() => LockLost::TakenBy(h.to_owned()),
                        _ => LockLost::TakenBy("nobody (released by someone else)".into()),
                    };
                }
            }
            _ = tokio::time::sleep_until(next_try) => {
                let started = Instant::now();
                // One attempt may not outlast the deadline, nor hang on a dead connection.
                let limit = deadline.min(started + timing.lease / 3);
                match tokio::time::timeout_at(limit, renew_once(&*store, &holder, &clock, &mut last)).await {
                    Ok(Ok(())) => {
                        renewed_at = started;
                        last_error = None;
                    }
                    Ok(Err(RenewError::Lost(why))) => break why,
                    Ok(Err(RenewError::Store(e))) => last_error = Some(e.to_string()),
                    Err(_) => last_error = Some(format!("no answer within {:?}", limit - started)),
                }
                next_try = started + timing.retry;
            }
        }
    };
    tracing::warn!(reason = %why, "cluster lock lost");
    let _ = lost.send(Some(why));
}

#[cfg(test)]
mod tests;
