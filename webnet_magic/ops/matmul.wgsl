// C = A @ B for row-major float32 A (..., M, K), B (..., K, N), C (..., M, N).
//
// Each 16x16 workgroup computes a 64x64 tile of C; each thread a 4x4 block of it, kept
// in registers.  A and B are staged through workgroup memory 16 columns of K at a time
// (2 x 64 x 16 floats = 8 KiB, half of WebGPU's default 16 KiB limit).  Loads outside
// the matrices read zero and stores outside C are skipped, so any M, K, N work.
// Workgroup z is the batch: its index is unravelled over the (broadcast) batch shape to
// find where A's and B's matrices start (a broadcast batch dimension has stride 0).

struct Dims {
    M: u32,
    K: u32,
    N: u32,
    batches: u32,
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
const RM: u32 = 4u;    // rows of C per thread
const RN: u32 = 4u;    // columns of C per thread
const THREADS: u32 = 256u;

var<workgroup> a_tile: array<f32, 1024>;  // [TK][TM]: transposed so a thread reads its 4 rows together
var<workgroup> b_tile: array<f32, 1024>;  // [TK][TN]

@compute @workgroup_size(16, 16, 1)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(local_invocation_id) local: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
) {
    var rest = group.z;
    var a0 = 0u;
    var b0 = 0u;
    for (var d = 3; d >= 0; d--) {
        let index = rest % dims.batch_shape[d];
        rest = rest / dims.batch_shape[d];
        a0 += index * dims.a_stride[d];
        b0 += index * dims.b_stride[d];
    }
    let c0 = group.z * dims.M * dims.N;
    let row0 = group.y * TM;
    let col0 = group.x * TN;
    var acc: array<f32, 16>;
    var a_reg: array<f32, 4>;
    var b_reg: array<f32, 4>;

    for (var k0 = 0u; k0 < dims.K; k0 += TK) {
        // 1024 elements of each tile, 4 per thread; consecutive lanes read consecutive addresses.
        for (var i = 0u; i < 4u; i++) {
            let idx = lane + i * THREADS;
            let ar = idx / TK;
            let ak = idx % TK;
            let grow = row0 + ar;
            let gk = k0 + ak;
            var av = 0.0;
            if (grow < dims.M && gk < dims.K) {
                av = a[a0 + grow * dims.K + gk];
            }
            a_tile[ak * TM + ar] = av;

            let bk = idx / TN;
            let bc = idx % TN;
            let gkb = k0 + bk;
            let gcol = col0 + bc;
            var bv = 0.0;
            if (gkb < dims.K && gcol < dims.N) {
                bv = b[b0 + gkb * dims.N + gcol];
            }
            b_tile[bk * TN + bc] = bv;
        }
        workgroupBarrier();

        for (var kk = 0u; kk < TK; kk++) {
            for (var i = 0u; i < RM; i++) {
                a_reg[i] = a_tile[kk * TM + local.y * RM + i];
            }
            for (var j = 0u; j < RN; j++) {
                b_reg[j] = b_tile[kk * TN + local.x * RN + j];
            }
            for (var i = 0u; i < RM; i++) {
                for (var j = 0u; j < RN; j++) {
                    acc[i * RN + j] = fma(a_reg[i], b_reg[j], acc[i * RN + j]);
                }
            }
        }
        workgroupBarrier();
    }

    for (var i = 0u; i < RM; i++) {
        let row = row0 + local.y * RM + i;
        if (row < dims.M) {
            for (var j = 0u; j < RN; j++) {
                let col = col0 + local.x * RN + j;
                if (col < dims.N) {
                    c[c0 + row * dims.N + col] = acc[i * RN + j];
                }
            }
        }
    }
}
