//! Golden conformance cases (`rmsprop-case/1`): reading, validating, running on the GPU or on the CPU
//! reference, judging, and emitting results. This is the engine of the `replay` example and of the
//! golden tests.
//!
//! A case records the starting variables, the gradients of every step and (optionally) the state
//! expected after every step; see `tests/golden/FORMAT.md` in the repository for the format.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{DuplicateIndices, EpsilonPlacement, Preset, RmsPropConfig, SparseMode};
use crate::context::GpuContext;
use crate::error::{Error, Result};
use crate::optimizer::{Gradient, RmsProp, VarId};
use crate::pool::Slot;
use crate::reference::{RefGradient, Reference};
use crate::schedule::Schedule;
use crate::sparse::Indices;

/// One variable of a case.
#[derive(Debug, Clone, Deserialize)]
pub struct CaseVariable {
    /// Name.
    pub name: String,
    /// Shape (`[]` = scalar).
    pub shape: Vec<usize>,
    /// `prod(shape)` initial values, row-major.
    pub init: Vec<f32>,
}

/// The gradient of one variable at one step.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
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
#[derive(Debug, Clone, Deserialize)]
pub struct CaseStep {
    /// One gradient per variable, in the order of the case's variables.
    pub grads: Vec<CaseGradient>,
}

/// The state after one step: what a case expects, or what an implementation computed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepState {
    /// 1-based step number.
    pub step: u64,
    /// The learning rate used at that step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learning_rate: Option<f64>,
    /// One flat array per variable.
    pub variables: Vec<Vec<f32>>,
    /// Slot name (`velocity`, `momentum`, `average_gradient`) to one flat array per variable.
    #[serde(default)]
    pub slots: BTreeMap<String, Vec<Vec<f32>>>,
}

/// `|actual - expected| <= atol + rtol * |expected|`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct Tolerance {
    /// Relative tolerance.
    pub rtol: f64,
    /// Absolute tolerance.
    pub atol: f64,
}

/// A golden case, parsed and checked for internal consistency.
#[derive(Debug, Clone, Deserialize)]
pub struct Case {
    /// Format tag, `rmsprop-case/1`.
    #[serde(default)]
    pub format: String,
    /// Element type of everything in the case (`float32`).
    #[serde(default)]
    pub dtype: String,
    /// Unique name.
    pub name: String,
    /// The framework whose behaviour the case records.
    #[serde(default)]
    pub source: String,
    /// Which update rule applies (`keras`, `keras_legacy`, `tf_raw`, `tf1`, `torch`, `optax`).
    pub semantics: String,
    /// Hyperparameters, as in the file (`null` = not used).
    pub config: BTreeMap<String, Value>,
    /// The variables.
    pub variables: Vec<CaseVariable>,
    /// The steps.
    pub steps: Vec<CaseStep>,
    /// The state expected after each step (absent in blind cases).
    #[serde(default)]
    pub expected: Option<Vec<StepState>>,
    /// Tolerance of the comparison.
    pub tolerance: Tolerance,
}

fn invalid(name: &str, message: impl Into<String>) -> Error {
    Error::InvalidCase {
        name: name.to_string(),
        message: message.into(),
    }
}

impl Case {
    /// Parses and validates a case from JSON text.
    pub fn from_json(text: &str) -> Result<Case> {
        let case: Case = serde_json::from_str(text).map_err(|e| {
            // Name the case if at least its name can be read.
            let name = serde_json::from_str::<Value>(text)
                .ok()
                .and_then(|v| v.get("name").and_then(Value::as_str).map(str::to_string))
                .unwrap_or_else(|| "?".into());
            invalid(&name, e.to_string())
        })?;
        case.validate()?;
        Ok(case)
    }

    /// Reads a case from a file.
    pub fn from_path(path: &std::path::Path) -> Result<Case> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned());
            invalid(
                &stem.unwrap_or_default(),
                format!("{}: {e}", path.display()),
            )
        })?;
        Case::from_json(&text)
    }

    fn validate(&self) -> Result<()> {
        let n = &self.name;
        if !self.format.is_empty() && self.format != "rmsprop-case/1" {
            return Err(invalid(
                n,
                format!("format {:?}, expected \"rmsprop-case/1\"", self.format),
            ));
        }
        for v in &self.variables {
            let len: usize = v.shape.iter().product();
            if v.init.len() != len {
                return Err(invalid(
                    n,
                    format!(
                        "variable {:?}: shape {:?} needs {len} values, init has {}",
                        v.name,
                        v.shape,
                        v.init.len()
                    ),
                ));
            }
        }
        for (t, step) in self.steps.iter().enumerate() {
            if step.grads.len() != self.variables.len() {
                return Err(invalid(
                    n,
                    format!(
                        "step {}: {} gradients for {} variables",
                        t + 1,
                        step.grads.len(),
                        self.variables.len()
                    ),
                ));
            }
            for (g, v) in step.grads.iter().zip(&self.variables) {
                let len: usize = v.shape.iter().product();
                match g {
                    CaseGradient::Dense { values } if values.len() != len => {
                        return Err(invalid(
                            n,
                            format!(
                            "step {}: dense gradient of {:?} has {} values, shape {:?} needs {len}",
                            t + 1,
                            v.name,
                            values.len(),
                            v.shape
                        ),
                        ))
                    }
                    CaseGradient::Sparse { indices, values } => {
                        let Some(&rows) = v.shape.first() else {
                            return Err(invalid(
                                n,
                                format!("step {}: sparse gradient of scalar {:?}", t + 1, v.name),
                            ));
                        };
                        let row_len: usize = v.shape[1..].iter().product();
                        if let Some(&bad) =
                            indices.iter().find(|&&i| i < 0 || i as u64 >= rows as u64)
                        {
                            return Err(invalid(
                                n,
                                format!(
                                    "step {}: index {bad} of {:?} is outside [0, {rows})",
                                    t + 1,
                                    v.name
                                ),
                            ));
                        }
                        if values.len() != indices.len() * row_len {
                            return Err(invalid(
                                n,
                                format!(
                                    "step {}: sparse gradient of {:?} has {} values, {} indices x row length {row_len} need {}",
                                    t + 1,
                                    v.name,
                                    values.len(),
                                    indices.len(),
                                    indices.len() * row_len
                                ),
                            ));
                        }
                    }
                    _ => {}
                }
            }
        }
        if let Some(expected) = &self.expected {
            if expected.len() != self.steps.len() {
                return Err(invalid(
                    n,
                    format!(
                        "{} expected entries for {} steps",
                        expected.len(),
                        self.steps.len()
                    ),
                ));
            }
        }
        Ok(())
    }

    fn number(&self, key: &str) -> Option<f64> {
        self.config.get(key).and_then(Value::as_f64)
    }

    fn flag(&self, key: &str) -> Option<bool> {
        self.config.get(key).and_then(Value::as_bool)
    }

    /// Why this crate cannot run the case, or `None` when it can: the crate computes in float32 only.
    pub fn unsupported(&self) -> Option<String> {
        (!self.dtype.is_empty() && self.dtype != "float32")
            .then(|| format!("dtype {:?} (float32 only)", self.dtype))
    }

    /// The optimizer configuration the case describes: its semantics as a [`Preset`], every key of its
    /// `config` as the matching knob.
    pub fn optimizer_config(&self) -> Result<RmsPropConfig> {
        let n = &self.name;
        let preset = Preset::from_name(&self.semantics)
            .ok_or_else(|| invalid(n, format!("unknown semantics {:?}", self.semantics)))?;
        let mut b = RmsPropConfig::preset(preset);
        match self.config.get("learning_rate") {
            Some(Value::Number(x)) => b = b.learning_rate(x.as_f64().unwrap_or(f64::NAN)),
            Some(v @ Value::Object(_)) => b = b.learning_rate(parse_schedule(n, v)?),
            Some(Value::Null) | None => {}
            Some(v) => {
                return Err(invalid(
                    n,
                    format!("learning_rate {v} is neither a number nor a schedule"),
                ))
            }
        }
        if let Some(x) = self.number("rho") {
            b = b.rho(x);
        }
        if let Some(x) = self.number("momentum") {
            b = b.momentum(x);
        }
        if let Some(x) = self.number("epsilon") {
            b = b.epsilon(x);
        }
        if let Some(c) = self.flag("centered") {
            b = b.centered(c);
        }
        if let Some(x) = self.number("clipnorm") {
            b = b.clipnorm(x);
        }
        if let Some(x) = self.number("clipvalue") {
            b = b.clipvalue(x);
        }
        if let Some(x) = self.number("global_clipnorm") {
            b = b.global_clipnorm(x);
        }
        if let Some(x) = self.number("weight_decay") {
            b = b.weight_decay(x);
        }
        if let Some(x) = self.number("initial_accumulator_value") {
            b = b.initial_accumulator_value(x);
        }
        if let Some(inside) = self.flag("eps_in_sqrt") {
            b = b.epsilon_placement(if inside {
                EpsilonPlacement::InsideSqrt
            } else {
                EpsilonPlacement::OutsideSqrt
            });
        }
        if let Some(x) = self.flag("bias_correction") {
            b = b.bias_correction(x);
        }
        if let Some(x) = self.flag("nesterov") {
            b = b.nesterov(x);
        }
        if let Some(x) = self.flag("maximize") {
            b = b.maximize(x);
        }
        match self.config.get("sparse_mode").and_then(Value::as_str) {
            Some("lazy") => b = b.sparse_mode(SparseMode::Lazy),
            Some("dense") => b = b.sparse_mode(SparseMode::Dense),
            Some(other) => return Err(invalid(n, format!("unknown sparse_mode {other:?}"))),
            None => {}
        }
        match self.config.get("duplicate_indices").and_then(Value::as_str) {
            Some("sum") => b = b.duplicate_indices(DuplicateIndices::Sum),
            Some("sequential") => b = b.duplicate_indices(DuplicateIndices::Sequential),
            Some("keras3") => b = b.duplicate_indices(DuplicateIndices::Keras3),
            Some(other) => return Err(invalid(n, format!("unknown duplicate_indices {other:?}"))),
            None => {}
        }
        b.build().map_err(|e| invalid(n, e.to_string()))
    }

    fn check_supported(&self) -> Result<()> {
        match self.unsupported() {
            Some(what) => Err(Error::Unsupported {
                name: self.name.clone(),
                what,
            }),
            None => Ok(()),
        }
    }

    fn record_state(
        &self,
        step: u64,
        lr: f32,
        vars: Vec<Vec<f32>>,
        slots: BTreeMap<String, Vec<Vec<f32>>>,
    ) -> StepState {
        StepState {
            step,
            learning_rate: Some(f64::from(lr)),
            variables: vars,
            slots,
        }
    }

    /// Runs the case on the GPU, reading back every variable and slot after every step.
    pub fn run_gpu(&self, ctx: &GpuContext) -> Result<Vec<StepState>> {
        self.run_gpu_resumed(ctx, None)
    }

    fn build(&self, ctx: &GpuContext) -> Result<(RmsProp, Vec<VarId>)> {
        let mut opt = RmsProp::new(ctx, self.optimizer_config()?)?;
        let ids = self
            .variables
            .iter()
            .map(|v| opt.add_variable(&v.name, &v.shape, &v.init))
            .collect::<Result<Vec<_>>>()?;
        Ok((opt, ids))
    }

    /// As [`Case::run_gpu`]; with `resume = Some((k, file))`, after step `k` the state is saved to `file`
    /// (variables included), the optimizer is dropped, a new one is built and restored from the file,
    /// and the remaining steps run on it. The results must be bit-identical to an uninterrupted run.
    pub fn run_gpu_resumed(
        &self,
        ctx: &GpuContext,
        resume: Option<(usize, &std::path::Path)>,
    ) -> Result<Vec<StepState>> {
        self.check_supported()?;
        let (mut opt, mut ids) = self.build(ctx)?;
        let mut out = Vec::with_capacity(self.steps.len());
        for (t, step) in self.steps.iter().enumerate() {
            let grads: Vec<(VarId, Gradient)> = ids
                .iter()
                .zip(&step.grads)
                .map(|(&id, g)| {
                    (
                        id,
                        match g {
                            CaseGradient::Dense { values } => Gradient::Dense(values),
                            CaseGradient::Sparse { indices, values } => Gradient::Sparse {
                                indices: Indices::I64(indices),
                                values,
                            },
                        },
                    )
                })
                .collect();
            let n = opt.apply(&grads)?;
            let mut vars = Vec::new();
            let mut slots: BTreeMap<String, Vec<Vec<f32>>> = BTreeMap::new();
            for &id in &ids {
                vars.push(opt.read_variable(id)?);
                for slot in opt.slots() {
                    let values = opt.read_slot(id, slot)?;
                    slots
                        .entry(slot.name().to_string())
                        .or_default()
                        .push(values);
                }
            }
            out.push(self.record_state(
                n,
                opt.last_learning_rate().unwrap_or(f32::NAN),
                vars,
                slots,
            ));
            if let Some((k, file)) = resume {
                if t + 1 == k {
                    opt.save_checkpoint(file, true)?;
                    drop(opt);
                    (opt, ids) = self.build(ctx)?;
                    opt.load_checkpoint(file)?;
                }
            }
        }
        Ok(out)
    }

    /// Runs the case on the CPU reference.
    pub fn run_reference(&self) -> Result<Vec<StepState>> {
        self.check_supported()?;
        let config = self.optimizer_config()?;
        let mut r = Reference::new(config.clone());
        for v in &self.variables {
            r.add_variable(&v.shape, &v.init);
        }
        let mut out = Vec::with_capacity(self.steps.len());
        for step in &self.steps {
            let indices: Vec<Vec<usize>> = step
                .grads
                .iter()
                .map(|g| match g {
                    CaseGradient::Sparse { indices, .. } => {
                        indices.iter().map(|&i| i as usize).collect()
                    }
                    CaseGradient::Dense { .. } => Vec::new(),
                })
                .collect();
            let grads: Vec<Option<RefGradient>> = step
                .grads
                .iter()
                .zip(&indices)
                .map(|(g, idx)| {
                    Some(match g {
                        CaseGradient::Dense { values } => RefGradient::Dense(values),
                        CaseGradient::Sparse { values, .. } => RefGradient::Sparse {
                            indices: idx,
                            values,
                        },
                    })
                })
                .collect();
            let lr = config.scalars(r.iterations + 1)?.lr;
            r.step(&grads)?;
            let mut slots: BTreeMap<String, Vec<Vec<f32>>> = BTreeMap::new();
            for var in &r.vars {
                slots
                    .entry(Slot::Velocity.name().into())
                    .or_default()
                    .push(var.v.clone());
                if let Some(m) = &var.m {
                    slots
                        .entry(Slot::Momentum.name().into())
                        .or_default()
                        .push(m.clone());
                }
                if let Some(a) = &var.a {
                    slots
                        .entry(Slot::AverageGradient.name().into())
                        .or_default()
                        .push(a.clone());
                }
            }
            let vars = r.vars.iter().map(|v| v.x.clone()).collect();
            out.push(self.record_state(r.iterations, lr, vars, slots));
        }
        Ok(out)
    }

    /// Compares `actual` with the case's `expected` (every variable and every listed slot at every
    /// step). `None` when the case has no expected values.
    pub fn judge(&self, actual: &[StepState]) -> Option<Verdict> {
        let expected = self.expected.as_ref()?;
        let tol = self.tolerance;
        let mut v = Verdict {
            pass: true,
            max_abs: 0.0,
            max_rel: 0.0,
            worst: None,
        };
        if actual.len() != expected.len() {
            v.fail(format!(
                "{} steps computed, {} expected",
                actual.len(),
                expected.len()
            ));
            return Some(v);
        }
        for (e, a) in expected.iter().zip(actual) {
            let t = e.step;
            v.arrays(
                &format!("step {t} variables"),
                &e.variables,
                &a.variables,
                tol,
            );
            for (slot, exp) in &e.slots {
                match a.slots.get(slot) {
                    Some(act) => v.arrays(&format!("step {t} {slot}"), exp, act, tol),
                    None => v.fail(format!("step {t}: slot {slot} not computed")),
                }
            }
        }
        Some(v)
    }
}

/// The outcome of [`Case::judge`].
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// Every element within tolerance.
    pub pass: bool,
    /// Largest absolute error.
    pub max_abs: f64,
    /// Largest relative error (over non-zero expected values).
    pub max_rel: f64,
    /// The first problem found, if any.
    pub worst: Option<String>,
}

impl Verdict {
    fn fail(&mut self, why: String) {
        self.pass = false;
        self.worst.get_or_insert(why);
    }

    fn arrays(&mut self, label: &str, expected: &[Vec<f32>], actual: &[Vec<f32>], tol: Tolerance) {
        if expected.len() != actual.len() {
            self.fail(format!(
                "{label}: {} arrays computed, {} expected",
                actual.len(),
                expected.len()
            ));
            return;
        }
        for (k, (e, a)) in expected.iter().zip(actual).enumerate() {
            if e.len() != a.len() {
                self.fail(format!(
                    "{label}[{k}]: {} values computed, {} expected",
                    a.len(),
                    e.len()
                ));
                continue;
            }
            for (i, (&ev, &av)) in e.iter().zip(a).enumerate() {
                let (ev, av) = (f64::from(ev), f64::from(av));
                let d = (av - ev).abs();
                if !av.is_finite() || d > tol.atol + tol.rtol * ev.abs() {
                    self.fail(format!("{label}[{k}][{i}]: expected {ev}, got {av}"));
                }
                if d.is_finite() {
                    self.max_abs = self.max_abs.max(d);
                    if ev != 0.0 {
                        self.max_rel = self.max_rel.max(d / ev.abs());
                    }
                }
            }
        }
    }
}

/// Parses a Keras schedule object (`{"schedule": name, ...constructor arguments...}`) with Keras's defaults.
fn parse_schedule(case: &str, v: &Value) -> Result<Schedule> {
    let name = v.get("schedule").and_then(Value::as_str).unwrap_or("");
    let num = |k: &str| v.get(k).and_then(Value::as_f64);
    let need = |k: &str| {
        num(k).ok_or_else(|| invalid(case, format!("schedule {name}: missing number {k:?}")))
    };
    let flag = |k: &str| v.get(k).and_then(Value::as_bool).unwrap_or(false);
    let list = |k: &str| -> Result<Vec<f64>> {
        v.get(k)
            .and_then(Value::as_array)
            .and_then(|a| a.iter().map(Value::as_f64).collect::<Option<Vec<f64>>>())
            .ok_or_else(|| {
                invalid(
                    case,
                    format!("schedule {name}: {k:?} must be a list of numbers"),
                )
            })
    };
    let s = match name {
        "ExponentialDecay" => Schedule::ExponentialDecay {
            initial_learning_rate: need("initial_learning_rate")?,
            decay_steps: need("decay_steps")?,
            decay_rate: need("decay_rate")?,
            staircase: flag("staircase"),
        },
        "PiecewiseConstantDecay" => Schedule::PiecewiseConstantDecay {
            boundaries: list("boundaries")?,
            values: list("values")?,
        },
        "PolynomialDecay" => Schedule::PolynomialDecay {
            initial_learning_rate: need("initial_learning_rate")?,
            decay_steps: need("decay_steps")?,
            end_learning_rate: num("end_learning_rate").unwrap_or(1e-4),
            power: num("power").unwrap_or(1.0),
            cycle: flag("cycle"),
        },
        "InverseTimeDecay" => Schedule::InverseTimeDecay {
            initial_learning_rate: need("initial_learning_rate")?,
            decay_steps: need("decay_steps")?,
            decay_rate: need("decay_rate")?,
            staircase: flag("staircase"),
        },
        "CosineDecay" => Schedule::CosineDecay {
            initial_learning_rate: need("initial_learning_rate")?,
            decay_steps: need("decay_steps")?,
            alpha: num("alpha").unwrap_or(0.0),
            warmup_target: num("warmup_target"),
            warmup_steps: num("warmup_steps").unwrap_or(0.0),
        },
        "CosineDecayRestarts" => Schedule::CosineDecayRestarts {
            initial_learning_rate: need("initial_learning_rate")?,
            first_decay_steps: need("first_decay_steps")?,
            t_mul: num("t_mul").unwrap_or(2.0),
            m_mul: num("m_mul").unwrap_or(1.0),
            alpha: num("alpha").unwrap_or(0.0),
        },
        other => return Err(invalid(case, format!("unknown schedule {other:?}"))),
    };
    s.validate().map_err(|e| invalid(case, e.to_string()))?;
    Ok(s)
}

/// The JSON object `replay --emit` writes: `{"name": ..., "expected": [...]}`.
pub fn emit_json(name: &str, states: &[StepState]) -> String {
    serde_json::json!({ "name": name, "expected": states }).to_string()
}
