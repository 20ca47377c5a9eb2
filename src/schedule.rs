//! Learning-rate schedules: pure functions of the step, evaluated on the host (in `f64`, rounded once to
//! the `f32` the kernels receive). The rate used by step `t` (1-based) is the schedule at `s = t - 1`,
//! the number of updates already made, as in Keras.

use std::fmt;
use std::sync::Arc;

use crate::error::{Error, Result};

/// The six Keras learning-rate schedules, with their constructor arguments.
///
/// ```
/// use wgpu_rmsprop::Schedule;
/// let s = Schedule::PiecewiseConstantDecay { boundaries: vec![4.0, 10.0], values: vec![0.03, 0.01, 0.003] };
/// s.validate()?;
/// assert_eq!((s.at(4), s.at(5), s.at(11)), (0.03, 0.01, 0.003));
/// # Ok::<(), wgpu_rmsprop::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "schedule")]
pub enum Schedule {
    /// `initial * decay_rate ^ (s / decay_steps)` (exponent floored if `staircase`).
    ExponentialDecay {
        /// Rate at step 0.
        initial_learning_rate: f64,
        /// Steps per decay period (> 0).
        decay_steps: f64,
        /// Factor per period (> 0).
        decay_rate: f64,
        /// Decay in whole periods.
        staircase: bool,
    },
    /// `values[0]` while `s <= boundaries[0]`, `values[i+1]` while `boundaries[i] < s <= boundaries[i+1]`,
    /// `values[last]` after.
    PiecewiseConstantDecay {
        /// Increasing step boundaries.
        boundaries: Vec<f64>,
        /// One more value than boundaries.
        values: Vec<f64>,
    },
    /// `(initial - end) * (1 - s'/D)^power + end`, see FORMAT.md for `cycle`.
    PolynomialDecay {
        /// Rate at step 0.
        initial_learning_rate: f64,
        /// Steps of the decay (> 0).
        decay_steps: f64,
        /// Rate at the end (Keras default 1e-4).
        end_learning_rate: f64,
        /// Exponent (Keras default 1).
        power: f64,
        /// Restart the decay every `decay_steps` multiple.
        cycle: bool,
    },
    /// `initial / (1 + decay_rate * s / decay_steps)` (floored ratio if `staircase`).
    InverseTimeDecay {
        /// Rate at step 0.
        initial_learning_rate: f64,
        /// Steps per period (> 0).
        decay_steps: f64,
        /// Decay per period (>= 0).
        decay_rate: f64,
        /// Decay in whole periods.
        staircase: bool,
    },
    /// Cosine decay from `initial` (or, after a linear warmup, from `warmup_target`) to `alpha * that`.
    CosineDecay {
        /// Rate at step 0.
        initial_learning_rate: f64,
        /// Steps of the cosine part (> 0).
        decay_steps: f64,
        /// Final fraction of the peak rate.
        alpha: f64,
        /// Peak reached after the warmup, if any.
        warmup_target: Option<f64>,
        /// Steps of linear warmup.
        warmup_steps: f64,
    },
    /// SGDR: cosine decay with warm restarts.
    CosineDecayRestarts {
        /// Rate at step 0.
        initial_learning_rate: f64,
        /// Length of the first period (> 0).
        first_decay_steps: f64,
        /// Period length multiplier (Keras default 2).
        t_mul: f64,
        /// Peak multiplier per restart (Keras default 1).
        m_mul: f64,
        /// Final fraction of the peak rate.
        alpha: f64,
    },
}

fn bad(field: &'static str, value: impl fmt::Display, requirement: &'static str) -> Error {
    Error::InvalidConfig {
        field,
        value: value.to_string(),
        requirement,
    }
}

fn finite(field: &'static str, x: f64) -> Result<()> {
    if x.is_finite() {
        Ok(())
    } else {
        Err(bad(field, x, "must be finite"))
    }
}

fn positive(field: &'static str, x: f64) -> Result<()> {
    if x.is_finite() && x > 0.0 {
        Ok(())
    } else {
        Err(bad(field, x, "must be a finite number > 0"))
    }
}

fn non_negative(field: &'static str, x: f64) -> Result<()> {
    if x.is_finite() && x >= 0.0 {
        Ok(())
    } else {
        Err(bad(field, x, "must be a finite number >= 0"))
    }
}

impl Schedule {
    /// Checks the constructor arguments (Keras refuses the same ones, or they would give NaN).
    pub fn validate(&self) -> Result<()> {
        match self {
            Schedule::ExponentialDecay {
                initial_learning_rate,
                decay_steps,
                decay_rate,
                ..
            } => {
                non_negative("initial_learning_rate", *initial_learning_rate)?;
                positive("decay_steps", *decay_steps)?;
                positive("decay_rate", *decay_rate)
            }
            Schedule::PiecewiseConstantDecay { boundaries, values } => {
                if values.len() != boundaries.len() + 1 {
                    return Err(bad(
                        "values",
                        format!(
                            "{} values for {} boundaries",
                            values.len(),
                            boundaries.len()
                        ),
                        "must hold one more value than boundaries",
                    ));
                }
                for b in boundaries {
                    finite("boundaries", *b)?;
                }
                if boundaries.windows(2).any(|w| w[0] >= w[1]) {
                    return Err(bad(
                        "boundaries",
                        format!("{boundaries:?}"),
                        "must be strictly increasing",
                    ));
                }
                values.iter().try_for_each(|v| non_negative("values", *v))
            }
            Schedule::PolynomialDecay {
                initial_learning_rate,
                decay_steps,
                end_learning_rate,
                power,
                ..
            } => {
                non_negative("initial_learning_rate", *initial_learning_rate)?;
                positive("decay_steps", *decay_steps)?;
                non_negative("end_learning_rate", *end_learning_rate)?;
                non_negative("power", *power)
            }
            Schedule::InverseTimeDecay {
                initial_learning_rate,
                decay_steps,
                decay_rate,
                ..
            } => {
                non_negative("initial_learning_rate", *initial_learning_rate)?;
                positive("decay_steps", *decay_steps)?;
                non_negative("decay_rate", *decay_rate)
            }
            Schedule::CosineDecay {
                initial_learning_rate,
                decay_steps,
                alpha,
                warmup_target,
                warmup_steps,
            } => {
                non_negative("initial_learning_rate", *initial_learning_rate)?;
                positive("decay_steps", *decay_steps)?;
                finite("alpha", *alpha)?;
                if let Some(t) = warmup_target {
                    non_negative("warmup_target", *t)?;
                }
                non_negative("warmup_steps", *warmup_steps)
            }
            Schedule::CosineDecayRestarts {
                initial_learning_rate,
                first_decay_steps,
                t_mul,
                m_mul,
                alpha,
            } => {
                non_negative("initial_learning_rate", *initial_learning_rate)?;
                positive("first_decay_steps", *first_decay_steps)?;
                positive("t_mul", *t_mul)?;
                non_negative("m_mul", *m_mul)?;
                finite("alpha", *alpha)
            }
        }
    }

    /// The rate after `s` updates (`s` = step - 1), by the Keras formulas.
    pub fn at(&self, s: u64) -> f64 {
        let s = s as f64;
        match *self {
            Schedule::ExponentialDecay {
                initial_learning_rate,
                decay_steps,
                decay_rate,
                staircase,
            } => {
                let mut p = s / decay_steps;
                if staircase {
                    p = p.floor();
                }
                initial_learning_rate * decay_rate.powf(p)
            }
            Schedule::PiecewiseConstantDecay {
                ref boundaries,
                ref values,
            } => {
                let i = boundaries.iter().take_while(|&&b| s > b).count();
                values[i]
            }
            Schedule::PolynomialDecay {
                initial_learning_rate,
                decay_steps,
                end_learning_rate,
                power,
                cycle,
            } => {
                let (s, d) = if cycle {
                    let k = if s == 0.0 {
                        1.0
                    } else {
                        (s / decay_steps).ceil().max(1.0)
                    };
                    (s, decay_steps * k)
                } else {
                    (s.min(decay_steps), decay_steps)
                };
                (initial_learning_rate - end_learning_rate) * (1.0 - s / d).powf(power)
                    + end_learning_rate
            }
            Schedule::InverseTimeDecay {
                initial_learning_rate,
                decay_steps,
                decay_rate,
                staircase,
            } => {
                let mut p = s / decay_steps;
                if staircase {
                    p = p.floor();
                }
                initial_learning_rate / (1.0 + decay_rate * p)
            }
            Schedule::CosineDecay {
                initial_learning_rate,
                decay_steps,
                alpha,
                warmup_target,
                warmup_steps,
            } => {
                let decay = |x: f64, from: f64| {
                    from * ((1.0 - alpha)
                        * 0.5
                        * (1.0 + (std::f64::consts::PI * x / decay_steps).cos())
                        + alpha)
                };
                match warmup_target {
                    None => decay(s.min(decay_steps), initial_learning_rate),
                    Some(target) => {
                        let s = s.min(decay_steps + warmup_steps);
                        if s < warmup_steps {
                            initial_learning_rate
                                + (target - initial_learning_rate) * s / warmup_steps
                        } else {
                            decay(s - warmup_steps, target)
                        }
                    }
                }
            }
            Schedule::CosineDecayRestarts {
                initial_learning_rate,
                first_decay_steps,
                t_mul,
                m_mul,
                alpha,
            } => {
                let mut f = s / first_decay_steps;
                let i;
                if t_mul == 1.0 {
                    i = f.floor();
                    f -= i;
                } else {
                    i = ((1.0 - f * (1.0 - t_mul)).ln() / t_mul.ln()).floor();
                    let sum_r = (1.0 - t_mul.powf(i)) / (1.0 - t_mul);
                    f = (f - sum_r) / t_mul.powf(i);
                }
                let m = m_mul.powf(i);
                initial_learning_rate
                    * ((1.0 - alpha) * 0.5 * m * (1.0 + (std::f64::consts::PI * f).cos()) + alpha)
            }
        }
    }
}

/// The learning rate: a constant, a Keras schedule, or any closure (of the step, or of nothing).
#[derive(Clone)]
pub enum LearningRate {
    /// The same rate at every step.
    Constant(f64),
    /// A Keras schedule, evaluated at `s = step - 1`.
    Schedule(Schedule),
    /// A closure of `s = step - 1`.
    FnOfStep(Arc<dyn Fn(u64) -> f64 + Send + Sync>),
    /// A closure of nothing, called once per step (Keras's callable learning rate).
    Callable(Arc<dyn Fn() -> f64 + Send + Sync>),
}

impl fmt::Debug for LearningRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LearningRate::Constant(x) => write!(f, "Constant({x})"),
            LearningRate::Schedule(s) => write!(f, "Schedule({s:?})"),
            LearningRate::FnOfStep(_) => write!(f, "FnOfStep(..)"),
            LearningRate::Callable(_) => write!(f, "Callable(..)"),
        }
    }
}

impl From<f64> for LearningRate {
    fn from(lr: f64) -> Self {
        LearningRate::Constant(lr)
    }
}

impl From<Schedule> for LearningRate {
    fn from(s: Schedule) -> Self {
        LearningRate::Schedule(s)
    }
}

impl LearningRate {
    /// A closure of the number of updates already made (`step - 1`).
    pub fn from_fn(f: impl Fn(u64) -> f64 + Send + Sync + 'static) -> Self {
        LearningRate::FnOfStep(Arc::new(f))
    }

    /// A closure of nothing, called once per step.
    pub fn callable(f: impl Fn() -> f64 + Send + Sync + 'static) -> Self {
        LearningRate::Callable(Arc::new(f))
    }

    pub(crate) fn validate(&self) -> Result<()> {
        match self {
            LearningRate::Constant(lr) => check_rate(*lr, None).map(|_| ()),
            LearningRate::Schedule(s) => s.validate(),
            _ => Ok(()),
        }
    }

    /// The rate used by the step with 1-based number `step`, as the `f32` the kernels receive. A closure
    /// or schedule that yields a negative or non-finite rate is an error (and the step is not applied).
    pub fn at_step(&self, step: u64) -> Result<f32> {
        let s = step.saturating_sub(1);
        let lr = match self {
            LearningRate::Constant(lr) => *lr,
            LearningRate::Schedule(sch) => sch.at(s),
            LearningRate::FnOfStep(f) => f(s),
            LearningRate::Callable(f) => f(),
        };
        check_rate(lr, Some(step))
    }
}

fn check_rate(lr: f64, step: Option<u64>) -> Result<f32> {
    let x = lr as f32;
    if lr.is_finite() && x.is_finite() && lr >= 0.0 {
        Ok(x)
    } else {
        Err(match step {
            None => bad("learning_rate", lr, "must be a finite number >= 0"),
            Some(step) => Error::InvalidLearningRate { step, value: lr },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() <= 1e-12 * b.abs().max(1.0), "{a} vs {b}");
    }

    #[test]
    fn exponential_decay_smooth_and_staircase() {
        let mut s = Schedule::ExponentialDecay {
            initial_learning_rate: 0.1,
            decay_steps: 4.0,
            decay_rate: 0.5,
            staircase: false,
        };
        close(s.at(0), 0.1);
        close(s.at(2), 0.1 * 0.5f64.sqrt());
        close(s.at(4), 0.05);
        if let Schedule::ExponentialDecay { staircase, .. } = &mut s {
            *staircase = true;
        }
        close(s.at(3), 0.1);
        close(s.at(4), 0.05);
        close(s.at(7), 0.05);
        close(s.at(8), 0.025);
    }

    #[test]
    fn piecewise_boundaries_are_inclusive_on_the_left_value() {
        let s = Schedule::PiecewiseConstantDecay {
            boundaries: vec![4.0, 10.0],
            values: vec![0.03, 0.01, 0.003],
        };
        for (step, v) in [
            (0, 0.03),
            (4, 0.03),
            (5, 0.01),
            (10, 0.01),
            (11, 0.003),
            (1000, 0.003),
        ] {
            close(s.at(step), v);
        }
        let bad = Schedule::PiecewiseConstantDecay {
            boundaries: vec![4.0],
            values: vec![0.1],
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn polynomial_end_of_decay_and_cycle() {
        let mut s = Schedule::PolynomialDecay {
            initial_learning_rate: 0.1,
            decay_steps: 10.0,
            end_learning_rate: 0.01,
            power: 2.0,
            cycle: false,
        };
        close(s.at(0), 0.1);
        close(s.at(5), 0.09 * 0.25 + 0.01);
        close(s.at(10), 0.01);
        close(s.at(25), 0.01);
        if let Schedule::PolynomialDecay { cycle, .. } = &mut s {
            *cycle = true;
        }
        close(s.at(0), 0.1);
        close(s.at(10), 0.01);
        // s = 15: D = 20, (1 - 15/20)^2 = 1/16.
        close(s.at(15), 0.09 / 16.0 + 0.01);
    }

    #[test]
    fn inverse_time_decay() {
        let s = Schedule::InverseTimeDecay {
            initial_learning_rate: 0.1,
            decay_steps: 2.0,
            decay_rate: 0.5,
            staircase: true,
        };
        close(s.at(0), 0.1);
        close(s.at(1), 0.1);
        close(s.at(2), 0.1 / 1.5);
        close(s.at(5), 0.1 / 2.0);
    }

    #[test]
    fn cosine_decay_with_warmup_end() {
        let s = Schedule::CosineDecay {
            initial_learning_rate: 0.0,
            decay_steps: 10.0,
            alpha: 0.1,
            warmup_target: Some(0.2),
            warmup_steps: 5.0,
        };
        close(s.at(0), 0.0);
        close(s.at(2), 0.08);
        close(s.at(5), 0.2); // warmup end = cosine start
        close(s.at(10), 0.2 * (0.9 * 0.5 + 0.1)); // half way: cos(pi/2) = 0
        close(s.at(15), 0.2 * 0.1);
        close(s.at(100), 0.2 * 0.1);
        let plain = Schedule::CosineDecay {
            initial_learning_rate: 1.0,
            decay_steps: 4.0,
            alpha: 0.0,
            warmup_target: None,
            warmup_steps: 0.0,
        };
        close(plain.at(4), 0.0);
        close(plain.at(9), 0.0);
    }

    #[test]
    fn cosine_restarts_at_cycle_points() {
        let s = Schedule::CosineDecayRestarts {
            initial_learning_rate: 1.0,
            first_decay_steps: 4.0,
            t_mul: 2.0,
            m_mul: 0.5,
            alpha: 0.0,
        };
        close(s.at(0), 1.0);
        close(s.at(2), 0.5);
        close(s.at(4), 0.5); // restart: period 8, peak 0.5
        close(s.at(8), 0.25); // half of the second period
        close(s.at(12), 0.25); // second restart: peak 0.25
        let t1 = Schedule::CosineDecayRestarts {
            initial_learning_rate: 1.0,
            first_decay_steps: 4.0,
            t_mul: 1.0,
            m_mul: 1.0,
            alpha: 0.0,
        };
        close(t1.at(4), 1.0);
        close(t1.at(6), 0.5);
    }

    #[test]
    fn closures_and_bad_rates() {
        let lr = LearningRate::from_fn(|s| 0.1 / (s + 1) as f64);
        assert_eq!(lr.at_step(1).unwrap(), 0.1);
        assert_eq!(lr.at_step(2).unwrap(), 0.05);
        let bad = LearningRate::callable(|| -1.0);
        assert!(matches!(
            bad.at_step(3),
            Err(Error::InvalidLearningRate { step: 3, .. })
        ));
        assert!(LearningRate::Constant(f64::NAN).validate().is_err());
    }
}
