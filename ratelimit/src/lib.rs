//! Per-tenant rate-limit middleware for tower services, on governor.
//!
//! The layer itself is built under its own issue; this crate exists now so
//! the workspace has its final shape and its quotas come from
//! [`floodgate_rules::policy::Quotas`].
