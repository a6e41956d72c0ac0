// C = A @ B, the fast path: K and N multiples of 4, so rows of A, B and C are whole vec4s.
//
// Each 16x16 workgroup computes a 128x128 tile of C; each thread an 8x8 block of it, held
// in 16 vec4 registers: rows ty*4..ty*4+3 and 64+ty*4..64+ty*4+3, columns tx*4..tx*4+3 and
// 64+tx*4..64+tx*4+3 (the two halves keep a warp's shared-memory reads on distinct banks).
// Per step of TK = 16 along K, A's 128x16 slice is staged transposed and B's 16x128 slice
// as it is (2 x 8 KiB: WebGPU's default 16 KiB of workgroup memory); each thread then does
// 64 FMAs per 4 vec4 reads.
// Loads past the matrices read zero and stores past C are skipped, so M may be anything.
// Same Dims and batching as matmul.wgsl.
//
// The accumulators are 16 named vec4 variables, not an array: GPU compilers may put a
// dynamically indexed local array in slow memory.  ops/matmul.py writes the lines that
// use them into the double-braced slots ACCUMULATORS, FMAS and STORES, and BATCH: the
// workgroup's batch, workgroup z, or dims.batch0 + workgroup z in the variant for batches
// beyond one dispatch (reading batch0 costs 6% on an H200, so only that variant does).

struct Dims {
    M: u32,
    K: u32,
    N: u32,
    batch0: u32,              // the batch of workgroup z = 0 (big batches take several dispatches)
    batch_shape: vec4<u32>,
    a_stride: vec4<u32>,
    b_stride: vec4<u32>,
}

@group(0) @binding(0) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> b: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> c: array<vec4<f32>>;
@group(0) @binding(3) var<uniform> dims: Dims;

const TK: u32 = 16u;  // a multiple of 8; 16 fills the default 16 KiB of workgroup memory exactly
var<workgroup> a_tile: array<vec4<f32>, TK * 32u>;  // [TK][32]: a_tile[k * 32 + m / 4][m % 4] = A[m][k]
var<workgroup> b_tile: array<vec4<f32>, TK * 32u>;  // [TK][32]: b_tile[k * 32 + n / 4] = B[k][n..n+3]

@compute @workgroup_size(16, 16, 1)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(local_invocation_id) local: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
) {
    var rest = {{BATCH}};
    var a0 = 0u;
    var b0 = 0u;
    for (var d = 3; d >= 0; d--) {
        let index = rest % dims.batch_shape[d];
        rest = rest / dims.batch_shape[d];
        a0 += index * dims.a_stride[d];
        b0 += index * dims.b_stride[d];
    }
    let M = dims.M;
    let K = dims.K;
    let N = dims.N;
    let c_base = {{BATCH}} * M * N;
    let row0 = group.y * 128u;
    let col0 = group.x * 128u;
    let tx = local.x;
    let ty = local.y;

{{ACCUMULATORS}}
    for (var k0 = 0u; k0 < K; k0 += TK) {
        // Each thread stages TK / 8 vec4s of A (row m, k-quarter q) and of B (row bk, column quad bq).
        for (var l = 0u; l < TK / 8u; l++) {
            let idx = lane + l * 256u;
            let m = idx / (TK / 4u);
            let q = (idx % (TK / 4u)) * 4u;
            var av = vec4<f32>(0.0);
            if (row0 + m < M && k0 + q < K) {
                av = a[(a0 + (row0 + m) * K + k0 + q) / 4u];
            }
            a_tile[(q + 0u) * 32u + m / 4u][m % 4u] = av.x;
            a_tile[(q + 1u) * 32u + m / 4u][m % 4u] = av.y;
            a_tile[(q + 2u) * 32u + m / 4u][m % 4u] = av.z;
            a_tile[(q + 3u) * 32u + m / 4u][m % 4u] = av.w;
            let bk = idx / 32u;
            let bq = idx % 32u;
            var bv = vec4<f32>(0.0);
            if (k0 + bk < K && col0 + bq * 4u < N) {
                bv = b[(b0 + (k0 + bk) * N + col0 + bq * 4u) / 4u];
            }
            b_tile[bk * 32u + bq] = bv;
        }
        workgroupBarrier();

        for (var kk = 0u; kk < TK; kk++) {
            let a_lo = a_tile[kk * 32u + ty];
            let a_hi = a_tile[kk * 32u + 16u + ty];
            let b_lo = b_tile[kk * 32u + tx];
            let b_hi = b_tile[kk * 32u + 16u + tx];
{{FMAS}}
        }
        workgroupBarrier();
    }

    let lo_col = col0 + tx * 4u;
    let hi_col = col0 + 64u + tx * 4u;
{{STORES}}
}
