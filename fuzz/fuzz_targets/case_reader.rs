//! The golden-case reader never panics: any bytes are either a valid case (which the CPU reference can
//! run) or an `Error::InvalidCase`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wgpu_rmsprop::case::Case;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(case) = Case::from_json(text) {
        // Keep the work bounded: the reference is O(elements x steps).
        let elements: usize = case.variables.iter().map(|v| v.init.len()).sum();
        if elements * case.steps.len() <= 1 << 20 {
            let _ = case.run_reference();
        }
    }
});
