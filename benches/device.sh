#!/usr/bin/env bash
# The real-GPU check of the performance issue, prepared so that a session lent a GPU machine (which has no
# Rust toolchain) spends its few minutes measuring, not building.
#
#   bash benches/device.sh prepare   # here: builds the bench and two test binaries into devbin/ (ignored)
#   bash benches/device.sh run       # there, with devbin/ carried: tests on the GPU, then the full bench
#                                    # and the workgroup sweep, JSON lines and logs into $OUT
#
# `run` uses the NVIDIA Vulkan driver where /usr/local/nvidia holds one (with the loader copied into
# devbin/), else the machine's default adapter (lavapipe here, to try the script out).
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-}"
case "$mode" in
prepare)
  grep -qx 'devbin/' .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo 'devbin/' >> .git/info/exclude; }
  rm -rf devbin && mkdir -p devbin
  cargo build --release --example bench
  cp target/release/examples/bench devbin/
  # Test binaries (release, so that they are small): the dense kernel, the golden cases, the submit
  # protocol and bindable slices, parameter groups.
  for t in dense golden protocol groups; do
    exe=$(cargo test --release --test "$t" --no-run --message-format=json 2>/dev/null |
      python3 -c 'import json,sys
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m.get("executable") and m["target"]["kind"]==["test"]:
        print(m["executable"])')
    cp "$exe" "devbin/test-$t"
  done
  strip devbin/* 2>/dev/null || true
  cp "$(ldconfig -p | awk '/libvulkan.so.1 .*x86-64/ {print $NF; exit}')" devbin/libvulkan.so.1
  cat > devbin/nvidia_icd.json <<'EOF'
{"file_format_version": "1.0.0", "ICD": {"library_path": "libEGL_nvidia.so.0", "api_version": "1.3"}}
EOF
  echo "$PWD" > devbin/root
  du -sh devbin
  ;;
run)
  out="${OUT:-devbin/out}"
  mkdir -p "$out"
  export LD_LIBRARY_PATH="$PWD/devbin:/usr/local/nvidia/lib64:${LD_LIBRARY_PATH:-}"
  if [ -d /usr/local/nvidia/lib64 ]; then
    export WGPU_BACKEND=vulkan VK_ICD_FILENAMES="$PWD/devbin/nvidia_icd.json" \
      VK_DRIVER_FILES="$PWD/devbin/nvidia_icd.json"
  fi
  # The golden test finds its cases through the crate root it was built in (CARGO_MANIFEST_DIR).
  root=$(cat devbin/root)
  if [ "$root" != "$PWD" ] && [ ! -e "$root" ]; then
    mkdir -p "$(dirname "$root")" && ln -s "$PWD" "$root"
  fi
  { ./devbin/test-dense 2>&1 && ./devbin/test-golden 2>&1 && ./devbin/test-protocol 2>&1 &&
    ./devbin/test-groups 2>&1; } | tee "$out/tests.log" |
    grep -E "^test result|FAILED" || echo "tests failed (see tests.log); measuring anyway"
  ./devbin/bench 2>"$out/bench.err" | tee "$out/bench.jsonl" | cut -c1-160
  ./devbin/bench --sweep 2>"$out/sweep.err" | tee "$out/sweep.jsonl" | cut -c1-160
  ;;
*)
  echo "usage: bash benches/device.sh prepare|run" >&2
  exit 2
  ;;
esac
