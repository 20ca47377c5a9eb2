//! The twin of `shaders/rmsprop_lazy_exact.wgsl` ([`SparseMode::LazyExact`]): each row's count of its
//! variable's steps up to which it is current, and the closed form of the steps it missed
//! ([`skip_steps`], `rmsprop_update.wgsl::skip_steps`, operation for operation).

use super::{store, ReferenceState, State};
use crate::config::{MomentumForm, RmsPropConfig, StepScalars, WeightDecay};

/// The row counters of one variable (binding 22 of the kernels).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LazyRows {
    /// The variable's step count (steps it took part in; wraps as the GPU's `u32`).
    pub count: u32,
    /// Per row, the count up to which it is current.
    pub rows: Vec<u32>,
    /// A lazy step may have left rows behind.
    pub stale: bool,
}

/// One step with gradient 0 as a linear map: (d, b, momentum, rho) for x' = x - d*x + b*m,
/// m' = momentum*m, v' = rho*v, a' = rho*a (`skip_one`; the decay kept as its deficit `d = wd*lr`).
fn skip_one(c: &RmsPropConfig, p: &StepScalars) -> [f32; 4] {
    let d = if matches!(c.weight_decay(), WeightDecay::Decoupled(_)) {
        p.weight_decay * p.lr
    } else {
        0.0
    };
    let (mom, b) = if c.has_momentum() {
        let b = match c.momentum_form() {
            MomentumForm::LrInside => -p.momentum,
            MomentumForm::LrAfter => -(p.lr * p.momentum),
            MomentumForm::NegatedTrace => p.momentum,
        };
        (p.momentum, b)
    } else {
        (0.0, 0.0)
    };
    [d, b, mom, p.rho]
}

/// `f` then `g` (`skip_compose`).
fn compose(f: [f32; 4], g: [f32; 4]) -> [f32; 4] {
    [
        f[0] + g[0] - f[0] * g[0],
        g[1] - f[0] * g[1] + f[1] * g[2],
        f[2] * g[2],
        f[3] * g[3],
    ]
}

/// The map of `k >= 1` skipped steps, by squaring and multiplying from the highest bit (`skip_map`).
fn skip_map(c: &RmsPropConfig, p: &StepScalars, k: u32) -> [f32; 4] {
    let one = skip_one(c, p);
    let mut acc = [0.0, 0.0, 1.0, 1.0];
    for bit in (0..32 - k.leading_zeros()).rev() {
        acc = compose(acc, acc);
        if (k >> bit) & 1 != 0 {
            acc = compose(acc, one);
        }
    }
    acc
}

/// An element's state after `k` steps with gradient 0, in closed form (`skip_steps` in
/// `rmsprop_update.wgsl`); `c` and `p` are the variable's effective configuration and scalars.
pub fn skip_steps(c: &RmsPropConfig, p: &StepScalars, s: State, k: u32) -> State {
    if k == 0 {
        return s;
    }
    let f = skip_map(c, p, k);
    let mut o = s;
    o.v = f[3] * s.v;
    if c.centered() {
        o.a = f[3] * s.a;
    }
    o.x = s.x - f[0] * s.x;
    if c.has_momentum() {
        o.x += f[1] * s.m;
        o.m = f[2] * s.m;
    }
    o
}

impl ReferenceState {
    /// Steps of the variable that `row` missed (0 without row counters).
    pub(super) fn missed(&self, row: usize) -> u32 {
        self.lazy
            .as_ref()
            .map_or(0, |l| l.count.wrapping_sub(l.rows[row]))
    }

    /// Brings every row up to date (`catch_up` then `stamp_all`): each element of a row that missed
    /// steps takes them in closed form and is stored (rounded to its types, to nearest); every row is
    /// then current. `config` is the optimizer's configuration; the variable's options apply.
    pub fn catch_up(&mut self, config: &RmsPropConfig) {
        if !self.lazy.as_ref().is_some_and(|l| l.stale) {
            return;
        }
        let rows: Vec<usize> = (0..self.x.len() / self.row_len().max(1)).collect();
        self.catch_up_rows(config, &rows);
        if let Some(l) = self.lazy.as_mut() {
            l.stale = false;
        }
    }

    /// Brings the listed rows up to date (`catch_up_rows` then `stamp_rows`; repeats, and rows out
    /// of range, as the GPU: the first caught up once, the second skipped). The variable may stay
    /// stale: other rows keep their counts.
    pub fn catch_up_rows(&mut self, config: &RmsPropConfig, rows: &[usize]) {
        if !self.lazy.as_ref().is_some_and(|l| l.stale) {
            return;
        }
        let c = self.options.effective_config(config);
        let p = self
            .options
            .hyper(config)
            .scalars(&config.catch_up_scalars());
        let row_len = self.row_len().max(1);
        let n_rows = self.x.len() / row_len;
        for &row in rows.iter().filter(|&&r| r < n_rows) {
            let k = self.missed(row);
            for i in row * row_len..(row + 1) * row_len {
                if k > 0 {
                    let s = store(&self.storage, skip_steps(&c, &p, self.state(i), k));
                    self.set(i, s, None);
                }
            }
            if let Some(l) = self.lazy.as_mut() {
                l.rows[row] = l.count;
            }
        }
    }
}
