//! The row-wise velocity on the host ([`crate::VarOptions::rowwise_velocity`]), operation for operation
//! as `shaders/rmsprop_rowwise.wgsl`: per row, the squares of the (processed) gradients summed per lane
//! (groups of four elements, [`row_sum`]) and then over the lanes by halves, the mean, then every
//! element updated by [`rmsprop`] with the row's old velocity and the mean in place of `g^2`, and the
//! row's new velocity `rho*v + (1-rho)*mean`.

use super::{group_rows, rmsprop, ReferenceState, State, VarInfo};
use crate::config::{RmsPropConfig, SparseMode, StepScalars, WeightDecay};

/// The most lanes a row takes (`ROW_LANES` in `rmsprop_rowwise.wgsl`).
pub const ROW_LANES: usize = 64;
/// Invocations per workgroup of the row-wise kernels (`ROW_GROUP`): `ROW_GROUP / row_lanes(n)` rows each.
pub const ROW_GROUP: usize = 256;

/// The lanes a row of `n` elements takes (`row_lanes`): one up to [`ROW_LANES`] elements (summed in
/// order), else [`ROW_LANES`].
pub fn row_lanes(n: usize) -> usize {
    if n <= ROW_LANES {
        1
    } else {
        ROW_LANES
    }
}

/// The sum of `squares(j)` for `j < n` in the kernel's order: per lane (elements `4k .. 4k + 3` for
/// `k = lane, lane + lanes, ..`, in order, `lanes = row_lanes(n)`), then lane `l` adds lane `l + s` for
/// `s = lanes / 2, .., 1` (`row_sum`).
pub fn row_sum(n: usize, squares: impl Fn(usize) -> f32) -> f32 {
    let lanes_n = row_lanes(n);
    let mut lanes = [0.0f32; ROW_LANES];
    for (lane, sum) in lanes.iter_mut().enumerate().take(lanes_n) {
        let mut j = 4 * lane;
        while j < n {
            for i in j..(j + 4).min(n) {
                *sum += squares(i);
            }
            j += 4 * lanes_n;
        }
    }
    let mut s = lanes_n / 2;
    while s > 0 {
        for lane in 0..s {
            lanes[lane] += lanes[lane + s];
        }
        s /= 2;
    }
    lanes[0]
}

/// Updates one row: `x` and `m` (its momentum, when kept) in place, `v` the row's velocity, `g` its
/// gradient (clipped), under the variable's effective configuration `c` and scalars `p`.
pub fn update_row(
    c: &RmsPropConfig,
    p: &StepScalars,
    x: &mut [f32],
    mut m: Option<&mut [f32]>,
    v: &mut f32,
    g: &[f32],
) {
    let n = g.len();
    let l2 = matches!(c.weight_decay(), WeightDecay::L2(_));
    // `effective_gradient`: sign, then L2 decay from the old variable.
    let effective = |j: usize| {
        let mut gj = g[j];
        if c.maximize() {
            gj = -gj;
        }
        if l2 {
            gj += p.weight_decay * x[j];
        }
        gj
    };
    let mean = row_sum(n, |j| {
        let gj = effective(j);
        gj * gj
    }) / n as f32;
    for j in 0..n {
        let s = State {
            x: x[j],
            v: *v,
            m: m.as_ref().map_or(0.0, |m| m[j]),
            a: 0.0,
        };
        let s = rmsprop(c, p, s, g[j], mean, true);
        x[j] = s.x;
        if let Some(m) = m.as_mut() {
            m[j] = s.m;
        }
    }
    *v = p.rho * *v + p.one_minus_rho * mean;
}

/// A row-wise variable's step: a dense gradient updates every row; a sparse one every listed row
/// (duplicates summed in list order, clipped each) in lazy mode, or every row from the merged rows
/// (unlisted rows 0) in dense mode. `info` is the variable's clipping state of the step.
pub(super) fn step(
    var: &mut ReferenceState,
    c: &RmsPropConfig,
    p: &StepScalars,
    g: super::RefGradient<'_>,
    info: &VarInfo,
) {
    let row_len = var.row_len().max(1);
    let rows = var.x.len() / row_len;
    let dense: Vec<f32> = match g {
        super::RefGradient::Dense(g) => g.iter().map(|&gi| info.clip(gi)).collect(),
        super::RefGradient::Sparse { indices, values } => {
            let grouped = group_rows(indices);
            let merged = |ks: &[usize], col: usize| {
                let mut sum = 0.0f32;
                for &k in ks {
                    sum += info.clip(values[k * row_len + col]);
                }
                sum
            };
            if c.sparse_mode() == SparseMode::Dense {
                let mut dense = vec![0.0f32; var.x.len()];
                for (row, ks) in &grouped {
                    for col in 0..row_len {
                        dense[row * row_len + col] = merged(ks, col);
                    }
                }
                dense
            } else {
                for (row, ks) in &grouped {
                    let g: Vec<f32> = (0..row_len).map(|col| merged(ks, col)).collect();
                    let at = row * row_len..(row + 1) * row_len;
                    let m = var.m.as_mut().map(|m| &mut m[at.clone()]);
                    update_row(c, p, &mut var.x[at], m, &mut var.v[*row], &g);
                }
                return;
            }
        }
    };
    for row in 0..rows {
        let at = row * row_len..(row + 1) * row_len;
        let m = var.m.as_mut().map(|m| &mut m[at.clone()]);
        update_row(c, p, &mut var.x[at.clone()], m, &mut var.v[row], &dense[at]);
    }
}
