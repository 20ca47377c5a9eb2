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
    /// Under a learning-rate schedule ([`RmsPropConfig::lazy_exact_history`] entries, else empty): the
    /// maps of the variable's lazy steps since its counts were last reset, by level (see
    /// `rmsprop_lazy_exact.wgsl`): level `l` holds at entry `i` the steps `(i 2^l, (i + 1) 2^l]`.
    pub history: Vec<[f32; 4]>,
    /// Lazy steps since the last reset, as the optimizer counts them (skipped steps too).
    pub lazy_steps: u32,
}

impl LazyRows {
    /// The history's length (0: none).
    fn len(&self) -> u32 {
        (self.history.len() / 2) as u32
    }

    /// First entry of level `l` (`level_at`).
    fn level_at(&self, l: u32) -> usize {
        let h = 2 * self.len();
        (h - (h >> l)) as usize
    }

    /// The map of steps `(s, t]` (`history_map`).
    fn history_map(&self, s: u32, t: u32) -> [f32; 4] {
        let mut acc = [0.0, 0.0, 1.0, 1.0];
        let mut c = s;
        while c < t {
            let mut l = 0;
            while (c & ((1 << (l + 1)) - 1)) == 0 && c + (1 << (l + 1)) <= t {
                l += 1;
            }
            acc = then(acc, self.history[self.level_at(l) + (c >> l) as usize]);
            c += 1 << l;
        }
        acc
    }

    /// The count advanced and, with a history, this step's map `one` pushed (`bump`).
    pub(super) fn bump(&mut self, one: [f32; 4]) {
        let c = self.count.wrapping_add(1);
        self.count = c;
        if self.history.is_empty() {
            return;
        }
        self.history[(c - 1) as usize] = one;
        let mut l = 1;
        while (1 << l) <= self.len() && (c & ((1 << l) - 1)) == 0 {
            let i = ((c >> l) - 1) as usize;
            let below = self.level_at(l - 1) + 2 * i;
            let at = self.level_at(l) + i;
            self.history[at] = then(self.history[below], self.history[below + 1]);
            l += 1;
        }
    }
}

/// The map `f` then `g` of two different steps (`skip_then`).
fn then(f: [f32; 4], g: [f32; 4]) -> [f32; 4] {
    [
        f[0] + g[0] - f[0] * g[0],
        f[1] - g[0] * f[1] + g[1] * f[2],
        f[2] * g[2],
        f[3] * g[3],
    ]
}

/// One step with gradient 0 as a linear map: (d, b, momentum, rho) for x' = x - d*x + b*m,
/// m' = momentum*m, v' = rho*v, a' = rho*a (`skip_one`; the decay kept as its deficit `d = wd*lr`).
pub(super) fn skip_one(c: &RmsPropConfig, p: &StepScalars) -> [f32; 4] {
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
    skip_apply(c, s, skip_map(c, p, k))
}

/// An element's state through the map `f` of skipped steps (`skip_apply`).
fn skip_apply(c: &RmsPropConfig, s: State, f: [f32; 4]) -> State {
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

    /// Element state `s` of `row` after the steps the row missed (`caught_up`): from the history
    /// under a schedule, else the closed form; `c` and `p` the variable's effective configuration and
    /// scalars.
    pub(super) fn caught_up(
        &self,
        c: &RmsPropConfig,
        p: &StepScalars,
        s: State,
        row: usize,
    ) -> State {
        match &self.lazy {
            Some(l) if !l.history.is_empty() => match l.rows[row] == l.count {
                true => s,
                false => skip_apply(c, s, l.history_map(l.rows[row], l.count)),
            },
            _ => skip_steps(c, p, s, self.missed(row)),
        }
    }

    /// Before a lazy step of the variable (whether or not the non-finite policy then skips it): with
    /// a full history, every row caught up and every count back to 0 (`catch_up`, `reset_rows`);
    /// the lazy steps counted as the optimizer counts them.
    pub(super) fn before_lazy_step(&mut self, config: &RmsPropConfig) {
        let Some(l) = self.lazy.as_ref() else {
            return;
        };
        let n = l.len();
        if n == 0 {
            return;
        }
        if l.lazy_steps >= n {
            self.catch_up(config);
        }
        if let Some(l) = self.lazy.as_mut() {
            if l.lazy_steps >= n {
                l.count = 0;
                l.rows.fill(0);
                l.lazy_steps = 0;
            }
            l.lazy_steps += 1;
        }
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
                    let s = store(&self.storage, self.caught_up(&c, &p, self.state(i), row));
                    self.set(i, s, None);
                }
            }
            if let Some(l) = self.lazy.as_mut() {
                l.rows[row] = l.count;
            }
        }
    }
}
