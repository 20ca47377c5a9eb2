// Declarations shared by every kernel module (prepended at build time with `concat!`, never formatted at
// run time). The host mirror is `kernels::Params` (112 bytes).

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
    // Per-variable options (VAR_OPTIONS): the first entry of the options table in `var_info` (two
    // entries per variable, after the segment map; see `hyper` in rmsprop_update.wgsl).
    opt_base: u32,
    // Seed of stochastic rounding (STOCHASTIC).
    sr_seed: u32,
    // Keras's moving average in the dense dispatch (`ema_step`): 0 none, 1 update, 2 update and overwrite
    // the variables; its momentum for this step. (`rmsprop_lazy_q8.wgsl` reads `ema_mode` as its work
    // items: 0 per listed row and block of it, 1 per block.)
    ema_mode: u32,
    ema_momentum: f32,
    // SparseMode::LazyExact: the variable's entry in the row counters (`rmsprop_lazy_exact.wgsl`).
    rows_base: u32,
    // ... and its history of skipped-step maps under a schedule (LAZY_HISTORY).
    hist_base: u32,
    pad1: u32,
    pad2: u32,
}

// Per-variable clipping state of a step, computed on the GPU by `reduce_norm.wgsl::finalize`:
// g' = (clip_value(g, clipvalue) * mul) / div. Host mirror: `kernels::VarInfo`.
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

// Finite test on the bit pattern (some shader compilers assume no NaN and fold `x != x`).
fn is_finite_bits(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u;
}

// NaN tests on the bit pattern, for the same reason.
fn is_nan_bits(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u;
}
fn is_nan_bits4(x: vec4<f32>) -> vec4<bool> {
    return (bitcast<vec4<u32>>(x) & vec4<u32>(0x7fffffffu)) > vec4<u32>(0x7f800000u);
}

// A quiet NaN, made at run time from any `x`: naga rejects NaN constants, and arithmetic such as
// `inf - inf` may be folded away by a compiler that assumes no NaN.
fn quiet_nan(x: f32) -> f32 {
    return bitcast<f32>(bitcast<u32>(x) | 0x7fc00000u);
}

// Non-finite values in clipping (CPU twin: `reference::clip_value` and `Reference::step`). WGSL's
// clamp/min/max of a NaN is undefined (SPIR-V FClamp/FMin/FMax; lavapipe returns the other operand, so
// clamp(NaN, -c, c) = -c), so every clamp/min/max that can see a NaN selects the NaN case explicitly:
//   clip_by_value: a NaN element stays NaN (that element only); +-Inf becomes +-clipvalue.
//   clipnorm: a NaN norm makes the variable's whole gradient NaN (Keras: g * c / maximum(NaN, c));
//             an infinite norm divides as Keras does: finite elements become +-0, infinite ones NaN.
//   global_clipnorm: a NaN or infinite global norm makes every gradient of the step NaN (Keras / TF:
//             scale + (n - n)).
fn clip_value(g: vec4<f32>, c: f32) -> vec4<f32> {
    return select(clamp(g, vec4<f32>(-c), vec4<f32>(c)), g, is_nan_bits4(g));
}

fn clip_gradient(g: vec4<f32>, info: VarInfo) -> vec4<f32> {
    return (clip_value(g, info.clipvalue) * info.mul) / info.div;
}
