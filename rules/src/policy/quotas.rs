//! Tenant quotas for the rate-limit middleware: plans with one or more
//! limits, a default plan, and per-tenant overrides that ops approved.

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroU32;
use std::path::PathBuf;

use time::Date;
use toml::Spanned;

use super::check::{Checker, UrlRules};
use super::raw::{RawClasses, RawLimit, RawOverride, RawPlan, RawQuotas, RawRedis, RawRoute};
use super::routes::{ClassName, Route, check_class_name, check_route, is_valid_name};
use crate::diagnostic::closest;

/// A plan's name, such as `free` or `enterprise`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PlanName(String);

/// A tenant's identifier as the service knows it: 1 to 128 characters, no
/// spaces or control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(String);

impl PlanName {
    /// Checks a plan name: 1 to 64 letters, digits, `_` or `-`, as the
    /// policy file's are.
    pub fn new(name: &str) -> Option<PlanName> {
        is_valid_name(name).then(|| PlanName(name.to_owned()))
    }

    /// The name as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TenantId {
    /// Checks and wraps a tenant identifier.
    pub fn new(id: &str) -> Option<TenantId> {
        let valid = !id.is_empty()
            && id.chars().count() <= 128
            && !id.chars().any(|c| c.is_whitespace() || c.is_control());
        valid.then(|| TenantId(id.to_owned()))
    }

    /// The identifier as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PlanName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The most limits one plan or override may have. The middleware keeps a
/// fixed-size state per tenant, so this bounds its memory per key.
pub const MAX_LIMITS_PER_PLAN: usize = 4;

/// The most route classes one policy may name. The middleware keeps a table
/// of the classes per plan, so this bounds its size.
pub const MAX_CLASSES: usize = 64;

/// At most `requests` per `per_seconds`, with bursts of up to `burst`
/// (GCRA: one request every `per_seconds / requests` seconds on average).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limit {
    /// Requests allowed per period.
    pub requests: NonZeroU32,
    /// The period.
    pub per_seconds: NonZeroU32,
    /// Requests allowed at once; defaults to `requests`.
    pub burst: NonZeroU32,
}

/// A named set of limits; a request must pass all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The plan's name.
    pub name: PlanName,
    /// At least one limit.
    pub limits: Vec<Limit>,
    /// Limits of their own for requests of these route classes, checked
    /// together with `limits`; sorted by class name.
    pub classes: Vec<ClassLimits>,
    /// Count would-be rejections but let the requests through.
    pub shadow: bool,
}

impl Limit {
    /// `requests` every `per_seconds`, with a burst of `requests`.
    pub fn new(requests: NonZeroU32, per_seconds: NonZeroU32) -> Limit {
        Limit {
            requests,
            per_seconds,
            burst: requests,
        }
    }

    /// The same limit with another burst.
    pub fn with_burst(self, burst: NonZeroU32) -> Limit {
        Limit { burst, ..self }
    }
}

impl Plan {
    /// A plan of one to [`MAX_LIMITS_PER_PLAN`] limits, all of which a
    /// request must pass, and no route classes.
    pub fn new(name: &str, limits: Vec<Limit>) -> Result<Plan, QuotasError> {
        let name = PlanName::new(name).ok_or_else(|| QuotasError::PlanName(name.to_owned()))?;
        if limits.is_empty() || limits.len() > MAX_LIMITS_PER_PLAN {
            return Err(QuotasError::Limits {
                plan: name.to_string(),
                count: limits.len(),
            });
        }
        Ok(Plan {
            name,
            limits,
            classes: Vec::new(),
            shadow: false,
        })
    }

    /// The limits of `class` under this plan, if it gives it any.
    pub fn class_limits(&self, class: &str) -> Option<&[Limit]> {
        find_class(&self.classes, class)
    }
}

/// The limits of one route class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassLimits {
    /// The class.
    pub class: ClassName,
    /// At least one limit.
    pub limits: Vec<Limit>,
}

fn find_class<'c>(classes: &'c [ClassLimits], class: &str) -> Option<&'c [Limit]> {
    classes
        .iter()
        .find(|c| c.class.as_str() == class)
        .map(|c| c.limits.as_slice())
}

/// What an override gives a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// Another plan's limits.
    Plan(PlanName),
    /// Limits of its own.
    Limits(Vec<Limit>),
}

/// A per-tenant exception to the plans, approved by ops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantOverride {
    /// The tenant.
    pub tenant: TenantId,
    /// What it gets instead of its plan; `None` when it keeps its plan and
    /// only `classes` change.
    pub grant: Option<Grant>,
    /// Class limits that replace those its plan gives (sorted by class).
    pub classes: Vec<ClassLimits>,
    /// Why.
    pub reason: String,
    /// Who answers for it.
    pub owner: String,
    /// Last day it applies (inclusive, UTC).
    pub expires: Date,
    /// Line of the override in the policy file.
    pub line: usize,
}

impl TenantOverride {
    /// Whether the override no longer applies on `today`.
    pub fn is_expired(&self, today: Date) -> bool {
        today > self.expires
    }

    /// The limits this override gives `class`, if it names it.
    pub fn class_limits(&self, class: &str) -> Option<&[Limit]> {
        find_class(&self.classes, class)
    }
}

/// Where the middleware keeps its per-tenant state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum QuotaBackend {
    /// In each instance's memory: each instance enforces the full quota.
    #[default]
    Local,
    /// In Redis, shared by every instance.
    Redis(RedisBackend),
}

/// `[quotas] redis = { ... }`: the shared Redis of the middleware.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisBackend {
    /// The node (`url`), or a cluster's seed nodes (`urls`):
    /// `redis://host:port[/db]` or `rediss://…` for TLS, without credentials.
    pub urls: Vec<String>,
    /// Whether `urls` are seed nodes of a Redis Cluster.
    pub cluster: bool,
    /// The ACL user, if not `default`.
    pub username: Option<String>,
    /// The environment variable holding the password, if Redis needs one.
    pub password_env: Option<String>,
    /// A PEM file of the CA that signed the servers' certificates, for a
    /// private CA; the system's roots otherwise. Only with `rediss://`.
    pub tls_ca_file: Option<PathBuf>,
    /// How long one check may take before the instance decides locally.
    pub timeout_ms: NonZeroU32,
    /// Instances sharing the limit; each enforces `quota / expected_instances`
    /// while Redis is unreachable.
    pub expected_instances: NonZeroU32,
}

impl RedisBackend {
    /// Whether the connection is TLS (`rediss://`).
    pub fn tls(&self) -> bool {
        self.urls.iter().any(|url| url.starts_with("rediss://"))
    }
}

/// Default per-check budget: a loopback round trip takes well under 1 ms.
pub const DEFAULT_REDIS_TIMEOUT_MS: u32 = 5;

/// The `[quotas]` section.
#[derive(Debug, Clone)]
pub struct Quotas {
    plans: Vec<Plan>,
    default_plan: usize,
    anonymous_plan: usize,
    backend: QuotaBackend,
    overrides: Vec<TenantOverride>,
    /// Unexpired overrides by tenant, as indexes into `overrides`.
    active: HashMap<TenantId, usize>,
    routes: Vec<Route>,
    classes: Vec<ClassName>,
}

/// Why quotas built in code are not valid; a policy file's are reported
/// as diagnostics instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuotasError {
    /// Not a valid plan name.
    #[error("\"{0}\" is not a valid plan name: use 1 to 64 letters, digits, '_' or '-'")]
    PlanName(String),
    /// A plan without limits, or with too many.
    #[error("plan {plan} has {count} limits; a plan has 1 to {MAX_LIMITS_PER_PLAN}")]
    Limits {
        /// The plan.
        plan: String,
        /// How many it was given.
        count: usize,
    },
    /// Two plans of one name.
    #[error("there is already a plan named {0}")]
    DuplicatePlan(String),
    /// A plan name that no plan has.
    #[error("no plan is named {0}")]
    UnknownPlan(String),
}

impl Quotas {
    /// Quotas made in code rather than read from a policy file: `default`
    /// for every tenant and for requests without one, the local backend,
    /// no overrides and no route classes.
    ///
    /// ```
    /// use std::num::NonZeroU32;
    /// use floodgate_rules::policy::{Limit, Plan, Quotas};
    ///
    /// let n = |n| NonZeroU32::new(n).unwrap();
    /// let free = Plan::new("free", vec![Limit::new(n(100), n(60))]).unwrap();
    /// let pro = Plan::new("pro", vec![Limit::new(n(50), n(1)).with_burst(n(100))]).unwrap();
    /// let quotas = Quotas::new(free).with_plan(pro).unwrap();
    /// assert_eq!(quotas.default_plan().name.as_str(), "free");
    /// assert_eq!(quotas.plan("pro").unwrap().limits[0].burst.get(), 100);
    /// ```
    pub fn new(default: Plan) -> Quotas {
        Quotas {
            plans: vec![default],
            default_plan: 0,
            anonymous_plan: 0,
            backend: QuotaBackend::Local,
            overrides: Vec::new(),
            active: HashMap::new(),
            routes: Vec::new(),
            classes: Vec::new(),
        }
    }

    /// Adds a plan that overrides and [`Quotas::with_anonymous_plan`] may
    /// name.
    pub fn with_plan(mut self, plan: Plan) -> Result<Quotas, QuotasError> {
        if self.plan(plan.name.as_str()).is_some() {
            return Err(QuotasError::DuplicatePlan(plan.name.to_string()));
        }
        self.plans.push(plan);
        Ok(self)
    }

    /// Gives requests without a tenant the plan of that name.
    pub fn with_anonymous_plan(mut self, name: &str) -> Result<Quotas, QuotasError> {
        self.anonymous_plan = self
            .plans
            .iter()
            .position(|p| p.name.as_str() == name)
            .ok_or_else(|| QuotasError::UnknownPlan(name.to_owned()))?;
        Ok(self)
    }

    /// Uses `backend` (Redis, for one limit across instances).
    pub fn with_backend(mut self, backend: QuotaBackend) -> Quotas {
        self.backend = backend;
        self
    }

    /// Every plan, in file order.
    pub fn plans(&self) -> &[Plan] {
        &self.plans
    }

    /// The plan a tenant without an override gets.
    pub fn default_plan(&self) -> &Plan {
        &self.plans[self.default_plan]
    }

    /// The plan for requests that carry no tenant, keyed by client IP:
    /// `anonymous_plan`, or the default plan when the file names none.
    pub fn anonymous_plan(&self) -> &Plan {
        &self.plans[self.anonymous_plan]
    }

    /// Where the middleware keeps its state.
    pub fn backend(&self) -> &QuotaBackend {
        &self.backend
    }

    /// The plan of that name.
    pub fn plan(&self, name: &str) -> Option<&Plan> {
        self.plans.iter().find(|p| p.name.as_str() == name)
    }

    /// Every override in file order, expired ones included.
    pub fn overrides(&self) -> &[TenantOverride] {
        &self.overrides
    }

    /// The unexpired override for `tenant`, if any.
    pub fn override_for(&self, tenant: &str) -> Option<&TenantOverride> {
        self.active.get(tenant).map(|&i| &self.overrides[i])
    }

    /// The limits that apply to `tenant`: its override's, or the default plan's.
    pub fn limits_for(&self, tenant: &str) -> &[Limit] {
        match self.override_for(tenant).and_then(|o| o.grant.as_ref()) {
            Some(Grant::Limits(limits)) => limits,
            Some(Grant::Plan(plan)) => {
                &self
                    .plan(plan.as_str())
                    .unwrap_or(self.default_plan())
                    .limits
            }
            None => &self.default_plan().limits,
        }
    }

    /// The route table, in file order: the first route that matches a
    /// request gives its class and cost.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The first route matching `method` and `path`.
    pub fn route_for(&self, method: &str, path: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.matches(method, path))
    }

    /// Every class the routes, plans and overrides name, sorted.
    pub fn classes(&self) -> &[ClassName] {
        &self.classes
    }

    /// The limits of `class` for a tenant without a plan of its own: its
    /// override's, else its plan's (the override's plan, or the default).
    /// An override with limits of its own keeps the default plan's classes.
    pub fn class_limits_for(&self, tenant: &str, class: &str) -> Option<&[Limit]> {
        let entry = self.override_for(tenant);
        if let Some(limits) = entry.and_then(|o| o.class_limits(class)) {
            return Some(limits);
        }
        let plan = match entry.and_then(|o| o.grant.as_ref()) {
            Some(Grant::Plan(plan)) => self.plan(plan.as_str()).unwrap_or(self.default_plan()),
            _ => self.default_plan(),
        };
        plan.class_limits(class)
    }
}

impl std::borrow::Borrow<str> for TenantId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// Checks `[quotas]`: plans first, then the default plan and overrides that name them.
pub(crate) fn check_quotas(checker: &mut Checker<'_>, raw: &Spanned<RawQuotas>) -> Option<Quotas> {
    let raw = raw.get_ref();
    let mut plans: Vec<Plan> = Vec::new();
    for (i, plan) in raw.plans.iter().enumerate() {
        let path = format!("quotas.plans[{i}]");
        let Some(plan) = check_plan(checker, plan.get_ref(), &path) else {
            continue;
        };
        if plans.iter().any(|p| p.name == plan.name) {
            let message = format!("plan \"{}\" is defined twice", plan.name);
            checker.error(
                raw.plans[i].get_ref().name.span(),
                &format!("{path}.name"),
                message,
                Some("give each plan its own name".to_owned()),
            );
            continue;
        }
        plans.push(plan);
    }
    let default_plan =
        check_plan_reference(checker, &raw.default_plan, "quotas.default_plan", &plans);
    let anonymous_plan = match &raw.anonymous_plan {
        Some(name) => check_plan_reference(checker, name, "quotas.anonymous_plan", &plans),
        None => default_plan,
    };
    let backend = check_backend(checker, raw);
    let mut overrides: Vec<TenantOverride> = Vec::new();
    for (i, entry) in raw.overrides.iter().enumerate() {
        let path = format!("quotas.overrides[{i}]");
        let Some(checked) = check_override(checker, entry, &path, &plans) else {
            continue;
        };
        if let Some(earlier) = overrides.iter().find(|o| o.tenant == checked.tenant) {
            let message = format!(
                "tenant \"{}\" already has an override at line {}",
                checked.tenant, earlier.line
            );
            let help = Some("merge the two into one override".to_owned());
            checker.error(
                entry.get_ref().tenant.span(),
                &format!("{path}.tenant"),
                message,
                help,
            );
            continue;
        }
        if checked.is_expired(checker.today) {
            let message = format!("expired on {}; it no longer applies", checked.expires);
            let help = Some("renew it with a later expires date, or remove it".to_owned());
            checker.warn(
                entry.get_ref().expires.span(),
                &format!("{path}.expires"),
                message,
                help,
            );
        }
        overrides.push(checked);
    }
    let mut routes: Vec<Route> = Vec::new();
    for (i, entry) in raw.routes.iter().enumerate() {
        let path = format!("quotas.routes[{i}]");
        if let Some(route) = check_route(checker, entry, &path, &routes) {
            check_route_cost(checker, entry, &route, &path, (&plans, &overrides));
            routes.push(route);
        }
    }
    let classes = check_classes(checker, raw, &routes, &plans, &overrides)?;
    let default_plan = default_plan?;
    let anonymous_plan = anonymous_plan?;
    let active = overrides
        .iter()
        .enumerate()
        .filter(|(_, o)| !o.is_expired(checker.today))
        .map(|(i, o)| (o.tenant.clone(), i))
        .collect();
    Some(Quotas {
        plans,
        default_plan,
        anonymous_plan,
        backend: backend?,
        overrides,
        active,
        routes,
        classes,
    })
}

/// Every class named anywhere, at most [`MAX_CLASSES`].
fn check_classes(
    checker: &mut Checker<'_>,
    raw: &RawQuotas,
    routes: &[Route],
    plans: &[Plan],
    overrides: &[TenantOverride],
) -> Option<Vec<ClassName>> {
    let limited = plans
        .iter()
        .flat_map(|p| &p.classes)
        .chain(overrides.iter().flat_map(|o| &o.classes));
    let mut classes: Vec<ClassName> = routes
        .iter()
        .map(|r| r.class.clone())
        .chain(limited.map(|c| c.class.clone()))
        .collect();
    classes.sort();
    classes.dedup();
    if classes.len() > MAX_CLASSES {
        let message = format!(
            "names {} route classes; at most {MAX_CLASSES} are allowed",
            classes.len()
        );
        let help = Some("merge classes whose requests cost alike".to_owned());
        let span = raw.routes.first().map(|r| r.span()).unwrap_or_default();
        checker.error(span, "quotas.routes", message, help);
        return None;
    }
    warn_unrouted_classes(checker, raw);
    Some(classes)
}

/// Warns about a class that plans or overrides limit but no route names:
/// with a route table, more likely a typo than a class only the service's
/// extension sets.
fn warn_unrouted_classes(checker: &mut Checker<'_>, raw: &RawQuotas) {
    if raw.routes.is_empty() {
        return;
    }
    let routed: Vec<&str> = raw
        .routes
        .iter()
        .map(|r| r.get_ref().class.get_ref().as_str())
        .collect();
    let raw_classes = raw
        .plans
        .iter()
        .enumerate()
        .filter_map(|(i, p)| Some((format!("quotas.plans[{i}]"), p.get_ref().classes.as_ref()?)))
        .chain(raw.overrides.iter().enumerate().filter_map(|(i, o)| {
            Some((
                format!("quotas.overrides[{i}]"),
                o.get_ref().classes.as_ref()?,
            ))
        }));
    for (path, table) in raw_classes {
        for name in table.get_ref().keys() {
            if routed.contains(&name.get_ref().as_str()) || !is_valid_name(name.get_ref()) {
                continue;
            }
            let message = format!("no route names class \"{}\"", name.get_ref());
            let help = match closest(name.get_ref(), routed.iter().copied()) {
                Some(close) => format!("did you mean \"{close}\"?"),
                None => "add a [[quotas.routes]] entry for it, or have the service set the RouteClass extension".to_owned(),
            };
            checker.warn(name.span(), &format!("{path}.classes"), message, Some(help));
        }
    }
}

/// A route whose cost exceeds a limit's burst would be refused forever:
/// an error naming the plan (or override) with the smallest burst.
fn check_route_cost(
    checker: &mut Checker<'_>,
    entry: &Spanned<RawRoute>,
    route: &Route,
    path: &str,
    (plans, overrides): (&[Plan], &[TenantOverride]),
) {
    let class = route.class.as_str();
    // The smallest burst among limits and class limits, and whose it is.
    let smallest = |limits: &[Limit], class_limits: Option<&[Limit]>| {
        let all = limits.iter().chain(class_limits.unwrap_or_default());
        all.map(|l| l.burst).min()
    };
    let by_plan = plans.iter().filter_map(|p| {
        let burst = smallest(&p.limits, p.class_limits(class))?;
        Some((burst, BurstOwner::Plan(&p.name)))
    });
    let by_override = overrides.iter().filter_map(|o| {
        let limits = match &o.grant {
            Some(Grant::Limits(limits)) => limits.as_slice(),
            _ => &[],
        };
        let burst = smallest(limits, o.class_limits(class))?;
        Some((burst, BurstOwner::Override(&o.tenant)))
    });
    let tightest = by_plan.chain(by_override).min_by_key(|(burst, _)| *burst);
    let (Some((burst, owner)), Some(cost)) = (tightest, &entry.get_ref().cost) else {
        return;
    };
    if route.cost > burst {
        let message = format!(
            "costs {} but {owner} admits at most {burst} at once; its requests would always be refused",
            route.cost
        );
        let help = Some(format!(
            "lower the cost to {burst} or less, or raise that burst"
        ));
        checker.error(cost.span(), &format!("{path}.cost"), message, help);
    }
}

/// Whose limit a burst is, for [`check_route_cost`]'s error.
enum BurstOwner<'a> {
    Plan(&'a PlanName),
    Override(&'a TenantId),
}

impl fmt::Display for BurstOwner<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BurstOwner::Plan(name) => write!(f, "plan \"{name}\""),
            BurstOwner::Override(tenant) => write!(f, "the override of \"{tenant}\""),
        }
    }
}

/// `backend` and `redis`: the table is needed for, and only for, `"redis"`.
fn check_backend(checker: &mut Checker<'_>, raw: &RawQuotas) -> Option<QuotaBackend> {
    let kind = match &raw.backend {
        Some(kind) => checker.choice(kind, "quotas.backend", &["local", "redis"])?,
        None => "local",
    };
    match (kind, &raw.redis) {
        ("redis", Some(redis)) => check_redis(checker, redis).map(QuotaBackend::Redis),
        ("redis", None) => {
            let help = Some(
                "add redis = { url = \"redis://127.0.0.1:6379\", expected_instances = 4 }"
                    .to_owned(),
            );
            let span = raw.backend.as_ref().map(|b| b.span()).unwrap_or_default();
            let message = "backend \"redis\" needs a redis table".to_owned();
            checker.error(span, "quotas.backend", message, help);
            None
        }
        (_, Some(redis)) => {
            let help = Some("set backend = \"redis\" to use it, or remove it".to_owned());
            let message = "ignored: the backend is \"local\"".to_owned();
            checker.warn(redis.span(), "quotas.redis", message, help);
            Some(QuotaBackend::Local)
        }
        _ => Some(QuotaBackend::Local),
    }
}

fn check_redis(checker: &mut Checker<'_>, raw: &Spanned<RawRedis>) -> Option<RedisBackend> {
    let span = raw.span();
    let raw = raw.get_ref();
    let cluster = raw.cluster.as_ref().is_some_and(|c| *c.get_ref());
    let urls = check_redis_urls(checker, raw, span, cluster);
    let username = raw.username.as_ref().and_then(|name| {
        let valid = !name.get_ref().is_empty() && !name.get_ref().contains(char::is_whitespace);
        if !valid {
            let message = format!("\"{}\" is not an ACL user name", name.get_ref());
            let help = Some("name the ACL user, such as \"floodgate\"".to_owned());
            checker.error(name.span(), "quotas.redis.username", message, help);
        }
        valid.then(|| name.get_ref().clone())
    });
    let password_env = raw.password_env.as_ref().and_then(|name| {
        checker.env_var_name(
            name,
            "quotas.redis.password_env",
            "FLOODGATE_REDIS_PASSWORD",
        )
    });
    let tls = urls
        .as_ref()
        .is_some_and(|urls| urls.iter().any(|u| u.starts_with("rediss://")));
    let tls_ca_file = match &raw.tls_ca_file {
        Some(file) if urls.is_some() && !tls => {
            let message = "a CA file is only used over TLS".to_owned();
            let help = Some("write the URLs as rediss://, or remove tls_ca_file".to_owned());
            checker.error(file.span(), "quotas.redis.tls_ca_file", message, help);
            None
        }
        Some(file) if file.get_ref().trim().is_empty() => {
            let help = Some("name a PEM file, such as \"/etc/floodgate/redis-ca.pem\"".to_owned());
            let message = "must not be empty".to_owned();
            checker.error(file.span(), "quotas.redis.tls_ca_file", message, help);
            None
        }
        Some(file) => Some(Some(PathBuf::from(file.get_ref()))),
        None => Some(None),
    };
    let timeout_ms = match &raw.timeout_ms {
        Some(ms) => checker.in_range(ms, "quotas.redis.timeout_ms", 1, 1000),
        None => Some(DEFAULT_REDIS_TIMEOUT_MS),
    };
    let expected_instances = match &raw.expected_instances {
        Some(n) => checker.positive(n, "quotas.redis.expected_instances"),
        None => NonZeroU32::new(1),
    };
    let username_invalid = raw.username.is_some() && username.is_none();
    let password_missing = raw.password_env.is_some() && password_env.is_none();
    if username_invalid || password_missing {
        return None;
    }
    Some(RedisBackend {
        urls: urls?,
        cluster,
        username,
        password_env,
        tls_ca_file: tls_ca_file?,
        timeout_ms: NonZeroU32::new(timeout_ms?)?,
        expected_instances: expected_instances?,
    })
}

/// `url` for one node or `urls` for a cluster's seeds: one of the two, every
/// URL valid, one scheme for all (a cluster is TLS throughout or not at
/// all), and no database number in a cluster (it has only database 0).
fn check_redis_urls(
    checker: &mut Checker<'_>,
    raw: &RawRedis,
    table: std::ops::Range<usize>,
    cluster: bool,
) -> Option<Vec<String>> {
    let seeds: Vec<&Spanned<String>> = match (&raw.url, &raw.urls) {
        (Some(url), None) => vec![url],
        (None, Some(urls)) if urls.get_ref().is_empty() => {
            let help = Some(
                "name at least one node, such as urls = [\"redis://10.0.0.5:6379\"]".to_owned(),
            );
            checker.error(
                urls.span(),
                "quotas.redis.urls",
                "must not be empty".to_owned(),
                help,
            );
            return None;
        }
        (None, Some(urls)) if urls.get_ref().len() > 1 && !cluster => {
            let message = "several nodes are the seeds of a Redis Cluster".to_owned();
            let help = Some("add cluster = true, or give the one node as url".to_owned());
            checker.error(urls.span(), "quotas.redis.urls", message, help);
            return None;
        }
        (None, Some(urls)) => urls.get_ref().iter().collect(),
        (Some(_), Some(urls)) => {
            let message = "give url (one node) or urls (a cluster's seeds), not both".to_owned();
            checker.error(urls.span(), "quotas.redis.urls", message, None);
            return None;
        }
        (None, None) => {
            let help = Some("add url = \"redis://10.0.0.5:6379\", or for a cluster cluster = true, urls = [...]".to_owned());
            checker.error(table, "quotas.redis", "names no node".to_owned(), help);
            return None;
        }
    };
    let path = if raw.url.is_some() {
        "quotas.redis.url"
    } else {
        "quotas.redis.urls"
    };
    let mut urls = Vec::with_capacity(seeds.len());
    for seed in seeds {
        let url = checker.url(seed, path, &REDIS_URL)?;
        if let Some(first) = urls.first().map(String::as_str)
            && first.starts_with("rediss://") != url.starts_with("rediss://")
        {
            let message = "mixes redis:// and rediss://".to_owned();
            let help = Some("a cluster is TLS on every node or on none: use one scheme".to_owned());
            checker.error(seed.span(), path, message, help);
            return None;
        }
        let database = url.splitn(4, '/').nth(3).unwrap_or_default();
        if cluster && !matches!(database, "" | "0") {
            let message = format!("names database {database}, but a cluster has only database 0");
            let help = Some("remove the /<db> from the URL".to_owned());
            checker.error(seed.span(), path, message, help);
            return None;
        }
        urls.push(url);
    }
    Some(urls)
}

/// The middleware's Redis: the password comes from `password_env`.
const REDIS_URL: UrlRules = UrlRules {
    schemes: &["redis://", "rediss://"],
    kind: "a redis:// or rediss://",
    example: "redis://10.0.0.5:6379",
    credentials: "name the variable that holds the password with password_env",
};

fn check_plan(checker: &mut Checker<'_>, raw: &RawPlan, path: &str) -> Option<Plan> {
    let name_text = raw.name.get_ref();
    let name_valid = is_valid_name(name_text);
    if !name_valid {
        let help = Some("use 1 to 64 letters, digits, '_' or '-'".to_owned());
        checker.error(
            raw.name.span(),
            &format!("{path}.name"),
            format!("\"{name_text}\" is not a valid plan name"),
            help,
        );
    }
    let limits = check_limits(checker, &raw.limits, &format!("{path}.limits"));
    let classes = check_class_limits(checker, raw.classes.as_ref(), &format!("{path}.classes"));
    Some(Plan {
        name: PlanName(name_text.clone()),
        limits: limits.filter(|_| name_valid)?,
        classes,
        shadow: raw.shadow,
    })
}

/// `classes = { exports = [...] }`: the classes whose name and limits are
/// valid (the others are reported, and fail the policy).
fn check_class_limits(
    checker: &mut Checker<'_>,
    raw: Option<&RawClasses>,
    path: &str,
) -> Vec<ClassLimits> {
    let Some(raw) = raw else {
        return Vec::new();
    };
    let mut classes = Vec::new();
    for (name, limits) in raw.get_ref() {
        let class_path = format!("{path}.{}", name.get_ref());
        let class = check_class_name(checker, name, path);
        let limits = check_limits(checker, limits, &class_path);
        if let (Some(class), Some(limits)) = (class, limits) {
            classes.push(ClassLimits { class, limits });
        }
    }
    classes
}

fn check_limits(
    checker: &mut Checker<'_>,
    raw: &Spanned<Vec<Spanned<RawLimit>>>,
    path: &str,
) -> Option<Vec<Limit>> {
    if raw.get_ref().is_empty() {
        let help = Some("add one, such as { requests = 100, per_seconds = 60 }".to_owned());
        checker.error(
            raw.span(),
            path,
            "needs at least one limit".to_owned(),
            help,
        );
        return None;
    }
    if raw.get_ref().len() > MAX_LIMITS_PER_PLAN {
        let help = Some(format!(
            "keep the {MAX_LIMITS_PER_PLAN} that matter, such as a per-second burst and a daily budget"
        ));
        let message = format!(
            "has {} limits; at most {MAX_LIMITS_PER_PLAN} are allowed",
            raw.get_ref().len()
        );
        checker.error(raw.span(), path, message, help);
        return None;
    }
    let mut limits = Vec::new();
    let mut valid = true;
    for (i, limit) in raw.get_ref().iter().enumerate() {
        let limit = limit.get_ref();
        let path = format!("{path}[{i}]");
        let requests = checker.positive(&limit.requests, &format!("{path}.requests"));
        let per_seconds = checker.positive(&limit.per_seconds, &format!("{path}.per_seconds"));
        let burst = match &limit.burst {
            Some(burst) => checker.positive(burst, &format!("{path}.burst")),
            None => requests,
        };
        match (requests, per_seconds, burst) {
            (Some(requests), Some(per_seconds), Some(burst)) => limits.push(Limit {
                requests,
                per_seconds,
                burst,
            }),
            _ => valid = false,
        }
    }
    valid.then_some(limits)
}

/// Finds the plan a key names, suggesting the closest name when there is none.
fn check_plan_reference(
    checker: &mut Checker<'_>,
    name: &Spanned<String>,
    path: &str,
    plans: &[Plan],
) -> Option<usize> {
    let wanted = name.get_ref();
    if let Some(index) = plans.iter().position(|p| p.name.as_str() == wanted) {
        return Some(index);
    }
    let names = plans.iter().map(|p| p.name.as_str());
    let help = match closest(wanted, names.clone()) {
        Some(close) => format!("did you mean \"{close}\"?"),
        None if plans.is_empty() => "define it under [[quotas.plans]]".to_owned(),
        None => format!(
            "the plans are {}",
            names
                .map(|n| format!("\"{n}\""))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    checker.error(
        name.span(),
        path,
        format!("unknown plan \"{wanted}\""),
        Some(help),
    );
    None
}

fn check_override(
    checker: &mut Checker<'_>,
    entry: &Spanned<RawOverride>,
    path: &str,
    plans: &[Plan],
) -> Option<TenantOverride> {
    let raw = entry.get_ref();
    let tenant = TenantId::new(raw.tenant.get_ref());
    if tenant.is_none() {
        let message = format!("\"{}\" is not a valid tenant id", raw.tenant.get_ref());
        let help = Some("use the id the service sets: 1 to 128 characters, no spaces".to_owned());
        checker.error(raw.tenant.span(), &format!("{path}.tenant"), message, help);
    }
    let grant = match (&raw.plan, &raw.limits) {
        (Some(plan), None) => check_plan_reference(checker, plan, &format!("{path}.plan"), plans)
            .map(|i| Some(Grant::Plan(plans[i].name.clone()))),
        (None, Some(limits)) => {
            check_limits(checker, limits, &format!("{path}.limits")).map(|l| Some(Grant::Limits(l)))
        }
        (None, None) if raw.classes.is_some() => Some(None),
        (Some(plan), Some(_)) => {
            let help = Some("keep one of the two".to_owned());
            checker.error(
                plan.span(),
                &format!("{path}.plan"),
                "give either plan or limits, not both".to_owned(),
                help,
            );
            None
        }
        (None, None) => {
            let help = Some(
                "add plan = \"enterprise\", limits = [{ requests = 100, per_seconds = 1 }] or classes = { exports = [{ requests = 100, per_seconds = 3600 }] }"
                    .to_owned(),
            );
            checker.error(
                entry.span(),
                path,
                "an override needs a plan, limits or classes".to_owned(),
                help,
            );
            None
        }
    };
    let classes = check_class_limits(checker, raw.classes.as_ref(), &format!("{path}.classes"));
    let reason = checker.text(&raw.reason, &format!("{path}.reason"));
    let owner = checker.text(&raw.owner, &format!("{path}.owner"));
    let expires = checker.date(&raw.expires, &format!("{path}.expires"));
    Some(TenantOverride {
        tenant: tenant?,
        grant: grant?,
        classes,
        reason: reason?,
        owner: owner?,
        expires: expires?,
        line: checker.found.line_of(entry.span().start),
    })
}
