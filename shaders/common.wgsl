// Declarations shared by every kernel module (prepended at build time with `concat!`, never formatted at
// run time). The host mirror is `kernels::Params` (80 bytes).

struct Params {
    lr: f32,
    rho: f32,
    one_minus_rho: f32,
    momentum: f32,
    epsilon: f32,
    weight_decay: f32,
    clipvalue: f32,
    // 1 - rho^t (bias correction), 1 when off.
    bias_correction: f32,
    // 1-based step number.
    step: u32,
    // Range of this dispatch: vec4 of a pool buffer (dense), or work items (sparse, norms).
    begin: u32,
    end: u32,
    // Workgroups along x (the fold width of a 2-D grid).
    groups_x: u32,
    // The variable of a per-variable dispatch.
    var_index: u32,
    // Sparse: elements per row; offsets of this variable's rows and values in the step's sparse buffers;
    // number of distinct rows.
    row_len: u32,
    values_base: u32,
    index_base: u32,
    unique_rows: u32,
    // Sparse: the variable's elements [seg_first, seg_first + seg_len) sit in the bound pool buffer from
    // element seg_base on.
    seg_first: u32,
    seg_len: u32,
    seg_base: u32,
}

// Per-variable clipping state of a step, computed on the GPU by `reduce_norm.wgsl::finalize`:
// g' = (clamp(g, -clipvalue, clipvalue) * mul) / div.
struct VarInfo {
    mul: f32,
    div: f32,
    clipvalue: f32,
    flags: u32,
}

// The variable's dense gradient was produced by `scatter` and is already clipped.
const PRECLIPPED: u32 = 1u;
// Keras 3 duplicates: the velocity takes the sum of squares in `q` instead of g^2.
const USE_SQUARES: u32 = 2u;

fn clip_gradient(g: vec4<f32>, info: VarInfo) -> vec4<f32> {
    let c = vec4<f32>(info.clipvalue);
    return (clamp(g, -c, c) * info.mul) / info.div;
}

// Finite test on the bit pattern (some shader compilers assume no NaN and fold `x != x`).
fn is_finite_bits(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u;
}
