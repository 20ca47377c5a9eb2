//! Buffer pools: every variable and each kind of optimizer state live in large storage buffers ("chunks"),
//! each variable a slice of one chunk (or of several, when it is larger than one binding may be).
//!
//! All kinds share one layout: element `i` of a variable sits at the same place in the variable pool, the
//! gradient pool and every slot pool. That is what lets one dispatch per chunk update every variable in it.
//! Variables start on the device's storage offset alignment (at least a vec4, 16 bytes); the pad lanes after a
//! variable's last element and the padding up to the next variable belong to it.

use crate::dtype::{Dtype, StorageTypes};
use crate::error::{Error, Result};

/// Bytes in one vec4 of f32.
pub(crate) const VEC4_BYTES: u64 = 16;
/// Smallest chunk the pool allocates, in vec4 (64 KiB), so that small variables share buffers.
const MIN_CHUNK_VEC4: u64 = 4096;

/// An optimizer state buffer ("slot"), by its Keras name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Slot {
    /// Moving average of squared gradients (always kept).
    Velocity,
    /// Momentum buffer (kept when `momentum > 0`).
    Momentum,
    /// Moving average of gradients (kept when `centered`).
    AverageGradient,
    /// Keras's exponential moving average of the variable (kept when `use_ema`).
    Ema,
}

impl Slot {
    /// The slot's name as in Keras and the golden cases.
    pub fn name(self) -> &'static str {
        match self {
            Slot::Velocity => "velocity",
            Slot::Momentum => "momentum",
            Slot::AverageGradient => "average_gradient",
            Slot::Ema => "ema",
        }
    }
}

/// How many kinds of pooled buffer there are.
pub(crate) const KINDS: usize = 9;

/// The kinds of pooled buffer, in the order of the kernels' pool bindings (1..=6, then 18).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Variable = 0,
    Gradient = 1,
    Velocity = 2,
    Momentum = 3,
    AverageGradient = 4,
    /// Sums of squares of merged sparse rows (Keras 3 duplicates only).
    Squares = 5,
    /// Accumulated gradients (Keras's `gradient_accumulation_steps` only).
    Accumulator = 6,
    /// Moving average of the variables (Keras's `use_ema` only).
    Ema = 7,
    /// The 16-bit copy of the variables ([`crate::StorageTypes::copy`] only).
    Copy = 8,
}

impl Kind {
    pub(crate) const ALL: [Kind; KINDS] = [
        Kind::Variable,
        Kind::Gradient,
        Kind::Velocity,
        Kind::Momentum,
        Kind::AverageGradient,
        Kind::Squares,
        Kind::Accumulator,
        Kind::Ema,
        Kind::Copy,
    ];
    /// The kernels' binding number of this kind.
    pub(crate) fn binding(self) -> u32 {
        match self {
            Kind::Accumulator => crate::kernels::binding::ACC,
            Kind::Ema => crate::kernels::binding::EMA,
            Kind::Copy => crate::kernels::binding::COPY,
            _ => self as u32 + 1,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Kind::Variable => "variables",
            Kind::Gradient => "gradients",
            Kind::Velocity => "velocity",
            Kind::Momentum => "momentum",
            Kind::AverageGradient => "average_gradient",
            Kind::Squares => "squares",
            Kind::Accumulator => "accumulator",
            Kind::Ema => "ema",
            Kind::Copy => "copy",
        }
    }
}

impl Kind {
    /// The element type of this kind's buffers in a chunk of `storage` (the Keras base-class buffers and
    /// the sums of squares are always f32).
    pub(crate) fn dtype(self, storage: StorageTypes) -> Dtype {
        match self {
            Kind::Variable => storage.variable,
            Kind::Gradient => storage.gradient,
            Kind::Velocity | Kind::Momentum | Kind::AverageGradient => storage.state,
            Kind::Copy => storage.copy.unwrap_or(Dtype::F32),
            Kind::Squares | Kind::Accumulator | Kind::Ema => Dtype::F32,
        }
    }

    /// Whether this kind is optimizer state (counted in [`PoolStats::state_bytes`]).
    pub(crate) fn is_state(self) -> bool {
        matches!(
            self,
            Kind::Velocity | Kind::Momentum | Kind::AverageGradient | Kind::Accumulator | Kind::Ema
        )
    }
}

impl From<Slot> for Kind {
    fn from(s: Slot) -> Kind {
        match s {
            Slot::Velocity => Kind::Velocity,
            Slot::Momentum => Kind::Momentum,
            Slot::AverageGradient => Kind::AverageGradient,
            Slot::Ema => Kind::Ema,
        }
    }
}

/// How a pooled buffer lays its elements out: their type and, for 8-bit quantized state
/// ([`Dtype::Q8`]), the vec4 per block. A q8 buffer holds, per block, one f32 absmax word followed by the
/// block's codes (one byte per element, four per word): vec4 `i` is the word `i + i / block + 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Elems {
    pub dtype: Dtype,
    /// Vec4 per q8 block (unused for other types).
    pub block: u64,
}

impl Elems {
    /// The byte where vec4 `offset` (block-aligned for q8) starts its region (for q8: its block's
    /// absmax word).
    pub fn at(&self, offset: u64) -> u64 {
        match self.dtype {
            Dtype::Q8 => (offset + offset / self.block) * 4,
            d => offset * 4 * d.bytes(),
        }
    }

    /// Bytes of `vec4s` vec4 from a block-aligned start (whole words; q8: with their absmax words).
    pub fn span(&self, vec4s: u64) -> u64 {
        match self.dtype {
            Dtype::Q8 => (vec4s + vec4s.div_ceil(self.block)) * 4,
            d => vec4s * 4 * d.bytes(),
        }
    }

    /// Bytes holding `elems` elements from a block-aligned start, in whole words.
    pub fn bytes(&self, elems: usize) -> u64 {
        match self.dtype {
            Dtype::Q8 => self.span((elems as u64).div_ceil(4)),
            d => (elems as u64 * d.bytes()).next_multiple_of(4),
        }
    }
}

/// A contiguous piece of a variable inside one chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Segment {
    /// Index of the chunk.
    pub chunk: usize,
    /// Start inside the chunk, in vec4.
    pub offset: u64,
    /// Index of the variable's first element held here.
    pub first_elem: usize,
    /// Number of the variable's elements held here.
    pub elems: usize,
}

impl Segment {
    /// Vec4 slots the segment occupies (its elements rounded up to 4).
    pub fn vec4s(&self) -> u64 {
        (self.elems as u64).div_ceil(4)
    }
}

/// Places `elems` elements after the chunks whose fill levels (in vec4) are `used`, with at most `limit`
/// vec4 per chunk and the variable's first element on a multiple of `align` vec4 (a power of two). A
/// variable that fits in one chunk never straddles two: it goes at the end of the last chunk if there is
/// room, else into a new chunk. A variable larger than a chunk fills the last chunk's free space, then
/// whole chunks (each later part starts at 0). Returns the segments and updates `used` (pushing new
/// chunks; the padding before an aligned start counts as used).
#[cfg(test)]
pub(crate) fn place(used: &mut Vec<u64>, limit: u64, elems: usize, align: u64) -> Vec<Segment> {
    place_in_units(used, limit, elems, align, 1)
}

/// [`place`], with every part but the last a multiple of `unit` vec4 (`1 <= unit <= limit`): a
/// row-wise variable's parts hold whole rows (`unit = row_len / gcd(row_len, 4)`), so that no row
/// straddles two pool buffers.
pub(crate) fn place_in_units(
    used: &mut Vec<u64>,
    limit: u64,
    elems: usize,
    align: u64,
    unit: u64,
) -> Vec<Segment> {
    let unit = unit.clamp(1, limit.max(1));
    let mut segments = Vec::new();
    let mut remaining = (elems as u64).div_ceil(4);
    let mut first_elem = 0usize;
    while remaining > 0 {
        let start = |u: u64| {
            if first_elem == 0 {
                u.next_multiple_of(align)
            } else {
                u
            }
        };
        // What a part may take from `room` free vec4: all that remains, or whole units.
        let fits = |room: u64| {
            if room >= remaining {
                remaining
            } else {
                room - room % unit
            }
        };
        let free = used
            .last()
            .map_or(0, |&u| fits(limit.saturating_sub(start(u))));
        if free == 0 || (remaining <= limit && remaining > free) {
            used.push(0);
        }
        let chunk = used.len() - 1;
        let offset = start(used[chunk]);
        let take = fits(limit - offset);
        let seg_elems = ((take * 4) as usize).min(elems - first_elem);
        segments.push(Segment {
            chunk,
            offset,
            first_elem,
            elems: seg_elems,
        });
        used[chunk] = offset + take;
        remaining -= take;
        first_elem += seg_elems;
    }
    segments
}

/// The capacity (vec4) a chunk gets when it must hold `needed` vec4: doubling, at least
/// [`MIN_CHUNK_VEC4`], never past `limit`.
pub(crate) fn grown_capacity(current: u64, needed: u64, limit: u64) -> u64 {
    needed.max(current * 2).max(MIN_CHUNK_VEC4).min(limit)
}

/// Allocates the buffers of one chunk of `capacity` vec4 for the kinds in `kinds`, each in its type
/// under `storage`, reporting failures (out of memory, over a limit) as [`Error::Allocation`] through
/// a wgpu error scope.
pub(crate) fn allocate_chunk_buffers(
    device: &wgpu::Device,
    prefix: &str,
    index: usize,
    capacity: u64,
    kinds: &[Kind],
    storage: StorageTypes,
    q8_block: u64,
) -> Result<[Option<wgpu::Buffer>; KINDS]> {
    let size = |k: Kind| {
        Elems {
            dtype: k.dtype(storage),
            block: q8_block,
        }
        .span(capacity)
    };
    let total: u64 = kinds.iter().map(|&k| size(k)).sum();
    crate::context::allocation_scope(device, || {
        let mut buffers: [Option<wgpu::Buffer>; KINDS] = Default::default();
        for &kind in kinds {
            let usage = wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST;
            buffers[kind as usize] = Some(device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(&format!("{prefix}/{}[{index}]", kind.name())),
                size: size(kind),
                usage,
                mapped_at_creation: false,
            }));
        }
        buffers
    })
    .map_err(|message| Error::Allocation {
        what: format!("{prefix} pool chunk {index} ({} buffers)", kinds.len()),
        bytes: total,
        message,
    })
}

/// Bytes held by the optimizer's GPU buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolStats {
    /// Number of chunks (each one buffer per kept kind).
    pub chunks: usize,
    /// Bytes of all pooled buffers (variables, gradients and slots, capacity included).
    pub pool_bytes: u64,
    /// Bytes of the variable buffers (capacity included).
    pub variable_bytes: u64,
    /// Bytes of the gradient buffers (capacity included).
    pub gradient_bytes: u64,
    /// Bytes of the optimizer state: velocity (one value per row for a row-wise velocity), momentum,
    /// average gradient, and Keras's EMA and gradient accumulator when kept (capacity included).
    pub state_bytes: u64,
    /// Bytes of per-step scratch pools (sums of squares of Keras 3 sparse duplicates).
    pub scratch_bytes: u64,
    /// Bytes of the uniform, staging and placeholder buffers.
    pub other_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_variables_share_a_chunk_and_start_on_vec4() {
        let mut used = Vec::new();
        let a = place(&mut used, 100, 3, 1);
        let b = place(&mut used, 100, 5, 1);
        assert_eq!(
            a,
            vec![Segment {
                chunk: 0,
                offset: 0,
                first_elem: 0,
                elems: 3
            }]
        );
        assert_eq!(
            b,
            vec![Segment {
                chunk: 0,
                offset: 1,
                first_elem: 0,
                elems: 5
            }]
        );
        assert_eq!(used, vec![3]);
    }

    #[test]
    fn a_variable_that_does_not_fit_starts_a_new_chunk() {
        let mut used = vec![90];
        let s = place(&mut used, 100, 41, 1);
        assert_eq!(
            s,
            vec![Segment {
                chunk: 1,
                offset: 0,
                first_elem: 0,
                elems: 41
            }]
        );
        assert_eq!(used, vec![90, 11]);
    }

    #[test]
    fn a_variable_larger_than_a_chunk_is_split() {
        let mut used = vec![8];
        let s = place(&mut used, 10, 101, 1);
        assert_eq!(
            s,
            vec![
                Segment {
                    chunk: 0,
                    offset: 8,
                    first_elem: 0,
                    elems: 8
                },
                Segment {
                    chunk: 1,
                    offset: 0,
                    first_elem: 8,
                    elems: 40
                },
                Segment {
                    chunk: 2,
                    offset: 0,
                    first_elem: 48,
                    elems: 40
                },
                Segment {
                    chunk: 3,
                    offset: 0,
                    first_elem: 88,
                    elems: 13
                },
            ]
        );
        assert_eq!(used, vec![10, 10, 10, 4]);
    }

    #[test]
    fn empty_variables_take_no_space() {
        let mut used = vec![5];
        assert!(place(&mut used, 10, 0, 1).is_empty());
        assert_eq!(used, vec![5]);
    }

    #[test]
    fn aligned_variables_start_on_the_alignment_and_padding_counts_as_used() {
        let mut used = Vec::new();
        let a = place(&mut used, 100, 3, 16);
        let b = place(&mut used, 100, 5, 16);
        assert_eq!((a[0].chunk, a[0].offset), (0, 0));
        assert_eq!((b[0].chunk, b[0].offset), (0, 16));
        assert_eq!(used, vec![18]);
        // 90 vec4 do not fit after the aligned start 32: a new chunk.
        let c = place(&mut used, 100, 360, 16);
        assert_eq!((c[0].chunk, c[0].offset), (1, 0));
        // A variable larger than a chunk: first part aligned, later parts at 0.
        let mut used = vec![1];
        let d = place(&mut used, 32, 4 * 70, 16);
        let starts: Vec<(usize, u64, usize)> = d
            .iter()
            .map(|s| (s.chunk, s.offset, s.first_elem))
            .collect();
        assert_eq!(starts, vec![(0, 16, 0), (1, 0, 64), (2, 0, 192)]);
        assert_eq!(used, vec![32, 32, 22]);
    }

    #[test]
    fn rows_never_straddle_chunks() {
        // Rows of 3 elements: parts of 3 vec4 (4 rows), 10 vec4 per chunk, 7 used in the first.
        let mut used = vec![7];
        let s = place_in_units(&mut used, 10, 3 * 21, 1, 3);
        let parts: Vec<(usize, u64, usize, usize)> = s
            .iter()
            .map(|s| (s.chunk, s.offset, s.first_elem, s.elems))
            .collect();
        assert_eq!(parts, vec![(0, 7, 0, 12), (1, 0, 12, 36), (2, 0, 48, 15)]);
        assert!(s.iter().all(|s| s.first_elem % 3 == 0));
        assert_eq!(used, vec![10, 9, 4]);
        // Unit 1 is `place`.
        let (mut a, mut b) = (vec![8], vec![8]);
        assert_eq!(
            place(&mut a, 10, 101, 1),
            place_in_units(&mut b, 10, 101, 1, 1)
        );
    }

    #[test]
    fn growth_doubles_within_limit() {
        assert_eq!(grown_capacity(0, 10, 1 << 20), MIN_CHUNK_VEC4);
        assert_eq!(grown_capacity(5000, 5001, 1 << 20), 10000);
        assert_eq!(grown_capacity(5000, 5001, 6000), 6000);
        assert_eq!(grown_capacity(10, 20, 15), 15);
    }
}
