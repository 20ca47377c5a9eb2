// The baseline of the `bench` example: the same vec4 loads and stores as the dense RMSprop kernel (and
// the same workgroup size and grid folding), with trivial arithmetic. Only memory traffic and launch cost.
// With SPLIT (16-bit storage types), each buffer holds the bytes its role moves in the step, as f32 vec4s:
// the variable, gradient and state buffers have `x_end`, `g_end` and `s_end` vec4s, and an invocation
// touches only the buffers that reach its index.

override WORKGROUP_SIZE: u32 = 256u;
override CENTERED: bool = false;
override HAS_MOMENTUM: bool = false;
override SPLIT: bool = false;

struct P {
    // Invocations (vec4s of the largest buffer), and workgroups along x of the folded grid.
    end: u32,
    groups_x: u32,
    // With SPLIT: vec4s of the variable, the gradient and each state buffer.
    x_end: u32,
    g_end: u32,
    s_end: u32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read_write> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> g: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> v: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> m: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> a: array<vec4<f32>>;

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * p.groups_x + wid.x) * WORKGROUP_SIZE + lid;
    if i >= p.end {
        return;
    }
    var gv = vec4<f32>(0.0);
    if !SPLIT || i < p.g_end {
        gv = g[i];
    }
    if !SPLIT || i < p.x_end {
        x[i] = x[i] + gv;
    }
    if !SPLIT || i < p.s_end {
        v[i] = v[i] + gv;
        if HAS_MOMENTUM {
            m[i] = m[i] + gv;
        }
        if CENTERED {
            a[i] = a[i] + gv;
        }
    }
}
