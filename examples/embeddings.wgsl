// Matrix factorization for the `embeddings` example: for each (user, item, rating) of the batch,
// err = U[user] . V[item] - rating, loss = err^2 / 2, and the gradient rows err*V[item] / n and
// err*U[user] / n, written in batch order for the optimizer's sparse (IndexedSlices) step. The tables are
// read from the optimizer's variable pool (f32, or 16-bit: VAR_DTYPE); the gradient rows are f32.

// What the variable pool holds: 0 f32, 1 f16, 2 bf16 (16-bit: two per u32 word, element 2k in the low
// half).
override VAR_DTYPE: u32 = 0u;

struct P {
    n: u32,
    dim: u32,
    // Element offsets of U and V in their pool buffers.
    u_off: u32,
    v_off: u32,
}

@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> u_table: array<u32>;
@group(0) @binding(2) var<storage, read> v_table: array<u32>;
// (user, item, rating bits) per sample.
@group(0) @binding(3) var<storage, read> batch: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read_write> du: array<f32>;
@group(0) @binding(5) var<storage, read_write> dv: array<f32>;
@group(0) @binding(6) var<storage, read_write> losses: array<f32>;

// The word of a table holding element i, and element i from that word, as f32.
fn word_of(i: u32) -> u32 {
    return select(i >> 1u, i, VAR_DTYPE == 0u);
}

fn widen(word: u32, i: u32) -> f32 {
    if VAR_DTYPE == 0u {
        return bitcast<f32>(word);
    }
    if VAR_DTYPE == 1u {
        return unpack2x16float(word)[i & 1u];
    }
    return bitcast<f32>(select(word << 16u, word & 0xffff0000u, (i & 1u) == 1u));
}

fn u_at(i: u32) -> f32 {
    return widen(u_table[word_of(i)], i);
}

fn v_at(i: u32) -> f32 {
    return widen(v_table[word_of(i)], i);
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let b = gid.x;
    if b >= p.n {
        return;
    }
    let s = batch[b];
    let ub = p.u_off + s.x * p.dim;
    let vb = p.v_off + s.y * p.dim;
    var pred = 0.0;
    for (var k = 0u; k < p.dim; k++) {
        pred += u_at(ub + k) * v_at(vb + k);
    }
    let err = pred - bitcast<f32>(s.z);
    losses[b] = 0.5 * err * err;
    let scale = err / f32(p.n);
    for (var k = 0u; k < p.dim; k++) {
        du[b * p.dim + k] = scale * v_at(vb + k);
        dv[b * p.dim + k] = scale * u_at(ub + k);
    }
}
