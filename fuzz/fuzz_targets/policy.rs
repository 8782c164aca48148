//! The policy parser and checker: any text is a policy or diagnostics that
//! render (with their file, line and column), never a panic.
#![no_main]

use floodgate_rules::Policy;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Policy::from_toml(text, "fuzz.toml", time::macros::date!(2026 - 12 - 04)) {
        Ok(loaded) => {
            for warning in &loaded.warnings {
                let _ = warning.to_string();
            }
        }
        Err(error) => {
            let _ = error.to_string();
        }
    }
});
