// conv2d, NCHW: y[n, f, oh, ow] = bias[f] + sum over c, kh, kw of
//     x[n, c, oh * stride_h - pad_h + kh, ow * stride_w - pad_w + kw] * w[f, c, kh, kw]
// with zero padding.  One invocation per output element (a direct convolution: simple,
// and exact for any stride, padding and kernel size).

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;   // or x, when there is none
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

struct Params {
    count: u32,
    channels: u32,
    height: u32,
    width: u32,
    filters: u32,
    kernel_h: u32,
    kernel_w: u32,
    out_h: u32,
    out_w: u32,
    stride_h: u32,
    stride_w: u32,
    pad_h: u32,
    pad_w: u32,
    has_bias: u32,
    _pad1: u32,
    _pad2: u32,
}
@group(0) @binding(4) var<uniform> p: Params;

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
    let ow = i % p.out_w;
    let oh = (i / p.out_w) % p.out_h;
    let f = (i / (p.out_w * p.out_h)) % p.filters;
    let n = i / (p.out_w * p.out_h * p.filters);
    var acc = 0.0;
    if (p.has_bias != 0u) {
        acc = bias[f];
    }
    for (var c = 0u; c < p.channels; c++) {
        let x_plane = (n * p.channels + c) * p.height;
        let w_plane = (f * p.channels + c) * p.kernel_h;
        for (var kh = 0u; kh < p.kernel_h; kh++) {
            let ih = i32(oh * p.stride_h + kh) - i32(p.pad_h);
            if (ih < 0 || ih >= i32(p.height)) {
                continue;
            }
            for (var kw = 0u; kw < p.kernel_w; kw++) {
                let iw = i32(ow * p.stride_w + kw) - i32(p.pad_w);
                if (iw < 0 || iw >= i32(p.width)) {
                    continue;
                }
                acc = fma(x[(x_plane + u32(ih)) * p.width + u32(iw)], w[(w_plane + kh) * p.kernel_w + kw], acc);
            }
        }
    }
    y[i] = acc;
}
