// LRN (ONNX LocalResponseNormalization), one invocation per element:
//     y = x / (bias + alpha / size · sum of x² over the channels c - floor((size-1)/2) .. c + ceil((size-1)/2))^beta
// with the channel window cut at 0 and C - 1.  The power is exp2(-beta · log2(base)), base > 0.

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;

struct Params {
    count: u32,     // N·C·(spatial size)
    channels: u32,  // C
    plane: u32,     // elements per channel of an image (the spatial size)
    before: u32,    // floor((size - 1) / 2): channels before c in the window
    after: u32,     // ceil((size - 1) / 2): channels after it
    scale: f32,     // alpha / size
    bias: f32,
    beta: f32,
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
    let c = (i / p.plane) % p.channels;
    let lo = min(c, p.before);  // the window's channels before c (fewer near channel 0)
    let last = min(c + p.after, p.channels - 1u);
    var sum = 0.0;
    var at = i - lo * p.plane;
    for (var k = c - lo; k <= last; k++) {
        let v = x[at];
        sum = fma(v, v, sum);
        at += p.plane;
    }
    let base = p.bias + p.scale * sum;
    y[i] = x[i] * exp2(-p.beta * log2(base));
}
