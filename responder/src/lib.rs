//! The Floodgate responder: the `floodgate` command's library.
//!
//! - [`cli`]: the commands (`check`, `review`).
//! - [`clock`]: the only reader of the system time.
//! - [`policy_file`]: reads the policy file from disk.

pub mod cli;
pub mod clock;
pub mod policy_file;
