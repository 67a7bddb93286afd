//! User-defined end-to-end probes: a local `command` (e.g. create a VM and delete it), an `http`
//! check, a Kubernetes `job`, a `prometheus` query or "no firing alerts matching". Each attempt
//! is bounded by the probe's timeout and retried `retries` times; the result is a gate
//! [`ProbeOutcome`]: pass, fail (with evidence), or inconclusive (the probe could not run).
//!
//! Relative paths in a probe (a command's program, a job manifest) are resolved against the
//! playbook's directory.

use crate::playbook::{Probe, ProbeKind, ProbeWhen};
use crate::vocab::{ProbeOutcome, when_name};
use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::wait::await_condition;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

const TAIL_LINES: usize = 5;

/// Where and why a probe runs; reaches a command probe as ROLLGATE_* environment variables.
#[derive(Debug, Clone)]
pub struct ProbeContext {
    pub when: ProbeWhen,
    pub node: Option<String>,
    pub phase: Option<String>,
    pub run_id: String,
}

pub struct ProbeRunner {
    http: reqwest::Client,
    kube: Option<kube::Client>,
    prometheus_url: Option<String>,
    base_dir: PathBuf,
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..].join(" | ")
}

impl ProbeRunner {
    pub fn new(
        kube: Option<kube::Client>,
        prometheus_url: Option<String>,
        playbook_path: &Path,
    ) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .expect("an HTTP client with default settings");
        let base_dir = playbook_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        Self {
            http,
            kube,
            prometheus_url,
            base_dir,
        }
    }

    /// A command's program: relative paths with a slash are beside the playbook; a bare name
    /// is looked up on PATH.
    fn resolve(&self, path: &str) -> PathBuf {
        let p = Path::new(path);
        if p.is_relative() && path.contains('/') {
            self.base_dir.join(p)
        } else {
            p.to_path_buf()
        }
    }

    /// Runs the probe with its retries; the last attempt's result counts.
    pub async fn run(&self, probe: &Probe, ctx: &ProbeContext) -> ProbeOutcome {
        let mut outcome = ProbeOutcome::Inconclusive("not run".into());
        for attempt in 0..=probe.retries {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            // The Job probe bounds its own wait so that it can still clean up; the grace covers that.
            outcome = match tokio::time::timeout(
                probe.timeout + Duration::from_secs(10),
                self.attempt(probe, ctx),
            )
            .await
            {
                Ok(o) => o,
                // Prometheus is the instrument, not the thing measured: a hung Prometheus makes
                // the probe inconclusive, as a refused connection does (not a failure).
                Err(_) if matches!(probe.kind, ProbeKind::Prometheus { .. }) => {
                    ProbeOutcome::Inconclusive(format!(
                        "Prometheus did not answer within {}",
                        humantime::format_duration(probe.timeout)
                    ))
                }
                Err(_) => ProbeOutcome::Fail(format!(
                    "timed out after {}",
                    humantime::format_duration(probe.timeout)
                )),
            };
            if outcome == ProbeOutcome::Pass {
                break;
            }
        }
        outcome
    }

    async fn attempt(&self, probe: &Probe, ctx: &ProbeContext) -> ProbeOutcome {
        match &probe.kind {
            ProbeKind::Command { argv } => self.command(argv, ctx).await,
            ProbeKind::Http {
                url,
                headers,
                expect_status,
                body_contains,
            } => {
                self.http(url, headers, *expect_status, body_contains.as_deref())
                    .await
            }
            ProbeKind::Prometheus {
                query,
                min,
                max,
                alerts_matching,
            } => match (query, alerts_matching) {
                (Some(q), _) => self.prometheus_query(q, *min, *max).await,
                (None, Some(pattern)) => self.prometheus_alerts(pattern).await,
                (None, None) => ProbeOutcome::Inconclusive("prometheus probe without query".into()),
            },
            ProbeKind::Job {
                manifest,
                namespace,
            } => self.job(manifest, namespace, ctx, probe.timeout).await,
        }
    }

    async fn command(&self, argv: &[String], ctx: &ProbeContext) -> ProbeOutcome {
        let Some(program) = argv.first() else {
            return ProbeOutcome::Inconclusive("empty command".into());
        };
        let mut cmd = tokio::process::Command::new(self.resolve(program));
        cmd.args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd.env("ROLLGATE_PROBE_WHEN", when_name(ctx.when))
            .env("ROLLGATE_RUN_ID", &ctx.run_id);
        if let Some(n) = &ctx.node {
            cmd.env("ROLLGATE_NODE", n);
        }
        if let Some(p) = &ctx.phase {
            cmd.env("ROLLGATE_PHASE", p);
        }
        match cmd.output().await {
            Err(e) => ProbeOutcome::Inconclusive(format!("cannot run {program}: {e}")),
            Ok(out) => {
                let text = format!(
                    "{}\n{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                if out.status.success() {
                    ProbeOutcome::Pass
                } else {
                    ProbeOutcome::Fail(format!(
                        "{program} exited with {}: {}",
                        out.status
                            .code()
                            .map(|c| c.to_string())
                            .unwrap_or_else(|| "a signal".into()),
                        tail(&text)
                    ))
                }
            }
        }
    }

    /// GET the URL; every message names it redacted ([`crate::redact::url`]).
    async fn http(
        &self,
        url: &str,
        headers: &std::collections::BTreeMap<String, String>,
        expect: u16,
        body_contains: Option<&str>,
    ) -> ProbeOutcome {
        let mut request = self.http.get(url);
        for (name, value) in headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let url = crate::redact::url(url);
        match request.send().await {
            Err(e) => ProbeOutcome::Fail(crate::redact::scrub(&format!(
                "GET {url}: {}",
                e.without_url()
            ))),
            Ok(resp) => {
                let status = resp.status().as_u16();
                let body = resp.text().await.unwrap_or_default();
                if status != expect {
                    return ProbeOutcome::Fail(format!(
                        "GET {url}: status {status}, expected {expect}: {}",
                        tail(&body)
                    ));
                }
                match body_contains {
                    Some(needle) if !body.contains(needle) => ProbeOutcome::Fail(format!(
                        "GET {url}: body does not contain {needle:?}: {}",
                        tail(&body)
                    )),
                    _ => ProbeOutcome::Pass,
                }
            }
        }
    }

    async fn prometheus_get(
        &self,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<serde_json::Value, String> {
        let Some(base) = &self.prometheus_url else {
            return Err("no Prometheus URL in the config (prometheus.url)".into());
        };
        let url = format!("{}{path}", base.trim_end_matches('/'));
        let shown = crate::redact::url(base);
        let resp = self.http.get(&url).query(query).send().await.map_err(|e| {
            crate::redact::scrub(&format!(
                "Prometheus at {shown} does not answer: {}",
                e.without_url()
            ))
        })?;
        let v: serde_json::Value = resp
            .json()
            .await
            .map_err(|e| format!("Prometheus answered something else than JSON: {e}"))?;
        if v["status"] != "success" {
            return Err(format!("Prometheus error: {}", v["error"]));
        }
        Ok(v)
    }

    async fn prometheus_query(
        &self,
        query: &str,
        min: Option<f64>,
        max: Option<f64>,
    ) -> ProbeOutcome {
        let v = match self
            .prometheus_get("/api/v1/query", &[("query", query)])
            .await
        {
            Ok(v) => v,
            Err(e) => return ProbeOutcome::Inconclusive(e),
        };
        let series = v["data"]["result"].as_array().cloned().unwrap_or_default();
        let bounded = min.is_some() || max.is_some();
        let bad: Vec<String> = series
            .iter()
            .filter_map(|s| {
                let value: f64 = s["value"][1]
                    .as_str()
                    .and_then(|x| x.parse().ok())
                    .unwrap_or(f64::NAN);
                let ok =
                    bounded && min.is_none_or(|m| value >= m) && max.is_none_or(|m| value <= m);
                (!ok).then(|| format!("{} = {value}", s["metric"]))
            })
            .collect();
        if bad.is_empty() {
            ProbeOutcome::Pass
        } else {
            ProbeOutcome::Fail(format!(
                "query {query:?} returned {}: {}",
                if bounded {
                    "values out of bounds"
                } else {
                    "series"
                },
                bad.join("; ")
            ))
        }
    }

    async fn prometheus_alerts(&self, pattern: &str) -> ProbeOutcome {
        let re = match regex::Regex::new(pattern) {
            Ok(re) => re,
            Err(e) => return ProbeOutcome::Inconclusive(format!("alert pattern {pattern:?}: {e}")),
        };
        let v = match self.prometheus_get("/api/v1/alerts", &[]).await {
            Ok(v) => v,
            Err(e) => return ProbeOutcome::Inconclusive(e),
        };
        let firing: Vec<String> = v["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["state"] == "firing")
            .filter_map(|a| a["labels"]["alertname"].as_str().map(str::to_owned))
            .filter(|name| re.is_match(name))
            .collect();
        if firing.is_empty() {
            ProbeOutcome::Pass
        } else {
            ProbeOutcome::Fail(format!("firing alerts: {}", firing.join(", ")))
        }
    }

    async fn job(
        &self,
        manifest: &Path,
        namespace: &str,
        ctx: &ProbeContext,
        timeout: Duration,
    ) -> ProbeOutcome {
        let Some(client) = &self.kube else {
            return ProbeOutcome::Inconclusive("no cluster connection".into());
        };
        // A manifest is a file, always beside the playbook when relative (unlike a program,
        // which a bare name finds on PATH).
        let path = self.base_dir.join(manifest);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                return ProbeOutcome::Inconclusive(format!("cannot read {}: {e}", path.display()));
            }
        };
        let mut job: Job = match serde_yaml::from_str(&text) {
            Ok(j) => j,
            Err(e) => {
                return ProbeOutcome::Inconclusive(format!(
                    "{} is not a Job manifest: {e}",
                    path.display()
                ));
            }
        };
        let base = job
            .metadata
            .name
            .take()
            .unwrap_or_else(|| "rollgate-probe".into());
        job.metadata.generate_name =
            Some(format!("{}-", base.chars().take(50).collect::<String>()));
        job.metadata.namespace = Some(namespace.to_owned());
        job.metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert("rollgate.dev/run".into(), ctx.run_id.clone());
        let api: Api<Job> = Api::namespaced(client.clone(), namespace);
        let created = match api.create(&PostParams::default(), &job).await {
            Ok(j) => j,
            Err(e) => {
                return ProbeOutcome::Inconclusive(format!("cannot create the probe Job: {e}"));
            }
        };
        let name = created.metadata.name.clone().unwrap_or_default();
        let finished = |j: Option<&Job>| {
            j.and_then(|j| j.status.as_ref())
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| {
                    cs.iter().any(|c| {
                        (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True"
                    })
                })
        };
        let outcome = match tokio::time::timeout(
            timeout,
            await_condition(api.clone(), &name, finished),
        )
        .await
        {
            Err(_) => ProbeOutcome::Fail(format!(
                "Job {namespace}/{name} did not finish within {}",
                humantime::format_duration(timeout)
            )),
            Ok(Ok(Some(j))) => {
                let conds = j.status.and_then(|s| s.conditions).unwrap_or_default();
                match conds
                    .iter()
                    .find(|c| c.status == "True" && (c.type_ == "Complete" || c.type_ == "Failed"))
                {
                    Some(c) if c.type_ == "Complete" => ProbeOutcome::Pass,
                    Some(c) => ProbeOutcome::Fail(format!(
                        "Job {namespace}/{name} failed: {} {}",
                        c.reason.as_deref().unwrap_or(""),
                        c.message.as_deref().unwrap_or("")
                    )),
                    None => ProbeOutcome::Inconclusive("Job finished without a condition".into()),
                }
            }
            Ok(Ok(None)) => {
                ProbeOutcome::Inconclusive(format!("Job {namespace}/{name} was deleted"))
            }
            Ok(Err(e)) => {
                ProbeOutcome::Inconclusive(format!("watching Job {namespace}/{name}: {e}"))
            }
        };
        // Nothing half-done left behind: the Job and its pods go.
        let _ = api.delete(&name, &DeleteParams::background()).await;
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(kind: ProbeKind) -> Probe {
        Probe {
            name: "p".into(),
            kind,
            timeout: Duration::from_millis(300),
            retries: 0,
            when: vec![ProbeWhen::BeforeRun],
            interval: None,
        }
    }

    fn ctx() -> ProbeContext {
        ProbeContext {
            when: ProbeWhen::BeforeRun,
            node: None,
            phase: None,
            run_id: "r1".into(),
        }
    }

    /// A real socket that accepts and never answers.
    fn silent_server() -> (std::net::TcpListener, String) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        (l, url)
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_prometheus_is_inconclusive_but_a_hung_http_check_fails() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (_keep, url) = silent_server();
        let runner = ProbeRunner::new(None, Some(url.clone()), Path::new("/p.toml"));
        let prometheus = probe(ProbeKind::Prometheus {
            query: Some("up".into()),
            min: None,
            max: None,
            alerts_matching: None,
        });
        assert!(
            matches!(runner.run(&prometheus, &ctx()).await, ProbeOutcome::Inconclusive(e) if e.contains("did not answer")),
        );
        let http = probe(ProbeKind::Http {
            url: format!("{url}/health"),
            headers: Default::default(),
            expect_status: 200,
            body_contains: None,
        });
        assert!(matches!(
            runner.run(&http, &ctx()).await,
            ProbeOutcome::Fail(_)
        ));
    }
}
