// A reduction over some axes: each output element folds the input elements that share its
// kept coordinates.  One workgroup per output element: each of its 256 invocations folds a
// strided share of the reduced elements, then a tree in workgroup memory folds the 256
// partial results.
//
// ops/reduce.py fills in this template's double-braced slots: T (the element type), FOLD /
// MERGE (how a value, or another invocation's partial result, is folded into `acc` and
// `at`), FINISH (what is written: the value, the mean, the index), and ORIGIN / OFFSET:
// where output element o's first input element is, and how far the r-th reduced element
// is from it (the input's dimensions merged into runs of kept and of reduced ones, each
// with its size and stride in the words).  An invocation's first value is taken as it is
// (`at` is NONE until then), so no identity such as -inf is needed: some compilers refuse
// infinities even as bit patterns.  Words: the reduced length, the output count, 1/length
// (the mean's scale, as f32 bits), 0, then (size, stride) of each run.

@group(0) @binding(0) var<storage, read> src: array<{{T}}>;
@group(0) @binding(1) var<storage, read_write> dst: array<{{OUT_T}}>;

struct Params {
    w: array<vec4<u32>, {{WORDS}}>,
}
@group(0) @binding(2) var<uniform> p: Params;

fn u(j: u32) -> u32 {
    return p.w[j / 4u][j % 4u];
}

fn origin(o: u32) -> u32 {
    var rem = o;
    var at = 0u;
{{ORIGIN}}
    return at;
}

fn offset(r: u32) -> u32 {
    var rem = r;
    var at = 0u;
{{OFFSET}}
    return at;
}

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
    if (o >= u(1u)) {
        return;
    }
    let length = u(0u);
    let base = origin(o);
    var acc = {{T}}(0);
    var at = NONE;
    for (var r = lane; r < length; r += 256u) {
        let v = src[base + offset(r)];
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
