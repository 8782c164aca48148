//! What the responder's tests share: a moto server per test (and views of it
//! in other accounts), STS refusals in front of it (`sts`), the Cloudflare
//! API fake, WAF and Cloudflare log records, and the pinned tools of the
//! Python venv. The tests that run the `floodgate` binary are in
//! `responder/tests/e2e/`.

pub mod cloudflare;
mod forward;
pub mod managed_keys;
pub mod sts;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root.
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits inside the workspace")
}

/// A program from the Python venv that `scripts/test.sh` creates (moto,
/// cfn-lint). Panics with the fix when it is missing: tests never skip for
/// a missing tool.
pub fn venv_bin(name: &str) -> PathBuf {
    let venv = std::env::var_os("FLOODGATE_VENV")
        .map_or_else(|| workspace_root().join(".venv"), PathBuf::from);
    let program = venv.join("bin").join(name);
    assert!(
        program.exists(),
        "{} is missing: run scripts/test.sh, which installs the pinned test tools",
        program.display()
    );
    program
}

/// Wall-clock milliseconds since the Unix epoch, for data that a real
/// service checks against its own clock (CloudWatch refuses events older
/// than 14 days).
pub fn wall_clock_ms() -> i64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970");
    i64::try_from(since_epoch.as_millis()).expect("milliseconds fit in i64")
}

/// An axum app served on a free loopback port from a thread of its own,
/// so that synchronous and asynchronous tests alike can use it; stopped
/// when dropped. The fakes (`cloudflare`, `sts`) run on it.
pub struct Served {
    /// The port it listens on.
    pub port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Served {
    /// Serves `app` until dropped.
    pub fn start(app: axum::Router) -> Served {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        listener.set_nonblocking(true).expect("non-blocking");
        let port = listener.local_addr().expect("an address").port();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the fake");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("a listener");
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await
                    .expect("the fake serves");
            });
        });
        Served {
            port,
            stop: Some(stop),
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A moto server (a local AWS API emulator) on a free loopback port, from
/// the venv that `scripts/test.sh` creates. Stopped when dropped.
pub struct MotoServer {
    /// The server process; `None` in a view of another account.
    child: Option<std::process::Child>,
    port: u16,
    /// Whose resources the clients act on: moto's default account
    /// (123456789012) for keys it did not issue.
    credentials: aws_credential_types::Credentials,
}

impl MotoServer {
    /// Starts a server and waits until it answers. Panics with the fix when
    /// the venv is missing: tests never skip for a missing tool.
    pub fn start() -> MotoServer {
        let venv = std::env::var_os("FLOODGATE_VENV")
            .map_or_else(|| workspace_root().join(".venv"), PathBuf::from);
        let moto = venv.join("bin/moto_server");
        assert!(
            moto.exists(),
            "{} is missing: run scripts/test.sh, which installs the pinned moto[server]",
            moto.display()
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(&moto)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("moto_server starts");
        let server = MotoServer {
            child: Some(child),
            port,
            credentials: aws_credential_types::Credentials::new(
                "testing", "testing", None, None, "moto",
            ),
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while server.http("GET", "/moto-api/").is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "moto_server did not answer on port {port} within 30 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        server
    }

    /// The same server acting in account `account_id` (12 digits): moto's
    /// STS credentials for a role there, as the responder assumes one.
    pub async fn in_account(&self, account_id: &str) -> MotoServer {
        use aws_credential_types::provider::ProvideCredentials;
        let base = aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .endpoint_url(self.endpoint())
            .credentials_provider(
                aws_credential_types::provider::SharedCredentialsProvider::new(
                    self.credentials.clone(),
                ),
            )
            .time_source(aws_smithy_async::time::SystemTimeSource::new())
            .build();
        let role = format!("arn:aws:iam::{account_id}:role/floodgate-test");
        let credentials = aws_config::sts::AssumeRoleProvider::builder(role)
            .session_name("floodgate-test")
            .configure(&base)
            .build()
            .await
            .provide_credentials()
            .await
            .expect("moto's STS grants every role");
        MotoServer {
            child: None,
            port: self.port,
            credentials,
        }
    }

    /// The endpoint URL to give the AWS SDK.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A CloudWatch Logs client for this server, in `region`, with the
    /// fake credentials moto accepts.
    pub fn logs_client(&self, region: &str) -> aws_sdk_cloudwatchlogs::Client {
        use aws_sdk_cloudwatchlogs::config::{BehaviorVersion, Region};
        let config = aws_sdk_cloudwatchlogs::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(region.to_owned()))
            .endpoint_url(self.endpoint())
            .credentials_provider(self.credentials.clone())
            .build();
        aws_sdk_cloudwatchlogs::Client::from_conf(config)
    }

    /// A WAFv2 client for this server, in `region`, with the fake
    /// credentials moto accepts.
    pub fn wafv2_client(&self, region: &str) -> aws_sdk_wafv2::Client {
        self.wafv2_client_via(&self.endpoint(), region)
    }

    /// A WAFv2 client for this server's account through `endpoint` (a gate
    /// in front of it), in `region`.
    pub fn wafv2_client_via(&self, endpoint: &str, region: &str) -> aws_sdk_wafv2::Client {
        use aws_sdk_wafv2::config::{BehaviorVersion, Region};
        let config = aws_sdk_wafv2::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(region.to_owned()))
            .endpoint_url(endpoint)
            .credentials_provider(self.credentials.clone())
            .build();
        aws_sdk_wafv2::Client::from_conf(config)
    }

    /// A DynamoDB client for this server, in `region`, with the fake
    /// credentials moto accepts.
    pub fn dynamodb_client(&self, region: &str) -> aws_sdk_dynamodb::Client {
        use aws_sdk_dynamodb::config::{BehaviorVersion, Region};
        let config = aws_sdk_dynamodb::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(region.to_owned()))
            .endpoint_url(self.endpoint())
            .credentials_provider(self.credentials.clone())
            .build();
        aws_sdk_dynamodb::Client::from_conf(config)
    }

    /// An S3 client for this server, with buckets addressed by path and
    /// the fake credentials moto accepts.
    pub fn s3_client(&self) -> aws_sdk_s3::Client {
        use aws_sdk_s3::config::{BehaviorVersion, Region};
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("eu-west-1"))
            .endpoint_url(self.endpoint())
            .force_path_style(true)
            .credentials_provider(self.credentials.clone())
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }

    /// Creates a bucket in eu-west-1.
    pub async fn create_bucket(&self, bucket: &str) {
        use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
        self.s3_client()
            .create_bucket()
            .bucket(bucket)
            .create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::EuWest1)
                    .build(),
            )
            .send()
            .await
            .expect("create bucket");
    }

    /// Puts objects (key, body) into a bucket.
    pub async fn put_objects(&self, bucket: &str, objects: Vec<(String, Vec<u8>)>) {
        let client = self.s3_client();
        for (key, body) in objects {
            client
                .put_object()
                .bucket(bucket)
                .key(&key)
                .body(body.into())
                .send()
                .await
                .unwrap_or_else(|e| panic!("put {key}: {e:?}"));
        }
    }

    /// Creates the ledger and lease table as `infra/responder.yaml` does:
    /// a string partition key `pk`, billed per request.
    pub async fn create_ledger_table(&self, region: &str, table: &str) {
        use aws_sdk_dynamodb::types::{
            AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
        };
        self.dynamodb_client(region)
            .create_table()
            .table_name(table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name("pk")
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .unwrap(),
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name("pk")
                    .key_type(KeyType::Hash)
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .expect("moto creates the ledger table");
    }

    /// Creates a WAF log group, with one stream `waf`, in `region`.
    pub async fn create_waf_log_group(&self, region: &str, group: &str) {
        let client = self.logs_client(region);
        client
            .create_log_group()
            .log_group_name(group)
            .send()
            .await
            .expect("moto creates the log group");
        client
            .create_log_stream()
            .log_group_name(group)
            .log_stream_name("waf")
            .send()
            .await
            .expect("moto creates the log stream");
    }

    /// Puts `(timestamp, record)` events into the group's `waf` stream.
    pub async fn put_waf_logs(&self, region: &str, group: &str, mut events: Vec<(i64, String)>) {
        use aws_sdk_cloudwatchlogs::types::InputLogEvent;
        let client = self.logs_client(region);
        events.sort();
        for chunk in events.chunks(5_000) {
            let batch = chunk
                .iter()
                .map(|(ts, message)| {
                    InputLogEvent::builder()
                        .timestamp(*ts)
                        .message(message)
                        .build()
                        .expect("an event has a timestamp and a message")
                })
                .collect();
            client
                .put_log_events()
                .log_group_name(group)
                .log_stream_name("waf")
                .set_log_events(Some(batch))
                .send()
                .await
                .expect("moto takes the log events");
        }
    }

    /// Creates the web ACL `web_acl` in `scope` of `region`, with one COUNT
    /// rate-based rule `rule` on the IP: `limit` requests in `window` s.
    pub async fn create_rate_rule(
        &self,
        region: &str,
        scope: aws_sdk_wafv2::types::Scope,
        web_acl: &str,
        rule: &str,
        limit: i64,
        window: i64,
    ) {
        use aws_sdk_wafv2::types::{
            AllowAction, CountAction, DefaultAction, RateBasedStatement,
            RateBasedStatementAggregateKeyType, Rule, RuleAction, Statement, VisibilityConfig,
        };
        let visibility = |name: &str| {
            VisibilityConfig::builder()
                .sampled_requests_enabled(true)
                .cloud_watch_metrics_enabled(true)
                .metric_name(name)
                .build()
                .expect("a visibility config")
        };
        let rate = RateBasedStatement::builder()
            .limit(limit)
            .evaluation_window_sec(window)
            .aggregate_key_type(RateBasedStatementAggregateKeyType::Ip)
            .build()
            .expect("a rate-based statement");
        let rule = Rule::builder()
            .name(rule)
            .priority(10)
            .statement(Statement::builder().rate_based_statement(rate).build())
            .action(
                RuleAction::builder()
                    .count(CountAction::builder().build())
                    .build(),
            )
            .visibility_config(visibility(rule))
            .build()
            .expect("a rule");
        self.wafv2_client(region)
            .create_web_acl()
            .name(web_acl)
            .scope(scope)
            .default_action(
                DefaultAction::builder()
                    .allow(AllowAction::builder().build())
                    .build(),
            )
            .visibility_config(visibility(web_acl))
            .rules(rule)
            .send()
            .await
            .expect("moto creates the web ACL");
    }

    /// Every address in the IP set `name` of `scope` in `region`.
    pub async fn ip_set(
        &self,
        region: &str,
        scope: aws_sdk_wafv2::types::Scope,
        name: &str,
    ) -> std::collections::BTreeSet<String> {
        let client = self.wafv2_client(region);
        let sets = client
            .list_ip_sets()
            .scope(scope.clone())
            .send()
            .await
            .expect("moto lists IP sets");
        let summary = sets
            .ip_sets()
            .iter()
            .find(|s| s.name() == Some(name))
            .unwrap_or_else(|| panic!("{region} {scope:?} has no IP set {name}"));
        let set = client
            .get_ip_set()
            .scope(scope)
            .name(name)
            .id(summary.id().expect("a listed set has an id"))
            .send()
            .await
            .expect("moto gets the IP set");
        set.ip_set()
            .expect("GetIPSet returns the set")
            .addresses()
            .iter()
            .cloned()
            .collect()
    }

    /// Forgets every resource (`POST /moto-api/reset`).
    pub fn reset(&self) {
        self.http("POST", "/moto-api/reset").expect("moto reset");
    }

    /// A bare HTTP/1.1 request; returns the status line.
    fn http(&self, method: &str, path: &str) -> std::io::Result<String> {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port))?;
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let status = response.lines().next().unwrap_or_default().to_owned();
        if status.contains(" 200") {
            Ok(status)
        } else {
            Err(std::io::Error::other(status))
        }
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One WAF log record: a request from `ip` at `ts` (ms since the epoch).
pub fn waf_record(ts: i64, ip: &str) -> String {
    format!(
        r#"{{"timestamp":{ts},"action":"ALLOW","terminatingRuleId":"Default_Action","httpRequest":{{"clientIp":"{ip}","country":"NL","headers":[],"uri":"/login","httpMethod":"POST"}}}}"#
    )
}

/// The same request as Cloudflare's Logpush writes it (`http_requests`,
/// default `unixnano` timestamps).
pub fn cloudflare_record(ts: i64, ip: &str) -> String {
    format!(
        r#"{{"ClientCountry":"nl","ClientIP":"{ip}","ClientRequestHost":"api.example.com","ClientRequestMethod":"POST","ClientRequestPath":"/login","EdgeStartTimestamp":{},"RayID":"8c5e2f1a7b3d9e04","SecurityAction":""}}"#,
        i128::from(ts) * 1_000_000
    )
}

/// Lines joined with newlines and gzip-compressed, as WAF delivers to S3.
pub fn gzip_lines(lines: &[String]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    for line in lines {
        encoder.write_all(line.as_bytes()).unwrap();
        encoder.write_all(b"\n").unwrap();
    }
    encoder.finish().unwrap()
}

/// `count` requests from `ip`, spread over the four minutes before `now_ms`.
pub fn burst(ip: &str, count: i64, now_ms: i64) -> Vec<(i64, String)> {
    (0..count)
        .map(|i| {
            let ts = now_ms - 240_000 + i * 240_000 / count;
            (ts, waf_record(ts, ip))
        })
        .collect()
}
