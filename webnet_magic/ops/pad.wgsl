// Padding: each output element reads the input element its coordinates map to, or the
// constant.  One invocation per output element; shapes come from the uniform words, so one
// compiled kernel serves every rank (up to the words' room) and shape.
//
// ops/tensor.py fills in T (the element type) and MODE (how a coordinate s outside [0, n)
// is brought back: reflected, clamped to the edge, wrapped, or marked outside for the
// constant).  Words: count, rank, the constant's bits, 0, then per dimension: output size,
// input size, padding before (two's complement), input stride.

@group(0) @binding(0) var<storage, read> src: array<{{T}}>;
@group(0) @binding(1) var<storage, read_write> dst: array<{{T}}>;

struct Params {
    w: array<vec4<u32>, {{WORDS}}>,
}
@group(0) @binding(2) var<uniform> p: Params;

fn u(j: u32) -> u32 {
    return p.w[j / 4u][j % 4u];
}

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
) {
    let i = (wg.y * groups.x + wg.x) * 256u + lane;
    if (i >= u(0u)) {
        return;
    }
    var rem = i;
    var offset = 0u;
    var inside = true;
    for (var d = u(1u); d > 0u; d = d - 1u) {
        let at = 4u * d;  // dimension d - 1's words
        let c = rem % u(at);
        rem = rem / u(at);
        let n = i32(u(at + 1u));
        var s = i32(c) - bitcast<i32>(u(at + 2u));
{{MODE}}
        offset = offset + u32(s) * u(at + 3u);
    }
    if (inside) {
        dst[i] = src[offset];
    } else {
        dst[i] = bitcast<{{T}}>(u(2u));
    }
}
