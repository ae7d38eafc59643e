//! Fuzzes manifest parsing and validation: any bytes give a manifest or an error, never a panic.
#![no_main]

use caxton::package::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::parse(data) {
        // A valid manifest round-trips through its own serialisation.
        let again = Manifest::parse(m.to_yaml().as_bytes()).expect("a valid manifest re-parses");
        assert_eq!(again, m);
    }
});
