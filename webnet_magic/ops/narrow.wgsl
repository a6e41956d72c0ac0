// float32 on the device, float16 on the wire back (--wire f16): each invocation packs two
// floats into one u32, the first in the low 16 bits, as little-endian memory holds them.
// The twin of widen.wgsl; needs no shader-f16.

@group(0) @binding(0) var<storage, read> src: array<f32>;
@group(0) @binding(1) var<storage, read_write> dst: array<u32>;

struct Params {
    count: u32,
    _pad1: u32,
    _pad2: u32,
    _pad3: u32,
}
@group(0) @binding(2) var<uniform> p: Params;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
) {
    let pair = (wg.y * groups.x + wg.x) * 256u + lane;
    let i = pair * 2u;
    if (i >= p.count) {
        return;
    }
    var second = 0.0;
    if (i + 1u < p.count) {
        second = src[i + 1u];
    }
    dst[pair] = pack2x16float(vec2<f32>(src[i], second));
}
