//! Fuzzes ChunkId / NodeId parsing: arbitrary bytes must give a value or an error, never a panic or a huge allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(id) = s.parse::<shoal_protocol::ChunkId>() {
            assert_eq!(id.to_string(), s.to_ascii_lowercase());
        }
        let _ = s.parse::<shoal_protocol::NodeId>();
    }
});
