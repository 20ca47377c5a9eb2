//! [`RmsProp`]: variables in, dense and sparse gradients in, one encoded GPU step out.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::config::{DuplicateIndices, RmsPropConfig, SparseMode};
use crate::context::{create_buffer_checked, GpuContext};
use crate::error::{Error, Result};
use crate::kernels::{self, binding, Kernel, Params, ParamsMode, VAR_INFO_BYTES};
use crate::pool::{self, Chunk, Kind, PoolStats, Segment, Slot, VEC4_BYTES};
use crate::sparse::{self, Indices};
use crate::upload::Uploader;

static NEXT_OPTIMIZER_ID: AtomicU32 = AtomicU32::new(1);

/// Elements one norm job (one workgroup) sums at most.
const NORM_TILE: u64 = 1 << 16;
/// `PRECLIPPED` and `USE_SQUARES` in `common.wgsl`.
const FLAG_PRECLIPPED: u32 = 1;
const FLAG_USE_SQUARES: u32 = 2;

/// Handle of a variable inside one [`RmsProp`]. A handle from another optimizer is refused with
/// [`Error::UnknownVariable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VarId {
    optimizer: u32,
    index: u32,
}

impl VarId {
    /// Position of the variable in the order it was added.
    pub fn index(self) -> usize {
        self.index as usize
    }
}

/// A gradient already on the GPU: `len(variable)` f32 values starting at byte `offset` of `buffer`.
///
/// The buffer needs `COPY_SRC` usage and must belong to the optimizer's device; `offset` must be a
/// multiple of 4. The values are copied on the GPU into the optimizer's gradient pool (no host round trip).
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
    /// `len(variable)` values on the host.
    Dense(&'a [f32]),
    /// `len(variable)` values on the GPU, copied GPU-to-GPU into the gradient pool.
    Gpu(GpuGradient<'a>),
    /// The caller already wrote the gradient into the optimizer's own gradient buffer (see
    /// [`RmsProp::gradient_slices`]), e.g. from its backward shader: nothing is copied.
    Resident,
    /// IndexedSlices: rows along axis 0 (unsorted, repeated or empty) and `len(indices) * row_len`
    /// values, row-major. How absent rows and duplicates are treated is the configuration's
    /// [`SparseMode`] and [`DuplicateIndices`].
    Sparse {
        /// Row indices.
        indices: Indices<'a>,
        /// One row of values per index.
        values: &'a [f32],
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
    /// [`RmsProp::invalid_gpu_indices`].
    SparseGpuIndices {
        /// Where the row indices are.
        indices: GpuIndices<'a>,
        /// Where the rows of values are.
        values: GpuGradient<'a>,
    },
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
#[derive(Debug, Clone)]
pub struct GpuSlice {
    /// The pooled buffer.
    pub buffer: wgpu::Buffer,
    /// Byte offset of the first value (a multiple of 16).
    pub offset: u64,
    /// Index of the variable's first element held here.
    pub first_element: usize,
    /// Number of values.
    pub len: usize,
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
    /// `max_buffer_size` (useful to test splitting, or to keep allocations small). Rounded down to 16.
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
        }
    }
}

#[derive(Debug)]
struct Variable {
    name: String,
    shape: Vec<usize>,
    len: usize,
    /// Elements per row along axis 0 (the whole variable for a scalar).
    row_len: usize,
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Dense,
    DenseAt,
    Lazy,
    Scatter,
    PartialDense,
    PartialSparse,
    Finalize,
    GroupLink,
    GroupGather,
    GroupReset,
}

/// One dispatch of a step.
#[derive(Debug, Clone, Copy)]
struct Dispatch {
    which: Which,
    chunk: usize,
    params: Params,
    groups_y: u32,
}

/// How a variable takes part in the current step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Absent,
    Dense,
    Sparse,
}

/// A sparse gradient of the current step, as placed in the step's sparse buffers.
#[derive(Debug, Clone, Copy)]
struct SparseStep {
    var: usize,
    index_base: u32,
    values_base: u32,
    /// Distinct rows (host grouping), or the capacity of the layout (GPU grouping: the index count).
    unique_rows: u32,
    listed: u32,
    /// GPU grouping: (first index in `gpu_indices`, region in `heads`, region in `next`).
    gpu: Option<(u32, u32, u32)>,
}

#[derive(Debug)]
struct Pipelines {
    layouts: Vec<wgpu::BindGroupLayout>,
    pipelines: Vec<wgpu::ComputePipeline>,
}

const KERNELS: [(Which, Kernel); 10] = [
    (Which::Dense, kernels::DENSE),
    (Which::DenseAt, kernels::DENSE_AT),
    (Which::Lazy, kernels::LAZY),
    (Which::Scatter, kernels::SCATTER),
    (Which::PartialDense, kernels::PARTIAL_DENSE),
    (Which::PartialSparse, kernels::PARTIAL_SPARSE),
    (Which::Finalize, kernels::FINALIZE),
    (Which::GroupLink, kernels::GROUP_LINK),
    (Which::GroupGather, kernels::GROUP_GATHER),
    (Which::GroupReset, kernels::GROUP_RESET),
];
/// Kernels from this index on bind step-wide buffers only (one bind group each, not one per chunk).
const FIRST_GLOBAL_KERNEL: usize = 5;

/// A growable storage buffer of the step machinery (allocated when it must grow, reused otherwise).
#[derive(Debug)]
struct StepBuffer {
    buffer: wgpu::Buffer,
    usage: wgpu::BufferUsages,
    label: String,
}

impl StepBuffer {
    fn new(device: &wgpu::Device, label: String, usage: wgpu::BufferUsages, size: u64) -> Self {
        StepBuffer {
            buffer: device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(&label),
                size: size.max(16).next_multiple_of(16),
                usage,
                mapped_at_creation: false,
            }),
            usage,
            label,
        }
    }

    /// Makes room for `size` bytes; returns whether a new buffer was allocated. Fails (and keeps the old
    /// buffer) when the device cannot allocate.
    fn reserve(&mut self, device: &wgpu::Device, size: u64) -> Result<bool> {
        if size <= self.buffer.size() {
            return Ok(false);
        }
        let size = size.max(self.buffer.size() * 2).next_multiple_of(16);
        let buffer = create_buffer_checked(
            device,
            &wgpu::BufferDescriptor {
                label: Some(&self.label),
                size,
                usage: self.usage,
                mapped_at_creation: false,
            },
        )?;
        self.buffer = buffer;
        Ok(true)
    }
}

/// The RMSprop optimizer with its variables and state on the GPU.
///
/// ```
/// use wgpu_rmsprop::{GpuContext, RmsProp, RmsPropConfig};
/// let ctx = GpuContext::new()?;
/// let cfg = RmsPropConfig::builder().learning_rate(0.1).build()?;
/// let mut opt = RmsProp::new(&ctx, cfg)?;
/// let var1 = opt.add_variable("var1", &[], &[10.0])?;
/// let step = opt.apply_gradients(&[(var1, &[10.0])])?; // loss = var1^2 / 2, so grad = var1
/// assert_eq!(step, 1);
/// let x = opt.read_variable(var1)?;
/// assert!((x[0] - 9.683772).abs() < 1e-6);
/// # Ok::<(), wgpu_rmsprop::Error>(())
/// ```
#[derive(Debug)]
pub struct RmsProp {
    ctx: GpuContext,
    config: RmsPropConfig,
    id: u32,
    kinds: Vec<Kind>,
    per_var: bool,
    /// Non-finite policy `SkipStep`: gradients are checked on the GPU every step.
    skip_nonfinite: bool,
    mode: ParamsMode,
    workgroup_size: u32,
    vec4s_per_invocation: u32,
    max_groups: u32,
    /// Capacity of one chunk, in vec4.
    chunk_limit: u64,
    pipelines: Pipelines,
    /// Stand-ins bound where a pooled kind is not kept, one per kind so that no two bindings of a
    /// dispatch alias (never read or written by the kernel variant).
    placeholders: Vec<wgpu::Buffer>,
    uniform: StepBuffer,
    uniform_stride: u64,
    var_info: StepBuffer,
    var_step: StepBuffer,
    jobs: StepBuffer,
    partials: StepBuffer,
    sparse_values: StepBuffer,
    sparse_index: StepBuffer,
    /// (skip this step, steps skipped so far, invalid GPU indices seen), written on the GPU.
    status: wgpu::Buffer,
    /// GPU sparse indices copied from callers' buffers, the row heads and links of their grouping.
    gpu_indices: StepBuffer,
    heads: StepBuffer,
    next: StepBuffer,
    /// Each variable's region in `heads` (allocated the first time it takes GPU indices).
    heads_base: Vec<Option<u32>>,
    /// Total rows of the `heads` regions.
    heads_len: u64,
    global_bind_groups: Vec<wgpu::BindGroup>,
    staging: Option<wgpu::Buffer>,
    variables: Vec<Variable>,
    chunks: Vec<Chunk>,
    iterations: u64,
    last_lr: Option<f32>,
    /// Steps recorded since the last known submit, and whether one of them staged host data.
    pending_steps: u64,
    /// What the jobs / var_step buffers hold, to skip rewriting them when unchanged.
    written_jobs: Vec<[u32; 4]>,
    written_var_step: Vec<[u32; 4]>,
    // Reused per step, so that steady-state steps do not allocate.
    scratch_parts: Vec<Part>,
    /// Of the step being recorded (from `validate`): bytes of host gradients with their padding, and
    /// how many gradients are copied (anything but `Resident`) and how many are sparse, so that the
    /// passes over the step's list that only serve those are skipped when there are none.
    scratch_host_bytes: u64,
    scratch_copied: usize,
    scratch_sparse_count: usize,
    scratch_sparse: Vec<SparseStep>,
    scratch_keys: Vec<u64>,
    scratch_index: Vec<u32>,
    scratch_values: Vec<f32>,
    /// Values of this step's `SparseGpu` gradients, placed after the host values.
    scratch_gpu_values: usize,
    /// Indices and links of this step's `SparseGpuIndices` gradients.
    scratch_gpu_indices: usize,
    scratch_next: usize,
    /// Rows of `heads` already set to NONE.
    heads_written: u64,
    scratch_jobs: Vec<[u32; 4]>,
    scratch_var_step: Vec<[u32; 4]>,
    scratch_dispatches: Vec<Dispatch>,
    scratch_uniform: Vec<u8>,
    last_dispatches: usize,
    /// Labels of the step's encoder and compute pass (made once: steps do not format strings).
    step_labels: [String; 2],
    /// Staging ring of the steps' host data.
    uploader: Uploader,
    /// GPU buffers and bind groups created so far (for the no-allocation-per-step check).
    objects_created: u64,
}

impl RmsProp {
    /// An optimizer with no variables yet, on `ctx`'s device.
    pub fn new(ctx: &GpuContext, config: RmsPropConfig) -> Result<Self> {
        Self::with_options(ctx, config, OptimizerOptions::default())
    }

    /// As [`RmsProp::new`], with tuning options.
    pub fn with_options(
        ctx: &GpuContext,
        config: RmsPropConfig,
        options: OptimizerOptions,
    ) -> Result<Self> {
        ctx.check_alive()?;
        let device = ctx.device();
        let limits = device.limits();
        let wg = options.workgroup_size;
        if wg == 0
            || wg > limits.max_compute_workgroup_size_x
            || wg > limits.max_compute_invocations_per_workgroup
        {
            return Err(Error::InvalidConfig {
                field: "workgroup_size",
                value: wg.to_string(),
                requirement: "must be >= 1 and within the device's max_compute_workgroup_size_x",
            });
        }
        if !(1..=16).contains(&options.vec4s_per_invocation) {
            return Err(Error::InvalidConfig {
                field: "vec4s_per_invocation",
                value: options.vec4s_per_invocation.to_string(),
                requirement: "must be in [1, 16]",
            });
        }
        let mut max_groups = limits.max_compute_workgroups_per_dimension;
        if let Some(m) = options.max_workgroups_per_dimension {
            if m == 0 {
                return Err(Error::InvalidConfig {
                    field: "max_workgroups_per_dimension",
                    value: "0".into(),
                    requirement: "must be >= 1",
                });
            }
            max_groups = max_groups.min(m);
        }
        let mut chunk_bytes = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
        if let Some(b) = options.max_chunk_bytes {
            chunk_bytes = chunk_bytes.min(b);
        }
        // Element indices are u32 in the kernels: keep a chunk below 2^32 elements (16 GiB).
        let chunk_limit = (chunk_bytes / VEC4_BYTES).min(1 << 30);
        if chunk_limit == 0 {
            return Err(Error::InvalidConfig {
                field: "max_chunk_bytes",
                value: chunk_bytes.to_string(),
                requirement: "must be >= 16",
            });
        }

        let prefix = config.name().to_string();
        let mut kinds = vec![Kind::Variable, Kind::Gradient, Kind::Velocity];
        if config.has_momentum() {
            kinds.push(Kind::Momentum);
        }
        if config.centered() {
            kinds.push(Kind::AverageGradient);
        }
        if config.duplicate_indices() == DuplicateIndices::Keras3 {
            kinds.push(Kind::Squares);
        }
        let mut constants = kernels::constants(&config, wg);
        constants.push((
            "VEC4S_PER_INVOCATION",
            f64::from(options.vec4s_per_invocation),
        ));
        let immediates = options.use_immediates
            && device.features().contains(wgpu::Features::IMMEDIATES)
            && limits.max_immediate_size as usize >= std::mem::size_of::<Params>();
        let mode = if immediates {
            ParamsMode::Immediate
        } else {
            ParamsMode::Uniform
        };
        log::debug!("{prefix}: step parameters as {mode:?}");
        let mut layouts = Vec::new();
        let mut pipelines = Vec::new();
        for (_, k) in KERNELS {
            let label = format!("{prefix}/{} bind group layout", k.name);
            let layout = kernels::bind_group_layout(device, &label, &k, mode);
            pipelines.push(kernels::pipeline(
                device, &prefix, &k, mode, &layout, &constants,
            )?);
            layouts.push(layout);
        }
        let placeholders = Kind::ALL
            .iter()
            .map(|k| {
                device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(&format!("{prefix}/absent {k:?}")),
                    size: VEC4_BYTES,
                    usage: wgpu::BufferUsages::STORAGE,
                    mapped_at_creation: false,
                })
            })
            .collect();
        let params_size = std::mem::size_of::<Params>() as u64;
        let uniform_stride =
            params_size.next_multiple_of(u64::from(limits.min_uniform_buffer_offset_alignment));
        let storage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
        let mk = |name: &str, usage, size| {
            StepBuffer::new(device, format!("{prefix}/{name}"), usage, size)
        };
        let mut opt = RmsProp {
            ctx: ctx.clone(),
            per_var: kernels::per_var(&config),
            skip_nonfinite: config.non_finite() == crate::config::NonFinite::SkipStep,
            mode,
            id: NEXT_OPTIMIZER_ID.fetch_add(1, Ordering::Relaxed),
            kinds,
            workgroup_size: wg,
            vec4s_per_invocation: options.vec4s_per_invocation,
            max_groups,
            chunk_limit,
            pipelines: Pipelines { layouts, pipelines },
            placeholders,
            uniform: mk(
                "step uniforms",
                wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                uniform_stride * 4,
            ),
            uniform_stride,
            var_info: mk(
                "var_info",
                wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
                VAR_INFO_BYTES,
            ),
            var_step: mk("var_step", storage, 16),
            jobs: mk("norm jobs", storage, 16),
            partials: mk("norm partials", wgpu::BufferUsages::STORAGE, 16),
            status: device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(&format!("{prefix}/non-finite status")),
                size: 16,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
            sparse_values: mk("sparse values", storage, 4096),
            sparse_index: mk("sparse indices", storage, 4096),
            gpu_indices: mk("gpu sparse indices", storage, 16),
            heads: mk("sparse row heads", storage, 16),
            next: mk("sparse links", wgpu::BufferUsages::STORAGE, 16),
            heads_base: Vec::new(),
            heads_len: 0,
            global_bind_groups: Vec::new(),
            staging: None,
            variables: Vec::new(),
            chunks: Vec::new(),
            iterations: 0,
            last_lr: None,
            pending_steps: 0,
            written_jobs: Vec::new(),
            written_var_step: Vec::new(),
            scratch_parts: Vec::new(),
            scratch_host_bytes: 0,
            scratch_copied: 0,
            scratch_sparse_count: 0,
            scratch_sparse: Vec::new(),
            scratch_keys: Vec::new(),
            scratch_index: Vec::new(),
            scratch_values: Vec::new(),
            scratch_gpu_values: 0,
            scratch_gpu_indices: 0,
            scratch_next: 0,
            heads_written: 0,
            scratch_jobs: Vec::new(),
            scratch_var_step: Vec::new(),
            scratch_dispatches: Vec::new(),
            scratch_uniform: Vec::new(),
            last_dispatches: 0,
            step_labels: [format!("{prefix}/step"), format!("{prefix}/rmsprop step")],
            uploader: Uploader::new(
                format!("{prefix}/staging"),
                ctx.queue().clone(),
                options.max_staging_bytes.min(limits.max_buffer_size),
            ),
            objects_created: 0,
            config,
        };
        opt.rebuild_bind_groups();
        Ok(opt)
    }

    /// The configuration.
    pub fn config(&self) -> &RmsPropConfig {
        &self.config
    }

    /// The GPU context.
    pub fn context(&self) -> &GpuContext {
        &self.ctx
    }

    /// Steps applied so far (Keras's `optimizer.iterations`).
    pub fn iterations(&self) -> u64 {
        self.iterations
    }

    /// The learning rate the next step will use (the schedule at `iterations()`).
    pub fn learning_rate(&self) -> Result<f32> {
        self.config.learning_rate().at_step(self.iterations + 1)
    }

    /// The learning rate the last applied step used (`None` before the first step).
    pub fn last_learning_rate(&self) -> Option<f32> {
        self.last_lr
    }

    /// Number of variables.
    pub fn num_variables(&self) -> usize {
        self.variables.len()
    }

    /// The slots this configuration keeps: velocity, then momentum (if kept), then average_gradient (if
    /// centered).
    pub fn slots(&self) -> Vec<Slot> {
        let mut s = vec![Slot::Velocity];
        if self.config.has_momentum() {
            s.push(Slot::Momentum);
        }
        if self.config.centered() {
            s.push(Slot::AverageGradient);
        }
        s
    }

    /// Bytes held on the GPU.
    pub fn pool_stats(&self) -> PoolStats {
        let step_buffers = [
            &self.uniform,
            &self.var_info,
            &self.var_step,
            &self.jobs,
            &self.partials,
            &self.sparse_values,
            &self.sparse_index,
            &self.gpu_indices,
            &self.heads,
            &self.next,
        ];
        PoolStats {
            chunks: self.chunks.len(),
            pool_bytes: self
                .chunks
                .iter()
                .map(|c| c.capacity * VEC4_BYTES * self.kinds.len() as u64)
                .sum(),
            other_bytes: step_buffers.iter().map(|b| b.buffer.size()).sum::<u64>()
                + self.status.size()
                + self.placeholders.iter().map(|p| p.size()).sum::<u64>()
                + self.staging.as_ref().map_or(0, |s| s.size())
                + self.uploader.bytes(),
        }
    }

    /// Looks a variable up by name.
    pub fn variable(&self, name: &str) -> Result<VarId> {
        self.variables
            .iter()
            .position(|v| v.name == name)
            .map(|i| VarId {
                optimizer: self.id,
                index: i as u32,
            })
            .ok_or_else(|| Error::UnknownVariable(format!("{name:?}")))
    }

    fn slices(&self, id: VarId, kind: Kind) -> Result<Vec<GpuSlice>> {
        self.var(id)?
            .segments
            .iter()
            .map(|s| {
                Ok(GpuSlice {
                    buffer: self.chunks[s.chunk]
                        .buffer(kind)
                        .ok_or_else(missing_buffer)?
                        .clone(),
                    offset: s.byte_offset(),
                    first_element: s.first_elem,
                    len: s.elems,
                })
            })
            .collect()
    }

    /// Where a variable lives on the GPU, so that the caller's shaders can bind the parameters
    /// directly (the buffers have `STORAGE | COPY_SRC | COPY_DST` usage). Valid until variables are
    /// added (a pool buffer may then grow and move).
    pub fn variable_slices(&self, id: VarId) -> Result<Vec<GpuSlice>> {
        self.slices(id, Kind::Variable)
    }

    /// Where a variable's gradient is read from: a backward shader that writes there can step with
    /// [`Gradient::Resident`], with no copy at all. Valid until variables are added.
    pub fn gradient_slices(&self, id: VarId) -> Result<Vec<GpuSlice>> {
        self.slices(id, Kind::Gradient)
    }

    /// Name and shape of a variable.
    pub fn variable_info(&self, id: VarId) -> Result<(&str, &[usize])> {
        let v = self.var(id)?;
        Ok((&v.name, &v.shape))
    }

    fn var(&self, id: VarId) -> Result<&Variable> {
        if id.optimizer != self.id {
            return Err(Error::UnknownVariable(format!(
                "{id:?} (from another optimizer)"
            )));
        }
        self.variables
            .get(id.index as usize)
            .ok_or_else(|| Error::UnknownVariable(format!("{id:?}")))
    }

    /// Adds a variable with its initial values (row-major, `prod(shape)` of them; `[]` is a scalar) and
    /// freshly initialised slots. Its state is placed in the pools, which grow (on the GPU, copying what
    /// they hold) when full; steady-state steps allocate nothing.
    pub fn add_variable(&mut self, name: &str, shape: &[usize], init: &[f32]) -> Result<VarId> {
        self.ctx.check_alive()?;
        if self.variables.iter().any(|v| v.name == name) {
            return Err(Error::DuplicateVariable { name: name.into() });
        }
        let len = shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .filter(|&n| (n as u64) <= u64::from(u32::MAX))
            .ok_or_else(|| Error::InvalidShape {
                name: name.into(),
                shape: shape.to_vec(),
                reason: "has more elements than the kernels can index (2^32 - 1)",
            })?;
        if init.len() != len {
            return Err(Error::InitLength {
                name: name.into(),
                shape: shape.to_vec(),
                expected: len,
                got: init.len(),
            });
        }
        if self.variables.len() >= (u32::MAX / 2) as usize {
            return Err(Error::InvalidShape {
                name: name.into(),
                shape: shape.to_vec(),
                reason: "cannot be added: too many variables",
            });
        }

        // Plan the placement, then allocate everything it needs before changing any state.
        let mut used: Vec<u64> = self.chunks.iter().map(|c| c.used).collect();
        let segments = pool::place(&mut used, self.chunk_limit, len);
        let device = self.ctx.device().clone();
        let prefix = self.config.name().to_string();
        let mut new_buffers = Vec::new();
        for (index, &u) in used.iter().enumerate() {
            let current = self.chunks.get(index).map_or(0, |c| c.capacity);
            if u > current {
                let capacity = pool::grown_capacity(current, u, self.chunk_limit);
                let buffers =
                    pool::allocate_chunk_buffers(&device, &prefix, index, capacity, &self.kinds)?;
                self.objects_created += self.kinds.len() as u64;
                new_buffers.push((index, capacity, buffers));
            }
        }
        let nvars = self.variables.len() as u64 + 1;
        self.var_info.reserve(&device, nvars * VAR_INFO_BYTES)?;
        if self.var_step.reserve(&device, nvars * 16)? {
            self.written_var_step.clear();
        }

        // Commit: copy grown chunks' contents on the GPU, swap buffers.
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some(&format!("{prefix}/grow pools")),
        });
        for (index, capacity, buffers) in new_buffers {
            if let Some(old) = self.chunks.get_mut(index) {
                for &kind in &self.kinds {
                    if let (Some(src), Some(dst)) =
                        (old.buffer(kind), buffers[kind as usize].as_ref())
                    {
                        encoder.copy_buffer_to_buffer(src, 0, dst, 0, old.used * VEC4_BYTES);
                    }
                }
                old.capacity = capacity;
                old.buffers = buffers;
            } else {
                self.chunks.push(Chunk {
                    capacity,
                    used: 0,
                    buffers,
                    bind_groups: Vec::new(),
                    segments: Vec::new(),
                });
            }
        }
        self.ctx.queue().submit([encoder.finish()]);
        let var_index = self.variables.len();
        for (chunk, u) in self.chunks.iter_mut().zip(&used) {
            chunk.used = *u;
        }
        let accumulator = self.config.initial_accumulator_value() as f32;
        for s in &segments {
            self.chunks[s.chunk]
                .segments
                .push((s.offset, s.offset + s.vec4s(), var_index));
            let values = &init[s.first_elem..s.first_elem + s.elems];
            let queue = self.ctx.queue();
            queue.write_buffer(
                self.chunks[s.chunk]
                    .buffer(Kind::Variable)
                    .ok_or_else(missing_buffer)?,
                s.byte_offset(),
                bytemuck::cast_slice(values),
            );
            if accumulator != 0.0 {
                let v = vec![accumulator; s.elems];
                queue.write_buffer(
                    self.chunks[s.chunk]
                        .buffer(Kind::Velocity)
                        .ok_or_else(missing_buffer)?,
                    s.byte_offset(),
                    bytemuck::cast_slice(&v),
                );
            }
        }
        let row_len = if shape.is_empty() || shape[0] == 0 {
            len.max(1)
        } else {
            len / shape[0]
        };
        self.variables.push(Variable {
            name: name.into(),
            shape: shape.to_vec(),
            len,
            row_len,
            segments,
        });
        self.rebuild_bind_groups();
        log::debug!("{prefix}: added variable {name:?} {shape:?} ({len} elements)");
        Ok(VarId {
            optimizer: self.id,
            index: var_index as u32,
        })
    }

    /// Recreates every bind group (after a buffer was replaced; never in a steady-state step).
    fn rebuild_bind_groups(&mut self) {
        self.objects_created +=
            (self.chunks.len() * FIRST_GLOBAL_KERNEL + KERNELS.len() - FIRST_GLOBAL_KERNEL) as u64;
        let device = self.ctx.device();
        let prefix = self.config.name();
        let uniform = wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &self.uniform.buffer,
            offset: 0,
            size: wgpu::BufferSize::new(std::mem::size_of::<Params>() as u64),
        });
        let global = |b: u32| -> Option<&wgpu::Buffer> {
            Some(match b {
                binding::VAR_INFO | binding::VAR_INFO_OUT => &self.var_info.buffer,
                binding::VALUES => &self.sparse_values.buffer,
                binding::INDEX => &self.sparse_index.buffer,
                binding::JOBS => &self.jobs.buffer,
                binding::PARTIALS => &self.partials.buffer,
                binding::VAR_STEP => &self.var_step.buffer,
                binding::STATUS => &self.status,
                binding::GIDX => &self.gpu_indices.buffer,
                binding::HEADS => &self.heads.buffer,
                binding::NEXT => &self.next.buffer,
                _ => return None,
            })
        };
        let make = |k: usize, chunk: Option<&Chunk>, label: String| {
            let entries: Vec<wgpu::BindGroupEntry> = KERNELS[k]
                .1
                .bindings_for(self.mode)
                .map(|(b, _)| wgpu::BindGroupEntry {
                    binding: b,
                    resource: if b == binding::PARAMS {
                        uniform.clone()
                    } else {
                        let pooled =
                            Kind::ALL
                                .iter()
                                .find(|kind| kind.binding() == b)
                                .map(|&kind| {
                                    chunk
                                        .and_then(|c| c.buffer(kind))
                                        .unwrap_or(&self.placeholders[kind as usize])
                                });
                        pooled
                            .or_else(|| global(b))
                            .unwrap_or(&self.placeholders[0])
                            .as_entire_binding()
                    },
                })
                .collect();
            device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(&label),
                layout: &self.pipelines.layouts[k],
                entries: &entries,
            })
        };
        let per_chunk: Vec<Vec<wgpu::BindGroup>> = self
            .chunks
            .iter()
            .enumerate()
            .map(|(ci, c)| {
                (0..FIRST_GLOBAL_KERNEL)
                    .map(|k| make(k, Some(c), format!("{prefix}/{}[{ci}]", KERNELS[k].1.name)))
                    .collect()
            })
            .collect();
        self.global_bind_groups = (FIRST_GLOBAL_KERNEL..KERNELS.len())
            .map(|k| make(k, None, format!("{prefix}/{}", KERNELS[k].1.name)))
            .collect();
        for (c, bgs) in self.chunks.iter_mut().zip(per_chunk) {
            c.bind_groups = bgs;
        }
    }

    /// Applies one step of dense gradients given as host slices, one per variable listed (variables not
    /// listed are left untouched, as in Keras's `apply_gradients`). Returns the new step count.
    ///
    /// Everything is checked before anything is written: on error no variable, slot or counter changes.
    pub fn apply_gradients(&mut self, grads: &[(VarId, &[f32])]) -> Result<u64> {
        let g: Vec<(VarId, Gradient)> = grads
            .iter()
            .map(|&(id, g)| (id, Gradient::Dense(g)))
            .collect();
        self.apply(&g)
    }

    /// Applies one step of dense gradients that are already on the GPU (see [`GpuGradient`]). The values
    /// are copied GPU-to-GPU into the gradient pool in the same submission as the update.
    pub fn apply_gpu_gradients(&mut self, grads: &[(VarId, GpuGradient<'_>)]) -> Result<u64> {
        let g: Vec<(VarId, Gradient)> = grads
            .iter()
            .map(|&(id, g)| (id, Gradient::Gpu(g)))
            .collect();
        self.apply(&g)
    }

    /// Applies one step of any mix of dense, GPU and sparse gradients (one per variable listed) and
    /// submits it. Returns the new step count. On error nothing is written.
    ///
    /// Steps recorded with [`RmsProp::record`] and not yet marked submitted would run after this one:
    /// that is refused with [`Error::PendingSubmit`].
    pub fn apply(&mut self, grads: &[(VarId, Gradient<'_>)]) -> Result<u64> {
        if self.pending_steps > 0 {
            return Err(Error::PendingSubmit(format!(
                "{} recorded step(s) wait for a submit: submit them and call mark_submitted() first",
                self.pending_steps
            )));
        }
        let (iterations, last_lr) = (self.iterations, self.last_lr);
        // Anything the host checks cannot see (e.g. a gradient buffer from another device) surfaces as a
        // wgpu validation error: the command buffer is then invalid and nothing of it runs.
        let scope = self
            .ctx
            .device()
            .push_error_scope(wgpu::ErrorFilter::Validation);
        let mut encoder =
            self.ctx
                .device()
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some(&self.step_labels[0]),
                });
        let recorded = self.record(&mut encoder, grads);
        if recorded.is_ok() {
            self.ctx.queue().submit([encoder.finish()]);
        } else {
            drop(encoder);
        }
        let gpu_error = pollster::block_on(scope.pop());
        self.mark_submitted();
        recorded?;
        if let Some(e) = gpu_error {
            self.iterations = iterations;
            self.last_lr = last_lr;
            self.forget_staged_tables();
            return Err(Error::Gpu(format!(
                "the step was rejected by wgpu and not applied: {e}"
            )));
        }
        Ok(self.iterations)
    }

    /// Tells the optimizer that every step recorded with [`RmsProp::record`] so far has been submitted,
    /// so that the data they staged may be reused.
    pub fn mark_submitted(&mut self) {
        self.uploader.submitted();
        self.pending_steps = 0;
    }

    fn encoder(&self, what: &str) -> wgpu::CommandEncoder {
        self.ctx
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some(&format!("{}/{what}", self.config.name())),
            })
    }

    /// What a step staged may not have landed (its commands were rejected): the tables are written
    /// again by the next step, and the row-head region filled again.
    fn forget_staged_tables(&mut self) {
        self.written_jobs.clear();
        self.written_var_step.clear();
        self.heads_written = 0;
    }

    /// Bytes of host data this step stages (see [`RmsProp::stage`]).
    fn staging_bytes(&self) -> u64 {
        let dense = self.scratch_host_bytes;
        let jobs = if !self.scratch_jobs.is_empty() && self.scratch_jobs != self.written_jobs {
            std::mem::size_of_val(&self.scratch_jobs[..])
        } else {
            0
        };
        let var_step = if (self.per_var || self.skip_nonfinite)
            && !self.scratch_var_step.is_empty()
            && self.scratch_var_step != self.written_var_step
        {
            std::mem::size_of_val(&self.scratch_var_step[..])
        } else {
            0
        };
        dense
            + self.heads_len.saturating_sub(self.heads_written) * 4
            + (std::mem::size_of_val(&self.scratch_values[..])
                + std::mem::size_of_val(&self.scratch_index[..])
                + jobs
                + var_step
                + self.scratch_uniform.len()) as u64
    }

    /// Records the copies of a step's inputs into `encoder`: host data through the staging slot opened
    /// by the caller, GPU sources directly.
    fn stage(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        grads: &[(VarId, Gradient<'_>)],
    ) -> Result<()> {
        let copied = if self.scratch_copied > 0 { grads } else { &[] };
        for (id, g) in copied {
            let v = &self.variables[id.index as usize];
            match g {
                Gradient::Resident => {}
                Gradient::Dense(values) => {
                    for s in &v.segments {
                        let dst = self.chunks[s.chunk]
                            .buffer(Kind::Gradient)
                            .ok_or_else(missing_buffer)?;
                        let part = &values[s.first_elem..s.first_elem + s.elems];
                        // The padding lanes after the last element are written as zeros.
                        let pad = s.vec4s() * VEC4_BYTES - s.elems as u64 * 4;
                        self.uploader.write(
                            encoder,
                            dst,
                            s.byte_offset(),
                            bytemuck::cast_slice(part),
                            pad,
                        )?;
                    }
                }
                Gradient::Gpu(gg) => {
                    for s in &v.segments {
                        let dst = self.chunks[s.chunk]
                            .buffer(Kind::Gradient)
                            .ok_or_else(missing_buffer)?;
                        let src = gg.offset + s.first_elem as u64 * 4;
                        encoder.copy_buffer_to_buffer(
                            gg.buffer,
                            src,
                            dst,
                            s.byte_offset(),
                            s.elems as u64 * 4,
                        );
                    }
                }
                Gradient::Sparse { .. }
                | Gradient::SparseGpu { .. }
                | Gradient::SparseGpuIndices { .. } => {
                    let gpu_values = match g {
                        Gradient::SparseGpu { indices, values } => Some((indices.len(), values)),
                        Gradient::SparseGpuIndices { indices, values } => {
                            Some((indices.len, values))
                        }
                        _ => None,
                    };
                    if let Some((k, values)) = gpu_values {
                        let sp = self
                            .scratch_sparse
                            .iter()
                            .find(|sp| sp.var == id.index as usize)
                            .ok_or_else(missing_buffer)?;
                        let bytes = (k * v.row_len) as u64 * 4;
                        if bytes > 0 {
                            encoder.copy_buffer_to_buffer(
                                values.buffer,
                                values.offset,
                                &self.sparse_values.buffer,
                                u64::from(sp.values_base) * 4,
                                bytes,
                            );
                        }
                        if let (Gradient::SparseGpuIndices { indices, .. }, Some((first, _, _))) =
                            (g, sp.gpu)
                        {
                            if k > 0 {
                                encoder.copy_buffer_to_buffer(
                                    indices.buffer,
                                    indices.offset,
                                    &self.gpu_indices.buffer,
                                    u64::from(first) * 4,
                                    k as u64 * 4,
                                );
                            }
                        }
                    }
                    if self.config.sparse_mode() == SparseMode::Dense {
                        // The merged rows are scattered into a cleared gradient region.
                        for s in &v.segments {
                            for kind in [Kind::Gradient, Kind::Squares] {
                                if let Some(b) = self.chunks[s.chunk].buffer(kind) {
                                    encoder.clear_buffer(
                                        b,
                                        s.byte_offset(),
                                        Some(s.vec4s() * VEC4_BYTES),
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
        if !self.scratch_values.is_empty() {
            self.uploader.write(
                encoder,
                &self.sparse_values.buffer,
                0,
                bytemuck::cast_slice(&self.scratch_values),
                0,
            )?;
        }
        if self.heads_len > self.heads_written {
            // New row-head regions start empty (NONE); grouping leaves them empty again after each step.
            let none = vec![u32::MAX; (self.heads_len - self.heads_written) as usize];
            self.uploader.write(
                encoder,
                &self.heads.buffer,
                self.heads_written * 4,
                bytemuck::cast_slice(&none),
                0,
            )?;
            self.heads_written = self.heads_len;
        }
        if !self.scratch_index.is_empty() {
            self.uploader.write(
                encoder,
                &self.sparse_index.buffer,
                0,
                bytemuck::cast_slice(&self.scratch_index),
                0,
            )?;
        }
        if !self.scratch_jobs.is_empty() && self.scratch_jobs != self.written_jobs {
            self.uploader.write(
                encoder,
                &self.jobs.buffer,
                0,
                bytemuck::cast_slice(&self.scratch_jobs),
                0,
            )?;
            self.written_jobs.clone_from(&self.scratch_jobs);
        }
        if (self.per_var || self.skip_nonfinite)
            && !self.scratch_var_step.is_empty()
            && self.scratch_var_step != self.written_var_step
        {
            self.uploader.write(
                encoder,
                &self.var_step.buffer,
                0,
                bytemuck::cast_slice(&self.scratch_var_step),
                0,
            )?;
            self.written_var_step.clone_from(&self.scratch_var_step);
        }
        if !self.scratch_uniform.is_empty() {
            self.uploader
                .write(encoder, &self.uniform.buffer, 0, &self.scratch_uniform, 0)?;
        }
        Ok(())
    }

    /// Checks a step: known handles, no variable twice, lengths, sparse indices, GPU buffers. Fills
    /// `scratch_parts`.
    fn validate(&mut self, grads: &[(VarId, Gradient<'_>)]) -> Result<()> {
        self.ctx.check_alive()?;
        self.scratch_parts.clear();
        self.scratch_parts
            .resize(self.variables.len(), Part::Absent);
        (
            self.scratch_host_bytes,
            self.scratch_copied,
            self.scratch_sparse_count,
        ) = (0, 0, 0);
        let (mut sparse_values, mut sparse_indices) = (0u64, 0u64);
        for (id, g) in grads {
            let v = self.var(*id)?;
            let name = || v.name.clone();
            // Sparse gradients: (indices, values) of this step, checked below against the step's total.
            let listed = match g {
                Gradient::Resident => None,
                Gradient::Dense(values) => {
                    if values.len() != v.len {
                        return Err(Error::GradientLength {
                            name: name(),
                            expected: v.len,
                            got: values.len(),
                        });
                    }
                    None
                }
                Gradient::Gpu(gg) => {
                    check_gpu_buffer(&v.name, gg, v.len)?;
                    None
                }
                Gradient::SparseGpuIndices { indices, values } => {
                    if v.shape.is_empty() {
                        return Err(Error::SparseScalar { name: name() });
                    }
                    let n = indices.len.saturating_mul(v.row_len);
                    let idx = GpuGradient {
                        buffer: indices.buffer,
                        offset: indices.offset,
                    };
                    check_gpu_buffer(&v.name, &idx, indices.len)?;
                    check_gpu_buffer(&v.name, values, n)?;
                    Some((indices.len, n))
                }
                Gradient::SparseGpu { indices, values } => {
                    let n = indices.len().saturating_mul(v.row_len);
                    sparse::validate(&v.name, &v.shape, indices, n)?;
                    check_gpu_buffer(&v.name, values, n)?;
                    Some((indices.len(), n))
                }
                Gradient::Sparse { indices, values } => {
                    sparse::validate(&v.name, &v.shape, indices, values.len())?;
                    Some((indices.len(), values.len()))
                }
            };
            if let Some((k, n)) = listed {
                // The step's sparse values and indices are addressed with u32 in the kernels.
                sparse_values += n as u64;
                sparse_indices += k as u64;
                if sparse_values >= u64::from(u32::MAX) || sparse_indices >= u64::from(u32::MAX / 8)
                {
                    return Err(Error::SparseValuesLength {
                        name: name(),
                        indices: k,
                        row_len: v.row_len,
                        got: n,
                    });
                }
            }
            if self.scratch_parts[id.index as usize] != Part::Absent {
                return Err(Error::DuplicateGradient {
                    name: v.name.clone(),
                });
            }
            let host_bytes: u64 = match g {
                Gradient::Dense(_) => v.segments.iter().map(|s| s.vec4s() * VEC4_BYTES).sum(),
                _ => 0,
            };
            self.scratch_host_bytes += host_bytes;
            self.scratch_parts[id.index as usize] = match g {
                Gradient::Sparse { .. }
                | Gradient::SparseGpu { .. }
                | Gradient::SparseGpuIndices { .. } => Part::Sparse,
                Gradient::Dense(_) | Gradient::Gpu(_) | Gradient::Resident => Part::Dense,
            };
            self.scratch_copied += usize::from(!matches!(g, Gradient::Resident));
            self.scratch_sparse_count +=
                usize::from(self.scratch_parts[id.index as usize] == Part::Sparse);
        }
        Ok(())
    }

    /// Records one step into `encoder` without submitting it (the caller submits, e.g. together with its
    /// forward and backward passes, then calls [`RmsProp::mark_submitted`]). Returns the new step count.
    /// On error nothing is written or recorded.
    ///
    /// Each step's parameters (its learning rate among them) travel as immediate data in the command
    /// stream where the device has them, so any number of steps with GPU gradients can be recorded
    /// before one submit, each with its own learning rate (on the uniform path too). Host data
    /// (host or sparse gradients, clipping tables that changed) is copied into a reused staging buffer
    /// and from there into place by copies recorded in `encoder` before the step's pass, so steps with
    /// host data can be recorded before one submit too. Only a step with more host data than
    /// [`OptimizerOptions::max_staging_bytes`] (written with `queue.write_buffer`, which lands before
    /// the whole submission) is refused with [`Error::PendingSubmit`] while earlier steps wait.
    pub fn record(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        grads: &[(VarId, Gradient<'_>)],
    ) -> Result<u64> {
        let step = self.iterations + 1;
        let scalars = self.config.scalars(step)?;
        self.validate(grads)?;
        self.prepare_sparse(grads);
        self.plan(step, &scalars);
        self.reserve_step_buffers()?;

        // Uniform path: one slot per dispatch, copied in before the step's pass (so each recorded step
        // reads its own parameters).
        self.scratch_uniform.clear();
        if self.mode == ParamsMode::Uniform {
            for d in &self.scratch_dispatches {
                self.scratch_uniform
                    .extend_from_slice(bytemuck::bytes_of(&d.params));
                let padded = self
                    .scratch_uniform
                    .len()
                    .next_multiple_of(self.uniform_stride as usize);
                self.scratch_uniform.resize(padded, 0);
            }
        }
        // Host data goes through one reused staging slot; GPU sources are copied directly. Everything
        // lands in encoder order, before the step's pass, so steps recorded before one submit each see
        // their own data. Past `max_staging_bytes` host data is written with `queue.write_buffer`, which
        // lands before everything the submit runs: refused while earlier steps wait for that submit.
        let need = self.staging_bytes();
        if self.uploader.is_direct(need) && self.pending_steps > 0 {
            return Err(Error::PendingSubmit(format!(
                "this step's {need} bytes of host data exceed max_staging_bytes and would land before \
                 the {} step(s) recorded earlier run: submit them and call mark_submitted() first",
                self.pending_steps
            )));
        }
        self.uploader.begin(self.ctx.device(), need)?;
        let staged = self.stage(encoder, grads);
        self.uploader.finish(encoder);
        if staged.is_err() {
            self.forget_staged_tables();
        }
        staged?;
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(&self.step_labels[1]),
                timestamp_writes: None,
            });
            for (slot, d) in self.scratch_dispatches.iter().enumerate() {
                let k = KERNELS.iter().position(|(w, _)| *w == d.which).unwrap_or(0);
                let bg = match d.which {
                    Which::PartialSparse
                    | Which::Finalize
                    | Which::GroupLink
                    | Which::GroupGather
                    | Which::GroupReset => &self.global_bind_groups[k - FIRST_GLOBAL_KERNEL],
                    _ => &self.chunks[d.chunk].bind_groups[k],
                };
                pass.set_pipeline(&self.pipelines.pipelines[k]);
                match self.mode {
                    ParamsMode::Immediate => {
                        pass.set_bind_group(0, bg, &[]);
                        pass.set_immediates(0, bytemuck::bytes_of(&d.params));
                    }
                    ParamsMode::Uniform => {
                        let offset = slot as u64 * self.uniform_stride;
                        pass.set_bind_group(0, bg, &[offset as u32]);
                    }
                }
                pass.dispatch_workgroups(d.params.groups_x, d.groups_y, 1);
            }
        }
        self.last_dispatches = self.scratch_dispatches.len();
        self.pending_steps += 1;
        self.iterations = step;
        self.last_lr = Some(scalars.lr);
        Ok(step)
    }

    /// Groups each sparse gradient's indices by row on the host (indices only; values are copied as
    /// they are) into `scratch_index` / `scratch_values`.
    fn prepare_sparse(&mut self, grads: &[(VarId, Gradient<'_>)]) {
        self.scratch_sparse.clear();
        self.scratch_index.clear();
        self.scratch_values.clear();
        // Host values first (one contiguous write), then room for the values copied on the GPU.
        self.scratch_gpu_values = 0;
        if self.scratch_sparse_count == 0 {
            return;
        }
        for host in [true, false] {
            for (id, g) in grads {
                let (indices, len) = match g {
                    Gradient::Sparse { indices, values } if host => (indices, values.len()),
                    Gradient::SparseGpu { indices, .. } if !host => (
                        indices,
                        indices.len() * self.variables[id.index as usize].row_len,
                    ),
                    _ => continue,
                };
                let index_base = self.scratch_index.len() as u32;
                let unique =
                    sparse::group_rows(indices, &mut self.scratch_keys, &mut self.scratch_index);
                let values_base = (self.scratch_values.len() + self.scratch_gpu_values) as u32;
                match g {
                    Gradient::Sparse { values, .. } => {
                        self.scratch_values.extend_from_slice(values)
                    }
                    _ => self.scratch_gpu_values += len,
                }
                self.scratch_sparse.push(SparseStep {
                    var: id.index as usize,
                    index_base,
                    values_base,
                    unique_rows: unique,
                    listed: indices.len() as u32,
                    gpu: None,
                });
            }
        }
        // Indices on the GPU: room for the layout, grouped there.
        self.scratch_gpu_indices = 0;
        self.scratch_next = 0;
        self.heads_base.resize(self.variables.len(), None);
        for (id, g) in grads {
            let Gradient::SparseGpuIndices { indices, .. } = g else {
                continue;
            };
            let var = id.index as usize;
            let (k, row_len, rows) = {
                let v = &self.variables[var];
                (indices.len, v.row_len, v.shape[0])
            };
            let heads = *self.heads_base[var].get_or_insert_with(|| {
                let base = self.heads_len as u32;
                self.heads_len += rows as u64;
                base
            });
            let index_base = self.scratch_index.len() as u32;
            self.scratch_index
                .resize(self.scratch_index.len() + sparse::HEADER + 4 * k, 0);
            let values_base = (self.scratch_values.len() + self.scratch_gpu_values) as u32;
            self.scratch_gpu_values += k * row_len;
            self.scratch_sparse.push(SparseStep {
                var,
                index_base,
                values_base,
                unique_rows: k as u32,
                listed: k as u32,
                gpu: Some((
                    self.scratch_gpu_indices as u32,
                    heads,
                    self.scratch_next as u32,
                )),
            });
            self.scratch_gpu_indices += k;
            self.scratch_next += k;
        }
    }

    /// Plans the step's dispatches (and norm jobs) into the scratch lists.
    fn plan(&mut self, step: u64, s: &crate::config::StepScalars) {
        let base = Params {
            lr: s.lr,
            rho: s.rho,
            one_minus_rho: s.one_minus_rho,
            momentum: s.momentum,
            epsilon: s.epsilon,
            weight_decay: s.weight_decay,
            clipvalue: s.clipvalue,
            bias_correction: s.bias_correction,
            step: step as u32,
            ..Params::default()
        };
        let wg = u64::from(self.workgroup_size);
        let dense_group = wg * u64::from(self.vec4s_per_invocation);
        let max_groups = u64::from(self.max_groups);
        let mut out = std::mem::take(&mut self.scratch_dispatches);
        out.clear();
        // Splits [begin, end) into dispatches of at most max_groups^2 groups of `per_group` items.
        let push = |out: &mut Vec<Dispatch>,
                    which,
                    chunk,
                    params: Params,
                    begin: u64,
                    end: u64,
                    per_group: u64| {
            let per_dispatch = max_groups * max_groups * per_group;
            let mut b = begin;
            while b < end {
                let e = end.min(b + per_dispatch);
                let groups = (e - b).div_ceil(per_group);
                let (gx, gy) = kernels::fold_grid(groups, max_groups);
                out.push(Dispatch {
                    which: if which == Which::Dense && b > 0 {
                        Which::DenseAt
                    } else {
                        which
                    },
                    chunk,
                    params: Params {
                        begin: b as u32,
                        end: e as u32,
                        groups_x: gx as u32,
                        ..params
                    },
                    groups_y: gy as u32,
                });
                b = e;
            }
        };
        let lazy = self.config.sparse_mode() == SparseMode::Lazy;
        // Variables the dense kernel updates: dense gradients, and sparse ones in dense mode.
        let dense_updated = |part: Part| part == Part::Dense || (part == Part::Sparse && !lazy);

        // 1. Norms: jobs in (chunk, offset) order for dense gradients, then the sparse values.
        self.scratch_jobs.clear();
        self.scratch_var_step.clear();
        if self.per_var || self.skip_nonfinite {
            self.scratch_var_step.resize(self.variables.len(), [0; 4]);
        }
        // Jobs cover every gradient value of the step: for norms, and for the non-finite check.
        let jobs_needed = self.config.clipnorm().is_some()
            || self.config.global_clipnorm().is_some()
            || self.skip_nonfinite;
        if jobs_needed {
            for (ci, chunk) in self.chunks.iter().enumerate() {
                let first = self.scratch_jobs.len() as u64;
                for &(begin, _, var) in &chunk.segments {
                    if self.scratch_parts[var] != Part::Dense {
                        continue;
                    }
                    let seg = self.variables[var]
                        .segments
                        .iter()
                        .find(|s| s.chunk == ci && s.offset == begin)
                        .copied()
                        .unwrap_or(Segment {
                            chunk: ci,
                            offset: begin,
                            first_elem: 0,
                            elems: 0,
                        });
                    let vs = &mut self.scratch_var_step[var];
                    if vs[1] == 0 {
                        vs[0] = self.scratch_jobs.len() as u32;
                    }
                    let mut k = 0;
                    while k < seg.elems as u64 {
                        let n = NORM_TILE.min(seg.elems as u64 - k);
                        self.scratch_jobs.push([
                            (seg.offset * 4 + k) as u32,
                            n as u32,
                            var as u32,
                            0,
                        ]);
                        vs[1] += 1;
                        k += n;
                    }
                }
                let last = self.scratch_jobs.len() as u64;
                push(&mut out, Which::PartialDense, ci, base, first, last, 1);
            }
            let first = self.scratch_jobs.len() as u64;
            for sp in &self.scratch_sparse {
                let n = u64::from(sp.listed) * self.variables[sp.var].row_len as u64;
                let vs = &mut self.scratch_var_step[sp.var];
                vs[0] = self.scratch_jobs.len() as u32;
                let mut k = 0;
                while k < n {
                    let len = NORM_TILE.min(n - k);
                    self.scratch_jobs.push([
                        (u64::from(sp.values_base) + k) as u32,
                        len as u32,
                        sp.var as u32,
                        0,
                    ]);
                    vs[1] += 1;
                    k += len;
                }
            }
            let last = self.scratch_jobs.len() as u64;
            push(&mut out, Which::PartialSparse, 0, base, first, last, 1);
        }
        // 2. Per-variable clipping state.
        if self.per_var || self.skip_nonfinite {
            let squares = self.config.duplicate_indices() == DuplicateIndices::Keras3
                && self.config.global_clipnorm().is_none();
            for sp in &self.scratch_sparse {
                if !lazy {
                    self.scratch_var_step[sp.var][2] =
                        FLAG_PRECLIPPED | if squares { FLAG_USE_SQUARES } else { 0 };
                }
            }
            out.push(Dispatch {
                which: Which::Finalize,
                chunk: 0,
                params: Params {
                    end: self.variables.len() as u32,
                    groups_x: 1,
                    ..base
                },
                groups_y: 1,
            });
        }
        // 3. Sparse rows: indices on the GPU are grouped there first; then the rows are merged into the
        //    gradient pool (dense mode) or updated in place (lazy); the row heads are reset last.
        let grouping = |sp: &SparseStep, gpu: (u32, u32, u32)| Params {
            index_base: sp.index_base,
            unique_rows: sp.unique_rows,
            seg_first: gpu.0,
            seg_len: self.variables[sp.var].shape[0] as u32,
            values_base: gpu.1,
            var_index: gpu.2,
            ..base
        };
        for sp in &self.scratch_sparse {
            if let Some(gpu) = sp.gpu {
                let params = grouping(sp, gpu);
                push(
                    &mut out,
                    Which::GroupLink,
                    0,
                    params,
                    0,
                    u64::from(sp.listed),
                    wg,
                );
                push(
                    &mut out,
                    Which::GroupGather,
                    0,
                    params,
                    0,
                    u64::from(sp.listed),
                    wg,
                );
            }
        }
        for sp in &self.scratch_sparse {
            let v = &self.variables[sp.var];
            let items = u64::from(sp.unique_rows) * v.row_len as u64;
            for seg in &v.segments {
                let params = Params {
                    var_index: sp.var as u32,
                    row_len: v.row_len as u32,
                    values_base: sp.values_base,
                    index_base: sp.index_base,
                    unique_rows: sp.unique_rows,
                    seg_first: seg.first_elem as u32,
                    seg_len: seg.elems as u32,
                    seg_base: (seg.offset * 4) as u32,
                    ..base
                };
                // Host-grouped rows are sorted: only the distinct rows that overlap this pool buffer's
                // part of the variable are dispatched, so a split table still costs O(touched rows).
                let (lo, hi) = match sp.gpu {
                    Some(_) => (0, items),
                    None => {
                        let rows = &self.scratch_index[sp.index_base as usize + sparse::HEADER..]
                            [..sp.unique_rows as usize];
                        let row_len = v.row_len as u64;
                        let (first, end) =
                            (seg.first_elem as u64, (seg.first_elem + seg.elems) as u64);
                        let lo = rows.partition_point(|&r| (u64::from(r) + 1) * row_len <= first);
                        let hi = rows.partition_point(|&r| u64::from(r) * row_len < end);
                        (lo as u64 * row_len, hi as u64 * row_len)
                    }
                };
                let which = if lazy { Which::Lazy } else { Which::Scatter };
                push(&mut out, which, seg.chunk, params, lo, hi, wg);
            }
        }
        for sp in &self.scratch_sparse {
            if let Some(gpu) = sp.gpu {
                let params = grouping(sp, gpu);
                push(
                    &mut out,
                    Which::GroupReset,
                    0,
                    params,
                    0,
                    u64::from(sp.listed),
                    wg,
                );
            }
        }
        // 4. The dense update: maximal runs of adjacent variables per chunk (one dispatch per pool buffer
        //    when every variable is in the step), or one range per variable when clipping state is read.
        for (ci, chunk) in self.chunks.iter().enumerate() {
            let mut run: Option<(u64, u64)> = None;
            for &(begin, end, var) in &chunk.segments {
                if !dense_updated(self.scratch_parts[var]) {
                    continue;
                }
                if self.per_var {
                    let params = Params {
                        var_index: var as u32,
                        ..base
                    };
                    push(&mut out, Which::Dense, ci, params, begin, end, dense_group);
                    continue;
                }
                run = match run {
                    Some((b, e)) if e == begin => Some((b, end)),
                    Some((b, e)) => {
                        push(&mut out, Which::Dense, ci, base, b, e, dense_group);
                        Some((begin, end))
                    }
                    None => Some((begin, end)),
                };
            }
            if let Some((b, e)) = run {
                push(&mut out, Which::Dense, ci, base, b, e, dense_group);
            }
        }
        self.scratch_dispatches = out;
    }

    /// Grows the step buffers when this step needs more than any before (then rebinds).
    fn reserve_step_buffers(&mut self) -> Result<()> {
        let device = self.ctx.device().clone();
        let mut grown = false;
        if self.mode == ParamsMode::Uniform {
            // Steps recorded earlier keep the buffer (and bind groups) they were recorded with.
            let slots = self.scratch_dispatches.len() as u64 * self.uniform_stride;
            grown |= self.uniform.reserve(&device, slots)?;
        }
        if self
            .jobs
            .reserve(&device, self.scratch_jobs.len() as u64 * 16)?
        {
            self.written_jobs.clear();
            grown = true;
        }
        grown |= self
            .partials
            .reserve(&device, self.scratch_jobs.len() as u64 * 8)?;
        grown |= self.sparse_values.reserve(
            &device,
            (self.scratch_values.len() + self.scratch_gpu_values) as u64 * 4,
        )?;
        grown |= self
            .sparse_index
            .reserve(&device, self.scratch_index.len() as u64 * 4)?;
        grown |= self
            .gpu_indices
            .reserve(&device, self.scratch_gpu_indices as u64 * 4)?;
        grown |= self.next.reserve(&device, self.scratch_next as u64 * 4)?;
        if self.heads.reserve(&device, self.heads_len * 4)? {
            self.heads_written = 0;
            grown = true;
        }
        if grown {
            self.rebuild_bind_groups();
        }
        Ok(())
    }

    /// GPU buffers and bind groups this optimizer has created so far. Steady-state steps create none:
    /// the count only moves when variables are added, a step needs more staging than any before, or a
    /// read-back needs a larger staging buffer.
    pub fn gpu_objects_created(&self) -> u64 {
        self.objects_created + self.uploader.created
    }

    /// Number of dispatches the last step recorded.
    pub fn last_step_dispatches(&self) -> usize {
        self.last_dispatches
    }

    /// Reads a variable back to the host (waits for the GPU).
    pub fn read_variable(&mut self, id: VarId) -> Result<Vec<f32>> {
        self.read(id, Kind::Variable)
    }

    /// Reads a slot of a variable back to the host (waits for the GPU). A slot this configuration does
    /// not keep is [`Error::SlotNotPresent`].
    pub fn read_slot(&mut self, id: VarId, slot: Slot) -> Result<Vec<f32>> {
        let kind = Kind::from(slot);
        if !self.kinds.contains(&kind) {
            return Err(Error::SlotNotPresent {
                slot: slot.name(),
                why: match slot {
                    Slot::Momentum => "it needs momentum > 0, or a preset that always keeps it",
                    Slot::AverageGradient => "it needs centered = true",
                    Slot::Velocity => "internal",
                },
            });
        }
        self.read(id, kind)
    }

    fn read(&mut self, id: VarId, kind: Kind) -> Result<Vec<f32>> {
        self.ctx.check_alive()?;
        let len = self.var(id)?.len;
        let copies = self.variables[id.index as usize]
            .segments
            .iter()
            .map(|s| {
                let src = self.chunks[s.chunk]
                    .buffer(kind)
                    .ok_or_else(missing_buffer)?;
                Ok((
                    src.clone(),
                    s.byte_offset(),
                    s.first_elem as u64 * 4,
                    s.elems as u64 * 4,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        self.read_back(&copies, len)
    }

    /// Saves the complete optimizer state to `path` (safetensors; see [`crate::checkpoint`]): every slot,
    /// the step count, the skipped-step count, the configuration, and the variables when
    /// `include_variables`. Atomic: the previous file at `path` survives a crash mid-save.
    pub fn save_checkpoint(
        &mut self,
        path: &std::path::Path,
        include_variables: bool,
    ) -> Result<()> {
        let mut tensors = Vec::new();
        let ids: Vec<VarId> = (0..self.variables.len())
            .map(|i| VarId {
                optimizer: self.id,
                index: i as u32,
            })
            .collect();
        for &id in &ids {
            let (name, shape) = {
                let v = &self.variables[id.index as usize];
                (v.name.clone(), v.shape.clone())
            };
            if include_variables {
                tensors.push((
                    format!("variables/{name}"),
                    shape.clone(),
                    self.read_variable(id)?,
                ));
            }
            for slot in self.slots() {
                tensors.push((
                    format!("slots/{}/{name}", slot.name()),
                    shape.clone(),
                    self.read_slot(id, slot)?,
                ));
            }
        }
        let skipped = self.skipped_steps()?;
        let listed: Vec<(&str, &[usize])> = self
            .variables
            .iter()
            .map(|v| (v.name.as_str(), &v.shape[..]))
            .collect();
        let metadata = std::collections::HashMap::from([
            ("format".to_string(), crate::checkpoint::FORMAT.to_string()),
            (
                "preset".to_string(),
                self.config.preset_kind().name().to_string(),
            ),
            (
                "config".to_string(),
                crate::checkpoint::config_json(&self.config).to_string(),
            ),
            ("iterations".to_string(), self.iterations.to_string()),
            ("skipped_steps".to_string(), skipped.to_string()),
            (
                "variables".to_string(),
                serde_json::to_string(&listed).unwrap_or_default(),
            ),
        ]);
        crate::checkpoint::write(path, crate::checkpoint::Contents { metadata, tensors })
    }

    /// Restores a checkpoint written by [`RmsProp::save_checkpoint`] into this optimizer, which must have
    /// the same preset, configuration and variables (names and shapes, in order). Everything is read and
    /// checked first; on any error nothing changes. Variables are restored when the file holds them.
    pub fn load_checkpoint(&mut self, path: &std::path::Path) -> Result<()> {
        self.ctx.check_alive()?;
        let vars: Vec<(String, Vec<usize>)> = self
            .variables
            .iter()
            .map(|v| (v.name.clone(), v.shape.clone()))
            .collect();
        let slots = self.slots();
        let names: Vec<&str> = slots.iter().map(|s| s.name()).collect();
        let restored = crate::checkpoint::read(path, &self.config, &vars, &names)?;
        let queue = self.ctx.queue().clone();
        for (i, v) in self.variables.iter().enumerate() {
            let mut writes: Vec<(Kind, &[f32])> = Vec::new();
            if let Some(x) = &restored.variables[i] {
                writes.push((Kind::Variable, x));
            }
            for (slot, values) in slots.iter().zip(&restored.slots[i]) {
                writes.push((Kind::from(*slot), values));
            }
            for (kind, values) in writes {
                for s in &v.segments {
                    let dst = self.chunks[s.chunk]
                        .buffer(kind)
                        .ok_or_else(missing_buffer)?;
                    let part = &values[s.first_elem..s.first_elem + s.elems];
                    queue.write_buffer(dst, s.byte_offset(), bytemuck::cast_slice(part));
                }
            }
        }
        let status = [0u32, restored.skipped.min(u64::from(u32::MAX)) as u32, 0, 0];
        queue.write_buffer(&self.status, 0, bytemuck::cast_slice(&status));
        queue.submit([]);
        self.iterations = restored.iterations;
        self.last_lr = None;
        Ok(())
    }

    /// Out-of-range or negative indices seen so far in [`Gradient::SparseGpuIndices`] gradients (they
    /// are skipped; counted on the GPU, reading waits for it).
    pub fn invalid_gpu_indices(&mut self) -> Result<u64> {
        let raw = self.read_back(&[(self.status.clone(), 0, 0, 12)], 3)?;
        Ok(u64::from(raw[2].to_bits()))
    }

    /// Steps skipped so far by the [`crate::config::NonFinite::SkipStep`] policy (counted on the GPU;
    /// reading waits for it). Always 0 with the default `Propagate` policy.
    pub fn skipped_steps(&mut self) -> Result<u64> {
        let raw = self.read_back(&[(self.status.clone(), 0, 0, 8)], 2)?;
        Ok(u64::from(raw[1].to_bits()))
    }

    /// The factor each variable's gradient was scaled by in the last step by `clipnorm` or
    /// `global_clipnorm`, as computed on the GPU (`mul / div` of its clipping state), in variable order.
    /// `None` when the configuration reads no per-variable clipping state. Diagnostic: it waits for the
    /// GPU.
    pub fn last_clip_factors(&mut self) -> Result<Option<Vec<f32>>> {
        if !self.per_var || self.variables.is_empty() {
            return Ok(None);
        }
        let n = self.variables.len();
        let copy = (
            self.var_info.buffer.clone(),
            0,
            0,
            n as u64 * VAR_INFO_BYTES,
        );
        let raw = self.read_back(&[copy], n * 4)?;
        Ok(Some(raw.chunks(4).map(|info| info[0] / info[1]).collect()))
    }

    /// Copies `(source, source offset, destination offset, bytes)` ranges into the staging buffer and
    /// reads `len` floats back.
    fn read_back(
        &mut self,
        copies: &[(wgpu::Buffer, u64, u64, u64)],
        len: usize,
    ) -> Result<Vec<f32>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let bytes = len as u64 * 4;
        if self.staging.as_ref().is_none_or(|s| s.size() < bytes) {
            let size = bytes.next_multiple_of(VEC4_BYTES);
            let buffer = create_buffer_checked(
                self.ctx.device(),
                &wgpu::BufferDescriptor {
                    label: Some(&format!("{}/read-back staging", self.config.name())),
                    size,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                },
            )?;
            self.staging = Some(buffer);
            self.objects_created += 1;
        }
        let staging = self.staging.as_ref().ok_or_else(missing_buffer)?;
        let mut encoder = self.encoder("read back");
        for (src, src_offset, dst_offset, size) in copies {
            encoder.copy_buffer_to_buffer(src, *src_offset, staging, *dst_offset, *size);
        }
        self.ctx.queue().submit([encoder.finish()]);
        let slice = staging.slice(0..bytes);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.ctx.wait_idle()?;
        rx.recv()
            .map_err(|e| Error::Gpu(e.to_string()))?
            .map_err(|e| Error::Gpu(e.to_string()))?;
        let out = {
            let view = slice
                .get_mapped_range()
                .map_err(|e| Error::Gpu(e.to_string()))?;
            bytemuck::cast_slice::<u8, f32>(&view).to_vec()
        };
        staging.unmap();
        self.ctx.check_alive()?;
        Ok(out)
    }
}

/// Checks that `len` f32 can be copied from a caller's buffer for variable `name`.
fn check_gpu_buffer(name: &str, g: &GpuGradient<'_>, len: usize) -> Result<()> {
    let reason = if !g.buffer.usage().contains(wgpu::BufferUsages::COPY_SRC) {
        Some(format!("usage {:?} lacks COPY_SRC", g.buffer.usage()))
    } else if !g.offset.is_multiple_of(4) {
        Some(format!("offset {} is not a multiple of 4", g.offset))
    } else if g
        .offset
        .checked_add(len as u64 * 4)
        .is_none_or(|end| end > g.buffer.size())
    {
        Some(format!(
            "offset {} + {len} values x 4 bytes exceeds the buffer's {} bytes",
            g.offset,
            g.buffer.size()
        ))
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::GradientBuffer {
            name: name.into(),
            reason,
        }),
        None => Ok(()),
    }
}

fn missing_buffer() -> Error {
    Error::Gpu("internal: a pooled buffer is missing".into())
}
