// The RMSprop update of one element, every preset's convention selected by pipeline-overridable
// constants. CPU twin: `reference::rmsprop` (same operations, same order).

override WORKGROUP_SIZE: u32 = 256u;
override CENTERED: bool = false;
override HAS_MOMENTUM: bool = false;
// Epsilon: sqrt(v) + eps (true) or sqrt(v + eps) (false).
override EPS_OUTSIDE: bool = false;
// 0: m = momentum*m + lr*g/d, x -= m (Keras/TF); 1: m = momentum*m + g/d, x -= lr*m (PyTorch);
// 2: m = -lr*g/d + momentum*m, x += m (optax's trace of negative updates).
override MOMENTUM_FORM: u32 = 0u;
override NESTEROV: bool = false;
// Centered average as PyTorch's lerp: a + (1-rho)*(g - a).
override LERP_AVERAGE: bool = false;
override BIAS_CORRECTION: bool = false;
// x -= x*wd*lr before the update (Keras).
override DECOUPLED_DECAY: bool = false;
// g += wd*x (PyTorch).
override L2_DECAY: bool = false;
override MAXIMIZE: bool = false;
// Read per-variable clipping state (`VarInfo`).
override PER_VAR: bool = false;
// Sparse lazy kernel: each listed (index, row) is its own update, in list order.
override SEQUENTIAL: bool = false;
// Non-finite policy `skip_step`: `status[0] != 0` (set on the GPU by `reduce_norm::finalize` when any
// gradient element of the step is NaN or Inf) makes every update kernel leave its elements untouched.
override SKIP_NONFINITE: bool = false;
// Per-variable options (parameter groups): the fields of the options table (`hyper` below) that some
// variable sets to a value other than the configuration's, as VO_* bits; those are read per variable,
// everything else is `p`'s field or the pipeline constant. 0: the kernels are what they were before the
// table existed. With FLAGS, CENTERED and HAS_MOMENTUM say that the pools keep the slot (some variable
// needs it) and the variable's flags say whether it has it. Only the fields set are read because on
// lavapipe every read indexed by the variable costs one load per invocation and component.
override VAR_OPTIONS: u32 = 0u;
// Stochastic rounding of bf16 variables (`st_x_sr`, seed `p.sr_seed`).
override STOCHASTIC: bool = false;
const VO_LR_MUL: u32 = 1u;
const VO_LR_ADD: u32 = 2u;
const VO_RHO: u32 = 4u;
const VO_MOMENTUM: u32 = 8u;
const VO_EPSILON: u32 = 16u;
const VO_WEIGHT_DECAY: u32 = 32u;
const VO_FLAGS: u32 = 64u;

// One variable's hyperparameters for this step (VAR_OPTIONS). Host: `VarHyper`.
struct Hyper {
    lr: f32,
    rho: f32,
    one_minus_rho: f32,
    momentum: f32,
    epsilon: f32,
    weight_decay: f32,
    flags: u32,
}

// Flags of a variable's table entry: it keeps a momentum slot, is centered, maximizes, is decayed.
const OPT_MOMENTUM: u32 = 1u;
const OPT_CENTERED: u32 = 2u;
const OPT_MAXIMIZE: u32 = 4u;
const OPT_DECAY: u32 = 8u;

fn has_field(bit: u32) -> bool {
    return (VAR_OPTIONS & bit) != 0u;
}

// The fields of variable `var_index`'s entries in the options table (`var_info` is declared by the
// kernel modules) that VAR_OPTIONS names; the others are left at 0 and never used. Entries: (lr
// multiplier, lr addend, rho, bits of 1 - rho), (momentum, epsilon, weight decay, flags). A variable's
// rate is p.lr * multiplier + addend, one of the two terms being 0 (the same bits fused or not).
fn hyper(var_index: u32) -> Hyper {
    let at = p.opt_base + 2u * var_index;
    var h = Hyper();
    if has_field(VO_LR_ADD) {
        h.lr = p.lr * var_info[at].mul + var_info[at].div;
    } else if has_field(VO_LR_MUL) {
        h.lr = p.lr * var_info[at].mul;
    }
    if has_field(VO_RHO) {
        h.rho = var_info[at].clipvalue;
        h.one_minus_rho = bitcast<f32>(var_info[at].flags);
    }
    if has_field(VO_MOMENTUM) {
        h.momentum = var_info[at + 1u].mul;
    }
    if has_field(VO_EPSILON) {
        h.epsilon = var_info[at + 1u].div;
    }
    if has_field(VO_WEIGHT_DECAY) {
        h.weight_decay = var_info[at + 1u].clipvalue;
    }
    if has_field(VO_FLAGS) {
        h.flags = var_info[at + 1u].flags;
    }
    return h;
}

// The step's hyperparameters of the variable being updated: from `h` where VAR_OPTIONS names the
// field, else `p`.
fn lr_of(h: Hyper) -> f32 {
    if has_field(VO_LR_MUL | VO_LR_ADD) {
        return h.lr;
    }
    return p.lr;
}
fn rho_of(h: Hyper) -> f32 {
    if has_field(VO_RHO) {
        return h.rho;
    }
    return p.rho;
}
fn one_minus_rho_of(h: Hyper) -> f32 {
    if has_field(VO_RHO) {
        return h.one_minus_rho;
    }
    return p.one_minus_rho;
}
fn momentum_of(h: Hyper) -> f32 {
    if has_field(VO_MOMENTUM) {
        return h.momentum;
    }
    return p.momentum;
}
fn epsilon_of(h: Hyper) -> f32 {
    if has_field(VO_EPSILON) {
        return h.epsilon;
    }
    return p.epsilon;
}
fn weight_decay_of(h: Hyper) -> f32 {
    if has_field(VO_WEIGHT_DECAY) {
        return h.weight_decay;
    }
    return p.weight_decay;
}
// Whether the variable keeps a momentum slot / is centered / maximizes / is decayed. Without FLAGS every
// variable has the configuration's: the pipeline constants.
fn keeps_momentum(h: Hyper) -> bool {
    if has_field(VO_FLAGS) {
        return HAS_MOMENTUM && (h.flags & OPT_MOMENTUM) != 0u;
    }
    return HAS_MOMENTUM;
}
fn is_centered(h: Hyper) -> bool {
    if has_field(VO_FLAGS) {
        return CENTERED && (h.flags & OPT_CENTERED) != 0u;
    }
    return CENTERED;
}
fn maximizes(h: Hyper) -> bool {
    if has_field(VO_FLAGS) {
        return (h.flags & OPT_MAXIMIZE) != 0u;
    }
    return MAXIMIZE;
}
fn decays(h: Hyper) -> bool {
    if has_field(VO_FLAGS) {
        return (h.flags & OPT_DECAY) != 0u;
    }
    return true;
}

// Everything is written on vec4 lanes: the dense kernel updates four elements per invocation with vector
// instructions, the sparse kernels splat one element into a vec4 and keep lane x. Every operation is
// lane-wise, so each lane computes exactly what the scalar CPU twin does.
struct State {
    x: vec4<f32>,
    v: vec4<f32>,
    m: vec4<f32>,
    a: vec4<f32>,
}

fn torch_lerp(a: vec4<f32>, g: vec4<f32>, w: f32) -> vec4<f32> {
    if w < 0.5 {
        return a + w * (g - a);
    }
    return g - (g - a) * (1.0 - w);
}

// The update in stages, so that a kernel can read each buffer right before writing it (the dense kernel
// does; see `rmsprop_dense.wgsl`). `rmsprop` below chains them for a whole `State`.

// The gradient the update follows: sign flipped (maximize), plus L2 decay (reads the old variable).
fn effective_gradient(g_in: vec4<f32>, x: vec4<f32>, h: Hyper) -> vec4<f32> {
    var g = g_in;
    if maximizes(h) {
        g = -g;
    }
    if L2_DECAY && decays(h) {
        g = g + weight_decay_of(h) * x;
    }
    return g;
}

// `q` replaces g^2 in the velocity when `use_q` (Keras 3 sparse duplicates).
fn next_velocity(v: vec4<f32>, g: vec4<f32>, q: vec4<f32>, use_q: bool, h: Hyper) -> vec4<f32> {
    var g2 = g * g;
    if use_q {
        g2 = q;
    }
    return rho_of(h) * v + one_minus_rho_of(h) * g2;
}

fn next_average(a: vec4<f32>, g: vec4<f32>, h: Hyper) -> vec4<f32> {
    if LERP_AVERAGE {
        return torch_lerp(a, g, one_minus_rho_of(h));
    }
    return rho_of(h) * a + one_minus_rho_of(h) * g;
}

// The denominator from the new velocity and (centered) the new average.
fn denominator(v: vec4<f32>, a: vec4<f32>, h: Hyper) -> vec4<f32> {
    var vh = v;
    if BIAS_CORRECTION {
        vh = vh / p.bias_correction;
    }
    if is_centered(h) {
        var ah = a;
        if BIAS_CORRECTION {
            ah = ah / p.bias_correction;
        }
        // Guard: a variance estimate that rounds below zero counts as zero (the frameworks give NaN
        // there); wherever the frameworks' result is defined, this is the same. A NaN estimate (from a
        // non-finite gradient, inf - inf) stays NaN as in the frameworks: WGSL's max of a NaN is
        // undefined, hence the select.
        let var_est = vh - ah * ah;
        if EPS_OUTSIDE {
            let floored = select(max(var_est, vec4<f32>(0.0)), var_est, is_nan_bits4(var_est));
            return sqrt(floored) + epsilon_of(h);
        }
        let t = var_est + epsilon_of(h);
        return sqrt(select(t, vec4<f32>(epsilon_of(h)), t < vec4<f32>(0.0)));
    }
    if EPS_OUTSIDE {
        return sqrt(vh) + epsilon_of(h);
    }
    return sqrt(vh + epsilon_of(h));
}

// The step's direction: lr*g/d, or g/d where the learning rate multiplies the momentum buffer (form 1).
fn direction(g: vec4<f32>, d: vec4<f32>, h: Hyper) -> vec4<f32> {
    if MOMENTUM_FORM == 1u {
        return g / d;
    }
    return (lr_of(h) * g) / d;
}

fn next_momentum(m: vec4<f32>, dir: vec4<f32>, h: Hyper) -> vec4<f32> {
    if MOMENTUM_FORM == 2u {
        return -dir + momentum_of(h) * m;
    }
    return momentum_of(h) * m + dir;
}

// The new variable from the old one, the direction and (with momentum) the new momentum buffer.
fn next_variable(x_in: vec4<f32>, dir: vec4<f32>, m: vec4<f32>, h: Hyper) -> vec4<f32> {
    var x = x_in;
    if DECOUPLED_DECAY && decays(h) {
        x = x - x * weight_decay_of(h) * lr_of(h);
    }
    if MOMENTUM_FORM == 1u {
        if keeps_momentum(h) {
            return x - lr_of(h) * m;
        }
        return x - lr_of(h) * dir;
    }
    if !keeps_momentum(h) {
        return x - dir;
    }
    if MOMENTUM_FORM == 2u {
        if NESTEROV {
            return x + (-dir + momentum_of(h) * m);
        }
        return x + m;
    }
    if NESTEROV {
        return x - (dir + momentum_of(h) * m);
    }
    return x - m;
}

// The whole update of a `State` (`h`: the variable's hyperparameters, read only with VAR_OPTIONS).
fn rmsprop(s_in: State, g_in: vec4<f32>, q: vec4<f32>, use_q: bool, h: Hyper) -> State {
    var s = s_in;
    let g = effective_gradient(g_in, s.x, h);
    s.v = next_velocity(s.v, g, q, use_q, h);
    if is_centered(h) {
        s.a = next_average(s.a, g, h);
    }
    let dir = direction(g, denominator(s.v, s.a, h), h);
    if keeps_momentum(h) {
        s.m = next_momentum(s.m, dir, h);
    }
    s.x = next_variable(s.x, dir, s.m, h);
    return s;
}

// SparseMode::LazyExact: `k` steps with gradient 0, in closed form (twin: `reference::skip_steps`).
// One such step is linear: v and a times rho; m times momentum; x times 1 - d (d = wd*lr, decoupled
// decay) plus b*m, b = -momentum (rate inside the buffer), -lr*momentum (rate after it) or +momentum
// (negated trace). Its k-th power, as (d, b, momentum, rho) composed by squaring and multiplying, is
// O(log k) multiplications: 100,000 skipped steps cost 17 squarings. The decay is kept as its deficit
// d, composed as d1 + d2 - d1*d2: as a factor, 1 - 1e-6 rounds to within 3% of its deficit in f32,
// which 100,000 steps raised to a 0.3% error of the variable (the deficit keeps it at 1e-5). The
// rounding differs from k steps taken one by one (each of those rounds too): see README ("Lazy rows
// with dense numbers").
fn skip_one(h: Hyper) -> vec4<f32> {
    var d = 0.0;
    if DECOUPLED_DECAY && decays(h) {
        d = weight_decay_of(h) * lr_of(h);
    }
    var mom = 0.0;
    var b = 0.0;
    if keeps_momentum(h) {
        mom = momentum_of(h);
        b = -mom;
        if MOMENTUM_FORM == 1u {
            b = -(lr_of(h) * mom);
        } else if MOMENTUM_FORM == 2u {
            b = mom;
        }
    }
    return vec4<f32>(d, b, mom, rho_of(h));
}

// The map `f` then `g` (both powers of one step's map, so the order does not matter).
fn skip_compose(f: vec4<f32>, g: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(f.x + g.x - f.x * g.x, g.y - f.x * g.y + f.y * g.z, f.z * g.z, f.w * g.w);
}

fn skip_map(k: u32, h: Hyper) -> vec4<f32> {
    let one = skip_one(h);
    var acc = vec4<f32>(0.0, 0.0, 1.0, 1.0);
    var bit = firstLeadingBit(k);
    loop {
        acc = skip_compose(acc, acc);
        if ((k >> bit) & 1u) != 0u {
            acc = skip_compose(acc, one);
        }
        if bit == 0u {
            break;
        }
        bit -= 1u;
    }
    return acc;
}

fn skip_steps(s: State, k: u32, h: Hyper) -> State {
    if k == 0u {
        return s;
    }
    return skip_apply(s, skip_map(k, h), h);
}

// The map `f` then `g` of two different steps (a schedule's): order matters.
fn skip_then(f: vec4<f32>, g: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(f.x + g.x - f.x * g.x, f.y - g.x * f.y + g.y * f.z, f.z * g.z, f.w * g.w);
}

// An element's state through the map `f` of skipped steps.
fn skip_apply(s: State, f: vec4<f32>, h: Hyper) -> State {
    var o = s;
    o.v = f.w * s.v;
    if is_centered(h) {
        o.a = f.w * s.a;
    }
    o.x = s.x - f.x * s.x;
    if keeps_momentum(h) {
        o.x = o.x + f.y * s.m;
        o.m = f.z * s.m;
    }
    return o;
}
