//! Floodgate's layer next to tower_governor, timed in alternation.
//!
//! This machine's speed drifts by 10–20% between runs and within one, which
//! is as much as the difference being measured. So instead of timing each
//! contender in its own stretch (as criterion does), this bench times a
//! batch of each in turn, round after round, rotating who goes first, and
//! reports medians over the rounds: drift hits every contender alike.
//!
//! ```text
//! taskset -c 1 cargo bench -p floodgate-ratelimit --bench paired [-- ROUNDS]
//! ```
//!
//! A batch is 256 requests (as in the criterion bench) from clients picked
//! with a fixed stride, built before the clock starts; the time covers
//! calling the service, polling its future and dropping the response. Each
//! client count runs twice: with busy keys, which both layers keep, and with
//! keys that go idle at once, which Floodgate's store evicts and takes back
//! (see `contenders::Keys`).
//!
//! Each layer runs with its default headers: Floodgate's RateLimit fields
//! only near a limit, which no client here comes to; tower_governor's none.

// A bench binary, not a library.
#![allow(missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

// Shared with the layer bench, which alone measures route classes.
#[allow(dead_code)]
mod contenders;

use std::time::{Duration, Instant};

use axum::body::Body;
use contenders::{Keys, call, client, request, warm};
use floodgate_ratelimit::HeaderMode;
use http::{Request, Response};
use tower::Service;

const BATCH: usize = 256;
const DEFAULT_ROUNDS: usize = 3000;

/// Times one batch of requests through one service.
type Timed<'a> = Box<dyn FnMut(Vec<Request<Body>>) -> Duration + 'a>;

fn timed<'a, S, B>(mut service: S, clients: usize) -> Timed<'a>
where
    S: Service<Request<Body>, Response = Response<B>> + 'a,
{
    warm(&mut service, clients);
    Box::new(move |batch| {
        let start = Instant::now();
        for request in batch {
            std::hint::black_box(call(&mut service, request).status());
        }
        start.elapsed()
    })
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; the first number, if any, is the rounds.
    let rounds = std::env::args()
        .skip(1)
        .find_map(|arg| arg.parse().ok())
        .unwrap_or(DEFAULT_ROUNDS);
    println!("{rounds} rounds of {BATCH} requests per contender, alternating");
    for keys in [Keys::Busy, Keys::IdleAtOnce] {
        println!("\n{}:", keys.name());
        println!(
            "{:>9}  {:>9}  {:>9}  {:>14}  {:>9}  {:>16}  {:>16}",
            "clients",
            "no_layer",
            "floodgate",
            "tower_governor",
            "ratio",
            "floodgate extra",
            "governor extra"
        );
        for clients in [1, 10_000, 1_000_000] {
            compare(clients, keys, rounds);
        }
    }
    println!(
        "\nratio: the median over rounds of floodgate's time / tower_governor's in that round"
    );
}

/// Times the three contenders in alternation over `clients` clients, and
/// prints one row.
fn compare(clients: usize, keys: Keys, rounds: usize) {
    let mut services: [Timed; 3] = [
        timed(contenders::noop(), clients),
        timed(
            contenders::floodgate(clients, HeaderMode::default(), keys),
            clients,
        ),
        timed(contenders::tower_governor(keys), clients),
    ];
    let mut nanos = vec![Vec::with_capacity(rounds); services.len()];
    let mut ratios = Vec::with_capacity(rounds);
    let mut next = 0usize;
    for round in 0..rounds {
        let mut this_round = [0.0; 3];
        for turn in 0..services.len() {
            let which = (round + turn) % services.len();
            let batch: Vec<_> = (0..BATCH)
                .map(|_| {
                    next = (next + 7_919) % clients;
                    request(client(next))
                })
                .collect();
            let elapsed = (services[which])(batch);
            this_round[which] = elapsed.as_nanos() as f64 / BATCH as f64;
        }
        for (series, value) in nanos.iter_mut().zip(this_round) {
            series.push(value);
        }
        ratios.push(this_round[1] / this_round[2]);
    }
    let [none, ours, theirs] = [0, 1, 2].map(|i| median(&mut nanos[i]));
    println!(
        "{:>9}  {:>7.1}ns  {:>7.1}ns  {:>12.1}ns  {:>8.3}×  {:>14.1}ns  {:>14.1}ns",
        clients,
        none,
        ours,
        theirs,
        median(&mut ratios),
        ours - none,
        theirs - none
    );
}
