// maxpool and avgpool: one invocation per output element, folding the window's taps that lie
// inside x (and, for avgpool, counting them and those inside the padding).  Windows are 3-D
// (1-D and 2-D pools have leading axes of size 1).
//
// ops/pool.py fills the double-braced slots: T (x's element type), OUT_T, FOLD (take a value v
// into acc; `seen` says whether one was taken before) and FINISH (the result from acc, seen
// and the two counts).

@group(0) @binding(0) var<storage, read> x: array<{{T}}>;
@group(0) @binding(1) var<storage, read_write> y: array<{{OUT_T}}>;

struct Params {
    count: u32,        // N·C·OD·OH·OW
    out_plane: u32,    // OD·OH·OW
    out_hw: u32,       // OH·OW
    out_w: u32,
    in_d: u32,
    in_h: u32,
    in_w: u32,
    kernel_d: u32,
    kernel_h: u32,
    kernel_w: u32,
    stride_d: i32,
    stride_h: i32,
    stride_w: i32,
    pad_d: i32,        // padding before each axis
    pad_h: i32,
    pad_w: i32,
    dilation_d: i32,
    dilation_h: i32,
    dilation_w: i32,
    edge_d: i32,       // in + padding after: where the padding ends (a ceil_mode window may reach past it)
    edge_h: i32,
    edge_w: i32,
    include_pad: u32,  // avgpool: divide by the taps inside the padded input, not only those inside x
}
@group(0) @binding(2) var<uniform> p: Params;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
) {
    let i = (wg.y * groups.x + wg.x) * 256u + lane;
    if (i >= p.count) {
        return;
    }
    let q = i % p.out_plane;
    let d0 = i32(q / p.out_hw) * p.stride_d - p.pad_d;
    let h0 = i32((q % p.out_hw) / p.out_w) * p.stride_h - p.pad_h;
    let w0 = i32(q % p.out_w) * p.stride_w - p.pad_w;
    let plane = (i / p.out_plane) * p.in_d * p.in_h * p.in_w;
    var acc = {{T}}(0);
    var seen = false;
    var inside = 0u;   // taps inside x
    var padded = 0u;   // taps inside the padded input
    for (var kd = 0u; kd < p.kernel_d; kd++) {
        let d = d0 + i32(kd) * p.dilation_d;
        for (var kh = 0u; kh < p.kernel_h; kh++) {
            let h = h0 + i32(kh) * p.dilation_h;
            for (var kw = 0u; kw < p.kernel_w; kw++) {
                let c = w0 + i32(kw) * p.dilation_w;
                padded += u32(d < p.edge_d && h < p.edge_h && c < p.edge_w);
                // negative coordinates become huge as u32, so one comparison checks both ends
                if (u32(d) < p.in_d && u32(h) < p.in_h && u32(c) < p.in_w) {
                    let v = x[plane + (u32(d) * p.in_h + u32(h)) * p.in_w + u32(c)];
                    {{FOLD}}
                    seen = true;
                    inside++;
                }
            }
        }
    }
    y[i] = {{FINISH}};
}
