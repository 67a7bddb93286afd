//! Riding out a short API outage in a node's own reads and writes.
//!
//! An apiserver restart (the very thing a Kubernetes upgrade does to its control plane) or a
//! load balancer hiccup makes requests fail for seconds. A node step that gave up on its first
//! connection error would fail the node mid-upgrade and leave it cordoned, although the node
//! itself is fine. So a node's reads and patches retry errors that say "the API is not there
//! right now" (no connection, 429, 5xx) with backoff for up to [`RIDE_OUT`], then fail the
//! step with the last error. Meanwhile the health monitor, blind for `monitor.blind-after`,
//! turns its signals inconclusive and (by default) pauses the run: no new node starts while the
//! API is gone. Errors that a retry cannot fix (403, 404, 422, a bad request) fail at once.
//! The retried requests are idempotent (merge patches of annotations and `spec.unschedulable`).

use std::future::Future;
use std::time::Duration;

/// How long a node's read or write keeps retrying while the API is unreachable or overloaded.
pub const RIDE_OUT: Duration = Duration::from_secs(120);

const FIRST_WAIT: Duration = Duration::from_millis(250);
const LONGEST_WAIT: Duration = Duration::from_secs(4);

/// Whether this error says the API is unreachable or overloaded right now (worth a retry).
pub fn is_transient(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => status.code == 429 || status.code >= 500,
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

/// Runs `request` until it succeeds, fails for good, or `bound` has passed since the first
/// try (then the last error is returned). `on_retry` is called once, at the first retry, with
/// that error (to say so once, not at every attempt).
pub async fn ride_out<T, F, Fut>(
    bound: Duration,
    mut on_retry: impl FnMut(&kube::Error),
    mut request: F,
) -> Result<T, kube::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, kube::Error>>,
{
    let started = tokio::time::Instant::now();
    let mut wait = FIRST_WAIT;
    let mut said = false;
    loop {
        match request().await {
            Err(e) if is_transient(&e) && started.elapsed() + wait <= bound => {
                if !said {
                    on_retry(&e);
                    said = true;
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(LONGEST_WAIT);
            }
            done => return done,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn status(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(
            kube::core::Status::failure("x", "y").with_code(code),
        ))
    }

    #[test]
    fn transient_errors_are_outages_and_throttling_only() {
        for (code, transient) in [(429, true), (500, true), (503, true), (504, true)] {
            assert_eq!(is_transient(&status(code)), transient, "{code}");
        }
        for code in [400, 403, 404, 409, 422] {
            assert!(!is_transient(&status(code)), "{code}");
        }
        assert!(is_transient(&kube::Error::Service(
            "connection refused".into()
        )));
        assert!(!is_transient(&kube::Error::LinesCodecMaxLineLengthExceeded));
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_shorter_than_the_bound_is_ridden_out_and_said_once() {
        let calls = AtomicU32::new(0);
        let mut said = 0;
        let started = tokio::time::Instant::now();
        let got = ride_out(
            RIDE_OUT,
            |_| said += 1,
            || async {
                if calls.fetch_add(1, Ordering::SeqCst) < 10 {
                    Err(kube::Error::Service("connect".into()))
                } else {
                    Ok(7)
                }
            },
        )
        .await;
        assert_eq!(got.unwrap(), 7);
        assert_eq!(said, 1);
        assert_eq!(calls.load(Ordering::SeqCst), 11);
        assert!(started.elapsed() < RIDE_OUT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_longer_outage_fails_with_the_last_error_within_the_bound() {
        let started = tokio::time::Instant::now();
        let got: Result<(), _> = ride_out(
            Duration::from_secs(30),
            |_| {},
            || async { Err(status(503)) },
        )
        .await;
        assert!(matches!(got, Err(kube::Error::Api(s)) if s.code == 503));
        let took = started.elapsed();
        assert!(
            took <= Duration::from_secs(30) && took >= Duration::from_secs(26),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_lasting_error_fails_at_once() {
        let calls = AtomicU32::new(0);
        let got: Result<(), _> = ride_out(
            RIDE_OUT,
            |_| panic!("not a retry"),
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(status(403))
            },
        )
        .await;
        assert!(got.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
