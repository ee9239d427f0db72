//! Fuzzes the LookupRequest codec: arbitrary bytes must give a value or an error, never a panic or a huge allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_protocol::wire::{LookupRequest, WireMessage};

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = LookupRequest::decode_payload(data) {
        // Whatever decodes re-encodes and decodes to the same message.
        let again = msg.encode_payload().expect("a decoded message encodes");
        assert_eq!(LookupRequest::decode_payload(&again).expect("re-decodes"), msg);
    }
    let _ = LookupRequest::decode_frame(data);
});
