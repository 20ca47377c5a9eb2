//! The per-element update of the CPU twin, operation for operation as `shaders/rmsprop_update.wgsl`
//! (and `clip_value` of `shaders/common.wgsl`), with the stores of reduced-precision storage.

use crate::config::{
    AverageForm, EpsilonPlacement, MomentumForm, RmsPropConfig, StepScalars, WeightDecay,
};
use crate::dtype::StorageTypes;

/// One element's state (`State` in the shader).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct State {
    /// Variable.
    pub x: f32,
    /// Velocity.
    pub v: f32,
    /// Momentum (0 when not kept).
    pub m: f32,
    /// Average gradient (0 when not centered).
    pub a: f32,
}

fn torch_lerp(a: f32, g: f32, w: f32) -> f32 {
    if w < 0.5 {
        a + w * (g - a)
    } else {
        g - (g - a) * (1.0 - w)
    }
}

/// The update of one element (`rmsprop` in `shaders/rmsprop_update.wgsl`).
pub fn rmsprop(
    c: &RmsPropConfig,
    p: &StepScalars,
    s_in: State,
    g_in: f32,
    q: f32,
    use_q: bool,
) -> State {
    let mut s = s_in;
    let mut g = g_in;
    if c.maximize() {
        g = -g;
    }
    if matches!(c.weight_decay(), WeightDecay::L2(_)) {
        g += p.weight_decay * s.x;
    }
    if matches!(c.weight_decay(), WeightDecay::Decoupled(_)) {
        s.x = s.x - s.x * p.weight_decay * p.lr;
    }
    let g2 = if use_q { q } else { g * g };
    s.v = p.rho * s.v + p.one_minus_rho * g2;
    let mut vh = s.v;
    if c.bias_correction() {
        vh /= p.bias_correction;
    }
    let eps_outside = c.epsilon_placement() == EpsilonPlacement::OutsideSqrt;
    let d = if c.centered() {
        s.a = match c.average_form() {
            AverageForm::Lerp => torch_lerp(s.a, g, p.one_minus_rho),
            AverageForm::Ema => p.rho * s.a + p.one_minus_rho * g,
        };
        let mut ah = s.a;
        if c.bias_correction() {
            ah /= p.bias_correction;
        }
        let var_est = vh - ah * ah;
        if eps_outside {
            // NaN stays NaN (as in the shader; `f32::max` alone would turn it into 0).
            let floored = if var_est.is_nan() {
                var_est
            } else {
                var_est.max(0.0)
            };
            floored.sqrt() + p.epsilon
        } else {
            let t = var_est + p.epsilon;
            (if t < 0.0 { p.epsilon } else { t }).sqrt()
        }
    } else if eps_outside {
        vh.sqrt() + p.epsilon
    } else {
        (vh + p.epsilon).sqrt()
    };
    let has_m = c.has_momentum();
    match c.momentum_form() {
        MomentumForm::LrAfter => {
            if has_m {
                s.m = p.momentum * s.m + g / d;
                s.x -= p.lr * s.m;
            } else {
                s.x -= p.lr * (g / d);
            }
        }
        form => {
            let inc = (p.lr * g) / d;
            if !has_m {
                s.x -= inc;
            } else if form == MomentumForm::NegatedTrace {
                s.m = -inc + p.momentum * s.m;
                s.x += if c.nesterov() {
                    -inc + p.momentum * s.m
                } else {
                    s.m
                };
            } else {
                s.m = p.momentum * s.m + inc;
                s.x -= if c.nesterov() {
                    inc + p.momentum * s.m
                } else {
                    s.m
                };
            }
        }
    }
    s
}

/// An element's state as stored at the end of a step (`store_state` in the shaders): the variable
/// rounded to `storage.variable`, the slots to `storage.state` (identity for f32).
pub fn store(storage: &StorageTypes, s: State) -> State {
    State {
        x: storage.variable.round(s.x),
        v: storage.state.round(s.v),
        m: storage.state.round(s.m),
        a: storage.state.round(s.a),
    }
}

/// `x` rounded stochastically to bf16 as the kernels do for element `elem` of a variable whose seed is
/// `seed` (`p.sr_seed + var_index * 0x9e3779b9`) at step `step` (`sr_bits` in `rmsprop_dense.wgsl`).
pub fn sr_round(x: f32, seed: u32, step: u32, elem: u32) -> f32 {
    let r = crate::half_bits::sr_hash(seed, step, elem);
    half::bf16::from_bits(crate::half_bits::f32_to_bf16_stochastic(x, r)).to_f32()
}

/// `clip_by_value` with the kernels' explicit rule for non-finite values (`clip_value` in
/// `shaders/common.wgsl`): a NaN stays NaN, `±Inf` becomes `±c`, anything else is clamped to `[-c, c]`.
///
/// Spelled out rather than left to `f32::clamp` (which keeps a NaN) or `f32::max`/`min` (which drop
/// it), so that the rule is visibly the shader's, where `clamp` of a NaN is undefined.
pub fn clip_value(g: f32, c: f32) -> f32 {
    if g.is_nan() {
        g
    } else if g < -c {
        -c
    } else if g > c {
        c
    } else {
        g
    }
}
