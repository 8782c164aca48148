//! The policy's `[quotas]`, compiled for the request path: each plan and
//! override becomes a [`LimitSet`] with its GCRA parameters, header values and
//! counters, and each request's [`Key`] resolves to one of them. A plan's
//! route classes become further sets, its limits followed by the class's,
//! which a request of that class is checked against instead.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;

use bytes::Bytes;
use floodgate_rules::policy::{ClassLimits, Grant, Limit, Plan, Quotas};
use http::HeaderValue;
use parking_lot::Mutex;
use time::OffsetDateTime;

use crate::gcra::{Gcra, NANOS_PER_SECOND};
use crate::key::{Key, RequestHead};
use crate::observe::Counters;
use crate::route::{Class, RouteClass, Routes};
use crate::store::SHARD_BITS;

/// The limits one tenant is held to, ready for the request path.
#[derive(Debug)]
pub(crate) struct LimitSet {
    /// Identifies the limits themselves, so a tenant whose limits did not
    /// change across a reload keeps its state.
    pub fingerprint: u64,
    /// The plan's name, or `override` for limits of a tenant's own.
    pub label: Box<str>,
    /// One per limit: the plan's (at most
    /// [`floodgate_rules::policy::MAX_LIMITS_PER_PLAN`]), then for a class's
    /// set the class's (as many again).
    pub limits: Vec<Gcra>,
    /// For a class's set: where the class's limits start, and its state.
    pub class: Option<ClassPart>,
    /// For a plan's set: by class index, the set to check a request of that
    /// class against, as an index into the policy's class sets. Empty when
    /// the plan limits no class.
    pub classes: Box<[Option<usize>]>,
    /// The name of each limit in the RateLimit header fields.
    pub names: Vec<Box<str>>,
    /// Count would-be rejections and let the requests through.
    pub shadow: bool,
    /// The `RateLimit-Policy` value, built once and interned.
    pub policy_header: HeaderValue,
    /// Allowed, shadowed and limited requests.
    pub counters: Counters,
}

/// The class half of a class's [`LimitSet`].
#[derive(Debug, Clone)]
pub(crate) struct ClassPart {
    /// The class's name.
    pub name: Box<str>,
    /// The plan's limits are `limits[..split]`, the class's the rest.
    pub split: usize,
    /// Identifies the class's limits, as the set's `fingerprint` does the plan's.
    pub fingerprint: u64,
    /// Turns a key's hash into the key of its state for this class: high
    /// bits and low bits only, so it stays in the key's shard.
    pub salt: u64,
}

/// The key of a class's state for the key whose hash is `hash`.
#[inline]
pub(crate) fn class_key(hash: u64, class: &ClassPart) -> u64 {
    hash ^ class.salt
}

/// An approved override, live until `expires_at` on the limiter's clock.
#[derive(Debug)]
struct Override {
    tenant: Box<str>,
    sets: OverrideSets,
    expires_at: u64,
}

/// Which set an override gives.
#[derive(Debug)]
enum OverrideSets {
    /// This one.
    Fixed(usize),
    /// The tenant keeps its plan, with class limits of its own: by plan
    /// index, the set of that plan with them.
    PerPlan(Box<[usize]>),
}

/// Hashes keys with a random seed, so no one can pick a key that shares
/// another's state without knowing the seed. The limiter stores only this
/// 64-bit hash: two of a million keys collide with odds of about 1 in 3·10⁷.
/// foldhash rather than SipHash: it costs 1 ns instead of 9 on the request
/// path, and a key a client may choose freely (a header) can already name
/// any tenant, so a keyed collision would gain it nothing.
#[derive(Debug, Clone, Default)]
pub(crate) struct KeyHasher(foldhash::quality::RandomState);

impl KeyHasher {
    #[inline]
    pub fn hash(&self, key: &Key<'_>) -> u64 {
        let mut hasher = self.0.build_hasher();
        match key {
            Key::Tenant { id, .. } => {
                hasher.write_u8(0);
                hasher.write(id.as_bytes());
            }
            Key::Secret(secret) => {
                hasher.write_u8(1);
                hasher.write(secret);
            }
            Key::Ip(IpAddr::V4(ip)) => {
                hasher.write_u8(2);
                hasher.write_u32(ip.to_bits());
            }
            Key::Ip(IpAddr::V6(ip)) => {
                hasher.write_u8(3);
                hasher.write_u128(ip.to_bits());
            }
        }
        hasher.finish()
    }
}

/// Keys maps by a [`KeyHasher`] hash, which is already uniformly
/// distributed: hashing it again would be waste.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct IdentityHash;

/// The hasher of [`IdentityHash`].
#[derive(Debug, Default)]
pub(crate) struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

impl BuildHasher for IdentityHash {
    type Hasher = IdentityHasher;

    fn build_hasher(&self) -> IdentityHasher {
        IdentityHasher::default()
    }
}

/// The instant a policy is compiled at, on both clocks: override expiry
/// dates are wall-clock days, the limiter counts monotonic nanoseconds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CompiledAt {
    pub wall: OffsetDateTime,
    pub nanos: u64,
}

/// `[quotas]`, ready for the request path.
#[derive(Debug)]
pub(crate) struct CompiledPolicy {
    sets: Vec<LimitSet>,
    /// The sets requests of a class are checked against.
    class_sets: Vec<LimitSet>,
    default_set: usize,
    anonymous_set: usize,
    plans: HashMap<Box<str>, usize, foldhash::fast::FixedState>,
    overrides: HashMap<u64, Override, IdentityHash>,
    routes: Routes,
}

/// Which limits apply to a request, and whether the plan it named was unknown.
pub(crate) struct Resolved<'p> {
    pub set: &'p LimitSet,
    pub unknown_plan: bool,
}

impl CompiledPolicy {
    pub fn compile(quotas: &Quotas, hasher: &KeyHasher, at: CompiledAt) -> CompiledPolicy {
        let routes = Routes::compile(quotas);
        let mut sets = SetBuilder {
            sets: Vec::new(),
            class_sets: Vec::new(),
            routes: &routes,
        };
        for plan in quotas.plans() {
            sets.add_plan(plan, &plan.classes);
        }
        let index_of = |plan: &Plan| {
            quotas
                .plans()
                .iter()
                .position(|p| p.name == plan.name)
                .expect("the plan is one of the policy's")
        };
        let mut overrides = HashMap::default();
        for entry in quotas.overrides() {
            let Some(expires_at) = expiry_nanos(entry.expires, at) else {
                continue;
            };
            let with_classes = |base: &[ClassLimits]| overlay(base, &entry.classes);
            let sets = match &entry.grant {
                Some(Grant::Plan(name)) => {
                    let plan = quotas.plan(name.as_str()).expect("validated reference");
                    OverrideSets::Fixed(match entry.classes.is_empty() {
                        true => index_of(plan),
                        false => sets.add_plan(plan, &with_classes(&plan.classes)),
                    })
                }
                Some(Grant::Limits(limits)) => {
                    let classes = with_classes(&quotas.default_plan().classes);
                    OverrideSets::Fixed(sets.add("override", limits, false, &classes))
                }
                None => OverrideSets::PerPlan(
                    quotas
                        .plans()
                        .iter()
                        .map(|plan| sets.add_plan(plan, &with_classes(&plan.classes)))
                        .collect(),
                ),
            };
            let key = Key::Tenant {
                id: entry.tenant.as_str(),
                plan: None,
            };
            let tenant = entry.tenant.as_str().into();
            let live = Override {
                tenant,
                sets,
                expires_at,
            };
            overrides.insert(hasher.hash(&key), live);
        }
        let plans = quotas
            .plans()
            .iter()
            .enumerate()
            .map(|(i, plan)| (plan.name.as_str().into(), i))
            .collect();
        let SetBuilder {
            sets, class_sets, ..
        } = sets;
        CompiledPolicy {
            default_set: index_of(quotas.default_plan()),
            anonymous_set: index_of(quotas.anonymous_plan()),
            sets,
            class_sets,
            plans,
            overrides,
            routes,
        }
    }

    /// The limits for `key`, whose hash is `hash`, at `now`: a live override,
    /// else the plan the key names, else the default (or anonymous) plan.
    #[inline]
    pub fn resolve(&self, key: &Key<'_>, hash: u64, now: u64) -> Resolved<'_> {
        let (index, unknown_plan) = match key {
            Key::Tenant { id, plan } => {
                let named = || match plan {
                    Some(name) => match self.plans.get(*name) {
                        Some(&i) => (i, false),
                        None => (self.default_set, true),
                    },
                    None => (self.default_set, false),
                };
                match self.overrides.get(&hash) {
                    Some(o) if *o.tenant == **id && now < o.expires_at => match &o.sets {
                        OverrideSets::Fixed(set) => (*set, false),
                        OverrideSets::PerPlan(sets) => {
                            let (plan, unknown) = named();
                            (sets[plan], unknown)
                        }
                    },
                    _ => named(),
                }
            }
            Key::Secret(_) => (self.default_set, false),
            Key::Ip(_) => (self.anonymous_set, false),
        };
        Resolved {
            set: &self.sets[index],
            unknown_plan,
        }
    }

    /// The set a request with `head` and the [`crate::RouteClass`]
    /// `extension` is checked against under `set`, its class, and its cost.
    pub fn classify<'p, 'r>(
        &'p self,
        head: RequestHead<'_>,
        extension: Option<&'r RouteClass>,
        set: &'p LimitSet,
    ) -> (&'p LimitSet, Class<'r>, u64) {
        let (class, cost) = self.routes.classify(head, extension);
        let Class::Known(index) = class else {
            return (set, class, cost);
        };
        match set.classes.get(index).copied().flatten() {
            Some(class_set) => (&self.class_sets[class_set], class, cost),
            None => (set, class, cost),
        }
    }

    /// The default plan's name.
    #[cfg(test)]
    pub fn default_label(&self) -> &str {
        &self.sets[self.default_set].label
    }
}

/// Builds a policy's sets: each plan's (or override's) set, and a set per
/// class it limits.
struct SetBuilder<'r> {
    sets: Vec<LimitSet>,
    class_sets: Vec<LimitSet>,
    routes: &'r Routes,
}

impl SetBuilder<'_> {
    /// Adds the set of `plan`'s limits with `classes`; returns its index.
    fn add_plan(&mut self, plan: &Plan, classes: &[ClassLimits]) -> usize {
        self.add(plan.name.as_str(), &plan.limits, plan.shadow, classes)
    }

    /// Adds the set of `limits` with `classes`; returns its index.
    fn add(
        &mut self,
        label: &str,
        limits: &[Limit],
        shadow: bool,
        classes: &[ClassLimits],
    ) -> usize {
        let mut set = limit_set(label, limits, shadow);
        if !classes.is_empty() {
            let mut table = vec![None; self.routes.class_count()];
            for class in classes {
                let index = self
                    .routes
                    .index_of(class.class.as_str())
                    .expect("the policy lists every class");
                table[index] = Some(self.class_sets.len());
                self.class_sets.push(class_set(&set, class));
            }
            set.classes = table.into();
        }
        self.sets.push(set);
        self.sets.len() - 1
    }
}

/// `base`'s classes, with those `over` names replaced by its limits.
fn overlay(base: &[ClassLimits], over: &[ClassLimits]) -> Vec<ClassLimits> {
    let mut classes: Vec<ClassLimits> = base
        .iter()
        .filter(|c| !over.iter().any(|o| o.class == c.class))
        .cloned()
        .collect();
    classes.extend(over.iter().cloned());
    classes
}

pub(crate) fn limit_set(label: &str, limits: &[Limit], shadow: bool) -> LimitSet {
    let gcra: Vec<Gcra> = limits.iter().map(Gcra::new).collect();
    let names = limit_names(label, &gcra);
    LimitSet {
        fingerprint: fingerprint(&gcra),
        label: label.into(),
        policy_header: interned_header_value(policy_text(&gcra, &names)),
        names,
        shadow,
        counters: Counters::new(label),
        limits: gcra,
        class: None,
        classes: Box::default(),
    }
}

/// The set a request of class `class` under `plan` is checked against:
/// the plan's limits, then the class's, named `<plan>-<class>[-<w>s]`.
fn class_set(plan: &LimitSet, class: &ClassLimits) -> LimitSet {
    let class_limits: Vec<Gcra> = class.limits.iter().map(Gcra::new).collect();
    let name = class.class.as_str();
    let class_names = limit_names(&format!("{}-{name}", plan.label), &class_limits);
    let limits: Vec<Gcra> = plan.limits.iter().chain(&class_limits).copied().collect();
    let names: Vec<Box<str>> = plan.names.iter().chain(&class_names).cloned().collect();
    // From the class's name, so that its state outlives a reload that adds
    // or removes other classes.
    let name_hash = foldhash::fast::FixedState::with_seed(0xc1a5).hash_one(name);
    LimitSet {
        fingerprint: plan.fingerprint,
        label: plan.label.clone(),
        policy_header: interned_header_value(policy_text(&limits, &names)),
        names,
        shadow: plan.shadow,
        counters: Counters::with_class(&plan.label, name),
        class: Some(ClassPart {
            name: name.into(),
            split: plan.limits.len(),
            fingerprint: fingerprint(&class_limits) ^ name_hash,
            salt: class_salt(name_hash),
        }),
        classes: Box::default(),
        limits,
    }
}

/// A class's salt from the hash of its name: it leaves alone the bits that
/// pick a key's shard, and never equals the store's second-slot mask (which
/// has bits only below 32).
fn class_salt(name_hash: u64) -> u64 {
    (name_hash & !SHARD_BITS) | 1 << 63
}

/// The `RateLimit-Policy` value: each limit's name, burst and window.
fn policy_text(limits: &[Gcra], names: &[Box<str>]) -> String {
    let mut policy = String::new();
    for (limit, name) in limits.iter().zip(names) {
        if !policy.is_empty() {
            policy.push_str(", ");
        }
        let window = window_seconds(limit);
        let _ = write!(policy, "\"{name}\";q={};w={window}", limit.burst());
    }
    policy
}

/// `text` as a header value over a `'static` copy of it. Cloning such a
/// value, once per response, copies a pointer; a shared one would bump a
/// reference count that every worker thread writes. Each distinct text is
/// leaked once, however often a reload compiles it again, so memory is
/// bounded by the plans and overrides a policy ever had.
fn interned_header_value(text: String) -> HeaderValue {
    static INTERNED: Mutex<BTreeSet<&'static str>> = Mutex::new(BTreeSet::new());
    let mut interned = INTERNED.lock();
    let text: &'static str = match interned.get(text.as_str()) {
        Some(text) => text,
        None => {
            let leaked = Box::leak(text.into_boxed_str());
            interned.insert(leaked);
            leaked
        }
    };
    HeaderValue::from_maybe_shared(Bytes::from_static(text.as_bytes()))
        .expect("names are header-safe")
}

/// Names limits by plan and window: `free` alone, or `free-1s`, `free-86400s`.
fn limit_names(label: &str, limits: &[Gcra]) -> Vec<Box<str>> {
    if limits.len() == 1 {
        return vec![label.into()];
    }
    let mut names: Vec<Box<str>> = Vec::new();
    for (i, limit) in limits.iter().enumerate() {
        let mut name = format!("{label}-{}s", window_seconds(limit));
        if names.iter().any(|n| **n == *name) {
            name = format!("{label}-{i}");
        }
        names.push(name.into());
    }
    names
}

/// The window the burst refills in, which is the `w` a client sees: for
/// the usual burst = requests it is the policy's `per_seconds`.
pub(crate) fn window_seconds(limit: &Gcra) -> u64 {
    limit.tolerance.div_ceil(NANOS_PER_SECOND).max(1)
}

fn fingerprint(limits: &[Gcra]) -> u64 {
    let mut hasher = foldhash::fast::FixedState::with_seed(0x5eed).build_hasher();
    for limit in limits {
        hasher.write_u64(limit.interval);
        hasher.write_u64(limit.tolerance);
    }
    hasher.finish()
}

/// When an override stops applying, on the limiter's clock: the end of its
/// `expires` day (UTC). `None` once it has.
fn expiry_nanos(expires: time::Date, at: CompiledAt) -> Option<u64> {
    let end = expires.next_day()?.midnight().assume_utc();
    let left = end - at.wall;
    if !left.is_positive() {
        return None;
    }
    let left = u64::try_from(left.whole_nanoseconds()).unwrap_or(u64::MAX);
    Some(at.nanos.saturating_add(left))
}

#[cfg(test)]
mod tests {
    use super::*;
    use floodgate_rules::Policy;
    use time::macros::{date, datetime};

    const QUOTAS: &str = r#"
[quotas]
default_plan = "free"
anonymous_plan = "anonymous"
plans = [
  { name = "free", limits = [{ requests = 10, per_seconds = 1, burst = 20 }, { requests = 10000, per_seconds = 86400 }] },
  { name = "pro", limits = [{ requests = 100, per_seconds = 1 }] },
  { name = "anonymous", limits = [{ requests = 1, per_seconds = 1 }], shadow = true },
]

[[quotas.overrides]]
tenant = "acme"
plan = "pro"
reason = "contract"
owner = "sales"
expires = 2026-12-15

[[quotas.overrides]]
tenant = "globex"
limits = [{ requests = 300, per_seconds = 1 }]
reason = "import"
owner = "support"
expires = 2026-12-15
"#;

    fn compiled(wall: OffsetDateTime) -> (CompiledPolicy, KeyHasher) {
        let policy = Policy::from_toml(QUOTAS, "q.toml", date!(2026 - 11 - 22)).unwrap();
        let hasher = KeyHasher::default();
        let at = CompiledAt { wall, nanos: 0 };
        let compiled = CompiledPolicy::compile(policy.policy.quotas.as_ref().unwrap(), &hasher, at);
        (compiled, hasher)
    }

    fn label(policy: &CompiledPolicy, hasher: &KeyHasher, key: Key<'_>, now: u64) -> String {
        policy
            .resolve(&key, hasher.hash(&key), now)
            .set
            .label
            .to_string()
    }

    #[test]
    fn overrides_beat_named_plans_which_beat_the_default() {
        let (policy, hasher) = compiled(datetime!(2026-11-22 00:00 UTC));
        let tenant = |id, plan| Key::Tenant { id, plan };
        assert_eq!(
            label(&policy, &hasher, tenant("acme", Some("free")), 0),
            "pro"
        );
        assert_eq!(
            label(&policy, &hasher, tenant("globex", None), 0),
            "override"
        );
        assert_eq!(
            label(&policy, &hasher, tenant("initech", Some("pro")), 0),
            "pro"
        );
        assert_eq!(label(&policy, &hasher, tenant("initech", None), 0), "free");
        let ip = Key::Ip("192.0.2.1".parse().unwrap());
        assert_eq!(label(&policy, &hasher, ip, 0), "anonymous");
        let unknown = tenant("initech", Some("gold"));
        assert!(
            policy
                .resolve(&unknown, hasher.hash(&unknown), 0)
                .unknown_plan
        );
    }

    #[test]
    fn an_override_ends_with_its_expiry_day_on_the_limiter_clock() {
        let (policy, hasher) = compiled(datetime!(2026-12-15 23:00 UTC));
        let acme = Key::Tenant {
            id: "acme",
            plan: None,
        };
        let hour = 3600 * NANOS_PER_SECOND;
        assert_eq!(label(&policy, &hasher, acme, hour - 1), "pro");
        assert_eq!(label(&policy, &hasher, acme, hour), "free");
        let (later, hasher) = compiled(datetime!(2026-12-16 00:00 UTC));
        assert_eq!(label(&later, &hasher, acme, 0), "free");
    }

    /// Class limits by plan, and an override that raises only a class.
    const CLASSES: &str = r#"
[quotas]
default_plan = "free"
plans = [
  { name = "free", limits = [{ requests = 10, per_seconds = 1 }], classes = { exports = [{ requests = 1, per_seconds = 60 }] } },
  { name = "pro", limits = [{ requests = 100, per_seconds = 1 }], classes = { exports = [{ requests = 5, per_seconds = 60 }] } },
]

[[quotas.routes]]
class = "exports"
method = "POST"
path = "/v1/exports"

[[quotas.overrides]]
tenant = "initech"
classes = { exports = [{ requests = 50, per_seconds = 60 }] }
reason = "reporting"
owner = "support"
expires = 2026-12-15
"#;

    #[test]
    fn a_class_only_override_keeps_whichever_plan_the_key_names() {
        let policy = Policy::from_toml(CLASSES, "q.toml", date!(2026 - 11 - 22)).unwrap();
        let quotas = policy.policy.quotas.unwrap();
        let hasher = KeyHasher::default();
        let at = CompiledAt {
            wall: datetime!(2026-11-22 00:00 UTC),
            nanos: 0,
        };
        let compiled = CompiledPolicy::compile(&quotas, &hasher, at);
        let export = http::Request::post("/v1/exports").body(()).unwrap();
        let status = http::Request::get("/status").body(()).unwrap();
        let policy_of = |id, plan, request: &http::Request<()>| {
            let key = Key::Tenant { id, plan };
            let set = compiled.resolve(&key, hasher.hash(&key), 0).set;
            let (set, _, _) = compiled.classify(RequestHead::of(request), None, set);
            set.policy_header.to_str().unwrap().to_owned()
        };
        assert_eq!(
            policy_of("initech", Some("pro"), &export),
            "\"pro\";q=100;w=1, \"pro-exports\";q=50;w=60"
        );
        assert_eq!(
            policy_of("initech", None, &export),
            "\"free\";q=10;w=1, \"free-exports\";q=50;w=60"
        );
        assert_eq!(
            policy_of("globex", Some("pro"), &export),
            "\"pro\";q=100;w=1, \"pro-exports\";q=5;w=60"
        );
        assert_eq!(
            policy_of("initech", Some("pro"), &status),
            "\"pro\";q=100;w=1"
        );
    }

    #[test]
    fn header_values_name_each_limit_with_its_burst_and_window() {
        let (policy, hasher) = compiled(datetime!(2026-11-22 00:00 UTC));
        let key = Key::Tenant {
            id: "initech",
            plan: None,
        };
        let set = policy.resolve(&key, hasher.hash(&key), 0).set;
        assert_eq!(
            set.policy_header,
            "\"free-2s\";q=20;w=2, \"free-86400s\";q=10000;w=86400"
        );
        let ip = Key::Ip("192.0.2.1".parse().unwrap());
        assert!(policy.resolve(&ip, hasher.hash(&ip), 0).set.shadow);
    }

    #[test]
    fn a_recompiled_policy_header_reuses_the_interned_text() {
        let first = interned_header_value("\"a\";q=1;w=1".to_owned());
        let again = interned_header_value("\"a\";q=1;w=1".to_owned());
        let other = interned_header_value("\"b\";q=1;w=1".to_owned());
        assert_eq!(first, again);
        assert_eq!(first.as_bytes().as_ptr(), again.as_bytes().as_ptr());
        assert_ne!(first.as_bytes().as_ptr(), other.as_bytes().as_ptr());
    }

    #[test]
    fn equal_limits_share_a_fingerprint_and_different_ones_do_not() {
        let (policy, hasher) = compiled(datetime!(2026-11-22 00:00 UTC));
        let fp = |key: Key<'_>| policy.resolve(&key, hasher.hash(&key), 0).set.fingerprint;
        let acme = fp(Key::Tenant {
            id: "acme",
            plan: None,
        });
        let pro = fp(Key::Tenant {
            id: "x",
            plan: Some("pro"),
        });
        let free = fp(Key::Tenant {
            id: "x",
            plan: None,
        });
        assert_eq!(acme, pro);
        assert_ne!(pro, free);
    }
}
