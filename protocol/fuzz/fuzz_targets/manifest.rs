//! Fuzzes Manifest::decode: arbitrary bytes must give a value or an error, never a panic or a huge allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = shoal_protocol::Manifest::decode(data) {
        // Whatever decodes is canonical: it re-encodes to the same bytes.
        assert_eq!(m.encode(), data);
    }
});
