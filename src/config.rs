//! Hyperparameters and update conventions: presets for each framework, every knob settable, validation.

use crate::error::{Error, Result};
pub use crate::schedule::{LearningRate, Schedule};

/// A framework's RMSprop, with its own defaults and conventions. See the crate documentation for the
/// equations of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Preset {
    /// Keras 3 / `tf.keras.optimizers.RMSprop` (the default).
    Keras,
    /// Keras 2 (`tf.keras.optimizers.legacy.RMSprop`): epsilon outside the sqrt when momentum is 0.
    KerasLegacy,
    /// TensorFlow's raw training kernels (`ApplyRMSProp`, `ApplyCenteredRMSProp` and sparse forms).
    TfRaw,
    /// `tf.compat.v1.train.RMSPropOptimizer`: as `TfRaw`, velocity starts at 1, duplicates summed.
    Tf1,
    /// `torch.optim.RMSprop`.
    Torch,
    /// `optax.rmsprop`.
    Optax,
}

impl Preset {
    /// Every preset.
    pub const ALL: [Preset; 6] = [
        Preset::Keras,
        Preset::KerasLegacy,
        Preset::TfRaw,
        Preset::Tf1,
        Preset::Torch,
        Preset::Optax,
    ];

    /// The preset's name, as in the golden cases' `semantics`.
    pub fn name(self) -> &'static str {
        match self {
            Preset::Keras => "keras",
            Preset::KerasLegacy => "keras_legacy",
            Preset::TfRaw => "tf_raw",
            Preset::Tf1 => "tf1",
            Preset::Torch => "torch",
            Preset::Optax => "optax",
        }
    }

    /// The preset named `name` (`keras`, `keras_legacy`, `tf_raw`, `tf1`, `torch`, `optax`).
    pub fn from_name(name: &str) -> Option<Preset> {
        Preset::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// Where epsilon goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EpsilonPlacement {
    /// `sqrt(v + eps)` (Keras, TF, optax `eps_in_sqrt=True`).
    InsideSqrt,
    /// `sqrt(v) + eps` (PyTorch, Keras 2 without momentum, optax `eps_in_sqrt=False`).
    OutsideSqrt,
}

/// How the momentum buffer is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MomentumForm {
    /// `m = momentum*m + lr*g/d; x -= m` (Keras, TF).
    LrInside,
    /// `m = momentum*m + g/d; x -= lr*m` (PyTorch).
    LrAfter,
    /// `m = -lr*g/d + momentum*m; x += m`: the slot holds the trace of negative updates (optax).
    NegatedTrace,
}

/// How the centered average is updated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AverageForm {
    /// `a = rho*a + (1-rho)*g`.
    Ema,
    /// `a = a + (1-rho)*(g - a)` (PyTorch's `lerp_`).
    Lerp,
}

/// Weight decay.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WeightDecay {
    /// None.
    None,
    /// Keras: `x = x - x*wd*lr` before the update, for every element.
    Decoupled(f64),
    /// PyTorch: `g = g + wd*x` before the update.
    L2(f64),
}

/// Which rows a sparse gradient updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SparseMode {
    /// Only the listed rows change (variable and every slot); other rows stay bit for bit.
    Lazy,
    /// Every row is updated, absent rows with gradient 0 (accumulators decay).
    Dense,
}

/// How repeated indices of a sparse gradient are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DuplicateIndices {
    /// Rows with the same index are summed, then updated once.
    Sum,
    /// Each listed (index, row) is a complete update, applied in list order (TF's raw kernels).
    Sequential,
    /// Keras 3: summed rows move the variable, the sum of their squares goes into the velocity
    /// (needs [`SparseMode::Dense`]).
    Keras3,
}

/// What a step does when a gradient holds NaN or Inf.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NonFinite {
    /// Apply the step anyway: the non-finite values flow into the state (what TensorFlow does).
    Propagate,
    /// Skip the whole step for every variable when any gradient element of the step is NaN or Inf, as
    /// loss-scaling optimizers do. Detected on the GPU from the bit pattern, skipped on the GPU (no
    /// read-back); [`crate::RmsProp::skipped_steps`] reads the count.
    SkipStep,
}

/// How clipping options may be combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClipRules {
    /// At most one of `clipvalue`, `clipnorm`, `global_clipnorm` (Keras 3).
    AtMostOne,
    /// `clipvalue`, then one of `clipnorm` / `global_clipnorm` (Keras 2 and the other presets).
    ValueThenNorm,
}

/// A validated RMSprop configuration.
///
/// Build one with [`RmsPropConfig::builder`] (Keras) or [`RmsPropConfig::preset`]; [`Default`] gives
/// Keras's defaults: `learning_rate = 0.001`, `rho = 0.9`, `momentum = 0.0`, `epsilon = 1e-7`,
/// `centered = false`, `name = "RMSprop"`. A value the framework would refuse (or that would silently
/// produce NaN) is rejected by [`RmsPropConfigBuilder::build`] with [`Error::InvalidConfig`] naming the
/// field and the value.
///
/// ```
/// use wgpu_rmsprop::{Preset, RmsPropConfig};
/// let cfg = RmsPropConfig::builder().learning_rate(0.01).momentum(0.9).centered(true).build()?;
/// assert_eq!(cfg.rho(), 0.9);
/// let torch = RmsPropConfig::preset(Preset::Torch).build()?;
/// assert_eq!((torch.rho(), torch.epsilon()), (0.99, 1e-8));
/// let err = RmsPropConfig::builder().rho(1.5).build().unwrap_err();
/// assert_eq!(err.to_string(), "`rho` must be in [0, 1). Received: rho=1.5");
/// # Ok::<(), wgpu_rmsprop::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct RmsPropConfig {
    preset: Preset,
    learning_rate: LearningRate,
    rho: f64,
    momentum: f64,
    epsilon: f64,
    centered: bool,
    name: String,
    epsilon_placement: EpsilonPlacement,
    momentum_form: MomentumForm,
    average_form: AverageForm,
    momentum_slot_always: bool,
    initial_accumulator_value: f64,
    bias_correction: bool,
    nesterov: bool,
    maximize: bool,
    weight_decay: WeightDecay,
    clipvalue: Option<f64>,
    clipnorm: Option<f64>,
    global_clipnorm: Option<f64>,
    clip_rules: ClipRules,
    sparse_mode: SparseMode,
    duplicate_indices: DuplicateIndices,
    non_finite: NonFinite,
    loss_scale_factor: Option<f64>,
    gradient_accumulation_steps: Option<u64>,
    use_ema: bool,
    ema_momentum: f64,
    ema_overwrite_frequency: Option<u64>,
}

impl Default for RmsPropConfig {
    fn default() -> Self {
        RmsPropConfig::preset(Preset::Keras)
            .cfg
            .resolve(&Overrides::default())
    }
}

/// Knobs the caller set explicitly (they win over what a preset derives).
#[derive(Debug, Clone, Default)]
struct Overrides {
    epsilon_placement: Option<EpsilonPlacement>,
    sparse_mode: Option<SparseMode>,
}

impl RmsPropConfig {
    /// A builder with Keras's defaults.
    pub fn builder() -> RmsPropConfigBuilder {
        Self::preset(Preset::Keras)
    }

    /// A builder with `preset`'s defaults and conventions.
    pub fn preset(preset: Preset) -> RmsPropConfigBuilder {
        let keras = RmsPropConfig {
            preset,
            learning_rate: LearningRate::Constant(0.001),
            rho: 0.9,
            momentum: 0.0,
            epsilon: 1e-7,
            centered: false,
            name: "RMSprop".to_string(),
            epsilon_placement: EpsilonPlacement::InsideSqrt,
            momentum_form: MomentumForm::LrInside,
            average_form: AverageForm::Ema,
            momentum_slot_always: false,
            initial_accumulator_value: 0.0,
            bias_correction: false,
            nesterov: false,
            maximize: false,
            weight_decay: WeightDecay::None,
            clipvalue: None,
            clipnorm: None,
            global_clipnorm: None,
            clip_rules: ClipRules::AtMostOne,
            sparse_mode: SparseMode::Lazy,
            duplicate_indices: DuplicateIndices::Sum,
            non_finite: NonFinite::Propagate,
            loss_scale_factor: None,
            gradient_accumulation_steps: None,
            use_ema: false,
            ema_momentum: 0.99,
            ema_overwrite_frequency: None,
        };
        let cfg = match preset {
            Preset::Keras => keras,
            Preset::KerasLegacy => RmsPropConfig {
                clip_rules: ClipRules::ValueThenNorm,
                ..keras
            },
            Preset::TfRaw => RmsPropConfig {
                momentum_slot_always: true,
                clip_rules: ClipRules::ValueThenNorm,
                duplicate_indices: DuplicateIndices::Sequential,
                ..keras
            },
            Preset::Tf1 => RmsPropConfig {
                epsilon: 1e-10,
                momentum_slot_always: true,
                initial_accumulator_value: 1.0,
                clip_rules: ClipRules::ValueThenNorm,
                ..keras
            },
            Preset::Torch => RmsPropConfig {
                learning_rate: LearningRate::Constant(0.01),
                rho: 0.99,
                epsilon: 1e-8,
                epsilon_placement: EpsilonPlacement::OutsideSqrt,
                momentum_form: MomentumForm::LrAfter,
                average_form: AverageForm::Lerp,
                clip_rules: ClipRules::ValueThenNorm,
                sparse_mode: SparseMode::Dense,
                ..keras
            },
            Preset::Optax => RmsPropConfig {
                learning_rate: LearningRate::Constant(0.01),
                epsilon: 1e-8,
                momentum_form: MomentumForm::NegatedTrace,
                clip_rules: ClipRules::ValueThenNorm,
                sparse_mode: SparseMode::Dense,
                ..keras
            },
        };
        RmsPropConfigBuilder {
            cfg,
            overrides: Overrides::default(),
        }
    }

    /// The preset the configuration started from.
    pub fn preset_kind(&self) -> Preset {
        self.preset
    }
    /// The learning rate (constant, schedule or closure).
    pub fn learning_rate(&self) -> &LearningRate {
        &self.learning_rate
    }
    /// Decay of the moving averages (`alpha` in PyTorch, `decay` in optax).
    pub fn rho(&self) -> f64 {
        self.rho
    }
    /// Momentum coefficient.
    pub fn momentum(&self) -> f64 {
        self.momentum
    }
    /// Epsilon.
    pub fn epsilon(&self) -> f64 {
        self.epsilon
    }
    /// Whether the centered variant (with an `average_gradient` slot) is used.
    pub fn centered(&self) -> bool {
        self.centered
    }
    /// The optimizer's name, the prefix of its wgpu labels.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Where epsilon goes (resolved: for Keras 2 it depends on the momentum).
    pub fn epsilon_placement(&self) -> EpsilonPlacement {
        self.epsilon_placement
    }
    /// How the momentum buffer is kept.
    pub fn momentum_form(&self) -> MomentumForm {
        self.momentum_form
    }
    /// How the centered average is updated.
    pub fn average_form(&self) -> AverageForm {
        self.average_form
    }
    /// Starting value of the velocity.
    pub fn initial_accumulator_value(&self) -> f64 {
        self.initial_accumulator_value
    }
    /// optax's bias correction (`v / (1 - rho^t)`).
    pub fn bias_correction(&self) -> bool {
        self.bias_correction
    }
    /// optax's Nesterov momentum.
    pub fn nesterov(&self) -> bool {
        self.nesterov
    }
    /// PyTorch's `maximize` (the gradient is negated first).
    pub fn maximize(&self) -> bool {
        self.maximize
    }
    /// Weight decay.
    pub fn weight_decay(&self) -> WeightDecay {
        self.weight_decay
    }
    /// Keras's `loss_scale_factor`: every gradient is divided by it first (before accumulation and
    /// clipping).
    pub fn loss_scale_factor(&self) -> Option<f64> {
        self.loss_scale_factor
    }
    /// Keras's `gradient_accumulation_steps` `N`: the gradients of `N` consecutive steps are averaged
    /// and the update runs on every `N`-th step.
    pub fn gradient_accumulation_steps(&self) -> Option<u64> {
        self.gradient_accumulation_steps
    }
    /// Keras's `use_ema`: an exponential moving average of every variable is kept (slot
    /// [`crate::Slot::Ema`]).
    pub fn use_ema(&self) -> bool {
        self.use_ema
    }
    /// Keras's `ema_momentum` (default 0.99; used with `use_ema`).
    pub fn ema_momentum(&self) -> f64 {
        self.ema_momentum
    }
    /// Keras's `ema_overwrite_frequency`: the variables take their averages every this many updates.
    pub fn ema_overwrite_frequency(&self) -> Option<u64> {
        self.ema_overwrite_frequency
    }
    /// Element-wise gradient clip.
    pub fn clipvalue(&self) -> Option<f64> {
        self.clipvalue
    }
    /// Per-variable gradient norm clip.
    pub fn clipnorm(&self) -> Option<f64> {
        self.clipnorm
    }
    /// Clip by the joint norm of all gradients of a step.
    pub fn global_clipnorm(&self) -> Option<f64> {
        self.global_clipnorm
    }
    /// Which rows sparse gradients update.
    pub fn sparse_mode(&self) -> SparseMode {
        self.sparse_mode
    }
    /// How repeated sparse indices are combined.
    pub fn duplicate_indices(&self) -> DuplicateIndices {
        self.duplicate_indices
    }
    /// What a step does with NaN or Inf gradients.
    pub fn non_finite(&self) -> NonFinite {
        self.non_finite
    }
    /// Whether a `momentum` slot is kept (Keras: only when `momentum > 0`; TF's raw kernels: always).
    pub fn has_momentum(&self) -> bool {
        self.momentum > 0.0 || self.momentum_slot_always
    }
    /// Whether any clipping is configured.
    pub fn clips(&self) -> bool {
        self.clipvalue.is_some() || self.clipnorm.is_some() || self.global_clipnorm.is_some()
    }

    /// This configuration with one variable's overrides applied (see
    /// [`crate::VarOptions::effective_config`], which validates them first).
    pub(crate) fn with_overrides(
        &self,
        rho: Option<f64>,
        momentum: Option<f64>,
        epsilon: Option<f64>,
        centered: Option<bool>,
        maximize: Option<bool>,
        weight_decay: WeightDecay,
    ) -> RmsPropConfig {
        RmsPropConfig {
            rho: rho.unwrap_or(self.rho),
            momentum: momentum.unwrap_or(self.momentum),
            epsilon: epsilon.unwrap_or(self.epsilon),
            centered: centered.unwrap_or(self.centered),
            maximize: maximize.unwrap_or(self.maximize),
            weight_decay,
            ..self.clone()
        }
    }
}

/// Builder for [`RmsPropConfig`]; see there for the defaults.
#[derive(Debug, Clone)]
pub struct RmsPropConfigBuilder {
    cfg: RmsPropConfig,
    overrides: Overrides,
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
    /// `x = ema`. [`crate::RmsProp::swap_ema_weights`] evaluates with the averages.
    pub fn use_ema(mut self, on: bool) -> Self {
        self.cfg.use_ema = on;
        self
    }
    /// Keras's `ema_momentum` (in `[0, 1]`, default 0.99).
    pub fn ema_momentum(mut self, m: f64) -> Self {
        self.cfg.ema_momentum = m;
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
        if c.duplicate_indices == DuplicateIndices::Keras3 && c.sparse_mode != SparseMode::Dense {
            return Err(Error::InvalidConfig {
                field: "duplicate_indices",
                value: "keras3".into(),
                requirement: "needs sparse_mode dense (Keras 3 updates every row)",
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
        if c.nesterov && c.momentum_form == MomentumForm::LrAfter {
            return Err(Error::InvalidConfig {
                field: "nesterov",
                value: "true".into(),
                requirement: "is only defined with the lr_inside or negated_trace momentum forms",
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

impl RmsPropConfig {
    /// Applies the preset's derived rules, then the caller's explicit choices.
    fn resolve(mut self, o: &Overrides) -> RmsPropConfig {
        if self.preset == Preset::KerasLegacy {
            // Keras 2: epsilon outside the sqrt without momentum, inside with it; sparse steps are
            // lazy with momentum, dense without.
            let with_momentum = self.momentum > 0.0;
            self.epsilon_placement = if with_momentum {
                EpsilonPlacement::InsideSqrt
            } else {
                EpsilonPlacement::OutsideSqrt
            };
            self.sparse_mode = if with_momentum {
                SparseMode::Lazy
            } else {
                SparseMode::Dense
            };
        }
        if let Some(p) = o.epsilon_placement {
            self.epsilon_placement = p;
        }
        if let Some(m) = o.sparse_mode {
            self.sparse_mode = m;
        }
        self
    }
}

/// Checks a loss scale factor: finite and > 0, also as the `f32` the GPU divides by.
pub(crate) fn check_loss_scale(f: f64) -> Result<()> {
    check("loss_scale_factor", f, "must be a finite number > 0", |x| {
        x > 0.0 && (x as f32) > 0.0
    })
}

impl RmsPropConfig {
    /// Sets the loss scale factor (checked by the caller).
    pub(crate) fn set_loss_scale_factor(&mut self, factor: f64) {
        self.loss_scale_factor = Some(factor);
    }
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

/// The per-step scalars exactly as the kernels see them (all `f32`, computed once on the host).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepScalars {
    /// Learning rate of this step.
    pub lr: f32,
    /// `rho`.
    pub rho: f32,
    /// `1 - rho`, computed in `f64` and rounded once (as Keras does with a Python float).
    pub one_minus_rho: f32,
    /// Momentum coefficient.
    pub momentum: f32,
    /// Epsilon.
    pub epsilon: f32,
    /// Weight decay coefficient (0 when none).
    pub weight_decay: f32,
    /// `clipvalue` (infinite when none).
    pub clipvalue: f32,
    /// `1 - rho^t` for bias correction (1 when off).
    pub bias_correction: f32,
    /// 1-based number of the step being applied.
    pub step: u64,
}

impl RmsPropConfig {
    /// The scalars of the step with 1-based number `step` (evaluates the learning rate).
    pub fn scalars(&self, step: u64) -> Result<StepScalars> {
        let rho = self.rho as f32;
        Ok(StepScalars {
            lr: self.learning_rate.at_step(step)?,
            rho,
            one_minus_rho: (1.0 - self.rho) as f32,
            momentum: self.momentum as f32,
            epsilon: self.epsilon as f32,
            weight_decay: match self.weight_decay {
                WeightDecay::None => 0.0,
                WeightDecay::Decoupled(wd) | WeightDecay::L2(wd) => wd as f32,
            },
            clipvalue: self.clipvalue.map_or(f32::INFINITY, |c| c as f32),
            bias_correction: if self.bias_correction {
                1.0 - rho.powf(step as f32)
            } else {
                1.0
            },
            step,
        })
    }
}
