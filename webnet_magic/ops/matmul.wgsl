// C = A @ B for row-major float32 A (..., M, K), B (..., K, N), C (..., M, N).
//
// The general kernel, for any M, K, N (ops/matmul.py uses matmul_vec4.wgsl where rows are
// whole vec4s).  BATCH is filled in as in matmul_vec4.wgsl.  Each 16x16 workgroup computes a 64x64 tile of C; each thread a 4x4 block
// of it, kept in registers.  A and B are staged through workgroup memory 16 columns of K
// at a time (2 x 64 x 16 floats = 8 KiB, half of WebGPU's default 16 KiB limit).  Loads outside
// the matrices read zero and stores outside C are skipped, so any M, K, N work.
// Workgroup z is the batch: its index is unravelled over the (broadcast) batch shape to
// find where A's and B's matrices start (a broadcast batch dimension has stride 0).

struct Dims {
    M: u32,
    K: u32,
    N: u32,
    batch0: u32,              // the batch of workgroup z = 0 (big batches take several dispatches)
    batch_shape: vec4<u32>,   // the output's batch dimensions, padded with 1 on the left
    a_stride: vec4<u32>,      // elements between consecutive A matrices along each of them
    b_stride: vec4<u32>,
}

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;
@group(0) @binding(3) var<uniform> dims: Dims;

const TM: u32 = 64u;   // rows of C per workgroup
const TN: u32 = 64u;   // columns of C per workgroup
const TK: u32 = 16u;   // depth of each staged slice of K
const THREADS: u32 = 256u;

// Both tiles are read as vec4s: a thread's 4 rows of A and 4 columns of B in one read each.
var<workgroup> a_tile: array<vec4<f32>, 256>;  // [TK][TM / 4]: a_tile[k * 16 + m / 4][m % 4] = A[m][k]
var<workgroup> b_tile: array<vec4<f32>, 256>;  // [TK][TN / 4]: b_tile[k * 16 + n / 4][n % 4] = B[k][n]

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
    let c0 = {{BATCH}} * dims.M * dims.N;
    let row0 = group.y * TM;
    let col0 = group.x * TN;
    // The 4x4 block of C this thread computes, in named registers (a dynamically indexed
    // local array may be put in slow memory by a GPU's compiler).
    var c00 = 0.0; var c01 = 0.0; var c02 = 0.0; var c03 = 0.0;
    var c10 = 0.0; var c11 = 0.0; var c12 = 0.0; var c13 = 0.0;
    var c20 = 0.0; var c21 = 0.0; var c22 = 0.0; var c23 = 0.0;
    var c30 = 0.0; var c31 = 0.0; var c32 = 0.0; var c33 = 0.0;

    for (var k0 = 0u; k0 < dims.K; k0 += TK) {
        // 1024 elements of each tile, 4 per thread; consecutive lanes read consecutive addresses.
        for (var i = 0u; i < 4u; i++) {
            let idx = lane + i * THREADS;
            let ar = idx / TK;
            let ak = idx % TK;
            var av = 0.0;
            if (row0 + ar < dims.M && k0 + ak < dims.K) {
                av = a[a0 + (row0 + ar) * dims.K + k0 + ak];
            }
            a_tile[ak * 16u + ar / 4u][ar % 4u] = av;

            let bk = idx / TN;
            let bc = idx % TN;
            var bv = 0.0;
            if (k0 + bk < dims.K && col0 + bc < dims.N) {
                bv = b[b0 + (k0 + bk) * dims.N + col0 + bc];
            }
            b_tile[bk * 16u + bc / 4u][bc % 4u] = bv;
        }
        workgroupBarrier();

        for (var kk = 0u; kk < TK; kk++) {
            let av = a_tile[kk * 16u + local.y];
            let bv = b_tile[kk * 16u + local.x];
            c00 = fma(av.x, bv.x, c00); c01 = fma(av.x, bv.y, c01); c02 = fma(av.x, bv.z, c02); c03 = fma(av.x, bv.w, c03);
            c10 = fma(av.y, bv.x, c10); c11 = fma(av.y, bv.y, c11); c12 = fma(av.y, bv.z, c12); c13 = fma(av.y, bv.w, c13);
            c20 = fma(av.z, bv.x, c20); c21 = fma(av.z, bv.y, c21); c22 = fma(av.z, bv.z, c22); c23 = fma(av.z, bv.w, c23);
            c30 = fma(av.w, bv.x, c30); c31 = fma(av.w, bv.y, c31); c32 = fma(av.w, bv.z, c32); c33 = fma(av.w, bv.w, c33);
        }
        workgroupBarrier();
    }

    let rows = vec4<u32>(0u, 1u, 2u, 3u) + row0 + local.y * 4u;
    let col = col0 + local.x * 4u;
    let n = dims.N;
    store(rows.x, col, n, c0, vec4<f32>(c00, c01, c02, c03));
    store(rows.y, col, n, c0, vec4<f32>(c10, c11, c12, c13));
    store(rows.z, col, n, c0, vec4<f32>(c20, c21, c22, c23));
    store(rows.w, col, n, c0, vec4<f32>(c30, c31, c32, c33));
}

// One row of this thread's block, skipping what lies outside C.
fn store(row: u32, col: u32, n: u32, c0: u32, v: vec4<f32>) {
    if (row >= dims.M) {
        return;
    }
    let base = c0 + row * n + col;
    if (col < n) { c[base] = v.x; }
    if (col + 1u < n) { c[base + 1u] = v.y; }
    if (col + 2u < n) { c[base + 2u] = v.z; }
    if (col + 3u < n) { c[base + 3u] = v.w; }
}
