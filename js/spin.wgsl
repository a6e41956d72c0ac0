// Keeps the GPU busy at little cost while work is on its way (webnet_magic/worker/warm.py and
// js/gpu.js both dispatch it): one workgroup does integer arithmetic for `p.x` rounds.
@group(0) @binding(0) var<storage, read_write> sink: array<u32>;
@group(0) @binding(1) var<uniform> p: vec4<u32>;

@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) lane: u32) {
    var x = lane;
    for (var i = 0u; i < p.x; i++) {
        x = x * 1664525u + 1013904223u;
    }
    if (x == 0x5eedu) {  // practically never, but the compiler cannot know: the loop stays
        sink[0] = x;
    }
}
