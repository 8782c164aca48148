//! The responder's integration tests, one module per component, in one
//! binary: each test binary links the AWS SDK again, so one binary saves a
//! link per file. `e2e` runs the real `floodgate` binary.

mod cloudflare_logs;
mod cloudflare_target;
mod cloudwatch_events;
mod cloudwatch_insights;
mod cycle;
mod dynamodb_faults;
mod dynamodb_moto;
mod e2e;
mod fast;
mod file_source;
mod file_target;
mod lease_model;
mod plan_properties;
mod s3_faults;
mod s3_source;
mod waf_records;
mod wafv2_faults;
mod wafv2_moto;
