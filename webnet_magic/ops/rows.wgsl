// Row-wise ops: softmax and log_softmax along one axis, layernorm (optional gamma and beta)
// over the last axes.  The input is seen as (outer, length, inner); a row is the `length`
// elements at one (outer, inner) position, `inner` apart (1 for the last axis).  One
// workgroup per row; its 256 invocations stride along the row and combine their partial
// results through workgroup memory.  ops/rows.py fills in the double-braced slots:
// BINDINGS (each op binds only what it reads: an unused binding would be dropped from the
// pipeline's layout) and BODY, which reads element j of the row at x[base + j * p.inner].

{{BINDINGS}}

struct Params {
    rows: u32,
    length: u32,
    flags: u32,   // layernorm: bit 0 gamma given, bit 1 beta given
    eps: f32,
    inner: u32,
}

var<workgroup> part: array<f32, 256>;

// The sum (or, with take_max, the maximum) of every invocation's `v`, returned to all of them.
fn combine(lane: u32, v: f32, take_max: bool) -> f32 {
    part[lane] = v;
    workgroupBarrier();
    for (var half = 128u; half > 0u; half = half / 2u) {
        if (lane < half) {
            let other = part[lane + half];
            part[lane] = select(part[lane] + other, max(part[lane], other), take_max);
        }
        workgroupBarrier();
    }
    let result = part[0];
    workgroupBarrier();
    return result;
}

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
) {
    let row = wg.y * groups.x + wg.x;  // uniform across the workgroup
    if (row >= p.rows) {
        return;
    }
    let base = (row / p.inner) * p.length * p.inner + row % p.inner;
{{BODY}}
}
