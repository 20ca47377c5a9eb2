//! The public types of a step: variable handles, gradients, slices of the pools, tuning options and the
//! recorded-step token of the submit protocol.

use crate::sparse::Indices;

/// Handle of a variable inside one [`crate::RmsProp`]. A handle from another optimizer is refused with
/// [`crate::Error::UnknownVariable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VarId {
    pub(crate) optimizer: u32,
    pub(crate) index: u32,
}

impl VarId {
    /// Position of the variable in the order it was added.
    pub fn index(self) -> usize {
        self.index as usize
    }
}

/// A gradient already on the GPU: `len(variable)` values of the variable's gradient type starting at
/// byte `offset` of `buffer` (16-bit types: two per u32 word, element `2k` in the low half; the buffer
/// must then hold whole words, an odd length's last word padded).
///
/// The buffer needs `COPY_SRC` usage and must belong to the optimizer's device; `offset` must be a
/// multiple of 4. The values are copied on the GPU into the optimizer's gradient pool (no host round trip).
/// Sparse values on the GPU ([`Gradient::SparseGpu`], [`Gradient::SparseGpuIndices`]) are f32.
#[derive(Debug, Clone, Copy)]
pub struct GpuGradient<'a> {
    /// The caller's buffer.
    pub buffer: &'a wgpu::Buffer,
    /// Byte offset of the first value.
    pub offset: u64,
}

/// The gradient of one variable in one step.
#[derive(Debug, Clone, Copy)]
pub enum Gradient<'a> {
    /// `len(variable)` values on the host, for a variable with f32 gradients.
    Dense(&'a [f32]),
    /// `len(variable)` 16-bit values on the host, for a variable whose gradient type is theirs
    /// ([`crate::StorageTypes::gradient`]); written into the gradient pool as they are.
    Dense16(HalfSlice<'a>),
    /// `len(variable)` values on the GPU, copied GPU-to-GPU into the gradient pool.
    Gpu(GpuGradient<'a>),
    /// The caller already wrote the gradient into the optimizer's own gradient buffer (see
    /// [`crate::RmsProp::gradient_slices`]), e.g. from its backward shader: nothing is copied. The
    /// gradient pool keeps its contents between steps (a step never clears a `Resident` gradient), so a
    /// backward pass may accumulate into it; clear it with [`crate::RmsProp::clear_gradients`]. Refused
    /// with [`crate::Error::StaleLayout`] when the pools moved since the slices were last fetched.
    Resident,
    /// IndexedSlices: rows along axis 0 (unsorted, repeated or empty) and `len(indices) * row_len`
    /// values, row-major. How absent rows and duplicates are treated is the configuration's
    /// [`crate::SparseMode`] and [`crate::DuplicateIndices`].
    Sparse {
        /// Row indices.
        indices: Indices<'a>,
        /// One row of values per index.
        values: &'a [f32],
    },
    /// IndexedSlices with 16-bit values on the host, for a variable whose gradient type is theirs (the
    /// values are widened to f32, exactly, into the step's sparse buffer).
    Sparse16 {
        /// Row indices.
        indices: Indices<'a>,
        /// One row of values per index.
        values: HalfSlice<'a>,
    },
    /// IndexedSlices whose values are already on the GPU (e.g. written by the caller's backward shader):
    /// host indices, and `len(indices) * row_len` f32 values from `values.offset` of `values.buffer`,
    /// copied GPU-to-GPU into the step's sparse buffer.
    SparseGpu {
        /// Row indices.
        indices: Indices<'a>,
        /// Where the rows of values are.
        values: GpuGradient<'a>,
    },
    /// IndexedSlices with the indices on the GPU too: `indices.len` i32 row indices and
    /// `indices.len * row_len` values, grouped by row on the GPU (`sparse_group.wgsl`), with no host
    /// round trip. Indices cannot be checked on the host without a read-back: an out-of-range or
    /// negative one is skipped (its row is not updated) and counted, see
    /// [`crate::RmsProp::invalid_gpu_indices`].
    SparseGpuIndices {
        /// Where the row indices are.
        indices: GpuIndices<'a>,
        /// Where the rows of values are.
        values: GpuGradient<'a>,
    },
}

/// Host values of a 16-bit type.
#[derive(Debug, Clone, Copy)]
pub enum HalfSlice<'a> {
    /// IEEE binary16 values.
    F16(&'a [half::f16]),
    /// bfloat16 values.
    Bf16(&'a [half::bf16]),
}

impl HalfSlice<'_> {
    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            HalfSlice::F16(v) => v.len(),
            HalfSlice::Bf16(v) => v.len(),
        }
    }

    /// Whether there are no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Their type.
    pub fn dtype(&self) -> crate::dtype::Dtype {
        match self {
            HalfSlice::F16(_) => crate::dtype::Dtype::F16,
            HalfSlice::Bf16(_) => crate::dtype::Dtype::Bf16,
        }
    }

    /// Values `range` as bytes.
    pub(crate) fn bytes(&self, range: std::ops::Range<usize>) -> &[u8] {
        match self {
            HalfSlice::F16(v) => bytemuck::cast_slice(&v[range]),
            HalfSlice::Bf16(v) => bytemuck::cast_slice(&v[range]),
        }
    }

    /// Appends the values, widened to f32 (exact), to `out`.
    pub(crate) fn widen_into(&self, out: &mut Vec<f32>) {
        match self {
            HalfSlice::F16(v) => out.extend(v.iter().map(|h| h.to_f32())),
            HalfSlice::Bf16(v) => out.extend(v.iter().map(|h| h.to_f32())),
        }
    }
}

/// Rows of a variable to bring up to date with [`crate::RmsProp::record_catch_up`]
/// ([`crate::SparseMode::LazyExact`]); repeated rows are caught up once.
#[derive(Debug, Clone, Copy)]
pub enum Rows<'a> {
    /// Row indices on the host, checked before anything is recorded.
    Host(crate::sparse::Indices<'a>),
    /// `len` i32 row indices on the GPU, e.g. the ids the next forward pass gathers: grouped there with
    /// no host round trip. They cannot be checked on the host: an out-of-range or negative one is
    /// skipped and counted, as in [`Gradient::SparseGpuIndices`].
    Gpu(GpuIndices<'a>),
}

/// Row indices of a sparse gradient on the GPU: `len` i32 values from byte `offset` of `buffer` (which
/// needs `COPY_SRC` usage; `offset` a multiple of 4).
#[derive(Debug, Clone, Copy)]
pub struct GpuIndices<'a> {
    /// The caller's buffer.
    pub buffer: &'a wgpu::Buffer,
    /// Byte offset of the first index.
    pub offset: u64,
    /// Number of indices.
    pub len: usize,
}

/// Where part of a variable (or of its gradient) lives on the GPU: `len` f32 values from byte `offset` of
/// `buffer`. A variable larger than one pool buffer has several slices, in element order.
///
/// `offset` is a multiple of the device's `min_storage_buffer_offset_alignment` (or of
/// [`OptimizerOptions::slice_alignment`] when larger), so a caller's shader can bind the slice itself
/// (`offset`, `bound_bytes()`). The slice belongs to layout `layout` ([`crate::RmsProp::layout_version`]):
/// adding variables may grow a pool buffer, which moves every slice in it to a new buffer.
#[derive(Debug, Clone)]
pub struct GpuSlice {
    /// The pooled buffer.
    pub buffer: wgpu::Buffer,
    /// Byte offset of the first value.
    pub offset: u64,
    /// Index of the variable's first element held here.
    pub first_element: usize,
    /// Number of values.
    pub len: usize,
    /// The layout version this slice was taken from.
    pub layout: u64,
    /// The element type of the buffer (16-bit types: two elements per u32 word, element `2k` in the low
    /// half).
    pub dtype: crate::dtype::Dtype,
}

impl GpuSlice {
    /// Bytes to bind for this slice: its values rounded up to whole vec4s (16 bytes of f32, 8 of a
    /// 16-bit type). The padding lanes belong to the variable, so a shader may read or write them as
    /// `vec4<f32>` (or two words of halves); the optimizer never reads them back.
    pub fn bound_bytes(&self) -> u64 {
        (self.len as u64).div_ceil(4) * 4 * self.dtype.bytes()
    }
}

/// Tuning knobs; the defaults suit every adapter. The limits here can only lower the device's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptimizerOptions {
    /// Invocations per workgroup. Default 256.
    pub workgroup_size: u32,
    /// Consecutive vec4s each invocation of the dense kernel updates, a workgroup apart (1 to 16; default
    /// 1). More bytes in flight per invocation can help a GPU reach its bandwidth; on lavapipe 2 was 15%
    /// slower than 1. `bench -- --sweep` measures both knobs.
    pub vec4s_per_invocation: u32,
    /// Cap on the bytes of one pooled buffer, below the device's `max_storage_buffer_binding_size` and
    /// `max_buffer_size` (useful to test splitting, or to keep allocations small). Rounded down to 16
    /// bytes; with q8 state, down to whole q8 blocks (`q8_block` f32 elements: 16 bytes per 4), at least one.
    pub max_chunk_bytes: Option<u64>,
    /// Cap on workgroups per dispatch dimension, below the device's
    /// `max_compute_workgroups_per_dimension` (useful to test folding at small sizes).
    pub max_workgroups_per_dimension: Option<u32>,
    /// Pass each dispatch's parameters as immediate data (push constants) where the device has
    /// `Features::IMMEDIATES` (default); `false` forces the uniform-buffer path.
    pub use_immediates: bool,
    /// Largest staging buffer for a step's host data (default 64 MiB). Host data (host gradients, sparse
    /// values and indices, changed tables) is copied into one of two reused, host-mapped buffers and from
    /// there into place by copies recorded before the step's pass; a step with more host data than
    /// this uses `queue.write_buffer` instead (wgpu then allocates transient staging per call). `0`
    /// sends every step that way. Capped by the device's `max_buffer_size`.
    pub max_staging_bytes: u64,
    /// Alignment, in bytes, of every variable's first element in the pools: the device's
    /// `min_storage_buffer_offset_alignment` or this, whichever is larger (a power of two; default
    /// `None`). Real GPUs and WebGPU ask for up to 256 bytes, lavapipe for 16: raising it here tests a
    /// caller's binding code for those devices. The space between variables is padding that the dense
    /// kernel sweeps over (it stays zero), so one dispatch per pool buffer still covers every variable.
    pub slice_alignment: Option<u64>,
    /// Most steps that may be recorded and not yet resolved (submitted or abandoned) at once (default
    /// 64): past it, [`crate::RmsProp::record`] refuses with [`crate::Error::UnresolvedSteps`] instead of
    /// letting staging grow without bound.
    pub max_unresolved_steps: usize,
}

impl Default for OptimizerOptions {
    fn default() -> Self {
        OptimizerOptions {
            workgroup_size: 256,
            vec4s_per_invocation: 1,
            max_chunk_bytes: None,
            max_workgroups_per_dimension: None,
            use_immediates: true,
            max_staging_bytes: crate::upload::MAX_SLOT_BYTES,
            slice_alignment: None,
            max_unresolved_steps: 64,
        }
    }
}

/// A step recorded into a caller's encoder with [`crate::RmsProp::record`] and not yet resolved.
///
/// It must be resolved: with the [`wgpu::SubmissionIndex`] of the submit that carried its encoder
/// ([`crate::RmsProp::submitted`]), or abandoned when that encoder was dropped
/// ([`crate::RmsProp::abandon`]). Until then the step count, the tables the optimizer believes are on the
/// GPU and its staging stay as before the step, and calls that read or change state (adding a variable,
/// reading, checkpoints, `apply`) return [`crate::Error::UnresolvedSteps`].
#[must_use = "resolve the step with RmsProp::submitted(step, submission_index) or RmsProp::abandon(step)"]
#[derive(Debug)]
pub struct RecordedStep {
    pub(crate) optimizer: u32,
    pub(crate) ticket: u64,
    pub(crate) step: u64,
    pub(crate) lr: f32,
}

impl RecordedStep {
    /// The step count this step will have once submitted (`iterations() + 1` for the first unresolved
    /// step).
    pub fn step(&self) -> u64 {
        self.step
    }

    /// The learning rate this step uses (the schedule at `step() - 1`).
    pub fn learning_rate(&self) -> f32 {
        self.lr
    }
}

/// One buffer of a variable, as read by [`crate::RmsProp::read_many`] and friends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tensor {
    /// The variable's values.
    Variable,
    /// Its gradient buffer (what the last step read, or what the caller wrote for the next one).
    Gradient,
    /// One of its optimizer slots.
    Slot(crate::pool::Slot),
    /// Its 16-bit copy ([`crate::StorageTypes::copy`]), read as f32 (exactly).
    Copy,
}
