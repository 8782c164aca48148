//! CIDR utilities: exact aggregation and fast longest-prefix lookup, for
//! IPv4 and IPv6.
//!
//! # Examples
//!
//! ```
//! use floodgate_rules::cidr::{aggregate, PrefixMap};
//! use ipnet::IpNet;
//!
//! let nets: Vec<IpNet> = ["198.51.100.0/25", "198.51.100.128/25", "2001:db8::/48"]
//!     .iter()
//!     .map(|s| s.parse().unwrap())
//!     .collect();
//! assert_eq!(aggregate(&nets), vec![
//!     "198.51.100.0/24".parse::<IpNet>().unwrap(),
//!     "2001:db8::/48".parse().unwrap(),
//! ]);
//!
//! let map = PrefixMap::new(&nets);
//! assert_eq!(map.lookup("198.51.100.200".parse().unwrap()), Some(1));
//! assert_eq!(map.lookup("203.0.113.1".parse().unwrap()), None);
//! ```

mod aggregate;
mod bits;
mod table;

pub use aggregate::{aggregate, aggregate_v4, aggregate_v6, exclude};
pub use table::PrefixMap;
