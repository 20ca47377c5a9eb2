// SparseMode::LazyExact: every row of a variable keeps the count of the variable's steps up to which it
// is current; rows listed in a step first take the steps they missed (`skip_steps`, closed form) and
// then the update (`rmsprop_sparse.wgsl::lazy`, through `caught_up`). Binding 22 holds, per variable
// from `p.rows_base`, its step count then one count per row. A row is current when its count equals the
// variable's. A lazy step: `lazy` (k = count - row's), `stamp_listed` (row's = count + 1), `bump`
// (count + 1). A dense step, a read or a checkpoint of a variable whose rows may be behind:
// `catch_up` (every element), then `stamp_all` (row's = count): the counts then need not move. Given
// rows (`RmsProp::record_catch_up`, indices grouped as a step's): `catch_up_rows`, then `stamp_rows`.
// Separate dispatches, because every element of a row reads the row's count. Twin:
// `reference::ReferenceState::catch_up`.
// (Prepended: common.wgsl, half.wgsl, the pool declarations in scalar form, rmsprop_update.wgsl,
// rmsprop_sparse.wgsl.)

@group(0) @binding(22) var<storage, read_write> lazy_rows: array<u32>;

// Under a learning-rate schedule the skipped steps differ (decoupled decay and PyTorch's momentum form
// take each step's rate): the variable keeps the maps of its lazy steps since its counts were last
// reset, LAZY_HISTORY at most, from word `p.hist_base` on: level l (0..log2(LAZY_HISTORY)) holds, at
// entry i, the map of its steps (i * 2^l, (i + 1) * 2^l] composed in order (`bump` pushes each step's
// and completes the levels above), so the steps (s, t] a row missed are at most 2 log2(LAZY_HISTORY)
// aligned blocks (`history_map`). When the history is full the host has the variable caught up and
// reset first (`reset_rows`). 0: a constant rate, the k-th power of one map (`skip_steps`).
override LAZY_HISTORY: u32 = 0u;

// Steps of its variable that `row` missed.
fn missed(row: u32) -> u32 {
    return lazy_rows[p.rows_base] - lazy_rows[p.rows_base + 1u + row];
}

// First entry of level `l` of the history (levels of LAZY_HISTORY, LAZY_HISTORY / 2, ... entries).
fn level_at(l: u32) -> u32 {
    return 2u * LAZY_HISTORY - ((2u * LAZY_HISTORY) >> l);
}

fn hist_ld(e: u32) -> vec4<f32> {
    let w = p.hist_base + 4u * e;
    return bitcast<vec4<f32>>(vec4<u32>(lazy_rows[w], lazy_rows[w + 1u], lazy_rows[w + 2u], lazy_rows[w + 3u]));
}

fn hist_st(e: u32, f: vec4<f32>) {
    let w = p.hist_base + 4u * e;
    let u = bitcast<vec4<u32>>(f);
    lazy_rows[w] = u.x;
    lazy_rows[w + 1u] = u.y;
    lazy_rows[w + 2u] = u.z;
    lazy_rows[w + 3u] = u.w;
}

// The map of the variable's steps (s, t]: the largest aligned blocks from s on, composed in order
// (twin: `reference::lazy_exact::history_map`).
fn history_map(s: u32, t: u32) -> vec4<f32> {
    var acc = vec4<f32>(0.0, 0.0, 1.0, 1.0);
    var c = s;
    loop {
        if c >= t {
            break;
        }
        var l = 0u;
        loop {
            let n = l + 1u;
            if (c & ((1u << n) - 1u)) != 0u || c + (1u << n) > t {
                break;
            }
            l = n;
        }
        acc = skip_then(acc, hist_ld(level_at(l) + (c >> l)));
        c += 1u << l;
    }
    return acc;
}

fn caught_up(row: u32, s: State, h: Hyper) -> State {
    if LAZY_HISTORY == 0u {
        return skip_steps(s, missed(row), h);
    }
    let stamp = lazy_rows[p.rows_base + 1u + row];
    let count = lazy_rows[p.rows_base];
    if stamp == count {
        return s;
    }
    return skip_apply(s, history_map(stamp, count), h);
}

fn work_item(wid: vec3<u32>, lid: u32) -> u32 {
    return p.begin + (wid.y * p.groups_x + wid.x) * WORKGROUP_SIZE + lid;
}

// Elements [begin, end) of the variable's part in the bound pool buffer (element `seg_first + t` of the
// variable at `seg_base + t`).
@compute @workgroup_size(WORKGROUP_SIZE)
fn catch_up(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = work_item(wid, lid);
    if t >= p.end {
        return;
    }
    catch_up_elem(p.seg_base + t, (p.seg_first + t) / p.row_len);
}

// Element `i` of the bound pool buffer, in row `row` of the variable, brought up to date.
fn catch_up_elem(i: u32, row: u32) {
    if missed(row) == 0u {
        return;
    }
    var h = Hyper();
    if VAR_OPTIONS != 0u {
        h = hyper(p.var_index);
    }
    let s = caught_up(row, load_state(i, h), h);
    st_x(i, s.x.x);
    store_rest(i, s, h);
}

// `RmsProp::record_catch_up`: the elements of the distinct rows in the grouped indices (work items as
// `lazy`'s), brought up to date; `stamp_rows` then marks those rows current.
@compute @workgroup_size(WORKGROUP_SIZE)
fn catch_up_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let it = item(wid, lid);
    if it.live {
        catch_up_elem(it.elem, it.var_elem / p.row_len);
    }
}

// Distinct listed row `t` of the grouped indices (see `rmsprop_sparse.wgsl`), or none past them.
fn listed_row(t: u32) -> u32 {
    if t >= p.end || t >= index[p.index_base] {
        return 0xffffffffu;
    }
    return index[p.index_base + 2u + t];
}

// Distinct listed rows [begin, end): current at the variable's next count (which `bump` then reaches).
@compute @workgroup_size(WORKGROUP_SIZE)
fn stamp_listed(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = listed_row(work_item(wid, lid));
    // A step the non-finite policy skips changes nothing: no row is stamped, the count stays.
    if row != 0xffffffffu && !(SKIP_NONFINITE && status[0] != 0u) {
        lazy_rows[p.rows_base + 1u + row] = lazy_rows[p.rows_base] + 1u;
    }
}

// Distinct listed rows [begin, end) of a row catch-up: current at the variable's count.
@compute @workgroup_size(WORKGROUP_SIZE)
fn stamp_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = listed_row(work_item(wid, lid));
    if row != 0xffffffffu {
        lazy_rows[p.rows_base + 1u + row] = lazy_rows[p.rows_base];
    }
}

// Rows [begin, end).
@compute @workgroup_size(WORKGROUP_SIZE)
fn stamp_all(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = work_item(wid, lid);
    if t < p.end {
        lazy_rows[p.rows_base + 1u + t] = lazy_rows[p.rows_base];
    }
}

// Rows [begin, end) and (item 0) the count back to 0: the history starts again (after `catch_up`).
@compute @workgroup_size(WORKGROUP_SIZE)
fn reset_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = work_item(wid, lid);
    if t < p.end {
        lazy_rows[p.rows_base + 1u + t] = 0u;
    }
    if t == 0u {
        lazy_rows[p.rows_base] = 0u;
    }
}

// The variable's count advanced; under a schedule, this step's map pushed onto its history.
@compute @workgroup_size(WORKGROUP_SIZE)
fn bump(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    if work_item(wid, lid) != 0u || (SKIP_NONFINITE && status[0] != 0u) {
        return;
    }
    let c = lazy_rows[p.rows_base] + 1u;
    lazy_rows[p.rows_base] = c;
    if LAZY_HISTORY == 0u {
        return;
    }
    var h = Hyper();
    if VAR_OPTIONS != 0u {
        h = hyper(p.var_index);
    }
    hist_st(c - 1u, skip_one(h));
    var l = 1u;
    loop {
        if (1u << l) > LAZY_HISTORY || (c & ((1u << l) - 1u)) != 0u {
            break;
        }
        let i = (c >> l) - 1u;
        let below = level_at(l - 1u) + 2u * i;
        hist_st(level_at(l) + i, skip_then(hist_ld(below), hist_ld(below + 1u)));
        l += 1u;
    }
}
