//! `floodgate review`: the exceptions ops approve, with what needs attention.

use floodgate_rules::review::{ItemKind, ReviewItem, review};

use super::{CliError, Format, ReviewArgs, Status, load_policy};

/// Prints every allow entry and tenant override, as a table or JSON.
pub(super) fn run(args: &ReviewArgs) -> Result<Status, CliError> {
    if !args.logs.is_empty() {
        return Err(CliError::Unsupported(
            "review --logs needs the WAF log reader, which this build does not have yet; run review without --logs".to_owned(),
        ));
    }
    let Some(loaded) = load_policy(&args.policy)? else {
        return Ok(Status::Invalid);
    };
    let items = review(&loaded.policy);
    let output = match args.format {
        Format::Table => table(&items),
        Format::Json => {
            let document = serde_json::json!({
                "file": args.policy.config.display().to_string(),
                "evaluated_on": loaded.policy.evaluated_on.to_string(),
                "items": items,
                "warnings": loaded.warnings.iter().map(ToString::to_string).collect::<Vec<_>>(),
            });
            serde_json::to_string_pretty(&document).expect("review items serialize") + "\n"
        }
    };
    use std::io::Write;
    std::io::stdout().write_all(output.as_bytes())?;
    Ok(Status::Success)
}

/// Aligned columns, reason last because it is the longest.
fn table(items: &[ReviewItem]) -> String {
    if items.is_empty() {
        return "no allow-list exceptions or tenant overrides\n".to_owned();
    }
    let header = [
        "KIND",
        "SUBJECT",
        "GRANTS",
        "OWNER",
        "EXPIRES",
        "DAYS LEFT",
        "FLAGS",
        "LINE",
        "REASON",
    ]
    .map(String::from);
    let rows: Vec<[String; 9]> = items
        .iter()
        .map(|item| {
            [
                match item.kind {
                    ItemKind::Allow => "allow".to_owned(),
                    ItemKind::TenantOverride => "tenant".to_owned(),
                },
                item.subject.clone(),
                item.grants.clone(),
                item.owner.clone(),
                item.expires.clone(),
                if item.days_left < 0 {
                    "EXPIRED".to_owned()
                } else {
                    item.days_left.to_string()
                },
                if item.flags.is_empty() {
                    "-".to_owned()
                } else {
                    item.flags
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                },
                item.line.to_string(),
                item.reason.clone(),
            ]
        })
        .collect();
    let mut widths = header.clone().map(|h| h.chars().count());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}
