//! The golden-case reader and a small run treat any bytes as untrusted input and stay within a memory
//! cap (issue 18). Any text is either an `Error::InvalidCase` or a case that: is named by a printable
//! one-token escape and a safe file stem; runs on the CPU reference (or is refused as unsupported or
//! over the budget) under a 64 MiB budget; and whose emitted results read back bit for bit (NaN as
//! NaN). The global allocator refuses to hold more than 256 MiB at once, so a path that allocates
//! beyond what the budget allows aborts ("memory allocation failed") and libFuzzer reports it.
#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use libfuzzer_sys::fuzz_target;
use wgpu_rmsprop::case::{
    emit_json, escape_name, read_emitted, sanitize_file_stem, Case, Limits, StepState,
};
use wgpu_rmsprop::Error;

/// What one input may take: the reader's and the run's budget.
const BUDGET: u64 = 64 << 20;
/// What the process may hold at once: the budget, libFuzzer's own data and slack.
const CAP: usize = 256 << 20;

struct Capped;
static IN_USE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if IN_USE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size() > CAP {
            IN_USE.fetch_sub(layout.size(), Ordering::Relaxed);
            return std::ptr::null_mut();
        }
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        IN_USE.fetch_sub(layout.size(), Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = layout.size();
        if new_size > old
            && IN_USE.fetch_add(new_size - old, Ordering::Relaxed) + (new_size - old) > CAP
        {
            IN_USE.fetch_sub(new_size - old, Ordering::Relaxed);
            return std::ptr::null_mut();
        }
        let p = System.realloc(ptr, layout, new_size);
        if p.is_null() {
            if new_size > old {
                IN_USE.fetch_sub(new_size - old, Ordering::Relaxed);
            }
        } else if new_size < old {
            IN_USE.fetch_sub(old - new_size, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Capped = Capped;

/// Step number, learning-rate bits and value bits of every state (NaN as one value: its payload need
/// not survive text).
type Bits = Vec<(u64, Option<u64>, Vec<u32>)>;

fn bits(states: &[StepState]) -> Bits {
    states
        .iter()
        .map(|s| {
            let lr = s
                .learning_rate
                .map(|x| if x.is_nan() { u64::MAX } else { x.to_bits() });
            let v = s
                .variables
                .iter()
                .chain(s.slots.values().flatten())
                .flatten()
                .map(|x| if x.is_nan() { u32::MAX } else { x.to_bits() })
                .collect();
            (s.step, lr, v)
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let limits = Limits::new(BUDGET);
    let case = match Case::from_json_limited(text, &limits) {
        Ok(c) => c,
        Err(Error::InvalidCase { .. }) => return,
        Err(e) => panic!("reading gives InvalidCase errors only, got {e:?}"),
    };
    let shown = escape_name(&case.name);
    assert!(!shown.is_empty() && shown.chars().all(|c| c.is_ascii_graphic()), "{shown}");
    let stem = sanitize_file_stem(&case.name);
    assert!(
        !stem.is_empty()
            && !stem.starts_with(['.', '-'])
            && stem.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)),
        "{stem}"
    );
    // Keep the work (not the memory, which the budget bounds) small: O(elements x steps).
    let elements: usize = case.variables.iter().map(|v| v.init.len()).sum();
    if elements.saturating_mul(case.steps.len()) > 1 << 18 {
        return;
    }
    let mut states = Vec::new();
    let ran = case.run_reference_streaming(&limits, &mut |s| {
        states.push(s);
        Ok(())
    });
    // Unsupported, over the budget, or refused by the reference (a schedule whose rate goes
    // negative, ...): an error, which is all that is asked.
    if ran.is_err() {
        return;
    }
    let _ = case.judge(&states);
    let back = read_emitted(&emit_json(&case.name, &states)).expect("emitted results read back");
    assert_eq!(back.name, case.name);
    assert_eq!(bits(&back.expected), bits(&states));
});
