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
fn effective_gradient(g_in: vec4<f32>, x: vec4<f32>) -> vec4<f32> {
    var g = g_in;
    if MAXIMIZE {
        g = -g;
    }
    if L2_DECAY {
        g = g + p.weight_decay * x;
    }
    return g;
}

// `q` replaces g^2 in the velocity when `use_q` (Keras 3 sparse duplicates).
fn next_velocity(v: vec4<f32>, g: vec4<f32>, q: vec4<f32>, use_q: bool) -> vec4<f32> {
    var g2 = g * g;
    if use_q {
        g2 = q;
    }
    return p.rho * v + p.one_minus_rho * g2;
}

fn next_average(a: vec4<f32>, g: vec4<f32>) -> vec4<f32> {
    if LERP_AVERAGE {
        return torch_lerp(a, g, p.one_minus_rho);
    }
    return p.rho * a + p.one_minus_rho * g;
}

// The denominator from the new velocity and (centered) the new average.
fn denominator(v: vec4<f32>, a: vec4<f32>) -> vec4<f32> {
    var vh = v;
    if BIAS_CORRECTION {
        vh = vh / p.bias_correction;
    }
    if CENTERED {
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
            return sqrt(floored) + p.epsilon;
        }
        let t = var_est + p.epsilon;
        return sqrt(select(t, vec4<f32>(p.epsilon), t < vec4<f32>(0.0)));
    }
    if EPS_OUTSIDE {
        return sqrt(vh) + p.epsilon;
    }
    return sqrt(vh + p.epsilon);
}

// The step's direction: lr*g/d, or g/d where the learning rate multiplies the momentum buffer (form 1).
fn direction(g: vec4<f32>, d: vec4<f32>) -> vec4<f32> {
    if MOMENTUM_FORM == 1u {
        return g / d;
    }
    return (p.lr * g) / d;
}

fn next_momentum(m: vec4<f32>, dir: vec4<f32>) -> vec4<f32> {
    if MOMENTUM_FORM == 2u {
        return -dir + p.momentum * m;
    }
    return p.momentum * m + dir;
}

// The new variable from the old one, the direction and (with momentum) the new momentum buffer.
fn next_variable(x_in: vec4<f32>, dir: vec4<f32>, m: vec4<f32>) -> vec4<f32> {
    var x = x_in;
    if DECOUPLED_DECAY {
        x = x - x * p.weight_decay * p.lr;
    }
    if MOMENTUM_FORM == 1u {
        if HAS_MOMENTUM {
            return x - p.lr * m;
        }
        return x - p.lr * dir;
    }
    if !HAS_MOMENTUM {
        return x - dir;
    }
    if MOMENTUM_FORM == 2u {
        if NESTEROV {
            return x + (-dir + p.momentum * m);
        }
        return x + m;
    }
    if NESTEROV {
        return x - (dir + p.momentum * m);
    }
    return x - m;
}

// The whole update of a `State`.
fn rmsprop(s_in: State, g_in: vec4<f32>, q: vec4<f32>, use_q: bool) -> State {
    var s = s_in;
    let g = effective_gradient(g_in, s.x);
    s.v = next_velocity(s.v, g, q, use_q);
    if CENTERED {
        s.a = next_average(s.a, g);
    }
    let dir = direction(g, denominator(s.v, s.a));
    if HAS_MOMENTUM {
        s.m = next_momentum(s.m, dir);
    }
    s.x = next_variable(s.x, dir, s.m);
    return s;
}
