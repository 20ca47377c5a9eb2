// Dense RMSprop, TensorFlow/Keras semantics (see src/reference.rs for the CPU twin, line by line).
//
//   v = rho*v + (1-rho)*g^2
//   a = rho*a + (1-rho)*g                      (CENTERED)
//   d = sqrt(v - a^2 + eps)  (CENTERED)   |  sqrt(v + eps)
//   inc = lr*g / d
//   HAS_MOMENTUM:  m = momentum*m + inc ; x = x - m
//   otherwise:     x = x - inc
//
// One dispatch updates the range [begin, end) (in vec4 units) of one pool buffer: every variable placed
// there, whatever their number (a fused multi-tensor step). Variables start on vec4 boundaries; the pad
// lanes after a variable's last element hold x = g = v = m = a = 0 and stay 0 (for eps > 0).
// The workgroup grid is folded into (x, y) so that no dimension exceeds the device limit.
// Variants are chosen by pipeline-overridable constants, never by formatting WGSL text.

override WORKGROUP_SIZE: u32 = 256u;
override CENTERED: bool = false;
override HAS_MOMENTUM: bool = false;

struct Params {
    lr: f32,
    rho: f32,
    one_minus_rho: f32,
    momentum: f32,
    epsilon: f32,
    // 1-based number of the step being applied (room for bias correction and schedules).
    step: u32,
    // Range of this dispatch, in vec4 units of the bound pool buffers.
    begin: u32,
    end: u32,
    // Workgroups along x in this dispatch (the fold width).
    groups_x: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> g: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> v: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> m: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> a: array<vec4<f32>>;

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = p.begin + (wid.y * p.groups_x + wid.x) * WORKGROUP_SIZE + lid;
    if i >= p.end {
        return;
    }
    let grad = g[i];
    let vel = p.rho * v[i] + p.one_minus_rho * (grad * grad);
    v[i] = vel;
    var den: vec4<f32>;
    if CENTERED {
        let avg = p.rho * a[i] + p.one_minus_rho * grad;
        a[i] = avg;
        den = vel - avg * avg + p.epsilon;
    } else {
        den = vel + p.epsilon;
    }
    let inc = (p.lr * grad) / sqrt(den);
    if HAS_MOMENTUM {
        let mom = p.momentum * m[i] + inc;
        m[i] = mom;
        x[i] = x[i] - mom;
    } else {
        x[i] = x[i] - inc;
    }
}
