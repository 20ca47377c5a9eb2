// Sparse (IndexedSlices) RMSprop. The step's indices of one variable are grouped by row (on the host, or
// on the GPU by `sparse_group.wgsl`): `index[index_base ..]` holds [distinct, cursor], then `cap`
// distinct rows, `cap` firsts, `cap` lasts (p.unique_rows = cap), then the positions (into the listed
// rows) of each distinct row's duplicates, in list order. One invocation
// handles one element of one distinct row, so no two invocations write the same element and no atomics
// are needed: results are deterministic.
//   lazy:    only listed rows change; duplicates summed (or applied one after another if SEQUENTIAL).
//   scatter: writes the merged gradient row (and, Keras 3, the sum of squares) into the gradient pool,
//            for the dense kernel to update every row.
// The pool buffers are seen as scalars here (rows need not be vec4-aligned).
// The pooled buffers x, g, v, m, a and their accessors `ld_*`/`st_*`/`rnd_*` are declared for the
// chunk's storage types by `pool_wgsl.rs` (scalar form). (Prepended: common.wgsl, half.wgsl, the pool
// declarations, rmsprop_update.wgsl.)

@group(0) @binding(6) var<storage, read_write> q: array<f32>;
@group(0) @binding(7) var<storage, read> var_info: array<VarInfo>;
@group(0) @binding(8) var<storage, read> values: array<f32>;
@group(0) @binding(9) var<storage, read> index: array<u32>;
@group(0) @binding(14) var<storage, read> status: array<u32>;

struct Item {
    // Element of the pool buffer (a valid one even when `live` is false).
    elem: u32,
    // Its index in the variable.
    var_elem: u32,
    col: u32,
    // The item's listed duplicates: positions [first, last) (empty when `live` is false).
    first: u32,
    last: u32,
    // False: this invocation has nothing to do (past the range, past the distinct rows, or a row outside
    // the bound pool buffer).
    live: bool,
}

// No early returns: invocations without an item read valid elements and get an empty duplicate list, so
// that the step parameters stay outside divergent code (see `rmsprop_dense.wgsl`).
fn item(wid: vec3<u32>, lid: u32) -> Item {
    let t = p.begin + (wid.y * p.groups_x + wid.x) * WORKGROUP_SIZE + lid;
    let in_range = t < p.end;
    let tt = min(t, p.end - 1u);
    let u = tt / p.row_len;
    let col = tt % p.row_len;
    let head = p.index_base + 2u;
    let distinct = index[p.index_base];
    let has_row = u < distinct;
    // Within the index layout's `unique_rows` slots whatever `distinct` is.
    let uu = min(u, p.unique_rows - 1u);
    let row = index[head + uu];
    let e = row * p.row_len + col;
    // Only the part of the variable that lives in the bound pool buffer.
    let in_segment = e >= p.seg_first && e - p.seg_first < p.seg_len;
    let live = in_range && has_row && in_segment;
    let first = index[head + p.unique_rows + uu];
    let last = index[head + 2u * p.unique_rows + uu];
    return Item(
        select(p.seg_base, p.seg_base + (e - p.seg_first), live),
        e,
        col,
        first,
        select(first, last, live),
        live,
    );
}

fn listed(it: Item, k: u32) -> f32 {
    let pos = index[p.index_base + 2u + 3u * p.unique_rows + k];
    let gk = values[p.values_base + pos * p.row_len + it.col];
    if PER_VAR {
        return clip_gradient(vec4<f32>(gk), var_info[p.var_index]).x;
    }
    return gk;
}

// Element `i` of the pool buffers, splatted into the vec4 lanes of the update (lane x is kept); the
// slots the variable does not keep are 0.
fn load_state(i: u32, h: Hyper) -> State {
    var s = State(vec4<f32>(ld_x(i)), vec4<f32>(ld_v(i)), vec4<f32>(0.0), vec4<f32>(0.0));
    if keeps_momentum(h) {
        s.m = vec4<f32>(ld_m(i));
    }
    if is_centered(h) {
        s.a = vec4<f32>(ld_a(i));
    }
    return s;
}

// Element `i`'s state but the variable (stored first, rounded as it must be): its copy, velocity and
// the slots the variable keeps.
fn store_rest(i: u32, s: State, h: Hyper) {
    st_c(i, s.x.x);
    st_v(i, s.v.x);
    if keeps_momentum(h) {
        st_m(i, s.m.x);
    }
    if is_centered(h) {
        st_a(i, s.a.x);
    }
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn lazy(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let it = item(wid, lid);
    var live = it.live;
    if SKIP_NONFINITE && status[0] != 0u {
        live = false;
    }
    let i = it.elem;
    // The variable's hyperparameters (VAR_OPTIONS): one variable per dispatch, `p.var_index`.
    var h = Hyper();
    if VAR_OPTIONS != 0u {
        h = hyper(p.var_index);
    }
    var s = load_state(i, h);
    // SparseMode::LazyExact: the steps the row missed first (`rmsprop_lazy_exact.wgsl`; else as is).
    s = caught_up(it.var_elem / p.row_len, s, h);
    let none = vec4<f32>(0.0);
    if SEQUENTIAL {
        for (var k = it.first; k < it.last; k++) {
            s = rmsprop(s, vec4<f32>(listed(it, k)), none, false, h);
            // Each pair is a complete update: the row is stored (rounded to its types) before the next.
            // The last pair's result is stored below (stochastically rounded with STOCHASTIC).
            if k + 1u < it.last {
                s = State(
                    vec4<f32>(rnd_x(s.x.x)),
                    vec4<f32>(rnd_v(s.v.x)),
                    vec4<f32>(rnd_m(s.m.x)),
                    vec4<f32>(rnd_a(s.a.x)),
                );
            }
        }
    } else {
        var sum = 0.0;
        var squares = 0.0;
        for (var k = it.first; k < it.last; k++) {
            let gk = listed(it, k);
            sum += gk;
            squares += gk * gk;
        }
        // Keras 3 duplicates (lazy-exact only): the velocity takes the sum of their squares.
        s = rmsprop(s, vec4<f32>(sum), vec4<f32>(squares), LAZY_SQUARES, h);
    }
    if live {
        if STOCHASTIC {
            let seed = p.sr_seed + p.var_index * 0x9e3779b9u;
            st_x_sr(i, s.x.x, sr_hash(seed, p.step, it.var_elem));
        } else {
            st_x(i, s.x.x);
        }
        store_rest(i, s, h);
    }
}

override HAS_SQUARES: bool = false;
// Keras 3 duplicates in a lazy-exact step, without global_clipnorm (as `USE_SQUARES` for the dense
// kernel): the velocity takes the sum of the squared duplicates.
override LAZY_SQUARES: bool = false;

@compute @workgroup_size(WORKGROUP_SIZE)
fn scatter(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let it = item(wid, lid);
    if !it.live {
        return;
    }
    var sum = 0.0;
    var squares = 0.0;
    for (var k = it.first; k < it.last; k++) {
        let gk = listed(it, k);
        sum += gk;
        squares += gk * gk;
    }
    st_g(it.elem, sum);
    if HAS_SQUARES {
        q[it.elem] = squares;
    }
}
