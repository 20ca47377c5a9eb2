#!/usr/bin/env python3
"""Writes the hostile case files of this folder (one per class of issue 18); tests/case_input.rs
asserts what the crate does with each. Run from the repository root: python3 tests/hostile/make.py"""
import json
import math
import os
import struct

here = os.path.dirname(os.path.abspath(__file__))
seed = json.load(open(os.path.join(here, "..", "golden", "cases", "keras_seed_example_1step.json")))


def f32(x):
    return struct.unpack("f", struct.pack("f", x))[0]


def case(name, **over):
    c = json.loads(json.dumps(seed))
    c["name"] = name
    c["source"] = "tests/hostile/make.py"
    for k, v in over.items():
        c[k] = v
    return c


def write(file, c, raw=None):
    with open(os.path.join(here, file), "w") as f:
        f.write(raw if raw is not None else json.dumps(c, indent=1))
        f.write("\n")


# Output paths from the name: a relative escape (the tests also try absolute, empty, NUL, long names).
write("path_escape.json", case("../../escaped/outside"))
# A value of the wrong type: a string rho (was silently run with the default 0.9).
c = case("wrong_type")
c["config"]["rho"] = "0.5"
write("wrong_type.json", c)
# An unknown key in config (was ignored).
c = case("unknown_key")
c["config"]["rho_typo"] = 0.5
write("unknown_key.json", c)
# A feature the crate does not implement (was ignored): a float16 case with Keras's moving average.
c = case("unsupported_feature", dtype="float16")
c["config"]["use_ema"] = True
write("unsupported_feature.json", c)
# A name that forges output: a newline, a fake PASS line, a carriage return and an ANSI colour.
# The expected value is wrong, so the case itself FAILs.
c = case("real\nPASS forged max_abs=0.000e0 max_rel=0.000e0\r\x1b[32mPASS")
c["expected"][0]["variables"][0][0] = 123.0
write("forged_name.json", c)
# Two cases with the same name: the second's results must not replace the first's.
write("duplicate_a.json", case("duplicate_name"))
c = case("duplicate_name")
c["steps"][0]["grads"][0]["values"] = [1.0]
del c["expected"]
write("duplicate_b.json", c)
# Many steps on a table, without expected values: memory must not grow with the steps.
rows, cols, steps = 256, 16, 1000
write("huge_steps.json", None, raw=json.dumps({
    "format": "rmsprop-case/1", "name": "huge_steps", "source": "tests/hostile/make.py",
    "semantics": "keras", "dtype": "float32",
    "config": dict(seed["config"], momentum=0.5, sparse_mode="dense", duplicate_indices="keras3"),
    "variables": [{"name": "table", "shape": [rows, cols], "init": [0] * (rows * cols)}],
    "steps": [{"grads": [{"kind": "sparse", "indices": [], "values": []}]}] * steps,
    "tolerance": seed["tolerance"]}, separators=(",", ":")))
# A tiny epsilon that the checkpoint's configuration must round-trip (--resume-at).
c = case("epsilon_tiny")
c["config"].update(epsilon=1e-30, momentum=0.9, centered=True)
c["variables"] = [{"name": "w", "shape": [2, 3], "init": [0.5, -1, 2, 0, 3, -0.25]}]
c["steps"] = [{"grads": [{"kind": "dense", "values": [0.1 * (t + 1), -0.2, 0.3, 0, 1e-3, -5]}]}
              for t in range(6)]
del c["expected"]
write("epsilon_tiny.json", c)
# Non-finite numbers as strings: in the input, and in the expected state (NaN, +inf, -inf).
lr, rho, eps = 0.1, 0.9, 1e-7
init = [1.0, 2.0, -math.inf, 4.0]
grad = [math.nan, 1.0, 1.0, math.inf]
v = [(1 - rho) * g * g for g in grad]
x = [xi - lr * g / math.sqrt(vi + eps) for xi, g, vi in zip(init, grad, v)]


def num(x):
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    return f32(x)


c = case("nonfinite")
c["variables"] = [{"name": "w", "shape": [4], "init": [num(a) for a in init]}]
c["steps"] = [{"grads": [{"kind": "dense", "values": [num(g) for g in grad]}]}]
c["expected"] = [{"step": 1, "learning_rate": f32(lr), "variables": [[num(a) for a in x]],
                  "slots": {"velocity": [[num(a) for a in v]]}}]
write("nonfinite.json", c)
# Expected step number and learning rate that do not match what is computed: each must FAIL.
c = case("step_mismatch")
c["expected"][0]["step"] = 2
write("step_mismatch.json", c)
c = case("lr_mismatch")
c["expected"][0]["learning_rate"] = f32(0.1001)
write("lr_mismatch.json", c)
# A null slot entry (FORMAT.md allows it: that variable has no such slot): accepted, nothing compared.
c = case("null_slot")
c["expected"][0]["slots"]["momentum"] = [None]
write("null_slot.json", c)
