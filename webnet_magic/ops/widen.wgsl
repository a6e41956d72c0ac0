// float16 on the wire, float32 on the device: each invocation unpacks one u32 (two halves,
// the first in the low 16 bits, as little-endian memory holds them).  Needs no shader-f16.

@group(0) @binding(0) var<storage, read> src: array<u32>;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;

struct Params {
    count: u32,
    _pad1: u32,  // (a vec3 here would be 16-byte aligned, making the struct 32 bytes)
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
    let v = unpack2x16float(src[pair]);
    dst[i] = v.x;
    if (i + 1u < p.count) {
        dst[i + 1u] = v.y;
    }
}
