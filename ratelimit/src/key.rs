//! Who a request is charged to: a [`TenantKey`] reads it from the request.
//!
//! The recommended key is a [`Tenant`] extension set by the service's own
//! authentication layer ([`TenantExtension`]): the tenant is then whoever
//! authenticated, not whatever a header claims. [`TenantHeader`] reads a
//! header, [`crate::ClientIp`] the client address, and any closure
//! `Fn(RequestHead) -> Option<Key>` is a key too.
//!
//! # Examples
//!
//! ```
//! use floodgate_ratelimit::{Key, RequestHead, TenantKey, key_fn};
//!
//! // Charge each request to the first path segment, as in `/acme/orders`.
//! let by_path = key_fn(|head: RequestHead<'_>| {
//!     let tenant = head.uri.path().trim_start_matches('/').split('/').next()?;
//!     (!tenant.is_empty()).then_some(Key::Tenant { id: tenant, plan: None })
//! });
//! let request = http::Request::get("/acme/orders").body(()).unwrap();
//! assert_eq!(
//!     by_path.key(RequestHead::of(&request)),
//!     Some(Key::Tenant { id: "acme", plan: None })
//! );
//! ```

use std::fmt;
use std::net::IpAddr;

use http::header::HeaderName;
use http::{Extensions, HeaderMap, Method, Request, Uri};

/// The parts of a request a key may read.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'r> {
    /// The method.
    pub method: &'r Method,
    /// The URI.
    pub uri: &'r Uri,
    /// The headers.
    pub headers: &'r HeaderMap,
    /// The extensions, where auth layers and servers leave what they learnt.
    pub extensions: &'r Extensions,
}

impl<'r> RequestHead<'r> {
    /// Borrows the head of `request`.
    #[inline]
    pub fn of<B>(request: &'r Request<B>) -> RequestHead<'r> {
        RequestHead {
            method: request.method(),
            uri: request.uri(),
            headers: request.headers(),
            extensions: request.extensions(),
        }
    }
}

/// What a request is charged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key<'r> {
    /// A tenant, optionally with the plan the service assigned it. An
    /// approved override in the policy wins over `plan`; without either the
    /// tenant gets the default plan.
    Tenant {
        /// The tenant's identifier.
        id: &'r str,
        /// The plan the service's own records give the tenant.
        plan: Option<&'r str>,
    },
    /// A credential such as an API key: charged to its hash, on the default
    /// plan, and never logged.
    Secret(&'r [u8]),
    /// An anonymous client address, on the anonymous plan.
    Ip(IpAddr),
}

impl fmt::Display for Key<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Tenant { id, .. } => write!(f, "tenant {id}"),
            Key::Secret(_) => f.write_str("a secret key (redacted)"),
            Key::Ip(ip) => write!(f, "client {ip}"),
        }
    }
}

/// Reads the key a request is charged to; `None` when it has none.
pub trait TenantKey: Send + Sync + 'static {
    /// The key of the request whose head is `head`.
    fn key<'r>(&self, head: RequestHead<'r>) -> Option<Key<'r>>;
}

impl<F> TenantKey for F
where
    F: for<'r> Fn(RequestHead<'r>) -> Option<Key<'r>> + Send + Sync + 'static,
{
    fn key<'r>(&self, head: RequestHead<'r>) -> Option<Key<'r>> {
        self(head)
    }
}

/// Helps the compiler see a closure as a [`TenantKey`]: a closure that
/// returns a borrow of its argument needs the signature spelled out once.
pub fn key_fn<F>(f: F) -> F
where
    F: for<'r> Fn(RequestHead<'r>) -> Option<Key<'r>> + Send + Sync + 'static,
{
    f
}

/// The tenant as the service's authentication layer established it. Insert
/// it into the request's extensions before the rate-limit layer runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    id: String,
    plan: Option<String>,
}

impl Tenant {
    /// A tenant on the default plan (or on its override, if ops gave it one).
    pub fn new(id: impl Into<String>) -> Tenant {
        Tenant {
            id: id.into(),
            plan: None,
        }
    }

    /// The same tenant on `plan`, as the service's own records have it.
    pub fn with_plan(mut self, plan: impl Into<String>) -> Tenant {
        self.plan = Some(plan.into());
        self
    }

    /// The tenant's identifier.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The plan the service gave it, if any.
    pub fn plan(&self) -> Option<&str> {
        self.plan.as_deref()
    }
}

/// Reads the [`Tenant`] extension: the recommended key.
#[derive(Debug, Clone, Copy, Default)]
pub struct TenantExtension;

impl TenantKey for TenantExtension {
    #[inline]
    fn key<'r>(&self, head: RequestHead<'r>) -> Option<Key<'r>> {
        let tenant = head.extensions.get::<Tenant>()?;
        valid_tenant_id(&tenant.id).then_some(Key::Tenant {
            id: &tenant.id,
            plan: tenant.plan.as_deref(),
        })
    }
}

/// Reads a header such as `x-tenant-id`, or, with
/// [`TenantHeader::secret`], an API key that is hashed and never logged.
///
/// A header is only as trustworthy as whatever sets it: use it behind a
/// gateway that authenticates the tenant and overwrites the header.
#[derive(Debug, Clone)]
pub struct TenantHeader {
    name: HeaderName,
    secret: bool,
}

impl TenantHeader {
    /// A header holding the tenant's id.
    pub fn new(name: HeaderName) -> TenantHeader {
        TenantHeader {
            name,
            secret: false,
        }
    }

    /// A header holding a credential, such as `x-api-key`.
    pub fn secret(name: HeaderName) -> TenantHeader {
        TenantHeader { name, secret: true }
    }
}

impl TenantKey for TenantHeader {
    #[inline]
    fn key<'r>(&self, head: RequestHead<'r>) -> Option<Key<'r>> {
        let value = head.headers.get(&self.name)?;
        if self.secret {
            return (!value.is_empty()).then(|| Key::Secret(value.as_bytes()));
        }
        let id = value.to_str().ok()?;
        valid_tenant_id(id).then_some(Key::Tenant { id, plan: None })
    }
}

/// The policy's rule for tenant ids: 1 to 128 characters, no spaces or
/// control characters.
#[inline]
fn valid_tenant_id(id: &str) -> bool {
    // Most ids are short printable ASCII, which one pass over the bytes
    // settles; anything else takes the full rule.
    let printable_ascii = id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic());
    (printable_ascii && !id.is_empty()) || valid_tenant_id_slow(id)
}

/// The full rule, for ids the shortcut cannot settle.
#[cold]
fn valid_tenant_id_slow(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 512
        && id.chars().count() <= 128
        && !id.chars().any(|c| c.is_whitespace() || c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> http::request::Builder {
        Request::get("/")
    }

    #[test]
    fn the_extension_carries_the_tenant_and_its_plan() {
        let mut req = request().body(()).unwrap();
        req.extensions_mut()
            .insert(Tenant::new("acme").with_plan("pro"));
        assert_eq!(
            TenantExtension.key(RequestHead::of(&req)),
            Some(Key::Tenant {
                id: "acme",
                plan: Some("pro")
            })
        );
        let bare = request().body(()).unwrap();
        assert_eq!(TenantExtension.key(RequestHead::of(&bare)), None);
    }

    #[test]
    fn a_header_key_rejects_ids_the_policy_could_not_name() {
        let key = TenantHeader::new(HeaderName::from_static("x-tenant-id"));
        let ok = request().header("x-tenant-id", "globex").body(()).unwrap();
        assert_eq!(
            key.key(RequestHead::of(&ok)),
            Some(Key::Tenant {
                id: "globex",
                plan: None
            })
        );
        for bad in ["", "two words", &"x".repeat(129)] {
            let req = request().header("x-tenant-id", bad).body(()).unwrap();
            assert_eq!(key.key(RequestHead::of(&req)), None, "{bad:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn the_ascii_shortcut_agrees_with_the_full_rule(id in "\\PC{0,130}|[ -~]{0,130}|[!-~]{120,136}|\\PC*") {
            proptest::prop_assert_eq!(valid_tenant_id(&id), valid_tenant_id_slow(&id));
        }
    }

    #[test]
    fn a_secret_header_is_never_displayed() {
        let key = TenantHeader::secret(HeaderName::from_static("x-api-key"));
        let req = request()
            .header("x-api-key", "sk_live_123")
            .body(())
            .unwrap();
        let found = key.key(RequestHead::of(&req)).unwrap();
        assert_eq!(found, Key::Secret(b"sk_live_123"));
        assert!(!found.to_string().contains("sk_live"));
    }
}
