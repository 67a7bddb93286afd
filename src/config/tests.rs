//! The config's parsing and its error messages.

use super::*;

fn errors(text: &str) -> Vec<String> {
    match Config::parse(Path::new("c.toml"), text) {
        Ok(_) => vec![],
        Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
    }
}

#[test]
fn every_error_names_file_line_key_and_hint() {
    let cases = [
        (
            "[ssh]\nknown_hosts = \"strict\"\n",
            "c.toml:2:1: `ssh.known_hosts`: unknown field `known_hosts`\n  hint: did you mean `known-hosts`?",
        ),
        (
            "[ssh]\nknown-hosts = \"off\"\n",
            "c.toml:2:15: `ssh.known-hosts`: unknown known-hosts policy \"off\"\n  hint: use \"strict\" (default) or \"accept-new\"",
        ),
        (
            "[ssh]\naddress = \"internal_ip\"\n",
            "`ssh.address`: unknown address source \"internal_ip\"\n  hint: did you mean \"internal-ip\"?",
        ),
        (
            "[ssh]\naddress = \"template\"\n",
            "`ssh.address`: address = \"template\" needs `address-template`",
        ),
        (
            "[ssh]\naddress-template = \"node.example\"\n",
            "`ssh.address-template`: the address template does not contain {name}",
        ),
        (
            "[ssh]\nconnect-timeout = \"1h\"\n",
            "`ssh.connect-timeout`: connect-timeout \"1h\" is out of range",
        ),
        (
            "[ssh]\nconnect-timeout = \"soon\"\n",
            "`ssh.connect-timeout`: \"soon\" is not a duration",
        ),
        (
            "[state]\nkeep-runs = 0\n",
            "c.toml:2:13: `state.keep-runs`: keep-runs = 0 is out of range",
        ),
        (
            "[state]\nnamespace = \"Rollgate_System\"\n",
            "c.toml:2:13: `state.namespace`: \"Rollgate_System\" is not a namespace name",
        ),
        (
            "[window]\nstart = \"01:00\"\nend = \"05:00\"\ntimezone = \"Moon/Base\"\n",
            "c.toml:4:12: `window.timezone`: unknown time zone \"Moon/Base\"",
        ),
        (
            "[slack]\nchannel = \"#ops\"\ntoken = \"xoxb-secret\"\n",
            "`slack.token`: Slack tokens are never written in the config file\n  hint: put the token in an environment variable",
        ),
        (
            "[slack]\nchannel = \"#ops\"\n",
            "`slack.channel`: Slack needs `token-env` (a bot token) or `webhook-url-env`",
        ),
        (
            "[slack]\nchannel = \"#ops\"\ntoken-env = \"T\"\napp-token-env = \"A\"\noperators = [\"U012AB3CD\", \"alice\"]\n",
            "c.toml:5:27: `slack.operators`: \"alice\" is not a Slack user or user group ID\n  hint: use IDs, not names",
        ),
        (
            "[slack]\nchannel = \"#ops\"\ntoken-env = \"T\"\napp-token-env = \"A\"\n",
            "`slack.app-token-env`: Slack buttons need `operators`: nobody could pause, resume or abort",
        ),
        (
            "[slack]\nchannel = \"#ops\"\nwebhook-url-env = \"W\"\napp-token-env = \"A\"\noperators = [\"U1A\"]\n",
            "`slack.app-token-env`: Slack buttons need a bot token (`token-env`)",
        ),
        (
            "[slack]\nchannel = \"#ops\"\ntoken-env = \"T\"\noperators = [\"U1A\"]\n",
            "`slack.operators`: `operators` has no effect without `app-token-env`",
        ),
        (
            "[prometheus]\nurl = \"prometheus:9090\"\n",
            "`prometheus.url`: \"prometheus:9090\" is not an http(s) URL",
        ),
        (
            "[metrics]\nlisten = \"localhost\"\n",
            "`metrics.listen`: \"localhost\" is not an address:port",
        ),
        (
            "[log]\nformat = \"yaml\"\n",
            "`log.format`: unknown log format \"yaml\"\n  hint: use \"text\" or \"json\"",
        ),
        (
            "[cluster]\ncontxt = \"prod\"\n",
            "`cluster.contxt`: unknown field `contxt`\n  hint: did you mean `context`?",
        ),
    ];
    for (text, want) in cases {
        let errs = errors(text);
        assert!(
            errs.iter().any(|e| e.contains(want)),
            "want {want:?}\n  in {errs:#?}\n  for:\n{text}"
        );
    }
}

#[test]
fn flags_override_the_file_and_defaults_are_safe() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[cluster]\ncontext = \"from-file\"\n[state]\ndir = \"/var/lib/rollgate\"\n",
    )
    .unwrap();
    let c = Config::load(
        Some(&path),
        &Overrides {
            context: Some("from-flag".into()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(c.context.as_deref(), Some("from-flag"));
    assert_eq!(c.state_dir, PathBuf::from("/var/lib/rollgate"));
    assert_eq!(c.ssh.known_hosts, KnownHostsPolicy::Strict);
    assert_eq!(c.metrics_listen, "127.0.0.1:9797");
    assert_eq!(c.ssh.address, AddressSource::InternalIp);
    let example = Config::load(
        Some(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config.example.toml"
        ))),
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(
        example.slack.unwrap().token_env.as_deref(),
        Some("ROLLGATE_SLACK_TOKEN")
    );
}
