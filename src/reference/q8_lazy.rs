//! The twin of `shaders/rmsprop_lazy_q8.wgsl`: after a lazy step computed the listed elements' new
//! values, every block holding a listed element is quantized again (its other elements hold their
//! dequantized values); blocks without one keep codes and absmax bit for bit.

use super::ReferenceState;
use crate::quant::{block_absmax, Codebook, Quantized};

impl ReferenceState {
    /// Quantizes again the blocks that hold the elements `listed` (ascending) of a lazy step: each
    /// slot's new absmax is the largest magnitude in the block; listed elements are quantized against
    /// it, the others keep their codes where it did not change (bit for bit: no drift from
    /// re-quantizing a dequantized value), else are quantized against it. Nothing without q8 state.
    pub(super) fn requantize_listed(&mut self, listed: &[usize]) {
        let Some(q) = self.q8.as_mut() else {
            return;
        };
        let block = q.block;
        let n = self.v.len();
        let mut is_listed = vec![false; n];
        for &i in listed {
            is_listed[i] = true;
        }
        let mut blocks: Vec<usize> = listed.iter().map(|&i| i / block).collect();
        blocks.dedup();
        let (unsigned, signed) = (Codebook::dynamic(false), Codebook::dynamic(true));
        let slots = [
            (Some(&mut q.v), Some(&mut self.v), unsigned),
            (q.m.as_mut(), self.m.as_mut(), signed),
            (q.a.as_mut(), self.a.as_mut(), signed),
        ];
        for (slot, values, book) in slots {
            let (Some(slot), Some(values)) = (slot, values) else {
                continue;
            };
            for &b in &blocks {
                let range = b * block..((b + 1) * block).min(n);
                requantize_block(book, slot, values, &is_listed, b, range);
            }
        }
    }
}

/// Block `b` (elements `range`) of one slot: see [`ReferenceState::requantize_listed`].
fn requantize_block(
    book: &Codebook,
    slot: &mut Quantized,
    values: &mut [f32],
    is_listed: &[bool],
    b: usize,
    range: std::ops::Range<usize>,
) {
    let amax = block_absmax(&values[range.clone()]);
    let same = amax.to_bits() == slot.absmax[b].to_bits();
    for i in range {
        if is_listed[i] || !same {
            slot.codes[i] = book.quantize(values[i], amax);
        }
        values[i] = book.dequantize(slot.codes[i], amax);
    }
    slot.absmax[b] = amax;
}
