// 16-bit storage: f16 and bf16 conversions, bit-exact with the `half` crate (2.7) on every backend.
//
// Layout: a 16-bit buffer holds two elements per u32 word, element 2k in the low 16 bits and 2k+1 in
// the high 16 bits. Kernels compute in f32 and round once, when storing.
//
// Why bit operations instead of WGSL's unpack2x16float / pack2x16float: their handling of f16
// subnormals, rounding and NaN is implementation-defined, so results would differ between backends
// and from the CPU twin (`half::f16::{from_f32, to_f32}`, `half::bf16::{from_f32, to_f32}`). Measured
// by tests/half_convert.rs (`builtin_pack_unpack_findings`, the same inputs as the checks here) on
// llvmpipe (Mesa, LLVM 15), Vulkan (lavapipe) and GL alike: unpack2x16float keeps all 2046 f16
// subnormals exactly and pack2x16float rounds to nearest even with gradual underflow and overflow to
// inf (0 mismatches with `half` over 1.3M f32 values), but NaNs differ: pack gives a NaN without its
// payload (Vulkan +-0x7e00, GL +-0x7fff; `half` keeps the top payload bits), and on GL unpack gives
// +-0x7fffffff (`half`: sign | 0x7fc00000 | payload << 13). Other drivers are free to flush f16
// subnormals or round otherwise (WGSL leaves both, and out-of-range values, implementation-defined),
// so the library does not rely on a software rasterizer's good behaviour.
// Everything below uses integer operations only (no float arithmetic, which may flush f32 denormals
// to zero on GPUs and on lavapipe), so f32 denormal inputs and outputs keep their bits as well.
//
// This file is prepended to kernels by string concatenation: top-level `fn` and `const` items only,
// every name prefixed with f16_, f32_, bf16_, pack_, unpack_ or sr_.

// f16 bits (low 16 bits of `h`) to f32, exactly: subnormals kept, +-0, +-inf; a NaN becomes the quiet
// NaN of the same sign and payload (as `half::f16::to_f32`: sign | 0x7fc00000 | mantissa << 13).
fn f16_to_f32(h: u32) -> f32 {
    let sign = (h & 0x8000u) << 16u;
    let e = (h >> 10u) & 0x1fu;
    let m = h & 0x3ffu;
    if (e == 0x1fu) {
        // inf (m == 0) or NaN (quiet bit set, payload kept)
        return bitcast<f32>(sign | 0x7f800000u | select(0u, 0x400000u | (m << 13u), m != 0u));
    }
    if (e == 0u) {
        if (m == 0u) {
            return bitcast<f32>(sign);
        }
        // Subnormal m * 2^-24: normalize on the leading one at bit p (0..9); exponent 2^(p-24).
        let p = firstLeadingBit(m);
        return bitcast<f32>(sign | ((p + 103u) << 23u) | ((m << (23u - p)) & 0x7fffffu));
    }
    return bitcast<f32>(sign | ((e + 112u) << 23u) | (m << 13u));
}

// f32 to f16 bits (in the low 16 bits): round to nearest, ties to even; gradual underflow (f16
// subnormals exact, below 2^-25 and 2^-25 itself round to +-0); >= 65520 in magnitude rounds to +-inf;
// a NaN keeps its sign and the top of its payload with the quiet bit set (sign | 0x7e00 | mantissa >> 13,
// as `half::f16::from_f32`).
fn f32_to_f16(x: f32) -> u32 {
    let b = bitcast<u32>(x);
    let sign = (b >> 16u) & 0x8000u;
    let a = b & 0x7fffffffu;
    if (a > 0x7f800000u) {
        return sign | 0x7e00u | ((a >> 13u) & 0x3ffu);
    }
    if (a >= 0x477ff000u) {
        // >= 65520 (the midpoint between 65504 and 2^16, a tie that goes to the even 2^16) and inf
        return sign | 0x7c00u;
    }
    if (a >= 0x38800000u) {
        // Normal: rebias the exponent (127 - 15 = 112), round the 13 dropped bits to nearest even; a
        // carry out of the mantissa increments the exponent, which is what rounding up must do.
        let r = a - 0x38000000u;
        return sign | ((r + 0xfffu + ((r >> 13u) & 1u)) >> 13u);
    }
    if (a < 0x33000000u) {
        // Below 2^-25 (f32 denormals included): +-0. Exactly 2^-25 is handled below (a tie, to 0).
        return sign;
    }
    // Subnormal f16 (2^-25 <= |x| < 2^-14): the 24-bit significand shifted right by 14..24 bits, with
    // the dropped bits as round and sticky bits.
    let s = 126u - (a >> 23u);
    let m = (a & 0x7fffffu) | 0x800000u;
    let half_bit = 1u << (s - 1u);
    let dropped = m & ((1u << s) - 1u);
    let q = m >> s;
    let up = dropped > half_bit || (dropped == half_bit && (q & 1u) == 1u);
    return sign | (q + select(0u, 1u, up));
}

// bf16 bits (low 16 bits of `h`) to f32: the bits shifted up (a bf16 subnormal becomes an f32 denormal,
// which later float arithmetic may flush); a NaN gets the quiet bit, as `half::bf16::to_f32`.
fn bf16_to_f32(h: u32) -> f32 {
    let b = h & 0xffffu;
    if ((b & 0x7fffu) > 0x7f80u) {
        return bitcast<f32>((b | 0x40u) << 16u);
    }
    return bitcast<f32>(b << 16u);
}

// f32 to bf16 bits (in the low 16 bits): round to nearest, ties to even (finite values round to +-inf
// from 0x7f7f8000 up, as in IEEE); a NaN keeps its sign and top payload with the quiet bit set
// ((bits >> 16) | 0x40, as `half::bf16::from_f32`).
fn f32_to_bf16(x: f32) -> u32 {
    let b = bitcast<u32>(x);
    if ((b & 0x7fffffffu) > 0x7f800000u) {
        return (b >> 16u) | 0x40u;
    }
    return (b + 0x7fffu + ((b >> 16u) & 1u)) >> 16u;
}

// The x4 forms below are what the kernels call: the same results as the scalar functions above, lane by
// lane, computed without branches (every case computed, the right one selected), which lavapipe runs as
// straight-line SIMD code; the scalar functions read better and the tests hold the two together.

// Four halves from two words: x, y from w.x (low, high), z, w from w.y (low, high).
fn unpack_halves(w: vec2<u32>) -> vec4<u32> {
    return vec4<u32>(w.x & 0xffffu, w.x >> 16u, w.y & 0xffffu, w.y >> 16u);
}

fn pack_halves(h: vec4<u32>) -> vec2<u32> {
    return vec2<u32>(h.x | (h.y << 16u), h.z | (h.w << 16u));
}

fn unpack_f16x4(w: vec2<u32>) -> vec4<f32> {
    let h = unpack_halves(w);
    let sign = (h & vec4<u32>(0x8000u)) << vec4<u32>(16u);
    let e = (h >> vec4<u32>(10u)) & vec4<u32>(0x1fu);
    let m = h & vec4<u32>(0x3ffu);
    let normal = sign | ((e + vec4<u32>(112u)) << vec4<u32>(23u)) | (m << vec4<u32>(13u));
    let payload = select(vec4<u32>(0u), vec4<u32>(0x400000u) | (m << vec4<u32>(13u)), m != vec4<u32>(0u));
    let special = sign | vec4<u32>(0x7f800000u) | payload;
    // Subnormal: normalized on the leading one at bit p (m = 0 selects the signed zero instead).
    let p = firstLeadingBit(m) & vec4<u32>(31u);
    let shift = (vec4<u32>(23u) - p) & vec4<u32>(31u);
    let sub = sign | ((p + vec4<u32>(103u)) << vec4<u32>(23u)) | ((m << shift) & vec4<u32>(0x7fffffu));
    let tiny = select(sub, sign, m == vec4<u32>(0u));
    let r = select(select(normal, special, e == vec4<u32>(0x1fu)), tiny, e == vec4<u32>(0u));
    return bitcast<vec4<f32>>(r);
}

fn pack_f16x4(v: vec4<f32>) -> vec2<u32> {
    let b = bitcast<vec4<u32>>(v);
    let sign = (b >> vec4<u32>(16u)) & vec4<u32>(0x8000u);
    let a = b & vec4<u32>(0x7fffffffu);
    let nan = sign | vec4<u32>(0x7e00u) | ((a >> vec4<u32>(13u)) & vec4<u32>(0x3ffu));
    let inf = sign | vec4<u32>(0x7c00u);
    let r = a - vec4<u32>(0x38000000u);
    let normal = sign | ((r + vec4<u32>(0xfffu) + ((r >> vec4<u32>(13u)) & vec4<u32>(1u))) >> vec4<u32>(13u));
    // Subnormal f16: the significand shifted right by s (14..24 where this lane is selected), rounded
    // on the dropped bits; other lanes compute a value that is not selected (shifts kept below 32).
    let s = min((vec4<u32>(126u) - (a >> vec4<u32>(23u))) & vec4<u32>(31u), vec4<u32>(31u));
    let m = (a & vec4<u32>(0x7fffffu)) | vec4<u32>(0x800000u);
    let half_bit = vec4<u32>(1u) << ((s - vec4<u32>(1u)) & vec4<u32>(31u));
    let dropped = m & ((vec4<u32>(1u) << s) - vec4<u32>(1u));
    let q = m >> s;
    let up = (dropped > half_bit) | ((dropped == half_bit) & ((q & vec4<u32>(1u)) == vec4<u32>(1u)));
    let sub = sign | (q + select(vec4<u32>(0u), vec4<u32>(1u), up));
    var h = select(sub, sign, a < vec4<u32>(0x33000000u));
    h = select(h, normal, a >= vec4<u32>(0x38800000u));
    h = select(h, inf, a >= vec4<u32>(0x477ff000u));
    h = select(h, nan, a > vec4<u32>(0x7f800000u));
    return pack_halves(h);
}

fn unpack_bf16x4(w: vec2<u32>) -> vec4<f32> {
    let h = unpack_halves(w);
    let nan = (h & vec4<u32>(0x7fffu)) > vec4<u32>(0x7f80u);
    return bitcast<vec4<f32>>(select(h, h | vec4<u32>(0x40u), nan) << vec4<u32>(16u));
}

fn pack_bf16x4(v: vec4<f32>) -> vec2<u32> {
    let b = bitcast<vec4<u32>>(v);
    let high = b >> vec4<u32>(16u);
    let rne = (b + vec4<u32>(0x7fffu) + (high & vec4<u32>(1u))) >> vec4<u32>(16u);
    let nan = (b & vec4<u32>(0x7fffffffu)) > vec4<u32>(0x7f800000u);
    return pack_halves(select(rne, high | vec4<u32>(0x40u), nan));
}

// The "lowbias32" integer finalizer (bijective, strong avalanche); wrapping u32 arithmetic.
fn sr_mix(v: u32) -> u32 {
    var h = v;
    h ^= h >> 16u;
    h *= 0x7feb352du;
    h ^= h >> 15u;
    h *= 0x846ca68bu;
    h ^= h >> 16u;
    return h;
}

// Random bits for stochastic rounding of element `elem` at optimizer step `step` under `seed`: the
// three are folded in one after another through the finalizer. CPU twin: `half_bits::sr_hash`.
fn sr_hash(seed: u32, step: u32, elem: u32) -> u32 {
    var h = sr_mix(seed ^ 0x9e3779b9u);
    h = sr_mix(h ^ step);
    return sr_mix(h ^ elem);
}

// Stochastic rounding of f32 to bf16 bits (in the low 16 bits): adds the low 16 bits of `r` to the f32
// bits and truncates, so x goes to the bf16 neighbour above with probability (x - lo) / (hi - lo) and the
// result is unbiased in expectation; a value representable in bf16 is returned unchanged. NaN: as
// `f32_to_bf16`; +-inf stays +-inf. A finite value never becomes inf: where the carry would reach the
// infinity pattern (|x| above the largest finite bf16, 0x7f7f), the result saturates to +-0x7f7f (an
// inf in optimizer state is permanent, and 2^128 is not a value the expectation could use).
// CPU twin: `half_bits::f32_to_bf16_stochastic`.
fn f32_to_bf16_stochastic(x: f32, r: u32) -> u32 {
    let b = bitcast<u32>(x);
    let a = b & 0x7fffffffu;
    if (a > 0x7f800000u) {
        return (b >> 16u) | 0x40u;
    }
    let t = (b + (r & 0xffffu)) >> 16u;
    return select(t, t - 1u, a < 0x7f800000u && (t & 0x7fffu) == 0x7f80u);
}
