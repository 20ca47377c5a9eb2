//! The CPU reference: the same update as `shaders/rmsprop_dense.wgsl`, in the same order, on `f32`, written
//! to read like the shader so the two can be compared line by line.
//!
//! It is the oracle of the tests and is public so that users can check their own runs.

use crate::config::{RmsPropConfig, StepScalars};

/// One variable and its optimizer state on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct ReferenceState {
    /// The variable.
    pub x: Vec<f32>,
    /// `velocity`: moving average of squared gradients.
    pub v: Vec<f32>,
    /// `momentum` (present when `momentum > 0`).
    pub m: Option<Vec<f32>>,
    /// `average_gradient` (present when centered).
    pub a: Option<Vec<f32>>,
}

impl ReferenceState {
    /// A variable with freshly initialised slots, as the optimizer creates them for `config`.
    pub fn new(config: &RmsPropConfig, init: &[f32]) -> Self {
        let n = init.len();
        ReferenceState {
            x: init.to_vec(),
            v: vec![0.0; n],
            m: config.has_momentum().then(|| vec![0.0; n]),
            a: config.centered().then(|| vec![0.0; n]),
        }
    }

    /// One dense step with gradient `g` and the step's scalars `p`.
    ///
    /// # Panics
    /// If `g` is not as long as the variable (the reference is a test oracle, not a checked API).
    pub fn dense_step(&mut self, p: &StepScalars, g: &[f32]) {
        assert_eq!(g.len(), self.x.len(), "gradient length");
        for i in 0..self.x.len() {
            let grad = g[i];
            let vel = p.rho * self.v[i] + p.one_minus_rho * (grad * grad);
            self.v[i] = vel;
            let den = match self.a.as_mut() {
                Some(a) => {
                    let avg = p.rho * a[i] + p.one_minus_rho * grad;
                    a[i] = avg;
                    vel - avg * avg + p.epsilon
                }
                None => vel + p.epsilon,
            };
            let inc = (p.lr * grad) / den.sqrt();
            match self.m.as_mut() {
                Some(m) => {
                    let mom = p.momentum * m[i] + inc;
                    m[i] = mom;
                    self.x[i] -= mom;
                }
                None => self.x[i] -= inc,
            }
        }
    }
}
