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

// `q` replaces g^2 in the velocity when `use_q` (Keras 3 sparse duplicates).
fn rmsprop(s_in: State, g_in: vec4<f32>, q: vec4<f32>, use_q: bool) -> State {
    var s = s_in;
    var g = g_in;
    if MAXIMIZE {
        g = -g;
    }
    if L2_DECAY {
        g = g + p.weight_decay * s.x;
    }
    if DECOUPLED_DECAY {
        s.x = s.x - s.x * p.weight_decay * p.lr;
    }
    var g2 = g * g;
    if use_q {
        g2 = q;
    }
    s.v = p.rho * s.v + p.one_minus_rho * g2;
    var vh = s.v;
    if BIAS_CORRECTION {
        vh = vh / p.bias_correction;
    }
    var d: vec4<f32>;
    if CENTERED {
        if LERP_AVERAGE {
            s.a = torch_lerp(s.a, g, p.one_minus_rho);
        } else {
            s.a = p.rho * s.a + p.one_minus_rho * g;
        }
        var ah = s.a;
        if BIAS_CORRECTION {
            ah = ah / p.bias_correction;
        }
        // Guard: a variance estimate that rounds below zero counts as zero (the frameworks give NaN
        // there); wherever the frameworks' result is defined, this is the same.
        let var_est = vh - ah * ah;
        if EPS_OUTSIDE {
            d = sqrt(max(var_est, vec4<f32>(0.0))) + p.epsilon;
        } else {
            let t = var_est + p.epsilon;
            d = sqrt(select(t, vec4<f32>(p.epsilon), t < vec4<f32>(0.0)));
        }
    } else {
        if EPS_OUTSIDE {
            d = sqrt(vh) + p.epsilon;
        } else {
            d = sqrt(vh + p.epsilon);
        }
    }
    if MOMENTUM_FORM == 1u {
        if HAS_MOMENTUM {
            s.m = p.momentum * s.m + g / d;
            s.x = s.x - p.lr * s.m;
        } else {
            s.x = s.x - p.lr * (g / d);
        }
    } else {
        let inc = (p.lr * g) / d;
        if HAS_MOMENTUM {
            if MOMENTUM_FORM == 2u {
                s.m = -inc + p.momentum * s.m;
                if NESTEROV {
                    s.x = s.x + (-inc + p.momentum * s.m);
                } else {
                    s.x = s.x + s.m;
                }
            } else {
                s.m = p.momentum * s.m + inc;
                if NESTEROV {
                    s.x = s.x - (inc + p.momentum * s.m);
                } else {
                    s.x = s.x - s.m;
                }
            }
        } else {
            s.x = s.x - inc;
        }
    }
    return s;
}
