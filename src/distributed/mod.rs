//! Data-parallel steps with the optimizer state sharded across ranks over MPI (ZeRO stage 1), behind
//! the cargo feature `distributed`.
//!
//! **Layout.** The variables are laid out one after another in one flattened parameter space, each
//! starting on the device's storage offset alignment (whole vec4s at least); the space is cut into one
//! equal shard of whole vec4s per rank ([`ShardLayout`]). A variable may span shards. Each rank keeps
//! the optimizer state of its shard only, in an ordinary [`RmsProp`] (the same kernels) whose
//! variables are the rank's pieces of the full variables: at most three per variable (a partial first
//! row, whole rows, a partial last row), so that a sparse row maps onto a piece's row. Every rank also
//! keeps the full variables, f32, in one GPU buffer ([`ShardedRmsProp::params`]) that its forward pass
//! reads, and a gradient buffer of the same layout ([`ShardedRmsProp::grads`]) that its backward pass
//! may write ([`ShardGradient::Resident`]).
//!
//! **A step** ([`ShardedRmsProp::step`]): dense gradients are reduce-scattered (sum or mean,
//! [`Reduction`]) so that each rank gets its shard's; sparse rows go to the ranks that own them (an
//! all-to-all of indices and rows, in rank order and list order, so duplicates merge as configured and
//! lazy updates touch only the owner's rows). With `clipnorm` or `global_clipnorm` the host divides by
//! the loss scale and clips: each rank computes partial squared norms of its part of every variable,
//! one all-reduce gives the full norms, and the shard optimizer sees clipped gradients
//! ([`RmsPropConfig`] without clipping). [`NonFinite::SkipStep`] agrees across ranks (an all-reduced
//! flag; a rank whose part is finite makes its shard skip too). The shard is updated on the GPU, read
//! back, and all-gathered into every rank's full variables. MPI cannot read wgpu's buffers: all
//! transfers are staged through the host; the GPU's copy of `Resident` gradients towards the host runs
//! while the sparse rows travel.
//!
//! **Faults.** Invalid step inputs on any rank end the whole job (`MPI_Abort`, the message on stderr)
//! instead of leaving the other ranks blocked in a collective; [`abort_on_panic`] does the same for a
//! panic. Configurations or variables that differ across ranks are found by [`ShardedRmsProp::new`]
//! (an all-reduced hash per field) and returned on every rank as [`Error::RankMismatch`] naming the
//! first field that differs.
//!
//! **Checkpoints** ([`ShardedRmsProp::save_checkpoint`]): each rank writes its shard optimizer's
//! checkpoint (the crate's safetensors format) and rank 0 a `manifest.json` with the layout; loading
//! resumes bit for bit, on the same world size or, re-sharded, on another.
//!
//! ```no_run
//! // mpirun -n 2 ./program
//! use wgpu_rmsprop::distributed::{
//!     abort_on_panic, DistributedOptions, Reduction, ShardGradient, ShardedRmsProp, VariableSpec,
//! };
//! use wgpu_rmsprop::{GpuContext, RmsPropConfig};
//! let universe = mpi::initialize().expect("MPI");
//! let world = universe.world();
//! abort_on_panic(mpi::topology::Communicator::rank(&world) as usize);
//! let ctx = GpuContext::new()?;
//! let config = RmsPropConfig::builder().learning_rate(0.01).global_clipnorm(1.0).build()?;
//! let vars = [
//!     VariableSpec::new("w", &[256, 64], vec![0.0; 256 * 64]),
//!     VariableSpec::new("table", &[1000, 16], vec![0.0; 16_000]),
//! ];
//! let options = DistributedOptions { reduction: Reduction::Mean, ..Default::default() };
//! let mut opt = ShardedRmsProp::new(&ctx, config, &world, &vars, options)?;
//! // Each rank: the gradients of its part of the batch (the mean over the ranks is applied).
//! let (dw, rows, values) = (vec![0.1; 256 * 64], [3i64, 7, 3], vec![0.5; 3 * 16]);
//! opt.step(&[
//!     (0, ShardGradient::Dense(&dw)),
//!     (1, ShardGradient::Sparse { indices: &rows, values: &values }),
//! ])?;
//! let w = opt.read_variable(0)?; // this rank's full copy, the same on every rank
//! assert_eq!(w.len(), 256 * 64);
//! # Ok::<(), wgpu_rmsprop::Error>(())
//! ```
//!
//! Not supported here (typed errors at start): stochastic rounding and q8 state (their random streams
//! and quantization blocks follow a variable's own element indices).

mod case;
mod comm;
mod io;
mod layout;
mod reshard;
mod step;

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use mpi::topology::SimpleCommunicator;

pub use case::{replay_case, DistributedVerdict};
pub use comm::{abort_on_panic, abort_world, Comm};
pub use layout::{FlatVar, Piece, ShardLayout};

use crate::config::{NonFinite, RmsPropConfig};
use crate::context::GpuContext;
use crate::dtype::Dtype;
use crate::error::{Error, Result};
use crate::pool::Slot;
use crate::step::types::{OptimizerOptions, VarId};
use crate::var_options::VarOptions;
use crate::RmsProp;

/// How the ranks' dense gradients (and sparse rows) combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reduction {
    /// The sum over ranks (each rank's gradient is a part of the global one).
    Sum,
    /// The mean over ranks (each rank's gradient is the mean over its part of the global batch).
    #[default]
    Mean,
}

/// Options of the sharded optimizer.
#[derive(Debug, Clone, Copy, Default)]
pub struct DistributedOptions {
    /// How gradients combine across ranks.
    pub reduction: Reduction,
    /// Options of each rank's shard optimizer.
    pub optimizer: OptimizerOptions,
}

/// A variable to shard: the same on every rank.
#[derive(Debug, Clone, PartialEq)]
pub struct VariableSpec {
    /// Its name.
    pub name: String,
    /// Its shape (`[]`: a scalar).
    pub shape: Vec<usize>,
    /// Its initial values, row-major.
    pub init: Vec<f32>,
    /// Its options (a parameter group).
    pub options: VarOptions,
}

impl VariableSpec {
    /// A variable with default options.
    pub fn new(name: &str, shape: &[usize], init: Vec<f32>) -> VariableSpec {
        VariableSpec {
            name: name.into(),
            shape: shape.into(),
            init,
            options: VarOptions::default(),
        }
    }
}

/// One rank's gradient of a variable (by its index in the list given to [`ShardedRmsProp::new`]).
#[derive(Debug, Clone, Copy)]
pub enum ShardGradient<'a> {
    /// The variable's values on the host (f32; rounded to a 16-bit gradient type on the shard).
    Dense(&'a [f32]),
    /// Rows along axis 0 and one row of values per index (unsorted, repeated or empty).
    Sparse {
        /// Row indices.
        indices: &'a [i64],
        /// `indices.len() * row_len` values.
        values: &'a [f32],
    },
    /// Already in this rank's gradient buffer ([`ShardedRmsProp::grads`]) at the variable's offset.
    Resident,
}

/// The RMSprop optimizer with its state sharded across the ranks of an MPI communicator (ZeRO
/// stage 1): see the [module documentation](self).
#[derive(Debug)]
pub struct ShardedRmsProp {
    ctx: GpuContext,
    config: RmsPropConfig,
    options: DistributedOptions,
    comm: Comm,
    layout: ShardLayout,
    /// This rank's pieces, and their ids in `shard`.
    pieces: Vec<Piece>,
    ids: Vec<VarId>,
    /// Per variable: the indices into `pieces` of its pieces here.
    var_pieces: Vec<Vec<usize>>,
    /// Per variable: its options (pieces take them).
    var_options: Vec<VarOptions>,
    /// Per variable: the slots it keeps (a bit per [`Slot`] in `ALL_SLOTS` order), from any rank.
    kept: Vec<u64>,
    shard: RmsProp,
    /// The host clips (a norm clip is configured): the shard optimizer has no clipping.
    host_clips: bool,
    /// A non-finite gradient was seen since the last update call (gradient accumulation).
    poisoned: bool,
    skipped: u64,
    /// The host's accumulator of this shard (gradient accumulation with a norm clip), else empty.
    acc: Vec<f32>,
    params: wgpu::Buffer,
    grads: wgpu::Buffer,
    /// Reused staging buffer of the gradient read (made at the first `Resident` step).
    staging: Option<wgpu::Buffer>,
    /// Host staging: the flattened space (send side), one shard (receive side), gathered space.
    send: Vec<f32>,
    mine: Vec<f32>,
    gathered: Vec<f32>,
}

/// The slots in the order of the `kept` bits.
const ALL_SLOTS: [Slot; 4] = [
    Slot::Velocity,
    Slot::Momentum,
    Slot::AverageGradient,
    Slot::Ema,
];

/// The slots whose bits (in `ALL_SLOTS` order) are set.
fn slots_of(bits: u64) -> Vec<Slot> {
    ALL_SLOTS
        .iter()
        .enumerate()
        .filter(|(i, _)| bits & (1 << i) != 0)
        .map(|(_, &s)| s)
        .collect()
}

fn hash_of(value: &impl Hash) -> u64 {
    let mut h = DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

/// The fields of a configuration and of the variables, each with a hash of its value: top-level
/// fields of the configuration's `Debug` form, the sharded optimizer's options and the device's offset
/// alignment (the layout follows it), then each variable's name, shape, options and initial values.
fn fingerprint(
    config: &RmsPropConfig,
    vars: &[VariableSpec],
    options: &DistributedOptions,
    align: usize,
) -> Vec<(String, u64)> {
    let text = format!("{config:#?}");
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in text.lines().skip(1) {
        let top = line.starts_with("    ") && !line.starts_with("     ");
        match line.trim_start().split_once(':') {
            Some((name, rest)) if top => fields.push((name.to_string(), rest.to_string())),
            _ => {
                if let Some(last) = fields.last_mut() {
                    last.1.push_str(line);
                }
            }
        }
    }
    let mut out: Vec<(String, u64)> = fields
        .into_iter()
        .map(|(name, value)| (name, hash_of(&value)))
        .collect();
    out.push((
        "distributed_options".into(),
        hash_of(&format!("{options:?}")),
    ));
    out.push((
        "min_storage_buffer_offset_alignment".into(),
        hash_of(&align),
    ));
    for (i, v) in vars.iter().enumerate() {
        let bits: Vec<u32> = v.init.iter().map(|x| x.to_bits()).collect();
        out.push((format!("variables[{i}].name"), hash_of(&v.name)));
        out.push((format!("variables[{i}].shape"), hash_of(&v.shape)));
        out.push((
            format!("variables[{i}].options"),
            hash_of(&format!("{:?}", v.options)),
        ));
        out.push((format!("variables[{i}].init"), hash_of(&bits)));
    }
    out
}

fn unsupported(field: &'static str, value: String, requirement: &'static str) -> Error {
    Error::InvalidConfig {
        field,
        value,
        requirement,
    }
}

impl ShardedRmsProp {
    /// A sharded optimizer over the ranks of `comm` (a collective call: every rank calls it with the
    /// same configuration and variables). Differences across ranks are [`Error::RankMismatch`] on every
    /// rank, naming the first field that differs.
    pub fn new(
        ctx: &GpuContext,
        config: RmsPropConfig,
        comm: &SimpleCommunicator,
        vars: &[VariableSpec],
        options: DistributedOptions,
    ) -> Result<ShardedRmsProp> {
        let mut comm = Comm::new(comm);
        let align = (ctx.device().limits().min_storage_buffer_offset_alignment / 4) as usize;
        // The number of fields first (a different number of variables), then every field's hash.
        let fields = fingerprint(&config, vars, &options, align);
        let (min, max) = comm.min_max_u64(&[vars.len() as u64]);
        if min != max {
            return Err(Error::RankMismatch {
                field: "variables.len".into(),
                detail: format!("from {} to {} variables", min[0], max[0]),
            });
        }
        let hashes: Vec<u64> = fields.iter().map(|f| f.1).collect();
        let (min, max) = comm.min_max_u64(&hashes);
        if let Some(i) = (0..hashes.len()).find(|&i| min[i] != max[i]) {
            return Err(Error::RankMismatch {
                field: fields[i].0.clone(),
                detail: format!(
                    "an all-reduced hash of the value; rank {} has hash {:016x}",
                    comm.rank(),
                    hashes[i]
                ),
            });
        }
        // Same everywhere from here: errors are returned by every rank alike.
        if let Some(seed) = config.stochastic_rounding() {
            return Err(unsupported(
                "stochastic_rounding",
                seed.to_string(),
                "is not supported by the sharded optimizer (its random stream follows a variable's \
                 own element indices)",
            ));
        }
        let q8 = std::iter::once(config.storage())
            .chain(vars.iter().filter_map(|v| v.options.storage))
            .any(|s| s.state == Dtype::Q8);
        if q8 {
            return Err(unsupported(
                "storage",
                "q8 state".into(),
                "is not supported by the sharded optimizer (quantization blocks follow a variable's \
                 own elements)",
            ));
        }
        if let Some(v) = vars.iter().find(|v| v.options.rowwise_velocity) {
            return Err(Error::InvalidVarOptions {
                variable: v.name.clone(),
                field: "rowwise_velocity",
                value: "true".into(),
                requirement: "is not supported by the sharded optimizer yet (a row split between \
                              shards would take its velocity from part of the row)",
            });
        }
        let host_clips = config.clipnorm().is_some() || config.global_clipnorm().is_some();
        for v in vars {
            let len: usize = v.shape.iter().product();
            if len != v.init.len() {
                return Err(Error::InitLength {
                    name: v.name.clone(),
                    shape: v.shape.clone(),
                    expected: len,
                    got: v.init.len(),
                });
            }
        }
        let names: Vec<(String, Vec<usize>)> = vars
            .iter()
            .map(|v| (v.name.clone(), v.shape.clone()))
            .collect();
        let layout = ShardLayout::new(&names, comm.size(), align);
        let pieces = layout.pieces(comm.rank());
        let shard_config = if host_clips {
            config.for_host_clipping()
        } else {
            config.clone()
        };
        let local = Self::build_shard(ctx, shard_config, options.optimizer, vars, &pieces);
        // A failure on one rank (an allocation, a variable's options) is an error on every rank.
        if comm.any(local.is_err()) {
            return Err(local.err().unwrap_or_else(|| Error::RankMismatch {
                field: "shard".into(),
                detail: "another rank could not build its shard optimizer (see its error)".into(),
            }));
        }
        let (shard, ids, var_pieces, kept) = local?;
        // A variable's kept slots, from the ranks that hold it.
        let (_, kept) = comm.min_max_u64(&kept);
        let bytes = (layout.used.max(4) * 4) as u64;
        let buffer = |label: &str| {
            ctx.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: bytes,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        };
        let params = buffer("sharded/params");
        let grads = buffer("sharded/grads");
        let mut flat = vec![0f32; layout.total()];
        for (v, f) in vars.iter().zip(&layout.vars) {
            flat[f.offset..f.offset + f.len].copy_from_slice(&v.init);
        }
        ctx.queue()
            .write_buffer(&params, 0, bytemuck::cast_slice(&flat[..layout.used]));
        let shard_len = layout.shard;
        let acc = if host_clips && config.gradient_accumulation_steps().is_some() {
            vec![0.0; shard_len]
        } else {
            Vec::new()
        };
        Ok(ShardedRmsProp {
            ctx: ctx.clone(),
            var_options: vars.iter().map(|v| v.options.clone()).collect(),
            config,
            options,
            comm,
            pieces,
            ids,
            var_pieces,
            kept,
            shard,
            host_clips,
            poisoned: false,
            skipped: 0,
            acc,
            params,
            grads,
            staging: None,
            send: vec![0.0; layout.total()],
            mine: vec![0.0; shard_len],
            gathered: flat,
            layout,
        })
    }

    /// This rank's shard optimizer over its pieces, the pieces' ids, each variable's pieces and the
    /// slots each variable keeps (bits in `ALL_SLOTS` order).
    #[allow(clippy::type_complexity)]
    fn build_shard(
        ctx: &GpuContext,
        config: RmsPropConfig,
        options: OptimizerOptions,
        vars: &[VariableSpec],
        pieces: &[Piece],
    ) -> Result<(RmsProp, Vec<VarId>, Vec<Vec<usize>>, Vec<u64>)> {
        let mut shard = RmsProp::with_options(ctx, config, options)?;
        let mut ids = Vec::with_capacity(pieces.len());
        let mut var_pieces = vec![Vec::new(); vars.len()];
        let mut kept = vec![0u64; vars.len()];
        for (k, p) in pieces.iter().enumerate() {
            let v = &vars[p.var];
            let name = if p.len == v.init.len() {
                v.name.clone()
            } else {
                format!("{}[{}..{}]", v.name, p.start, p.start + p.len)
            }; // as `reshard::piece_name`
            let init = &v.init[p.start..p.start + p.len];
            let id = shard.add_variable_with(&name, &p.shape, init, &v.options)?;
            for s in shard.variable_slots(id)? {
                let bit = ALL_SLOTS.iter().position(|&a| a == s).unwrap_or(0);
                kept[p.var] |= 1 << bit;
            }
            ids.push(id);
            var_pieces[p.var].push(k);
        }
        Ok((shard, ids, var_pieces, kept))
    }

    /// The configuration (as given; the shard optimizer's lacks the clipping the host does).
    pub fn config(&self) -> &RmsPropConfig {
        &self.config
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.comm.rank()
    }

    /// Number of ranks.
    pub fn world_size(&self) -> usize {
        self.comm.size()
    }

    /// The flattened layout: each variable's offset in [`ShardedRmsProp::params`] and
    /// [`ShardedRmsProp::grads`] (elements), and the shards.
    pub fn layout(&self) -> &ShardLayout {
        &self.layout
    }

    /// This rank's pieces of the variables (the variables of its shard optimizer).
    pub fn pieces(&self) -> &[Piece] {
        &self.pieces
    }

    /// This rank's full variables (f32, at [`FlatVar::offset`]), updated by every step.
    pub fn params(&self) -> &wgpu::Buffer {
        &self.params
    }

    /// This rank's gradient buffer (f32, same layout as [`ShardedRmsProp::params`]) for
    /// [`ShardGradient::Resident`] steps.
    pub fn grads(&self) -> &wgpu::Buffer {
        &self.grads
    }

    /// This rank's shard optimizer (read its pool statistics, its state).
    pub fn shard(&self) -> &RmsProp {
        &self.shard
    }

    /// Steps applied so far.
    pub fn iterations(&self) -> u64 {
        self.shard.iterations()
    }

    /// The learning rate of the last step.
    pub fn last_learning_rate(&self) -> Option<f32> {
        self.shard.last_learning_rate()
    }

    /// Steps skipped by [`NonFinite::SkipStep`], the same on every rank.
    pub fn skipped_steps(&self) -> u64 {
        self.skipped
    }

    /// Bytes this rank has handed to MPI collectives so far (payloads).
    pub fn bytes_sent(&self) -> u64 {
        self.comm.bytes_sent
    }

    /// Seconds this rank has spent inside MPI collectives so far (waiting for the others included).
    pub fn mpi_seconds(&self) -> f64 {
        self.comm.seconds
    }

    /// Optimizer state bytes on this rank's GPU (its shard's slots).
    pub fn state_bytes(&self) -> u64 {
        self.shard.pool_stats().state_bytes
    }

    /// The slots variable `var` keeps (the same on every rank).
    pub fn variable_slots(&self, var: usize) -> Vec<Slot> {
        slots_of(self.kept.get(var).copied().unwrap_or(0))
    }

    /// The slots any variable keeps.
    pub fn slots(&self) -> Vec<Slot> {
        slots_of(self.kept.iter().fold(0, |a, b| a | b))
    }

    /// Ends the whole job with `e` (see [`Comm::abort`]).
    fn fail(&self, e: &Error) -> ! {
        self.comm.abort(&e.to_string())
    }

    fn skip_nonfinite(&self) -> bool {
        self.config.non_finite() == NonFinite::SkipStep
    }
}
