// Dense RMSprop over a range [begin, end) of vec4 of one pool buffer: every variable placed there,
// whatever their number (a fused multi-tensor step). Variables start on vec4 boundaries; the pad lanes
// after a variable's last element hold zeros and are never read back. The workgroup grid is folded into
// (x, y) so that no dimension exceeds the device limit.
// (Prepended: common.wgsl, rmsprop_update.wgsl.)

@group(0) @binding(1) var<storage, read_write> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> g: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> v: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> m: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> a: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read> var_info: array<VarInfo>;
@group(0) @binding(14) var<storage, read> status: array<u32>;

// Consecutive vec4s per invocation, a workgroup apart (1 by default: what lavapipe rewards).
override VEC4S_PER_INVOCATION: u32 = 1u;

fn update(i: u32) {
    var gv = g[i];
    var qv = vec4<f32>(0.0);
    var use_q = false;
    if PER_VAR {
        let info = var_info[p.var_index];
        if (info.flags & PRECLIPPED) == 0u {
            gv = clip_gradient(gv, info);
        }
        use_q = (info.flags & USE_SQUARES) != 0u;
        if use_q {
            qv = q[i];
        }
    }
    var st = State(x[i], v[i], vec4<f32>(0.0), vec4<f32>(0.0));
    if HAS_MOMENTUM {
        st.m = m[i];
    }
    if CENTERED {
        st.a = a[i];
    }
    st = rmsprop(st, gv, qv, use_q);
    x[i] = st.x;
    v[i] = st.v;
    if HAS_MOMENTUM {
        m[i] = st.m;
    }
    if CENTERED {
        a[i] = st.a;
    }
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let first = p.begin + (wid.y * p.groups_x + wid.x) * WORKGROUP_SIZE * VEC4S_PER_INVOCATION + lid;
    if first >= p.end {
        return;
    }
    if SKIP_NONFINITE && status[0] != 0u {
        return;
    }
    if VEC4S_PER_INVOCATION == 1u {
        update(first);
        return;
    }
    for (var k = 0u; k < VEC4S_PER_INVOCATION; k++) {
        let i = first + k * WORKGROUP_SIZE;
        if i >= p.end {
            return;
        }
        update(i);
    }
}
