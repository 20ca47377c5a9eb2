//! The pure planner: (variables, how each takes part, sparse layout, scalars, device limits) in, the
//! step's dispatches and norm-job tables out. No GPU: tested on its own, with property tests of
//! coverage, contiguity and limits.

use crate::kernels::{self, Params};
use crate::pool::Segment;
use crate::sparse;
use crate::step::layout::Layout;
use crate::step::sparse_prep::{SparsePrep, SparseStep};
use crate::step::validate::Part;

/// Elements one norm job (one workgroup) sums at most.
pub(crate) const NORM_TILE: u64 = 1 << 16;
/// `PRECLIPPED` and `USE_SQUARES` in `common.wgsl`.
const FLAG_PRECLIPPED: u32 = 1;
const FLAG_USE_SQUARES: u32 = 2;

/// The kernel a dispatch runs (see [`crate::step::gpu::KERNELS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Which {
    Dense,
    DenseAt,
    Lazy,
    /// The lazy update of 8-bit quantized state: whole blocks around the listed rows.
    LazyQ8,
    /// `SparseMode::LazyExact` (`rmsprop_lazy_exact.wgsl`): the lazy update after the listed rows'
    /// catch-up; every element of a variable's part caught up; listed rows, or all rows, stamped
    /// current; the variable's step count advanced.
    LazyExact,
    CatchUp,
    StampListed,
    StampAll,
    /// Given rows caught up and stamped current ([`crate::RmsProp::record_catch_up`]).
    CatchUpRows,
    StampRows,
    /// Every row of a variable and its count back to 0, its history of skipped-step maps emptied
    /// (after `CatchUp`).
    ResetRows,
    Bump,
    Scatter,
    PartialDense,
    PartialSparse,
    Finalize,
    GroupLink,
    GroupGather,
    GroupReset,
    /// Loss scale and gradient accumulation (`keras_base.wgsl`), before everything else.
    Prepare,
    /// Keras's moving average of the variables (`keras_base.wgsl::ema`), after everything else.
    Ema,
    /// The loss scale on the step's sparse values (`keras_base.wgsl::prepare_values`), first.
    PrepareValues,
    /// Variables with a row-wise velocity (`rmsprop_rowwise.wgsl`): the dense update and the lazy
    /// sparse update, 256 / `row_lanes` rows per workgroup.
    RowsDense,
    RowsLazy,
}

/// One dispatch of a step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Dispatch {
    pub which: Which,
    pub chunk: usize,
    pub params: Params,
    pub groups_y: u32,
}

/// What the planner needs of the configuration and the device.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PlanConfig {
    pub workgroup_size: u32,
    pub vec4s_per_invocation: u32,
    pub max_groups: u32,
    /// Per-variable clipping state is read by the update (found through the segment map).
    pub per_var: bool,
    /// Per-variable options are read by the update (found through the segment map, then the options
    /// table); a frozen variable takes part as an absent one whatever this says.
    pub var_options: bool,
    /// Non-finite policy `SkipStep`: every gradient value is checked on the GPU.
    pub skip_nonfinite: bool,
    /// Stochastic rounding: the dense kernel finds each element's variable and index in it (segment
    /// map).
    pub stochastic: bool,
    /// Sparse mode `Lazy` or `LazyExact`.
    pub lazy: bool,
    /// Sparse mode `LazyExact`: lazy steps catch rows up first, stamp them and count the step; dense
    /// steps of variables with rows behind catch them up first.
    pub lazy_exact: bool,
    /// `RmsPropConfig::lazy_history` (0: none): a variable whose history is full
    /// (`Variable::lazy_steps`) is caught up and reset before its next lazy step.
    pub lazy_history: u32,
    /// Norm jobs are needed (clipnorm, global_clipnorm or the non-finite check).
    pub jobs_needed: bool,
    /// Keras 3 duplicates without global_clipnorm: dense-mode sparse rows use the sums of squares.
    pub use_squares: bool,
}

/// A step's plan (reused between steps).
#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub dispatches: Vec<Dispatch>,
    /// Norm jobs: (first element or value, length, variable, 0).
    pub jobs: Vec<[u32; 4]>,
    /// Per variable: (first job, job count, flags, 0).
    pub var_step: Vec<[u32; 4]>,
    /// Room for [`prepare`] to rebuild `dispatches` without allocating (swapped with it).
    spare: Vec<Dispatch>,
}

/// What Keras's base class does to a step's gradients before the update ([`prepare`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Prepare {
    /// The loss scale factor as `f32` (1 when none).
    pub scale: f32,
    /// Accumulation steps `N` (1 when none).
    pub steps: u32,
    /// 0: scale only; 1: accumulate, no update follows; 2: average with the accumulator, clear it.
    pub mode: u32,
}

impl Prepare {
    /// For 1-based step `t`: `None` when the configuration has neither a loss scale nor accumulation.
    pub fn of(scale: Option<f64>, steps: Option<u64>, t: u64) -> Option<Prepare> {
        if scale.is_none() && steps.is_none() {
            return None;
        }
        let n = steps.unwrap_or(1);
        Some(Prepare {
            scale: scale.map_or(1.0, |s| s as f32),
            steps: n as u32,
            mode: match steps {
                None => 0,
                Some(_) if !t.is_multiple_of(n) => 1,
                Some(_) => 2,
            },
        })
    }

    /// Whether the update runs after the preparation.
    pub fn updates(&self) -> bool {
        self.mode != 1
    }
}

/// Appends one `Ema` dispatch per pool buffer over all its variables (runs split only at frozen ones,
/// which Keras does not average: they are not trainable), with momentum `m` (as `f32`), `1 - m` and
/// `mode` (see `keras_base.wgsl::ema`).
pub(crate) fn ema(cfg: &PlanConfig, layout: &Layout, m: f32, mode: u32, out: &mut Vec<Dispatch>) {
    let group = u64::from(cfg.workgroup_size) * u64::from(cfg.vec4s_per_invocation);
    let params = Params {
        lr: m,
        one_minus_rho: 1.0 - m,
        var_index: mode,
        ..Params::default()
    };
    let mg = u64::from(cfg.max_groups);
    for (ci, chunk) in layout.chunks.iter().enumerate() {
        let mut run: Option<(u64, u64)> = None;
        for &(begin, end, var) in &chunk.segments {
            if layout.variables[var].frozen() {
                if let Some(r) = run.take() {
                    push(out, mg, Which::Ema, ci, params, r, group);
                }
                continue;
            }
            run = Some(run.map_or((begin, end), |(b, _)| (b, end)));
        }
        if let Some(r) = run {
            push(out, mg, Which::Ema, ci, params, r, group);
        }
    }
}

/// Puts one `Prepare` dispatch over the range of each dense-update dispatch of `out` first (so the norms,
/// clipping and update see the prepared gradients), and one `PrepareValues` over each sparse gradient's
/// values (loss scale only: accumulation takes dense gradients); without an update (`p.mode == 1`) only
/// those remain.
///
/// `densified[var]`: the variable's gradient was a sparse one made dense on the host, already divided by
/// the loss scale; then the preparation runs per variable (scale 1 for those), not per run.
pub(crate) fn prepare(
    p: &Prepare,
    cfg: &PlanConfig,
    layout: &Layout,
    sparse: &SparsePrep,
    (parts, densified): (&[Part], &[bool]),
    out: &mut Plan,
) {
    out.spare.clear();
    if densified.iter().any(|&d| d) {
        let group = u64::from(cfg.workgroup_size) * u64::from(cfg.vec4s_per_invocation);
        for (ci, chunk) in layout.chunks.iter().enumerate() {
            for &(begin, end, var) in &chunk.segments {
                if parts[var] != Part::Dense {
                    continue;
                }
                let params = Params {
                    lr: if densified[var] { 1.0 } else { p.scale },
                    rho: p.steps as f32,
                    var_index: p.mode,
                    ..Params::default()
                };
                let mg = u64::from(cfg.max_groups);
                push(
                    &mut out.spare,
                    mg,
                    Which::Prepare,
                    ci,
                    params,
                    (begin, end),
                    group,
                );
            }
        }
        if p.updates() {
            out.spare.extend_from_slice(&out.dispatches);
        }
        std::mem::swap(&mut out.spare, &mut out.dispatches);
        return;
    }
    let params = Params {
        lr: p.scale,
        ..Params::default()
    };
    for sp in &sparse.steps {
        let n = u64::from(sp.listed) * layout.variables[sp.var].row_len as u64;
        let first = u64::from(sp.values_base);
        let (mg, wg) = (u64::from(cfg.max_groups), u64::from(cfg.workgroup_size));
        push(
            &mut out.spare,
            mg,
            Which::PrepareValues,
            0,
            params,
            (first, first + n),
            wg,
        );
    }
    for d in &out.dispatches {
        if matches!(d.which, Which::Dense | Which::DenseAt) {
            out.spare.push(Dispatch {
                which: Which::Prepare,
                params: Params {
                    lr: p.scale,
                    rho: p.steps as f32,
                    var_index: p.mode,
                    ..d.params
                },
                ..*d
            });
        }
    }
    if p.updates() {
        out.spare.extend_from_slice(&out.dispatches);
    }
    std::mem::swap(&mut out.spare, &mut out.dispatches);
}

/// Splits `[begin, end)` into dispatches of at most `max_groups^2` groups of `per_group` items.
fn push(
    out: &mut Vec<Dispatch>,
    max_groups: u64,
    which: Which,
    chunk: usize,
    params: Params,
    (begin, end): (u64, u64),
    per_group: u64,
) {
    let per_dispatch = max_groups * max_groups * per_group;
    let mut b = begin;
    while b < end {
        let e = end.min(b + per_dispatch);
        let groups = (e - b).div_ceil(per_group);
        let (gx, gy) = kernels::fold_grid(groups, max_groups);
        out.push(Dispatch {
            // `main_at` serves ranges that do not start at 0 (see rmsprop_dense.wgsl).
            which: if which == Which::Dense && b > 0 {
                Which::DenseAt
            } else {
                which
            },
            chunk,
            params: Params {
                begin: b as u32,
                end: e as u32,
                groups_x: gx as u32,
                ..params
            },
            groups_y: gy as u32,
        });
        b = e;
    }
}

/// Plans one step into `out`.
pub(crate) fn plan(
    cfg: &PlanConfig,
    base: Params,
    layout: &Layout,
    parts: &[Part],
    sparse: &SparsePrep,
    out: &mut Plan,
) {
    let wg = u64::from(cfg.workgroup_size);
    let dense_group = wg * u64::from(cfg.vec4s_per_invocation);
    let mg = u64::from(cfg.max_groups);
    let d = &mut out.dispatches;
    d.clear();
    // Variables the dense kernel updates: dense gradients, and sparse ones in dense mode.
    let dense_updated = |part: Part| part == Part::Dense || (part == Part::Sparse && !cfg.lazy);

    // 1. Norms: jobs in (chunk, offset) order for dense gradients, then the sparse values.
    out.jobs.clear();
    out.var_step.clear();
    if cfg.per_var || cfg.skip_nonfinite {
        out.var_step.resize(layout.variables.len(), [0; 4]);
    }
    if cfg.jobs_needed {
        for (ci, chunk) in layout.chunks.iter().enumerate() {
            let first = out.jobs.len() as u64;
            for &(begin, _, var) in &chunk.segments {
                if parts[var] != Part::Dense {
                    continue;
                }
                let seg = layout.variables[var]
                    .segments
                    .iter()
                    .find(|s| s.chunk == ci && s.offset == begin)
                    .copied()
                    .unwrap_or(Segment {
                        chunk: ci,
                        offset: begin,
                        first_elem: 0,
                        elems: 0,
                    });
                let vs = &mut out.var_step[var];
                if vs[1] == 0 {
                    vs[0] = out.jobs.len() as u32;
                }
                let mut k = 0;
                while k < seg.elems as u64 {
                    let n = NORM_TILE.min(seg.elems as u64 - k);
                    out.jobs
                        .push([(seg.offset * 4 + k) as u32, n as u32, var as u32, 0]);
                    vs[1] += 1;
                    k += n;
                }
            }
            let last = out.jobs.len() as u64;
            push(d, mg, Which::PartialDense, ci, base, (first, last), 1);
        }
        let first = out.jobs.len() as u64;
        for sp in &sparse.steps {
            let n = u64::from(sp.listed) * layout.variables[sp.var].row_len as u64;
            let vs = &mut out.var_step[sp.var];
            vs[0] = out.jobs.len() as u32;
            let mut k = 0;
            while k < n {
                let len = NORM_TILE.min(n - k);
                out.jobs.push([
                    (u64::from(sp.values_base) + k) as u32,
                    len as u32,
                    sp.var as u32,
                    0,
                ]);
                vs[1] += 1;
                k += len;
            }
        }
        let last = out.jobs.len() as u64;
        push(d, mg, Which::PartialSparse, 0, base, (first, last), 1);
    }
    // 2. Per-variable clipping state.
    if cfg.per_var || cfg.skip_nonfinite {
        if !cfg.lazy {
            let flags = FLAG_PRECLIPPED | if cfg.use_squares { FLAG_USE_SQUARES } else { 0 };
            for sp in &sparse.steps {
                out.var_step[sp.var][2] = flags;
            }
        }
        d.push(Dispatch {
            which: Which::Finalize,
            chunk: 0,
            params: Params {
                end: layout.variables.len() as u32,
                groups_x: 1,
                ..base
            },
            groups_y: 1,
        });
    }
    // 3. Sparse rows: indices on the GPU are grouped there first; then the rows are merged into the
    //    gradient pool (dense mode) or updated in place (lazy); the row heads are reset last.
    let grouping = |sp: &SparseStep, gpu| grouping(layout, sp, gpu, base);
    for sp in &sparse.steps {
        if let Some(gpu) = sp.gpu {
            let params = grouping(sp, gpu);
            let listed = (0, u64::from(sp.listed));
            push(d, mg, Which::GroupLink, 0, params, listed, wg);
            push(d, mg, Which::GroupGather, 0, params, listed, wg);
        }
    }
    for sp in &sparse.steps {
        let v = &layout.variables[sp.var];
        // LazyExact under a schedule: a variable whose history is full is caught up and its counts
        // reset first (every row current at count 0).
        if cfg.lazy && cfg.lazy_exact && cfg.lazy_history > 0 && v.lazy_steps >= cfg.lazy_history {
            catch_up(d, (mg, wg), base, (v, sp.var), Which::ResetRows);
        }
        let items = u64::from(sp.unique_rows) * v.row_len as u64;
        for seg in &v.segments {
            let params = Params {
                var_index: sp.var as u32,
                row_len: v.row_len as u32,
                values_base: sp.values_base,
                index_base: sp.index_base,
                unique_rows: sp.unique_rows,
                seg_first: seg.first_elem as u32,
                seg_len: seg.elems as u32,
                seg_base: (seg.offset * 4) as u32,
                ..base
            };
            let range = rows_range(sparse, sp, v.row_len as u64, seg, items);
            let which = match (cfg.lazy, v.storage.state == crate::dtype::Dtype::Q8) {
                (true, _) if v.rowwise => Which::RowsLazy,
                (true, _) if cfg.lazy_exact => Which::LazyExact,
                (true, false) => Which::Lazy,
                (true, true) => Which::LazyQ8,
                (false, _) => Which::Scatter,
            };
            let params = Params {
                rows_base: v.rows_base,
                hist_base: v.hist_base,
                ..params
            };
            // 8-bit state: the work items are a block's invocations (`q8_block` vec4) per distinct row
            // and block it can touch (see `rmsprop_lazy_q8.wgsl`), for the same rows.
            let (range, params) = match which {
                Which::LazyQ8 => {
                    let block = 4 * layout.q8_block;
                    let row_len = v.row_len as u64;
                    let pairs = (range.1 - range.0) / row_len * q8_blocks_per_row(row_len, block);
                    let blocks = (seg.elems as u64).div_ceil(block);
                    // One work item per block where rows would give more (`ema_mode` 1: see the
                    // shader), else per (row, block of it).
                    let by_blocks = u32::from(pairs > blocks);
                    let first = match by_blocks {
                        1 => 0,
                        _ => range.0 / row_len * q8_blocks_per_row(row_len, block),
                    };
                    let items = pairs.min(blocks) * layout.q8_block;
                    let first = first * layout.q8_block;
                    let params = Params {
                        ema_mode: by_blocks,
                        ..params
                    };
                    ((first, first + items), params)
                }
                // Distinct rows, several per workgroup when they are short.
                Which::RowsLazy => {
                    let row_len = v.row_len as u64;
                    let rows = (range.0 / row_len, range.1.div_ceil(row_len));
                    let per_group = rows_per_workgroup(v.row_len);
                    push(d, mg, which, seg.chunk, params, rows, per_group);
                    continue;
                }
                _ => (range, params),
            };
            push(d, mg, which, seg.chunk, params, range, wg);
        }
        if cfg.lazy_exact {
            // The listed rows are current at the variable's next count, which the bump then reaches.
            let params = Params {
                var_index: sp.var as u32,
                index_base: sp.index_base,
                unique_rows: sp.unique_rows,
                rows_base: v.rows_base,
                hist_base: v.hist_base,
                ..base
            };
            let chunk = v.segments.first().map_or(0, |s| s.chunk);
            let listed = (0, u64::from(sp.unique_rows));
            push(d, mg, Which::StampListed, chunk, params, listed, wg);
            push(d, mg, Which::Bump, chunk, params, (0, 1), wg);
        }
    }
    for sp in &sparse.steps {
        if let Some(gpu) = sp.gpu {
            let params = grouping(sp, gpu);
            push(
                d,
                mg,
                Which::GroupReset,
                0,
                params,
                (0, u64::from(sp.listed)),
                wg,
            );
        }
    }
    // 4a. SparseMode::LazyExact: a variable updated densely whose rows may be behind catches them up
    //     first (every element, then every row stamped current; its count need not move).
    if cfg.lazy_exact {
        for (var, v) in layout.variables.iter().enumerate() {
            if v.stale && dense_updated(parts[var]) {
                catch_up(d, (mg, wg), base, (v, var), Which::StampAll);
            }
        }
    }
    // 4. The dense update: maximal runs of variables that follow one another in a chunk (one dispatch per
    //    pool buffer when every variable is in the step; the alignment padding between them is swept
    //    too, it stays zero). Per-variable state is found through the chunk's segment map.
    for (ci, chunk) in layout.chunks.iter().enumerate() {
        let params = match cfg.per_var || cfg.var_options || cfg.stochastic {
            true => {
                let (seg_base, seg_len) = map_region(layout, ci);
                Params {
                    seg_base,
                    seg_len,
                    ..base
                }
            }
            false => base,
        };
        let mut run: Option<(u64, u64)> = None;
        for &(begin, end, var) in &chunk.segments {
            let v = &layout.variables[var];
            if v.rowwise && dense_updated(parts[var]) {
                // A row-wise chunk holds row-wise variables only: no runs of the dense kernel there.
                rows_dense(d, mg, base, v, var, (ci, begin));
                continue;
            }
            if !dense_updated(parts[var]) {
                if let Some(r) = run.take() {
                    push(d, mg, Which::Dense, ci, params, r, dense_group);
                }
                continue;
            }
            run = Some(run.map_or((begin, end), |(b, _)| (b, end)));
        }
        if let Some(r) = run {
            push(d, mg, Which::Dense, ci, params, r, dense_group);
        }
    }
}

/// Appends the dense update of the part of row-wise variable `var` (`v`) that starts at vec4 `begin`
/// of chunk `chunk`: `ROW_GROUP / lanes` rows per workgroup (`rmsprop_rowwise.wgsl::rows_dense`).
fn rows_dense(
    d: &mut Vec<Dispatch>,
    max_groups: u64,
    base: Params,
    v: &crate::step::layout::Variable,
    var: usize,
    (chunk, begin): (usize, u64),
) {
    let Some(seg) = v
        .segments
        .iter()
        .find(|s| s.chunk == chunk && s.offset == begin)
    else {
        return;
    };
    let row_len = v.row_len.max(1);
    let params = Params {
        var_index: var as u32,
        row_len: row_len as u32,
        seg_first: seg.first_elem as u32,
        seg_len: seg.elems as u32,
        seg_base: (seg.offset * 4) as u32,
        rows_base: v.rows_base,
        ..base
    };
    let rows = (0, (seg.elems / row_len) as u64);
    let per_group = rows_per_workgroup(row_len);
    push(
        d,
        max_groups,
        Which::RowsDense,
        chunk,
        params,
        rows,
        per_group,
    );
}

/// Rows of `row_len` elements that one workgroup of the row-wise kernels updates.
fn rows_per_workgroup(row_len: usize) -> u64 {
    use crate::reference::rowwise::{row_lanes, ROW_GROUP};
    (ROW_GROUP / row_lanes(row_len)) as u64
}

/// The work items (one per element of a distinct listed row, `items` in all) of `sp`'s rows that
/// overlap the part `seg` of its variable. Host-grouped rows are sorted: only the distinct rows that
/// overlap this pool buffer's part are dispatched, so a split table still costs O(touched rows);
/// GPU-grouped ones are all dispatched (the kernels skip rows outside the part).
fn rows_range(
    sparse: &SparsePrep,
    sp: &SparseStep,
    row_len: u64,
    seg: &Segment,
    items: u64,
) -> (u64, u64) {
    if sp.gpu.is_some() {
        return (0, items);
    }
    let rows = &sparse.index[sp.index_base as usize + sparse::HEADER..][..sp.unique_rows as usize];
    let (first, end) = (seg.first_elem as u64, (seg.first_elem + seg.elems) as u64);
    let lo = rows.partition_point(|&r| (u64::from(r) + 1) * row_len <= first);
    let hi = rows.partition_point(|&r| u64::from(r) * row_len < end);
    (lo as u64 * row_len, hi as u64 * row_len)
}

/// The parameters of the dispatches that group `sp`'s GPU indices (`sparse_group.wgsl`; `gpu` as
/// [`SparseStep::gpu`]).
fn grouping(layout: &Layout, sp: &SparseStep, gpu: (u32, u32, u32), base: Params) -> Params {
    Params {
        index_base: sp.index_base,
        unique_rows: sp.unique_rows,
        seg_first: gpu.0,
        seg_len: layout.variables[sp.var].shape[0] as u32,
        values_base: gpu.1,
        var_index: gpu.2,
        ..base
    }
}

/// Plans [`crate::RmsProp::record_catch_up`]: the given rows (`sparse`, grouped as a step's indices,
/// with no values) brought up to date: GPU indices grouped, each part of each variable caught up
/// (`CatchUpRows`), the rows stamped current (`StampRows`), the grouping's heads reset.
pub(crate) fn catch_up_rows(
    cfg: &PlanConfig,
    base: Params,
    layout: &Layout,
    sparse: &SparsePrep,
    d: &mut Vec<Dispatch>,
) {
    let (wg, mg) = (u64::from(cfg.workgroup_size), u64::from(cfg.max_groups));
    d.clear();
    let grouping = |sp: &SparseStep, gpu| grouping(layout, sp, gpu, base);
    for sp in &sparse.steps {
        if let Some(gpu) = sp.gpu {
            let listed = (0, u64::from(sp.listed));
            push(d, mg, Which::GroupLink, 0, grouping(sp, gpu), listed, wg);
            push(d, mg, Which::GroupGather, 0, grouping(sp, gpu), listed, wg);
        }
    }
    for sp in &sparse.steps {
        let v = &layout.variables[sp.var];
        let params = Params {
            var_index: sp.var as u32,
            row_len: v.row_len as u32,
            index_base: sp.index_base,
            unique_rows: sp.unique_rows,
            rows_base: v.rows_base,
            hist_base: v.hist_base,
            ..base
        };
        let items = u64::from(sp.unique_rows) * v.row_len as u64;
        for seg in &v.segments {
            let range = rows_range(sparse, sp, v.row_len as u64, seg, items);
            let params = Params {
                seg_first: seg.first_elem as u32,
                seg_len: seg.elems as u32,
                seg_base: (seg.offset * 4) as u32,
                ..params
            };
            push(d, mg, Which::CatchUpRows, seg.chunk, params, range, wg);
        }
        let chunk = v.segments.first().map_or(0, |s| s.chunk);
        let listed = (0, u64::from(sp.unique_rows));
        push(d, mg, Which::StampRows, chunk, params, listed, wg);
    }
    for sp in &sparse.steps {
        if let Some(gpu) = sp.gpu {
            let listed = (0, u64::from(sp.listed));
            push(d, mg, Which::GroupReset, 0, grouping(sp, gpu), listed, wg);
        }
    }
}

/// Appends the dispatches that bring every row of variable `var` (`v`) up to date: `CatchUp` per part
/// of it in a pool buffer, then `then` over its rows: `StampAll` (current at its count) or
/// `ResetRows` (count and rows back to 0) (`rmsprop_lazy_exact.wgsl`).
pub(crate) fn catch_up(
    d: &mut Vec<Dispatch>,
    (max_groups, per_group): (u64, u64),
    base: Params,
    (v, var): (&crate::step::layout::Variable, usize),
    then: Which,
) {
    let params = Params {
        var_index: var as u32,
        row_len: v.row_len as u32,
        rows_base: v.rows_base,
        hist_base: v.hist_base,
        ..base
    };
    for seg in &v.segments {
        let params = Params {
            seg_first: seg.first_elem as u32,
            seg_len: seg.elems as u32,
            seg_base: (seg.offset * 4) as u32,
            ..params
        };
        let elems = (0, seg.elems as u64);
        push(
            d,
            max_groups,
            Which::CatchUp,
            seg.chunk,
            params,
            elems,
            per_group,
        );
    }
    let chunk = v.segments.first().map_or(0, |s| s.chunk);
    let rows = (0, v.rows() as u64);
    push(d, max_groups, then, chunk, params, rows, per_group);
}

/// The most blocks of `block` elements a row of `row_len` elements can touch (rows start at multiples
/// of gcd(row_len, block), the block a power of two); `rmsprop_lazy_q8.wgsl::blocks_per_row`.
pub(crate) fn q8_blocks_per_row(row_len: u64, block: u64) -> u64 {
    let g = block.min(row_len & row_len.wrapping_neg());
    (block - g + row_len - 1) / block + 1
}

/// Chunk `ci`'s region of the segment map (see [`Layout::segment_map`]): (first entry, segments).
fn map_region(layout: &Layout, ci: usize) -> (u32, u32) {
    let before: usize = layout.chunks[..ci]
        .iter()
        .map(|c| 2 * c.segments.len())
        .sum();
    (
        (layout.variables.len() + before) as u32,
        layout.chunks[ci].segments.len() as u32,
    )
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
