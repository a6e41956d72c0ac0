// A fused elementwise kernel: one invocation per output element.
//
// ops/elementwise.py fills in this template's double-braced slots: BINDINGS declares the
// input buffers, INDEX turns the output index i into each strided input's offset
// (broadcast dimensions have stride 0, transposed ones permuted strides), and EXPR is
// the whole fused expression.  Shapes and strides come from the uniform words p.w, not
// from the text, so one compiled kernel serves every shape.

{{BINDINGS}}
@group(0) @binding({{OUT}}) var<storage, read_write> out: array<{{OUT_TYPE}}>;

struct Params {
    w: array<vec4<u32>, {{WORDS}}>,
}
@group(0) @binding({{PARAMS}}) var<uniform> p: Params;

fn u(j: u32) -> u32 {
    return p.w[j / 4u][j % 4u];
}

// numpy's power: integral exponents of negative bases are fine, 0 ** 0 is 1.
fn wn_pow(a: f32, b: f32) -> f32 {
    if (b == 0.0) {
        return 1.0;
    }
    if (a < 0.0 && b == round(b)) {
        let r = pow(-a, b);
        return select(r, -r, abs(b % 2.0) == 1.0);
    }
    return pow(a, b);
}

// tanh that stays finite for large |x| (some drivers compute it as a ratio of exponentials,
// which overflows to inf / inf); beyond 10 it is +-1 to float32 precision anyway.
fn wn_tanh(x: f32) -> f32 {
    return select(tanh(x), sign(x), abs(x) > 10.0);
}

fn wn_sigmoid(x: f32) -> f32 {
    return 1.0 / (1.0 + exp(-x));
}

// GELU, tanh approximation (as in GPT-2 and PyTorch's approximate="tanh").
fn wn_gelu(x: f32) -> f32 {
    return 0.5 * x * (1.0 + wn_tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
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
{{INDEX}}
    out[i] = {{EXPR}};
}
