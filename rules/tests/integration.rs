//! The policy crate's integration tests, one module per subject, in one
//! binary.

mod cidr_properties;
mod policy_files;
mod policy_parser_fuzz;
