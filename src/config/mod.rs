//! Hyperparameters and update conventions: presets for each framework, every knob settable, validation.

pub(crate) mod builder;
mod conventions;

pub use builder::RmsPropConfigBuilder;
pub(crate) use builder::{check_loss_scale, lazy_exact_conflict};
pub use conventions::{
    AverageForm, ClipRules, DuplicateIndices, EpsilonPlacement, MomentumForm, NonFinite, Preset,
    SparseMode, WeightDecay,
};

use crate::error::Result;
pub use crate::schedule::{LearningRate, Schedule};

/// A validated RMSprop configuration.
///
/// Build one with [`RmsPropConfig::builder`] (Keras) or [`RmsPropConfig::preset`]; [`Default`] gives
/// Keras's defaults: `learning_rate = 0.001`, `rho = 0.9`, `momentum = 0.0`, `epsilon = 1e-7`,
/// `centered = false`, `name = "RMSprop"`. A value the framework would refuse (or that would silently
/// produce NaN) is rejected by [`RmsPropConfigBuilder::build`] with [`crate::Error::InvalidConfig`] naming the
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
    storage: crate::dtype::StorageTypes,
    stochastic_rounding: Option<u32>,
    q8_block: usize,
    q8_min_size: usize,
    lazy_exact_history: u32,
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
            storage: crate::dtype::StorageTypes::default(),
            stochastic_rounding: None,
            q8_block: 256,
            q8_min_size: 4096,
            lazy_exact_history: 4096,
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
    /// [`SparseMode::LazyExact`] under a learning-rate schedule: each variable keeps the maps of its
    /// last lazy steps (at most this many, a power of two; default 4,096) so that the rows that
    /// missed them can take them with each step's own rate.
    pub fn lazy_exact_history(&self) -> u32 {
        self.lazy_exact_history
    }
    /// The length of the per-variable history of skipped-step maps the kernels keep (0: none, the
    /// skipped steps are powers of one map): [`RmsPropConfig::lazy_exact_history`] in
    /// [`SparseMode::LazyExact`] with a rate that changes between steps.
    pub(crate) fn lazy_history(&self) -> u32 {
        let constant = matches!(self.learning_rate, LearningRate::Constant(_));
        match (self.sparse_mode, constant) {
            (SparseMode::LazyExact, false) => self.lazy_exact_history,
            _ => 0,
        }
    }
    /// Elements per block of 8-bit quantized state ([`crate::Dtype::Q8`]; default 256).
    pub fn q8_block(&self) -> usize {
        self.q8_block
    }
    /// Variables with fewer elements keep f32 state where the storage asks for 8-bit state (default
    /// 4,096, as bitsandbytes' `min_8bit_size`).
    pub fn q8_min_size(&self) -> usize {
        self.q8_min_size
    }
    /// The seed of stochastic rounding of bf16 variables (`None`: round to nearest even). See
    /// [`RmsPropConfigBuilder::stochastic_rounding`].
    pub fn stochastic_rounding(&self) -> Option<u32> {
        self.stochastic_rounding
    }
    /// The storage types of the variables, gradients and optimizer state (default f32 everywhere;
    /// a variable's [`crate::VarOptions::storage`] overrides it).
    pub fn storage(&self) -> crate::dtype::StorageTypes {
        self.storage
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

impl RmsPropConfig {
    /// Sets the loss scale factor (checked by the caller).
    pub(crate) fn set_loss_scale_factor(&mut self, factor: f64) {
        self.loss_scale_factor = Some(factor);
    }

    /// The configuration of one rank's shard optimizer when the host does the clipping
    /// (`crate::distributed`): the norms of a sharded variable span ranks, so the host divides by the
    /// loss scale, clips by value and by norm with factors all-reduced across ranks, and the shard's
    /// kernels see the clipped gradients with no clipping and no loss scale of their own. Keras 3
    /// duplicates with `global_clipnorm` are summed duplicates (no sum of squares, as on one process).
    #[cfg(feature = "distributed")]
    pub(crate) fn for_host_clipping(&self) -> RmsPropConfig {
        let mut c = self.clone();
        if c.duplicate_indices == DuplicateIndices::Keras3 && c.global_clipnorm.is_some() {
            c.duplicate_indices = DuplicateIndices::Sum;
        }
        c.clipvalue = None;
        c.clipnorm = None;
        c.global_clipnorm = None;
        c.loss_scale_factor = None;
        c
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
    /// The scalars that bring rows up to date outside a step ([`SparseMode::LazyExact`]: reads,
    /// checkpoints, [`crate::RmsProp::catch_up`]): those of a step, with the learning rate the constant
    /// one, or 0 under a schedule (where the configuration makes sure it does not enter the skipped
    /// steps); nothing is evaluated.
    pub fn catch_up_scalars(&self) -> StepScalars {
        let lr = match &self.learning_rate {
            LearningRate::Constant(lr) => *lr as f32,
            _ => 0.0,
        };
        StepScalars {
            lr,
            ..self.fixed_scalars()
        }
    }

    /// The scalars that do not depend on the step (learning rate 0, no bias correction, step 0).
    fn fixed_scalars(&self) -> StepScalars {
        let rho = self.rho as f32;
        StepScalars {
            lr: 0.0,
            rho,
            one_minus_rho: (1.0 - self.rho) as f32,
            momentum: self.momentum as f32,
            epsilon: self.epsilon as f32,
            weight_decay: match self.weight_decay {
                WeightDecay::None => 0.0,
                WeightDecay::Decoupled(wd) | WeightDecay::L2(wd) => wd as f32,
            },
            clipvalue: self.clipvalue.map_or(f32::INFINITY, |c| c as f32),
            bias_correction: 1.0,
            step: 0,
        }
    }

    /// The scalars of the step with 1-based number `step` (evaluates the learning rate).
    pub fn scalars(&self, step: u64) -> Result<StepScalars> {
        let rho = self.rho as f32;
        Ok(StepScalars {
            lr: self.learning_rate.at_step(step)?,
            bias_correction: if self.bias_correction {
                1.0 - rho.powf(step as f32)
            } else {
                1.0
            },
            step,
            ..self.fixed_scalars()
        })
    }
}
