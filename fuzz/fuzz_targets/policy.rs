//! Policy loading on arbitrary text: a result or located errors, never a panic.
#![no_main]

use claimgate::policy::{LoadContext, PolicySet};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let ctx = LoadContext {
        issuers: vec!["dev".into()],
        upstreams: vec!["main".into()],
        default_upstream: Some("main".into()),
        sources: [("balance".to_string(), false)].into_iter().collect(),
        ..LoadContext::default()
    };
    if let Err(errors) = PolicySet::from_sources(&[("fuzz.toml".into(), text.to_string())], &ctx) {
        for e in errors {
            assert!(e.line >= 1 && e.column >= 1);
        }
    }
});
