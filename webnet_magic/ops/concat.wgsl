// Concatenation along one axis: up to seven inputs per dispatch (with the output, WebGPU's
// default of eight storage buffers), each copied into its part of the output; a longer
// list is several dispatches writing one output.  The output is seen as
// (outer, axis, inner), this dispatch's part of it as (outer, span, inner).
//
// ops/tensor.py fills in this template's double-braced slots: T (the element type),
// BINDINGS (the inputs in0, in1, ...) and PICK (which input holds position j of the part).
// Words: count (outer * span * inner), inner, span, the output's axis length, where this
// part starts on it, then each input's (start within the part, length).

{{BINDINGS}}
@group(0) @binding({{OUT}}) var<storage, read_write> out: array<{{T}}>;

struct Params {
    w: array<vec4<u32>, {{WORDS}}>,
}
@group(0) @binding({{PARAMS}}) var<uniform> p: Params;

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
    let inner = u(1u);
    let e = i % inner;
    let t = i / inner;
    let j = t % u(2u);
    let o = t / u(2u);
    let dst = (o * u(3u) + u(4u) + j) * inner + e;
{{PICK}}
}
