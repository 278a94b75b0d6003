//! The Authorization header parser never panics, and what it accepts
//! prints back to a header that parses to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use logferry_common::signing::AuthHeader;

fuzz_target!(|text: &str| {
    let Ok(header) = text.parse::<AuthHeader>() else { return };
    let again: AuthHeader = header.to_string().parse().expect("own output parses");
    assert!(again == header);
});
