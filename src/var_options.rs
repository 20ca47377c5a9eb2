//! Per-variable options: PyTorch's parameter groups and Keras's `exclude_from_weight_decay`.
//!
//! A [`VarOptions`] overrides hyperparameters of one variable; the variable is then updated with the
//! configuration in which those values are replaced ([`VarOptions::effective_config`]), and with its own
//! learning rate ([`VarHyper::lr`]). The GPU reads each variable's values from a per-variable table
//! ([`VarHyper`], two 16-byte entries per variable in the `var_info` buffer), so one dense dispatch per
//! pool buffer still updates every variable, whatever their options.
//!
//! What each option means:
//!
//! - `lr_multiplier` (default 1) multiplies the variable's learning rate; `learning_rate: Some(c)`
//!   replaces the configuration's rate (constant or schedule) by the constant `c` for this variable, as a
//!   torch param group's `lr`. Both may be given: the rate is then `c * lr_multiplier`. The variable's
//!   rate of a step whose configured rate is `lr` is `lr * lr_multiplier` (rounded once to `f32`) or
//!   `c * lr_multiplier` (computed in `f64`, rounded once). Decoupled weight decay uses this rate.
//! - `weight_decay: Some(w)` sets the decay coefficient in the configuration's decay mode; when the
//!   configuration has no decay, in the preset's natural mode: L2 (`g += w*x`) for [`Preset::Torch`],
//!   decoupled (`x -= x*w*lr`) for every other preset.
//! - `exclude_from_weight_decay` (or a name matched by
//!   [`crate::RmsProp::exclude_from_weight_decay_names`]): no decay at all for this variable (not
//!   `x*0`). It wins over the configuration's decay; setting it together with `weight_decay` is refused.
//! - `momentum`, `centered`, `epsilon`, `rho`, `maximize`: the configuration's knob for this variable.
//!   A variable whose effective momentum is 0 keeps no momentum slot (except under the presets that
//!   always keep one, [`Preset::TfRaw`] and [`Preset::Tf1`]); one that is not centered keeps no
//!   `average_gradient`. `rho` cannot be overridden with bias correction (`1 - rho^t` is one value per
//!   step), and under [`Preset::KerasLegacy`] `momentum` cannot turn momentum on or off (Keras 2 derives
//!   the epsilon placement and the sparse mode from it, once for the optimizer).
//! - `frozen`: the variable is not updated at all. A gradient given for it in a step is validated as
//!   usual and then ignored: not copied, not counted in `clipnorm` / `global_clipnorm` norms or in the
//!   non-finite check, and the variable and its slots stay bit for bit (it takes part in the step as a
//!   variable that is not listed).
//!
//! - `rowwise_velocity`: one velocity per row instead of one per element (FBGEMM's row-wise
//!   optimizers for embedding tables, a variant no framework preset uses): per row `r` of the
//!   variable's (processed) gradient `g`, `v_r = rho*v_r + (1-rho)*mean_j(g_rj^2)`, and every element
//!   of the row is updated with `v_r` where the element-wise update uses its own `v` (epsilon, bias
//!   correction, momentum and decay as the configuration says; momentum stays per element). The
//!   velocity is `rows` f32 values ([`crate::Slot::Velocity`] reads and checkpoints hold `[rows]`);
//!   the element-wise velocity is not allocated, so a `[1M, 64]` table's velocity is 64 times
//!   smaller. Needs a variable of rank >= 2 (fixed when it is added) and f32 storage; refused with
//!   centered, 16-bit or q8 storage, a copy of the variables, `SparseMode::LazyExact`, sequential or
//!   Keras 3 duplicates and Keras's base-class options (see [`VarOptions::rowwise_velocity`]).
//!
//! Every value is validated when the options are given ([`Error::InvalidVarOptions`] names the
//! variable, the option and the value), before anything changes.

use crate::config::{Preset, RmsPropConfig, StepScalars, WeightDecay};
use crate::error::{Error, Result};

/// Options of one variable (a parameter group of one): every field defaults to "as the
/// configuration". See the [module documentation](crate::var_options) for the exact meaning of each.
///
/// ```
/// use wgpu_rmsprop::{GpuContext, Preset, RmsProp, RmsPropConfig, VarOptions};
/// let ctx = GpuContext::new()?;
/// let mut opt = RmsProp::new(&ctx, RmsPropConfig::preset(Preset::Torch).build()?)?;
/// // torch.optim.RMSprop([{"params": [w]}, {"params": [b], "lr": 0.003, "weight_decay": 0.1}])
/// let w = opt.add_variable("w", &[4], &[0.5; 4])?;
/// let b = opt.add_variable_with(
///     "b",
///     &[4],
///     &[0.5; 4],
///     &VarOptions { learning_rate: Some(0.003), weight_decay: Some(0.1), ..VarOptions::default() },
/// )?;
/// opt.apply_gradients(&[(w, &[0.1; 4]), (b, &[0.1; 4])])?;
/// assert_eq!(opt.variable_options(b)?.learning_rate, Some(0.003));
/// # Ok::<(), wgpu_rmsprop::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct VarOptions {
    /// Multiplies the variable's learning rate (default 1; finite, `>= 0`).
    pub lr_multiplier: f64,
    /// A constant learning rate for this variable instead of the configuration's rate or schedule
    /// (a torch param group's `lr`; finite, `>= 0`).
    pub learning_rate: Option<f64>,
    /// The weight decay coefficient, in the configuration's decay mode (or the preset's natural mode,
    /// L2 for Torch and decoupled otherwise, when the configuration has none); finite, `>= 0`.
    pub weight_decay: Option<f64>,
    /// No weight decay for this variable (Keras's `optimizer.exclude_from_weight_decay`).
    pub exclude_from_weight_decay: bool,
    /// The momentum coefficient (finite, `>= 0`; 0 means no momentum slot unless the preset always keeps
    /// one).
    pub momentum: Option<f64>,
    /// The centered variant (with an `average_gradient` slot) or not.
    pub centered: Option<bool>,
    /// Epsilon (finite, `>= 0`).
    pub epsilon: Option<f64>,
    /// `rho` (in `[0, 1)`; refused with bias correction).
    pub rho: Option<f64>,
    /// PyTorch's `maximize`: the gradient is negated first.
    pub maximize: Option<bool>,
    /// The variable is not updated: its gradients are ignored (see the module documentation).
    pub frozen: bool,
    /// The variable's storage types (default: the configuration's [`crate::RmsPropConfig::storage`]).
    /// Fixed when the variable is added: changing it later is refused.
    pub storage: Option<crate::dtype::StorageTypes>,
    /// One velocity per row (rows along axis 0, rank >= 2) from the mean of the row's squared
    /// gradients, instead of one per element (FBGEMM's row-wise optimizers; no framework preset uses
    /// it). Fixed when the variable is added. Refused (with why) with centered, non-f32 storage or a
    /// copy, `SparseMode::LazyExact`, sequential or Keras 3 duplicates and Keras's base-class options.
    pub rowwise_velocity: bool,
}

impl Default for VarOptions {
    fn default() -> Self {
        VarOptions {
            lr_multiplier: 1.0,
            learning_rate: None,
            weight_decay: None,
            exclude_from_weight_decay: false,
            momentum: None,
            centered: None,
            epsilon: None,
            rho: None,
            maximize: None,
            frozen: false,
            storage: None,
            rowwise_velocity: false,
        }
    }
}

/// One variable's hyperparameters exactly as the kernels read them from the per-variable table (all
/// `f32`, computed once on the host). The CPU twin uses the same values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VarHyper {
    /// Multiplier of the step's learning rate (0 when the variable has its own constant rate).
    pub lr_multiplier: f32,
    /// Added to the multiplied rate: the variable's constant rate times its multiplier, or 0.
    pub lr_addend: f32,
    /// `rho`.
    pub rho: f32,
    /// `1 - rho`, computed in `f64` and rounded once.
    pub one_minus_rho: f32,
    /// Momentum coefficient when `momentum_slot`; otherwise the configuration's, which is not used.
    pub momentum: f32,
    /// Epsilon.
    pub epsilon: f32,
    /// Weight decay coefficient when `decay`; otherwise the configuration's (0 when it has none), which
    /// is not used (so that a variable excluded from decay differs from the configuration only in
    /// `decay`, and the kernels read only that).
    pub weight_decay: f32,
    /// The variable keeps a momentum slot.
    pub momentum_slot: bool,
    /// The variable is centered (keeps an `average_gradient` slot).
    pub centered: bool,
    /// The gradient is negated first.
    pub maximize: bool,
    /// Weight decay applies to this variable.
    pub decay: bool,
    /// One velocity per row ([`VarOptions::rowwise_velocity`]): updated by the row-wise kernels.
    pub rowwise: bool,
}

/// Flags of the table's second entry (`OPT_*` in `shaders/rmsprop_update.wgsl`).
const OPT_MOMENTUM: u32 = 1;
const OPT_CENTERED: u32 = 2;
const OPT_MAXIMIZE: u32 = 4;
const OPT_DECAY: u32 = 8;

impl VarHyper {
    /// The variable's learning rate in a step whose configured rate is `step_lr`, as the kernels compute
    /// it: `step_lr * lr_multiplier + lr_addend` in `f32` (one of the two terms is exactly 0, so the
    /// result is the same whether or not a compiler fuses it into one multiply-add).
    pub fn lr(&self, step_lr: f32) -> f32 {
        step_lr * self.lr_multiplier + self.lr_addend
    }

    /// The step's scalars for this variable (`p` with this variable's values).
    pub fn scalars(&self, p: &StepScalars) -> StepScalars {
        StepScalars {
            lr: self.lr(p.lr),
            rho: self.rho,
            one_minus_rho: self.one_minus_rho,
            momentum: self.momentum,
            epsilon: self.epsilon,
            weight_decay: if self.decay { self.weight_decay } else { 0.0 },
            ..*p
        }
    }

    /// The two table entries (16 bytes each) the kernels read (`hyper` in `rmsprop_update.wgsl`):
    /// `(lr multiplier, lr addend, rho, bits of 1 - rho)`, `(momentum, epsilon, weight decay, flags)`.
    pub(crate) fn entries(&self) -> [[u32; 4]; 2] {
        let flags = [
            (self.momentum_slot, OPT_MOMENTUM),
            (self.centered, OPT_CENTERED),
            (self.maximize, OPT_MAXIMIZE),
            (self.decay, OPT_DECAY),
        ]
        .into_iter()
        .filter(|&(on, _)| on)
        .fold(0, |acc, (_, bit)| acc | bit);
        [
            [
                self.lr_multiplier.to_bits(),
                self.lr_addend.to_bits(),
                self.rho.to_bits(),
                self.one_minus_rho.to_bits(),
            ],
            [
                self.momentum.to_bits(),
                self.epsilon.to_bits(),
                self.weight_decay.to_bits(),
                flags,
            ],
        ]
    }
}

impl VarOptions {
    /// The options of a variable that takes everything from the configuration.
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks every option against `config` for the variable named `variable`.
    pub fn validate(&self, variable: &str, config: &RmsPropConfig) -> Result<()> {
        let bad = |field: &'static str, value: String, requirement: &'static str| {
            Err(Error::InvalidVarOptions {
                variable: variable.into(),
                field,
                value,
                requirement,
            })
        };
        // Finite, >= 0, and finite as the f32 the GPU receives.
        let number = |x: f64| x.is_finite() && (x as f32).is_finite() && x >= 0.0;
        if !number(self.lr_multiplier) {
            let v = self.lr_multiplier.to_string();
            return bad("lr_multiplier", v, "must be a finite number >= 0");
        }
        for (field, value) in [
            ("learning_rate", self.learning_rate),
            ("weight_decay", self.weight_decay),
            ("momentum", self.momentum),
            ("epsilon", self.epsilon),
        ] {
            if let Some(x) = value.filter(|&x| !number(x)) {
                return bad(field, x.to_string(), "must be a finite number >= 0");
            }
        }
        if let Some(c) = self.learning_rate {
            if !number(c * self.lr_multiplier) {
                let v = format!("{c} with lr_multiplier={}", self.lr_multiplier);
                return bad(
                    "learning_rate",
                    v,
                    "times lr_multiplier must be a finite f32",
                );
            }
        }
        if let Some(storage) = self.storage.filter(|s| s.copy != config.storage().copy) {
            return bad(
                "storage",
                format!("{storage:?}"),
                "must keep the configuration's copy (a copy of the variables is kept for all or \
                 none)",
            );
        }
        if let Some(storage) = self.storage {
            if let Some(why) = crate::config::builder::q8_conflict(storage) {
                return bad("storage", format!("{storage:?}"), why);
            }
            if let Some(why) = crate::config::builder::copy_storage_conflict(storage) {
                return bad("storage", format!("{storage:?}"), why);
            }
            if let Some(why) = crate::config::builder::base_class_storage_conflict(config, storage)
            {
                return bad("storage", format!("{storage:?}"), why);
            }
        }
        if let (Some(w), true) = (self.weight_decay, self.exclude_from_weight_decay) {
            let v = format!("{w} with exclude_from_weight_decay=true");
            return bad(
                "weight_decay",
                v,
                "cannot be combined with exclude_from_weight_decay",
            );
        }
        if let Some(rho) = self.rho {
            if !(number(rho) && rho < 1.0) {
                return bad("rho", rho.to_string(), "must be in [0, 1)");
            }
            if config.bias_correction() && rho != config.rho() {
                return bad(
                    "rho",
                    rho.to_string(),
                    "cannot differ from the configuration's with bias_correction (1 - rho^t is one \
                     value per step)",
                );
            }
        }
        if let Some(m) = self.momentum {
            if config.preset_kind() == Preset::KerasLegacy && (m > 0.0) != (config.momentum() > 0.0)
            {
                return bad(
                    "momentum",
                    m.to_string(),
                    "cannot turn momentum on or off under keras_legacy (Keras 2 derives the epsilon \
                     placement and the sparse mode from the optimizer's momentum)",
                );
            }
        }
        if self.rowwise_velocity {
            let effective = self.effective_config(config);
            let storage = self.storage.unwrap_or(config.storage());
            if let Some((field, value, requirement)) = rowwise_conflict(&effective, storage) {
                return bad(field, value, requirement);
            }
        }
        if config.sparse_mode() == crate::SparseMode::LazyExact {
            // The variable's own momentum or decay must have a closed form too.
            let effective = self.effective_config(config);
            if let Some((field, value, requirement)) =
                crate::config::lazy_exact_conflict(&effective)
            {
                return bad(field, value, requirement);
            }
        }
        Ok(())
    }

    /// The configuration this variable is updated with: `config` with the overridden knobs replaced
    /// (rho, momentum, epsilon, centered, maximize, weight decay; see the module documentation for the
    /// decay mode). The learning rate is the configuration's: the variable's own rate is
    /// [`VarHyper::lr`]. Assumes [`VarOptions::validate`] passed.
    pub fn effective_config(&self, config: &RmsPropConfig) -> RmsPropConfig {
        let decay = if self.exclude_from_weight_decay {
            WeightDecay::None
        } else {
            match (self.weight_decay, config.weight_decay()) {
                (None, mode) => mode,
                (Some(w), WeightDecay::Decoupled(_)) => WeightDecay::Decoupled(w),
                (Some(w), WeightDecay::L2(_)) => WeightDecay::L2(w),
                (Some(w), WeightDecay::None) if config.preset_kind() == Preset::Torch => {
                    WeightDecay::L2(w)
                }
                (Some(w), WeightDecay::None) => WeightDecay::Decoupled(w),
            }
        };
        config.with_overrides(
            self.rho,
            self.momentum,
            self.epsilon,
            self.centered,
            self.maximize,
            decay,
        )
    }

    /// The values the kernels read for this variable under `config` (assumes
    /// [`VarOptions::validate`] passed).
    pub fn hyper(&self, config: &RmsPropConfig) -> VarHyper {
        let c = self.effective_config(config);
        let (lr_multiplier, lr_addend) = match self.learning_rate {
            Some(lr) => (0.0, (lr * self.lr_multiplier) as f32),
            None => (self.lr_multiplier as f32, 0.0),
        };
        let coefficient = |d: WeightDecay| match d {
            WeightDecay::None => 0.0,
            WeightDecay::Decoupled(w) | WeightDecay::L2(w) => w as f32,
        };
        let decay = c.weight_decay() != WeightDecay::None;
        let weight_decay = coefficient(match decay {
            true => c.weight_decay(),
            false => config.weight_decay(),
        });
        let momentum = match c.has_momentum() {
            true => c.momentum(),
            false => config.momentum(),
        };
        VarHyper {
            lr_multiplier,
            lr_addend,
            rho: c.rho() as f32,
            one_minus_rho: (1.0 - c.rho()) as f32,
            momentum: momentum as f32,
            epsilon: c.epsilon() as f32,
            weight_decay,
            momentum_slot: c.has_momentum(),
            centered: c.centered(),
            maximize: c.maximize(),
            decay,
            rowwise: self.rowwise_velocity,
        }
    }
}

/// Why a variable updated with `c` (its effective configuration) and `storage` cannot keep a row-wise
/// velocity, if it cannot: (option, value, requirement).
pub(crate) fn rowwise_conflict(
    c: &RmsPropConfig,
    storage: crate::dtype::StorageTypes,
) -> Option<(&'static str, String, &'static str)> {
    let why = match () {
        _ if c.centered() => (
            "centered",
            "true with rowwise_velocity".into(),
            "cannot be combined with a row-wise velocity (the average gradient would be per element \
             and its square would not match the row's mean: not supported)",
        ),
        _ if !storage.is_f32() || storage.copy.is_some() => (
            "storage",
            format!("{storage:?} with rowwise_velocity"),
            "must be f32 for every role, without a copy, with a row-wise velocity (its kernels \
             are written for f32 pools only, not yet for 16-bit or q8 state)",
        ),
        _ if c.sparse_mode() == crate::SparseMode::LazyExact => (
            "rowwise_velocity",
            "true with sparse_mode lazy_exact".into(),
            "cannot be combined with sparse_mode lazy_exact (its closed-form catch-up is per \
             element; not yet)",
        ),
        _ if c.duplicate_indices() != crate::DuplicateIndices::Sum => (
            "rowwise_velocity",
            format!("true with duplicate_indices {:?}", c.duplicate_indices()),
            "needs duplicate_indices sum (sequential pairs and Keras 3's squares are per element)",
        ),
        _ if c.use_ema()
            || c.gradient_accumulation_steps().is_some()
            || c.loss_scale_factor().is_some() =>
        {
            (
                "rowwise_velocity",
                "true with use_ema, gradient_accumulation_steps or loss_scale_factor".into(),
                "cannot be combined with Keras's base-class options yet (their passes and \
                 checkpoints are written for element-wise state)",
            )
        }
        _ => return None,
    };
    Some(why)
}

/// Bits of the `VAR_OPTIONS` pipeline constant (`VO_*` in `rmsprop_update.wgsl`): which fields of the
/// options table some variable sets to a value other than the configuration's. The kernels read only
/// those (on lavapipe every read indexed by the variable costs a load per invocation).
pub(crate) mod fields {
    /// The learning-rate multiplier.
    pub const LR_MUL: u32 = 1;
    /// The learning-rate addend (a variable's own constant rate).
    pub const LR_ADD: u32 = 2;
    /// `rho` and `1 - rho`.
    pub const RHO: u32 = 4;
    /// The momentum coefficient.
    pub const MOMENTUM: u32 = 8;
    /// Epsilon.
    pub const EPSILON: u32 = 16;
    /// The weight decay coefficient.
    pub const WEIGHT_DECAY: u32 = 32;
    /// The flags (momentum slot, centered, maximize, decay).
    pub const FLAGS: u32 = 64;
}

/// What the kernels are built for, given the configuration and every variable's values: the pooled
/// slots any variable needs, the weight decay mode, and which fields of the options table are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Variant {
    pub momentum: bool,
    pub centered: bool,
    pub decoupled: bool,
    pub l2: bool,
    /// The `VAR_OPTIONS` constant: the [`fields`] some variable sets to a value other than the
    /// configuration's (0: the kernels do not read the table).
    pub var_options: u32,
    /// Some variable keeps a row-wise velocity: the row-wise kernels are built.
    pub rowwise: bool,
}

impl Variant {
    /// The variant of `config` for `hypers` (one per variable; frozen variables included, so that
    /// unfreezing one needs no rebuild). The configuration's own needs always count, so that adding a
    /// variable without options never rebuilds anything.
    pub fn of(config: &RmsPropConfig, hypers: impl IntoIterator<Item = VarHyper>) -> Variant {
        let default = VarOptions::default().hyper(config);
        let mut v = Variant {
            momentum: config.has_momentum(),
            centered: config.centered(),
            decoupled: matches!(config.weight_decay(), WeightDecay::Decoupled(_)),
            l2: matches!(config.weight_decay(), WeightDecay::L2(_)),
            var_options: 0,
            rowwise: false,
        };
        let natural_l2 = match config.weight_decay() {
            WeightDecay::None => config.preset_kind() == Preset::Torch,
            mode => matches!(mode, WeightDecay::L2(_)),
        };
        for h in hypers {
            v.rowwise |= h.rowwise;
            v.momentum |= h.momentum_slot;
            v.centered |= h.centered;
            if h.decay {
                v.l2 |= natural_l2;
                v.decoupled |= !natural_l2;
            }
            let differs = [
                (h.lr_multiplier != default.lr_multiplier, fields::LR_MUL),
                (h.lr_addend != default.lr_addend, fields::LR_ADD),
                (
                    h.rho != default.rho || h.one_minus_rho != default.one_minus_rho,
                    fields::RHO,
                ),
                (h.momentum != default.momentum, fields::MOMENTUM),
                (h.epsilon != default.epsilon, fields::EPSILON),
                (h.weight_decay != default.weight_decay, fields::WEIGHT_DECAY),
                (
                    (h.momentum_slot, h.centered, h.maximize, h.decay)
                        != (
                            default.momentum_slot,
                            default.centered,
                            default.maximize,
                            default.decay,
                        ),
                    fields::FLAGS,
                ),
            ];
            for (d, bit) in differs {
                if d {
                    v.var_options |= bit;
                }
            }
        }
        v
    }
}

/// Whether `name` contains one of `patterns` (Keras's `exclude_from_weight_decay(var_names=...)`).
pub(crate) fn name_excluded(name: &str, patterns: &[String]) -> bool {
    patterns.iter().any(|p| name.contains(p.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RmsPropConfig;

    fn err_field(r: Result<()>) -> &'static str {
        match r {
            Err(Error::InvalidVarOptions { field, .. }) => field,
            other => panic!("expected InvalidVarOptions, got {other:?}"),
        }
    }

    #[test]
    fn every_bad_value_is_a_typed_error_naming_the_variable_option_and_value() {
        let keras = RmsPropConfig::default();
        let o = |f: &dyn Fn(&mut VarOptions)| {
            let mut o = VarOptions::default();
            f(&mut o);
            o
        };
        let cases: Vec<(VarOptions, &str)> = vec![
            (o(&|o| o.lr_multiplier = -1.0), "lr_multiplier"),
            (o(&|o| o.lr_multiplier = f64::NAN), "lr_multiplier"),
            (o(&|o| o.lr_multiplier = 1e300), "lr_multiplier"),
            (
                o(&|o| o.learning_rate = Some(f64::INFINITY)),
                "learning_rate",
            ),
            (o(&|o| o.learning_rate = Some(-0.1)), "learning_rate"),
            (
                o(&|o| {
                    o.learning_rate = Some(1e30);
                    o.lr_multiplier = 1e30;
                }),
                "learning_rate",
            ),
            (o(&|o| o.weight_decay = Some(-1.0)), "weight_decay"),
            (
                o(&|o| {
                    o.weight_decay = Some(0.1);
                    o.exclude_from_weight_decay = true;
                }),
                "weight_decay",
            ),
            (o(&|o| o.momentum = Some(-0.5)), "momentum"),
            (o(&|o| o.epsilon = Some(f64::NAN)), "epsilon"),
            (o(&|o| o.rho = Some(1.0)), "rho"),
            (o(&|o| o.rho = Some(-0.1)), "rho"),
        ];
        for (opts, field) in cases {
            let e = opts.validate("w1", &keras);
            let text = e.clone().unwrap_err().to_string();
            assert_eq!(err_field(e), field, "{opts:?}");
            assert!(text.contains("\"w1\"") && text.contains(field), "{text}");
        }
        // Conflicts with the configuration.
        let optax = RmsPropConfig::preset(Preset::Optax)
            .bias_correction(true)
            .build()
            .unwrap();
        let rho = o(&|o| o.rho = Some(0.5));
        assert_eq!(err_field(rho.validate("w", &optax)), "rho");
        assert!(o(&|o| o.rho = Some(optax.rho()))
            .validate("w", &optax)
            .is_ok());
        let legacy = RmsPropConfig::preset(Preset::KerasLegacy).build().unwrap();
        assert_eq!(
            err_field(o(&|o| o.momentum = Some(0.9)).validate("w", &legacy)),
            "momentum"
        );
        assert!(o(&|o| o.momentum = Some(0.0))
            .validate("w", &legacy)
            .is_ok());
        assert!(VarOptions::default().validate("w", &keras).is_ok());
    }

    #[test]
    fn default_options_resolve_to_the_configuration_and_overrides_to_their_values() {
        let c = RmsPropConfig::builder()
            .learning_rate(0.01)
            .momentum(0.9)
            .weight_decay(0.1)
            .build()
            .unwrap();
        let d = VarOptions::default().hyper(&c);
        assert_eq!(
            (d.lr_multiplier, d.lr_addend, d.momentum, d.weight_decay),
            (1.0, 0.0, 0.9, 0.1)
        );
        assert!(d.momentum_slot && d.decay && !d.centered && !d.maximize);
        assert_eq!(d.lr(0.01), 0.01);
        assert_eq!(Variant::of(&c, [d, d]).var_options, 0);

        let h = VarOptions {
            learning_rate: Some(0.3),
            lr_multiplier: 0.5,
            momentum: Some(0.0),
            centered: Some(true),
            exclude_from_weight_decay: true,
            ..VarOptions::default()
        }
        .hyper(&c);
        assert_eq!((h.lr_multiplier, h.lr_addend), (0.0, 0.15));
        assert_eq!(h.lr(123.0), 0.15);
        assert!(!h.momentum_slot && h.centered && !h.decay);
        // Without a slot and without decay, the coefficients are the configuration's (not read).
        assert_eq!((h.momentum, h.weight_decay), (0.9, 0.1));
        let v = Variant::of(&c, [d, h]);
        assert!(v.momentum && v.centered && v.decoupled && !v.l2);
        assert_eq!(
            v.var_options,
            fields::LR_MUL | fields::LR_ADD | fields::FLAGS
        );
        // One field each: only that field is read.
        let only = |o: VarOptions| Variant::of(&c, [d, o.hyper(&c)]).var_options;
        let d = VarOptions::default;
        assert_eq!(
            only(VarOptions {
                lr_multiplier: 2.0,
                ..d()
            }),
            fields::LR_MUL
        );
        assert_eq!(
            only(VarOptions {
                rho: Some(0.5),
                ..d()
            }),
            fields::RHO
        );
        assert_eq!(
            only(VarOptions {
                epsilon: Some(0.5),
                ..d()
            }),
            fields::EPSILON
        );
        assert_eq!(
            only(VarOptions {
                momentum: Some(0.5),
                ..d()
            }),
            fields::MOMENTUM
        );
        assert_eq!(
            only(VarOptions {
                weight_decay: Some(0.5),
                ..d()
            }),
            fields::WEIGHT_DECAY
        );
        let excluded = VarOptions {
            exclude_from_weight_decay: true,
            ..d()
        };
        assert_eq!(only(excluded), fields::FLAGS);
        assert_eq!(
            only(VarOptions {
                maximize: Some(true),
                ..d()
            }),
            fields::FLAGS
        );
        assert_eq!(
            only(VarOptions {
                rho: Some(c.rho()),
                frozen: true,
                ..d()
            }),
            0
        );
        let e = h.entries();
        assert_eq!(f32::from_bits(e[0][3]), (1.0 - 0.9f64) as f32);
        assert_eq!(e[1][3], OPT_CENTERED);
    }

    #[test]
    fn a_decay_override_without_configured_decay_takes_the_presets_natural_mode() {
        let wd = VarOptions {
            weight_decay: Some(0.1),
            ..VarOptions::default()
        };
        let torch = RmsPropConfig::preset(Preset::Torch).build().unwrap();
        assert_eq!(
            wd.effective_config(&torch).weight_decay(),
            WeightDecay::L2(0.1)
        );
        let v = Variant::of(&torch, [wd.hyper(&torch)]);
        assert!(v.l2 && !v.decoupled);
        for p in [Preset::Keras, Preset::Optax, Preset::TfRaw] {
            let c = RmsPropConfig::preset(p).build().unwrap();
            assert_eq!(
                wd.effective_config(&c).weight_decay(),
                WeightDecay::Decoupled(0.1)
            );
        }
        // The configuration's mode wins when it has one.
        let l2 = RmsPropConfig::builder()
            .weight_decay_mode(WeightDecay::L2(0.5))
            .build()
            .unwrap();
        assert_eq!(
            wd.effective_config(&l2).weight_decay(),
            WeightDecay::L2(0.1)
        );
    }

    #[test]
    fn tf_raw_keeps_a_momentum_slot_whatever_the_momentum() {
        let tf = RmsPropConfig::preset(Preset::TfRaw).build().unwrap();
        let h = VarOptions {
            momentum: Some(0.0),
            ..VarOptions::default()
        }
        .hyper(&tf);
        assert!(h.momentum_slot);
    }

    #[test]
    fn names_are_matched_as_substrings() {
        let p = vec!["bias".to_string(), "norm".to_string()];
        assert!(name_excluded("dense/bias", &p));
        assert!(name_excluded("layer_norm/gamma", &p));
        assert!(!name_excluded("dense/kernel", &p));
        assert!(!name_excluded("anything", &[]));
    }
}
