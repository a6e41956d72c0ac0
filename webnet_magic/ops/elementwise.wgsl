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

// erf as x * P(x^2) / Q(x^2) on [-4, 4] (beyond, erf is +-1 in float32): within 4 ULP.
fn wn_erf(x: f32) -> f32 {
    let c = clamp(x, -4.0, 4.0);
    let z = c * c;
    var p = -2.72614225801306e-10;
    p = p * z + 2.77068142495902e-08;
    p = p * z - 2.10102402082508e-06;
    p = p * z - 5.69250639462346e-05;
    p = p * z - 7.34990630326855e-04;
    p = p * z - 2.95459980854025e-03;
    p = p * z - 1.60960333262415e-02;
    var q = -1.45660718464996e-05;
    q = q * z - 2.13374055278905e-04;
    q = q * z - 1.68282697438203e-03;
    q = q * z - 7.37332916720468e-03;
    q = q * z - 1.42647390514189e-02;
    return c * p / q;
}

// log(1 + e), accurate for small e too: the rounding of 1 + e is corrected for.
fn wn_log1p(e: f32) -> f32 {
    let u = 1.0 + e;
    if (u == 1.0) {
        return e;
    }
    return log(u) * (e / (u - 1.0));
}

fn wn_softplus(x: f32) -> f32 {
    return max(x, 0.0) + wn_log1p(exp(-abs(x)));
}

// C's fmod, exactly: |a| less |b| * 2^k for falling k, each subtraction exact (Sterbenz).
fn wn_fmod(a: f32, b: f32) -> f32 {
    let y = abs(b);
    var r = abs(a);
    if (!(y > 0.0) || (bitcast<u32>(r) & 0x7f800000u) == 0x7f800000u) {
        return a - b * trunc(a / b);  // b is 0 or NaN, or a is infinite or NaN: NaN
    }
    let fy = frexp(y);
    for (var n = 0; n < 300 && r >= y; n++) {
        let fr = frexp(r);
        r = r - ldexp(fy.fract, fr.exp - select(0, 1, fy.fract > fr.fract));
    }
    return select(r, -r, a < 0.0);
}

// Python's modulo for integers (the result takes the divisor's sign; 0 for a divisor of 0, as
// numpy), from an unsigned remainder: i32 % of a negative number came out wrong on NVIDIA's
// Vulkan driver through wgpu-native 0.32.  abs of the most negative i32 is itself, 2^31 as u32.
fn wn_imod(a: i32, b: i32) -> i32 {
    if (b == 0i) {
        return 0i;
    }
    let m = i32(u32(abs(a)) % u32(abs(b)));
    let r = select(m, -m, a < 0i);
    return select(r, r + b, r != 0i && (r < 0i) != (b < 0i));
}
