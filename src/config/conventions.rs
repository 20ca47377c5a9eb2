//! The conventions a configuration chooses between: presets and each framework's variant of every
//! part of the update.

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
    /// The numbers of [`SparseMode::Dense`] at the cost of [`SparseMode::Lazy`]: each row keeps the
    /// count of its variable's steps up to which it is current (one `u32` per row); a step first
    /// brings the listed rows up to date for the steps they missed, in closed form (velocity and
    /// average gradient times `rho^k`; momentum times `momentum^k` and the variable moved by the
    /// momentum's geometric sum; decoupled decay as `(1 - wd*lr)^k`), then updates them. Reads,
    /// checkpoints and [`crate::RmsProp::catch_up`] bring every row up to date. Needs a closed form:
    /// refused with L2 decay, with Nesterov momentum, and where the learning rate enters the skipped
    /// steps (decoupled decay, or momentum with the rate after the buffer) under a schedule; also with
    /// Keras's base-class options and q8 state (not yet). A step the non-finite policy skips does not
    /// count.
    LazyExact,
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
