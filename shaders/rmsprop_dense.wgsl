// Dense RMSprop over a range [begin, end) of vec4 of one pool buffer: every variable placed there,
// whatever their number (a fused multi-tensor step). Variables start on vec4 boundaries; the pad lanes
// after a variable's last element hold zeros and are never read back. The workgroup grid is folded into
// (x, y) so that no dimension exceeds the device limit.
// The pooled buffers x, g, v, m, a and their accessors `ld_*`/`st_*` are declared for the chunk's
// storage types by `pool_wgsl.rs` (vec4 form). (Prepended: common.wgsl, half.wgsl, the pool
// declarations, rmsprop_update.wgsl.)

@group(0) @binding(6) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read> var_info: array<VarInfo>;
@group(0) @binding(14) var<storage, read> status: array<u32>;

// Consecutive vec4s per invocation, a workgroup apart (1 by default: what lavapipe rewards).
override VEC4S_PER_INVOCATION: u32 = 1u;

// The variable a vec4 belongs to, for per-variable state (PER_VAR) and options (VAR_OPTIONS). The host
// places a map of the bound pool buffer's variables after the per-variable entries of `var_info` (and
// before the options table): from `p.seg_base` on, `p.seg_len` entries whose `flags` hold each
// variable's first vec4 (ascending), then `p.seg_len` entries whose `flags` hold the variable's index.
// The alignment padding after a variable maps to it (and stays zero). This keeps one dispatch per pool
// buffer however many variables it holds, where one dispatch per variable used to be recorded (wgpu puts
// a barrier between dispatches writing one buffer).

// The last entry in [lo, lo + n) whose start is <= i (n >= 1; the first entry's start is <= i).
fn last_start_at_most(lo_in: u32, n_in: u32, i: u32) -> u32 {
    var lo = lo_in;
    var n = n_in;
    while n > 1u {
        let half = n / 2u;
        if var_info[lo + half].flags <= i {
            lo += half;
        }
        n -= half;
    }
    return lo;
}

// The entries [x, x + y) covering a workgroup's vec4s [a, b]: the same for every invocation of the
// workgroup, so each invocation then searches only those (one or two for large variables). Searching
// the whole map per invocation made 1,000 variables with global_clipnorm 1.4x slower on lavapipe.
fn workgroup_entries(a: u32, b: u32) -> vec2<u32> {
    let first = last_start_at_most(p.seg_base, p.seg_len, a);
    let last = last_start_at_most(first, p.seg_base + p.seg_len - first, b);
    return vec2<u32>(first, last - first + 1u);
}

// The variable of vec4 `i` and the index in it of the vec4's first element (each start entry holds
// its segment's first element in the bits of `mul`).
fn variable_of(i: u32, entries: vec2<u32>) -> vec2<u32> {
    let at = last_start_at_most(entries.x, entries.y, i);
    let start = var_info[at];
    return vec2<u32>(var_info[at + p.seg_len].flags, bitcast<u32>(start.mul) + (i - start.flags) * 4u);
}

// The random bits of stochastic rounding for the four elements from element `elem` of variable
// `var_index` (twin: `reference::sr_round`).
fn sr_bits(var_index: u32, elem: u32) -> vec4<u32> {
    let seed = p.sr_seed + var_index * 0x9e3779b9u;
    return vec4<u32>(
        sr_hash(seed, p.step, elem),
        sr_hash(seed, p.step, elem + 1u),
        sr_hash(seed, p.step, elem + 2u),
        sr_hash(seed, p.step, elem + 3u),
    );
}

// The update of vec4 `i`; `live` false: compute, but write nothing (see `run`).
// Each buffer is read right before it is written (velocity, average, momentum, then the variable): on
// lavapipe this order ran 16% faster at 16M elements than reading every buffer first, and it is what the
// minimal kernel of the benchmarks does.
// With VAR_OPTIONS the variable's hyperparameters come from the options table, and a slot the variable
// does not keep is neither read nor written. (Finding the variable once per workgroup, from the
// workgroup's first and last vec4, and reading its options with that shared index was slower on
// lavapipe, 1.8x the minimal kernel against 1.5x, also with the update written out twice: 2x.)
// `in_range`: `i` lies in the dispatch's range (Keras's moving average, `ema_step`, runs on a step the
// non-finite policy skips too, as its own dispatch does).
fn update(i: u32, live: bool, in_range: bool, entries: vec2<u32>) {
    // 8-bit quantized state: the new values are stashed by `st_*` and stored by `q8_flush`.
    q8_reset();
    var gv = ld_g(i);
    var qv = vec4<f32>(0.0);
    var use_q = false;
    var h = Hyper();
    var var_elem = vec2<u32>(0u);
    if PER_VAR || VAR_OPTIONS != 0u || STOCHASTIC {
        var_elem = variable_of(i, entries);
        let var_index = var_elem.x;
        if PER_VAR {
            let info = var_info[var_index];
            if (info.flags & PRECLIPPED) == 0u {
                gv = clip_gradient(gv, info);
            }
            use_q = (info.flags & USE_SQUARES) != 0u;
            if use_q {
                qv = q[i];
            }
        }
        if VAR_OPTIONS != 0u {
            h = hyper(var_index);
        }
    }
    var xv = vec4<f32>(0.0);
    if L2_DECAY {
        xv = ld_x(i);
    }
    gv = effective_gradient(gv, xv, h);
    let vn = next_velocity(ld_v(i), gv, qv, use_q, h);
    if live {
        st_v(i, vn);
    }
    var an = vec4<f32>(0.0);
    if is_centered(h) {
        an = next_average(ld_a(i), gv, h);
        if live {
            st_a(i, an);
        }
    }
    let dir = direction(gv, denominator(vn, an, h), h);
    var mn = vec4<f32>(0.0);
    if keeps_momentum(h) {
        mn = next_momentum(ld_m(i), dir, h);
        if live {
            st_m(i, mn);
        }
    }
    if !L2_DECAY {
        xv = ld_x(i);
    }
    let xn = next_variable(xv, dir, mn, h);
    if live {
        if STOCHASTIC {
            st_x_sr(i, xn, sr_bits(var_elem.x, var_elem.y));
        } else {
            st_x(i, xn);
        }
        // The 16-bit copy of the variable, if the pools keep one (else this does nothing).
        st_c(i, xn);
    }
    // Keras's moving average of the variable as stored (in the step's dispatch where the device has a
    // ninth storage binding; else `keras_base.wgsl::ema` and this does nothing).
    ema_step(i, select(xv, xn, live), in_range);
}

// Invocations past the range do not return early: they read the range's last vec4 (in bounds) and write
// nothing. Only the writes are conditional, so the step parameters are read outside any branch that
// depends on the invocation: lavapipe reads them once per group of invocations there, but once per
// invocation inside such a branch (4-10% of a step). Even returning early for whole workgroups made
// lavapipe treat all that follows as divergent; the host folds the grid instead so that fewer than a row
// of workgroups lie past the end.
fn run(first: u32, group_first: u32) {
    var ok = true;
    if SKIP_NONFINITE {
        ok = status[0] == 0u;
    }
    var entries = vec2<u32>(0u);
    if PER_VAR || VAR_OPTIONS != 0u || STOCHASTIC {
        let last = p.end - 1u;
        let span = WORKGROUP_SIZE * VEC4S_PER_INVOCATION - 1u;
        entries = workgroup_entries(min(group_first, last), min(group_first + span, last));
    }
    for (var k = 0u; k < VEC4S_PER_INVOCATION; k++) {
        let i = first + k * WORKGROUP_SIZE;
        update(min(i, p.end - 1u), ok && i < p.end, i < p.end, entries);
        // Quantized state: each block's absmax in workgroup memory, then the codes (in uniform control
        // flow: every invocation of the workgroup takes part; nothing without quantized state).
        q8_flush(min(i, p.end - 1u), ok && i < p.end, first - group_first);
    }
}

fn local_first(wid: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * p.groups_x + wid.x) * WORKGROUP_SIZE * VEC4S_PER_INVOCATION + lid;
}

// A range from the start of the pool buffer (`p.begin` = 0): every dense dispatch of a step that updates
// all the variables of a buffer.
@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    run(local_first(wid, lid), local_first(wid, 0u));
}

// A range from `p.begin`. A separate entry point because adding a parameter to the index cost 5-10% of
// a step on lavapipe (the same sum with a constant costs nothing).
@compute @workgroup_size(WORKGROUP_SIZE)
fn main_at(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    run(p.begin + local_first(wid, lid), p.begin + local_first(wid, 0u));
}
