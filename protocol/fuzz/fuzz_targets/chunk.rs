//! Fuzzes parse_chunk: arbitrary bytes must give a value or an error, never a panic or a huge allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(parsed) = shoal_protocol::parse_chunk(data) {
        assert!(!parsed.packets.is_empty());
        assert!(parsed.packets.iter().all(|p| !p.is_empty()));
    }
});
