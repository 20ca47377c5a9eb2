//! Sparse-index validation and grouping: arbitrary indices never panic, every accepted list is grouped
//! into distinct in-range rows whose duplicate positions form a permutation in list order.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wgpu_rmsprop::sparse::{group_rows, validate, Indices};

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let rows = usize::from(data[0]);
    let row_len = usize::from(data[1] % 8);
    let indices: Vec<i32> = data[2..]
        .chunks_exact(4)
        .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let values_len = if data[2] % 7 == 0 { indices.len() * row_len + 1 } else { indices.len() * row_len };
    let shape = [rows, row_len];
    let idx = Indices::I32(&indices);
    match validate("fuzz", &shape, &idx, values_len) {
        Err(_) => {}
        Ok(()) => {
            assert_eq!(values_len, indices.len() * row_len);
            let (mut keys, mut out) = (Vec::new(), Vec::new());
            let unique = group_rows(&idx, &mut keys, &mut out) as usize;
            assert_eq!(out[0] as usize, unique);
            let (distinct, rest) = out[2..].split_at(unique);
            let (firsts, rest) = rest.split_at(unique);
            let (lasts, positions) = rest.split_at(unique);
            assert!(distinct.windows(2).all(|w| w[0] < w[1]));
            assert!(distinct.iter().all(|&r| (r as usize) < rows));
            assert_eq!(positions.len(), indices.len());
            let mut seen = vec![false; indices.len()];
            for u in 0..unique {
                let group = &positions[firsts[u] as usize..lasts[u] as usize];
                assert!(group.windows(2).all(|w| w[0] < w[1]), "list order within a row");
                for &p in group {
                    assert_eq!(indices[p as usize] as u32, distinct[u]);
                    assert!(!seen[p as usize]);
                    seen[p as usize] = true;
                }
            }
            assert!(seen.iter().all(|&s| s));
        }
    }
});
