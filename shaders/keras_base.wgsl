// Keras's optimizer base class before the update: the loss scale and gradient accumulation, applied in
// place to the gradient pool over a range [begin, end) of vec4 (the ranges of the step's dense update)
// in a dispatch of its own that runs before the step's norms. CPU twin: `Reference::step`.
// (Prepended: common.wgsl and the parameters.)
//
// Parameters (fields of `p` reused): `lr` = the loss scale factor as f32 (1 when none: g / 1 is g),
// `rho` = the accumulation steps N as f32, `var_index` = the mode:
//   0: g = g / scale
//   1: acc = acc + g / scale           (a call that only accumulates: no update follows)
//   2: g = (g / scale + acc) / N; acc = 0   (the N-th call: the update follows)

@group(0) @binding(2) var<storage, read_write> g: array<vec4<f32>>;
@group(0) @binding(18) var<storage, read_write> acc: array<vec4<f32>>;

override WORKGROUP_SIZE: u32 = 256u;
override VEC4S_PER_INVOCATION: u32 = 1u;
// The accumulator is bound (gradient accumulation is configured).
override ACCUMULATE: bool = false;

@compute @workgroup_size(WORKGROUP_SIZE)
fn prepare(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let first = p.begin + (wid.y * p.groups_x + wid.x) * WORKGROUP_SIZE * VEC4S_PER_INVOCATION + lid;
    let scale = p.lr;
    let steps = p.rho;
    let mode = p.var_index;
    for (var k = 0u; k < VEC4S_PER_INVOCATION; k++) {
        let i = first + k * WORKGROUP_SIZE;
        if i >= p.end {
            continue;
        }
        let gv = g[i] / vec4<f32>(scale);
        if !ACCUMULATE || mode == 0u {
            g[i] = gv;
        } else if mode == 1u {
            acc[i] = acc[i] + gv;
        } else {
            g[i] = (gv + acc[i]) / vec4<f32>(steps);
            acc[i] = vec4<f32>(0.0);
        }
    }
}

// Keras's moving average of the variables (`use_ema`), after the step's update, over a range of vec4 of a
// pool buffer (every variable of it). Parameters: `lr` = the momentum of this step (0 on Keras's first
// iteration, `ema_momentum` after), `one_minus_rho` = 1 - that momentum (f32), `var_index` = the mode:
//   0: ema = m*ema + (1-m)*x
//   1: the same, then x = ema (ema_overwrite_frequency)
// (Swapping the variables and their averages for evaluation is done with buffer copies.)
@group(0) @binding(1) var<storage, read_write> x: array<vec4<f32>>;
@group(0) @binding(19) var<storage, read_write> ema_slot: array<vec4<f32>>;

@compute @workgroup_size(WORKGROUP_SIZE)
fn ema(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let first = p.begin + (wid.y * p.groups_x + wid.x) * WORKGROUP_SIZE * VEC4S_PER_INVOCATION + lid;
    let m = vec4<f32>(p.lr);
    let one_minus_m = vec4<f32>(p.one_minus_rho);
    let mode = p.var_index;
    for (var k = 0u; k < VEC4S_PER_INVOCATION; k++) {
        let i = first + k * WORKGROUP_SIZE;
        if i >= p.end {
            continue;
        }
        let e = m * ema_slot[i] + one_minus_m * x[i];
        ema_slot[i] = e;
        if mode == 1u {
            x[i] = e;
        }
    }
}

// The loss scale on the step's sparse values (IndexedSlices: Keras divides the values), in place over
// the elements [begin, end) of the step's values buffer, before the norms and the grouping. `lr` = the
// scale as in `prepare`.
@group(0) @binding(8) var<storage, read_write> sparse_values: array<f32>;

@compute @workgroup_size(WORKGROUP_SIZE)
fn prepare_values(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = p.begin + (wid.y * p.groups_x + wid.x) * WORKGROUP_SIZE + lid;
    if i < p.end {
        sparse_values[i] = sparse_values[i] / p.lr;
    }
}
