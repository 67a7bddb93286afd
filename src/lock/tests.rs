//! The lock's timing logic against a fake lease store, under paused tokio time: a cut-off
//! holder loses the lock exactly at its renew deadline; a contender takes an expired lease
//! only after seeing it unchanged for the lease duration on its own clock, whatever its
//! renewTime says. The real apiserver is in tests/lock_cluster.rs.

use super::*;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// One lease in memory with resourceVersion checks; `frozen` makes every request hang (a
/// partition).
#[derive(Default)]
struct Fake {
    lease: Mutex<Option<Lease>>,
    version: Mutex<u64>,
    frozen: AtomicBool,
    /// Every request answers an error (the apiserver refuses, or the token was revoked).
    failing: AtomicBool,
}

impl Fake {
    fn with(spec: LeaseSpec) -> Arc<Self> {
        let fake = Arc::new(Fake::default());
        *fake.lease.lock().unwrap() = Some(Lease {
            metadata: ObjectMeta {
                name: Some("rollgate-lock-t".into()),
                resource_version: Some("0".into()),
                ..Default::default()
            },
            spec: Some(spec),
        });
        fake
    }

    fn spec(&self) -> LeaseSpec {
        self.lease.lock().unwrap().clone().unwrap().spec.unwrap()
    }

    /// Writes the lease as another party would.
    fn edit(&self, f: impl FnOnce(&mut LeaseSpec)) {
        let mut lease = self.lease.lock().unwrap();
        f(lease.as_mut().unwrap().spec.as_mut().unwrap());
        let mut v = self.version.lock().unwrap();
        *v += 1;
        lease.as_mut().unwrap().metadata.resource_version = Some(v.to_string());
    }

    async fn gate(&self) -> Result<(), StoreError> {
        if self.frozen.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if self.failing.load(Ordering::SeqCst) {
            return Err(StoreError::Api(kube::Error::Service(Box::new(
                std::io::Error::other("connection refused"),
            ))));
        }
        Ok(())
    }
}

impl LeaseStore for Fake {
    async fn get(&self) -> Result<Option<Lease>, StoreError> {
        self.gate().await?;
        Ok(self.lease.lock().unwrap().clone())
    }
    async fn create(&self, mut lease: Lease) -> Result<Lease, StoreError> {
        self.gate().await?;
        let mut current = self.lease.lock().unwrap();
        if current.is_some() {
            return Err(StoreError::Conflict);
        }
        lease.metadata.resource_version = Some("0".into());
        *current = Some(lease.clone());
        Ok(lease)
    }
    async fn replace(&self, mut lease: Lease) -> Result<Lease, StoreError> {
        self.gate().await?;
        let mut current = self.lease.lock().unwrap();
        let mut v = self.version.lock().unwrap();
        if current.as_ref().unwrap().metadata.resource_version != lease.metadata.resource_version {
            return Err(StoreError::Conflict);
        }
        *v += 1;
        lease.metadata.resource_version = Some(v.to_string());
        *current = Some(lease.clone());
        Ok(lease)
    }
    fn changes(&self) -> BoxStream<'static, Lease> {
        futures::stream::pending().boxed()
    }
}

const LEASE: Duration = Duration::from_secs(6);

fn contender(holder: &str, force: bool) -> Contender {
    Contender {
        holder: holder.into(),
        timing: Timing::for_lease(LEASE),
        force,
        clock: crate::window::Clock::System,
    }
}

/// A lease held by `other`, last renewed `age` ago on this machine's clock (negative: ahead).
fn held_by_other(age: jiff::SignedDuration) -> LeaseSpec {
    let at = jiff::Timestamp::now() - age;
    LeaseSpec {
        holder_identity: Some("other@host pid 1 run r0".into()),
        lease_duration_seconds: Some(LEASE.as_secs() as i32),
        acquire_time: Some(MicroTime(at)),
        renew_time: Some(MicroTime(at)),
        lease_transitions: Some(0),
        ..Default::default()
    }
}

async fn take(fake: &Arc<Fake>, who: &str, force: bool) -> (Result<HeldLock, LockError>, bool) {
    let mut watched = false;
    let r = acquire_from(
        Arc::clone(fake),
        "kube-system/rollgate-lock-t",
        contender(who, force),
        |_| watched = true,
    )
    .await;
    (r, watched)
}

#[test]
fn timing_follows_client_go_proportions() {
    let t = Timing::for_lease(Duration::from_secs(30));
    assert_eq!(t.renew_deadline, Duration::from_secs(20));
    assert_eq!(t.retry, Duration::from_secs(5));
    // Whole seconds, at least one: the lease stores seconds and every runner must agree.
    assert_eq!(Timing::for_lease(Duration::from_millis(6900)).lease, LEASE);
    assert_eq!(
        Timing::for_lease(Duration::ZERO).lease,
        Duration::from_secs(1)
    );
}

#[tokio::test(start_paused = true)]
async fn a_holder_that_renews_keeps_the_lock_and_every_renewal_changes_the_lease() {
    let fake = Arc::new(Fake::default());
    let (held, _) = take(&fake, "me", false).await;
    let held = held.unwrap();
    let mut last = fake.spec().renew_time;
    // Look between renewals (they are every second).
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..30 {
        tokio::time::sleep(LEASE / 6).await;
        assert!(held.lost.borrow().is_none());
        let now = fake.spec().renew_time;
        assert!(now > last, "renewTime moves forward at each renewal");
        last = now;
    }
    held.release().await;
    assert_eq!(fake.spec().holder_identity, None, "released");
}

#[tokio::test(start_paused = true)]
async fn a_holder_cut_off_loses_the_lock_at_its_renew_deadline_on_its_own_clock() {
    let fake = Arc::new(Fake::default());
    let (held, _) = take(&fake, "me", false).await;
    let held = held.unwrap();
    let start = Instant::now();
    // Renewals at 1 s and 2 s succeed; the partition starts at 2.5 s.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    fake.frozen.store(true, Ordering::SeqCst);
    let mut lost = held.lost.clone();
    lost.wait_for(Option::is_some).await.unwrap();
    // The last good renewal started at 2 s; the renew deadline is 4 s.
    assert_eq!(start.elapsed(), Duration::from_secs(6));
    let why = held.lost.borrow().clone().unwrap();
    assert!(
        matches!(&why, LockLost::NotRenewed { deadline, last_error: Some(e) } if *deadline == Duration::from_secs(4) && e.contains("no answer")),
        "{why:?}"
    );
    assert!(why.to_string().contains("renew deadline of 4s"), "{why}");
    // Lost before any contender could see the lease expire (6 s after its last change).
    assert!(start.elapsed() < Duration::from_secs(2) + LEASE);
    held.release().await; // does not hang on the partition, does not release
}

#[tokio::test(start_paused = true)]
async fn failing_renewals_lose_the_lock_at_the_deadline_even_when_the_api_answers_errors() {
    let fake = Arc::new(Fake::default());
    let (held, _) = take(&fake, "me", false).await;
    let held = held.unwrap();
    let start = Instant::now();
    fake.failing.store(true, Ordering::SeqCst);
    let mut lost = held.lost.clone();
    lost.wait_for(Option::is_some).await.unwrap();
    // No renewal after taking it: lost 4 s after the take, though the API answered each time.
    assert_eq!(start.elapsed(), Duration::from_secs(4));
    let why = held.lost.borrow().clone().unwrap();
    assert!(why.to_string().contains("connection refused"), "{why}");
}

#[tokio::test(start_paused = true)]
async fn a_holder_whose_lease_was_taken_loses_it_at_the_next_renewal() {
    let fake = Arc::new(Fake::default());
    let (held, _) = take(&fake, "me", false).await;
    let held = held.unwrap();
    let start = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    fake.edit(|s| s.holder_identity = Some("forcer".into()));
    let mut lost = held.lost.clone();
    lost.wait_for(Option::is_some).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert_eq!(
        held.lost.borrow().clone(),
        Some(LockLost::TakenBy("forcer".into()))
    );
    held.release().await;
    assert_eq!(
        fake.spec().holder_identity.as_deref(),
        Some("forcer"),
        "not released"
    );
}

#[tokio::test(start_paused = true)]
async fn a_live_lease_is_refused_at_once() {
    let fake = Fake::with(held_by_other(jiff::SignedDuration::from_secs(1)));
    let start = Instant::now();
    let (r, watched) = take(&fake, "me", false).await;
    let Err(e @ LockError::Held { .. }) = r else {
        panic!("refused")
    };
    assert!(!watched);
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert!(e.to_string().contains("other@host pid 1"), "{e}");
}

#[tokio::test(start_paused = true)]
async fn a_lease_renewed_an_hour_ago_by_its_clock_but_still_changing_is_not_taken() {
    // The holder's clock is an hour behind: its renewTime looks expired here, yet it renews.
    let fake = Fake::with(held_by_other(jiff::SignedDuration::from_hours(1)));
    let renewer = {
        let fake = Arc::clone(&fake);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                fake.edit(|s| {
                    let t = s.renew_time.as_ref().unwrap().0;
                    s.renew_time = Some(MicroTime(t + jiff::SignedDuration::from_secs(1)));
                });
            }
        })
    };
    let start = Instant::now();
    let (r, watched) = take(&fake, "me", false).await;
    renewer.abort();
    let Err(e @ LockError::Held { .. }) = r else {
        panic!("refused")
    };
    assert!(watched, "it looked expired, so it was watched");
    assert!(start.elapsed() < LEASE, "refused as soon as it changed");
    assert!(e.to_string().contains("holder is alive"), "{e}");
    assert_eq!(
        fake.spec().holder_identity.as_deref(),
        Some("other@host pid 1 run r0")
    );
}

#[tokio::test(start_paused = true)]
async fn an_expired_lease_is_taken_only_after_watching_it_unchanged_for_the_lease_duration() {
    for age in [
        // Stale by this machine's clock,
        jiff::SignedDuration::from_hours(1),
        // or from a holder whose clock is an hour ahead (its lease would never expire by clocks).
        -jiff::SignedDuration::from_hours(1),
    ] {
        let fake = Fake::with(held_by_other(age));
        let start = Instant::now();
        let (r, watched) = take(&fake, "me", false).await;
        let held = r.unwrap();
        assert!(watched);
        let took = start.elapsed();
        assert!(
            took >= LEASE && took < LEASE + Duration::from_secs(2),
            "{took:?}"
        );
        let spec = fake.spec();
        assert_eq!(spec.holder_identity.as_deref(), Some("me"));
        assert_eq!(spec.lease_transitions, Some(1));
        held.release().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_lease_held_by_a_longer_duration_is_watched_for_its_own_duration() {
    let mut spec = held_by_other(jiff::SignedDuration::from_hours(1));
    spec.lease_duration_seconds = Some(20);
    let fake = Fake::with(spec);
    let start = Instant::now();
    let (r, _) = take(&fake, "me", false).await;
    r.unwrap().release().await;
    assert!(start.elapsed() >= Duration::from_secs(20));
}

#[tokio::test(start_paused = true)]
async fn a_released_lease_is_taken_at_once_and_force_takes_a_live_one() {
    let mut spec = held_by_other(jiff::SignedDuration::ZERO);
    spec.holder_identity = None;
    let fake = Fake::with(spec);
    let start = Instant::now();
    let (r, watched) = take(&fake, "me", false).await;
    assert!(!watched);
    r.unwrap().release().await;

    let fake = Fake::with(held_by_other(jiff::SignedDuration::ZERO));
    let (r, watched) = take(&fake, "me", true).await;
    assert!(!watched);
    let held = r.unwrap();
    assert_eq!(fake.spec().holder_identity.as_deref(), Some("me"));
    assert_eq!(start.elapsed(), Duration::ZERO);
    held.release().await;
}

#[test]
fn an_observation_counts_from_the_first_sight_and_sees_any_change() {
    let t0 = Instant::now();
    let spec = held_by_other(jiff::SignedDuration::ZERO);
    let seen = Observation::new(&spec, t0);
    assert!(!seen.changed(&spec));
    assert_eq!(
        seen.remaining(t0 + Duration::from_secs(2), LEASE),
        Duration::from_secs(4)
    );
    assert_eq!(seen.remaining(t0 + LEASE * 2, LEASE), Duration::ZERO);
    let mut renewed = spec.clone();
    renewed.renew_time = Some(later(jiff::Timestamp::now(), spec.renew_time.as_ref()));
    assert!(seen.changed(&renewed));
}

#[test]
fn looks_live_tolerates_small_skew_either_way_only() {
    let now = jiff::Timestamp::now();
    let at = |secs: i64| held_by_other(jiff::SignedDuration::from_secs(secs));
    assert!(looks_live(&at(0), now));
    assert!(looks_live(&at(5), now));
    assert!(looks_live(&at(-5), now));
    assert!(!looks_live(&at(7), now));
    assert!(!looks_live(&at(-3600), now));
    assert!(!looks_live(&LeaseSpec::default(), now));
}

#[test]
fn renew_time_always_moves_forward_even_with_a_clock_that_went_back() {
    let now = jiff::Timestamp::now();
    let ahead = MicroTime(now + jiff::SignedDuration::from_secs(60));
    assert!(later(now, Some(&ahead)) > ahead);
    assert_eq!(later(now, None), MicroTime(now));
}
