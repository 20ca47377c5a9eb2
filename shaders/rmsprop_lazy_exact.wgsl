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
    catch_up_elem(p.seg_base + t, (p.seg_first + t) / p.row_len);
}

// Element `i` of the bound pool buffer, in row `row` of the variable, brought up to date.
fn catch_up_elem(i: u32, row: u32) {
    let k = missed(row);
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

@compute @workgroup_size(WORKGROUP_SIZE)
fn bump(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    if work_item(wid, lid) == 0u && !(SKIP_NONFINITE && status[0] != 0u) {
        lazy_rows[p.rows_base] += 1u;
    }
}
