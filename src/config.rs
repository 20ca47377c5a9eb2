//! Hyperparameters, with Keras's names, defaults and validation.

use crate::error::{Error, Result};

/// The learning rate: a constant for now; schedules evaluate on the host to one `f32` per step.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum LearningRate {
    /// The same rate at every step.
    Constant(f64),
}

impl LearningRate {
    /// The rate used by the step with 1-based number `step` (the schedule at `step - 1`), as the `f32`
    /// the kernels receive.
    pub fn at_step(&self, step: u64) -> f32 {
        let _ = step;
        match *self {
            LearningRate::Constant(lr) => lr as f32,
        }
    }
}

impl From<f64> for LearningRate {
    fn from(lr: f64) -> Self {
        LearningRate::Constant(lr)
    }
}

/// A validated RMSprop configuration (TensorFlow/Keras semantics).
///
/// Build one with [`RmsPropConfig::builder`]; [`Default`] gives the Keras defaults:
/// `learning_rate = 0.001`, `rho = 0.9`, `momentum = 0.0`, `epsilon = 1e-7`, `centered = false`,
/// `name = "RMSprop"`. A value that Keras would refuse (or that would silently produce NaN) is rejected
/// by [`RmsPropConfigBuilder::build`] with [`Error::InvalidConfig`] naming the field and the value.
///
/// ```
/// use wgpu_rmsprop::RmsPropConfig;
/// let cfg = RmsPropConfig::builder().learning_rate(0.01).momentum(0.9).centered(true).build()?;
/// assert_eq!(cfg.rho(), 0.9);
/// let err = RmsPropConfig::builder().rho(1.5).build().unwrap_err();
/// assert_eq!(err.to_string(), "`rho` must be in [0, 1). Received: rho=1.5");
/// # Ok::<(), wgpu_rmsprop::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct RmsPropConfig {
    learning_rate: LearningRate,
    rho: f64,
    momentum: f64,
    epsilon: f64,
    centered: bool,
    name: String,
}

impl Default for RmsPropConfig {
    fn default() -> Self {
        RmsPropConfig {
            learning_rate: LearningRate::Constant(0.001),
            rho: 0.9,
            momentum: 0.0,
            epsilon: 1e-7,
            centered: false,
            name: "RMSprop".to_string(),
        }
    }
}

impl RmsPropConfig {
    /// A builder starting from the Keras defaults.
    pub fn builder() -> RmsPropConfigBuilder {
        RmsPropConfigBuilder {
            cfg: RmsPropConfig::default(),
        }
    }

    /// The learning rate (constant or schedule).
    pub fn learning_rate(&self) -> LearningRate {
        self.learning_rate
    }
    /// Decay of the moving averages.
    pub fn rho(&self) -> f64 {
        self.rho
    }
    /// Momentum coefficient; `0` keeps no momentum slot.
    pub fn momentum(&self) -> f64 {
        self.momentum
    }
    /// Added to the second moment inside the square root.
    pub fn epsilon(&self) -> f64 {
        self.epsilon
    }
    /// Whether the centered variant (with an `average_gradient` slot) is used.
    pub fn centered(&self) -> bool {
        self.centered
    }
    /// The optimizer's name, used as a prefix of its wgpu labels.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Whether a `momentum` slot is kept (Keras keeps one only when `momentum > 0`).
    pub fn has_momentum(&self) -> bool {
        self.momentum > 0.0
    }
}

/// Builder for [`RmsPropConfig`]; see there for the defaults.
#[derive(Debug, Clone)]
pub struct RmsPropConfigBuilder {
    cfg: RmsPropConfig,
}

impl RmsPropConfigBuilder {
    /// Sets the learning rate (a number, or a [`LearningRate`]).
    pub fn learning_rate(mut self, lr: impl Into<LearningRate>) -> Self {
        self.cfg.learning_rate = lr.into();
        self
    }
    /// Sets `rho`, the decay of the moving averages; must be in `[0, 1)`.
    pub fn rho(mut self, rho: f64) -> Self {
        self.cfg.rho = rho;
        self
    }
    /// Sets the momentum coefficient; must be finite and `>= 0`.
    pub fn momentum(mut self, momentum: f64) -> Self {
        self.cfg.momentum = momentum;
        self
    }
    /// Sets epsilon; must be finite and `>= 0`.
    pub fn epsilon(mut self, epsilon: f64) -> Self {
        self.cfg.epsilon = epsilon;
        self
    }
    /// Chooses the centered variant.
    pub fn centered(mut self, centered: bool) -> Self {
        self.cfg.centered = centered;
        self
    }
    /// Sets the name (prefix of the optimizer's wgpu labels); must not be empty.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.cfg.name = name.into();
        self
    }

    /// Validates every field and returns the configuration.
    pub fn build(self) -> Result<RmsPropConfig> {
        let c = &self.cfg;
        match c.learning_rate {
            LearningRate::Constant(lr) => {
                check_f32("learning_rate", lr, "must be a finite number >= 0", |x| {
                    x >= 0.0
                })?
            }
        }
        check_f32("rho", c.rho, "must be in [0, 1)", |x| {
            (0.0..1.0).contains(&x)
        })?;
        check_f32(
            "momentum",
            c.momentum,
            "must be a finite number >= 0",
            |x| x >= 0.0,
        )?;
        check_f32("epsilon", c.epsilon, "must be a finite number >= 0", |x| {
            x >= 0.0
        })?;
        if c.name.is_empty() {
            return Err(Error::InvalidConfig {
                field: "name",
                value: "\"\"".into(),
                requirement: "must not be empty",
            });
        }
        Ok(self.cfg)
    }
}

/// Checks `ok(x)`, finiteness, and that `x` stays finite as the `f32` the GPU receives.
fn check_f32(
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
    /// 1-based number of the step being applied.
    pub step: u64,
}

impl RmsPropConfig {
    /// The scalars of the step with 1-based number `step`.
    pub fn scalars(&self, step: u64) -> StepScalars {
        StepScalars {
            lr: self.learning_rate.at_step(step),
            rho: self.rho as f32,
            one_minus_rho: (1.0 - self.rho) as f32,
            momentum: self.momentum as f32,
            epsilon: self.epsilon as f32,
            step,
        }
    }
}
