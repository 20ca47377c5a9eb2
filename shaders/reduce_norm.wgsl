// Gradient norms for clipnorm / global_clipnorm, computed and used on the GPU (no read-back).
//   partial_*: one workgroup per job (a range of one variable's gradient in the bound buffer) writes the
//              sum of squares of the (clipvalue-clipped) values, and whether any value is NaN or Inf
//              (from the bit pattern), to partials[job].
//   finalize:  one workgroup: per variable, the sum of its jobs' partials in order; the global norm;
//              then each variable's VarInfo (mul, div, clipvalue, flags) for the update kernels; with the
//              skip_step policy, status[0] = 1 if any value was non-finite, and status[1] counts such steps.
// Fixed reduction trees: the same inputs give bit-identical norms on every run.
// (Prepended: common.wgsl.)

override REDUCE_SIZE: u32 = 256u;
// 0: no norm clip; 1: clipnorm (per variable); 2: global_clipnorm.
override NORM_MODE: u32 = 0u;
override CLIP_NORM: f32 = 1.0;
override SKIP_NONFINITE: bool = false;

// g (binding 2) and `ld_g` are declared for the chunk's gradient type by `pool_wgsl.rs`.
@group(0) @binding(8) var<storage, read> values: array<f32>;
// Per job: (first element, element count, variable, 0).
@group(0) @binding(10) var<storage, read> jobs: array<vec4<u32>>;
// Per job: (sum of squares, 1 if a value was non-finite).
@group(0) @binding(11) var<storage, read_write> partials: array<vec2<f32>>;
// Per variable: (first job, job count, flags, 0).
@group(0) @binding(12) var<storage, read> var_step: array<vec4<u32>>;
@group(0) @binding(13) var<storage, read_write> var_info_out: array<VarInfo>;
// (skip this step, steps skipped so far).
@group(0) @binding(14) var<storage, read_write> status_out: array<u32>;

var<workgroup> scratch: array<f32, REDUCE_SIZE>;

fn tree_sum(lid: u32, value: f32) -> f32 {
    scratch[lid] = value;
    workgroupBarrier();
    for (var stride = REDUCE_SIZE / 2u; stride > 0u; stride /= 2u) {
        if lid < stride {
            scratch[lid] += scratch[lid + stride];
        }
        workgroupBarrier();
    }
    let total = scratch[0];
    workgroupBarrier();
    return total;
}

// A NaN stays NaN (see `clip_value` in common.wgsl), so the sums, and the norms, are NaN.
fn clipped_square(x: f32) -> f32 {
    let c = clip_value(vec4<f32>(x), p.clipvalue).x;
    return c * c;
}

// Reduces one job's per-invocation sums and writes (sum of squares, any non-finite) to partials[j].
fn finish_job(lid: u32, j: u32, acc: f32, bad: f32) {
    let total = tree_sum(lid, acc);
    let nonfinite = tree_sum(lid, bad);
    if lid == 0u {
        partials[j] = vec2<f32>(total, nonfinite);
    }
}

@compute @workgroup_size(REDUCE_SIZE)
fn partial_dense(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let j = p.begin + wid.y * p.groups_x + wid.x;
    if j >= p.end {
        return;
    }
    let job = jobs[j];
    var acc = 0.0;
    var bad = 0.0;
    for (var k = lid; k < job.y; k += REDUCE_SIZE) {
        let x = ld_g(job.x + k);
        acc += clipped_square(x);
        bad = max(bad, select(1.0, 0.0, is_finite_bits(x)));
    }
    finish_job(lid, j, acc, bad);
}

@compute @workgroup_size(REDUCE_SIZE)
fn partial_sparse(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let j = p.begin + wid.y * p.groups_x + wid.x;
    if j >= p.end {
        return;
    }
    let job = jobs[j];
    var acc = 0.0;
    var bad = 0.0;
    for (var k = lid; k < job.y; k += REDUCE_SIZE) {
        let x = values[job.x + k];
        acc += clipped_square(x);
        bad = max(bad, select(1.0, 0.0, is_finite_bits(x)));
    }
    finish_job(lid, j, acc, bad);
}

// p.end = number of variables.
@compute @workgroup_size(REDUCE_SIZE)
fn finalize(@builtin(local_invocation_index) lid: u32) {
    var local = 0.0;
    var bad = 0.0;
    for (var var_i = lid; var_i < p.end; var_i += REDUCE_SIZE) {
        let s = var_step[var_i];
        var sum = 0.0;
        for (var k = 0u; k < s.y; k++) {
            let part = partials[s.x + k];
            sum += part.x;
            bad += part.y;
        }
        local += sum;
        var info = VarInfo(1.0, 1.0, p.clipvalue, s.z);
        if NORM_MODE == 1u {
            // Keras: g * c / max(||g||, c), with ||g|| = 0 when the sum is 0. A NaN norm gives a NaN
            // divisor (tf.maximum propagates NaN; WGSL's max of a NaN is undefined, hence the select);
            // an infinite one is kept: g * c / inf.
            info.mul = CLIP_NORM;
            info.div = select(max(sqrt(sum), CLIP_NORM), quiet_nan(sum), is_nan_bits(sum));
        }
        var_info_out[var_i] = info;
    }
    let total = tree_sum(lid, local);
    let nonfinite = tree_sum(lid, bad);
    if SKIP_NONFINITE && lid == 0u {
        let skip = select(0u, 1u, nonfinite > 0.0);
        status_out[0] = skip;
        status_out[1] = status_out[1] + skip;
    }
    if NORM_MODE == 2u {
        // Keras / TF: g * c * min(1/n, 1/c) + (n - n): a NaN or infinite global norm makes the scale,
        // and so every gradient of the step, NaN. Written as a select so that min never sees a NaN and
        // no compiler can fold n - n to 0.
        let n = sqrt(total);
        var scale = CLIP_NORM * (1.0 / CLIP_NORM);
        if n > 0.0 {
            scale = CLIP_NORM * min(1.0 / n, 1.0 / CLIP_NORM);
        }
        scale = select(quiet_nan(total), scale, is_finite_bits(total));
        for (var var_i = lid; var_i < p.end; var_i += REDUCE_SIZE) {
            var_info_out[var_i].mul = scale;
        }
    }
}
