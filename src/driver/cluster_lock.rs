//! The run's side of the cluster lock: taking it (saying who holds it when it is taken) and
//! telling the engine when it is lost.

use crate::cluster::Clients;
use crate::exit::{self, Failure};
use crate::lock::HeldLock;
use crate::vocab::{EventSink, RunEvent};
use tokio::sync::watch;

use super::LockRequest;

/// Takes the cluster lock, or says who holds it.
pub(super) async fn acquire_lock(
    clients: &Clients,
    namespace: &str,
    request: &LockRequest,
    me: &str,
    run_id: &str,
) -> Result<HeldLock, Failure> {
    let holder = format!("{me} pid {} run {run_id}", std::process::id());
    if request.force {
        eprintln!(
            "WARNING: --force-unlock: taking the cluster lock {:?} even if another run holds it",
            request.name
        );
    }
    let contender = crate::lock::Contender {
        holder,
        timing: crate::lock::Timing::for_lease(request.duration),
        force: request.force,
        clock: crate::window::Clock::from_env(),
    };
    let watching = |w: &crate::lock::Watching| {
        eprintln!(
            "the cluster lock {} looks expired (held by {}, last renewed {} by its clock): making sure nobody renews it, watching it for {} before taking it over",
            w.lease,
            w.holder,
            w.renewed,
            humantime::format_duration(w.wait)
        );
    };
    crate::cluster::state_namespace::ensure(&clients.api, namespace)
        .await
        .map_err(|e| Failure::new(exit::CLUSTER, e))?;
    match crate::lock::acquire(
        clients.api.clone(),
        namespace,
        &request.name,
        contender,
        watching,
    )
    .await
    {
        Ok(l) => Ok(l),
        Err(e @ crate::lock::LockError::Held { .. }) => Err(Failure::new(
            exit::LOCKED,
            format!(
                "error: {e}\n  hint: wait for it to finish; if that run is gone, its lock expires {} after its last renewal; --force-unlock takes it now",
                humantime::format_duration(request.duration)
            ),
        )),
        Err(e) => Err(Failure::new(exit::CLUSTER, format!("error: {e}"))),
    }
}

/// Lost the lock (not renewed in time, or taken by another run): says so, and the returned
/// receiver tells the engine to stop.
pub(super) fn watch_lock(
    lock: Option<&HeldLock>,
    sink: &EventSink,
) -> (
    watch::Sender<Option<String>>,
    watch::Receiver<Option<String>>,
) {
    let (lost_tx, lost_rx) = watch::channel(None::<String>);
    if let Some(l) = lock {
        let lost_tx = lost_tx.clone();
        let (mut lost, sink, lease) = (l.lost.clone(), sink.clone(), l.lease.clone());
        tokio::spawn(async move {
            if let Ok(why) = lost.wait_for(Option::is_some).await
                && let Some(why) = why.clone()
            {
                sink.emit(RunEvent::Warning {
                    node: None,
                    message: format!(
                        "lost the cluster lock {lease}: {why}: starting no new node; nodes in flight stop at their next safe point"
                    ),
                });
                let _ = lost_tx.send(Some(why.to_string()));
            }
        });
    }
    (lost_tx, lost_rx)
}
