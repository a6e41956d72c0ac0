// A reduction along one axis: the input is viewed as (outer, length, inner), the output as
// (outer, inner).  One workgroup per output element: each of its 256 invocations folds a
// strided share of the axis, then a tree in workgroup memory folds the 256 partial results.
//
// ops/reduce.py fills in this template's double-braced slots: T (the element type), FOLD /
// MERGE (how a value, or another invocation's partial result, is folded into `acc` and
// `at`), and FINISH (what is written: the value, the mean, the index).  An invocation's
// first value is taken as it is (`at` is NONE until then), so no identity such as -inf is
// needed: some compilers refuse infinities even as bit patterns.

@group(0) @binding(0) var<storage, read> src: array<{{T}}>;
@group(0) @binding(1) var<storage, read_write> dst: array<{{OUT_T}}>;

struct Params {
    length: u32,
    inner: u32,
    count: u32,    // outer * inner
    scale: f32,    // 1 / length, for the mean
}
@group(0) @binding(2) var<uniform> p: Params;

var<workgroup> part: array<{{T}}, 256>;
var<workgroup> part_at: array<u32, 256>;

const NONE = 0xffffffffu;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
) {
    let o = wg.y * groups.x + wg.x;  // the same for the whole workgroup, so the return is uniform
    if (o >= p.count) {
        return;
    }
    let base = (o / p.inner) * p.length * p.inner + o % p.inner;
    var acc = {{T}}(0);
    var at = NONE;
    for (var r = lane; r < p.length; r += 256u) {
        let v = src[base + r * p.inner];
        if (at == NONE) {
            acc = v;
            at = r;
        } else {
            {{FOLD}}
        }
    }
    part[lane] = acc;
    part_at[lane] = at;
    workgroupBarrier();
    for (var half = 128u; half > 0u; half = half / 2u) {
        if (lane < half) {
            let v = part[lane + half];
            let v_at = part_at[lane + half];
            acc = part[lane];
            at = part_at[lane];
            if (v_at != NONE) {
                if (at == NONE) {
                    acc = v;
                    at = v_at;
                } else {
                    {{MERGE}}
                }
            }
            part[lane] = acc;
            part_at[lane] = at;
        }
        workgroupBarrier();
    }
    if (lane == 0u) {
        acc = part[0];
        at = part_at[0];
        dst[o] = {{FINISH}};
    }
}
