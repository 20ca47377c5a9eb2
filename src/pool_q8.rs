//! The bytes of 8-bit quantized state buffers as the kernels lay them out: per block of `block`
//! elements, one f32 absmax word, then the block's codes (one byte per element, four per word; a partial
//! last block holds whole words, its pad codes 0, which stands for 0.0).

use crate::quant;

/// `values` quantized block by block (each block's absmax, then its codes), as the GPU stores them.
pub(crate) fn encode_blocks(values: &[f32], block: usize, unsigned: bool) -> Vec<u8> {
    let book = quant::Codebook::dynamic(!unsigned);
    let mut out = Vec::with_capacity(values.len() + 4 * values.len().div_ceil(block) + 4);
    for b in values.chunks(block) {
        let absmax = b.iter().fold(0.0f32, |m, &x| m.max(x.abs()));
        out.extend_from_slice(&absmax.to_le_bytes());
        let start = out.len();
        out.extend(b.iter().map(|&x| book.quantize(x, absmax)));
        out.resize(start + b.len().next_multiple_of(4), 0);
    }
    out
}

/// Appends the `elems` values held by `bytes` (laid out as [`encode_blocks`] writes) to `out`.
pub(crate) fn decode_blocks(
    bytes: &[u8],
    elems: usize,
    block: usize,
    unsigned: bool,
    out: &mut Vec<f32>,
) {
    let book = quant::Codebook::dynamic(!unsigned);
    let mut at = 0;
    let mut left = elems;
    while left > 0 && at + 4 <= bytes.len() {
        let absmax = f32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        let n = left.min(block);
        let codes = &bytes[at + 4..(at + 4 + n).min(bytes.len())];
        out.extend(codes.iter().map(|&c| book.dequantize(c, absmax)));
        at += 4 + n.next_multiple_of(4);
        left -= n;
    }
}

/// Splits `bytes` (the `elems` values of one variable laid out as [`encode_blocks`] writes, whole blocks
/// of `block` elements from its start) into the codes (one byte per element, pad bytes dropped) and the
/// blocks' absmax (little-endian f32 bytes, one per block). `None` when `bytes` is not that long.
pub(crate) fn split_blocks(bytes: &[u8], elems: usize, block: usize) -> Option<(Vec<u8>, Vec<u8>)> {
    let blocks = elems.div_ceil(block);
    let (mut codes, mut absmax) = (Vec::with_capacity(elems), Vec::with_capacity(4 * blocks));
    let mut at = 0;
    for b in 0..blocks {
        let n = block.min(elems - b * block);
        let end = at + 4 + n.next_multiple_of(4);
        let words = bytes.get(at..end)?;
        absmax.extend_from_slice(&words[..4]);
        codes.extend_from_slice(&words[4..4 + n]);
        at = end;
    }
    (at == bytes.len()).then_some((codes, absmax))
}

/// The inverse of [`split_blocks`]: `codes` (one byte per element) and `absmax` (little-endian f32 bytes,
/// one per block of `block` elements) interleaved as the GPU stores them (a partial last block's pad
/// codes 0). `None` when the lengths do not match.
pub(crate) fn join_blocks(codes: &[u8], absmax: &[u8], block: usize) -> Option<Vec<u8>> {
    let blocks = codes.len().div_ceil(block);
    if absmax.len() != 4 * blocks {
        return None;
    }
    let mut out = Vec::with_capacity(codes.len() + 4 * blocks + 4);
    for (b, c) in codes.chunks(block).enumerate() {
        out.extend_from_slice(&absmax[4 * b..4 * b + 4]);
        let start = out.len();
        out.extend_from_slice(c);
        out.resize(start + c.len().next_multiple_of(4), 0);
    }
    Some(out)
}

/// The WGSL of a quantized state buffer `n` (binding `b`): in the vec4 form, `ld_n` dequantizes its
/// vec4 and `st_n` stashes the new value for [`flush_wgsl`]'s `q8_flush`, which finds each block's
/// absmax in workgroup memory and stores the codes (no extra pass over global memory). The scalar form
/// (sparse rows) is never run on quantized state (lazy steps there are `rmsprop_lazy_q8.wgsl`, in the
/// vec4 form): stand-ins.
pub(crate) fn role_wgsl(flavor: crate::pool_wgsl::Flavor, n: &str, b: u32) -> String {
    let map = if n == "v" { "U" } else { "S" };
    match flavor {
        crate::pool_wgsl::Flavor::Vec4 => format!(
            "@group(0) @binding({b}) var<storage, read_write> {n}: array<u32>;
var<private> q8_{n}: vec4<f32>;
fn ld_{n}(i: u32) -> vec4<f32> {{
    let base = (i / Q8_BLOCK) * (Q8_BLOCK + 1u);
    return q8_decode4_{map}({n}[base + 1u + i % Q8_BLOCK], bitcast<f32>({n}[base]));
}}
fn st_{n}(i: u32, value: vec4<f32>) {{ q8_{n} = value; }}
fn q8_store_{n}(i: u32, live: bool, value: vec4<f32>, amax: f32) {{
    if live {{
        let base = (i / Q8_BLOCK) * (Q8_BLOCK + 1u);
        {n}[base + 1u + i % Q8_BLOCK] = q8_encode4_{map}(value, amax);
        if i % Q8_BLOCK == 0u {{
            {n}[base] = bitcast<u32>(amax);
        }}
    }}
}}
// The bits of the absmax of vec4 `i`'s block.
fn q8_amax_{n}(i: u32) -> u32 {{
    return {n}[(i / Q8_BLOCK) * (Q8_BLOCK + 1u)];
}}
// As `q8_store_{n}`, the lanes in `keep` keeping their codes.
fn q8_store_keep_{n}(i: u32, live: bool, value: vec4<f32>, amax: f32, keep: vec4<bool>) {{
    if live {{
        let at = (i / Q8_BLOCK) * (Q8_BLOCK + 1u) + 1u + i % Q8_BLOCK;
        let lanes = select(vec4<u32>(0u), vec4<u32>(0xffu, 0xff00u, 0xff0000u, 0xff000000u), keep);
        let mask = lanes.x | lanes.y | lanes.z | lanes.w;
        let old = {n}[at];
        q8_store_{n}(i, live, value, amax);
        {n}[at] = (old & mask) | ({n}[at] & ~mask);
    }}
}}
"
        ),
        crate::pool_wgsl::Flavor::Scalar => format!(
            "@group(0) @binding({b}) var<storage, read_write> {n}: array<u32>;
fn ld_{n}(e: u32) -> f32 {{ return 0.0; }}
fn st_{n}(e: u32, value: f32) {{}}
fn rnd_{n}(value: f32) -> f32 {{ return value; }}
"
        ),
    }
}

/// Buckets of the search tables: the order keys of the floats in [-2, 2) cut into equal ranges.
const BUCKETS: usize = 1 << 14;
/// Order key of the first bucket, and the keys per bucket (as a shift).
const KEY_BASE: u32 = 0x4000_0000;
const KEY_SHIFT: u32 = 17;

/// A key that orders floats as `<` does (except that -0 comes just before +0; NaN are not ordered).
fn order_key(x: f32) -> u32 {
    let b = x.to_bits();
    if b & 0x8000_0000 != 0 {
        !b
    } else {
        b | 0x8000_0000
    }
}

/// The buffer the dense kernel binds at 21: the unsigned map, the signed map (256 f32 bits each),
/// then per map a table of `BUCKETS` indices: for bucket `k`, the last entry whose key is at most the
/// bucket's first key (0 if none). Quantizing starts there and steps forward while the next entry is
/// still <= the value, which ends where a binary search over the map ends (the same float
/// comparisons), after one or two loads instead of eight dependent ones.
pub(crate) fn maps_buffer() -> Vec<u32> {
    let mut out: Vec<u32> = [false, true]
        .iter()
        .flat_map(|&s| quant::map_bits(s))
        .collect();
    for signed in [false, true] {
        let map = quant::dynamic_map(signed);
        for k in 0..BUCKETS as u32 {
            let low = KEY_BASE + (k << KEY_SHIFT);
            let j = map.iter().rposition(|&m| order_key(m) <= low).unwrap_or(0);
            out.push(j as u32);
        }
    }
    out
}

/// The maps, the codecs and `q8_flush(i, live, lid)` of the dense kernel (`q8`: the pools hold
/// quantized state; else `q8_flush` does nothing). `Q8_BLOCK` (vec4 per block) is a pipeline constant.
pub(crate) fn flush_wgsl(q8: bool) -> String {
    if !q8 {
        // (`Q8_BLOCK` for `rmsprop_lazy_q8.wgsl`, which is never dispatched on pools without q8
        // state but is validated for them.)
        return "fn q8_flush(i: u32, live: bool, lid: u32) {}\nfn q8_reset() {}\n\
                fn q8_flush_lazy(i: u32, live: bool, lid: u32, listed: vec4<bool>) {}\n\
                const Q8_BLOCK: u32 = 64u;\n"
            .into();
    }
    let mut s = String::from(
        "override Q8_BLOCK: u32 = 64u;\n\
         // The maps (binding 21): unsigned from 0, signed from 256, then their search tables.\n\
         @group(0) @binding(21) var<storage, read> q8_maps: array<u32>;\n",
    );
    s.push_str(&format!(
        "// The search bucket of n (twin: `pool_q8::maps_buffer`); NaN: the first.
fn q8_bucket(n: f32) -> u32 {{
    let b = bitcast<u32>(n);
    let key = select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
    let k = min((max(key, {KEY_BASE}u) - {KEY_BASE}u) >> {KEY_SHIFT}u, {}u);
    return select(k, 0u, (b & 0x7fffffffu) > 0x7f800000u);
}}
",
        BUCKETS - 1
    ));
    for (name, signed) in [("U", false), ("S", true)] {
        s.push_str(&format!(
            "const Q8_{name}: u32 = {}u;\nconst Q8_T{name}: u32 = {}u;\nconst Q8_Z{name}: u32 = {}u;\n",
            if signed { 256 } else { 0 },
            if signed { 512 + BUCKETS } else { 512 },
            quant::Codebook::dynamic(signed).zero()
        ));
        s.push_str(&format!(
            "fn q8_code_{name}(x: f32, amax: f32) -> u32 {{
    let n = select(x / amax, 0.0, amax == 0.0);
    // The largest j with map[j] <= n (0 if none), as a binary search gives it: from the last entry
    // at or below the start of n's bucket (`maps_buffer`), forward while the next entry is <= n.
    var j = q8_maps[Q8_T{name} + q8_bucket(n)];
    while j < 255u && bitcast<f32>(q8_maps[Q8_{name} + j + 1u]) <= n {{
        j += 1u;
    }}
    let lo = bitcast<f32>(q8_maps[Q8_{name} + j]);
    let hi = bitcast<f32>(q8_maps[Q8_{name} + min(j + 1u, 255u)]);
    j = select(j, j + 1u, j < 255u && (hi - n) < (n - lo));
    return j ^ Q8_Z{name};
}}
fn q8_encode4_{name}(v: vec4<f32>, amax: f32) -> u32 {{
    return q8_code_{name}(v.x, amax) | (q8_code_{name}(v.y, amax) << 8u)
        | (q8_code_{name}(v.z, amax) << 16u) | (q8_code_{name}(v.w, amax) << 24u);
}}
fn q8_value_{name}(code: u32, amax: f32) -> f32 {{
    return bitcast<f32>(q8_maps[Q8_{name} + ((code & 255u) ^ Q8_Z{name})]) * amax;
}}
fn q8_decode4_{name}(w: u32, amax: f32) -> vec4<f32> {{
    return vec4<f32>(q8_value_{name}(w, amax), q8_value_{name}(w >> 8u, amax),
        q8_value_{name}(w >> 16u, amax), q8_value_{name}(w >> 24u, amax));
}}
"
        ));
    }
    s.push_str(
        "var<workgroup> q8_red: array<vec3<f32>, WORKGROUP_SIZE>;
// The largest magnitude of a vec4.
fn q8_mag(v: vec4<f32>) -> f32 {
    let m = abs(v);
    return max(max(m.x, m.y), max(m.z, m.w));
}
// The largest `x` of the invocations of this invocation's block (Q8_BLOCK consecutive invocations),
// for the three slots at once (one reduction: lavapipe pays for every barrier).
fn q8_block_max(lid: u32, x: vec3<f32>) -> vec3<f32> {
    q8_red[lid] = x;
    workgroupBarrier();
    for (var s = Q8_BLOCK / 2u; s > 0u; s /= 2u) {
        if lid % Q8_BLOCK < s {
            q8_red[lid] = max(q8_red[lid], q8_red[lid + s]);
        }
        workgroupBarrier();
    }
    let m = q8_red[lid - lid % Q8_BLOCK];
    workgroupBarrier();
    return m;
}
fn q8_reset() {
    q8_v = vec4<f32>(0.0);
    q8_m = vec4<f32>(0.0);
    q8_a = vec4<f32>(0.0);
}
fn q8_flush(i: u32, live: bool, lid: u32) {
    let nv = select(vec4<f32>(0.0), q8_v, live);
    let nm = select(vec4<f32>(0.0), q8_m, live);
    let na = select(vec4<f32>(0.0), q8_a, live);
    let amax = q8_block_max(lid, vec3<f32>(q8_mag(nv), q8_mag(nm), q8_mag(na)));
    q8_store_v(i, live, nv, amax.x);
    if HAS_MOMENTUM {
        q8_store_m(i, live, nm, amax.y);
    }
    if CENTERED {
        q8_store_a(i, live, na, amax.z);
    }
}
// `q8_flush` of a lazy step (`rmsprop_lazy_q8.wgsl`): the lanes not `listed` keep their codes where
// their block's absmax did not change (the old absmax is read before the reduction's barriers, which
// order it before the block's first invocation stores the new one).
fn q8_flush_lazy(i: u32, live: bool, lid: u32, listed: vec4<bool>) {
    let nv = select(vec4<f32>(0.0), q8_v, live);
    let nm = select(vec4<f32>(0.0), q8_m, live);
    let na = select(vec4<f32>(0.0), q8_a, live);
    var old = vec3<u32>(q8_amax_v(i), 0u, 0u);
    if HAS_MOMENTUM {
        old.y = q8_amax_m(i);
    }
    if CENTERED {
        old.z = q8_amax_a(i);
    }
    let amax = q8_block_max(lid, vec3<f32>(q8_mag(nv), q8_mag(nm), q8_mag(na)));
    let same = bitcast<vec3<u32>>(amax) == old;
    let kept = !listed;
    q8_store_keep_v(i, live, nv, amax.x, kept & vec4<bool>(same.x));
    if HAS_MOMENTUM {
        q8_store_keep_m(i, live, nm, amax.y, kept & vec4<bool>(same.y));
    }
    if CENTERED {
        q8_store_keep_a(i, live, na, amax.z, kept & vec4<bool>(same.z));
    }
}
",
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_and_join_are_inverse() {
        for (elems, block) in [(0, 64), (1, 64), (64, 64), (130, 64), (10_007, 256)] {
            let values: Vec<f32> = (0..elems).map(|i| (i as f32 * 0.37).sin()).collect();
            let bytes = encode_blocks(&values, block, false);
            let (codes, absmax) = split_blocks(&bytes, elems, block).unwrap();
            assert_eq!(codes.len(), elems);
            assert_eq!(absmax.len(), 4 * elems.div_ceil(block));
            assert_eq!(join_blocks(&codes, &absmax, block).unwrap(), bytes);
            assert!(
                split_blocks(&bytes[..bytes.len().saturating_sub(4)], elems, block).is_none()
                    || elems == 0
            );
            assert!(
                join_blocks(&codes, &absmax[..absmax.len().saturating_sub(4)], block).is_none()
                    || elems == 0
            );
        }
    }
}
