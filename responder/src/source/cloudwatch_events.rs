//! Raw CloudWatch Logs events (`FilterLogEvents`, paginated), counted
//! in-process by the same engine as local files. For small log volumes, and
//! the path the end-to-end tests drive against a local emulator.

use aws_sdk_cloudwatchlogs::Client;
use tokio::task::JoinSet;

use super::{LogSource, SourceError};
use crate::aws::{RegionLogs, describe_error};
use crate::traffic::{CountSpec, Stats, Traffic, TrafficCounter};
use crate::waflog;

/// WAF log groups read event by event.
#[derive(Debug, Clone)]
pub struct CloudWatchEventsSource {
    regions: Vec<RegionLogs>,
    page_size: i32,
}

/// Events per FilterLogEvents page: the API's maximum.
const MAX_PAGE_SIZE: i32 = 10_000;

impl CloudWatchEventsSource {
    /// Reads the given log groups, region by region.
    pub fn new(regions: Vec<RegionLogs>) -> Self {
        CloudWatchEventsSource {
            regions,
            page_size: MAX_PAGE_SIZE,
        }
    }

    /// Asks for smaller pages (at most 10,000 events), so tests cross pages.
    pub fn with_page_size(mut self, events: i32) -> Self {
        self.page_size = events.clamp(1, MAX_PAGE_SIZE);
        self
    }
}

/// Every (client, region, log group) to read.
fn groups(regions: &[RegionLogs]) -> impl Iterator<Item = (Client, String, String)> + '_ {
    regions.iter().flat_map(|r| {
        r.log_groups
            .iter()
            .map(|g| (r.client.clone(), r.place.clone(), g.clone()))
    })
}

/// Counts one log group's events in the widest window.
async fn count_group(
    client: Client,
    region: String,
    log_group: String,
    spec: CountSpec,
    page_size: i32,
) -> Result<TrafficCounter, SourceError> {
    let mut counter = TrafficCounter::new(spec.clone());
    let mut pages = client
        .filter_log_events()
        .log_group_name(&log_group)
        // Both bounds are inclusive; the window excludes its start.
        .start_time(spec.start_ms() + 1)
        .end_time(spec.end_ms())
        .limit(page_size)
        .into_paginator()
        .send();
    let mut bytes = 0u64;
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| SourceError::CloudWatch {
            region: region.clone(),
            log_group: log_group.clone(),
            message: describe_error(&e),
        })?;
        for event in page.events() {
            let message = event.message().unwrap_or_default().as_bytes();
            bytes += message.len() as u64;
            counter.add_parsed(waflog::parse_hit_scoped(message, spec.scopes()));
        }
    }
    counter.add_stats(Stats {
        bytes,
        ..Stats::default()
    });
    Ok(counter)
}

impl LogSource for CloudWatchEventsSource {
    async fn count(&self, spec: &CountSpec) -> Result<Traffic, SourceError> {
        let mut tasks = JoinSet::new();
        for (client, region, log_group) in groups(&self.regions) {
            tasks.spawn(count_group(
                client,
                region,
                log_group,
                spec.clone(),
                self.page_size,
            ));
        }
        let mut merged = TrafficCounter::new(spec.clone());
        while let Some(done) = tasks.join_next().await {
            merged.merge(done.expect("log group reader panicked")?);
        }
        Ok(merged.finish())
    }

    async fn newest_timestamp(&self) -> Result<Option<i64>, SourceError> {
        let mut newest = None;
        for (client, region, log_group) in groups(&self.regions) {
            let streams = client
                .describe_log_streams()
                .log_group_name(&log_group)
                .order_by(aws_sdk_cloudwatchlogs::types::OrderBy::LastEventTime)
                .descending(true)
                .limit(1)
                .send()
                .await
                .map_err(|e| SourceError::CloudWatch {
                    region: region.clone(),
                    log_group: log_group.clone(),
                    message: describe_error(&e),
                })?;
            let last = streams
                .log_streams()
                .iter()
                .filter_map(|s| s.last_event_timestamp())
                .max();
            newest = newest.max(last);
        }
        Ok(newest)
    }
}
