//! JSON text built from `serde_json::Value`s, with object keys in sorted
//! order whatever serde_json's features are.
//!
//! serde_json keeps a `Value`'s keys sorted unless its `preserve_order`
//! feature is on, and features are unified across a build: a dependency of
//! the embedding program, or of the tests, can turn it on. Sorting here
//! keeps the reports, templates and metric lines byte for byte the same in
//! every build.

use serde_json::Value;

/// `value` as indented JSON, keys sorted.
pub(crate) fn pretty(mut value: Value) -> String {
    value.sort_all_objects();
    serde_json::to_string_pretty(&value).expect("a Value always serializes")
}

/// `value` as one line of JSON, keys sorted.
pub(crate) fn line(mut value: Value) -> String {
    value.sort_all_objects();
    value.to_string()
}
