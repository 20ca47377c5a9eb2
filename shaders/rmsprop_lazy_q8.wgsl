// Lazy sparse RMSprop on 8-bit quantized state (`q8`): only the blocks that hold a listed row change.
// A block's codes share one absmax, so a lazy step cannot write a row's elements alone: it rewrites
// every block a listed row touches, in one pass, as the dense kernel writes a block:
//   - listed elements take their update (duplicates summed, as `rmsprop_sparse.wgsl::lazy`);
//   - the block's other elements keep their dequantized values;
//   - the block's new absmax is found in workgroup memory (`q8_flush_lazy`); where it is unchanged, the
//     other elements keep their codes bit for bit; where it changed, they are re-quantized against it
//     (their values move by at most half a code step of the new absmax);
//   - blocks that hold no listed row keep codes and absmax bit for bit, and cost nothing.
// Twin: `reference::q8_lazy`.
//
// Work items: Q8_BLOCK consecutive invocations (one vec4 each) per (distinct row u, j-th block of that
// row). Rows are sorted (host grouping), so the rows touching a block are consecutive in the list and
// the block is written by the pair of the first of them (`owner`): no two workgroups write one block.
// Where that would be more work items than the blocks of the bound part of the variable (many listed
// rows per block: 256 rows of 16 in blocks of 256 are 16x the work of their 16 blocks), the host asks
// for one per block instead (`p.ema_mode` 1, a field the dense kernel alone otherwise reads), and a
// block without a listed row does nothing.
// (Prepended: common.wgsl, half.wgsl, the pool declarations in vec4 form with the q8 codecs,
// rmsprop_update.wgsl.)

@group(0) @binding(7) var<storage, read> var_info: array<VarInfo>;
@group(0) @binding(8) var<storage, read> values: array<f32>;
@group(0) @binding(9) var<storage, read> index: array<u32>;
@group(0) @binding(14) var<storage, read> status: array<u32>;

// Elements per block.
fn block_elems() -> u32 {
    return 4u * Q8_BLOCK;
}

// The most blocks one row of `p.row_len` elements can touch: rows start at multiples of
// g = gcd(row_len, block) (the block is a power of two: g is row_len's lowest set bit, at most the
// block), so a row starts at most block - g elements into a block. Twin: `plan::q8_blocks_per_row`.
fn blocks_per_row() -> u32 {
    let be = block_elems();
    let g = min(be, p.row_len & (~p.row_len + 1u));
    return (be - g + p.row_len - 1u) / be + 1u;
}

// The first of the distinct rows [lo, lo + n) that is >= row (lo + n if none).
fn first_row_at_least(lo_in: u32, n_in: u32, row: u32) -> u32 {
    let head = p.index_base + 2u;
    var lo = lo_in;
    var count = n_in;
    while count > 0u {
        let half = count / 2u;
        if index[head + lo + half] < row {
            lo += half + 1u;
            count -= half + 1u;
        } else {
            count = half;
        }
    }
    return lo;
}

// The gradient of element `e` of the variable if its row is listed: the sum of its duplicates (each
// clipped as `rmsprop_sparse.wgsl::listed`), and whether it is listed. The rows that can touch the
// block are the `n` distinct rows from `u` on.
fn gradient_of(e: u32, u: u32, n: u32) -> vec2<f32> {
    let head = p.index_base + 2u;
    let row = e / p.row_len;
    let lo = first_row_at_least(u, n, row);
    if lo >= u + n || index[head + lo] != row {
        return vec2<f32>(0.0, 0.0);
    }
    let col = e % p.row_len;
    let first = index[head + p.unique_rows + lo];
    let last = index[head + 2u * p.unique_rows + lo];
    var sum = 0.0;
    for (var k = first; k < last; k++) {
        let pos = index[head + 3u * p.unique_rows + k];
        var gk = values[p.values_base + pos * p.row_len + col];
        if PER_VAR {
            gk = clip_gradient(vec4<f32>(gk), var_info[p.var_index]).x;
        }
        sum += gk;
    }
    return vec2<f32>(sum, 1.0);
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn lazy_q8(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = p.begin + (wid.y * p.groups_x + wid.x) * WORKGROUP_SIZE + lid;
    let in_range = t < p.end;
    let pair = min(t, p.end - 1u) / Q8_BLOCK;
    let lane = t % Q8_BLOCK;
    let distinct = index[p.index_base];
    let head = p.index_base + 2u;
    let be = block_elems();
    var k = 0u;
    var uu = 0u;
    var owner = false;
    if p.ema_mode == 0u {
        // By rows: the j-th block of distinct row u, if the row reaches it; the block belongs to the
        // first listed row that touches it.
        let per_row = blocks_per_row();
        let u = pair / per_row;
        uu = min(u, p.unique_rows - 1u);
        let row = index[head + uu];
        k = (row * p.row_len) / be + pair % per_row;
        owner = u < distinct && k * be < (row + 1u) * p.row_len;
        if owner && uu > 0u {
            let prev = index[head + uu - 1u];
            owner = ((prev + 1u) * p.row_len - 1u) / be < k;
        }
    } else {
        // By blocks (the host's choice where the rows' pairs would outnumber the bound part's blocks):
        // block `pair` of that part, if a listed row touches it (the first row ending past its start).
        k = p.seg_first / be + pair;
        let u = first_row_at_least(0u, distinct, (k * be) / p.row_len);
        uu = min(u, p.unique_rows - 1u);
        owner = u < distinct && index[head + uu] * p.row_len < (k + 1u) * be;
    }
    // Only the part of the variable in the bound pool buffer (split variables split on blocks).
    let start = k * be;
    owner = owner && start >= p.seg_first && start - p.seg_first < p.seg_len;
    var live = in_range && owner;
    if SKIP_NONFINITE && status[0] != 0u {
        live = false;
    }
    // The vec4 of the block this invocation handles (a valid one even when not live).
    let first = select(p.seg_first, start, live);
    let i = (p.seg_base + (first - p.seg_first)) / 4u + lane;
    // Rows that can touch the block: one per element at most, plus the one reaching in from before.
    let n = min(distinct - min(uu, distinct), be / p.row_len + 2u);
    var g = vec4<f32>(0.0);
    var listed = vec4<bool>(false);
    let e0 = first + 4u * lane;
    let var_end = p.seg_first + p.seg_len;
    for (var c = 0u; c < 4u; c++) {
        if live && e0 + c < var_end {
            let r = gradient_of(e0 + c, uu, n);
            g[c] = r.x;
            listed[c] = r.y != 0.0;
        }
    }
    var h = Hyper();
    if VAR_OPTIONS != 0u {
        h = hyper(p.var_index);
    }
    q8_reset();
    let old = State(ld_x(i), ld_v(i), vec4<f32>(0.0), vec4<f32>(0.0));
    var s0 = old;
    if keeps_momentum(h) {
        s0.m = ld_m(i);
    }
    if is_centered(h) {
        s0.a = ld_a(i);
    }
    let s = rmsprop(s0, g, vec4<f32>(0.0), false, h);
    let x = select(s0.x, s.x, listed);
    if live {
        if STOCHASTIC {
            let seed = p.sr_seed + p.var_index * 0x9e3779b9u;
            let r = vec4<u32>(
                sr_hash(seed, p.step, e0),
                sr_hash(seed, p.step, e0 + 1u),
                sr_hash(seed, p.step, e0 + 2u),
                sr_hash(seed, p.step, e0 + 3u),
            );
            // Unlisted elements hold values of the type: stochastic rounding keeps them.
            st_x_sr(i, x, r);
        } else {
            st_x(i, x);
        }
        st_c(i, x);
    }
    // The new state values are stashed (unlisted elements: their dequantized values) and stored by the
    // block reduction, in uniform control flow.
    st_v(i, select(s0.v, s.v, listed));
    if keeps_momentum(h) {
        st_m(i, select(s0.m, s.m, listed));
    }
    if is_centered(h) {
        st_a(i, select(s0.a, s.a, listed));
    }
    q8_flush_lazy(i, live, lid, listed);
}
