// Row-wise velocity (`VarOptions::rowwise_velocity`, as FBGEMM's row-wise optimizers for embedding
// tables): one velocity per row, from the mean of the row's squared (processed) gradients,
//   v_r = rho*v_r + (1-rho)*mean_j(g_rj^2),
// and every element of the row updated by the stages of `rmsprop` (rmsprop_update.wgsl) with the row's
// new velocity in place of its own: so epsilon, bias correction, momentum (per element) and decay are
// exactly the element-wise update's. Each row takes `lanes` invocations (see `row_lanes`): the squares
// are summed per lane (elements 4k .. 4k + 3 for k = lane, lane + lanes, ..., in order) and then over
// the lanes in a fixed tree, so the sum is deterministic; the twin (`reference::rowwise`) adds in the
// same order.
// The velocity lives in binding 23, from `p.rows_base` (the variable's first row), one f32 per row;
// these variables' chunks keep no element-wise velocity. f32 pools only (the options refuse others).
// Twin: `reference::rowwise`. (Prepended: common.wgsl, half.wgsl, the pool declarations in scalar
// form, rmsprop_update.wgsl.)

@group(0) @binding(7) var<storage, read> var_info: array<VarInfo>;
@group(0) @binding(8) var<storage, read> values: array<f32>;
@group(0) @binding(9) var<storage, read> index: array<u32>;
@group(0) @binding(14) var<storage, read> status: array<u32>;
@group(0) @binding(23) var<storage, read_write> row_velocity: array<f32>;

// Some variable keeps a row-wise velocity (these kernels are built only then).
override ROW_VELOCITY: bool = false;

// A workgroup holds ROW_GROUP / lanes rows (the twin's `row_lanes`). A row of at most ROW_LANES
// elements takes one invocation, which sums it in order, with no barrier: lavapipe's barriers switch
// between the workgroup's subgroups (16-element rows shared by 16 lanes cost 1.5x more; 64-element
// rows shared by 16 lanes of four elements took 5.3x the element-wise dense step in the 1M x 64 bench,
// against 1.9x). A longer row takes ROW_LANES lanes, each summing its groups of four elements in
// order, then the lanes are added by halves in workgroup memory. Rows past the dispatch's range
// compute a clamped row and write nothing.
const ROW_LANES: u32 = 64u;
const ROW_GROUP: u32 = 256u;
var<workgroup> lane_sums: array<f32, ROW_GROUP>;

fn row_lanes(n: u32) -> u32 {
    if n <= ROW_LANES {
        return 1u;
    }
    return ROW_LANES;
}

// The sum over the `lanes` lanes of invocation `lid`'s row of each lane's `mine`, by halves: lane l adds
// lane l + s for s = lanes / 2, .., 1. In uniform control flow (`lanes` comes from the parameters).
fn row_sum(lid: u32, lanes: u32, mine: f32) -> f32 {
    if lanes == 1u {
        return mine;
    }
    lane_sums[lid] = mine;
    workgroupBarrier();
    let lane = lid % lanes;
    for (var s = lanes / 2u; s > 0u; s = s / 2u) {
        if lane < s {
            lane_sums[lid] = lane_sums[lid] + lane_sums[lid + s];
        }
        workgroupBarrier();
    }
    return lane_sums[lid - lane];
}

// The hyperparameters and clipping state of the dispatch's variable (`p.var_index`).
fn row_hyper() -> Hyper {
    var h = Hyper();
    if VAR_OPTIONS != 0u {
        h = hyper(p.var_index);
    }
    return h;
}

fn row_info() -> VarInfo {
    var info = VarInfo(1.0, 1.0, 0.0, PRECLIPPED);
    if PER_VAR {
        info = var_info[p.var_index];
    }
    return info;
}

// Whether the step writes (the non-finite policy may skip it).
fn row_writes() -> bool {
    if SKIP_NONFINITE {
        return status[0] == 0u;
    }
    return true;
}

// Elements [j, j + 4) of a row of `n` elements: those in the row. A lane works on four consecutive
// elements at once, in the vec4 lanes of the update (every operation of the update is lane-wise, so
// each element is computed exactly as alone); elements past the row repeat its last one and are
// neither summed nor stored.
fn in_row(j: u32, n: u32) -> vec4<bool> {
    return vec4<u32>(j) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(n);
}

fn at4(first: u32, j: u32, n: u32) -> vec4<u32> {
    return min(vec4<u32>(first + j) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(first + n - 1u));
}

fn row_x(e: vec4<u32>) -> vec4<f32> {
    return vec4<f32>(ld_x(e.x), ld_x(e.y), ld_x(e.z), ld_x(e.w));
}

fn row_m(e: vec4<u32>) -> vec4<f32> {
    return vec4<f32>(ld_m(e.x), ld_m(e.y), ld_m(e.z), ld_m(e.w));
}

// The dense gradient of pool elements `e` as the dense kernel reads it: clipped per variable unless
// `scatter` wrote it clipped (dense-mode sparse rows).
fn dense_gradient(e: vec4<u32>, info: VarInfo) -> vec4<f32> {
    var g = vec4<f32>(ld_g(e.x), ld_g(e.y), ld_g(e.z), ld_g(e.w));
    if PER_VAR && (info.flags & PRECLIPPED) == 0u {
        g = clip_gradient(g, info);
    }
    return g;
}

// Adds the squares of the effective gradient `ge` of elements [j, j + 4) to `sum`, in element order.
fn add_squares(sum: f32, ge: vec4<f32>, ok: vec4<bool>) -> f32 {
    let sq = ge * ge;
    var s = sum;
    for (var i = 0u; i < 4u; i++) {
        if ok[i] {
            s += sq[i];
        }
    }
    return s;
}

// The row's new velocity from its old one and the mean of its squared gradients (`next_velocity` with
// the mean in place of g^2), computed once per row: a compiler may contract `rho*v + (1-rho)*q` into a
// fused multiply-add in one place and not in another, so every lane uses the value the row stores.
fn row_update_velocity(v: f32, mean: f32, h: Hyper) -> f32 {
    return next_velocity(vec4<f32>(v), vec4<f32>(0.0), vec4<f32>(mean), true, h).x;
}

// Elements `e` of a row (`ok`: in it), as the dense kernel's `update` with the row's denominator `d`.
fn row_elements(e: vec4<u32>, ok: vec4<bool>, g: vec4<f32>, d: vec4<f32>, h: Hyper, live: bool) {
    let x = row_x(e);
    let ge = effective_gradient(g, x, h);
    let dir = direction(ge, d, h);
    var mn = vec4<f32>(0.0);
    let w = ok & vec4<bool>(live);
    if keeps_momentum(h) {
        mn = next_momentum(row_m(e), dir, h);
        for (var i = 0u; i < 4u; i++) {
            if w[i] {
                st_m(e[i], mn[i]);
            }
        }
    }
    let xn = next_variable(x, dir, mn, h);
    for (var i = 0u; i < 4u; i++) {
        if w[i] {
            st_x(e[i], xn[i]);
        }
    }
}

// Rows [begin, end) of the variable's part in the bound pool buffer (which holds whole rows: element
// `seg_first + t` of the variable at `seg_base + t`), ROW_GROUP / lanes per workgroup. Lane `l` of a
// row takes elements [4k, 4k + 4) for k = l, l + lanes, ...
@compute @workgroup_size(ROW_GROUP)
fn rows_dense(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let lanes = row_lanes(p.row_len);
    let group_first = p.begin + (wid.y * p.groups_x + wid.x) * (ROW_GROUP / lanes);
    if group_first >= p.end {
        return;
    }
    let n = p.row_len;
    let lane = lid % lanes;
    let wanted = group_first + lid / lanes;
    let r = min(wanted, p.end - 1u);
    let live = wanted < p.end && row_writes();
    let h = row_hyper();
    let info = row_info();
    let first = p.seg_base + r * n;
    // Read before the barriers of `row_sum`: lane 0 stores the new value while other lanes may still
    // be on their way (lavapipe runs a workgroup's subgroups one after another between barriers).
    let row = p.rows_base + p.seg_first / n + r;
    let v = row_velocity[row];
    var squares = 0.0;
    for (var j = 4u * lane; j < n; j += 4u * lanes) {
        let e = at4(first, j, n);
        var x = vec4<f32>(0.0);
        if L2_DECAY {
            x = row_x(e);
        }
        let ge = effective_gradient(dense_gradient(e, info), x, h);
        squares = add_squares(squares, ge, in_row(j, n));
    }
    let mean = row_sum(lid, lanes, squares) / f32(n);
    let vn = row_update_velocity(v, mean, h);
    let d = denominator(vec4<f32>(vn), vec4<f32>(0.0), h);
    for (var j = 4u * lane; j < n; j += 4u * lanes) {
        let e = at4(first, j, n);
        row_elements(e, in_row(j, n), dense_gradient(e, info), d, h, live);
    }
    if live && lane == 0u {
        row_velocity[row] = vn;
    }
}

// The merged gradient of columns [j, j + 4) (clamped to the row) of a listed row: its duplicates
// [k0, k1) summed in list order, each clipped per variable (as `listed` in rmsprop_sparse.wgsl).
fn merged(j: u32, k0: u32, k1: u32) -> vec4<f32> {
    let col = at4(0u, j, p.row_len);
    var sum = vec4<f32>(0.0);
    for (var k = k0; k < k1; k++) {
        let pos = index[p.index_base + 2u + 3u * p.unique_rows + k];
        let at = p.values_base + pos * p.row_len;
        var gk = vec4<f32>(values[at + col.x], values[at + col.y], values[at + col.z], values[at + col.w]);
        if PER_VAR {
            gk = clip_gradient(gk, var_info[p.var_index]);
        }
        sum += gk;
    }
    return sum;
}

// Lazy sparse steps: distinct listed rows [begin, end) of the step's grouped indices (layout in
// rmsprop_sparse.wgsl), ROW_GROUP / lanes per workgroup, lanes as in `rows_dense`; rows outside the
// bound pool buffer's part are skipped.
@compute @workgroup_size(ROW_GROUP)
fn rows_lazy(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let lanes = row_lanes(p.row_len);
    let group_first = p.begin + (wid.y * p.groups_x + wid.x) * (ROW_GROUP / lanes);
    if group_first >= p.end {
        return;
    }
    let n = p.row_len;
    let lane = lid % lanes;
    let u = group_first + lid / lanes;
    let head = p.index_base + 2u;
    let uu = min(u, p.unique_rows - 1u);
    let row = index[head + uu];
    let start = row * n;
    // Read from storage, so not uniform: every invocation still takes part in `row_sum`.
    let here = u < p.end && u < index[p.index_base] && start >= p.seg_first
        && start - p.seg_first < p.seg_len;
    let live = here && row_writes();
    let k0 = index[head + p.unique_rows + uu];
    let k1 = select(k0, index[head + 2u * p.unique_rows + uu], here);
    let first = p.seg_base + select(0u, start - p.seg_first, here);
    let h = row_hyper();
    // Read before the barriers of `row_sum` (see `rows_dense`).
    let at = p.rows_base + row;
    let v = row_velocity[select(p.rows_base, at, here)];
    var squares = 0.0;
    for (var j = 4u * lane; j < n; j += 4u * lanes) {
        var x = vec4<f32>(0.0);
        if L2_DECAY {
            x = row_x(at4(first, j, n));
        }
        let ge = effective_gradient(merged(j, k0, k1), x, h);
        squares = add_squares(squares, ge, in_row(j, n));
    }
    let mean = row_sum(lid, lanes, squares) / f32(n);
    let vn = row_update_velocity(v, mean, h);
    let d = denominator(vec4<f32>(vn), vec4<f32>(0.0), h);
    for (var j = 4u * lane; j < n; j += 4u * lanes) {
        row_elements(at4(first, j, n), in_row(j, n), merged(j, k0, k1), d, h, live);
    }
    if live && lane == 0u {
        row_velocity[at] = vn;
    }
}
