// Gather along one axis (numpy's take): the input seen as (outer, axis, inner), the output
// as (outer, indices, inner).  Negative indices count from the end; an index still outside
// the axis (only possible for indices computed on the device: others are checked before
// sending) is clamped to it, so no read goes astray.
//
// ops/tensor.py fills in T.  Words: count, inner, the number of indices, the axis length.

@group(0) @binding(0) var<storage, read> src: array<{{T}}>;
@group(0) @binding(1) var<storage, read> indices: array<i32>;
@group(0) @binding(2) var<storage, read_write> dst: array<{{T}}>;

struct Params {
    count: u32,
    inner: u32,
    n: u32,
    axis: u32,
}
@group(0) @binding(3) var<uniform> p: Params;

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
    let e = i % p.inner;
    let t = i / p.inner;
    let o = t / p.n;
    var k = indices[t % p.n];
    if (k < 0i) {
        k = k + i32(p.axis);
    }
    k = clamp(k, 0i, i32(p.axis) - 1i);
    dst[i] = src[(o * p.axis + u32(k)) * p.inner + e];
}
