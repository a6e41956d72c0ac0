// The sum of a split conv's partial results: the tiled kernel, when its tiles alone would leave
// most of the GPU idle (few pixels, deep filters), cuts each dot product into `splits` ranges of
// taps, one per workgroup z, each writing its own copy of the output (bias in the first).

@group(0) @binding(0) var<storage, read> part: array<f32>;   // splits x count
@group(0) @binding(1) var<storage, read_write> y: array<f32>;

struct Params {
    count: u32,
    splits: u32,
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
    var acc = part[i];
    for (var s = 1u; s < p.splits; s++) {
        acc += part[s * p.count + i];
    }
    y[i] = acc;
}
