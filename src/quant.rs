//! 8-bit block-wise quantization of the optimizer state ([`crate::Dtype::Q8`]), after Dettmers et al.,
//! "8-bit Optimizers via Block-wise Quantization" (2022) and bitsandbytes.
//!
//! This module is the arithmetic contract shared by the kernels and the CPU twin
//! ([`mod@crate::reference`]): every operation below is spelled out in f32 so that both give the same
//! bits.
//!
//! ## The maps
//!
//! A code is an index into a table of 256 f32 values, sorted ascending ([`dynamic_map`]): the dynamic
//! (non-linear) map of bitsandbytes' `create_dynamic_map(signed, max_exponent_bits=7, total_bits=8)`,
//! dense near 0 (seven decades, `1e-6` to `1`) and coarse near 1. Built in f64, each value rounded once
//! to f32:
//!
//! ```text
//! for i in 0..7:                       e = 10^(i-6)  (the f64 literals 1e-6 .. 1e0)
//!     k = 2^i + 1 (signed) | 2^(i+1) + 1 (unsigned)    boundaries b_0..b_{k-1}
//!     b_j = 0.1 + j * ((1.0 - 0.1) / (k-1)),  b_{k-1} = 1.0      (numpy's linspace)
//!     means m_j = (b_j + b_{j+1}) / 2                         (k-1 of them)
//!     push e*m_j (and -e*m_j when signed)
//! push 0.0 and 1.0; sort
//! ```
//!
//! Counts: signed `2 * (1+2+...+64) + 2 = 256`, unsigned `(2+4+...+128) + 2 = 256`: exactly 256 values,
//! no padding, all distinct (strictly increasing). The unsigned map (velocity, which is never negative)
//! spans `[0, 1]`: `map[0] = 0` (zero code 0), `map[1] = 1e-6 * 0.325 = 3.25e-7`, `map[254] =
//! 1 - 0.9/256`, `map[255] = 1`. The signed map (momentum, average gradient) spans
//! `[-0.99296875, 1]`: bitsandbytes' construction has no `-1.0` (the largest negative magnitude is the
//! last mean, `1 - 0.9/128`), so a block whose largest magnitude is negative stores it as
//! `-0.99296875 * absmax` (0.7% smaller; quantized again unchanged, such a block keeps shrinking by
//! that factor). `map[0] = -0.99296875`, `map[127] = 0` (zero code 127), `map[128] = 1e-6 * 0.55 =
//! 5.5e-7`, `map[254] = 0.99296875`, `map[255] = 1`; `map[j] = -map[254 - j]` for `j < 127`.
//! bitsandbytes builds the same table in float32 arithmetic (torch.linspace); entries may differ from
//! its table by an ulp, which changes nothing here because both sides of this crate embed the table
//! given by [`map_bits`].
//!
//! ## Codes, and why the XOR with the zero code
//!
//! A value `x` of a block with absmax `a` is normalised, `n = x / a` (`0` when `a == 0`), and the
//! nearest map entry is found by an 8-step binary search plus one comparison ([`Codebook::index`]):
//!
//! ```text
//! j = 0; for step in [128, 64, 32, 16, 8, 4, 2, 1] { if map[j + step] <= n { j += step } }
//! if j < 255 && (map[j + 1] - n) < (n - map[j]) { j += 1 }      (ties: the lower index)
//! ```
//!
//! The stored byte is `j ^ z`, where `z` is the index the search returns for `0.0` ([`zero_code`]; with
//! several `0.0` entries, the last of them): `z = 0` unsigned, `z = 127` signed. Optimizer state starts
//! as zeroed buffers, and slots gained later are zero-filled; with the XOR, a zero byte decodes to
//! `map[z] = 0.0` for every map, so no buffer needs initialising with a map-dependent code.
//! Decoding: `map[byte ^ z] * a` (one f32 multiply).
//!
//! ## Blocks
//!
//! A variable of `len` elements is cut into blocks of `B` elements ([`crate::RmsPropConfig::q8_block`]):
//! elements `[k*B, (k+1)*B)`, the last block partial. Each block keeps one f32 absmax per slot. After a
//! step computes a slot's new f32 values for every element (exactly as with f32 state), per block:
//! `a = max |value|` over the block's elements (the kernels' pad lanes are zeros and never change the
//! max), then each element's stored value becomes `dequantize(quantize(value, a), a)`: the next step
//! starts from these values. The element that holds the block's max is stored exactly (`n = 1`, code
//! 255) unless it is negative (see above). Variables with fewer than
//! [`crate::RmsPropConfig::q8_min_size`] elements keep f32 state.
//!
//! Non-finite state under q8 is undefined: a NaN or infinite value makes its block's codes
//! meaningless (no NaN handling is done, by either side).

use std::sync::OnceLock;

/// Entries in a map: codes are bytes.
pub const MAP_LEN: usize = 256;

/// The dynamic map (bitsandbytes' `create_dynamic_map(signed, 7, 8)`), sorted ascending: see the
/// [module documentation](self).
pub fn dynamic_map(signed: bool) -> [f32; MAP_LEN] {
    const DECADES: [f64; 7] = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1e0];
    let mut data: Vec<f64> = Vec::with_capacity(MAP_LEN);
    for (i, &e) in DECADES.iter().enumerate() {
        let items = if signed {
            (1usize << i) + 1
        } else {
            (1usize << (i + 1)) + 1
        };
        let step = (1.0 - 0.1) / (items - 1) as f64;
        let b = |j: usize| {
            if j == items - 1 {
                1.0
            } else {
                0.1 + j as f64 * step
            }
        };
        for j in 0..items - 1 {
            let mean = (b(j) + b(j + 1)) / 2.0;
            data.push(e * mean);
            if signed {
                data.push(-e * mean);
            }
        }
    }
    data.push(0.0);
    data.push(1.0);
    assert_eq!(data.len(), MAP_LEN, "the dynamic map has 256 entries");
    let mut map = [0.0f32; MAP_LEN];
    for (m, &d) in map.iter_mut().zip(&data) {
        *m = d as f32;
    }
    map.sort_by(f32::total_cmp);
    map
}

/// The bits of [`dynamic_map`]`(signed)`, for the kernels to embed (`array<u32, 256>`, read with
/// `bitcast<f32>`): the table both sides use.
pub fn map_bits(signed: bool) -> [u32; MAP_LEN] {
    Codebook::dynamic(signed).map.map(f32::to_bits)
}

/// The index [`Codebook::index`] finds for `0.0` in `map` (sorted ascending): the zero code `z`.
/// Stored bytes are `index ^ z`, so that a zero byte decodes to `map[z]`, which is `0.0` for a map
/// that contains `0.0`.
pub fn zero_code(map: &[f32; MAP_LEN]) -> u8 {
    search(map, 0.0) as u8
}

/// The nearest entry of `map` to `n`: the binary search and the final comparison of the module
/// documentation (the kernels' loop, verbatim).
fn search(map: &[f32; MAP_LEN], n: f32) -> usize {
    let mut j = 0usize;
    for step in [128, 64, 32, 16, 8, 4, 2, 1] {
        if map[j + step] <= n {
            j += step;
        }
    }
    if j < MAP_LEN - 1 && (map[j + 1] - n) < (n - map[j]) {
        j += 1;
    }
    j
}

/// The largest magnitude of `values` (`0.0` when empty): a block's absmax. NaN handling is not
/// defined (non-finite q8 state is undefined).
pub fn block_absmax(values: &[f32]) -> f32 {
    values.iter().fold(0.0f32, |m, &x| m.max(x.abs()))
}

/// Whether a variable of `len` elements with storage types `storage` keeps 8-bit state under `config`:
/// `storage.state` is [`crate::Dtype::Q8`] and `len >= config.q8_min_size()` (smaller variables keep
/// f32 state).
pub fn state_is_quantized(
    config: &crate::RmsPropConfig,
    storage: &crate::StorageTypes,
    len: usize,
) -> bool {
    storage.state == crate::Dtype::Q8 && len >= config.q8_min_size()
}

/// A map and its zero code: what quantizes and dequantizes.
#[derive(Debug, Clone, PartialEq)]
pub struct Codebook {
    map: [f32; MAP_LEN],
    zero: u8,
}

/// Codes and block absmax of one slot of a variable, as the kernels' buffers hold them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Quantized {
    /// One stored byte per element (`index ^ zero code`).
    pub codes: Vec<u8>,
    /// One absmax per block (the last block partial).
    pub absmax: Vec<f32>,
}

impl Codebook {
    /// A codebook of `map`: `None` unless `map` is sorted ascending (no NaN) and its zero code
    /// ([`zero_code`]) holds `0.0`.
    pub fn new(map: [f32; MAP_LEN]) -> Option<Self> {
        if map.iter().any(|x| x.is_nan()) || map.windows(2).any(|w| w[0] > w[1]) {
            return None;
        }
        let zero = zero_code(&map);
        (map[zero as usize] == 0.0).then_some(Codebook { map, zero })
    }

    /// The dynamic codebook: signed (momentum, average gradient) or unsigned (velocity). Built once.
    pub fn dynamic(signed: bool) -> &'static Codebook {
        static SIGNED: OnceLock<Codebook> = OnceLock::new();
        static UNSIGNED: OnceLock<Codebook> = OnceLock::new();
        let cell = if signed { &SIGNED } else { &UNSIGNED };
        cell.get_or_init(|| Codebook::new(dynamic_map(signed)).expect("the dynamic map is valid"))
    }

    /// The map.
    pub fn map(&self) -> &[f32; MAP_LEN] {
        &self.map
    }

    /// The zero code.
    pub fn zero(&self) -> u8 {
        self.zero
    }

    /// The index of the entry nearest to the normalised value `n` (ties: the lower index).
    pub fn index(&self, n: f32) -> usize {
        search(&self.map, n)
    }

    /// The stored byte of `x` in a block of absmax `absmax`: `index(x / absmax) ^ zero` (`n = 0` when
    /// `absmax == 0`; f32 division).
    pub fn quantize(&self, x: f32, absmax: f32) -> u8 {
        let n = if absmax == 0.0 { 0.0 } else { x / absmax };
        self.index(n) as u8 ^ self.zero
    }

    /// The value of a stored byte: `map[byte ^ zero] * absmax` (f32 multiply).
    pub fn dequantize(&self, byte: u8, absmax: f32) -> f32 {
        self.map[(byte ^ self.zero) as usize] * absmax
    }

    /// Quantizes one block in place: computes its absmax, writes each element's byte to `codes` and
    /// replaces each value by its dequantized value. Returns the absmax.
    ///
    /// # Panics
    /// If `codes` is shorter than `values`.
    pub fn quantize_block(&self, values: &mut [f32], codes: &mut [u8]) -> f32 {
        let absmax = block_absmax(values);
        let codes = &mut codes[..values.len()];
        for (x, c) in values.iter_mut().zip(codes) {
            *c = self.quantize(*x, absmax);
            *x = self.dequantize(*c, absmax);
        }
        absmax
    }

    /// Quantizes a whole slot in place, block by block (`block` elements each, the last partial): the
    /// values become their dequantized values; returns the codes and the absmax of each block.
    ///
    /// # Panics
    /// If `block` is 0.
    pub fn quantize_blocks(&self, values: &mut [f32], block: usize) -> Quantized {
        let mut codes = vec![0u8; values.len()];
        let absmax = values
            .chunks_mut(block)
            .zip(codes.chunks_mut(block))
            .map(|(v, c)| self.quantize_block(v, c))
            .collect();
        Quantized { codes, absmax }
    }

    /// The values of `q` (codes and block absmax of `block` elements each).
    pub fn dequantize_blocks(&self, q: &Quantized, block: usize) -> Vec<f32> {
        q.codes
            .iter()
            .enumerate()
            .map(|(i, &c)| self.dequantize(c, q.absmax[i / block]))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64* in [0, 1).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> f64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    #[test]
    fn maps_have_256_increasing_entries_with_0_and_1() {
        for signed in [false, true] {
            let m = dynamic_map(signed);
            assert!(m.windows(2).all(|w| w[0] < w[1]), "strictly increasing");
            assert!(m.contains(&0.0) && m.contains(&1.0));
            assert_eq!(m[255], 1.0);
            let cb = Codebook::dynamic(signed);
            assert_eq!(cb.map()[cb.zero() as usize], 0.0);
            assert_eq!(map_bits(signed).map(f32::from_bits), m);
        }
        let u = dynamic_map(false);
        assert_eq!((u[0], zero_code(&u)), (0.0, 0));
        assert_eq!(u[1], (1e-6 * 0.325f64) as f32);
        let s = dynamic_map(true);
        assert_eq!(zero_code(&s), 127);
        // No -1.0 in the signed map: its most negative entry is the last mean of the top decade.
        assert_eq!(s[0], -0.99296875);
        assert_eq!(s[128], (1e-6 * 0.55f64) as f32);
        assert_eq!(s[127], 0.0);
        // Symmetric apart from 1.0.
        for j in 0..127 {
            assert_eq!(s[j], -s[254 - j]);
        }
        // Dense near 0: seven decades.
        assert!(u[1] < 1e-6 && s[128] < 1e-6);
    }

    #[test]
    fn a_zero_byte_decodes_to_zero_and_zero_encodes_to_a_zero_byte() {
        for signed in [false, true] {
            let cb = Codebook::dynamic(signed);
            for absmax in [0.0, 1e-20, 1.0, 3.5e10] {
                assert_eq!(cb.dequantize(0, absmax), 0.0);
                assert_eq!(cb.quantize(0.0, absmax), 0);
                assert_eq!(cb.quantize(-0.0, absmax), 0);
            }
            // absmax 0: everything is 0.
            assert_eq!(cb.quantize(0.5, 0.0), 0);
        }
        // Several zeros: the last one is the zero code.
        let mut map = [0.0f32; MAP_LEN];
        for (j, m) in map.iter_mut().enumerate().skip(10) {
            *m = (j - 9) as f32 / 246.0;
        }
        let cb = Codebook::new(map).unwrap();
        assert_eq!(cb.zero(), 9);
        assert_eq!(cb.dequantize(0, 2.0), 0.0);
        // Unsorted or without 0: refused.
        let mut bad = dynamic_map(false);
        bad.swap(3, 4);
        assert!(Codebook::new(bad).is_none());
        let mut no_zero = dynamic_map(false);
        no_zero[0] = 1e-9;
        assert!(Codebook::new(no_zero).is_none());
    }

    #[test]
    fn map_values_times_absmax_round_trip_exactly() {
        for signed in [false, true] {
            let cb = Codebook::dynamic(signed);
            for absmax in [1.0f32, 0.37, 1e-3, 2.5e-8, 7.0, 1234.5] {
                for j in 0..MAP_LEN {
                    let x = cb.map()[j] * absmax;
                    let byte = cb.quantize(x, absmax);
                    assert_eq!(
                        byte as usize ^ cb.zero() as usize,
                        j,
                        "{signed} {absmax} {j}"
                    );
                    assert_eq!(cb.dequantize(byte, absmax), x);
                }
            }
        }
    }

    #[test]
    fn quantize_picks_the_nearest_entry() {
        let mut rng = Rng(0x5EED_1234_ABCD_0001);
        for signed in [false, true] {
            let cb = Codebook::dynamic(signed);
            let m = cb.map();
            let lo = if signed { -1.0 } else { 0.0 };
            let check = |n: f32| {
                let j = cb.index(n);
                // Brute force: the distance of every entry, in f32 as the kernel computes them.
                let d = |k: usize| (m[k] - n).abs();
                let best = (0..MAP_LEN).map(d).fold(f32::INFINITY, f32::min);
                assert_eq!(d(j), best, "n={n}: index {j} ({}) is not nearest", m[j]);
                // Ties go to the lower index.
                let first = (0..MAP_LEN).find(|&k| d(k) == best).unwrap();
                assert_eq!(j, first, "n={n}");
            };
            for _ in 0..100_000 {
                // Uniform, and log-uniform over the seven decades.
                let u = rng.next();
                check((lo + (1.0 - lo) * u) as f32);
                let mag = 10f64.powf(-8.0 + 8.0 * rng.next());
                let sign = if signed && rng.next() < 0.5 {
                    -1.0
                } else {
                    1.0
                };
                check((sign * mag) as f32);
            }
            // Every entry, the midpoints (ties) and their neighbours.
            for j in 0..MAP_LEN - 1 {
                let mid = (m[j] + m[j + 1]) / 2.0;
                for x in [m[j], mid, f32::from_bits(mid.to_bits() + 1), m[j + 1]] {
                    check(x);
                    check(-x);
                }
            }
        }
    }

    #[test]
    fn blocks_quantize_in_place() {
        let cb = Codebook::dynamic(true);
        let mut v: Vec<f32> = (0..300).map(|i| ((i as f32) * 0.37).sin() * 1e-3).collect();
        let orig = v.clone();
        let q = cb.quantize_blocks(&mut v, 128);
        assert_eq!(q.absmax.len(), 3);
        assert_eq!(q.absmax[2], block_absmax(&orig[256..]));
        assert_eq!(cb.dequantize_blocks(&q, 128), v);
        for (k, (x, o)) in v.iter().zip(&orig).enumerate() {
            let a = q.absmax[k / 128];
            // Within half the widest gap of the signed map (near +-1: 0.9/64 / 2) times absmax.
            assert!((x - o).abs() <= a * 0.0071, "{k}: {x} vs {o}");
        }
        // Quantizing dequantized values again changes nothing while each block's largest magnitude
        // is positive (stored exactly, code 255)...
        let u = Codebook::dynamic(false);
        let mut w: Vec<f32> = orig.iter().map(|x| x.abs()).collect();
        let qu = u.quantize_blocks(&mut w, 128);
        let mut again = w.clone();
        assert_eq!(u.quantize_blocks(&mut again, 128), qu);
        assert_eq!(again, w);
        // ... but a signed block whose largest magnitude is negative shrinks by 0.99296875 (the map
        // has no -1).
        let mut b = [-2.0f32, 1.0, 0.5];
        assert_eq!(cb.quantize_block(&mut b, &mut [0; 3]), 2.0);
        assert_eq!(b[0], -0.99296875 * 2.0);
        let mut c = b;
        assert_eq!(cb.quantize_block(&mut c, &mut [0; 3]), 0.99296875 * 2.0);
        assert!(c[0] < 0.0 && c[0] > b[0]);
    }
}
