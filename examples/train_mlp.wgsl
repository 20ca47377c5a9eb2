// Forward and backward passes of a 64-64-10 MLP (ReLU, softmax cross-entropy) for the `train` example.
// The parameters are read from the optimizer's variable pool buffer (f32, or 16-bit: VAR_DTYPE) and the
// gradients written into its gradient pool buffer (f32), at the element offsets in `p`, so the optimizer
// steps with no copy at all.

// What the variable pool holds: 0 f32, 1 f16, 2 bf16 (16-bit: two per u32 word, element 2k in the low
// half).
override VAR_DTYPE: u32 = 0u;

struct P {
    // First position in `order` of this batch, and its size.
    base: u32,
    n: u32,
    // Element offsets of W1 [64 x 64], b1 [64], W2 [64 x 10], b2 [10] in the variable pool buffer...
    w1: u32,
    b1: u32,
    w2: u32,
    b2: u32,
    // 1 / n, for the mean loss.
    inv_n: f32,
    pad: u32,
    // ...and of their gradients in the gradient pool buffer.
    gw1: u32,
    gb1: u32,
    gw2: u32,
    gb2: u32,
}

const IN: u32 = 64u;
const HID: u32 = 64u;
const OUT: u32 = 10u;

@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> params: array<u32>;
@group(0) @binding(2) var<storage, read_write> grads: array<f32>;
@group(0) @binding(3) var<storage, read> x: array<f32>;
@group(0) @binding(4) var<storage, read> y: array<u32>;
@group(0) @binding(5) var<storage, read> order: array<u32>;
@group(0) @binding(6) var<storage, read_write> h: array<f32>;
@group(0) @binding(7) var<storage, read_write> dlogits: array<f32>;
@group(0) @binding(8) var<storage, read_write> dh: array<f32>;
// Per sample (at its position in `order`): loss, and 1.0 when the prediction is right.
@group(0) @binding(9) var<storage, read_write> losses: array<f32>;
@group(0) @binding(10) var<storage, read_write> correct: array<f32>;

// Parameter i of the variable pool, as f32.
fn param(i: u32) -> f32 {
    if VAR_DTYPE == 0u {
        return bitcast<f32>(params[i]);
    }
    let word = params[i >> 1u];
    if VAR_DTYPE == 1u {
        return unpack2x16float(word)[i & 1u];
    }
    return bitcast<f32>(select(word << 16u, word & 0xffff0000u, (i & 1u) == 1u));
}

fn sample(b: u32) -> u32 {
    return order[p.base + b];
}

// h[b, j] = relu(x[b] . W1[:, j] + b1[j]); one invocation per (b, j).
@compute @workgroup_size(64)
fn hidden(@builtin(global_invocation_id) gid: vec3<u32>) {
    let t = gid.x;
    if t >= p.n * HID {
        return;
    }
    let b = t / HID;
    let j = t % HID;
    let s = sample(b);
    var acc = param(p.b1 + j);
    for (var i = 0u; i < IN; i++) {
        acc += x[s * IN + i] * param(p.w1 + i * HID + j);
    }
    h[t] = max(acc, 0.0);
}

// Logits, softmax, loss, prediction and dlogits = (softmax - onehot) / n; one invocation per sample.
@compute @workgroup_size(64)
fn output(@builtin(global_invocation_id) gid: vec3<u32>) {
    let b = gid.x;
    if b >= p.n {
        return;
    }
    var logits: array<f32, 10>;
    var top = -1e30;
    var arg = 0u;
    for (var k = 0u; k < OUT; k++) {
        var acc = param(p.b2 + k);
        for (var j = 0u; j < HID; j++) {
            acc += h[b * HID + j] * param(p.w2 + j * OUT + k);
        }
        logits[k] = acc;
        if acc > top {
            top = acc;
            arg = k;
        }
    }
    var sum = 0.0;
    for (var k = 0u; k < OUT; k++) {
        sum += exp(logits[k] - top);
    }
    let label = y[sample(b)];
    for (var k = 0u; k < OUT; k++) {
        let prob = exp(logits[k] - top) / sum;
        dlogits[b * OUT + k] = (prob - select(0.0, 1.0, k == label)) * p.inv_n;
    }
    losses[p.base + b] = log(sum) - (logits[label] - top);
    correct[p.base + b] = select(0.0, 1.0, arg == label);
}

// dW2 = h^T dlogits, db2 = sum dlogits, and dh = dlogits W2^T * relu'(h): one invocation per (j, k)
// for dW2 (plus k for db2), then one per (b, j) for dh.
@compute @workgroup_size(64)
fn grad_out(@builtin(global_invocation_id) gid: vec3<u32>) {
    let t = gid.x;
    if t < HID * OUT {
        let j = t / OUT;
        let k = t % OUT;
        var acc = 0.0;
        for (var b = 0u; b < p.n; b++) {
            acc += h[b * HID + j] * dlogits[b * OUT + k];
        }
        grads[p.gw2 + t] = acc;
    } else if t < HID * OUT + OUT {
        let k = t - HID * OUT;
        var acc = 0.0;
        for (var b = 0u; b < p.n; b++) {
            acc += dlogits[b * OUT + k];
        }
        grads[p.gb2 + k] = acc;
    }
    if t < p.n * HID {
        let b = t / HID;
        let j = t % HID;
        var acc = 0.0;
        for (var k = 0u; k < OUT; k++) {
            acc += dlogits[b * OUT + k] * param(p.w2 + j * OUT + k);
        }
        dh[t] = select(0.0, acc, h[t] > 0.0);
    }
}

// dW1 = x^T dh, db1 = sum dh: one invocation per (i, j), plus j for db1.
@compute @workgroup_size(64)
fn grad_hidden(@builtin(global_invocation_id) gid: vec3<u32>) {
    let t = gid.x;
    if t < IN * HID {
        let i = t / HID;
        let j = t % HID;
        var acc = 0.0;
        for (var b = 0u; b < p.n; b++) {
            acc += x[sample(b) * IN + i] * dh[b * HID + j];
        }
        grads[p.gw1 + t] = acc;
    } else if t < IN * HID + HID {
        let j = t - IN * HID;
        var acc = 0.0;
        for (var b = 0u; b < p.n; b++) {
            acc += dh[b * HID + j];
        }
        grads[p.gb1 + j] = acc;
    }
}
