//! Fuzzes the ClusterAnnounce codec (a super-peer's aggregated announce): arbitrary bytes must give a value or an error, never a panic or a huge allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_protocol::wire::{ClusterAnnounce, WireMessage};

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = ClusterAnnounce::decode_payload(data) {
        // Whatever decodes re-encodes and decodes to the same message.
        let again = msg.encode_payload().expect("a decoded message encodes");
        assert_eq!(ClusterAnnounce::decode_payload(&again).expect("re-decodes"), msg);
    }
    let _ = ClusterAnnounce::decode_frame(data);
});
