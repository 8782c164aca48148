//! `floodgate render-infra`: the CloudFormation under `infra/`, from the policy.

use super::{CliError, RenderInfraArgs, Status, load_policy};
use crate::infra::render;

/// Writes (or, with `--check`, compares) the generated infra files.
pub(super) fn run(args: &RenderInfraArgs) -> Result<Status, CliError> {
    let Some(loaded) = load_policy(&args.policy)? else {
        return Ok(Status::Invalid);
    };
    let rendered = render(&loaded.policy)
        .map_err(|e| CliError::Input(format!("{}: {e}", args.policy.config.display())))?;
    let policy_file = args.policy.config.display().to_string();
    let mut stale = Vec::new();
    for (name, contents) in rendered.files(&policy_file) {
        let path = args.out.join(name);
        if args.check {
            if std::fs::read_to_string(&path).ok().as_deref() != Some(contents.as_str()) {
                stale.push(path.display().to_string());
            }
        } else {
            std::fs::create_dir_all(&args.out).map_err(|e| {
                CliError::Input(format!("cannot create {}: {e}", args.out.display()))
            })?;
            std::fs::write(&path, contents)
                .map_err(|e| CliError::Input(format!("cannot write {}: {e}", path.display())))?;
            eprintln!("wrote {}", path.display());
        }
    }
    if stale.is_empty() {
        Ok(Status::Success)
    } else {
        eprintln!(
            "out of date with {policy_file}: {}; run floodgate render-infra --config {policy_file}",
            stale.join(", ")
        );
        Ok(Status::Invalid)
    }
}
