//! Fuzzes tar walking and manifest handling: the input is taken as the decompressed tar stream
//! (compressed here, so the fuzzer spends its effort past the zstd layer). The verifier must
//! never panic, and must stay within the bounds the manifest declares.
#![no_main]

use caxton::package::verify::{DiscardSink, verify_reader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(compressed) = zstd::encode_all(data, 1) else {
        return;
    };
    let _ = verify_reader(compressed.as_slice(), compressed.len() as u64, &mut DiscardSink);
    // Raw bytes too: the zstd layer and the magic check.
    let _ = verify_reader(data, data.len() as u64, &mut DiscardSink);
});
