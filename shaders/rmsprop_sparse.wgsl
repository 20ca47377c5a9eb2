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
// (Prepended: common.wgsl, rmsprop_update.wgsl.)

@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> g: array<f32>;
@group(0) @binding(3) var<storage, read_write> v: array<f32>;
@group(0) @binding(4) var<storage, read_write> m: array<f32>;
@group(0) @binding(5) var<storage, read_write> a: array<f32>;
@group(0) @binding(6) var<storage, read_write> q: array<f32>;
@group(0) @binding(7) var<storage, read> var_info: array<VarInfo>;
@group(0) @binding(8) var<storage, read> values: array<f32>;
@group(0) @binding(9) var<storage, read> index: array<u32>;
@group(0) @binding(14) var<storage, read> status: array<u32>;

struct Item {
    // Element of the pool buffer, or 0xffffffff when this invocation has nothing to do.
    elem: u32,
    col: u32,
    first: u32,
    last: u32,
}

fn item(wid: vec3<u32>, lid: u32) -> Item {
    var it = Item(0xffffffffu, 0u, 0u, 0u);
    let t = p.begin + (wid.y * p.groups_x + wid.x) * WORKGROUP_SIZE + lid;
    if t >= p.end {
        return it;
    }
    let u = t / p.row_len;
    let col = t % p.row_len;
    let head = p.index_base + 2u;
    if u >= index[p.index_base] {
        return it;
    }
    let row = index[head + u];
    let e = row * p.row_len + col;
    // Only the part of the variable that lives in the bound pool buffer.
    if e < p.seg_first || e - p.seg_first >= p.seg_len {
        return it;
    }
    it.elem = p.seg_base + (e - p.seg_first);
    it.col = col;
    it.first = index[head + p.unique_rows + u];
    it.last = index[head + 2u * p.unique_rows + u];
    return it;
}

fn listed(it: Item, k: u32) -> f32 {
    let pos = index[p.index_base + 2u + 3u * p.unique_rows + k];
    let gk = values[p.values_base + pos * p.row_len + it.col];
    if PER_VAR {
        return clip_gradient(vec4<f32>(gk), var_info[p.var_index]).x;
    }
    return gk;
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn lazy(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let it = item(wid, lid);
    if it.elem == 0xffffffffu {
        return;
    }
    if SKIP_NONFINITE && status[0] != 0u {
        return;
    }
    let i = it.elem;
    // One element, splatted into the vec4 lanes of the update; lane x is kept.
    var s = State(vec4<f32>(x[i]), vec4<f32>(v[i]), vec4<f32>(0.0), vec4<f32>(0.0));
    if HAS_MOMENTUM {
        s.m = vec4<f32>(m[i]);
    }
    if CENTERED {
        s.a = vec4<f32>(a[i]);
    }
    let none = vec4<f32>(0.0);
    if SEQUENTIAL {
        for (var k = it.first; k < it.last; k++) {
            s = rmsprop(s, vec4<f32>(listed(it, k)), none, false);
        }
    } else {
        var sum = 0.0;
        for (var k = it.first; k < it.last; k++) {
            sum += listed(it, k);
        }
        s = rmsprop(s, vec4<f32>(sum), none, false);
    }
    x[i] = s.x.x;
    v[i] = s.v.x;
    if HAS_MOMENTUM {
        m[i] = s.m.x;
    }
    if CENTERED {
        a[i] = s.a.x;
    }
}

override HAS_SQUARES: bool = false;

@compute @workgroup_size(WORKGROUP_SIZE)
fn scatter(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let it = item(wid, lid);
    if it.elem == 0xffffffffu {
        return;
    }
    var sum = 0.0;
    var squares = 0.0;
    for (var k = it.first; k < it.last; k++) {
        let gk = listed(it, k);
        sum += gk;
        squares += gk * gk;
    }
    g[it.elem] = sum;
    if HAS_SQUARES {
        q[it.elem] = squares;
    }
}
