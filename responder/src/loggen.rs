//! A deterministic generator of realistic AWS WAF logs, or of the same
//! requests as Cloudflare's request logs, for tests, benchmarks and the demo.
//!
//! WAF records follow the documented WAF log format (field names and order
//! as WAF writes them, one compact JSON object per line). Cloudflare records
//! follow Logpush's `http_requests` dataset as NDJSON, with the fields in
//! name order as Logpush writes them and `EdgeStartTimestamp` in the chosen
//! [`Timestamps`] format. One spec gives the same requests in either format. Benign traffic from
//! many IPs and tenants is mixed with attack scenarios:
//! - a single-IP flood;
//! - a distributed flood (many IPs at a moderate rate each);
//! - an IPv6 flood;
//! - an IPv6 rotation: 60 addresses of one /64, each far below any tier;
//! - a login flood: one address at 5 `POST /login` a second, below the
//!   tiers sized for the whole API;
//! - a heavy NATed corporate range, which the example policy allow-lists.
//!
//! The same [`LogSpec`] always produces the same bytes.
//!
//! # Examples
//!
//! ```
//! use floodgate_responder::loggen::{LogSpec, generate};
//!
//! let spec = LogSpec { benign_records: 100, minutes: 1, ..LogSpec::default() };
//! let mut out = Vec::new();
//! let summary = generate(&spec, &mut out).unwrap();
//! assert_eq!(out.iter().filter(|&&b| b == b'\n').count() as u64, summary.records);
//! ```

use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use floodgate_rules::policy::LogFormat;

use crate::waflog::Action;

/// What to generate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSpec {
    /// Seed of the pseudo-random choices.
    pub seed: u64,
    /// First second of the logs, in ms since the epoch.
    pub start_ms: i64,
    /// How many minutes of traffic.
    pub minutes: u32,
    /// Benign records over the whole period.
    pub benign_records: u64,
    /// Distinct benign client IPs.
    pub benign_ips: u32,
    /// Include the attack scenarios.
    pub attacks: bool,
    /// What the records look like: WAF's (the default) or Cloudflare's.
    pub format: LogFormat,
    /// How Cloudflare records write their times.
    pub timestamps: Timestamps,
}

/// Logpush's `timestamp_format`s (Cloudflare docs, "Log Output Options"),
/// by the names Logpush gives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Timestamps {
    /// Nanoseconds since the epoch, as an integer (Logpush's default).
    #[default]
    #[value(name = "unixnano")]
    UnixNano,
    /// Seconds since the epoch, as an integer.
    Unix,
    /// An RFC 3339 string, to the second.
    Rfc3339,
}

impl Default for LogSpec {
    fn default() -> Self {
        LogSpec {
            seed: 42,
            // 2026-11-20T10:00:00Z
            start_ms: 1_795_168_800_000,
            minutes: 5,
            benign_records: 10_000,
            benign_ips: 5_000,
            attacks: true,
            format: LogFormat::Waf,
            timestamps: Timestamps::UnixNano,
        }
    }
}

/// The attack scenarios' sources, for tests that check what detection finds.
pub mod scenario {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    /// The single-IP flood: 20 requests a second.
    pub const SINGLE_FLOOD_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 66));
    /// The distributed flood: 203.0.113.128 to .143 (16 IPs), 7 requests a second each.
    pub const DISTRIBUTED_FIRST: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 128);
    /// How many IPs the distributed flood uses.
    pub const DISTRIBUTED_IPS: u8 = 16;
    /// The IPv6 flood: 10 requests a second.
    pub const IPV6_FLOOD_IP: IpAddr =
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xbad, 0, 0, 0, 0, 0x66));
    /// The IPv6 rotation's /64: 8 requests a second in all, spread over
    /// [`ROTATION_ADDRESSES`] addresses `2001:db8:64:64::1` and up.
    pub const ROTATION_PREFIX: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x64, 0x64, 0, 0, 0, 0);
    /// How many addresses of its /64 the rotation uses.
    pub const ROTATION_ADDRESSES: u16 = 60;
    /// The login flood: 5 `POST /login` a second.
    pub const LOGIN_FLOOD_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 44));
    /// The path the login flood hammers.
    pub const LOGIN_PATH: &str = "/login";
    /// The NATed corporate range (allow-listed in the example policy):
    /// 198.51.100.1 to .5, 8 requests a second each.
    pub const CORPORATE_FIRST: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
    /// How many IPs the corporate NAT uses.
    pub const CORPORATE_IPS: u8 = 5;
}

/// What was generated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    /// Records written.
    pub records: u64,
    /// Bytes written.
    pub bytes: u64,
}

/// The records of `spec`, one per element, without their newlines: for
/// tests and small demos.
pub fn records(spec: &LogSpec) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    generate(spec, &mut out).expect("writing to memory cannot fail");
    out.split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

/// SplitMix64: small, fast, and the same everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

const COUNTRIES: [&str; 8] = ["US", "DE", "NL", "GB", "FR", "JP", "BR", "IN"];
const URIS: [&str; 6] = [
    "/v1/orders",
    "/v1/items",
    "/v1/search",
    "/login",
    "/v1/cart",
    "/health",
];
const METHODS: [&str; 4] = ["GET", "GET", "POST", "PUT"];
const AGENTS: [&str; 3] = [
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "okhttp/4.12.0",
];

/// One request to write.
struct Request {
    timestamp_ms: i64,
    ip: IpAddr,
    action: Action,
    tenant: u32,
    /// A fixed method and path, or a random one.
    route: Option<(&'static str, &'static str)>,
}

/// Writes the logs of `spec` to `out`, in time order.
pub fn generate(spec: &LogSpec, out: &mut impl Write) -> io::Result<Summary> {
    let mut rng = Rng(spec.seed);
    let mut summary = Summary::default();
    let seconds = u64::from(spec.minutes) * 60;
    let mut line = String::with_capacity(2048);
    let mut batch = Vec::new();
    for second in 0..seconds {
        let second_start = spec.start_ms + second as i64 * 1000;
        batch.clear();
        // Spread the benign budget evenly, the remainder over the first seconds.
        let benign =
            spec.benign_records / seconds + u64::from(second < spec.benign_records % seconds);
        for _ in 0..benign {
            let ip = benign_ip(&mut rng, spec.benign_ips);
            batch.push(Request {
                timestamp_ms: second_start + rng.below(1000) as i64,
                ip,
                action: Action::Allow,
                tenant: rng.below(500) as u32,
                route: None,
            });
        }
        if spec.attacks {
            attack_second(&mut rng, second, second_start, &mut batch);
        }
        batch.sort_by_key(|r| r.timestamp_ms);
        for request in &batch {
            line.clear();
            match spec.format {
                LogFormat::Waf => write_record(&mut rng, request, &mut line),
                LogFormat::Cloudflare => {
                    write_cloudflare_record(&mut rng, request, spec.timestamps, &mut line);
                }
            }
            out.write_all(line.as_bytes())?;
            summary.records += 1;
            summary.bytes += line.len() as u64;
        }
    }
    out.flush()?;
    Ok(summary)
}

/// Benign clients: mostly IPv4 across public space, some IPv6.
fn benign_ip(rng: &mut Rng, distinct: u32) -> IpAddr {
    let n = rng.below(u64::from(distinct.max(1))) as u32;
    // A fixed bijection from client number to address, so the same client
    // keeps its address.
    let mixed = n.wrapping_mul(0x9e37_79b1).rotate_left(7) ^ 0x5bd1_e995;
    if n % 10 == 9 {
        IpAddr::V6(Ipv6Addr::new(
            0x2a02,
            0x0c7c,
            (mixed >> 16) as u16,
            mixed as u16,
            0,
            0,
            0,
            1,
        ))
    } else {
        // Keep clear of the documentation ranges the scenarios use.
        let octets = mixed.to_be_bytes();
        IpAddr::V4(Ipv4Addr::new(
            11 + octets[0] % 200,
            octets[1],
            octets[2],
            octets[3],
        ))
    }
}

fn attack_second(rng: &mut Rng, second: u64, second_start: i64, batch: &mut Vec<Request>) {
    let burst = |ip: IpAddr, per_second: u64, batch: &mut Vec<Request>, rng: &mut Rng| {
        for _ in 0..per_second {
            batch.push(Request {
                timestamp_ms: second_start + rng.below(1000) as i64,
                ip,
                // The WAF's own rate rule starts blocking after a while.
                action: if second >= 100 {
                    Action::Block
                } else {
                    Action::Allow
                },
                tenant: 7,
                route: None,
            });
        }
    };
    burst(scenario::SINGLE_FLOOD_IP, 20, batch, rng);
    for i in 0..scenario::DISTRIBUTED_IPS {
        let ip = IpAddr::V4(Ipv4Addr::from_bits(
            scenario::DISTRIBUTED_FIRST.to_bits() + u32::from(i),
        ));
        burst(ip, 7, batch, rng);
    }
    burst(scenario::IPV6_FLOOD_IP, 10, batch, rng);
    for _ in 0..8 {
        let host = 1 + rng.below(u64::from(scenario::ROTATION_ADDRESSES)) as u128;
        batch.push(Request {
            timestamp_ms: second_start + rng.below(1000) as i64,
            ip: IpAddr::V6(Ipv6Addr::from_bits(
                scenario::ROTATION_PREFIX.to_bits() | host,
            )),
            action: Action::Allow,
            tenant: 9,
            route: None,
        });
    }
    for _ in 0..5 {
        batch.push(Request {
            timestamp_ms: second_start + rng.below(1000) as i64,
            ip: scenario::LOGIN_FLOOD_IP,
            action: Action::Allow,
            tenant: 11,
            route: Some(("POST", scenario::LOGIN_PATH)),
        });
    }
    for i in 0..scenario::CORPORATE_IPS {
        let ip = IpAddr::V4(Ipv4Addr::from_bits(
            scenario::CORPORATE_FIRST.to_bits() + u32::from(i),
        ));
        for _ in 0..8 {
            batch.push(Request {
                timestamp_ms: second_start + rng.below(1000) as i64,
                ip,
                action: Action::Allow,
                tenant: 1,
                route: None,
            });
        }
    }
}

/// One record as WAF writes it.
fn write_record(rng: &mut Rng, request: &Request, line: &mut String) {
    use std::fmt::Write as _;
    let blocked = request.action == Action::Block;
    let (rule_id, rule_type) = if blocked {
        ("RateLimit-Block", "RATE_BASED")
    } else {
        ("Default_Action", "REGULAR")
    };
    let rate_based = if blocked {
        r#"[{"rateBasedRuleId":"arn:aws:wafv2:us-east-1:111122223333:regional/ratebasedrule/RateLimit-Block/7c5e2f1a","rateBasedRuleName":"RateLimit-Block","limitKey":"IP","maxRateAllowed":2000,"evaluationWindowSec":"300"}]"#
    } else {
        "[]"
    };
    let (method, uri) = match request.route {
        Some(route) => route,
        None => {
            let uri = *rng.pick(&URIS);
            (*rng.pick(&METHODS), uri)
        }
    };
    let labels = if blocked {
        r#","labels":[{"name":"awswaf:111122223333:webacl:floodgate-demo:rule:RateLimit-Block"}]"#
    } else {
        ""
    };
    let _ = write!(
        line,
        concat!(
            r#"{{"timestamp":{},"formatVersion":1,"webaclId":"arn:aws:wafv2:us-east-1:111122223333:regional/webacl/floodgate-demo/3f1c9a2e-5b7d-4e60-9a51-2d8c0e4b7f10","#,
            r#""terminatingRuleId":"{}","terminatingRuleType":"{}","action":"{}","terminatingRuleMatchDetails":[],"#,
            r#""httpSourceName":"ALB","httpSourceId":"111122223333-app/floodgate-demo/8f2b6c1d9e3a4f57","#,
            r#""ruleGroupList":[{{"ruleGroupId":"AWS#AWSManagedRulesAmazonIpReputationList","terminatingRule":null,"nonTerminatingMatchingRules":[],"excludedRules":null,"customerConfig":null}}],"#,
            r#""rateBasedRuleList":{},"nonTerminatingMatchingRules":[],"requestHeadersInserted":null,"responseCodeSent":null,"#,
            r#""httpRequest":{{"clientIp":"{}","country":"{}","headers":[{{"name":"host","value":"api.example.com"}},"#,
            r#"{{"name":"user-agent","value":"{}"}},{{"name":"accept","value":"application/json"}},"#,
            r#"{{"name":"x-tenant-id","value":"tenant-{:04}"}}],"uri":"{}","args":"page={}","httpVersion":"HTTP/2.0","httpMethod":"{}","requestId":"1-{:08x}-{:024x}"}}{}}}"#,
            "\n"
        ),
        request.timestamp_ms,
        rule_id,
        rule_type,
        request.action,
        rate_based,
        request.ip,
        rng.pick(&COUNTRIES),
        rng.pick(&AGENTS),
        request.tenant,
        uri,
        rng.below(20),
        method,
        request.timestamp_ms / 1000,
        u128::from(rng.next()) << 32 | u128::from(rng.next() as u32),
        labels,
    );
}

/// The same request as Cloudflare's Logpush writes it, drawing the same
/// random choices in the same order as [`write_record`], so that one spec
/// gives the same requests in either format.
fn write_cloudflare_record(
    rng: &mut Rng,
    request: &Request,
    timestamps: Timestamps,
    line: &mut String,
) {
    use std::fmt::Write as _;
    let blocked = request.action == Action::Block;
    let (method, path) = match request.route {
        Some(route) => route,
        None => {
            let path = *rng.pick(&URIS);
            (*rng.pick(&METHODS), path)
        }
    };
    let country = rng.pick(&COUNTRIES).to_ascii_lowercase();
    let agent = rng.pick(&AGENTS);
    let page = rng.below(20);
    let ray_id = rng.next();
    let port = 1024 + rng.next() % 60_000;
    let ms = request.timestamp_ms;
    let time = |ms: i64| match timestamps {
        Timestamps::UnixNano => (i128::from(ms) * 1_000_000).to_string(),
        Timestamps::Unix => ms.div_euclid(1000).to_string(),
        Timestamps::Rfc3339 => format!(
            "\"{}\"",
            crate::clock::rfc3339_from_ms(ms - ms.rem_euclid(1000))
        ),
    };
    let (security_action, rule, status) = if blocked {
        ("block", "floodgate-rate-limit", 429)
    } else {
        ("", "", 200)
    };
    let _ = write!(
        line,
        concat!(
            r#"{{"ClientCountry":"{}","ClientIP":"{}","ClientRequestHost":"api.example.com","#,
            r#""ClientRequestMethod":"{}","ClientRequestPath":"{}","ClientRequestProtocol":"HTTP/2","#,
            r#""ClientRequestURI":"{}?page={}","ClientRequestUserAgent":"{}","ClientSrcPort":{},"#,
            r#""EdgeEndTimestamp":{},"EdgeResponseBytes":{},"EdgeResponseStatus":{},"EdgeStartTimestamp":{},"#,
            r#""RayID":"{:016x}","SecurityAction":"{}","SecurityRuleID":"{}","ZoneName":"example.com"}}"#,
            "\n"
        ),
        country,
        request.ip,
        method,
        path,
        path,
        page,
        agent,
        port,
        time(ms + 20),
        if blocked { 120 } else { 1840 + page * 7 },
        status,
        time(ms),
        ray_id,
        security_action,
        rule,
    );
}
