//! Which route class a request belongs to and what it costs: the
//! [`RouteClass`] extension the service sets, else the policy's
//! `[[quotas.routes]]` table, else no class and a cost of 1.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use floodgate_rules::policy::{Quotas, Route};

use crate::key::RequestHead;

/// The route class and cost of a request, set by the service in the
/// request's extensions before the layer sees it. It wins over the policy's
/// `[[quotas.routes]]` table.
///
/// A class limits requests only where the tenant's plan (or override) gives
/// it limits under `classes`; a class the policy does not know is logged and
/// charged to the plan alone. The cost is drawn from the plan's limits and
/// the class's alike.
///
/// # Examples
///
/// ```
/// use floodgate_ratelimit::RouteClass;
///
/// let export = RouteClass::named("exports").cost(5);
/// assert_eq!(export.class(), Some("exports"));
/// assert_eq!(export.units(), 5);
/// // No class, but heavier than a plain request:
/// assert_eq!(RouteClass::default().cost(3).class(), None);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteClass {
    class: Option<Cow<'static, str>>,
    cost: u32,
}

/// Whether this process ever made a [`RouteClass`] or compiled a route
/// table. Until it has, no request can have a class, and the layer skips
/// looking for one: the extension lookup is most of what classes would cost
/// a service that does not use them.
static IN_USE: AtomicBool = AtomicBool::new(false);

/// Whether a request may have a route class.
#[inline]
pub(crate) fn classes_in_use() -> bool {
    IN_USE.load(Ordering::Relaxed)
}

impl Default for RouteClass {
    /// No class, a cost of 1.
    fn default() -> RouteClass {
        IN_USE.store(true, Ordering::Relaxed);
        RouteClass {
            class: None,
            cost: 1,
        }
    }
}

impl RouteClass {
    /// A request of class `class`, costing 1.
    pub fn named(class: impl Into<Cow<'static, str>>) -> RouteClass {
        IN_USE.store(true, Ordering::Relaxed);
        RouteClass {
            class: Some(class.into()),
            cost: 1,
        }
    }

    /// The same, costing `units` (a cost of 0 counts as 1).
    pub fn cost(self, units: u32) -> RouteClass {
        RouteClass {
            cost: units.max(1),
            ..self
        }
    }

    /// The class, if any.
    pub fn class(&self) -> Option<&str> {
        self.class.as_deref()
    }

    /// What the request costs.
    pub fn units(&self) -> u32 {
        self.cost
    }
}

/// A class by its index among the policy's classes.
pub(crate) type ClassIndex = usize;

/// The classes and route table of a compiled policy.
#[derive(Debug)]
pub(crate) struct Routes {
    /// Class names to their index, sorted as the policy lists them.
    classes: HashMap<Box<str>, ClassIndex, foldhash::fast::FixedState>,
    /// Each route with its class's index, in file order.
    table: Vec<(Route, ClassIndex)>,
}

/// What a request was classified as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class<'r> {
    /// No class.
    None,
    /// The class of this index.
    Known(ClassIndex),
    /// A class the service named that the policy does not know.
    Unknown(&'r str),
}

impl Routes {
    pub fn compile(quotas: &Quotas) -> Routes {
        let classes: HashMap<Box<str>, ClassIndex, _> = quotas
            .classes()
            .iter()
            .enumerate()
            .map(|(i, class)| (class.as_str().into(), i))
            .collect();
        let table = quotas
            .routes()
            .iter()
            .map(|route| (route.clone(), classes[route.class.as_str()]))
            .collect::<Vec<_>>();
        if !table.is_empty() {
            IN_USE.store(true, Ordering::Relaxed);
        }
        Routes { classes, table }
    }

    /// How many classes the policy names.
    pub fn class_count(&self) -> usize {
        self.classes.len()
    }

    /// The index of the class named `name`.
    pub fn index_of(&self, name: &str) -> Option<ClassIndex> {
        self.classes.get(name).copied()
    }

    /// The class and cost of a request with `head`, whose [`RouteClass`]
    /// extension is `extension`: the extension's, else the first route
    /// that matches, else none and 1.
    pub fn classify<'r>(
        &self,
        head: RequestHead<'_>,
        extension: Option<&'r RouteClass>,
    ) -> (Class<'r>, u64) {
        if let Some(route) = extension {
            let class = match route.class() {
                None => Class::None,
                Some(name) => self
                    .index_of(name)
                    .map_or(Class::Unknown(name), Class::Known),
            };
            return (class, u64::from(route.cost));
        }
        let (method, path) = (head.method.as_str(), head.uri.path());
        match self
            .table
            .iter()
            .find(|(route, _)| route.matches(method, path))
        {
            Some((route, class)) => (Class::Known(*class), u64::from(route.cost.get())),
            None => (Class::None, 1),
        }
    }
}
