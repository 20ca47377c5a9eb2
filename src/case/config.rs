//! The `config` object of a case: every key typed (schedules included), and the optimizer
//! configuration it describes.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use super::values;
use super::{invalid, Case, CaseConfig, CaseDuplicates, CaseLearningRate};
use crate::config::{DuplicateIndices, EpsilonPlacement, Preset, RmsPropConfig, SparseMode};
use crate::dtype::StorageTypes;
use crate::error::Result;
use crate::schedule::Schedule;

/// A Keras schedule object as written: every constructor argument any schedule has, each typed; which
/// of them a given schedule takes is checked in [`ScheduleSpec::build`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a schedule object")]
struct ScheduleSpec {
    schedule: String,
    #[serde(default, deserialize_with = "values::some_num")]
    initial_learning_rate: Option<f64>,
    #[serde(default, deserialize_with = "values::some_num")]
    decay_steps: Option<f64>,
    #[serde(default, deserialize_with = "values::some_num")]
    decay_rate: Option<f64>,
    #[serde(default, deserialize_with = "values::some")]
    staircase: Option<bool>,
    #[serde(default, deserialize_with = "numbers")]
    boundaries: Option<Vec<f64>>,
    #[serde(default, deserialize_with = "numbers")]
    values: Option<Vec<f64>>,
    #[serde(default, deserialize_with = "values::some_num")]
    end_learning_rate: Option<f64>,
    #[serde(default, deserialize_with = "values::some_num")]
    power: Option<f64>,
    #[serde(default, deserialize_with = "values::some")]
    cycle: Option<bool>,
    #[serde(default, deserialize_with = "values::some_num")]
    alpha: Option<f64>,
    // FORMAT.md gives `warmup_target=null` as the default, so `null` is a legal value here.
    #[serde(default, deserialize_with = "nullable_key")]
    warmup_target: Option<Option<f64>>,
    #[serde(default, deserialize_with = "values::some_num")]
    warmup_steps: Option<f64>,
    #[serde(default, deserialize_with = "values::some_num")]
    first_decay_steps: Option<f64>,
    #[serde(default, deserialize_with = "values::some_num")]
    t_mul: Option<f64>,
    #[serde(default, deserialize_with = "values::some_num")]
    m_mul: Option<f64>,
}

fn numbers<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<f64>>, D::Error> {
    struct N(f64);
    impl<'de> Deserialize<'de> for N {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            values::num(d).map(N)
        }
    }
    Vec::<N>::deserialize(d).map(|v| Some(v.into_iter().map(|n| n.0).collect()))
}

fn nullable_key<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<f64>>, D::Error> {
    values::nullable_num(d).map(Some)
}

impl ScheduleSpec {
    /// The schedule, with Keras's defaults for the arguments left out; an argument the named schedule
    /// does not take is an error (Keras would refuse it too), not ignored.
    fn build<E: de::Error>(self) -> Result<Schedule, E> {
        let name = self.schedule.as_str();
        let given: [(&str, bool); 15] = [
            (
                "initial_learning_rate",
                self.initial_learning_rate.is_some(),
            ),
            ("decay_steps", self.decay_steps.is_some()),
            ("decay_rate", self.decay_rate.is_some()),
            ("staircase", self.staircase.is_some()),
            ("boundaries", self.boundaries.is_some()),
            ("values", self.values.is_some()),
            ("end_learning_rate", self.end_learning_rate.is_some()),
            ("power", self.power.is_some()),
            ("cycle", self.cycle.is_some()),
            ("alpha", self.alpha.is_some()),
            ("warmup_target", self.warmup_target.is_some()),
            ("warmup_steps", self.warmup_steps.is_some()),
            ("first_decay_steps", self.first_decay_steps.is_some()),
            ("t_mul", self.t_mul.is_some()),
            ("m_mul", self.m_mul.is_some()),
        ];
        let takes: &[&str] = match name {
            "ExponentialDecay" | "InverseTimeDecay" => &[
                "initial_learning_rate",
                "decay_steps",
                "decay_rate",
                "staircase",
            ],
            "PiecewiseConstantDecay" => &["boundaries", "values"],
            "PolynomialDecay" => &[
                "initial_learning_rate",
                "decay_steps",
                "end_learning_rate",
                "power",
                "cycle",
            ],
            "CosineDecay" => &[
                "initial_learning_rate",
                "decay_steps",
                "alpha",
                "warmup_target",
                "warmup_steps",
            ],
            "CosineDecayRestarts" => &[
                "initial_learning_rate",
                "first_decay_steps",
                "t_mul",
                "m_mul",
                "alpha",
            ],
            other => {
                return Err(E::custom(format_args!(
                "unknown schedule {other:?} (expected ExponentialDecay, PiecewiseConstantDecay, \
                     PolynomialDecay, InverseTimeDecay, CosineDecay or CosineDecayRestarts)"
            )))
            }
        };
        if let Some((key, _)) = given.iter().find(|(k, g)| *g && !takes.contains(k)) {
            return Err(E::custom(format_args!(
                "schedule {name}: `{key}` is not one of its arguments ({})",
                takes.join(", ")
            )));
        }
        let need = |x: Option<f64>, key: &str| {
            x.ok_or_else(|| E::custom(format_args!("schedule {name}: missing number {key:?}")))
        };
        Ok(match name {
            "ExponentialDecay" => Schedule::ExponentialDecay {
                initial_learning_rate: need(self.initial_learning_rate, "initial_learning_rate")?,
                decay_steps: need(self.decay_steps, "decay_steps")?,
                decay_rate: need(self.decay_rate, "decay_rate")?,
                staircase: self.staircase.unwrap_or(false),
            },
            "InverseTimeDecay" => Schedule::InverseTimeDecay {
                initial_learning_rate: need(self.initial_learning_rate, "initial_learning_rate")?,
                decay_steps: need(self.decay_steps, "decay_steps")?,
                decay_rate: need(self.decay_rate, "decay_rate")?,
                staircase: self.staircase.unwrap_or(false),
            },
            "PiecewiseConstantDecay" => Schedule::PiecewiseConstantDecay {
                boundaries: self.boundaries.ok_or_else(|| {
                    E::custom(format_args!("schedule {name}: missing list \"boundaries\""))
                })?,
                values: self.values.ok_or_else(|| {
                    E::custom(format_args!("schedule {name}: missing list \"values\""))
                })?,
            },
            "PolynomialDecay" => Schedule::PolynomialDecay {
                initial_learning_rate: need(self.initial_learning_rate, "initial_learning_rate")?,
                decay_steps: need(self.decay_steps, "decay_steps")?,
                end_learning_rate: self.end_learning_rate.unwrap_or(1e-4),
                power: self.power.unwrap_or(1.0),
                cycle: self.cycle.unwrap_or(false),
            },
            "CosineDecay" => Schedule::CosineDecay {
                initial_learning_rate: need(self.initial_learning_rate, "initial_learning_rate")?,
                decay_steps: need(self.decay_steps, "decay_steps")?,
                alpha: self.alpha.unwrap_or(0.0),
                warmup_target: self.warmup_target.flatten(),
                warmup_steps: self.warmup_steps.unwrap_or(0.0),
            },
            _ => Schedule::CosineDecayRestarts {
                initial_learning_rate: need(self.initial_learning_rate, "initial_learning_rate")?,
                first_decay_steps: need(self.first_decay_steps, "first_decay_steps")?,
                t_mul: self.t_mul.unwrap_or(2.0),
                m_mul: self.m_mul.unwrap_or(1.0),
                alpha: self.alpha.unwrap_or(0.0),
            },
        })
    }
}

fn learning_rate<'de, D: Deserializer<'de>>(d: D) -> Result<CaseLearningRate, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = CaseLearningRate;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a number or a schedule object")
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            Ok(CaseLearningRate::Constant(v))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(CaseLearningRate::Constant(v as f64))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(CaseLearningRate::Constant(v as f64))
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            // The map access passed in tracks field paths, so errors inside the schedule name them
            // (`config.learning_rate.staircase`).
            let spec = ScheduleSpec::deserialize(de::value::MapAccessDeserializer::new(map))?;
            spec.build().map(CaseLearningRate::Schedule)
        }
    }
    d.deserialize_any(V)
}

fn sparse_mode<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    match String::deserialize(d)?.as_str() {
        "lazy" => Ok(Some(true)),
        "dense" => Ok(Some(false)),
        other => Err(de::Error::custom(format_args!(
            "unknown sparse_mode {other:?} (expected \"lazy\" or \"dense\")"
        ))),
    }
}

fn duplicate_indices<'de, D: Deserializer<'de>>(d: D) -> Result<Option<CaseDuplicates>, D::Error> {
    match String::deserialize(d)?.as_str() {
        "sum" => Ok(Some(CaseDuplicates::Sum)),
        "sequential" => Ok(Some(CaseDuplicates::Sequential)),
        "keras3" => Ok(Some(CaseDuplicates::Keras3)),
        other => Err(de::Error::custom(format_args!(
            "unknown duplicate_indices {other:?} (expected \"sum\", \"sequential\" or \"keras3\")"
        ))),
    }
}

/// `config` as written. Required keys have no `default`, so a missing one is an error; the nullable
/// ones go through [`values::nullable_num`], which also makes them required (`serde` only fills in a
/// missing `Option` by itself when no `deserialize_with` is given).
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a config object")]
struct RawConfig {
    #[serde(deserialize_with = "learning_rate")]
    learning_rate: CaseLearningRate,
    #[serde(deserialize_with = "values::num")]
    rho: f64,
    #[serde(deserialize_with = "values::num")]
    momentum: f64,
    #[serde(deserialize_with = "values::num")]
    epsilon: f64,
    centered: bool,
    #[serde(deserialize_with = "values::nullable_num")]
    clipnorm: Option<f64>,
    #[serde(deserialize_with = "values::nullable_num")]
    clipvalue: Option<f64>,
    #[serde(deserialize_with = "values::nullable_num")]
    global_clipnorm: Option<f64>,
    #[serde(deserialize_with = "values::nullable_num")]
    weight_decay: Option<f64>,
    #[serde(default, deserialize_with = "sparse_mode")]
    sparse_mode: Option<bool>,
    #[serde(default, deserialize_with = "duplicate_indices")]
    duplicate_indices: Option<CaseDuplicates>,
    #[serde(default, deserialize_with = "values::some_num")]
    initial_accumulator_value: Option<f64>,
    #[serde(default, deserialize_with = "values::some")]
    eps_in_sqrt: Option<bool>,
    #[serde(default, deserialize_with = "values::some")]
    bias_correction: Option<bool>,
    #[serde(default, deserialize_with = "values::some")]
    nesterov: Option<bool>,
    #[serde(default, deserialize_with = "values::some")]
    maximize: Option<bool>,
    #[serde(default, deserialize_with = "values::some")]
    use_ema: Option<bool>,
    #[serde(default, deserialize_with = "values::some_num")]
    ema_momentum: Option<f64>,
    #[serde(default, deserialize_with = "values::some_nullable_uint")]
    ema_overwrite_frequency: Option<Option<u64>>,
    #[serde(default, deserialize_with = "values::some_uint")]
    gradient_accumulation_steps: Option<u64>,
    #[serde(default, deserialize_with = "values::some_num")]
    loss_scale_factor: Option<f64>,
}

impl<'de> Deserialize<'de> for CaseConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let r: RawConfig = values::object(d)?;
        Ok(CaseConfig {
            learning_rate: r.learning_rate,
            rho: r.rho,
            momentum: r.momentum,
            epsilon: r.epsilon,
            centered: r.centered,
            clipnorm: r.clipnorm,
            clipvalue: r.clipvalue,
            global_clipnorm: r.global_clipnorm,
            weight_decay: r.weight_decay,
            sparse_lazy: r.sparse_mode,
            lazy_exact: false,
            duplicate_indices: r.duplicate_indices,
            initial_accumulator_value: r.initial_accumulator_value,
            eps_in_sqrt: r.eps_in_sqrt,
            bias_correction: r.bias_correction,
            nesterov: r.nesterov,
            maximize: r.maximize,
            use_ema: r.use_ema,
            ema_momentum: r.ema_momentum,
            ema_overwrite_frequency: r.ema_overwrite_frequency,
            gradient_accumulation_steps: r.gradient_accumulation_steps,
            loss_scale_factor: r.loss_scale_factor,
        })
    }
}

impl Case {
    /// The optimizer configuration the case describes: its semantics as a [`Preset`], every key of its
    /// `config` as the matching knob.
    pub fn optimizer_config(&self) -> Result<RmsPropConfig> {
        let n = &self.name;
        let preset = Preset::from_name(&self.semantics)
            .ok_or_else(|| invalid(n, format!("unknown semantics {:?}", self.semantics)))?;
        let c = &self.config;
        let mut b = RmsPropConfig::preset(preset)
            .rho(c.rho)
            .momentum(c.momentum)
            .epsilon(c.epsilon)
            .centered(c.centered);
        b = match &c.learning_rate {
            CaseLearningRate::Constant(x) => b.learning_rate(*x),
            CaseLearningRate::Schedule(s) => b.learning_rate(s.clone()),
        };
        if let Some(x) = c.clipnorm {
            b = b.clipnorm(x);
        }
        if let Some(x) = c.clipvalue {
            b = b.clipvalue(x);
        }
        if let Some(x) = c.global_clipnorm {
            b = b.global_clipnorm(x);
        }
        if let Some(x) = c.weight_decay {
            b = b.weight_decay(x);
        }
        if let Some(x) = c.initial_accumulator_value {
            b = b.initial_accumulator_value(x);
        }
        if let Some(inside) = c.eps_in_sqrt {
            b = b.epsilon_placement(if inside {
                EpsilonPlacement::InsideSqrt
            } else {
                EpsilonPlacement::OutsideSqrt
            });
        }
        if let Some(x) = c.bias_correction {
            b = b.bias_correction(x);
        }
        if let Some(x) = c.nesterov {
            b = b.nesterov(x);
        }
        if let Some(x) = c.maximize {
            b = b.maximize(x);
        }
        if let Some(lazy) = c.sparse_lazy {
            b = b.sparse_mode(if lazy {
                SparseMode::Lazy
            } else {
                SparseMode::Dense
            });
        }
        if c.lazy_exact
            && b.clone()
                .build()
                .is_ok_and(|x| x.sparse_mode() == SparseMode::Dense)
        {
            b = b.sparse_mode(SparseMode::LazyExact);
        }
        if let Some(on) = c.use_ema {
            b = b.use_ema(on);
        }
        if let Some(m) = c.ema_momentum {
            b = b.ema_momentum(m);
        }
        if let Some(Some(f)) = c.ema_overwrite_frequency {
            b = b.ema_overwrite_frequency(f);
        }
        if let Some(x) = c.loss_scale_factor {
            b = b.loss_scale_factor(x);
        }
        if let Some(x) = c.gradient_accumulation_steps {
            b = b.gradient_accumulation_steps(x);
        }
        if let Some(d) = c.duplicate_indices {
            b = b.duplicate_indices(match d {
                CaseDuplicates::Sum => DuplicateIndices::Sum,
                CaseDuplicates::Sequential => DuplicateIndices::Sequential,
                CaseDuplicates::Keras3 => DuplicateIndices::Keras3,
            });
        }
        // Everything (variables, gradients, every slot) in the case's type.
        b = b.storage(StorageTypes::all(self.element_type()));
        b.build().map_err(|e| invalid(n, format!("config: {e}")))
    }
}
