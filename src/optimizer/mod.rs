//! [`RmsProp`]: the facade over the step's parts (registry and layout, validation, sparse preparation,
//! the pure planner, the encoder, the GPU objects, staging and read-back, each in `crate::step`).
//!
//! The step protocol lives in `protocol.rs` (record, resolve, apply), reads and checkpoints in `io.rs`.

mod io;
mod lazy_rows;
mod options;
mod protocol;
mod variables;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::config::{DuplicateIndices, NonFinite, RmsPropConfig, SparseMode};
use crate::context::GpuContext;
use crate::dtype::Dtype;
use crate::error::{Error, Result};
use crate::kernels::{self, Params, ParamsMode};
use crate::pool::{Kind, PoolStats, Slot, VEC4_BYTES};
use crate::step::gpu::{Gpu, StepSizes};
use crate::step::layout::Layout;
use crate::step::plan::{Plan, PlanConfig};
use crate::step::sparse_prep::{HeadRegions, SparsePrep};
use crate::step::types::{GpuGradient, GpuSlice, OptimizerOptions, VarId};
use crate::step::validate::{check_gpu_buffer, StepShape};
use crate::upload::Uploader;
use crate::var_options::{VarOptions, Variant};

static NEXT_OPTIMIZER_ID: AtomicU32 = AtomicU32::new(1);

/// What the optimizer believes the GPU holds: changed only when a step is resolved as submitted.
#[derive(Debug, Default)]
struct Committed {
    jobs: Vec<[u32; 4]>,
    var_step: Vec<[u32; 4]>,
    /// Rows of the `heads` regions filled with NONE.
    heads_written: u64,
    /// Generation of the step buffers these describe (bumped when a step buffer is replaced).
    generation: u64,
}

/// A recorded step waiting for its resolution, with what it will commit.
#[derive(Debug, Default)]
struct Pending {
    ticket: u64,
    step: u64,
    /// The step's learning rate (`None`: a row catch-up before any step).
    lr: Option<f32>,
    /// A row catch-up ([`RmsProp::record_catch_up`]), not a step.
    catch_up: bool,
    slot: Option<usize>,
    generation: u64,
    jobs: Option<Vec<[u32; 4]>>,
    var_step: Option<Vec<[u32; 4]>>,
    heads_written: u64,
}

/// Reused per step, so that steady-state steps do not allocate.
#[derive(Debug, Default)]
struct Scratch {
    shape: StepShape,
    sparse: SparsePrep,
    plan: Plan,
    uniform: Vec<u8>,
    /// Host sparse gradients made dense for gradient accumulation (reused between steps).
    dense: Vec<Vec<f32>>,
    /// Per variable: its gradient in the step being recorded is one of `dense` (already divided by the
    /// loss scale).
    densified: Vec<bool>,
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
    /// What the kernels are built for (slots kept, decay mode, per-variable options read).
    variant: Variant,
    /// Name substrings excluded from weight decay ([`RmsProp::exclude_from_weight_decay_names`]).
    exclude_names: Vec<String>,
    layout: Layout,
    gpu: Gpu,
    uploader: Uploader,
    plan_cfg: PlanConfig,
    iterations: u64,
    last_lr: Option<f32>,
    /// Head regions of GPU-grouped sparse gradients (address space, assigned when a step is recorded).
    heads: HeadRegions,
    committed: Committed,
    pending: VecDeque<Pending>,
    /// Table vectors of resolved steps, reused by later ones.
    spare: Vec<Vec<[u32; 4]>>,
    next_ticket: u64,
    max_unresolved: usize,
    /// Per variable, the layout version at which the caller last took its gradient slices (`u64::MAX`:
    /// never).
    gradients_seen: Vec<u64>,
    frozen: bool,
    scratch: Scratch,
    last_dispatches: usize,
    /// Labels of the step's encoder and compute pass (made once: steps do not format strings).
    labels: [String; 2],
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
        let invalid = |field, value: String, requirement| Error::InvalidConfig {
            field,
            value,
            requirement,
        };
        // The 16-bit copy and the q8 maps are one more storage binding each for the dense kernel.
        let q8 = config.storage().state == Dtype::Q8;
        let exact = config.sparse_mode() == SparseMode::LazyExact;
        let needed =
            8 + u32::from(config.storage().copy.is_some()) + u32::from(q8) + u32::from(exact);
        if limits.max_storage_buffers_per_shader_stage < needed {
            let have = limits.max_storage_buffers_per_shader_stage;
            return Err(invalid(
                "storage",
                format!(
                    "{:?} on a device with {have} storage buffers per stage ({needed} needed)",
                    config.storage()
                ),
                "a 16-bit copy of the variables, q8 state and sparse_mode lazy_exact each need one \
                 more storage buffer per shader stage than wgpu's default 8",
            ));
        }
        let wg = options.workgroup_size;
        if wg == 0
            || wg > limits.max_compute_workgroup_size_x
            || wg > limits.max_compute_invocations_per_workgroup
        {
            let why = "must be >= 1 and within the device's max_compute_workgroup_size_x";
            return Err(invalid("workgroup_size", wg.to_string(), why));
        }
        if !(1..=16).contains(&options.vec4s_per_invocation) {
            let v = options.vec4s_per_invocation.to_string();
            return Err(invalid("vec4s_per_invocation", v, "must be in [1, 16]"));
        }
        let mut max_groups = limits.max_compute_workgroups_per_dimension;
        if let Some(m) = options.max_workgroups_per_dimension {
            if m == 0 {
                return Err(invalid(
                    "max_workgroups_per_dimension",
                    "0".into(),
                    "must be >= 1",
                ));
            }
            max_groups = max_groups.min(m);
        }
        let align = u64::from(limits.min_storage_buffer_offset_alignment)
            .max(options.slice_alignment.unwrap_or(0))
            .max(VEC4_BYTES);
        if !align.is_power_of_two() {
            let why = "must be a power of two";
            return Err(invalid("slice_alignment", align.to_string(), why));
        }
        let mut chunk_bytes = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
        if let Some(b) = options.max_chunk_bytes {
            chunk_bytes = chunk_bytes.min(b);
        }
        // Element indices are u32 in the kernels: keep a chunk below 2^32 elements (16 GiB).
        let mut chunk_limit = (chunk_bytes / VEC4_BYTES).min(1 << 30);
        if config.storage().state == Dtype::Q8 {
            // Whole q8 blocks per chunk: every part of a split variable then starts on a block, its
            // blocks the variable's (what checkpoints hold: one absmax per block of the variable).
            let block = (config.q8_block() / 4) as u64;
            if chunk_limit < block {
                let why = "must hold at least one q8 block (q8_block elements) with q8 state";
                return Err(invalid("max_chunk_bytes", chunk_bytes.to_string(), why));
            }
            chunk_limit -= chunk_limit % block;
        }
        if chunk_limit < align / VEC4_BYTES {
            let why = "must hold at least one aligned vec4 (16 bytes and the slice alignment)";
            return Err(invalid("max_chunk_bytes", chunk_bytes.to_string(), why));
        }
        if options.max_unresolved_steps == 0 {
            return Err(invalid("max_unresolved_steps", "0".into(), "must be >= 1"));
        }

        let prefix = config.name().to_string();
        let variant = Variant::of(&config, []);
        let kinds = kinds_for(&config, &variant, &[]);
        let constants =
            kernels::variant_constants(&config, &variant, wg, options.vec4s_per_invocation);
        let immediates = options.use_immediates
            && device.features().contains(wgpu::Features::IMMEDIATES)
            && limits.max_immediate_size as usize >= std::mem::size_of::<Params>();
        let mode = if immediates {
            ParamsMode::Immediate
        } else {
            ParamsMode::Uniform
        };
        log::debug!("{prefix}: step parameters as {mode:?}");
        let mut gpu = Gpu::new(device, &prefix, mode, kinds, &constants, (q8, exact))?;
        let q8_block = (config.q8_block() / 4) as u64;
        gpu.q8_block = q8_block;
        let mut layout = Layout::new(0, chunk_limit, align / VEC4_BYTES);
        layout.q8_block = q8_block;
        let skip_nonfinite = config.non_finite() == NonFinite::SkipStep;
        let plan_cfg = PlanConfig {
            workgroup_size: wg,
            vec4s_per_invocation: options.vec4s_per_invocation,
            max_groups,
            per_var: kernels::per_var(&config),
            var_options: false,
            skip_nonfinite,
            stochastic: config.stochastic_rounding().is_some(),
            lazy: config.sparse_mode() != SparseMode::Dense,
            lazy_exact: exact,
            lazy_history: config.lazy_history(),
            jobs_needed: config.clipnorm().is_some()
                || config.global_clipnorm().is_some()
                || skip_nonfinite,
            use_squares: config.duplicate_indices() == DuplicateIndices::Keras3
                && config.global_clipnorm().is_none(),
        };
        let id = NEXT_OPTIMIZER_ID.fetch_add(1, Ordering::Relaxed);
        Ok(RmsProp {
            ctx: ctx.clone(),
            variant,
            exclude_names: Vec::new(),
            layout: Layout {
                optimizer: id,
                ..layout
            },
            gpu,
            uploader: Uploader::new(
                format!("{prefix}/staging"),
                options.max_staging_bytes.min(limits.max_buffer_size),
            ),
            plan_cfg,
            iterations: 0,
            last_lr: None,
            heads: HeadRegions::default(),
            committed: Committed::default(),
            pending: VecDeque::new(),
            spare: Vec::new(),
            next_ticket: 0,
            max_unresolved: options.max_unresolved_steps,
            gradients_seen: Vec::new(),
            frozen: false,
            scratch: Scratch::default(),
            last_dispatches: 0,
            labels: [format!("{prefix}/step"), format!("{prefix}/rmsprop step")],
            config,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &RmsPropConfig {
        &self.config
    }

    /// The GPU context.
    pub fn context(&self) -> &GpuContext {
        &self.ctx
    }

    /// Steps applied so far (Keras's `optimizer.iterations`): steps resolved as submitted, not those
    /// recorded and still unresolved. With `gradient_accumulation_steps = N` this counts every step
    /// (Keras's internal `_iterations`, which drives the schedule); Keras's `iterations`, the number of
    /// updates, is `iterations() / N`.
    pub fn iterations(&self) -> u64 {
        self.iterations
    }

    /// Changes the loss scale factor for the steps recorded from now on (see
    /// [`crate::RmsPropConfigBuilder::loss_scale_factor`]); steps already recorded keep theirs. The
    /// factor travels with each step's parameters: nothing is rebuilt or uploaded, so it may change
    /// every step. Refused with [`Error::InvalidConfig`] (nothing changes) when not finite or not > 0.
    ///
    /// Dynamic loss scaling without a per-step sync, with [`crate::NonFinite::SkipStep`] (a step whose
    /// gradients hold a NaN or Inf is skipped on the GPU): halve the scale after a skipped step, double
    /// it after `K` good ones (PyTorch GradScaler's policy), reading the skip count once per `K` steps.
    ///
    /// ```
    /// use wgpu_rmsprop::{GpuContext, NonFinite, RmsProp, RmsPropConfig};
    /// let ctx = GpuContext::new()?;
    /// let cfg = RmsPropConfig::builder()
    ///     .learning_rate(0.01)
    ///     .non_finite(NonFinite::SkipStep)
    ///     .loss_scale_factor(65536.0)
    ///     .build()?;
    /// let mut opt = RmsProp::new(&ctx, cfg)?;
    /// let w = opt.add_variable("w", &[4], &[1.0; 4])?;
    /// const K: u64 = 4; // steps between checks
    /// let (mut scale, mut skipped) = (65536.0f64, 0u64);
    /// for step in 0..12u64 {
    ///     // The gradients of `loss * scale` (here they overflow on step 5).
    ///     let g = if step == 5 { [f32::INFINITY; 4] } else { [(0.5 * scale) as f32; 4] };
    ///     opt.apply_gradients(&[(w, &g)])?;
    ///     if (step + 1) % K == 0 {
    ///         let now = opt.skipped_steps()?; // one read-back per K steps
    ///         scale = if now > skipped { scale / 2.0 } else { scale * 2.0 };
    ///         skipped = now;
    ///         opt.set_loss_scale_factor(scale)?;
    ///     }
    /// }
    /// assert_eq!(skipped, 1);
    /// assert_eq!(scale, 131072.0); // doubled, halved, doubled
    /// assert!(opt.read_variable(w)?.iter().all(|x| x.is_finite()));
    /// # Ok::<(), wgpu_rmsprop::Error>(())
    /// ```
    ///
    /// Refused with [`Error::InvalidConfig`] on `loss_scale_factor` where the configuration or a
    /// variable has 16-bit storage (the loss scale's kernel reads and writes f32 gradient buffers).
    pub fn set_loss_scale_factor(&mut self, factor: f64) -> Result<()> {
        crate::config::check_loss_scale(factor)?;
        if let Some(why) = self.loss_scale_storage_conflict() {
            return Err(Error::InvalidConfig {
                field: "loss_scale_factor",
                value: factor.to_string(),
                requirement: why,
            });
        }
        self.config.set_loss_scale_factor(factor);
        Ok(())
    }

    /// Why a loss scale cannot be applied to this optimizer's pools, if it cannot: every role of the
    /// configuration and of every variable must be f32 (as the builder requires with a loss scale).
    fn loss_scale_storage_conflict(&self) -> Option<&'static str> {
        let mut storages = std::iter::once(self.config.storage())
            .chain(self.layout.variables.iter().map(|v| v.storage));
        storages.any(|s| !s.is_f32()).then_some(
            "cannot be set with 16-bit storage or a copy of the variables (the loss scale's kernel \
             reads and writes f32 gradient buffers)",
        )
    }

    /// The learning rate the next recorded step will use (the schedule at `iterations()` plus the
    /// steps recorded and not yet resolved).
    pub fn learning_rate(&self) -> Result<f32> {
        let next = self.next_step();
        self.config.learning_rate().at_step(next)
    }

    /// The learning rate the last applied step used (`None` before the first step).
    pub fn last_learning_rate(&self) -> Option<f32> {
        self.last_lr
    }

    /// Number of variables.
    pub fn num_variables(&self) -> usize {
        self.layout.variables.len()
    }

    /// The slots the pools keep: velocity, then momentum (if the configuration or some variable's
    /// options keep it), then average_gradient (likewise for centered). A variable's own slots are
    /// [`RmsProp::variable_slots`]: with per-variable options some variables may lack one of these.
    pub fn slots(&self) -> Vec<Slot> {
        [
            Slot::Velocity,
            Slot::Momentum,
            Slot::AverageGradient,
            Slot::Ema,
        ]
        .into_iter()
        .filter(|&s| self.gpu.kinds.contains(&Kind::from(s)))
        .collect()
    }

    /// Bytes held on the GPU.
    pub fn pool_stats(&self) -> PoolStats {
        let mut stats = PoolStats {
            chunks: self.layout.chunks.len(),
            other_bytes: self.gpu.other_bytes() + self.uploader.bytes(),
            ..PoolStats::default()
        };
        for c in &self.layout.chunks {
            for &kind in &self.gpu.kinds {
                // Row-wise chunks keep no element-wise velocity.
                if c.rowwise && kind == Kind::Velocity {
                    continue;
                }
                let bytes = self.layout.elems(kind, c.storage).span(c.capacity);
                stats.pool_bytes += bytes;
                match kind {
                    Kind::Variable | Kind::Copy => stats.variable_bytes += bytes,
                    Kind::Gradient => stats.gradient_bytes += bytes,
                    k if k.is_state() => stats.state_bytes += bytes,
                    _ => stats.scratch_bytes += bytes,
                }
            }
        }
        // The row-wise velocity, once some variable keeps one.
        if self.layout.row_velocity_used > 0 {
            let bytes = self.gpu.row_velocity.size();
            stats.state_bytes += bytes;
            stats.pool_bytes += bytes;
        }
        stats
    }

    /// Looks a variable up by name.
    pub fn variable(&self, name: &str) -> Result<VarId> {
        self.layout.find(name)
    }

    /// Name and shape of a variable.
    pub fn variable_info(&self, id: VarId) -> Result<(&str, &[usize])> {
        let v = self.layout.var(id)?;
        Ok((&v.name, &v.shape))
    }

    /// The current layout version: it changes when adding a variable grows a pool buffer (every slice
    /// taken before is then stale). See [`GpuSlice`].
    pub fn layout_version(&self) -> u64 {
        self.layout.version
    }

    /// Refuses every later [`RmsProp::add_variable`] ([`Error::LayoutFrozen`]): the slices taken now stay
    /// valid for the optimizer's life.
    pub fn freeze_layout(&mut self) {
        self.frozen = true;
    }

    fn slices(&mut self, id: VarId, kind: Kind) -> Result<Vec<GpuSlice>> {
        let v = self.layout.var(id)?;
        let out = v
            .segments
            .iter()
            .map(|s| {
                let layout = self.layout.elems(kind, self.layout.chunks[s.chunk].storage);
                Ok(GpuSlice {
                    buffer: self.gpu.chunks[s.chunk].buffer(kind)?.clone(),
                    offset: layout.at(s.offset),
                    dtype: layout.dtype,
                    first_element: s.first_elem,
                    len: s.elems,
                    layout: self.layout.version,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        if kind == Kind::Gradient {
            self.gradients_seen[id.index()] = self.layout.version;
        }
        Ok(out)
    }

    /// Where a variable lives on the GPU, so that the caller's shaders can bind the parameters
    /// directly (the buffers have `STORAGE | COPY_SRC | COPY_DST` usage; offsets aligned for binding).
    /// Valid while [`RmsProp::layout_version`] is unchanged.
    pub fn variable_slices(&mut self, id: VarId) -> Result<Vec<GpuSlice>> {
        self.slices(id, Kind::Variable)
    }

    /// Where one of a variable's slots lives on the GPU (e.g. [`Slot::Ema`], to bind the moving average
    /// of the weights in an evaluation shader), laid out as [`RmsProp::variable_slices`]. A slot the
    /// variable does not keep is [`Error::SlotNotPresent`]. Valid while [`RmsProp::layout_version`] is
    /// unchanged.
    pub fn slot_slices(&mut self, id: VarId, slot: Slot) -> Result<Vec<GpuSlice>> {
        let kind = self.kind(id, crate::step::types::Tensor::Slot(slot))?;
        self.slices(id, kind)
    }

    /// Where a variable's 16-bit copy lives on the GPU ([`crate::StorageTypes::copy`]: written by the
    /// kernels with every update of the variable), laid out as [`RmsProp::variable_slices`] in the
    /// copy's type ([`GpuSlice::dtype`]). Without a copy: [`Error::SlotNotPresent`]. A caller who
    /// writes a variable through its slices leaves the copy as it was until the next update.
    pub fn copy_slices(&mut self, id: VarId) -> Result<Vec<GpuSlice>> {
        let kind = self.kind(id, crate::step::types::Tensor::Copy)?;
        self.slices(id, kind)
    }

    /// Where a variable's gradient is read from: a backward shader that writes there can step with
    /// [`crate::Gradient::Resident`], with no copy at all. Valid while [`RmsProp::layout_version`] is
    /// unchanged; taking them tells the optimizer the caller follows the variable's current buffers
    /// (a `Resident` step of a variable whose buffer moved since is [`Error::StaleLayout`]).
    pub fn gradient_slices(&mut self, id: VarId) -> Result<Vec<GpuSlice>> {
        self.slices(id, Kind::Gradient)
    }

    /// Records into `encoder` the clearing (to zero) of the listed variables' gradient buffers, e.g.
    /// before a backward pass that accumulates into [`crate::Gradient::Resident`] gradients.
    pub fn clear_gradients(&self, encoder: &mut wgpu::CommandEncoder, ids: &[VarId]) -> Result<()> {
        for &id in ids {
            self.layout.var(id)?;
        }
        for &id in ids {
            for s in &self.layout.var(id)?.segments {
                let b = self.gpu.chunks[s.chunk].buffer(Kind::Gradient)?;
                let layout = self
                    .layout
                    .elems(Kind::Gradient, self.layout.chunks[s.chunk].storage);
                encoder.clear_buffer(b, layout.at(s.offset), Some(layout.span(s.vec4s())));
            }
        }
        Ok(())
    }

    /// Fails with [`Error::UnresolvedSteps`] while recorded steps wait for their resolution.
    /// The number the next recorded step takes: one past the last unresolved recording's (a row
    /// catch-up keeps the count it was recorded at), or past the count.
    fn next_step(&self) -> u64 {
        self.pending.back().map_or(self.iterations, |p| p.step) + 1
    }

    fn ensure_resolved(&self, call: &'static str) -> Result<()> {
        match self.pending.len() {
            0 => Ok(()),
            count => Err(Error::UnresolvedSteps { count, call }),
        }
    }

    /// GPU buffers and bind groups this optimizer has created so far. Steady-state steps create none:
    /// the count only moves when variables are added or a step needs more room than any before.
    pub fn gpu_objects_created(&self) -> u64 {
        self.gpu.objects_created + self.uploader.created
    }

    /// Number of dispatches the last recorded step has.
    pub fn last_step_dispatches(&self) -> usize {
        self.last_dispatches
    }
}

/// The pooled kinds for `variant` (velocity always; momentum and average_gradient when some variable
/// keeps them; squares for Keras 3 duplicates), at least `kept`.
fn kinds_for(config: &RmsPropConfig, variant: &Variant, kept: &[Kind]) -> Vec<Kind> {
    let wanted = [
        (Kind::Variable, true),
        (Kind::Gradient, true),
        (Kind::Velocity, true),
        (Kind::Momentum, variant.momentum),
        (Kind::AverageGradient, variant.centered),
        (
            Kind::Squares,
            config.duplicate_indices() == DuplicateIndices::Keras3,
        ),
        (
            Kind::Accumulator,
            config.gradient_accumulation_steps().is_some(),
        ),
        (Kind::Ema, config.use_ema()),
        (Kind::Copy, config.storage().copy.is_some()),
    ];
    wanted
        .into_iter()
        .filter(|&(k, w)| w || kept.contains(&k))
        .map(|(k, _)| k)
        .collect()
}

/// Where a new variable's initial values come from.
#[derive(Clone, Copy)]
enum Init<'a> {
    Host(&'a [f32]),
    Gpu(GpuGradient<'a>),
}
