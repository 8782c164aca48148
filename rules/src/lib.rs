//! Floodgate's policy model, pure: no I/O beyond what the caller hands in,
//! no async runtime, no AWS.
//!
//! - [`policy`]: the policy file ops edit, validated into a typed [`Policy`]
//!   with every error located to file, line, column and key path.
//! - [`cidr`]: exact CIDR aggregation and a fast longest-prefix lookup.
//! - [`review`]: what `floodgate review` shows ops before they approve a change.
//!
//! # Examples
//!
//! ```
//! use floodgate_rules::Policy;
//! use time::macros::date;
//!
//! let text = "[safety]\nmode = \"observe\"\nmax_new_blocks_per_run = 0\n";
//! let err = Policy::from_toml(text, "floodgate.toml", date!(2026 - 11 - 22)).unwrap_err();
//! assert_eq!(
//!     err.to_string(),
//!     "floodgate.toml:3:26: error: safety.max_new_blocks_per_run: must be at least 1, got 0"
//! );
//! ```

pub mod cidr;
pub mod diagnostic;
pub mod policy;
pub mod review;

pub use diagnostic::{Diagnostic, PolicyError, Severity};
pub use policy::{LoadedPolicy, Policy};
