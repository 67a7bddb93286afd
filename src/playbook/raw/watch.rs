//! Validating what watches the run: probes, gates, the health monitor.

use super::*;

impl Validator<'_> {
    pub(super) fn probes(&mut self, raw: Vec<Spanned<RawProbe>>) -> Vec<Probe> {
        let mut probes = Vec::new();
        let mut names = BTreeSet::new();
        for (i, spanned) in raw.into_iter().enumerate() {
            let p = spanned.into_inner();
            let key = format!("probe[{}]", i + 1);
            let name = p.name.get_ref().trim().to_owned();
            if name.is_empty() {
                self.err_key(
                    p.name.span(),
                    &format!("{key}.name"),
                    "the probe name is empty",
                    None,
                );
            } else if !names.insert(name.clone()) {
                self.err_key(
                    p.name.span(),
                    &format!("{key}.name"),
                    format!("probe name {name:?} is used twice"),
                    "give each probe its own name: gates refer to probes by name".to_owned(),
                );
            }
            let kind_span = p.kind.span();
            let require = |v: &mut Self, present: bool, field: &str, example: &str| {
                if !present {
                    v.err_key(
                        kind_span.clone(),
                        &format!("{key}.{field}"),
                        format!("a {} probe needs `{field}`", p.kind.get_ref()),
                        format!("e.g. {field} = {example}"),
                    );
                }
            };
            let kind = match p.kind.get_ref().as_str() {
                "command" => {
                    require(
                        self,
                        p.command.as_ref().is_some_and(|c| !c.get_ref().is_empty()),
                        "command",
                        "[\"./probes/create-vm.sh\", \"--quick\"]",
                    );
                    Some(ProbeKind::Command {
                        argv: p.command.map(|c| c.into_inner()).unwrap_or_default(),
                    })
                }
                "http" => {
                    require(
                        self,
                        p.url.is_some(),
                        "url",
                        "\"https://api.example.com/healthz\"",
                    );
                    if let Some(url) = &p.url
                        && !(url.get_ref().starts_with("http://")
                            || url.get_ref().starts_with("https://"))
                    {
                        self.err_key(
                            url.span(),
                            &format!("{key}.url"),
                            format!("{:?} is not an http(s) URL", url.get_ref()),
                            "start it with http:// or https://".to_owned(),
                        );
                    }
                    for name in p.headers.keys() {
                        if name.is_empty()
                            || !name
                                .bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
                        {
                            self.err_key(
                                kind_span.clone(),
                                &format!("{key}.headers"),
                                format!("{name:?} is not an HTTP header name"),
                                "use letters, digits, - and _, e.g. headers = { Authorization = \"Bearer ...\" }".to_owned(),
                            );
                        }
                    }
                    Some(ProbeKind::Http {
                        url: p.url.map(|u| u.into_inner()).unwrap_or_default(),
                        headers: p
                            .headers
                            .into_iter()
                            .map(|(k, v)| (k, v.into_inner()))
                            .collect(),
                        expect_status: p.expect_status.unwrap_or(200),
                        body_contains: p.body_contains,
                    })
                }
                "job" => {
                    require(
                        self,
                        p.manifest.is_some(),
                        "manifest",
                        "\"probes/smoke-job.yaml\"",
                    );
                    Some(ProbeKind::Job {
                        manifest: p
                            .manifest
                            .map(|m| PathBuf::from(m.into_inner()))
                            .unwrap_or_default(),
                        namespace: p.namespace.unwrap_or_else(|| "default".into()),
                    })
                }
                "prometheus" => {
                    if p.query.is_some() == p.alerts_matching.is_some() {
                        self.err_key(
                            kind_span.clone(),
                            &key,
                            "a prometheus probe needs exactly one of `query` or `alerts-matching`",
                            "e.g. alerts-matching = \"^(KubePodCrashLooping|TargetDown)$\""
                                .to_owned(),
                        );
                    }
                    if let Some(pattern) = &p.alerts_matching
                        && pattern.get_ref().is_empty()
                    {
                        self.err_key(
                            pattern.span(),
                            &format!("{key}.alerts-matching"),
                            "the alert pattern is empty",
                            "use \".*\" for every alert".to_owned(),
                        );
                    }
                    if let (Some(min), Some(max)) = (p.min, p.max)
                        && min > max
                    {
                        self.err_key(
                            kind_span.clone(),
                            &format!("{key}.min"),
                            format!("min {min} is above max {max}"),
                            None,
                        );
                    }
                    Some(ProbeKind::Prometheus {
                        query: p.query.map(|q| q.into_inner()),
                        min: p.min,
                        max: p.max,
                        alerts_matching: p.alerts_matching.map(|a| a.into_inner()),
                    })
                }
                other => {
                    let hint = match closest(other, &["command", "http", "job", "prometheus"]) {
                        Some(best) => format!("did you mean \"{best}\"?"),
                        None => "use one of: command, http, job, prometheus".into(),
                    };
                    self.err_key(
                        kind_span.clone(),
                        &format!("{key}.kind"),
                        format!("unknown probe kind {other:?}"),
                        hint,
                    );
                    None
                }
            };
            let when_options = [
                ("before-run", ProbeWhen::BeforeRun),
                ("after-drain", ProbeWhen::AfterDrain),
                ("after-command", ProbeWhen::AfterCommand),
                ("after-uncordon", ProbeWhen::AfterUncordon),
                ("after-wave", ProbeWhen::AfterWave),
                ("periodic", ProbeWhen::Periodic),
            ];
            let mut when = Vec::new();
            for w in p.when {
                let span = w.span();
                let before = self.errors.len();
                let value = self.choice(Some(w), ProbeWhen::BeforeRun, &when_options);
                if self.errors.len() == before {
                    when.push(value);
                } else if let Some(e) = self.errors.last_mut() {
                    e.key = format!("{key}.when");
                    let _ = span;
                }
            }
            if when.is_empty() {
                when.push(ProbeWhen::AfterUncordon);
            }
            let interval = p.interval.map(|i| {
                self.duration(
                    Some(i),
                    Duration::from_secs(60),
                    Duration::from_secs(1),
                    MAX_WAIT,
                )
            });
            if when.contains(&ProbeWhen::Periodic) && interval.is_none() {
                self.err_key(
                    kind_span.clone(),
                    &format!("{key}.interval"),
                    format!("probe {name:?} runs periodically but has no interval"),
                    "add e.g. interval = \"1m\"".to_owned(),
                );
            }
            let timeout = self.duration(
                p.timeout,
                Duration::from_secs(60),
                Duration::from_secs(1),
                MAX_WAIT,
            );
            if let Some(kind) = kind {
                probes.push(Probe {
                    name,
                    kind,
                    timeout,
                    retries: p.retries.unwrap_or(0),
                    when,
                    interval,
                });
            }
        }
        probes
    }

    pub(super) fn gates(&mut self, raw: Vec<Spanned<RawGate>>, probes: &[Probe]) -> Vec<Gate> {
        let decisions = [
            ("abort", Decision::Abort),
            ("pause", Decision::Pause),
            ("warn", Decision::Warn),
        ];
        let mut gates = Vec::new();
        for (i, spanned) in raw.into_iter().enumerate() {
            let g = spanned.into_inner();
            let key = format!("gate[{}]", i + 1);
            let s = g.signal.get_ref().trim();
            let signal = match s {
                "pods" => Some(Signal::Pods),
                "pings" => Some(Signal::Pings),
                "nodes" => Some(Signal::Nodes),
                _ => match s.strip_prefix("probe:") {
                    Some(name) if probes.iter().any(|p| p.name == name) => {
                        Some(Signal::Probe(name.to_owned()))
                    }
                    Some(name) => {
                        let names: Vec<&str> = probes.iter().map(|p| p.name.as_str()).collect();
                        let hint = match closest(name, &names) {
                            Some(best) => format!("did you mean \"probe:{best}\"?"),
                            None if names.is_empty() => "define it in a [[probe]] table".into(),
                            None => format!("defined probes: {}", names.join(", ")),
                        };
                        self.err_key(
                            g.signal.span(),
                            &format!("{key}.signal"),
                            format!("gate refers to probe {name:?}, which is not defined"),
                            hint,
                        );
                        None
                    }
                    None => {
                        let hint = match closest(s, &["pods", "pings", "nodes"]) {
                            Some(best) => format!("did you mean \"{best}\"?"),
                            None => "use \"pods\", \"pings\", \"nodes\" or \"probe:NAME\"".into(),
                        };
                        self.err_key(
                            g.signal.span(),
                            &format!("{key}.signal"),
                            format!("unknown gate signal {s:?}"),
                            hint,
                        );
                        None
                    }
                },
            };
            let on_fail = self.choice(g.on_fail, Decision::Abort, &decisions);
            let on_inconclusive = self.choice(g.on_inconclusive, Decision::Pause, &decisions);
            if let Some(signal) = signal {
                gates.push(Gate {
                    signal,
                    on_fail,
                    failure_limit: g.failure_limit.unwrap_or(1).max(1),
                    consecutive_errors: g.consecutive_errors.unwrap_or(3).max(1),
                    on_inconclusive,
                });
            }
        }
        gates
    }

    pub(super) fn monitor(&mut self, raw: RawMonitor) -> MonitorOptions {
        let ping = raw.ping.map(|p| PingOptions {
            selector: self.selector(&p.selector).unwrap_or_default(),
            port: p.port,
            interval: self.duration(
                p.interval,
                Duration::from_secs(10),
                Duration::from_millis(100),
                Duration::from_secs(3600),
            ),
            misses: p.misses.unwrap_or(3).max(1),
        });
        MonitorOptions {
            namespaces: raw.namespaces,
            pod_selector: raw.pod_selector.as_ref().and_then(|s| self.selector(s)),
            node_selector: raw.node_selector.as_ref().and_then(|s| self.selector(s)),
            not_ready_after: self.duration(
                raw.not_ready_after,
                Duration::from_secs(120),
                Duration::from_secs(1),
                MAX_WAIT,
            ),
            pending_after: self.duration(
                raw.pending_after,
                Duration::from_secs(300),
                Duration::from_secs(1),
                MAX_WAIT,
            ),
            blind_after: self.duration(
                raw.blind_after,
                super::DEFAULT_BLIND_AFTER,
                Duration::from_secs(1),
                MAX_WAIT,
            ),
            ping,
        }
    }
}
