//! Golden conformance cases (`rmsprop-case/1`): reading, validating, running on the GPU or on the CPU
//! reference, judging, and emitting results. This is the engine of the `replay` example and of the
//! golden tests.
//!
//! A case records the starting variables, the gradients of every step and (optionally) the state
//! expected after every step; see `tests/golden/FORMAT.md` in the repository for the format.
//!
//! Case files come from elsewhere (other generators, other projects, fuzzers), so everything here treats
//! them as untrusted input:
//! - **Strict reading** ([`Case::from_json`]): every key is typed, an unknown key at any level, a value of
//!   the wrong type or a `null` where a value is required is an [`Error::InvalidCase`] naming the field
//!   path (`config.rho: expected a number, got string "0.5"`). Known features the crate does not
//!   implement (the Keras base-class features with float16/bfloat16) are reported by
//!   [`Case::unsupported`] naming the keys.
//! - **Reduced precision**: a `float16`/`bfloat16` case runs with every role stored in that type
//!   ([`crate::dtype::StorageTypes::all`]); its values are rounded to the type when it is read, and it is
//!   judged with its per-quantity tolerances.
//! - **Bounded memory** ([`Limits`]): the text, the parsed case and the run's state are checked against a
//!   budget before they are allocated; the streaming runs ([`Case::run_gpu_streaming`],
//!   [`Case::run_reference_streaming`]) hand over one step's state at a time, so memory does not grow
//!   with the number of steps.
//! - **Safe output** ([`Replay`], [`EmitDir`]): emitted files are named from a sanitized name, checked to
//!   lie in the output folder, unique within a run; printed names are escaped ([`escape_name`]).
//! - **Results that read back** ([`ResultWriter`], [`read_emitted`]): non-finite numbers are written as
//!   `"NaN"`, `"Infinity"`, `"-Infinity"`, which the readers accept.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::schedule::Schedule;

mod config;
mod emit;
mod judge;
mod parse;
mod run;
mod session;
mod values;

pub use emit::{
    emit_json, escape_name, escape_text, read_emitted, sanitize_file_stem, EmitDir, EmitTarget,
    EmittedResults, ResultWriter,
};
pub use judge::{Judge, Verdict, LEARNING_RATE_RTOL};
pub use session::{CaseReport, Outcome, Replay, ReplayOptions};
pub use values::{INFINITY, NAN, NEG_INFINITY};

/// Default memory budget of one case (4 GiB): far above any real case, low enough that a hostile one is
/// refused before it takes the machine's memory.
pub const DEFAULT_MEMORY_BUDGET: u64 = 4 << 30;

/// Upper bound on the bytes that reading takes per byte of case text. The worst case is a list of
/// one-digit sparse indices (`0,`: 2 bytes of text, an 8-byte `i64` in a vector that may have doubled
/// its capacity), so a text longer than `budget / 16` is refused before it is parsed.
pub const PARSE_EXPANSION: u64 = 16;

/// How much memory reading and running one case may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes one case may take on the host (text, parsed case, state, read-backs; on a software
    /// adapter such as lavapipe the GPU buffers are host memory too and are counted).
    pub memory_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: DEFAULT_MEMORY_BUDGET,
        }
    }
}

impl Limits {
    /// A budget of `memory_bytes`.
    pub fn new(memory_bytes: u64) -> Self {
        Limits { memory_bytes }
    }

    /// The longest case text this budget reads ([`PARSE_EXPANSION`]).
    pub fn max_text_bytes(&self) -> u64 {
        self.memory_bytes / PARSE_EXPANSION
    }
}

/// One variable of a case.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a variable object")]
pub struct CaseVariable {
    /// Name.
    pub name: String,
    /// Shape (`[]` = scalar).
    #[serde(deserialize_with = "values::dims")]
    pub shape: Vec<usize>,
    /// `prod(shape)` initial values, row-major.
    #[serde(deserialize_with = "values::f32s")]
    pub init: Vec<f32>,
    /// Keras `exclude_from_weight_decay`: decoupled weight decay skips this variable.
    #[serde(default, deserialize_with = "values::some")]
    pub exclude_from_weight_decay: Option<bool>,
    /// torch parameter-group settings: the variable is updated with `config` where these keys take
    /// the given values.
    #[serde(default, deserialize_with = "values::some_object")]
    pub overrides: Option<VariableOverrides>,
}

impl CaseVariable {
    /// The variable's options: its torch parameter-group overrides and Keras weight-decay exclusion.
    pub fn options(&self) -> crate::VarOptions {
        let o = self.overrides.clone().unwrap_or(VariableOverrides {
            learning_rate: None,
            rho: None,
            momentum: None,
            epsilon: None,
            centered: None,
            weight_decay: None,
            maximize: None,
        });
        crate::VarOptions {
            learning_rate: o.learning_rate,
            rho: o.rho,
            momentum: o.momentum,
            epsilon: o.epsilon,
            centered: o.centered,
            weight_decay: o.weight_decay,
            maximize: o.maximize,
            exclude_from_weight_decay: self.exclude_from_weight_decay == Some(true),
            ..crate::VarOptions::default()
        }
    }
}

/// The per-variable settings of a torch parameter group (FORMAT.md, "Parameter groups"), run as the
/// variable's [`crate::VarOptions`].
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, expecting = "an object of per-variable settings")]
pub struct VariableOverrides {
    /// Learning rate of the group.
    #[serde(default, deserialize_with = "values::some_num")]
    pub learning_rate: Option<f64>,
    /// rho (torch `alpha`).
    #[serde(default, deserialize_with = "values::some_num")]
    pub rho: Option<f64>,
    /// Momentum.
    #[serde(default, deserialize_with = "values::some_num")]
    pub momentum: Option<f64>,
    /// Epsilon.
    #[serde(default, deserialize_with = "values::some_num")]
    pub epsilon: Option<f64>,
    /// Centered.
    #[serde(default, deserialize_with = "values::some")]
    pub centered: Option<bool>,
    /// Weight decay.
    #[serde(default, deserialize_with = "values::some_num")]
    pub weight_decay: Option<f64>,
    /// Maximize.
    #[serde(default, deserialize_with = "values::some")]
    pub maximize: Option<bool>,
}

/// The gradient of one variable at one step.
#[derive(Debug, Clone, PartialEq)]
pub enum CaseGradient {
    /// `prod(shape)` values.
    Dense {
        /// The values.
        values: Vec<f32>,
    },
    /// Row indices along axis 0 and one row of values per index.
    Sparse {
        /// Row indices (may repeat, be unsorted, be empty).
        indices: Vec<i64>,
        /// `len(indices) * row_len` values.
        values: Vec<f32>,
    },
}

/// One step of a case.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a step object")]
pub struct CaseStep {
    /// One gradient per variable, in the order of the case's variables.
    pub grads: Vec<CaseGradient>,
}

/// The state after one step as an implementation computed it (what [`Case::run_gpu`] returns and
/// `replay --emit` writes; [`read_emitted`] reads it back).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a state object")]
pub struct StepState {
    /// 1-based step number.
    #[serde(deserialize_with = "values::uint")]
    pub step: u64,
    /// The learning rate used at that step.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "values::ser_opt_f64",
        deserialize_with = "values::some_float"
    )]
    pub learning_rate: Option<f64>,
    /// One flat array per variable.
    #[serde(
        serialize_with = "values::ser_f32_lists",
        deserialize_with = "values::f32_lists"
    )]
    pub variables: Vec<Vec<f32>>,
    /// Slot name (`velocity`, `momentum`, `average_gradient`) to one flat array per variable.
    #[serde(
        serialize_with = "values::ser_slots",
        deserialize_with = "values::expected_slots"
    )]
    pub slots: ExpectedSlots,
}

/// Slot name to one flat array per variable, `None` where that variable has no such slot.
pub type ExpectedSlots = BTreeMap<String, Vec<Option<Vec<f32>>>>;

/// The state a case expects after one step (`expected[t-1]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, expecting = "an expected-state object")]
pub struct ExpectedState {
    /// 1-based step number, compared with the step the implementation reports when present.
    #[serde(default, deserialize_with = "values::some_uint")]
    pub step: Option<u64>,
    /// The learning rate used at that step, compared when present (relative tolerance
    /// [`LEARNING_RATE_RTOL`]).
    #[serde(default, deserialize_with = "values::some_float")]
    pub learning_rate: Option<f64>,
    /// One flat array per variable.
    #[serde(deserialize_with = "values::f32_lists")]
    pub variables: Vec<Vec<f32>>,
    /// Slot name to one flat array per variable; `None` (`null` in the file) where that variable has
    /// no such slot: nothing is compared there.
    #[serde(deserialize_with = "values::expected_slots")]
    pub slots: ExpectedSlots,
}

/// `|actual - expected| <= atol + rtol * |expected|`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "an object {\"rtol\": r, \"atol\": a}"
)]
pub struct TolerancePair {
    /// Relative tolerance.
    #[serde(deserialize_with = "values::num")]
    pub rtol: f64,
    /// Absolute tolerance.
    #[serde(deserialize_with = "values::num")]
    pub atol: f64,
}

/// The tolerance of a case: a case-wide pair and optional refinements per quantity.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a tolerance object")]
pub struct Tolerance {
    /// Relative tolerance (everything without a refinement).
    #[serde(deserialize_with = "values::num")]
    pub rtol: f64,
    /// Absolute tolerance (everything without a refinement).
    #[serde(deserialize_with = "values::num")]
    pub atol: f64,
    /// Replaces the case-wide pair for the variables.
    #[serde(default, deserialize_with = "values::some_object")]
    pub variables: Option<TolerancePair>,
    /// Replaces the case-wide pair for the named slots.
    #[serde(default, deserialize_with = "values::object_map")]
    pub slots: BTreeMap<String, TolerancePair>,
}

impl Tolerance {
    /// The pair that applies to the variables.
    pub fn for_variables(&self) -> TolerancePair {
        self.variables.unwrap_or(TolerancePair {
            rtol: self.rtol,
            atol: self.atol,
        })
    }

    /// The pair that applies to slot `name`.
    pub fn for_slot(&self, name: &str) -> TolerancePair {
        self.slots.get(name).copied().unwrap_or(TolerancePair {
            rtol: self.rtol,
            atol: self.atol,
        })
    }
}

/// `config.learning_rate`: a number or a Keras schedule.
#[derive(Debug, Clone, PartialEq)]
pub enum CaseLearningRate {
    /// A constant rate.
    Constant(f64),
    /// A schedule evaluated at `s = t - 1`.
    Schedule(Schedule),
}

/// `config.duplicate_indices` (FORMAT.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaseDuplicates {
    /// `"sum"`.
    Sum,
    /// `"sequential"`.
    Sequential,
    /// `"keras3"`.
    Keras3,
}

/// A case's `config`, every key typed. The first nine keys are required (the last four of them may be
/// `null` = not used); the others are optional but, when present, must not be `null` (except
/// `ema_overwrite_frequency`, which FORMAT.md allows to be `null`).
#[derive(Debug, Clone, PartialEq)]
pub struct CaseConfig {
    /// A number or a schedule.
    pub learning_rate: CaseLearningRate,
    /// Decay of the moving averages.
    pub rho: f64,
    /// Momentum coefficient (0 = none).
    pub momentum: f64,
    /// Epsilon.
    pub epsilon: f64,
    /// Centered variant.
    pub centered: bool,
    /// Per-variable norm clip, or none.
    pub clipnorm: Option<f64>,
    /// Element-wise clip, or none.
    pub clipvalue: Option<f64>,
    /// Joint norm clip, or none.
    pub global_clipnorm: Option<f64>,
    /// Weight decay (the preset's convention), or none.
    pub weight_decay: Option<f64>,
    /// `true` = lazy, `false` = dense; `None` = the preset's rule.
    pub sparse_lazy: Option<bool>,
    /// How repeated sparse indices combine; `None` = the preset's rule.
    pub duplicate_indices: Option<CaseDuplicates>,
    /// Starting velocity.
    pub initial_accumulator_value: Option<f64>,
    /// optax: epsilon inside the square root.
    pub eps_in_sqrt: Option<bool>,
    /// optax: bias correction.
    pub bias_correction: Option<bool>,
    /// optax: Nesterov momentum.
    pub nesterov: Option<bool>,
    /// torch: maximize.
    pub maximize: Option<bool>,
    /// Keras EMA of the variables ([`crate::RmsPropConfigBuilder::use_ema`]).
    pub use_ema: Option<bool>,
    /// Keras EMA decay.
    pub ema_momentum: Option<f64>,
    /// Keras EMA overwrite period; `Some(None)` = written as `null`.
    pub ema_overwrite_frequency: Option<Option<u64>>,
    /// Keras gradient accumulation ([`crate::RmsPropConfigBuilder::gradient_accumulation_steps`]).
    pub gradient_accumulation_steps: Option<u64>,
    /// Keras loss scaling ([`crate::RmsPropConfigBuilder::loss_scale_factor`]).
    pub loss_scale_factor: Option<f64>,
    /// Not in the file: set by `replay --sparse-mode lazy-exact` for a case with sparse steps, a case
    /// in sparse mode dense runs with [`crate::SparseMode::LazyExact`] instead (expecting the same
    /// numbers).
    pub lazy_exact: bool,
}

/// A golden case, parsed and checked for internal consistency.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a case object")]
pub struct Case {
    /// Format tag, `rmsprop-case/1`.
    pub format: String,
    /// Element type of everything in the case (`float32`, `float16` or `bfloat16`; see
    /// [`Case::element_type`]).
    pub dtype: String,
    /// Unique name. Untrusted: print it with [`escape_name`], name files with [`sanitize_file_stem`].
    pub name: String,
    /// The framework whose behaviour the case records.
    pub source: String,
    /// Which update rule applies (`keras`, `keras_legacy`, `tf_raw`, `tf1`, `torch`, `optax`).
    pub semantics: String,
    /// Hyperparameters.
    pub config: CaseConfig,
    /// The variables.
    #[serde(deserialize_with = "values::objects")]
    pub variables: Vec<CaseVariable>,
    /// The steps.
    #[serde(deserialize_with = "values::objects")]
    pub steps: Vec<CaseStep>,
    /// The state expected after each step (absent in blind cases; `null` is not allowed).
    #[serde(default, deserialize_with = "values::some_objects")]
    pub expected: Option<Vec<ExpectedState>>,
    /// Tolerance of the comparison.
    #[serde(deserialize_with = "values::object")]
    pub tolerance: Tolerance,
}

fn invalid(name: &str, message: impl Into<String>) -> Error {
    Error::InvalidCase {
        name: name.to_string(),
        message: message.into(),
    }
}
