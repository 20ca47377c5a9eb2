//! The CPU reference: the same update as the shaders, in the same order, on `f32`, written to read like
//! them so the two can be compared line by line ([`rmsprop`] is `rmsprop_update.wgsl::rmsprop`;
//! [`Reference::step`] follows the kernels' sequence: norms, finalize, scatter / lazy, dense).
//!
//! It is the oracle of the tests and is public so that users can check their own runs.
//!
//! Per-variable options ([`VarOptions`]): each variable is updated with its effective configuration
//! ([`VarOptions::effective_config`]) and its own step scalars ([`crate::VarHyper::scalars`]), the values
//! the kernels read from the options table; a frozen variable takes part as an absent one.
//!
//! Storage types ([`crate::dtype`]): each variable's effective [`StorageTypes`] (its
//! [`VarOptions::storage`], else the configuration's) decide what is stored. Everything is computed in
//! f32 exactly as for f32 storage; a stored quantity is rounded once, to nearest even, when it is
//! written at the end of the step ([`store`]): the variable to `storage.variable`, velocity, momentum and
//! average gradient to `storage.state`. Values computed earlier in the step are used unrounded. A
//! gradient is read from a buffer of `storage.gradient`: dense and sparse values are rounded to it on
//! entry, and so is the merged row sum that the sparse scatter writes for a dense update (Keras 3's sums
//! of squares stay f32). Initial values are rounded when a variable is added. The Keras base-class
//! features (EMA, gradient accumulation, loss scaling) are f32 only: a step with one of them and a
//! 16-bit role is refused ([`Error::InvalidConfig`] on `storage`).
//!
//! 8-bit state ([`Dtype::Q8`], [`crate::quant`]): a variable with `state: q8` and at least
//! [`RmsPropConfig::q8_min_size`] elements ([`crate::quant::state_is_quantized`]) keeps its slots as
//! bytes and block absmax ([`ReferenceState::q8`]). A step computes every element's new f32 values
//! exactly as with f32 state, from the dequantized values; then, for each slot (velocity on the
//! unsigned map, momentum and average gradient on the signed one), each block of
//! [`RmsPropConfig::q8_block`] elements is quantized ([`crate::quant::Codebook::quantize_blocks`]) and
//! the slot's values become the dequantized ones, which the next step starts from. The initial velocity
//! is quantized the same way when the variable is added. A smaller variable keeps f32 state. A lazy
//! sparse step quantizes again only the blocks that hold listed rows (`q8_lazy.rs`: unlisted elements
//! keep their codes where the block's absmax did not change); with sequential duplicates it is refused
//! ([`Error::InvalidConfig`] on `sparse_mode`, before anything changes).

use crate::config::{DuplicateIndices, RmsPropConfig, SparseMode};
use crate::dtype::{Dtype, StorageTypes};
use crate::error::{Error, Result};
use crate::quant::{Codebook, Quantized};
use crate::var_options::VarOptions;

mod lazy_exact;
mod q8_lazy;
pub mod rowwise;
mod update;
pub use lazy_exact::{skip_steps, LazyRows};
pub use update::{clip_value, rmsprop, sr_round, store, State};

/// `variable=f16 gradient=f16 state=f32`: storage types in error messages.
fn storage_text(s: &StorageTypes) -> String {
    format!(
        "variable={} gradient={} state={}",
        s.variable, s.gradient, s.state
    )
}

/// One variable and its optimizer state on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct ReferenceState {
    /// Shape.
    pub shape: Vec<usize>,
    /// The variable.
    pub x: Vec<f32>,
    /// `velocity` (one per row with [`VarOptions::rowwise_velocity`]: [`rowwise`]).
    pub v: Vec<f32>,
    /// `momentum` (when kept).
    pub m: Option<Vec<f32>>,
    /// `average_gradient` (when centered).
    pub a: Option<Vec<f32>>,
    /// The variable's options (default: everything from the configuration).
    pub options: VarOptions,
    /// Accumulated gradients (with `gradient_accumulation_steps`).
    pub acc: Option<Vec<f32>>,
    /// The moving average of the variable (slot `ema`, with `use_ema`).
    pub ema: Option<Vec<f32>>,
    /// The storage types (its options' [`VarOptions::storage`], else the configuration's), fixed when
    /// the variable is added. Every stored value is a value of its role's type.
    pub storage: StorageTypes,
    /// The 8-bit state, when the state is quantized (`state: q8` and at least `q8_min_size`
    /// elements); `v`, `m` and `a` then hold its dequantized values.
    pub q8: Option<Q8State>,
    /// [`SparseMode::LazyExact`]: the row counters ([`LazyRows`]).
    pub lazy: Option<LazyRows>,
}

/// A variable's 8-bit quantized slots as the kernels store them ([`crate::quant`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Q8State {
    /// Elements per block ([`RmsPropConfig::q8_block`]).
    pub block: usize,
    /// Velocity (unsigned map).
    pub v: Quantized,
    /// Momentum (signed map), when kept.
    pub m: Option<Quantized>,
    /// Average gradient (signed map), when centered.
    pub a: Option<Quantized>,
}

impl Q8State {
    /// The codes and absmax of a zero-filled slot of `n` elements (zero bytes, zero absmax).
    fn zeros(n: usize, block: usize) -> Quantized {
        Quantized {
            codes: vec![0; n],
            absmax: vec![0.0; n.div_ceil(block)],
        }
    }
}

impl ReferenceState {
    /// A variable with freshly initialised slots, as the optimizer creates them for `config`.
    pub fn new(config: &RmsPropConfig, shape: &[usize], init: &[f32]) -> Self {
        Self::with_options(config, shape, init, &VarOptions::default())
    }

    /// A variable with options (validated by the caller) and the slots its effective configuration
    /// keeps, freshly initialised.
    pub fn with_options(
        config: &RmsPropConfig,
        shape: &[usize],
        init: &[f32],
        options: &VarOptions,
    ) -> Self {
        let n = init.len();
        let c = options.effective_config(config);
        let storage = options.storage.unwrap_or(config.storage());
        // Stored values are values of their type: the initial values and the starting velocity are
        // rounded (to nearest even) as the upload does.
        let x: Vec<f32> = init.iter().map(|&x| storage.variable.round(x)).collect();
        // A row-wise velocity: one per row along axis 0.
        let slots = match options.rowwise_velocity {
            true => shape.first().copied().unwrap_or(1),
            false => n,
        };
        let mut v = vec![
            storage
                .state
                .round(config.initial_accumulator_value() as f32);
            slots
        ];
        let (m, a) = (
            c.has_momentum().then(|| vec![0.0; n]),
            c.centered().then(|| vec![0.0; n]),
        );
        // 8-bit state: the initial velocity quantized by blocks; momentum and average start at 0.
        let q8 = crate::quant::state_is_quantized(config, &storage, n).then(|| {
            let block = config.q8_block();
            Q8State {
                block,
                v: Codebook::dynamic(false).quantize_blocks(&mut v, block),
                m: m.as_ref().map(|_| Q8State::zeros(n, block)),
                a: a.as_ref().map(|_| Q8State::zeros(n, block)),
            }
        });
        let lazy = (config.sparse_mode() == SparseMode::LazyExact).then(|| {
            let rows = match shape.first() {
                None => 1,
                Some(&r) => r,
            };
            LazyRows {
                rows: vec![0; rows],
                history: vec![[0.0; 4]; 2 * config.lazy_history() as usize],
                ..LazyRows::default()
            }
        });
        ReferenceState {
            lazy,
            shape: shape.to_vec(),
            v,
            m,
            a,
            q8,
            options: options.clone(),
            acc: config.gradient_accumulation_steps().map(|_| vec![0.0; n]),
            // The variable's values: Keras's first call overwrites the average anyway, and a variable added
            // later starts from its own values rather than from zero.
            ema: config.use_ema().then(|| x.clone()),
            x,
            storage,
        }
    }

    fn state(&self, i: usize) -> State {
        State {
            x: self.x[i],
            v: self.v[i],
            m: self.m.as_ref().map_or(0.0, |m| m[i]),
            a: self.a.as_ref().map_or(0.0, |a| a[i]),
        }
    }

    /// Writes element `i` back as the kernels store it: rounded to the storage types ([`store`]); a
    /// bf16 variable with stochastic rounding (`sr`: the variable's seed and the step) as `st_x_sr`.
    fn set(&mut self, i: usize, s: State, sr: Option<(u32, u32)>) {
        let x = s.x;
        let mut s = store(&self.storage, s);
        if let (Some((seed, step)), Dtype::Bf16) = (sr, self.storage.variable) {
            s.x = sr_round(x, seed, step, i as u32);
        }
        self.x[i] = s.x;
        self.v[i] = s.v;
        if let Some(m) = self.m.as_mut() {
            m[i] = s.m;
        }
        if let Some(a) = self.a.as_mut() {
            a[i] = s.a;
        }
    }

    fn row_len(&self) -> usize {
        self.shape.iter().skip(1).product()
    }

    /// 8-bit state: quantizes every slot block by block after a step computed its new values (the
    /// kernels' store of quantized state); the slots then hold their dequantized values.
    fn quantize_state(&mut self) {
        let Some(q) = self.q8.as_mut() else {
            return;
        };
        let (unsigned, signed) = (Codebook::dynamic(false), Codebook::dynamic(true));
        q.v = unsigned.quantize_blocks(&mut self.v, q.block);
        q.m = self.m.as_mut().map(|m| signed.quantize_blocks(m, q.block));
        q.a = self.a.as_mut().map(|a| signed.quantize_blocks(a, q.block));
    }
}

/// A gradient for the reference.
#[derive(Debug, Clone, Copy)]
pub enum RefGradient<'a> {
    /// `len(variable)` values.
    Dense(&'a [f32]),
    /// Rows along axis 0 (validated by the caller) and one row of values per index.
    Sparse {
        /// Row indices.
        indices: &'a [usize],
        /// `len(indices) * row_len` values.
        values: &'a [f32],
    },
}

/// Clipping state of one variable in one step (`VarInfo` in `common.wgsl`).
#[derive(Debug, Clone, Copy)]
struct VarInfo {
    mul: f32,
    div: f32,
    clipvalue: f32,
}

impl VarInfo {
    fn clip(&self, g: f32) -> f32 {
        (clip_value(g, self.clipvalue) * self.mul) / self.div
    }
}

/// Distinct rows of `indices` in first-appearance-independent sorted order, each with the positions of its
/// duplicates in list order (what the host prepares for the sparse kernels).
pub fn group_rows(indices: &[usize]) -> Vec<(usize, Vec<usize>)> {
    let mut order: Vec<usize> = (0..indices.len()).collect();
    order.sort_by_key(|&k| indices[k]);
    let mut out: Vec<(usize, Vec<usize>)> = Vec::new();
    for k in order {
        match out.last_mut() {
            Some((r, ks)) if *r == indices[k] => ks.push(k),
            _ => out.push((indices[k], vec![k])),
        }
    }
    out
}

/// A whole optimizer on the host.
///
/// ```
/// use wgpu_rmsprop::reference::{RefGradient, Reference};
/// use wgpu_rmsprop::RmsPropConfig;
/// let mut r = Reference::new(RmsPropConfig::builder().learning_rate(0.1).build()?);
/// r.add_variable(&[], &[10.0]);
/// r.step(&[Some(RefGradient::Dense(&[10.0]))])?;
/// assert_eq!(r.vars[0].x[0], 9.683772);
/// # Ok::<(), wgpu_rmsprop::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Reference {
    /// The configuration.
    pub config: RmsPropConfig,
    /// The variables, in order.
    pub vars: Vec<ReferenceState>,
    /// Steps applied.
    pub iterations: u64,
    /// Steps skipped by the non-finite policy.
    pub skipped: u64,
}

impl Reference {
    /// An empty reference optimizer.
    pub fn new(config: RmsPropConfig) -> Self {
        Reference {
            config,
            vars: Vec::new(),
            iterations: 0,
            skipped: 0,
        }
    }

    /// Adds a variable; returns its index.
    pub fn add_variable(&mut self, shape: &[usize], init: &[f32]) -> usize {
        self.vars
            .push(ReferenceState::new(&self.config, shape, init));
        self.vars.len() - 1
    }

    /// [`SparseMode::LazyExact`]: brings every row of every variable up to date, as the optimizer's
    /// reads, checkpoints and [`crate::RmsProp::catch_up`] do ([`ReferenceState::catch_up`]).
    pub fn catch_up(&mut self) {
        for var in &mut self.vars {
            var.catch_up(&self.config);
        }
    }

    /// Adds a variable with options (validated as the optimizer does, the variable named `var<index>`
    /// in errors); returns its index.
    pub fn add_variable_with(
        &mut self,
        shape: &[usize],
        init: &[f32],
        options: &VarOptions,
    ) -> Result<usize> {
        let name = format!("var{}", self.vars.len());
        options.validate(&name, &self.config)?;
        if options.rowwise_velocity && shape.len() < 2 {
            return Err(Error::InvalidVarOptions {
                variable: name,
                field: "rowwise_velocity",
                value: format!("true for shape {shape:?}"),
                requirement: "needs a variable of rank >= 2",
            });
        }
        let state = ReferenceState::with_options(&self.config, shape, init, options);
        self.vars.push(state);
        Ok(self.vars.len() - 1)
    }

    /// Changes a variable's options as [`crate::RmsProp::set_variable_options`] does: a slot kept before
    /// and after keeps its values, a slot gained starts at 0, a slot lost is dropped. The storage types
    /// are fixed when the variable is added: options whose effective storage differs are refused.
    ///
    /// # Panics
    /// If `index` is not a variable.
    pub fn set_variable_options(&mut self, index: usize, options: &VarOptions) -> Result<()> {
        options.validate(&format!("var{index}"), &self.config)?;
        let c = options.effective_config(&self.config);
        // LazyExact: rows behind take the steps they missed with the old options first.
        self.vars[index].catch_up(&self.config);
        let var = &mut self.vars[index];
        if options.rowwise_velocity != var.options.rowwise_velocity {
            return Err(Error::InvalidVarOptions {
                variable: format!("var{index}"),
                field: "rowwise_velocity",
                value: options.rowwise_velocity.to_string(),
                requirement: "cannot change after the variable is added",
            });
        }
        let storage = options.storage.unwrap_or(self.config.storage());
        if storage != var.storage {
            return Err(Error::InvalidVarOptions {
                variable: format!("var{index}"),
                field: "storage",
                value: storage_text(&storage),
                requirement: "cannot change after the variable is added",
            });
        }
        let n = var.x.len();
        if !c.has_momentum() {
            var.m = None;
        } else if var.m.is_none() {
            var.m = Some(vec![0.0; n]);
        }
        if !c.centered() {
            var.a = None;
        } else if var.a.is_none() {
            var.a = Some(vec![0.0; n]);
        }
        if let Some(q) = var.q8.as_mut() {
            // A slot gained is zero-filled (zero bytes decode to 0), a slot lost is dropped.
            let keep = |slot: &mut Option<Quantized>, kept: bool| match (kept, slot.is_some()) {
                (false, _) => *slot = None,
                (true, false) => *slot = Some(Q8State::zeros(n, q.block)),
                (true, true) => {}
            };
            keep(&mut q.m, var.m.is_some());
            keep(&mut q.a, var.a.is_some());
        }
        var.options = options.clone();
        Ok(())
    }

    /// Keras's loss scale and gradient accumulation for step `t`: `None` when the configuration has
    /// neither, `Some(None)` when the step only accumulates, else the prepared gradients (dense, or a
    /// sparse gradient's values).
    #[allow(clippy::type_complexity)]
    fn prepare(
        &mut self,
        grads: &[Option<RefGradient<'_>>],
        t: u64,
    ) -> Result<Option<Option<Vec<Option<Vec<f32>>>>>> {
        let scale = self.config.loss_scale_factor();
        let steps = self.config.gradient_accumulation_steps();
        if scale.is_none() && steps.is_none() {
            return Ok(None);
        }
        let s = scale.map_or(1.0, |s| s as f32);
        let update = steps.is_none_or(|n| t.is_multiple_of(n));
        // On the N-th call Keras resets every accumulator, also those of variables absent from the call.
        let reset_all = steps.is_some() && update;
        let mut out = Vec::with_capacity(grads.len());
        for (var, g) in self.vars.iter_mut().zip(grads) {
            let mut gv: Vec<f32> = match g {
                None => {
                    out.push(None);
                    continue;
                }
                Some(RefGradient::Dense(g)) => g.iter().map(|&x| x / s).collect(),
                // The values only (Keras divides the IndexedSlices' values).
                Some(RefGradient::Sparse { values, .. }) if steps.is_none() => {
                    values.iter().map(|&x| x / s).collect()
                }
                // Accumulation: Keras adds the slices to a dense accumulator, so the gradient is made
                // dense (values divided first, duplicates summed in list order, absent rows 0).
                Some(RefGradient::Sparse { indices, values }) => {
                    let row_len = var.row_len();
                    let mut dense = vec![0.0f32; var.x.len()];
                    for (k, &row) in indices.iter().enumerate() {
                        for c in 0..row_len {
                            dense[row * row_len + c] += values[k * row_len + c] / s;
                        }
                    }
                    dense
                }
            };
            if let (Some(n), Some(acc)) = (steps, var.acc.as_mut()) {
                for (gi, ai) in gv.iter_mut().zip(acc.iter_mut()) {
                    if update {
                        *gi = (*gi + *ai) / n as f32;
                        *ai = 0.0;
                    } else {
                        *ai += *gi;
                    }
                }
            }
            out.push(Some(gv));
        }
        if reset_all {
            for acc in self.vars.iter_mut().filter_map(|v| v.acc.as_mut()) {
                acc.fill(0.0);
            }
        }
        Ok(Some(update.then_some(out)))
    }

    /// One step; `grads[i]` is the gradient of variable `i` (`None`: not in this step).
    ///
    /// # Panics
    /// On lengths or indices that do not fit (the reference is an oracle, not a checked API).
    pub fn step(&mut self, grads: &[Option<RefGradient<'_>>]) -> Result<()> {
        self.check_storage()?;
        self.check_q8_sparse(grads)?;
        let t = self.iterations + 1;
        self.step_update(grads)?;
        self.update_ema(t);
        Ok(())
    }

    /// The Keras base-class features are f32 only: with one of them, every role of every variable must
    /// be f32 (checked before anything changes).
    fn check_storage(&self) -> Result<()> {
        let c = &self.config;
        let base = c.use_ema()
            || c.gradient_accumulation_steps().is_some()
            || c.loss_scale_factor().is_some();
        match self.vars.iter().find(|v| !v.storage.is_f32()) {
            Some(var) if base => Err(Error::InvalidConfig {
                field: "storage",
                value: storage_text(&var.storage),
                requirement:
                    "must be f32 for every role with use_ema, gradient_accumulation_steps or \
                              loss_scale_factor (16-bit storage does not have them yet)",
            }),
            _ => Ok(()),
        }
    }

    /// Lazy steps on 8-bit state take host indices with summed duplicates only (as the optimizer):
    /// sequential duplicates for a variable with quantized state are refused.
    fn check_q8_sparse(&self, grads: &[Option<RefGradient<'_>>]) -> Result<()> {
        let c = &self.config;
        let lazy = c.sparse_mode() == SparseMode::Lazy
            && c.duplicate_indices() == DuplicateIndices::Sequential;
        let sparse_q8 = self.vars.iter().zip(grads).position(|(var, g)| {
            lazy && var.q8.is_some()
                && !var.options.frozen
                && matches!(g, Some(RefGradient::Sparse { .. }))
        });
        match sparse_q8 {
            Some(i) => Err(Error::InvalidConfig {
                field: "sparse_mode",
                value: format!("lazy, for var{i} whose state is q8"),
                requirement: "cannot apply duplicates sequentially (each pair would be quantized)",
            }),
            None => Ok(()),
        }
    }

    /// Keras's moving average after call `t` (`keras_base.wgsl::ema`): every variable, also on calls
    /// that only accumulate or were skipped.
    fn update_ema(&mut self, t: u64) {
        let c = &self.config;
        if !c.use_ema() {
            return;
        }
        let k = (t - 1) / c.gradient_accumulation_steps().unwrap_or(1);
        let m = if k == 0 { 0.0 } else { c.ema_momentum() as f32 };
        let one_minus_m = 1.0 - m;
        let overwrite = c
            .ema_overwrite_frequency()
            .is_some_and(|f| (k + 1).is_multiple_of(f));
        for var in &mut self.vars {
            // Frozen variables are not trainable: Keras does not average them.
            if var.options.frozen {
                continue;
            }
            let Some(ema) = var.ema.as_mut() else {
                continue;
            };
            for (e, x) in ema.iter_mut().zip(var.x.iter_mut()) {
                *e = m * *e + one_minus_m * *x;
                if overwrite {
                    *x = *e;
                }
            }
        }
    }

    /// The step without the moving average.
    fn step_update(&mut self, grads: &[Option<RefGradient<'_>>]) -> Result<()> {
        let config = self.config.clone();
        let step = self.iterations + 1;
        let p = config.scalars(step)?;
        // A frozen variable's gradient is ignored entirely: as if it were not in the step.
        let grads: Vec<Option<RefGradient<'_>>> = grads
            .iter()
            .zip(&self.vars)
            .map(|(g, var)| g.filter(|_| !var.options.frozen))
            .collect();
        // The gradient buffers hold values of `storage.gradient`: every incoming value (dense, or a
        // sparse row's) is rounded on entry, as the upload does (identity for f32).
        let rounded: Vec<Option<Vec<f32>>> = grads
            .iter()
            .zip(&self.vars)
            .map(|(g, var)| {
                let d = var.storage.gradient;
                let values = match g {
                    Some(RefGradient::Dense(v)) | Some(RefGradient::Sparse { values: v, .. }) => v,
                    None => return None,
                };
                (d != Dtype::F32).then(|| values.iter().map(|&x| d.round(x)).collect())
            })
            .collect();
        let grads: Vec<Option<RefGradient<'_>>> = grads
            .iter()
            .zip(&rounded)
            .map(|(g, r)| match (g, r) {
                (Some(RefGradient::Dense(_)), Some(r)) => Some(RefGradient::Dense(r)),
                (Some(RefGradient::Sparse { indices, .. }), Some(r)) => {
                    Some(RefGradient::Sparse { indices, values: r })
                }
                (g, _) => *g,
            })
            .collect();
        // Keras's base class first: the loss scale, then accumulation (`keras_base.wgsl`).
        let prepared = self.prepare(&grads, step)?;
        let grads: Vec<Option<RefGradient<'_>>> = match &prepared {
            None => grads,
            Some(Some(owned)) => owned
                .iter()
                .zip(&grads)
                .map(|(values, g)| match (values, g) {
                    (Some(values), Some(RefGradient::Sparse { indices, .. }))
                        if self.config.gradient_accumulation_steps().is_none() =>
                    {
                        Some(RefGradient::Sparse { indices, values })
                    }
                    (values, _) => values.as_deref().map(RefGradient::Dense),
                })
                .collect(),
            Some(None) => {
                // A step that only accumulates.
                self.iterations = step;
                return Ok(());
            }
        };
        let grads = &grads[..];
        let c = &config;
        // LazyExact under a schedule: a full history resets before the step, skipped or not.
        if c.sparse_mode() == SparseMode::LazyExact {
            for (var, g) in self.vars.iter_mut().zip(grads) {
                if matches!(g, Some(RefGradient::Sparse { .. })) && !var.options.frozen {
                    var.before_lazy_step(c);
                }
            }
        }
        if c.non_finite() == crate::config::NonFinite::SkipStep {
            let finite = grads.iter().flatten().all(|g| match g {
                RefGradient::Dense(v) | RefGradient::Sparse { values: v, .. } => {
                    v.iter().all(|x| x.is_finite())
                }
            });
            if !finite {
                self.iterations = step;
                self.skipped += 1;
                return Ok(());
            }
        }
        // Norms over the listed values as given (clipvalue first), then each variable's clipping. The
        // oracle sums squares in f64 and rounds once; the GPU's fixed reduction tree is within a few ulps.
        let sumsq64: Vec<f64> = grads
            .iter()
            .map(|g| {
                let values = match g {
                    None => &[][..],
                    Some(RefGradient::Dense(v)) => v,
                    Some(RefGradient::Sparse { values, .. }) => values,
                };
                values
                    .iter()
                    .map(|&x| {
                        let y = f64::from(clip_value(x, p.clipvalue));
                        y * y
                    })
                    .sum()
            })
            .collect();
        let total = sumsq64.iter().sum::<f64>() as f32;
        let sumsq: Vec<f32> = sumsq64.iter().map(|&s| s as f32).collect();
        let info: Vec<VarInfo> = sumsq
            .iter()
            .map(|&s| {
                let mut info = VarInfo {
                    mul: 1.0,
                    div: 1.0,
                    clipvalue: p.clipvalue,
                };
                // Non-finite norms as in `reduce_norm.wgsl::finalize` (Keras): a NaN norm makes the
                // variable's divisor NaN (tf.maximum propagates it; `f32::max` would not), an infinite
                // one divides (finite elements to ±0, infinite ones to NaN); a NaN or infinite global
                // norm makes the scale NaN (Keras adds `n - n`).
                if let Some(cn) = c.clipnorm() {
                    let cn = cn as f32;
                    info.mul = cn;
                    info.div = if s.is_nan() {
                        f32::NAN
                    } else {
                        s.sqrt().max(cn)
                    };
                } else if let Some(cn) = c.global_clipnorm() {
                    let cn = cn as f32;
                    let n = total.sqrt();
                    info.mul = if !total.is_finite() {
                        f32::NAN
                    } else if n > 0.0 {
                        cn * (1.0 / n).min(1.0 / cn)
                    } else {
                        cn * (1.0 / cn)
                    };
                }
                info
            })
            .collect();
        for (vi, ((var, g), info)) in self.vars.iter_mut().zip(grads).zip(&info).enumerate() {
            // Stochastic rounding of bf16 variables: the variable's seed and the step.
            let sr = config.stochastic_rounding().map(|seed| {
                (
                    seed.wrapping_add((vi as u32).wrapping_mul(0x9E37_79B9)),
                    step as u32,
                )
            });
            // The variable's effective configuration and scalars (the options table's values).
            let c = var.options.effective_config(&config);
            let p = var.options.hyper(&config).scalars(&p);
            if let (true, Some(g)) = (var.options.rowwise_velocity, g) {
                rowwise::step(var, &c, &p, *g, info);
                continue;
            }
            match g {
                None => {}
                Some(RefGradient::Dense(g)) => {
                    // LazyExact: rows left behind by lazy steps take the steps they missed first.
                    var.catch_up(&config);
                    for (i, &gi) in g.iter().enumerate() {
                        let s = rmsprop(&c, &p, var.state(i), info.clip(gi), 0.0, false);
                        var.set(i, s, sr);
                    }
                    // 8-bit state: every element's new values are in; quantize block by block.
                    var.quantize_state();
                }
                Some(RefGradient::Sparse { indices, values }) => {
                    let row_len = var.row_len();
                    let rows = group_rows(indices);
                    match c.sparse_mode() {
                        SparseMode::Lazy | SparseMode::LazyExact => {
                            let keras3_squares = c.duplicate_indices() == DuplicateIndices::Keras3
                                && c.global_clipnorm().is_none();
                            let mut touched = Vec::new();
                            for (row, ks) in &rows {
                                // LazyExact: the steps the row missed first.
                                for col in 0..row_len {
                                    let i = row * row_len + col;
                                    let mut s = var.caught_up(&c, &p, var.state(i), *row);
                                    let listed = |k: usize| info.clip(values[k * row_len + col]);
                                    if c.duplicate_indices() == DuplicateIndices::Sequential {
                                        // Each pair is a complete update, stored (rounded)
                                        // before the next one reads it.
                                        // The last pair's result is stored by `set` below
                                        // (stochastically rounded with stochastic rounding).
                                        for (j, &k) in ks.iter().enumerate() {
                                            s = rmsprop(&c, &p, s, listed(k), 0.0, false);
                                            if j + 1 < ks.len() {
                                                s = store(&var.storage, s);
                                            }
                                        }
                                    } else {
                                        let (mut sum, mut squares) = (0.0f32, 0.0f32);
                                        for &k in ks {
                                            let gk = listed(k);
                                            sum += gk;
                                            squares += gk * gk;
                                        }
                                        // Keras 3 duplicates (lazy-exact): the sum of squares.
                                        s = rmsprop(&c, &p, s, sum, squares, keras3_squares);
                                    }
                                    var.set(i, s, sr);
                                    if var.q8.is_some() {
                                        touched.push(i);
                                    }
                                }
                            }
                            // 8-bit state: the blocks holding listed rows are quantized again.
                            var.requantize_listed(&touched);
                            // LazyExact: the listed rows are current at the next count.
                            if let Some(l) = var.lazy.as_mut() {
                                let next = l.count.wrapping_add(1);
                                for (row, _) in &rows {
                                    l.rows[*row] = next;
                                }
                                l.bump(lazy_exact::skip_one(&c, &p));
                                l.stale = true;
                            }
                        }
                        SparseMode::Dense => {
                            let n = var.x.len();
                            let (mut gsum, mut q) = (vec![0.0f32; n], vec![0.0f32; n]);
                            for (row, ks) in &rows {
                                for col in 0..row_len {
                                    let i = row * row_len + col;
                                    for &k in ks {
                                        let gk = info.clip(values[k * row_len + col]);
                                        gsum[i] += gk;
                                        q[i] += gk * gk;
                                    }
                                    // The merged row is written to the gradient buffer (its type);
                                    // the sums of squares stay f32.
                                    gsum[i] = var.storage.gradient.round(gsum[i]);
                                }
                            }
                            let use_q = c.duplicate_indices() == DuplicateIndices::Keras3
                                && c.global_clipnorm().is_none();
                            for i in 0..n {
                                let s = rmsprop(&c, &p, var.state(i), gsum[i], q[i], use_q);
                                var.set(i, s, sr);
                            }
                            // Every row was updated: quantize block by block, as after a dense step.
                            var.quantize_state();
                        }
                    }
                }
            }
        }
        self.iterations = step;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
