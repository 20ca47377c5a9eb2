//! The shader table: WGSL sources (one file per kernel family, with shared declarations prepended at
//! build time by `concat!`), their bindings declared in Rust as short lists, and pipeline creation with
//! `override` constants. Nothing formats WGSL text at run time.

use bytemuck::{Pod, Zeroable};

use crate::dtype::StorageTypes;
use crate::error::{Error, Result};
use crate::pool_wgsl::{Flavor, PoolBinding};

/// How the kernels receive the step's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParamsMode {
    /// Immediate data (push constants), where the device has `Features::IMMEDIATES`: set per dispatch in
    /// the command stream.
    Immediate,
    /// A uniform buffer with one slot per dispatch (dynamic offsets), written with `queue.write_buffer`.
    Uniform,
}

/// A WGSL module: `common.wgsl`, the parameter declaration of the mode, then (for modules that bind the
/// pools) `half.wgsl` and the pool declarations of the chunk's storage types ([`crate::pool_wgsl`]),
/// then its files.
#[derive(Debug, Clone, Copy)]
pub struct Module {
    /// The module's own files, in order.
    pub files: &'static [&'static str],
    /// The pooled buffers it binds, and how it indexes them.
    pub pools: Option<(Flavor, &'static [PoolBinding])>,
}

const COMMON: &str = include_str!("../shaders/common.wgsl");
const HALF: &str = include_str!("../shaders/half.wgsl");
const PARAMS_UNIFORM: &str = include_str!("../shaders/params_uniform.wgsl");
const PARAMS_IMMEDIATE: &str = include_str!("../shaders/params_immediate.wgsl");
const UPDATE: &str = include_str!("../shaders/rmsprop_update.wgsl");

impl Module {
    /// The source for `mode`, with the pools in `storage`'s types.
    pub fn source(&self, mode: ParamsMode, storage: StorageTypes) -> String {
        self.source_with(mode, storage, false)
    }

    /// [`Module::source`], with Keras's moving average of the variables bound in the dense kernel
    /// (`ema`: `ema_step` updates binding 19) or not (`ema_step` does nothing).
    pub fn source_with(&self, mode: ParamsMode, storage: StorageTypes, ema: bool) -> String {
        let mut s = String::from(COMMON);
        s.push_str(match mode {
            ParamsMode::Uniform => PARAMS_UNIFORM,
            ParamsMode::Immediate => PARAMS_IMMEDIATE,
        });
        if let Some((flavor, pools)) = self.pools {
            s.push_str(HALF);
            s.push_str(&crate::pool_wgsl::declarations(flavor, pools, storage, ema));
        }
        for f in self.files {
            s.push_str(f);
        }
        s
    }
}

use BindingKind::{ReadOnly as R, ReadWrite as RW, UniformDynamic as U};

/// The dense kernel.
pub const DENSE_WGSL: Module = Module {
    files: &[UPDATE, include_str!("../shaders/rmsprop_dense.wgsl")],
    pools: Some((
        Flavor::Vec4,
        &[
            ("x", 1, RW),
            ("g", 2, R),
            ("v", 3, RW),
            ("m", 4, RW),
            ("a", 5, RW),
            ("c", 20, RW),
            ("e", 19, RW),
        ],
    )),
};
/// The sparse kernels `lazy` and `scatter`.
pub const SPARSE_WGSL: Module = Module {
    files: &[
        UPDATE,
        include_str!("../shaders/rmsprop_sparse.wgsl"),
        NOT_EXACT,
    ],
    pools: Some((
        Flavor::Scalar,
        &[
            ("x", 1, RW),
            ("g", 2, RW),
            ("v", 3, RW),
            ("m", 4, RW),
            ("a", 5, RW),
            ("c", 20, RW),
        ],
    )),
};
/// The lazy sparse update of 8-bit quantized state (`rmsprop_lazy_q8.wgsl`): whole blocks, in the
/// vec4 form of the pools with the q8 codecs.
pub const LAZY_Q8_WGSL: Module = Module {
    files: &[UPDATE, include_str!("../shaders/rmsprop_lazy_q8.wgsl")],
    pools: Some((
        Flavor::Vec4,
        &[
            ("x", 1, RW),
            ("v", 3, RW),
            ("m", 4, RW),
            ("a", 5, RW),
            ("c", 20, RW),
        ],
    )),
};
/// The plain lazy update's catch-up hook: rows are never behind.
const NOT_EXACT: &str = "fn caught_up(row: u32, s: State, h: Hyper) -> State { return s; }\n";
/// `SparseMode::LazyExact`: the lazy update with its catch-up of skipped steps, the catch-up of whole
/// variables and the row counters (`rmsprop_lazy_exact.wgsl`, binding 22).
pub const LAZY_EXACT_WGSL: Module = Module {
    files: &[
        UPDATE,
        include_str!("../shaders/rmsprop_sparse.wgsl"),
        include_str!("../shaders/rmsprop_lazy_exact.wgsl"),
    ],
    pools: SPARSE_WGSL.pools,
};
/// Keras's base-class preparation of the gradients: loss scale and accumulation (`keras_base.wgsl`).
pub const KERAS_WGSL: Module = Module {
    files: &[include_str!("../shaders/keras_base.wgsl")],
    pools: None,
};
/// Grouping GPU-resident sparse indices: `link`, `gather`, `reset`.
pub const GROUP_WGSL: Module = Module {
    files: &[include_str!("../shaders/sparse_group.wgsl")],
    pools: None,
};
/// The norm reductions `partial_dense`, `partial_sparse` and `finalize`.
pub const REDUCE_WGSL: Module = Module {
    files: &[include_str!("../shaders/reduce_norm.wgsl")],
    pools: Some((Flavor::Scalar, &[("g", 2, R)])),
};

/// How a binding is declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindingKind {
    /// `var<uniform>` with a dynamic offset (one slot per dispatch).
    UniformDynamic,
    /// `var<storage, read>`.
    ReadOnly,
    /// `var<storage, read_write>`.
    ReadWrite,
}

/// Binding numbers shared by every module.
pub mod binding {
    /// `p: Params`.
    pub const PARAMS: u32 = 0;
    /// Variables.
    pub const X: u32 = 1;
    /// Gradients.
    pub const G: u32 = 2;
    /// Velocity.
    pub const V: u32 = 3;
    /// Momentum.
    pub const M: u32 = 4;
    /// Average gradient.
    pub const A: u32 = 5;
    /// Sums of squares (Keras 3 sparse duplicates).
    pub const Q: u32 = 6;
    /// Per-variable clipping state (read).
    pub const VAR_INFO: u32 = 7;
    /// The step's sparse values.
    pub const VALUES: u32 = 8;
    /// The step's grouped sparse indices.
    pub const INDEX: u32 = 9;
    /// Norm jobs.
    pub const JOBS: u32 = 10;
    /// Norm partial sums.
    pub const PARTIALS: u32 = 11;
    /// Per-variable step table (jobs, flags).
    pub const VAR_STEP: u32 = 12;
    /// Per-variable clipping state (written).
    pub const VAR_INFO_OUT: u32 = 13;
    /// Status: (skip this step, steps skipped so far, invalid GPU indices seen).
    pub const STATUS: u32 = 14;
    /// GPU-resident sparse indices (copied from the caller's buffer).
    pub const GIDX: u32 = 15;
    /// Per-row list heads of GPU index grouping.
    pub const HEADS: u32 = 16;
    /// Per-index list links of GPU index grouping.
    pub const NEXT: u32 = 17;
    /// Accumulated gradients (`gradient_accumulation_steps`).
    pub const ACC: u32 = 18;
    /// Moving average of the variables (`use_ema`).
    pub const EMA: u32 = 19;
    /// The 16-bit copy of the variables (`StorageTypes::copy`).
    pub const COPY: u32 = 20;
    /// The maps of 8-bit quantized state (unsigned, then signed; 256 f32 bits each).
    pub const Q8_MAPS: u32 = 21;
    /// `SparseMode::LazyExact`: per variable its step count then each row's (`rmsprop_lazy_exact.wgsl`).
    pub const LAZY_ROWS: u32 = 22;
    /// The row-wise velocity: per row-wise variable one f32 per row (`rmsprop_rowwise.wgsl`).
    pub const ROW_VELOCITY: u32 = 23;
}

/// A compute entry point: its module, name and bindings (group 0).
#[derive(Debug, Clone, Copy)]
pub struct Kernel {
    /// Name used in labels and errors.
    pub name: &'static str,
    /// WGSL module.
    pub module: Module,
    /// Entry point.
    pub entry: &'static str,
    /// `(binding, kind)` of every binding the entry point uses.
    pub bindings: &'static [(u32, BindingKind)],
}

/// Bindings of the dense update.
const DENSE_BINDINGS: &[(u32, BindingKind)] = &[
    (0, U),
    (1, RW),
    (2, R),
    (3, RW),
    (4, RW),
    (5, RW),
    (6, R),
    (7, R),
    (14, R),
];
/// The dense update of a range that starts at the beginning of a pool buffer.
pub const DENSE: Kernel = Kernel {
    name: "rmsprop_dense",
    module: DENSE_WGSL,
    entry: "main",
    bindings: DENSE_BINDINGS,
};
/// The dense update of a range that starts at `Params::begin` (a separate entry point: the offset in
/// the index costs 5-10% on lavapipe).
pub const DENSE_AT: Kernel = Kernel {
    name: "rmsprop_dense::main_at",
    module: DENSE_WGSL,
    entry: "main_at",
    bindings: DENSE_BINDINGS,
};
/// The lazy sparse update.
pub const LAZY: Kernel = Kernel {
    name: "rmsprop_sparse::lazy",
    module: SPARSE_WGSL,
    entry: "lazy",
    bindings: &[
        (0, U),
        (1, RW),
        (3, RW),
        (4, RW),
        (5, RW),
        (7, R),
        (8, R),
        (9, R),
        (14, R),
    ],
};
/// The lazy sparse update of the blocks of 8-bit quantized state that hold listed rows.
pub const LAZY_Q8: Kernel = Kernel {
    name: "rmsprop_lazy_q8",
    module: LAZY_Q8_WGSL,
    entry: "lazy_q8",
    bindings: &[
        (0, U),
        (1, RW),
        (3, RW),
        (4, RW),
        (5, RW),
        (7, R),
        (8, R),
        (9, R),
        (14, R),
    ],
};
/// The lazy update of `SparseMode::LazyExact`: listed rows caught up, then updated (binding 22, the
/// row counters, is added by `bindings_with`).
pub const LAZY_EXACT: Kernel = Kernel {
    name: "rmsprop_lazy_exact::lazy",
    module: LAZY_EXACT_WGSL,
    entry: "lazy",
    bindings: LAZY.bindings,
};
/// Every row of a variable's part in one pool buffer caught up (`SparseMode::LazyExact`).
pub const CATCH_UP: Kernel = Kernel {
    name: "rmsprop_lazy_exact::catch_up",
    module: LAZY_EXACT_WGSL,
    entry: "catch_up",
    bindings: &[(0, U), (1, RW), (3, RW), (4, RW), (5, RW), (7, R)],
};
/// The listed rows stamped current after a lazy-exact update, the variable's count advanced.
pub const STAMP_LISTED: Kernel = Kernel {
    name: "rmsprop_lazy_exact::stamp_listed",
    module: LAZY_EXACT_WGSL,
    entry: "stamp_listed",
    bindings: &[(0, U), (9, R), (14, R)],
};
/// Every row of a variable stamped current (after [`CATCH_UP`]).
pub const STAMP_ALL: Kernel = Kernel {
    name: "rmsprop_lazy_exact::stamp_all",
    module: LAZY_EXACT_WGSL,
    entry: "stamp_all",
    bindings: &[(0, U)],
};
/// The distinct rows of grouped indices caught up ([`crate::RmsProp::record_catch_up`]).
pub const CATCH_UP_ROWS: Kernel = Kernel {
    name: "rmsprop_lazy_exact::catch_up_rows",
    module: LAZY_EXACT_WGSL,
    entry: "catch_up_rows",
    bindings: &[(0, U), (1, RW), (3, RW), (4, RW), (5, RW), (7, R), (9, R)],
};
/// The rows of [`CATCH_UP_ROWS`] stamped current.
pub const STAMP_ROWS: Kernel = Kernel {
    name: "rmsprop_lazy_exact::stamp_rows",
    module: LAZY_EXACT_WGSL,
    entry: "stamp_rows",
    bindings: &[(0, U), (9, R)],
};
/// A variable's step count advanced (after [`STAMP_LISTED`]).
pub const BUMP: Kernel = Kernel {
    name: "rmsprop_lazy_exact::bump",
    module: LAZY_EXACT_WGSL,
    entry: "bump",
    bindings: &[(0, U), (7, R), (14, R)],
};
/// Every row of a variable and its count set to 0, after [`CATCH_UP`] (its history starts again).
pub const RESET_ROWS: Kernel = Kernel {
    name: "rmsprop_lazy_exact::reset_rows",
    module: LAZY_EXACT_WGSL,
    entry: "reset_rows",
    bindings: &[(0, U)],
};
/// Merging sparse rows into the gradient pool.
pub const SCATTER: Kernel = Kernel {
    name: "rmsprop_sparse::scatter",
    module: SPARSE_WGSL,
    entry: "scatter",
    bindings: &[(0, U), (2, RW), (6, RW), (7, R), (8, R), (9, R)],
};
/// Norm partial sums over a pool's gradients.
pub const PARTIAL_DENSE: Kernel = Kernel {
    name: "reduce_norm::partial_dense",
    module: REDUCE_WGSL,
    entry: "partial_dense",
    bindings: &[(0, U), (2, R), (10, R), (11, RW)],
};
/// Norm partial sums over the step's sparse values.
pub const PARTIAL_SPARSE: Kernel = Kernel {
    name: "reduce_norm::partial_sparse",
    module: REDUCE_WGSL,
    entry: "partial_sparse",
    bindings: &[(0, U), (8, R), (10, R), (11, RW)],
};
/// Per-variable and global norms to clipping state.
pub const FINALIZE: Kernel = Kernel {
    name: "reduce_norm::finalize",
    module: REDUCE_WGSL,
    entry: "finalize",
    bindings: &[(0, U), (11, RW), (12, R), (13, RW), (14, RW)],
};

const GROUP_BINDINGS: &[(u32, BindingKind)] =
    &[(0, U), (9, RW), (14, RW), (15, R), (16, RW), (17, RW)];
/// Grouping GPU indices: link each listed index into its row's list.
pub const GROUP_LINK: Kernel = Kernel {
    name: "sparse_group::link",
    module: GROUP_WGSL,
    entry: "link",
    bindings: GROUP_BINDINGS,
};
/// Grouping GPU indices: each row's leader writes its group.
pub const GROUP_GATHER: Kernel = Kernel {
    name: "sparse_group::gather",
    module: GROUP_WGSL,
    entry: "gather",
    bindings: GROUP_BINDINGS,
};
/// Grouping GPU indices: clear the row heads.
pub const GROUP_RESET: Kernel = Kernel {
    name: "sparse_group::reset",
    module: GROUP_WGSL,
    entry: "reset",
    bindings: GROUP_BINDINGS,
};

/// The gradients divided by the loss scale, accumulated or averaged with the accumulator, in place.
pub const PREPARE: Kernel = Kernel {
    name: "keras_base::prepare",
    module: KERAS_WGSL,
    entry: "prepare",
    bindings: &[(0, U), (2, RW), (18, RW)],
};

/// Keras's moving average of the variables, and its overwrite of the variables.
pub const EMA: Kernel = Kernel {
    name: "keras_base::ema",
    module: KERAS_WGSL,
    entry: "ema",
    bindings: &[(0, U), (1, RW), (19, RW)],
};

/// The loss scale on the step's sparse values, in place.
pub const PREPARE_VALUES: Kernel = Kernel {
    name: "keras_base::prepare_values",
    module: KERAS_WGSL,
    entry: "prepare_values",
    bindings: &[(0, U), (8, RW)],
};

/// Every kernel, for validation.
pub const ALL: [Kernel; 23] = [
    DENSE,
    ROWS_DENSE,
    ROWS_LAZY,
    LAZY,
    LAZY_Q8,
    LAZY_EXACT,
    CATCH_UP,
    STAMP_LISTED,
    STAMP_ALL,
    CATCH_UP_ROWS,
    STAMP_ROWS,
    RESET_ROWS,
    BUMP,
    SCATTER,
    PARTIAL_DENSE,
    PARTIAL_SPARSE,
    FINALIZE,
    GROUP_LINK,
    GROUP_GATHER,
    GROUP_RESET,
    PREPARE,
    EMA,
    PREPARE_VALUES,
];

/// The `Params` uniform of `common.wgsl` (112 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable, PartialEq, Default)]
pub struct Params {
    /// Learning rate of the step.
    pub lr: f32,
    /// `rho`.
    pub rho: f32,
    /// `1 - rho`.
    pub one_minus_rho: f32,
    /// Momentum coefficient.
    pub momentum: f32,
    /// Epsilon.
    pub epsilon: f32,
    /// Weight decay coefficient.
    pub weight_decay: f32,
    /// `clipvalue` (infinite when none).
    pub clipvalue: f32,
    /// `1 - rho^t` (1 when bias correction is off).
    pub bias_correction: f32,
    /// 1-based step number (wraps at 2^32).
    pub step: u32,
    /// Start of the dispatch's range.
    pub begin: u32,
    /// End of the dispatch's range.
    pub end: u32,
    /// Workgroups along x.
    pub groups_x: u32,
    /// Variable of a per-variable dispatch.
    pub var_index: u32,
    /// Sparse: elements per row.
    pub row_len: u32,
    /// Sparse: offset of the variable's values in the step's values buffer.
    pub values_base: u32,
    /// Sparse: offset of the variable's grouped indices in the step's index buffer.
    pub index_base: u32,
    /// Sparse: distinct rows.
    pub unique_rows: u32,
    /// Sparse: first element of the variable in the bound pool buffer.
    pub seg_first: u32,
    /// Sparse: elements of the variable in the bound pool buffer.
    pub seg_len: u32,
    /// Sparse: element offset of that part in the pool buffer.
    pub seg_base: u32,
    /// First entry of the per-variable options table in `var_info` (read when `VAR_OPTIONS`).
    pub opt_base: u32,
    /// Seed of stochastic rounding (`STOCHASTIC`).
    pub sr_seed: u32,
    /// Keras's moving average in the dense dispatch (`ema_step`): 0 none, 1 update, 2 update and
    /// overwrite the variables.
    pub ema_mode: u32,
    /// The momentum of that average for this step.
    pub ema_momentum: f32,
    /// `SparseMode::LazyExact`: the variable's entry in the row counters (its step count; its rows
    /// follow).
    pub rows_base: u32,
    /// `SparseMode::LazyExact` under a schedule: the variable's history of skipped-step maps in the
    /// row counters (a word index; see `rmsprop_lazy_exact.wgsl`).
    pub hist_base: u32,
    /// Padding to 16 bytes (two words, as the WGSL struct spells them).
    pub pad1: u32,
    /// Padding.
    pub pad2: u32,
}

impl Params {
    /// The parameters every dispatch of a step shares: its scalars, its number (`step`), and where the
    /// options table starts in `var_info` (`opt_base`); the rest is each dispatch's.
    pub(crate) fn of_step(s: &crate::config::StepScalars, step: u64, opt_base: u32) -> Params {
        Params {
            lr: s.lr,
            rho: s.rho,
            one_minus_rho: s.one_minus_rho,
            momentum: s.momentum,
            epsilon: s.epsilon,
            weight_decay: s.weight_decay,
            clipvalue: s.clipvalue,
            bias_correction: s.bias_correction,
            step: step as u32,
            opt_base,
            ..Params::default()
        }
    }
}

/// The host mirror of `VarInfo` in `common.wgsl` (written on the GPU by `reduce_norm.wgsl::finalize`);
/// it gives [`VAR_INFO_BYTES`] and is checked against the WGSL layout by `tests/reflection.rs`.
#[doc(hidden)]
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable, PartialEq, Default)]
pub struct VarInfo {
    /// Multiplier of the clipped gradient.
    pub mul: f32,
    /// Divisor of the clipped gradient.
    pub div: f32,
    /// `clipvalue` (infinite when none).
    pub clipvalue: f32,
    /// `PRECLIPPED` / `USE_SQUARES` bits.
    pub flags: u32,
}

/// Per-variable clipping state (`VarInfo` in `common.wgsl`), in bytes.
pub const VAR_INFO_BYTES: u64 = std::mem::size_of::<VarInfo>() as u64;

impl Kernel {
    /// The bindings used in `mode` (no uniform with immediates).
    pub fn bindings_for(&self, mode: ParamsMode) -> impl Iterator<Item = (u32, BindingKind)> + '_ {
        self.bindings
            .iter()
            .copied()
            .filter(move |&(b, _)| !(mode == ParamsMode::Immediate && b == binding::PARAMS))
    }
}

/// The kernels that write the variables, which bind their 16-bit copy too when the pools keep one
/// ([`crate::StorageTypes::copy`]).
pub(crate) fn writes_variables(kernel: &Kernel) -> bool {
    ["main", "main_at", "lazy", "lazy_q8", "catch_up"].contains(&kernel.entry)
        && kernel.module.pools.is_some()
}

/// The bindings of `kernel` in `mode`, with the copy of the variables when `copy` and it writes them,
/// and the moving average of the variables when `ema` and it is the dense update.
pub(crate) fn bindings_with(
    kernel: &Kernel,
    mode: ParamsMode,
    (copy, ema, q8, exact): (bool, bool, bool, bool),
) -> impl Iterator<Item = (u32, BindingKind)> + '_ {
    let extra = (copy && writes_variables(kernel)).then_some((binding::COPY, RW));
    // The row counters, in the lazy-exact kernels of a lazy-exact configuration (elsewhere those
    // kernels are never built: their slots hold other pipelines).
    let rows = (exact && kernel.name.starts_with("rmsprop_lazy_exact::"))
        .then_some((binding::LAZY_ROWS, RW));
    let dense = ["main", "main_at"].contains(&kernel.entry);
    let average = (ema && dense).then_some((binding::EMA, RW));
    let quantized = dense || kernel.entry == "lazy_q8";
    let maps = (q8 && quantized).then_some((binding::Q8_MAPS, R));
    kernel
        .bindings_for(mode)
        .chain(extra)
        .chain(average)
        .chain(maps)
        .chain(rows)
}

pub(crate) fn bind_group_layout(
    device: &wgpu::Device,
    label: &str,
    kernel: &Kernel,
    mode: ParamsMode,
    extras: (bool, bool, bool, bool),
) -> wgpu::BindGroupLayout {
    let entries: Vec<wgpu::BindGroupLayoutEntry> = bindings_with(kernel, mode, extras)
        .map(|(binding, kind)| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: match kind {
                    U => wgpu::BufferBindingType::Uniform,
                    R => wgpu::BufferBindingType::Storage { read_only: true },
                    RW => wgpu::BufferBindingType::Storage { read_only: false },
                },
                has_dynamic_offset: kind == U,
                min_binding_size: wgpu::BufferSize::new(if kind == U {
                    std::mem::size_of::<Params>() as u64
                } else {
                    16
                }),
            },
            count: None,
        })
        .collect();
    device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some(label),
        entries: &entries,
    })
}

#[path = "kernels_constants.rs"]
mod override_constants;
pub use override_constants::{constants, constants_with_options, module_constants};
pub(crate) use override_constants::{per_var, variant_constants};

/// Builds the pipeline of `kernel`; compilation or validation failures become [`Error::Kernel`].
pub(crate) fn pipeline(
    device: &wgpu::Device,
    prefix: &str,
    kernel: &Kernel,
    mode: ParamsMode,
    layout: &wgpu::BindGroupLayout,
    constants: &[(&'static str, f64)],
    (storage, ema): (StorageTypes, bool),
) -> Result<wgpu::ComputePipeline> {
    let source = kernel.module.source_with(mode, storage, ema);
    let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(&format!("{prefix}/{}", kernel.name)),
        source: wgpu::ShaderSource::Wgsl(source.as_str().into()),
    });
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(&format!("{prefix}/{} layout", kernel.name)),
        bind_group_layouts: &[Some(layout)],
        immediate_size: match mode {
            ParamsMode::Immediate => std::mem::size_of::<Params>() as u32,
            ParamsMode::Uniform => 0,
        },
    });
    let own = module_constants(&source, constants);
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(&format!("{prefix}/{}", kernel.name)),
        layout: Some(&pipeline_layout),
        module: &module,
        entry_point: Some(kernel.entry),
        compilation_options: wgpu::PipelineCompilationOptions {
            constants: &own,
            zero_initialize_workgroup_memory: false,
        },
        cache: None,
    });
    match pollster::block_on(scope.pop()) {
        None => Ok(pipeline),
        Some(e) => Err(Error::Kernel {
            kernel: kernel.name,
            message: e.to_string(),
        }),
    }
}

/// Folds `groups` workgroups (at most `max_groups`^2) into a grid `(x, y)` within the per-dimension limit:
/// as few rows as the limit allows, of equal width, so that fewer than `y` workgroups lie past the end
/// (the dense kernel's past-the-end invocations read and compute; they do not return early).
pub fn fold_grid(groups: u64, max_groups: u64) -> (u64, u64) {
    let gy = groups.div_ceil(max_groups).max(1);
    (groups.div_ceil(gy), gy)
}

#[path = "kernels_rowwise.rs"]
mod rowwise;
pub use rowwise::{ROWS_DENSE, ROWS_LAZY, ROWWISE_WGSL};

#[cfg(test)]
#[path = "kernels_tests.rs"]
mod tests;
