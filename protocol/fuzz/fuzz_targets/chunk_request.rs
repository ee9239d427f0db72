//! Fuzzes the ChunkRequest codec: arbitrary bytes must give a value or an error, never a panic or a huge allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_protocol::wire::{ChunkRequest, WireMessage};

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = ChunkRequest::decode_payload(data) {
        // Whatever decodes re-encodes and decodes to the same message.
        let again = msg.encode_payload().expect("a decoded message encodes");
        assert_eq!(ChunkRequest::decode_payload(&again).expect("re-decodes"), msg);
    }
    let _ = ChunkRequest::decode_frame(data);
});
