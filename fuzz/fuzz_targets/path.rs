//! The path normaliser on arbitrary text: never a panic; a normalised path is stable
//! (normalising it again changes nothing) and free of what the normaliser refuses.
#![no_main]

use claimgate::path::normalise;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(n) = normalise(path) {
        let again = normalise(&n).expect("a normalised path is accepted again");
        assert_eq!(again, n);
        assert!(!n.contains("//") && !n.contains("/./") && !n.contains("/../"));
    }
});
