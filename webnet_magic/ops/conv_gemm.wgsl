// conv as an implicit GEMM, on the tiling of matmul_vec4.wgsl: per group, Y = W · X where W
// is (F/groups) x K (the filters as they lie in w) and X is K x (N·P), its column j the K
// taps of output pixel j, gathered from x on the fly (never materialized).
//
// Each 16x16 workgroup computes a TM x TN tile of Y (TM filters, TN pixels); each invocation
// RM x RN of it, held in named vec4 accumulators (the pixels of a vec4 are consecutive):
// filters q·64 + ty·4 + 0..3 and pixels h·64 + tx·4 + 0..3 of the tile.  Per step of TK taps,
// the W slice is staged transposed and the X slice gathered through the taps table
// (TK·(TM + TN) floats and a little padding: 16 KiB at most, WebGPU's default workgroup memory).
//
// ops/conv.py fills the double-braced slots: TM and TN, the accumulators, the reads and
// FMAs of one tap, and the stores (bias added; pixels past N·P and filters past F/groups
// skipped).  Workgroup y is (group, filter tile), x the pixel tile; both offset by
// row_tile0 / col_tile0 so outputs beyond 65535 tiles take several dispatches.  Workgroup z
// is the range of taps (split_depth of them) when a conv with few tiles is split along K:
// each range writes its own copy of the output, count floats apart, summed by
// conv_splits.wgsl (the bias goes in the first).

const TK: u32 = 16u;
const TM: u32 = {{TM}}u;
const TN: u32 = {{TN}}u;
// vec4s per tap in w_tile: one more than TM / 4 where memory allows, so that the staging stores
// (16 taps of a filter per half-warp) fall on distinct banks rather than all on one
const WS: u32 = TM / 4u + {{W_PAD}}u;
const NONE: u32 = 0xffffffffu;
var<workgroup> w_tile: array<vec4<f32>, TK * WS>;  // w_tile[k * WS + f/4][f % 4]: tap k of filter f
var<workgroup> x_tile: array<vec4<f32>, TK * TN / 4u>;  // x_tile[k * TN/4 + j/4][j % 4]: tap k of pixel j

@compute @workgroup_size(16, 16, 1)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(local_invocation_id) local: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
) {
    let row_tile = p.row_tile0 + group.y;
    let g = row_tile / p.filter_tiles;
    let f0 = (row_tile % p.filter_tiles) * TM;
    let col0 = (p.col_tile0 + group.x) * TN;
    let tx = local.x;
    let ty = local.y;

    // This invocation gathers pixel lane % TN of the tile, taps lane / TN + i·(256 / TN) of each step,
    // and stages tap lane % TK of filters lane / TK + i·(256 / TK): both reads run along memory.
    let gj = col0 + lane % TN;
    let live = gj < p.cols;
    let o = origin(gj / p.pixels, g, gj % p.pixels);
    let w0 = (g * p.group_filters + f0) * p.depth;
    let k_begin = group.z * p.split_depth;
    let k_end = min(k_begin + p.split_depth, p.depth);

{{ACCUMULATORS}}
    for (var k0 = k_begin; k0 < k_end; k0 += TK) {
        for (var i = 0u; i < TK * TN / 256u; i++) {
            let k = lane / TN + i * (256u / TN);
            var v = 0.0;
            if (live && k0 + k < k_end) {
                v = tap(o, taps[k0 + k]);
            }
            x_tile[k * (TN / 4u) + (lane % TN) / 4u][lane % 4u] = v;
        }
        for (var i = 0u; i < TK * TM / 256u; i++) {
            let f = lane / TK + i * (256u / TK);
            let k = k0 + lane % TK;
            var v = 0.0;
            if (f0 + f < p.group_filters && k < k_end) {
                v = w[w0 + f * p.depth + k];
            }
            w_tile[(lane % TK) * WS + f / 4u][f % 4u] = v;
        }
        workgroupBarrier();

        for (var kk = 0u; kk < TK; kk++) {
{{FMAS}}
        }
        workgroupBarrier();
    }

{{STORES}}
}
