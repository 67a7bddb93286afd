//! SSH destinations come from Node objects (an InternalIP, a hostname, the node's name in the
//! address template): anyone who can write a Node can put text there. Before such text reaches
//! `ssh` it must be an IP address or a DNS name; `-oProxyCommand=...`, spaces, shell
//! metacharacters, `user@host` or a URL never are.

/// The longest DNS name (RFC 1035).
const MAX_NAME: usize = 253;
/// The longest label of a DNS name.
const MAX_LABEL: usize = 63;

/// Ok when `address` is an IPv4 or IPv6 address (bracketed or not) or a DNS name: labels of
/// 1-63 letters, digits, `-` or `_`, not starting or ending with `-`, at most 253 characters in
/// all, an optional final dot. Err says what is wrong, quoting the address (escaped).
pub fn check_address(address: &str) -> Result<(), String> {
    let bad = |why: &str| {
        Err(format!(
            "{address:?} is not a valid SSH destination ({why}): it must be an IP address or a DNS name"
        ))
    };
    if address.is_empty() {
        return bad("empty");
    }
    let unbracketed = address
        .strip_prefix('[')
        .and_then(|a| a.strip_suffix(']'))
        .unwrap_or(address);
    if unbracketed.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    if address.starts_with('-') {
        return bad("it starts with '-', which ssh would read as an option");
    }
    if address.len() > MAX_NAME + 1 {
        return bad("longer than 253 characters");
    }
    if let Some(c) = address
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')))
    {
        return bad(&format!("it holds {c:?}"));
    }
    let name = address.strip_suffix('.').unwrap_or(address);
    for label in name.split('.') {
        if label.is_empty() {
            return bad("an empty label");
        }
        if label.len() > MAX_LABEL {
            return bad("a label longer than 63 characters");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return bad("a label starts or ends with '-'");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_address;

    #[test]
    fn only_ip_addresses_and_dns_names_are_destinations() {
        let long_label = "a".repeat(64);
        let long_name = vec!["abcdefghij"; 26].join(".");
        let cases: &[(&str, bool)] = &[
            ("10.0.0.7", true),
            ("127.0.1.12", true),
            ("fd00::1", true),
            ("[fd00::1]", true),
            ("node-1", true),
            ("node-1.zone-a.example.com", true),
            ("node-1.example.com.", true),
            ("ip-10-0-0-7.ec2.internal", true),
            ("_srv.example", true),
            ("", false),
            ("-oProxyCommand=touch /tmp/pwned", false),
            ("-oProxyCommand=touch", false),
            ("-node", false),
            ("node-.example", false),
            ("node..example", false),
            ("node example", false),
            ("node;reboot", false),
            ("node$(id)", false),
            ("node`id`", false),
            ("node|x", false),
            ("node&x", false),
            ("root@node", false),
            ("ssh://node", false),
            ("node:22", false),
            ("node\nx", false),
            ("nöde", false),
            (&long_label, false),
            (&long_name, false),
        ];
        for (address, ok) in cases {
            assert_eq!(check_address(address).is_ok(), *ok, "{address:?}");
        }
        let why = check_address("-oProxyCommand=touch /tmp/pwned").unwrap_err();
        assert!(
            why.contains("starts with '-'") && why.contains("IP address or a DNS name"),
            "{why}"
        );
    }
}
