//! [`RmsPropConfigBuilder`]: every knob settable, each value checked when the configuration is built.

use super::*;
use crate::error::{Error, Result};

/// Builder for [`RmsPropConfig`]; see there for the defaults.
#[derive(Debug, Clone)]
pub struct RmsPropConfigBuilder {
    pub(super) cfg: RmsPropConfig,
    pub(super) overrides: Overrides,
}

macro_rules! setter {
    ($(#[$doc:meta])* $name:ident: $ty:ty) => {
        $(#[$doc])*
        pub fn $name(mut self, value: $ty) -> Self {
            self.cfg.$name = value;
            self
        }
    };
}

impl RmsPropConfigBuilder {
    /// Sets the learning rate: a number, a [`Schedule`], or a [`LearningRate`] closure.
    pub fn learning_rate(mut self, lr: impl Into<LearningRate>) -> Self {
        self.cfg.learning_rate = lr.into();
        self
    }
    setter!(
        /// Sets `rho`, the decay of the moving averages; must be in `[0, 1)`.
        rho: f64
    );
    setter!(
        /// Sets the momentum coefficient; must be finite and `>= 0`.
        momentum: f64
    );
    setter!(
        /// Sets epsilon; must be finite and `>= 0`.
        epsilon: f64
    );
    setter!(
        /// Chooses the centered variant.
        centered: bool
    );
    /// Sets the name (prefix of the optimizer's wgpu labels); must not be empty.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.cfg.name = name.into();
        self
    }
    /// Places epsilon inside or outside the square root (overrides the preset's rule).
    pub fn epsilon_placement(mut self, placement: EpsilonPlacement) -> Self {
        self.overrides.epsilon_placement = Some(placement);
        self
    }
    setter!(
        /// Chooses how the momentum buffer is kept.
        momentum_form: MomentumForm
    );
    setter!(
        /// Chooses how the centered average is updated.
        average_form: AverageForm
    );
    setter!(
        /// Keeps a momentum slot even when `momentum == 0` (TF's raw kernels).
        momentum_slot_always: bool
    );
    setter!(
        /// Starting value of the velocity (TF1: 1, optax: `initial_scale`); finite and `>= 0`.
        initial_accumulator_value: f64
    );
    setter!(
        /// optax's bias correction.
        bias_correction: bool
    );
    setter!(
        /// optax's Nesterov momentum (needs the `NegatedTrace` or `LrInside` form).
        nesterov: bool
    );
    setter!(
        /// PyTorch's `maximize`.
        maximize: bool
    );
    /// Sets the weight decay with the preset's convention: decoupled for Keras, L2 for PyTorch (other
    /// presets: decoupled). Use [`RmsPropConfigBuilder::weight_decay_mode`] to choose explicitly.
    pub fn weight_decay(mut self, wd: f64) -> Self {
        self.cfg.weight_decay = match self.cfg.preset {
            Preset::Torch => WeightDecay::L2(wd),
            _ => WeightDecay::Decoupled(wd),
        };
        self
    }
    /// Sets the weight decay and its convention.
    pub fn weight_decay_mode(mut self, mode: WeightDecay) -> Self {
        self.cfg.weight_decay = mode;
        self
    }
    /// Clips each gradient element to `[-c, c]`.
    pub fn clipvalue(mut self, c: f64) -> Self {
        self.cfg.clipvalue = Some(c);
        self
    }
    /// Clips each variable's gradient to norm `c`: `g * c / max(||g||, c)`.
    pub fn clipnorm(mut self, c: f64) -> Self {
        self.cfg.clipnorm = Some(c);
        self
    }
    /// Clips all gradients of a step by their joint norm: `g * c * min(1/n, 1/c)`.
    pub fn global_clipnorm(mut self, c: f64) -> Self {
        self.cfg.global_clipnorm = Some(c);
        self
    }
    setter!(
        /// Which clipping options may be combined (the preset decides by default).
        clip_rules: ClipRules
    );
    /// Chooses which rows sparse gradients update (overrides the preset's rule).
    pub fn sparse_mode(mut self, mode: SparseMode) -> Self {
        self.overrides.sparse_mode = Some(mode);
        self
    }
    setter!(
        /// Chooses how repeated sparse indices are combined.
        duplicate_indices: DuplicateIndices
    );
    setter!(
        /// Chooses what a step does with NaN or Inf gradients (default: propagate, as TensorFlow).
        non_finite: NonFinite
    );
    /// Keras's `loss_scale_factor`: the gradients are those of a loss multiplied by `factor`, so every
    /// step divides them by it first (`g / factor` in `f32`, before accumulation, clipping and the
    /// update). Must be finite and > 0. With [`NonFinite::SkipStep`] it makes dynamic loss scaling
    /// (see [`crate::RmsProp::set_loss_scale_factor`]).
    pub fn loss_scale_factor(mut self, factor: f64) -> Self {
        self.cfg.loss_scale_factor = Some(factor);
        self
    }
    /// Keras's `use_ema`: keep an exponential moving average of every variable (slot
    /// [`crate::Slot::Ema`], read like any slot, kept in checkpoints), updated on the GPU after every
    /// step, also the steps that only accumulate. With `k` Keras's `iterations` before the step (`t - 1`,
    /// or `(t - 1) / N` with accumulation): `ema = m*ema + (1-m)*x` with `m = ema_momentum`, or `m = 0`
    /// when `k == 0` (so `ema = x`); then, with `ema_overwrite_frequency = F` and `(k + 1) % F == 0`,
    /// `x = ema`. [`crate::RmsProp::swap_ema_weights`] evaluates with the averages. A step that updates
    /// every variable densely averages them in its own dispatch where the device has a ninth storage
    /// binding per stage; other steps take one more dispatch per pool buffer.
    pub fn use_ema(mut self, on: bool) -> Self {
        self.cfg.use_ema = on;
        self
    }
    /// Keras's `ema_momentum` (in `[0, 1]`, default 0.99).
    pub fn ema_momentum(mut self, m: f64) -> Self {
        self.cfg.ema_momentum = m;
        self
    }
    /// Stochastic rounding of the variables stored in bf16: each stored value is one of the two bf16
    /// neighbours of the f32 result, the upper with probability equal to its distance from the lower in
    /// bf16 ulps (unbiased in expectation), so that updates smaller than half a bf16 ulp still move a
    /// variable on average instead of being lost. The random bits are a hash of `seed`, the step
    /// number, the variable's index and the element's index in the variable
    /// ([`crate::half_bits::sr_hash`]`(seed + index * 0x9E3779B9, step, element)`): deterministic,
    /// independent of where the variable sits in the pools. Other types and the state round to
    /// nearest even; the TF raw sequential duplicates round each listed pair but the last to nearest.
    pub fn stochastic_rounding(mut self, seed: u32) -> Self {
        self.cfg.stochastic_rounding = Some(seed);
        self
    }
    /// Elements per block of 8-bit quantized state (a power of two in [64, 4096] dividing 4x the
    /// workgroup size; default 256): each block has one f32 absmax.
    pub fn q8_block(mut self, elements: usize) -> Self {
        self.cfg.q8_block = elements;
        self
    }
    /// [`crate::SparseMode::LazyExact`] under a learning-rate schedule: how many of its lazy steps'
    /// maps each variable keeps on the GPU (a power of two in [2, 2^20]; default 4,096: 128 KiB per
    /// variable). Rows take the steps they missed from this history; when it is full, the variable's
    /// next lazy step first brings every row up to date and starts it again (one dense-cost catch-up
    /// per this many lazy steps of the variable).
    pub fn lazy_exact_history(mut self, steps: u32) -> Self {
        self.cfg.lazy_exact_history = steps;
        self
    }
    /// Variables with fewer elements than this keep f32 state where the storage asks for 8-bit state
    /// (default 4,096, bitsandbytes' `min_8bit_size`).
    pub fn q8_min_size(mut self, elements: usize) -> Self {
        self.cfg.q8_min_size = elements;
        self
    }
    /// The default storage types of the variables, gradients and optimizer state (see
    /// [`crate::dtype`]).
    pub fn storage(mut self, storage: crate::dtype::StorageTypes) -> Self {
        self.cfg.storage = storage;
        self
    }
    /// Keras's `ema_overwrite_frequency` (`>= 1`): see [`RmsPropConfigBuilder::use_ema`].
    pub fn ema_overwrite_frequency(mut self, every: u64) -> Self {
        self.cfg.ema_overwrite_frequency = Some(every);
        self
    }
    /// Keras's `gradient_accumulation_steps` (`N >= 2`): step `t` (1-based) adds its gradients to a
    /// per-variable accumulator on the GPU when `t % N != 0` (nothing else changes: no clipping, decay
    /// or update); on every `N`-th step the gradient is `(g + acc) / N`, the accumulator is cleared and
    /// the update runs. The learning rate of step `t` is the schedule at `t - 1` (steps, not updates),
    /// as in Keras. A host sparse gradient ([`crate::Gradient::Sparse`]) is accumulated as Keras does:
    /// made dense (values divided by the loss scale, duplicates summed in list order, absent rows 0),
    /// so the update is dense for that variable; sparse gradients whose values are on the GPU are
    /// refused with [`Error::InvalidConfig`] for now.
    pub fn gradient_accumulation_steps(mut self, steps: u64) -> Self {
        self.cfg.gradient_accumulation_steps = Some(steps);
        self
    }

    /// Validates every field and returns the configuration.
    pub fn build(self) -> Result<RmsPropConfig> {
        let c = self.cfg.resolve(&self.overrides);
        c.learning_rate.validate()?;
        check("rho", c.rho, "must be in [0, 1)", |x| {
            (0.0..1.0).contains(&x)
        })?;
        check(
            "momentum",
            c.momentum,
            "must be a finite number >= 0",
            |x| x >= 0.0,
        )?;
        check("epsilon", c.epsilon, "must be a finite number >= 0", |x| {
            x >= 0.0
        })?;
        check(
            "initial_accumulator_value",
            c.initial_accumulator_value,
            "must be a finite number >= 0",
            |x| x >= 0.0,
        )?;
        match c.weight_decay {
            WeightDecay::None => {}
            WeightDecay::Decoupled(wd) | WeightDecay::L2(wd) => {
                check("weight_decay", wd, "must be a finite number >= 0", |x| {
                    x >= 0.0
                })?
            }
        }
        for (field, v) in [
            ("clipvalue", c.clipvalue),
            ("clipnorm", c.clipnorm),
            ("global_clipnorm", c.global_clipnorm),
        ] {
            if let Some(v) = v {
                check(field, v, "must be a finite number > 0", |x| x > 0.0)?;
            }
        }
        if let Some(f) = c.loss_scale_factor {
            check_loss_scale(f)?;
        }
        if let Some(n) = c.gradient_accumulation_steps {
            if !(2..=u64::from(u32::MAX)).contains(&n) {
                return Err(Error::InvalidConfig {
                    field: "gradient_accumulation_steps",
                    value: format!("{n}"),
                    requirement: "must be an integer >= 2",
                });
            }
            if c.bias_correction {
                return Err(Error::InvalidConfig {
                    field: "gradient_accumulation_steps",
                    value: format!("{n}"),
                    requirement: "cannot be combined with bias_correction",
                });
            }
        }
        check("ema_momentum", c.ema_momentum, "must be in [0, 1]", |x| {
            (0.0..=1.0).contains(&x)
        })?;
        if c.ema_overwrite_frequency == Some(0) {
            return Err(Error::InvalidConfig {
                field: "ema_overwrite_frequency",
                value: "0".into(),
                requirement: "must be an integer >= 1",
            });
        }
        if c.clipnorm.is_some() && c.global_clipnorm.is_some() {
            return Err(Error::InvalidConfig {
                field: "global_clipnorm",
                value: format!("{:?} with clipnorm={:?}", c.global_clipnorm, c.clipnorm),
                requirement: "cannot be combined with clipnorm",
            });
        }
        if c.clip_rules == ClipRules::AtMostOne
            && c.clipvalue.is_some()
            && (c.clipnorm.is_some() || c.global_clipnorm.is_some())
        {
            return Err(Error::InvalidConfig {
                field: "clipvalue",
                value: format!("{:?}", c.clipvalue),
                requirement: "cannot be combined with clipnorm or global_clipnorm in Keras 3 (at most one clipping option)",
            });
        }
        if c.duplicate_indices == DuplicateIndices::Keras3 && c.sparse_mode == SparseMode::Lazy {
            return Err(Error::InvalidConfig {
                field: "duplicate_indices",
                value: "keras3".into(),
                requirement: "needs sparse_mode dense or lazy_exact (Keras 3 updates every row)",
            });
        }
        if c.duplicate_indices == DuplicateIndices::Sequential && c.sparse_mode != SparseMode::Lazy
        {
            return Err(Error::InvalidConfig {
                field: "duplicate_indices",
                value: "sequential".into(),
                requirement: "needs sparse_mode lazy (each listed row is its own update)",
            });
        }
        if c.sparse_mode == SparseMode::LazyExact {
            if let Some((field, value, requirement)) = lazy_exact_conflict(&c) {
                return Err(Error::InvalidConfig {
                    field,
                    value,
                    requirement,
                });
            }
        }
        if c.nesterov && c.momentum_form == MomentumForm::LrAfter {
            return Err(Error::InvalidConfig {
                field: "nesterov",
                value: "true".into(),
                requirement: "is only defined with the lr_inside or negated_trace momentum forms",
            });
        }
        if !(c.lazy_exact_history.is_power_of_two()
            && (2..=1 << 20).contains(&c.lazy_exact_history))
        {
            return Err(Error::InvalidConfig {
                field: "lazy_exact_history",
                value: c.lazy_exact_history.to_string(),
                requirement: "must be a power of two in [2, 2^20]",
            });
        }
        if !(c.q8_block.is_power_of_two() && (64..=4096).contains(&c.q8_block)) {
            return Err(Error::InvalidConfig {
                field: "q8_block",
                value: c.q8_block.to_string(),
                requirement: "must be a power of two in [64, 4096]",
            });
        }
        if let Some(why) = q8_conflict(c.storage) {
            return Err(Error::InvalidConfig {
                field: "storage",
                value: format!("{:?}", c.storage),
                requirement: why,
            });
        }
        if c.storage.copy == Some(crate::dtype::Dtype::F32) {
            return Err(Error::InvalidConfig {
                field: "storage",
                value: format!("{:?}", c.storage),
                requirement: "copy must be a 16-bit type (f16 or bf16) or None",
            });
        }
        if let Some(why) = copy_storage_conflict(c.storage) {
            return Err(Error::InvalidConfig {
                field: "storage",
                value: format!("{:?}", c.storage),
                requirement: why,
            });
        }
        if let Some(why) = base_class_storage_conflict(&c, c.storage) {
            return Err(Error::InvalidConfig {
                field: "storage",
                value: format!("{:?}", c.storage),
                requirement: why,
            });
        }
        if c.name.is_empty() {
            return Err(Error::InvalidConfig {
                field: "name",
                value: "\"\"".into(),
                requirement: "must not be empty",
            });
        }
        Ok(c)
    }
}

/// Why `storage`'s copy of the variables is refused, if it is: a copy is of f32 variables (master
/// weights). With a 16-bit variable the kernels would store the copy from the unrounded result (and
/// without the variable's stochastic rounding), the upload and a restore from the variable's values,
/// so the copy would not be the variable's.
pub(crate) fn copy_storage_conflict(storage: crate::dtype::StorageTypes) -> Option<&'static str> {
    (storage.copy.is_some() && storage.variable != crate::dtype::Dtype::F32).then_some(
        "a copy of the variables needs f32 variables (master weights); a 16-bit variable is its own \
         16-bit copy",
    )
}

/// Why `storage` cannot hold 8-bit quantized values where it asks for them, if it cannot: only the
/// optimizer state is quantized.
/// Why `c` cannot use [`SparseMode::LazyExact`]: (field, value, requirement), or `None`. Skipped steps
/// are caught up in closed form, which exists only where a step with gradient 0 is a fixed linear map.
pub(crate) fn lazy_exact_conflict(
    c: &RmsPropConfig,
) -> Option<(&'static str, String, &'static str)> {
    let momentum = c.momentum != 0.0;
    let why = match () {
        _ if matches!(c.weight_decay, WeightDecay::L2(_)) => (
            "weight_decay",
            format!("{:?}", c.weight_decay),
            "cannot be L2 with sparse_mode lazy_exact (the skipped steps' gradient would be the \
             decay: no closed form)",
        ),
        _ if c.nesterov && momentum => (
            "nesterov",
            "true".into(),
            "cannot be used with sparse_mode lazy_exact (no closed form for the skipped steps yet)",
        ),
        _ if c.use_ema
            || c.gradient_accumulation_steps.is_some()
            || c.loss_scale_factor.is_some() =>
        {
            (
                "sparse_mode",
                "lazy_exact".into(),
                "cannot be combined with use_ema, gradient_accumulation_steps or loss_scale_factor \
                 yet",
            )
        }
        _ if c.storage.state == crate::dtype::Dtype::Q8 => (
            "storage",
            format!("{:?}", c.storage),
            "cannot keep q8 state with sparse_mode lazy_exact yet",
        ),
        _ => return None,
    };
    Some(why)
}

pub(crate) fn q8_conflict(storage: crate::dtype::StorageTypes) -> Option<&'static str> {
    let q8 = crate::dtype::Dtype::Q8;
    (storage.variable == q8 || storage.gradient == q8 || storage.copy == Some(q8)).then_some(
        "q8 (8-bit quantized) is a state type only: variables, gradients and the copy cannot be q8",
    )
}

/// Why `storage` cannot serve `c`'s Keras base-class features, if it cannot.
pub(crate) fn base_class_storage_conflict(
    c: &RmsPropConfig,
    storage: crate::dtype::StorageTypes,
) -> Option<&'static str> {
    let base =
        c.loss_scale_factor.is_some() || c.gradient_accumulation_steps.is_some() || c.use_ema;
    (base && !storage.is_f32()).then_some(
        "must be f32 everywhere with loss_scale_factor, gradient_accumulation_steps or use_ema \
         (their kernels read and write f32 buffers; 16-bit storage is not supported with them yet)",
    )
}

/// Checks a loss scale factor: finite and > 0, also as the `f32` the GPU divides by.
pub(crate) fn check_loss_scale(f: f64) -> Result<()> {
    check("loss_scale_factor", f, "must be a finite number > 0", |x| {
        x > 0.0 && (x as f32) > 0.0
    })
}

/// Checks `ok(x)`, finiteness, and that `x` stays finite as the `f32` the GPU receives.
fn check(
    field: &'static str,
    x: f64,
    requirement: &'static str,
    ok: impl Fn(f64) -> bool,
) -> Result<()> {
    if x.is_finite() && (x as f32).is_finite() && ok(x) {
        Ok(())
    } else {
        Err(Error::InvalidConfig {
            field,
            value: format!("{x}"),
            requirement,
        })
    }
}
