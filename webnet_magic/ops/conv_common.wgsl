// What the conv kernels share (ops/conv.py puts it before conv_gemm.wgsl or conv_direct.wgsl):
// the bindings, the parameters, and how an output pixel reads its window.
//
// Every conv is seen as 3-D (1-D and 2-D ones have leading axes of size 1).  The taps table
// has one entry per element of a filter, in w's own order (channel, kd, kh, kw):
//     taps[k] = (x offset from the window's origin, kd·dilation_d, kh·dilation_h, kw·dilation_w)
// so reading tap k of a pixel is an add and three bounds checks, with no division: the
// host computes the table once per conv geometry.

struct Params {
    cols: u32,            // N·P: output pixels over the whole batch
    pixels: u32,          // P = OD·OH·OW
    out_hw: u32,          // OH·OW
    out_w: u32,
    in_d: u32,
    in_h: u32,
    in_w: u32,
    plane: u32,           // D·H·W
    stride_d: i32,
    stride_h: i32,
    stride_w: i32,
    pad_d: i32,           // padding before each axis (the end padding is implied by the output size)
    pad_h: i32,
    pad_w: i32,
    channels: u32,        // C
    group_channels: u32,  // C / groups
    depth: u32,           // K = C / groups · kernel size: the length of each dot product
    filters: u32,         // F
    group_filters: u32,   // F / groups
    filter_tiles: u32,    // tiled kernel: tiles of filters per group
    col_tile0: u32,       // tiled kernel: the column tile of workgroup x = 0 (large outputs take several dispatches)
    row_tile0: u32,       // tiled kernel: the row tile of workgroup y = 0
    has_bias: u32,
    count: u32,           // N·F·P outputs (the tiled kernel: the distance between split results)
    split_depth: u32,     // tiled kernel: taps per workgroup z (all K unless the conv is split)
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;   // or x, when there is none
@group(0) @binding(3) var<storage, read> taps: array<vec4<i32>>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<uniform> p: Params;

// Where a window starts: the x index of its first tap (which may lie in the padding) and
// its coordinates along each axis.
struct Origin {
    base: i32,
    d: i32,
    h: i32,
    w: i32,
}

// The window of output pixel q (of OD·OH·OW) of image n, over the channels of group g.
fn origin(n: u32, g: u32, q: u32) -> Origin {
    let d = i32(q / p.out_hw) * p.stride_d - p.pad_d;
    let h = i32((q % p.out_hw) / p.out_w) * p.stride_h - p.pad_h;
    let c = i32(q % p.out_w) * p.stride_w - p.pad_w;
    let image = i32((n * p.channels + g * p.group_channels) * p.plane);
    return Origin(image + (d * i32(p.in_h) + h) * i32(p.in_w) + c, d, h, c);
}

// x at tap t of the window at o; zero in the padding.
fn tap(o: Origin, t: vec4<i32>) -> f32 {
    // negative coordinates become huge as u32, so one comparison checks both ends
    if (u32(o.d + t.y) < p.in_d && u32(o.h + t.z) < p.in_h && u32(o.w + t.w) < p.in_w) {
        return x[o.base + t.x];
    }
    return 0.0;
}
