//! The Floodgate responder: the `floodgate` command's library.
//!
//! - [`cli`]: the commands (`check`, `review`).
//! - [`clock`]: the only reader of the system time.
//! - [`policy_file`]: reads the policy file from disk.

pub mod aws;
pub mod cli;
pub mod clock;
pub mod detect;
pub mod loggen;
pub mod policy_file;
pub mod source;
pub mod traffic;
pub mod waflog;
