//! Shared by the integration tests, the benches and the examples.

use floodgate_rules::Policy;
use floodgate_rules::policy::Quotas;

/// The `[quotas]` of a policy text that must be valid.
pub fn quotas(text: &str) -> Quotas {
    let today = time::macros::date!(2026 - 11 - 22);
    Policy::from_toml(text, "test.toml", today)
        .expect("valid policy")
        .policy
        .quotas
        .expect("has [quotas]")
}
