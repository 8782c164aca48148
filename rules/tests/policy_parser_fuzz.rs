//! Property tests on the policy parser: whatever the input, it answers with
//! a policy or located errors, and never panics.

use floodgate_rules::{Policy, Severity};
use proptest::prelude::*;
use time::macros::date;

const EXAMPLE: &str = include_str!("../../examples/floodgate.toml");

/// Checks the contract for one input.
fn check(text: &str) -> Result<(), TestCaseError> {
    let lines = text.split('\n').count();
    match Policy::from_toml(text, "fuzz.toml", date!(2026 - 11 - 22)) {
        Ok(loaded) => {
            for warning in &loaded.warnings {
                prop_assert_eq!(warning.severity, Severity::Warning);
                prop_assert!(warning.line >= 1 && warning.line <= lines);
            }
        }
        Err(error) => {
            prop_assert!(error.errors().count() >= 1, "an error without errors");
            for diagnostic in &error.diagnostics {
                prop_assert!(
                    diagnostic.line >= 1 && diagnostic.line <= lines,
                    "{}",
                    diagnostic
                );
                prop_assert!(diagnostic.column >= 1);
                prop_assert!(diagnostic.to_string().starts_with("fuzz.toml:"));
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
        check(&text)?;
    }

    #[test]
    fn mutated_example_never_panics(
        at in 0usize..EXAMPLE.len(),
        len in 0usize..40,
        insert in "[ -~\n]{0,12}",
    ) {
        // Replace a slice of the real example with random printable text.
        let mut start = at;
        while !EXAMPLE.is_char_boundary(start) { start -= 1; }
        let mut end = (start + len).min(EXAMPLE.len());
        while !EXAMPLE.is_char_boundary(end) { end -= 1; }
        let text = format!("{}{}{}", &EXAMPLE[..start], insert, &EXAMPLE[end..]);
        check(&text)?;
    }

    #[test]
    fn any_number_in_a_tier_is_accepted_or_located(requests in any::<i64>(), window in any::<i64>()) {
        let text = format!("[[tiers]]\nname = \"t\"\nrequests = {requests}\nwindow_seconds = {window}\naction = \"observe\"\n");
        check(&text)?;
        let valid = (1..=i64::from(u32::MAX)).contains(&requests) && (1..=i64::from(u32::MAX)).contains(&window);
        prop_assert_eq!(Policy::from_toml(&text, "fuzz.toml", date!(2026 - 11 - 22)).is_ok(), valid);
    }
}
