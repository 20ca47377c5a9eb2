// Grouping sparse indices that are already on the GPU into the layout the sparse kernels read (see
// `rmsprop_sparse.wgsl`), with no host round trip. Deterministic results without float atomics: u32
// atomics only decide *where* a row's group is stored; each row's positions are sorted into list order
// before anyone sums them.
//   link:   for each listed index k, push k onto its row's list (heads[row] <- k, next[k] <- old head).
//           Out-of-range or negative indices are skipped and counted in status[2].
//   gather: the current head of each row walks the list, reserves a slot u and a position range with
//           atomics, writes the positions there and sorts them (list order).
//   reset:  every listed row's head goes back to NONE for the next step.
// Parameters: [begin, end) listed indices; index_base: the layout; unique_rows: its capacity (= count);
// seg_first: first index in `gidx`; seg_len: rows of the variable; values_base: the variable's region in
// `heads`; var_index: its region in `next`.
// (Prepended: common.wgsl, the parameter header.)

override WORKGROUP_SIZE: u32 = 256u;
const NONE: u32 = 0xffffffffu;

@group(0) @binding(9) var<storage, read_write> index: array<atomic<u32>>;
@group(0) @binding(14) var<storage, read_write> status: array<atomic<u32>>;
@group(0) @binding(15) var<storage, read> gidx: array<i32>;
@group(0) @binding(16) var<storage, read_write> heads: array<atomic<u32>>;
@group(0) @binding(17) var<storage, read_write> next: array<u32>;

fn listed_k(wid: vec3<u32>, lid: u32) -> u32 {
    return p.begin + (wid.y * p.groups_x + wid.x) * WORKGROUP_SIZE + lid;
}

// The row of listed index k, or NONE when it is out of range.
fn row_of(k: u32) -> u32 {
    let r = gidx[p.seg_first + k];
    if r < 0 || u32(r) >= p.seg_len {
        return NONE;
    }
    return u32(r);
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn link(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let k = listed_k(wid, lid);
    if k >= p.end {
        return;
    }
    let r = row_of(k);
    if r == NONE {
        atomicAdd(&status[2], 1u);
        next[p.var_index + k] = NONE;
        return;
    }
    next[p.var_index + k] = atomicExchange(&heads[p.values_base + r], k);
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn gather(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let k = listed_k(wid, lid);
    if k >= p.end {
        return;
    }
    let r = row_of(k);
    if r == NONE || atomicLoad(&heads[p.values_base + r]) != k {
        return;
    }
    // k leads its row: count the list, reserve a slot and a range, copy, sort into list order.
    var d = 0u;
    var j = k;
    loop {
        d += 1u;
        j = next[p.var_index + j];
        if j == NONE {
            break;
        }
    }
    let cap = p.unique_rows;
    let u = atomicAdd(&index[p.index_base], 1u);
    let first = atomicAdd(&index[p.index_base + 1u], d);
    let positions = p.index_base + 2u + 3u * cap;
    j = k;
    for (var i = 0u; i < d; i++) {
        atomicStore(&index[positions + first + i], j);
        j = next[p.var_index + j];
    }
    for (var i = 1u; i < d; i++) {
        let x = atomicLoad(&index[positions + first + i]);
        var at = i;
        loop {
            if at == 0u {
                break;
            }
            let y = atomicLoad(&index[positions + first + at - 1u]);
            if y <= x {
                break;
            }
            atomicStore(&index[positions + first + at], y);
            at -= 1u;
        }
        atomicStore(&index[positions + first + at], x);
    }
    atomicStore(&index[p.index_base + 2u + u], r);
    atomicStore(&index[p.index_base + 2u + cap + u], first);
    atomicStore(&index[p.index_base + 2u + 2u * cap + u], first + d);
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn reset(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let k = listed_k(wid, lid);
    if k >= p.end {
        return;
    }
    let r = row_of(k);
    if r != NONE {
        atomicStore(&heads[p.values_base + r], NONE);
    }
}
