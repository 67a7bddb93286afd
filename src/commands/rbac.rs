//! `rollgate rbac`: prints the shipped RBAC (the table in [`crate::rbac`]) for a namespace and a
//! name; `deploy/rbac.yaml` is its output with the defaults.

use super::Failure;
use crate::cli::RbacArgs;
use crate::config::{Config, valid_namespace};
use crate::exit;

pub fn run(config: Config, args: &RbacArgs) -> Result<u8, Failure> {
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| config.state_namespace.clone());
    for (what, value) in std::iter::once(("--namespace", &namespace))
        .chain(std::iter::once(("--name", &args.name)))
        .chain(
            args.job_probe_namespace
                .iter()
                .map(|n| ("--job-probe-namespace", n)),
        )
    {
        if !valid_namespace(value) {
            return Err(Failure::new(
                exit::BAD_INPUT,
                format!(
                    "error: {what} {value:?} is not a valid name\n  hint: lower-case letters, digits and '-', at most 63 characters"
                ),
            ));
        }
    }
    let mut options = crate::rbac::Options::new(&namespace, &args.name);
    options.read_only = args.read_only;
    options.control = args.control;
    options.disable_eviction = args.disable_eviction;
    options.job_probe_namespaces = args.job_probe_namespace.clone();
    print!("{}", crate::rbac::render(&options));
    Ok(exit::OK)
}
