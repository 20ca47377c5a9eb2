// The step parameters as a uniform with a dynamic offset (one slot per dispatch).
@group(0) @binding(0) var<uniform> p: Params;
