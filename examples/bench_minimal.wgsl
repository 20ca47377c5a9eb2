// The baseline of the `bench` example: the same vec4 loads and stores as the dense RMSprop kernel (and
// the same workgroup size and grid folding), with trivial arithmetic. Only memory traffic and launch cost.

override WORKGROUP_SIZE: u32 = 256u;
override CENTERED: bool = false;
override HAS_MOMENTUM: bool = false;

struct P {
    end: u32,
    groups_x: u32,
    pad0: u32,
    pad1: u32,
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
    let gv = g[i];
    x[i] = x[i] + gv;
    v[i] = v[i] + gv;
    if HAS_MOMENTUM {
        m[i] = m[i] + gv;
    }
    if CENTERED {
        a[i] = a[i] + gv;
    }
}
