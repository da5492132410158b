//! Arbitrary bytes as a client text message: the protocol parser must answer with a
//! request or an error, never panic.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buf = data.to_vec();
    let _ = corecast_wire::protocol::client::parse(&mut buf, &mut simd_json_buffers());
});

fn simd_json_buffers() -> corecast_wire::protocol::client::Buffers {
    corecast_wire::protocol::client::Buffers::default()
}
