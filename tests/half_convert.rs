//! `shaders/half.wgsl` on the GPU against the `half` crate (round to nearest even, both directions) and
//! against its CPU twin `wgpu_rmsprop::half_bits` (stochastic rounding), bit for bit, NaN payloads
//! included. Run on lavapipe (Vulkan) and llvmpipe (GL); the adapter is chosen as the crate does
//! (`WGPU_BACKEND`, `WGPU_ADAPTER_NAME`).

mod common;

use std::sync::OnceLock;

use half::{bf16, f16};
use wgpu::util::DeviceExt;
use wgpu_rmsprop::half_bits::{f32_to_bf16_stochastic, sr_hash};

const WORKGROUP: u32 = 256;

/// The library followed by test entry points. Each reads `src` and writes `dst` (both `u32` words);
/// the invocation index is linear over a 2D grid of workgroups.
const TEST_KERNEL: &str = r#"
@group(0) @binding(0) var<storage, read> src: array<u32>;
@group(0) @binding(1) var<storage, read_write> dst: array<u32>;

fn index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * 256u + lid;
}

@compute @workgroup_size(256)
fn t_f16_to_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i < arrayLength(&dst)) { dst[i] = bitcast<u32>(f16_to_f32(src[i])); }
}

@compute @workgroup_size(256)
fn t_bf16_to_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i < arrayLength(&dst)) { dst[i] = bitcast<u32>(bf16_to_f32(src[i])); }
}

@compute @workgroup_size(256)
fn t_f32_to_f16(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i < arrayLength(&dst)) { dst[i] = f32_to_f16(bitcast<f32>(src[i])); }
}

@compute @workgroup_size(256)
fn t_f32_to_bf16(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i < arrayLength(&dst)) { dst[i] = f32_to_bf16(bitcast<f32>(src[i])); }
}

// 4 f32 words in, 2 packed words out.
@compute @workgroup_size(256)
fn t_pack_f16x4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i < arrayLength(&dst) / 2u) {
        let v = bitcast<vec4<f32>>(vec4<u32>(src[4u * i], src[4u * i + 1u], src[4u * i + 2u], src[4u * i + 3u]));
        let w = pack_f16x4(v);
        dst[2u * i] = w.x;
        dst[2u * i + 1u] = w.y;
    }
}

@compute @workgroup_size(256)
fn t_pack_bf16x4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i < arrayLength(&dst) / 2u) {
        let v = bitcast<vec4<f32>>(vec4<u32>(src[4u * i], src[4u * i + 1u], src[4u * i + 2u], src[4u * i + 3u]));
        let w = pack_bf16x4(v);
        dst[2u * i] = w.x;
        dst[2u * i + 1u] = w.y;
    }
}

// 2 packed words in, 4 f32 words out.
@compute @workgroup_size(256)
fn t_unpack_f16x4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i < arrayLength(&dst) / 4u) {
        let v = bitcast<vec4<u32>>(unpack_f16x4(vec2<u32>(src[2u * i], src[2u * i + 1u])));
        dst[4u * i] = v.x;
        dst[4u * i + 1u] = v.y;
        dst[4u * i + 2u] = v.z;
        dst[4u * i + 3u] = v.w;
    }
}

@compute @workgroup_size(256)
fn t_unpack_bf16x4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i < arrayLength(&dst) / 4u) {
        let v = bitcast<vec4<u32>>(unpack_bf16x4(vec2<u32>(src[2u * i], src[2u * i + 1u])));
        dst[4u * i] = v.x;
        dst[4u * i + 1u] = v.y;
        dst[4u * i + 2u] = v.z;
        dst[4u * i + 3u] = v.w;
    }
}

// (x bits, seed, step, elem) in, (hash, rounded) out.
@compute @workgroup_size(256)
fn t_stochastic(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i < arrayLength(&dst) / 2u) {
        let r = sr_hash(src[4u * i + 1u], src[4u * i + 2u], src[4u * i + 3u]);
        dst[2u * i] = r;
        dst[2u * i + 1u] = f32_to_bf16_stochastic(bitcast<f32>(src[4u * i]), r);
    }
}

// WGSL's built-ins, measured only (not used by the library).
@compute @workgroup_size(256)
fn t_builtin_unpack(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i < arrayLength(&dst)) { dst[i] = bitcast<u32>(unpack2x16float(src[i]).x); }
}

@compute @workgroup_size(256)
fn t_builtin_pack(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i < arrayLength(&dst)) {
        dst[i] = pack2x16float(vec2<f32>(bitcast<f32>(src[i]), 0.0)) & 0xffffu;
    }
}
"#;

fn module() -> &'static wgpu::ShaderModule {
    static MODULE: OnceLock<wgpu::ShaderModule> = OnceLock::new();
    MODULE.get_or_init(|| {
        let source = format!("{}\n{TEST_KERNEL}", include_str!("../shaders/half.wgsl"));
        common::ctx()
            .device()
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some("half_convert"),
                source: wgpu::ShaderSource::Wgsl(source.into()),
            })
    })
}

/// Runs `entry` over `input` with `invocations` invocations and returns `out_words` words of `dst`.
fn run(entry: &str, input: &[u32], invocations: usize, out_words: usize) -> Vec<u32> {
    let ctx = common::ctx();
    let device = ctx.device();
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(entry),
        layout: None,
        module: module(),
        entry_point: Some(entry),
        compilation_options: Default::default(),
        cache: None,
    });
    let src = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("src"),
        contents: bytemuck::cast_slice(input),
        usage: wgpu::BufferUsages::STORAGE,
    });
    let bytes = (out_words * 4) as u64;
    let dst = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("dst"),
        size: bytes,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let staging = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("staging"),
        size: bytes,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some(entry),
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[
            wgpu::BindGroupEntry {
                binding: 0,
                resource: src.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 1,
                resource: dst.as_entire_binding(),
            },
        ],
    });
    let groups = (invocations as u32).div_ceil(WORKGROUP);
    let (gx, gy) = (groups.min(65_535), groups.div_ceil(65_535));
    let mut encoder = device.create_command_encoder(&Default::default());
    {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        pass.dispatch_workgroups(gx, gy, 1);
    }
    encoder.copy_buffer_to_buffer(&dst, 0, &staging, 0, bytes);
    let submission = ctx.queue().submit([encoder.finish()]);

    let (tx, rx) = std::sync::mpsc::channel();
    staging
        .slice(..)
        .map_async(wgpu::MapMode::Read, move |r| tx.send(r).unwrap());
    // On GL the map callback can still be pending right after the wait returns (see src/readback.rs):
    // wait again, a bounded number of times.
    let mut index = Some(submission);
    for _ in 0..1000 {
        device
            .poll(wgpu::PollType::Wait {
                submission_index: index.take(),
                timeout: None,
            })
            .expect("poll");
        if let Ok(mapped) = rx.try_recv() {
            mapped.expect("map_async");
            let words =
                bytemuck::cast_slice(&staging.get_mapped_range(..).expect("mapped range")).to_vec();
            staging.unmap();
            return words;
        }
        std::thread::yield_now();
    }
    panic!("{entry}: the read-back map never completed");
}

/// One word in, one word out.
fn run_map(entry: &str, input: &[u32]) -> Vec<u32> {
    run(entry, input, input.len(), input.len())
}

/// xorshift64*: deterministic 32-bit words.
struct Bits(u64);
impl Bits {
    fn next(&mut self) -> u32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as u32
    }
}

/// Counts mismatches of `got` against `want(input)`, printing the first few; fails if any.
fn check(label: &str, inputs: &[u32], got: &[u32], want: impl Fn(u32) -> u32) {
    assert_eq!(inputs.len(), got.len(), "{label}: length");
    let mut bad = 0usize;
    for (&i, &g) in inputs.iter().zip(got) {
        let w = want(i);
        if g != w {
            if bad < 10 {
                eprintln!("{label}: input {i:#010x}: gpu {g:#010x}, expected {w:#010x}");
            }
            bad += 1;
        }
    }
    assert_eq!(bad, 0, "{label}: {bad} of {} differ", inputs.len());
}

fn all_16bit() -> Vec<u32> {
    (0..=0xffffu32).collect()
}

/// f32 inputs for a 16-bit format given by `to_f32` (bits -> value), `max_finite` (its largest finite
/// magnitude's bits) and `top` (the magnitude one step above, as f64: where rounding to inf starts):
/// every value of the format, the midpoints between neighbours (ties) and one f32 ulp either side, for
/// both signs, plus the edges and `random` pseudo-random f32 bit patterns.
fn f32_inputs(to_f32: impl Fn(u16) -> f32, max_finite: u16, top: f64, random: usize) -> Vec<u32> {
    let mut v: Vec<u32> = (0..=0xffffu16).map(|h| to_f32(h).to_bits()).collect();
    for h in 0..=max_finite {
        let lo = to_f32(h) as f64;
        let hi = if h == max_finite {
            top
        } else {
            to_f32(h + 1) as f64
        };
        let mid = ((lo + hi) / 2.0) as f32;
        assert_eq!(mid as f64, (lo + hi) / 2.0, "midpoints are exact in f32");
        let b = mid.to_bits();
        for m in [b - 1, b, b + 1] {
            v.extend([m, m | 0x8000_0000]);
        }
    }
    let edges = [
        0.0f32,
        f32::INFINITY,
        2f32.powi(-24),
        2f32.powi(-25),
        2f32.powi(-14),
        2f32.powi(-126),
        2f32.powi(-133),
        65504.0,
        65519.99,
        65520.0,
        65536.0,
        f32::MAX,
        f32::MIN_POSITIVE,
    ];
    for e in edges {
        let b = e.to_bits();
        for m in [b.saturating_sub(1), b, b.saturating_add(1).min(0x7f80_0000)] {
            v.extend([m, m | 0x8000_0000]);
        }
    }
    // NaNs (quiet, signalling, payloads high and low) and f32 denormals.
    for b in [
        0x7fc0_0000u32,
        0x7f80_0001,
        0x7fa0_0000,
        0x7fbf_ffff,
        0x7fff_ffff,
        0x7f80_2000,
        0x7f80_1fff,
        0x7fc0_0001,
        0x0000_0001,
        0x0000_0002,
        0x0000_ffff,
        0x0040_0000,
        0x007f_ffff,
    ] {
        v.extend([b, b | 0x8000_0000]);
    }
    let mut r = Bits(0x1234_5678_9abc_def1);
    v.extend((0..random).map(|_| r.next()));
    v
}

fn f16_inputs(random: usize) -> Vec<u32> {
    f32_inputs(|h| f16::from_bits(h).to_f32(), 0x7bff, 65536.0, random)
}

fn bf16_inputs(random: usize) -> Vec<u32> {
    f32_inputs(
        |h| bf16::from_bits(h).to_f32(),
        0x7f7f,
        2f64.powi(128),
        random,
    )
}

#[test]
fn f16_to_f32_all_patterns() {
    let input = all_16bit();
    let got = run_map("t_f16_to_f32", &input);
    check("f16_to_f32", &input, &got, |h| {
        f16::from_bits(h as u16).to_f32().to_bits()
    });
}

#[test]
fn bf16_to_f32_all_patterns() {
    let input = all_16bit();
    let got = run_map("t_bf16_to_f32", &input);
    check("bf16_to_f32", &input, &got, |h| {
        bf16::from_bits(h as u16).to_f32().to_bits()
    });
}

#[test]
fn f32_to_f16_matches_half() {
    let input = f16_inputs(1 << 20);
    let got = run_map("t_f32_to_f16", &input);
    check("f32_to_f16", &input, &got, |b| {
        f16::from_f32(f32::from_bits(b)).to_bits() as u32
    });
}

#[test]
fn f32_to_bf16_matches_half() {
    let input = bf16_inputs(1 << 20);
    let got = run_map("t_f32_to_bf16", &input);
    check("f32_to_bf16", &input, &got, |b| {
        bf16::from_f32(f32::from_bits(b)).to_bits() as u32
    });
}

/// `v` and its rotations by 1, 2 and 3, so every value meets every lane of a vec4.
fn rotations(v: &[u32]) -> Vec<u32> {
    let n = v.len();
    let mut out: Vec<u32> = (0..4)
        .flat_map(|k| (0..n).map(move |i| v[(i + k) % n]))
        .collect();
    out.truncate(out.len() / 4 * 4);
    out
}

#[test]
fn packed_helpers_all_lanes() {
    type Encode = fn(f32) -> u16;
    type Decode = fn(u16) -> f32;
    let formats: [(&str, &str, Vec<u32>, Encode, Decode); 2] = [
        (
            "t_pack_f16x4",
            "t_unpack_f16x4",
            f16_inputs(1 << 16),
            |x| f16::from_f32(x).to_bits(),
            |h| f16::from_bits(h).to_f32(),
        ),
        (
            "t_pack_bf16x4",
            "t_unpack_bf16x4",
            bf16_inputs(1 << 16),
            |x| bf16::from_f32(x).to_bits(),
            |h| bf16::from_bits(h).to_f32(),
        ),
    ];
    for (pack, unpack, values, encode, decode) in formats {
        // pack: lane j of vec4 i is value 4i+j; word 2i holds lanes x (low), y (high).
        let input = rotations(&values);
        let got = run(pack, &input, input.len() / 4, input.len() / 2);
        let want: Vec<u32> = input
            .chunks(2)
            .map(|p| {
                encode(f32::from_bits(p[0])) as u32 | (encode(f32::from_bits(p[1])) as u32) << 16
            })
            .collect();
        let words: Vec<u32> = (0..want.len() as u32).collect();
        check(pack, &words, &got, |k| want[k as usize]);

        // unpack: every 16-bit pattern in every lane.
        let halves = rotations(&all_16bit());
        let input: Vec<u32> = halves.chunks(2).map(|p| p[0] | p[1] << 16).collect();
        let got = run(unpack, &input, input.len() / 2, halves.len());
        check(unpack, &halves, &got, |h| decode(h as u16).to_bits());
    }
}

#[test]
fn stochastic_rounding_matches_cpu_twin() {
    let mut r = Bits(0xfeed_beef_0bad_cafe);
    let mut xs = bf16_inputs(1 << 16);
    xs.extend((0..1 << 16).map(|_| (r.next() as f32 / u32::MAX as f32 * 8.0 - 4.0).to_bits()));
    let mut input = Vec::with_capacity(xs.len() * 4);
    for (k, &x) in xs.iter().enumerate() {
        // Mostly random (seed, step, elem); every 8th with small structured values.
        let (seed, step, elem) = if k % 8 == 0 {
            (k as u32 % 3, k as u32 % 5, k as u32)
        } else {
            (r.next(), r.next(), r.next())
        };
        input.extend([x, seed, step, elem]);
    }
    let got = run("t_stochastic", &input, xs.len(), xs.len() * 2);
    let mut bad = 0;
    for (k, q) in input.chunks(4).enumerate() {
        let hash = sr_hash(q[1], q[2], q[3]);
        let want = f32_to_bf16_stochastic(f32::from_bits(q[0]), hash) as u32;
        if got[2 * k] != hash || got[2 * k + 1] != want {
            if bad < 10 {
                eprintln!(
                    "stochastic {q:x?}: gpu hash {:#010x} value {:#06x}, cpu {hash:#010x} {want:#06x}",
                    got[2 * k],
                    got[2 * k + 1]
                );
            }
            bad += 1;
        }
    }
    assert_eq!(bad, 0, "stochastic: {bad} of {} differ", xs.len());
}

/// For x between two bf16 neighbours lo < hi, x = lo + p*(hi - lo): over N elements the rounded mean
/// is lo + (hi - lo)*k/N with k ~ Binomial(N, p), so |mean - x| <= 5 * (hi - lo) * sqrt(p(1-p)/N) but
/// for a failure rate of about 6e-7 per value; round to nearest even is off by min(p, 1-p)*(hi - lo).
#[test]
fn stochastic_rounding_is_unbiased() {
    const N: u32 = 1 << 16;
    // (bf16 pattern lo, fraction of the way to the next pattern, in 1/65536ths)
    let cases: [(u32, u32); 8] = [
        (0x3f80, 6554),  // 1 + 0.1 ulp
        (0x3f80, 19661), // 1 + 0.3 ulp
        (0xbf80, 45875), // -(1 + 0.7 ulp)
        (0x4049, 58982), // ~3.14 + 0.9 ulp
        (0x3a83, 900),   // 0.001 + 0.0137 ulp
        (0x0001, 30000), // bf16 subnormal (f32 denormal) + 0.46 ulp
        (0x7f7e, 40000), // near the largest finite bf16
        (0x4780, 12345), // 65536 + 0.19 ulp
    ];
    let mut input = Vec::new();
    for (c, &(lo, frac)) in cases.iter().enumerate() {
        let x = lo << 16 | frac;
        for e in 0..N {
            input.extend([x, 42 + c as u32, 7, e]);
        }
    }
    let n = input.len() / 4;
    let got = run("t_stochastic", &input, n, 2 * n);
    for (c, &(lo, frac)) in cases.iter().enumerate() {
        let x = f32::from_bits(lo << 16 | frac) as f64;
        let (vlo, vhi) = (
            bf16::from_bits(lo as u16).to_f64(),
            bf16::from_bits(lo as u16 + 1).to_f64(),
        );
        let ulp = (vhi - vlo).abs();
        let rounded = (0..N as usize).map(|e| got[2 * (c * N as usize + e) + 1] as u16);
        let mut sum = 0.0f64;
        for h in rounded {
            assert!(h as u32 == lo || h as u32 == lo + 1, "case {c}: {h:#06x}");
            sum += bf16::from_bits(h).to_f64();
        }
        let mean = sum / N as f64;
        let p = frac as f64 / 65536.0;
        let tolerance = 5.0 * ulp * (p * (1.0 - p) / N as f64).sqrt();
        assert!(
            (mean - x).abs() <= tolerance,
            "case {c}: stochastic mean {mean:e} vs x {x:e}: |diff| {:e} > {tolerance:e}",
            (mean - x).abs()
        );
        let rne = bf16::from_f32(x as f32).to_f64();
        assert!(
            (rne - x).abs() > tolerance,
            "case {c}: round to nearest {rne:e} is within the tolerance of x {x:e}"
        );
    }
}

/// Not a check of the library: how WGSL's `unpack2x16float` and `pack2x16float` behave on this
/// adapter, counted against `half` (the findings are quoted at the top of `shaders/half.wgsl`). Run
/// with `--nocapture` to see them.
#[test]
fn builtin_pack_unpack_findings() {
    let adapter = common::ctx().adapter_description();
    let input = all_16bit();
    let got = run_map("t_builtin_unpack", &input);
    let (mut sub, mut nan, mut nan_bits, mut other) = (0, 0, 0, 0);
    for (&h, &g) in input.iter().zip(&got) {
        let want = f16::from_bits(h as u16).to_f32();
        if want.is_nan() && g != want.to_bits() {
            nan_bits += 1;
        }
        let same = g == want.to_bits() || (want.is_nan() && f32::from_bits(g).is_nan());
        if !same {
            match h & 0x7fff {
                0x0001..=0x03ff => sub += 1,
                0x7c01.. => nan += 1,
                _ => other += 1,
            }
        }
    }
    println!(
        "{adapter}: unpack2x16float vs half over 65536 f16 patterns: {sub} of 2046 subnormals \
         differ, {nan} of 2046 NaNs not NaN ({nan_bits} with other bits than half's), {other} others \
         differ"
    );

    let input = f16_inputs(1 << 20);
    let got = run_map("t_builtin_pack", &input);
    let (mut total, mut sub, mut ties, mut over, mut nan, mut other) = (0, 0, 0, 0, 0, 0);
    let (mut sub_flushed, mut nan_bits) = (0, 0);
    for (&b, &g) in input.iter().zip(&got) {
        let x = f32::from_bits(b);
        let want = f16::from_f32(x).to_bits() as u32;
        if x.is_nan() && g != want {
            nan_bits += 1;
        }
        let a = x.abs();
        let nan_ok = x.is_nan() && (g & 0x7c00) == 0x7c00 && (g & 0x3ff) != 0;
        if g == want || nan_ok {
            continue;
        }
        total += 1;
        let widened = x as f64;
        let lo = f16::from_bits(want as u16).to_f64();
        if x.is_nan() {
            nan += 1;
        } else if a >= 65520.0 {
            over += 1;
        } else if (want & 0x7c00) == 0 || a < 2f32.powi(-14) {
            sub += 1;
            if g & 0x7fff == 0 {
                sub_flushed += 1;
            }
        } else if (widened - lo).abs() == (widened - f16::from_bits(g as u16).to_f64()).abs() {
            ties += 1;
        } else {
            other += 1;
        }
    }
    println!(
        "{adapter}: pack2x16float vs half over {} f32 values: {total} differ: {sub} in the f16 \
         subnormal range ({sub_flushed} of them flushed to 0), {ties} at ties, {over} at or above \
         65520, {nan} NaNs not NaN ({nan_bits} with other bits than half's), {other} others",
        input.len()
    );
}
