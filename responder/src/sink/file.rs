//! Block lists as JSON files, one per IP set, shaped like the UpdateIPSet
//! request (`Name`, `Scope`, `Addresses`), so they can be read, diffed, or
//! applied with standard tooling. The embedded default target.
//!
//! Files are written atomically (temporary file, then rename), and only
//! when their contents change.

use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{ApiCalls, Changes, Contents, DesiredSets, TargetError, TargetReport, WafTarget};
use crate::failure::FailureKind;

/// An I/O failure on `path` as a target error: a missing directory or file
/// is not found, a permission is denied, anything else is worth retrying.
fn io_failed(path: &std::path::Path, error: &std::io::Error) -> TargetError {
    let kind = match error.kind() {
        std::io::ErrorKind::NotFound => FailureKind::NotFound,
        std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
            FailureKind::Denied
        }
        _ => FailureKind::Unavailable,
    };
    TargetError::new(kind, format!("{}: {error}", path.display()))
}

/// A directory of IP set files.
#[derive(Debug, Clone)]
pub struct FileTarget {
    dir: PathBuf,
    ipv4_sets: Vec<String>,
    ipv6_sets: Vec<String>,
}

/// One file: the body of an UpdateIPSet request, less the id and lock token
/// only AWS knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IpSetFile {
    /// The set's name.
    pub name: String,
    /// Always `REGIONAL` here; the CloudFront scope takes the same list.
    pub scope: String,
    /// `IPV4` or `IPV6`.
    #[serde(rename = "IPAddressVersion")]
    pub ip_address_version: String,
    /// CIDR strings.
    pub addresses: Vec<String>,
}

impl FileTarget {
    /// Writes `<dir>/<set name>.json` for each named set.
    pub fn new(dir: impl Into<PathBuf>, ipv4_sets: Vec<String>, ipv6_sets: Vec<String>) -> Self {
        FileTarget {
            dir: dir.into(),
            ipv4_sets,
            ipv6_sets,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    fn read_set(&self, name: &str) -> Result<Vec<IpNet>, TargetError> {
        let path = self.path(name);
        let invalid = |detail: String| TargetError::new(FailureKind::Invalid, detail);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let file: IpSetFile = serde_json::from_slice(&bytes)
                    .map_err(|e| invalid(format!("{}: {e}", path.display())))?;
                file.addresses
                    .iter()
                    .map(|a| {
                        a.parse()
                            .map_err(|e| invalid(format!("{}: {a}: {e}", path.display())))
                    })
                    .collect()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(io_failed(&path, &e)),
        }
    }

    fn write(&self, desired: &DesiredSets) -> Result<Changes, TargetError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| io_failed(&self.dir, &e))?;
        let mut changes = Changes::default();
        for (names, lists, version) in [
            (&self.ipv4_sets, &desired.ipv4, "IPV4"),
            (&self.ipv6_sets, &desired.ipv6, "IPV6"),
        ] {
            for (i, name) in names.iter().enumerate() {
                let list = lists.get(i).map_or(&[][..], Vec::as_slice);
                let current = self.read_set(name)?;
                // Every set gets its file, even an empty one.
                if !self.path(name).exists() {
                    changes.created += 1;
                } else if current == list {
                    continue;
                }
                changes.added += list.iter().filter(|n| !current.contains(n)).count();
                changes
                    .removed
                    .extend(current.iter().filter(|n| !list.contains(n)));
                let file = IpSetFile {
                    name: name.clone(),
                    scope: "REGIONAL".into(),
                    ip_address_version: version.into(),
                    addresses: list.iter().map(ToString::to_string).collect(),
                };
                let bytes = serde_json::to_vec_pretty(&file).expect("IP set files serialize");
                crate::atomic_file::write_atomically(&self.dir, &format!("{name}.json"), &bytes)
                    .map_err(|e| io_failed(&self.path(name), &e))?;
            }
        }
        Ok(changes)
    }
}

impl WafTarget for FileTarget {
    fn label(&self) -> String {
        format!("file {}", self.dir.display())
    }

    async fn read(&self) -> Result<Contents, TargetError> {
        let mut nets = Vec::new();
        for name in self.ipv4_sets.iter().chain(&self.ipv6_sets) {
            nets.extend(self.read_set(name)?);
        }
        Ok(Contents {
            nets,
            calls: ApiCalls::default(),
        })
    }

    async fn apply(&self, desired: &DesiredSets) -> TargetReport {
        TargetReport::of(
            self.label(),
            self.write(desired),
            ApiCalls::default(),
            Vec::new(),
        )
    }
}
