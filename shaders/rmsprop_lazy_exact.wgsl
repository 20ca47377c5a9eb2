// SparseMode::LazyExact: every row of a variable keeps the count of the variable's steps up to which it
// is current; rows listed in a step first take the steps they missed (`skip_steps`, closed form) and
// then the update (`rmsprop_sparse.wgsl::lazy`, through `caught_up`). Binding 22 holds, per variable
// from `p.rows_base`, its step count then one count per row. A row is current when its count equals the
// variable's. A lazy step: `lazy` (k = count - row's), `stamp_listed` (row's = count + 1), `bump`
// (count + 1). A dense step, a read or a checkpoint of a variable whose rows may be behind:
// `catch_up` (every element), then `stamp_all` (row's = count): the counts then need not move.
// Separate dispatches, because every element of a row reads the row's count. Twin:
// `reference::ReferenceState::catch_up`.
// (Prepended: common.wgsl, half.wgsl, the pool declarations in scalar form, rmsprop_update.wgsl,
// rmsprop_sparse.wgsl.)

@group(0) @binding(22) var<storage, read_write> lazy_rows: array<u32>;

// Steps of its variable that `row` missed.
fn missed(row: u32) -> u32 {
    return lazy_rows[p.rows_base] - lazy_rows[p.rows_base + 1u + row];
}

fn caught_up(row: u32, s: State, h: Hyper) -> State {
    return skip_steps(s, missed(row), h);
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
    let i = p.seg_base + t;
    let k = missed((p.seg_first + t) / p.row_len);
    if k == 0u {
        return;
    }
    var h = Hyper();
    if VAR_OPTIONS != 0u {
        h = hyper(p.var_index);
    }
    let s = skip_steps(load_state(i, h), k, h);
    st_x(i, s.x.x);
    st_c(i, s.x.x);
    st_v(i, s.v.x);
    if keeps_momentum(h) {
        st_m(i, s.m.x);
    }
    if is_centered(h) {
        st_a(i, s.a.x);
    }
}

// Distinct listed rows [begin, end) of the step's grouped indices (see `rmsprop_sparse.wgsl`).
@compute @workgroup_size(WORKGROUP_SIZE)
fn stamp_listed(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = work_item(wid, lid);
    // A step the non-finite policy skips changes nothing: no row is stamped, the count stays.
    if t >= p.end || t >= index[p.index_base] || (SKIP_NONFINITE && status[0] != 0u) {
        return;
    }
    let row = index[p.index_base + 2u + t];
    lazy_rows[p.rows_base + 1u + row] = lazy_rows[p.rows_base] + 1u;
}

// Rows [begin, end).
@compute @workgroup_size(WORKGROUP_SIZE)
fn stamp_all(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = work_item(wid, lid);
    if t < p.end {
        lazy_rows[p.rows_base + 1u + t] = lazy_rows[p.rows_base];
    }
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn bump(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    if work_item(wid, lid) == 0u && !(SKIP_NONFINITE && status[0] != 0u) {
        lazy_rows[p.rows_base] += 1u;
    }
}
