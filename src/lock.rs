//! One runner per cluster: a coordination.k8s.io Lease (`kube-system/rollgate-lock-NAME`) held
//! while a run acts and renewed every third of its duration. A second run refuses with who holds
//! it and since when; a lease whose holder stopped renewing is taken over once it has expired;
//! `--force-unlock` takes it regardless (loudly). The lease is released at the end of the run.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use std::time::Duration;
use tokio::task::JoinHandle;

pub const NAMESPACE: &str = "kube-system";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another rollgate run holds the cluster lock {lease}: {holder}, since {since}, last renewed {renewed}"
    )]
    Held {
        lease: String,
        holder: String,
        since: String,
        renewed: String,
    },
    #[error("cannot take the cluster lock {lease}: {source}")]
    Api { lease: String, source: kube::Error },
}

/// The held lock. Call [`HeldLock::release`] at the end; if the process dies, the lease expires.
pub struct HeldLock {
    api: Api<Lease>,
    name: String,
    holder: String,
    renew: JoinHandle<()>,
    /// Fires when the lease was lost (someone forced it away).
    pub lost: tokio::sync::watch::Receiver<bool>,
}

fn now() -> MicroTime {
    MicroTime(jiff::Timestamp::now())
}

fn expired(lease: &Lease) -> bool {
    let Some(spec) = &lease.spec else { return true };
    if spec.holder_identity.as_deref().unwrap_or("").is_empty() {
        return true;
    }
    let duration = jiff::SignedDuration::from_secs(spec.lease_duration_seconds.unwrap_or(0).into());
    match &spec.renew_time {
        Some(t) => t.0 + duration < jiff::Timestamp::now(),
        None => true,
    }
}

fn describe(t: &Option<MicroTime>) -> String {
    t.as_ref()
        .map(|t| t.0.to_string())
        .unwrap_or_else(|| "never".into())
}

pub async fn acquire(
    client: kube::Client,
    name: &str,
    holder: &str,
    duration: Duration,
    force: bool,
) -> Result<HeldLock, LockError> {
    let api: Api<Lease> = Api::namespaced(client, NAMESPACE);
    let lease_name = format!("rollgate-lock-{name}");
    let api_err = |source| LockError::Api {
        lease: format!("{NAMESPACE}/{lease_name}"),
        source,
    };
    let spec = LeaseSpec {
        holder_identity: Some(holder.to_owned()),
        lease_duration_seconds: Some(duration.as_secs().max(1) as i32),
        acquire_time: Some(now()),
        renew_time: Some(now()),
        ..Default::default()
    };
    loop {
        match api.get_opt(&lease_name).await.map_err(api_err)? {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(lease_name.clone()),
                        ..Default::default()
                    },
                    spec: Some(spec.clone()),
                };
                match api.create(&PostParams::default(), &lease).await {
                    Ok(_) => break,
                    Err(kube::Error::Api(s)) if s.code == 409 => continue,
                    Err(e) => return Err(api_err(e)),
                }
            }
            Some(mut lease) => {
                if !expired(&lease) && !force {
                    let s = lease.spec.unwrap_or_default();
                    return Err(LockError::Held {
                        lease: format!("{NAMESPACE}/{lease_name}"),
                        holder: s.holder_identity.unwrap_or_default(),
                        since: describe(&s.acquire_time),
                        renewed: describe(&s.renew_time),
                    });
                }
                lease.spec = Some(spec.clone());
                // resourceVersion is kept: if someone else took it meanwhile, this is a conflict.
                match api
                    .replace(&lease_name, &PostParams::default(), &lease)
                    .await
                {
                    Ok(_) => break,
                    Err(kube::Error::Api(s)) if s.code == 409 => continue,
                    Err(e) => return Err(api_err(e)),
                }
            }
        }
    }
    let (lost_tx, lost) = tokio::sync::watch::channel(false);
    let renew = {
        let (api, name, holder) = (api.clone(), lease_name.clone(), holder.to_owned());
        tokio::spawn(async move {
            use futures::StreamExt;
            use kube::runtime::{WatchStreamExt, watcher};
            let ours = |lease: &Lease| {
                lease
                    .spec
                    .as_ref()
                    .and_then(|s| s.holder_identity.as_deref())
                    == Some(holder.as_str())
            };
            // Watched, so a `--force-unlock` elsewhere is noticed at once, not at the next renewal.
            let mut changes = watcher(
                api.clone(),
                watcher::Config::default().fields(&format!("metadata.name={name}")),
            )
            .default_backoff()
            .applied_objects()
            .boxed();
            let mut renew_at = tokio::time::Instant::now() + duration / 3;
            loop {
                tokio::select! {
                    Some(Ok(lease)) = changes.next() => {
                        if !ours(&lease) {
                            let _ = lost_tx.send(true);
                            return;
                        }
                    }
                    _ = tokio::time::sleep_until(renew_at) => {
                        renew_at += duration / 3;
                        let Ok(mut lease) = api.get(&name).await else {
                            continue;
                        };
                        if !ours(&lease) {
                            let _ = lost_tx.send(true);
                            return;
                        }
                        if let Some(spec) = lease.spec.as_mut() {
                            spec.renew_time = Some(now());
                        }
                        let _ = api.replace(&name, &PostParams::default(), &lease).await;
                    }
                }
            }
        })
    };
    Ok(HeldLock {
        api,
        name: lease_name,
        holder: holder.to_owned(),
        renew,
        lost,
    })
}

impl HeldLock {
    /// Gives the lease up (best effort: an unreleased lease expires by itself).
    pub async fn release(self) {
        self.renew.abort();
        if let Ok(mut lease) = self.api.get(&self.name).await
            && lease
                .spec
                .as_ref()
                .and_then(|s| s.holder_identity.as_deref())
                == Some(self.holder.as_str())
        {
            if let Some(spec) = lease.spec.as_mut() {
                spec.holder_identity = None;
                spec.renew_time = None;
            }
            let _ = self
                .api
                .replace(&self.name, &PostParams::default(), &lease)
                .await;
        }
    }
}
