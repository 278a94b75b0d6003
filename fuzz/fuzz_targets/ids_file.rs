//! The ids-file parser never panics, reports lines that exist, and accepts
//! each ID at most once.
#![no_main]

use libfuzzer_sys::fuzz_target;
use logferry_receiver::ids::parse;

fuzz_target!(|text: &str| {
    let (devices, errors) = parse(text);
    let lines = text.lines().count();
    assert!(errors.iter().all(|e| e.line >= 1 && e.line <= lines));
    assert!(devices.len() + errors.len() <= lines);
    for (i, device) in devices.iter().enumerate() {
        assert!(devices[..i].iter().all(|other| other.id != device.id), "an ID accepted twice");
        assert_eq!(device.id.reveal().len(), 16);
    }
});
