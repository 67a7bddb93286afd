//! Validating what is done to the nodes: phases and waves, the drain, the remote command.

use super::*;

impl Validator<'_> {
    pub(super) fn phases(&mut self, raw: Vec<Spanned<RawPhase>>) -> Vec<Phase> {
        if raw.is_empty() {
            self.errors.push(SourceError {
                file: self.src.path.to_path_buf(),
                line: 0,
                column: 0,
                key: "phase".into(),
                message: "the playbook has no phases".into(),
                hint: Some("add at least one:\n  [[phase]]\n  name = \"workers\"\n  selector = \"!node-role.kubernetes.io/control-plane\"".into()),
            });
        }
        let mut phases = Vec::new();
        let mut seen_names: HashMap<String, usize> = HashMap::new();
        let mut seen_nodes: HashMap<String, String> = HashMap::new();
        let mut seen_selectors: HashMap<String, String> = HashMap::new();
        for (i, spanned) in raw.into_iter().enumerate() {
            let whole = spanned.span();
            let p = spanned.into_inner();
            let key = format!("phase[{}]", i + 1);
            let name = p.name.get_ref().trim().to_owned();
            if name.is_empty() {
                self.err_key(
                    p.name.span(),
                    &format!("{key}.name"),
                    "the phase name is empty",
                    None,
                );
            } else if let Some(first) = seen_names.insert(name.clone(), i + 1) {
                self.err_key(
                    p.name.span(),
                    &format!("{key}.name"),
                    format!("phase name {name:?} is used twice (also phase[{first}])"),
                    "give each phase its own name".to_owned(),
                );
            }
            let selection = match (&p.selector, &p.nodes) {
                (Some(_), Some(n)) => {
                    self.err_key(
                        n.span(),
                        &format!("{key}.nodes"),
                        "a phase selects nodes by `selector` or by `nodes`, not both",
                        "keep one of them".to_owned(),
                    );
                    None
                }
                (None, None) => {
                    self.err_key(
                        whole.clone(),
                        &key,
                        format!("phase {name:?} selects no nodes"),
                        "add `selector = \"role=worker\"` or `nodes = [\"node-1\"]`".to_owned(),
                    );
                    None
                }
                (Some(sel), None) => {
                    if let Some(other) =
                        seen_selectors.insert(sel.get_ref().trim().to_owned(), name.clone())
                    {
                        self.err_key(
                            sel.span(),
                            &format!("{key}.selector"),
                            format!("phases {other:?} and {name:?} use the same selector"),
                            "a node is upgraded by one phase only: make the selectors disjoint"
                                .to_owned(),
                        );
                    }
                    self.selector(sel).map(NodeSelection::Selector)
                }
                (None, Some(nodes)) => {
                    if nodes.get_ref().is_empty() {
                        self.err_key(
                            nodes.span(),
                            &format!("{key}.nodes"),
                            format!("phase {name:?} has an empty node list"),
                            "list node names, or use `selector`".to_owned(),
                        );
                    }
                    for node in nodes.get_ref() {
                        if let Some(other) = seen_nodes.insert(node.clone(), name.clone()) {
                            let msg = if other == name {
                                format!("node {node:?} is listed twice in phase {name:?}")
                            } else {
                                format!(
                                    "node {node:?} is selected by phases {other:?} and {name:?}"
                                )
                            };
                            self.err_key(
                                nodes.span(),
                                &format!("{key}.nodes"),
                                msg,
                                "a node is upgraded once: keep it in one phase".to_owned(),
                            );
                        }
                    }
                    Some(NodeSelection::Names(nodes.get_ref().clone()))
                }
            };
            let concurrency = match &p.concurrency {
                None => 1,
                Some(c) if *c.get_ref() < 1 => {
                    self.err_key(
                        c.span(),
                        &format!("{key}.concurrency"),
                        format!("concurrency must be at least 1, not {}", c.get_ref()),
                        "1 upgrades one node at a time".to_owned(),
                    );
                    1
                }
                Some(c) if *c.get_ref() > 1000 => {
                    self.err_key(
                        c.span(),
                        &format!("{key}.concurrency"),
                        format!("concurrency {} is out of range", c.get_ref()),
                        "use a value between 1 and 1000".to_owned(),
                    );
                    1
                }
                Some(c) => *c.get_ref() as usize,
            };
            let order = match &p.order {
                None => Ordering::AsListed,
                Some(o) => match o.get_ref().as_str() {
                    "as-listed" => Ordering::AsListed,
                    "name" => Ordering::ByName,
                    other => match other.strip_prefix("label:") {
                        Some(label) if !label.trim().is_empty() => {
                            Ordering::ByLabel(label.trim().to_owned())
                        }
                        _ => {
                            self.err_key(o.span(), &format!("{key}.order"), format!("unknown order {other:?}"), "use \"as-listed\", \"name\" or \"label:KEY\" (e.g. \"label:topology.kubernetes.io/zone\" for zone by zone)".to_owned());
                            Ordering::AsListed
                        }
                    },
                },
            };
            if let Some(selection) = selection {
                phases.push(Phase {
                    name,
                    selection,
                    concurrency,
                    order,
                    failure_budget: p.failure_budget.unwrap_or(0),
                });
            }
        }
        phases
    }

    pub(super) fn drain(&mut self, raw: RawDrain) -> DrainOptions {
        let eviction_concurrency = match raw.eviction_concurrency {
            None => 16,
            Some(c) if (1..=256).contains(c.get_ref()) => *c.get_ref() as usize,
            Some(c) => {
                self.err(
                    c.span(),
                    format!("eviction-concurrency {} is out of range", c.get_ref()),
                    "use a value between 1 and 256".to_owned(),
                );
                16
            }
        };
        DrainOptions {
            timeout: self.duration(
                raw.timeout,
                Duration::from_secs(300),
                Duration::from_secs(1),
                MAX_WAIT,
            ),
            grace_period: raw.grace_period.map(|g| {
                self.duration(
                    Some(g),
                    Duration::ZERO,
                    Duration::ZERO,
                    Duration::from_secs(3600),
                )
            }),
            delete_emptydir_data: raw.delete_emptydir_data.unwrap_or(false),
            ignore_daemonsets: raw.ignore_daemonsets.unwrap_or(true),
            force: raw.force.unwrap_or(false),
            pod_selector: raw.pod_selector.as_ref().and_then(|s| self.selector(s)),
            on_pdb_timeout: self.choice(
                raw.on_pdb_timeout,
                PdbTimeoutPolicy::Fail,
                &[
                    ("fail", PdbTimeoutPolicy::Fail),
                    ("disable-eviction", PdbTimeoutPolicy::DisableEviction),
                    ("skip", PdbTimeoutPolicy::Skip),
                ],
            ),
            eviction_concurrency,
        }
    }

    pub(super) fn command(&mut self, raw: Spanned<RawCommand>) -> RemoteCommand {
        let c = raw.into_inner();
        if c.run.get_ref().trim().is_empty() {
            self.err(
                c.run.span(),
                "the remote command is empty",
                "e.g. run = \"sudo chef-client -o 'role[k8s-node]'\"".to_owned(),
            );
        }
        for key in c.env.keys() {
            if !is_env_name(key) {
                self.errors.push(self.src.error_key(
                    Some(c.run.span()),
                    &format!("command.env.{key}"),
                    format!("{key:?} is not a valid environment variable name"),
                    Some("use letters, digits and _".into()),
                ));
            }
        }
        let mut env_from_runner: Vec<RunnerVar> = Vec::new();
        for var in c.env_from_runner {
            let name = var.get_ref().clone();
            let problem = if !is_env_name(&name) {
                Some((
                    format!("{name:?} is not a valid environment variable name"),
                    "use letters, digits and _ (not starting with a digit)".to_owned(),
                ))
            } else if name.starts_with("ROLLGATE_") {
                Some((
                    format!("{name} is a name rollgate sets itself (node facts are ROLLGATE_*)"),
                    "pass the secret under another name".to_owned(),
                ))
            } else if c.env.contains_key(&name) {
                Some((
                    format!("{name} is both in env and in env-from-runner"),
                    "keep it in env-from-runner only (a secret's value never belongs in the playbook)".to_owned(),
                ))
            } else if env_from_runner.iter().any(|v| v.name == name) {
                Some((
                    format!("{name} is named twice in env-from-runner"),
                    "name each variable once".to_owned(),
                ))
            } else {
                None
            };
            if let Some((message, hint)) = problem {
                self.errors.push(self.src.error_key(
                    Some(var.span()),
                    "command.env-from-runner",
                    message,
                    Some(hint),
                ));
                continue;
            }
            let (line, column) = self.src.line_col(var.span().start);
            env_from_runner.push(RunnerVar { name, line, column });
        }
        RemoteCommand {
            env_from_runner,
            secret_env: SecretEnv::default(),
            run: c.run.into_inner(),
            user: c.user,
            timeout: self.duration(
                c.timeout,
                Duration::from_secs(1800),
                Duration::from_secs(1),
                MAX_WAIT,
            ),
            env: c
                .env
                .into_iter()
                .map(|(k, v)| (k, v.into_inner()))
                .collect(),
            safe_to_rerun: c.safe_to_rerun,
            sudo: c.sudo,
        }
    }
}

/// An environment variable name: letters, digits and `_`, not starting with a digit.
fn is_env_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
        && !name.starts_with(|ch: char| ch.is_ascii_digit())
}
