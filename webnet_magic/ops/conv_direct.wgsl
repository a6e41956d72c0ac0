// conv, one invocation per output element: a dot product of length K over the taps table.
// For the convs the tiled kernel does not fit (few filters per group, as in depthwise
// convs), where a tile of filters would be mostly empty.

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
    let q = i % p.pixels;
    let f = (i / p.pixels) % p.filters;
    let o = origin(i / (p.pixels * p.filters), f / p.group_filters, q);
    var acc = 0.0;
    if (p.has_bias != 0u) {
        acc = bias[f];
    }
    let row = f * p.depth;
    for (var k = 0u; k < p.depth; k++) {
        acc = fma(tap(o, taps[k]), w[row + k], acc);
    }
    y[i] = acc;
}
