//! CPU twins of the stochastic rounding in `shaders/half.wgsl`, bit for bit.
//!
//! The round-to-nearest-even conversions have their twins in the `half` crate
//! (`half::f16::from_f32`, `half::bf16::from_f32` and their `to_f32`), which the WGSL matches bit for
//! bit, NaN payloads included. These functions read like the WGSL so the two can be compared line by
//! line.

/// The "lowbias32" integer finalizer (bijective, strong avalanche), as `sr_mix` in `half.wgsl`.
fn sr_mix(v: u32) -> u32 {
    let mut h = v;
    h ^= h >> 16;
    h = h.wrapping_mul(0x7feb_352d);
    h ^= h >> 15;
    h = h.wrapping_mul(0x846c_a68b);
    h ^= h >> 16;
    h
}

/// Random bits for stochastic rounding of element `elem` at optimizer step `step` under `seed`: the
/// three folded in one after another through a 32-bit finalizer (wrapping arithmetic). Twin of the
/// WGSL `sr_hash`.
pub fn sr_hash(seed: u32, step: u32, elem: u32) -> u32 {
    let mut h = sr_mix(seed ^ 0x9e37_79b9);
    h = sr_mix(h ^ step);
    sr_mix(h ^ elem)
}

/// Stochastic rounding of `x` to bf16 bits with random bits `r` (only the low 16 are used), twin of
/// the WGSL `f32_to_bf16_stochastic`.
///
/// The low 16 bits of `r` are added to the bits of `x` and the sum truncated: `x` goes to the bf16
/// neighbour above it with probability `(x - lo) / (hi - lo)`, so the result is unbiased in
/// expectation, and a value representable in bf16 is returned unchanged. A NaN converts as
/// `half::bf16::from_f32` (sign and top payload kept, quiet bit set); ±inf stays ±inf. A finite value
/// never becomes infinite: where the carry would reach the infinity pattern (magnitude above the
/// largest finite bf16, `0x7f7f`), the result saturates to `±0x7f7f`.
pub fn f32_to_bf16_stochastic(x: f32, r: u32) -> u16 {
    let b = x.to_bits();
    let a = b & 0x7fff_ffff;
    if a > 0x7f80_0000 {
        return ((b >> 16) | 0x40) as u16;
    }
    let t = b.wrapping_add(r & 0xffff) >> 16;
    let t = if a < 0x7f80_0000 && (t & 0x7fff) == 0x7f80 {
        t - 1
    } else {
        t
    };
    t as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;

    /// A spread of f32 bit patterns: every 4099th pattern plus the edges.
    fn samples() -> impl Iterator<Item = f32> {
        (0..=u32::MAX)
            .step_by(4099)
            .chain([
                0,
                1,
                0x0000_ffff,
                0x7f7f_0000,
                0x7f7f_8000,
                0x7f7f_ffff,
                0x7f80_0000,
            ])
            .flat_map(|b| [b, b | 0x8000_0000])
            .map(f32::from_bits)
    }

    #[test]
    fn representable_values_are_unchanged() {
        for h in 0..=u16::MAX {
            let x = bf16::from_bits(h).to_f32();
            for r in [
                0,
                1,
                0x7fff,
                0x8000,
                0xffff,
                u32::MAX,
                sr_hash(1, 2, h as u32),
            ] {
                assert_eq!(
                    f32_to_bf16_stochastic(x, r),
                    bf16::from_f32(x).to_bits(),
                    "{h:#06x} r {r:#x}"
                );
            }
        }
    }

    #[test]
    fn result_is_one_of_the_two_neighbours() {
        for (i, x) in samples().enumerate() {
            let b = x.to_bits();
            if x.is_nan() {
                assert_eq!(
                    f32_to_bf16_stochastic(x, 0x1234),
                    bf16::from_f32(x).to_bits()
                );
                continue;
            }
            let lo = (b >> 16) as u16; // truncation: the neighbour towards zero
            let hi = if b & 0xffff == 0 { lo } else { lo + 1 };
            let hi = if x.is_finite() && hi & 0x7fff == 0x7f80 {
                lo
            } else {
                hi
            };
            for r in [0, 0xffff, sr_hash(7, 3, i as u32)] {
                let y = f32_to_bf16_stochastic(x, r);
                assert!(y == lo || y == hi, "{b:#010x} r {r:#x}: {y:#06x}");
            }
            assert_eq!(f32_to_bf16_stochastic(x, 0), lo);
            assert_eq!(f32_to_bf16_stochastic(x, 0xffff), hi);
        }
    }

    #[test]
    fn hash_depends_on_every_input() {
        let h = sr_hash(1, 2, 3);
        assert_ne!(h, sr_hash(0, 2, 3));
        assert_ne!(h, sr_hash(1, 0, 3));
        assert_ne!(h, sr_hash(1, 2, 0));
        // Consecutive elements give about half their bits different.
        let flips: u32 = (0..1000)
            .map(|e| (sr_hash(1, 2, e) ^ sr_hash(1, 2, e + 1)).count_ones())
            .sum();
        assert!((14_000..18_000).contains(&flips), "{flips}");
    }
}
