#!/usr/bin/env bash
# The demo behind `make demo`: the bundled synthetic sequence (a textured room, a moving camera, a box sliding
# across the floor) -> a rosbag2 -> `vggt4d replay` (the VGGT4D ROS 2 node as its own process, fed through DDS)
# -> an output bag with every topic of the node -> overlay PNGs of the dynamic masks.
#
# Environment (all optional; the Makefile passes them through):
#   WEIGHTS   checkpoint: hub id or local .safetensors/.pt. Empty: the package's default checkpoint
#             (vggt4d_ros.model.checkpoint.DEFAULT_WEIGHTS) from the Hugging Face hub (cache or download). Only when that fails because this machine is offline AND the tiny test
#             model bundled in test/fixtures is used,
#             with a warning: its masks are meaningless, it only shows that everything runs.
#   CONFIG    model config: preset name or JSON path (default: vggt-1b, or the tiny model's JSON).
#   DEVICE    auto | cpu | cuda | cuda:N (default auto).
#   DEMO_OUT  output folder (default demo_out): input_bag/, output_bag/, overlays/, node.log.
#   DEMO_FRAMES, DEMO_TARGET_SIZE  override the frame count and the model input size chosen below.
#
# Run from anywhere after `bash tools/setup_env.sh` (which `make demo` runs first).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$ROOT/.venv/bin/python"
VGGT4D="$ROOT/.venv/bin/vggt4d"
WEIGHTS="${WEIGHTS:-}"
CONFIG="${CONFIG:-}"
DEVICE="${DEVICE:-auto}"
DEMO_OUT="${DEMO_OUT:-demo_out}"
# The package's default checkpoint (a hub id), read from the package itself so that the demo follows it.
HUB_ID="$("$PY" - <<'EOF'
try:
    from vggt4d_ros.model.checkpoint import DEFAULT_WEIGHTS
except ImportError:  # older trees: the node parameter's default
    from vggt4d_ros.ros.params import SPEC_BY_NAME
    DEFAULT_WEIGHTS = SPEC_BY_NAME["weights"].default
print(DEFAULT_WEIGHTS)
EOF
)" || { echo "[demo] ERROR: cannot import vggt4d_ros with $PY" >&2; exit 1; }
TINY_WEIGHTS="$ROOT/test/fixtures/tiny_dino_weights.safetensors"
TINY_CONFIG="$ROOT/test/fixtures/tiny_dino_config.json"

say() { printf '[demo] %s\n' "$*"; }
die() { printf '[demo] ERROR: %s\n' "$*" >&2; exit 1; }
loud() {
  printf '\n[demo] %s\n' "################################################################################" >&2
  for line in "$@"; do printf '[demo] # %s\n' "$line" >&2; done
  printf '[demo] %s\n\n' "################################################################################" >&2
}

[ -x "$PY" ] && [ -x "$VGGT4D" ] || die "the venv is not set up: run 'bash tools/setup_env.sh' (or 'make demo')"
mkdir -p "$DEMO_OUT"
DEMO_OUT="$(cd "$DEMO_OUT" && pwd)"
START=$(date +%s)

# ------------------------------------------------------------------------------------------ the model
hub_reachable() {
  # true when the hub's host answers on port 443 within 5 s (HF_HUB_OFFLINE=1 counts as offline)
  [ "${HF_HUB_OFFLINE:-0}" != "1" ] || return 1
  "$PY" - <<'EOF'
import os, socket, sys, urllib.parse
host = urllib.parse.urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
try:
    socket.create_connection((host, 443), timeout=5).close()
except OSError:
    sys.exit(1)
EOF
}

resolve_hub_weights() {
  # prints the local file of $1 (downloading it if needed); the loader's message on stderr when impossible
  "$PY" - "$1" <<'EOF'
import sys
from vggt4d_ros.model.checkpoint import WeightsNotFoundError, resolve_weights
try:
    print(resolve_weights(sys.argv[1]))
except WeightsNotFoundError as exc:
    sys.stderr.write(f"{exc}\n")
    sys.exit(1)
EOF
}

TINY=0
if [ -z "$WEIGHTS" ]; then
  if hub_reachable; then
    say "fetching $HUB_ID from the Hugging Face hub (about 5 GB the first time; cached afterwards)"
    online=1
  else
    say "the Hugging Face hub is not reachable: looking for $HUB_ID in the local cache"
    online=0
  fi
  if [ "$online" = 1 ]; then hub_err="$(mktemp)"; else hub_err="$(mktemp)"; export HF_HUB_OFFLINE=1; fi
  if resolved="$(resolve_hub_weights "$HUB_ID" 2>"$hub_err")"; then
    WEIGHTS="$resolved"
    CONFIG="${CONFIG:-vggt-1b}"
    say "model: $HUB_ID ($WEIGHTS)"
  elif [ "$online" = 0 ] && [ -f "$TINY_WEIGHTS" ] && [ -f "$TINY_CONFIG" ]; then
    loud "OFFLINE: $HUB_ID is not in the Hugging Face cache and cannot be downloaded." \
         "Falling back to the TINY TEST MODEL of this development machine:" \
         "  $(cd "$(dirname "$TINY_WEIGHTS")" && pwd)/$(basename "$TINY_WEIGHTS")" \
         "It has random weights: the masks, poses and clouds below only show that the pipeline runs," \
         "they mean nothing. Run with network access (or WEIGHTS=/path/to/model.safetensors) for real results."
    WEIGHTS="$(cd "$(dirname "$TINY_WEIGHTS")" && pwd)/$(basename "$TINY_WEIGHTS")"
    CONFIG="$(cd "$(dirname "$TINY_CONFIG")" && pwd)/$(basename "$TINY_CONFIG")"
    TINY=1
  else
    cat "$hub_err" >&2
    rm -f "$hub_err"
    die "cannot load the default model $HUB_ID (message above); pass WEIGHTS=/path/to/model.safetensors"
  fi
  rm -f "$hub_err"
else
  case "$WEIGHTS" in *tiny_*) TINY=1 ;; esac
  say "model: $WEIGHTS${CONFIG:+ ($CONFIG)}"
fi

# ------------------------------------------------------------------------------------------ sizes
# On a CPU the 1B model costs about 0.035 s of 2-core time per token of a window (frames x (patches + 5)) for a
# whole VGGT4D run (pass 1, cues, masks, refinement, pass 2): measured with the 1B architecture at random
# weights by `tools/measure_demo_cpu.py --frames 2` (CPU time of all threads / threads, so other load on the
# machine does not count), which agrees with one plain forward of 4 frames at 518x294 taking ~110 s on 2 cores.
# The CPU demo takes windows of 8 frames at model input 280 px (320x240 -> 280x210: 305 tokens per frame) and as
# many frames as fit in about 8 minutes of windows, plus loading the model: about 10 minutes on 2 cores.
ON_GPU="$("$PY" - "$DEVICE" <<'EOF'
import sys
import torch
device = sys.argv[1]
print(1 if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()) else 0)
EOF
)"
CORES="$(nproc)"
WIDTH=320; HEIGHT=240
if [ "$TINY" = 1 ]; then
  FRAMES=40; WIDTH=160; HEIGHT=120; TARGET=140; WINDOW=8; OVERLAP=3; EXPECTED=60
  NOTE="tiny model: 40 frames of 160x120, model input 140 px, windows of 8 overlapping by 3"
elif [ "$ON_GPU" = 1 ]; then
  FRAMES=48; TARGET=518; WINDOW=16; OVERLAP=6; EXPECTED=180
  NOTE="GPU: 48 frames of 320x240, model input 518 px, windows of 16 overlapping by 6"
else
  TARGET="${DEMO_TARGET_SIZE:-280}"; WINDOW=8; OVERLAP=3
  read -r FRAMES EXPECTED PER_WINDOW <<<"$("$PY" - "$CORES" "$TARGET" "$WIDTH" "$HEIGHT" "$WINDOW" "$OVERLAP" \
                                         "${DEMO_FRAMES:-}" <<'EOF'
import math, sys
cores, target, width, height, window, overlap = (int(v) for v in sys.argv[1:7])
s_per_token = 0.035 * 2 / max(1, min(cores, 8))       # measured on 2 cores; threads beyond 8 help little
rows = round(height * target / width / 14)             # "crop" preprocessing: width = target
tokens = window * ((target // 14) * rows + 5)
per_window = tokens * s_per_token
load = 60.0                                            # reading ~5 GB of weights, building, warm-up
if sys.argv[7]:
    frames = int(sys.argv[7])
else:
    windows = max(2, min(8, int(480.0 // per_window)))
    frames = window + (windows - 1) * (window - overlap)
windows = 1 + math.ceil(max(0, frames - window) / (window - overlap))
print(frames, round(load + windows * per_window), round(per_window))
EOF
)"
  NOTE="CPU ($CORES cores) with the 1B model: $FRAMES frames of ${WIDTH}x${HEIGHT}, model input $TARGET px, windows of $WINDOW overlapping by $OVERLAP (about $PER_WINDOW s per window; DEMO_FRAMES / DEMO_TARGET_SIZE change it)"
fi
FRAMES="${DEMO_FRAMES:-$FRAMES}"
TARGET="${DEMO_TARGET_SIZE:-$TARGET}"
say "$NOTE"
say "expected duration: about $(( (EXPECTED + 30) / 60 )) min ($EXPECTED s) from here on"

# ------------------------------------------------------------------------------------------ input bag
rm -rf "$DEMO_OUT/input_bag" "$DEMO_OUT/output_bag" "$DEMO_OUT/overlays" "$DEMO_OUT/node.log"
"$PY" - "$DEMO_OUT/input_bag" "$FRAMES" "$WIDTH" "$HEIGHT" <<'EOF'
import sys
from vggt4d_ros.bags import write_camera_bag
from vggt4d_ros.synthetic import render_scene
out, frames, width, height = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
seq = render_scene(num_frames=frames, width=width, height=height, seed=0)
write_camera_bag(out, seq.images, seq.stamps_ns, intrinsics=seq.intrinsics, frame_id="camera_optical")
print(f"[demo] rendered {frames} synthetic frames ({width}x{height}, 10 Hz, with camera_info) into {out}")
EOF

# ------------------------------------------------------------------------------------------ replay through the node
# ROS: discovery stays on this machine unless the caller chose otherwise; ROS_DOMAIN_ID is the caller's.
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
export ROS_LOG_DIR="${ROS_LOG_DIR:-$DEMO_OUT/ros_log}"
REPLAY_ARGS=(replay "$DEMO_OUT/input_bag" --output "$DEMO_OUT/output_bag" --rate 0
             --params-file "$ROOT/config/vggt4d.yaml" --weights "$WEIGHTS" --device "$DEVICE"
             --node-log "$DEMO_OUT/node.log"
             -p "target_size:=$TARGET" -p "window_size:=$WINDOW" -p "window_overlap:=$OVERLAP"
             -p "map_publish_period:=0.5" -p "publish_overlay:=true")
[ -n "$CONFIG" ] && REPLAY_ARGS+=(--config "$CONFIG")
say "vggt4d ${REPLAY_ARGS[*]}"
# Progress: replay reports frames published / processed; this adds the time against the expectation.
RUN_START=$(date +%s)
( while sleep 30; do
    say "progress: $(( $(date +%s) - RUN_START )) s of about $EXPECTED s expected"
  done ) &
PROGRESS_PID=$!
trap 'kill "$PROGRESS_PID" 2>/dev/null || true' EXIT
status=0
"$VGGT4D" "${REPLAY_ARGS[@]}" || status=$?
kill "$PROGRESS_PID" 2>/dev/null || true
[ "$status" = 0 ] || die "replay failed (node log: $DEMO_OUT/node.log)"

# ------------------------------------------------------------------------------------------ overlay PNGs
"$PY" - "$DEMO_OUT" <<'EOF'
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from rosbags.rosbag2 import Reader

from vggt4d_ros.bags import typestore
from vggt4d_ros.dynamic.masks import overlay_mask

out = Path(sys.argv[1])
ts = typestore()


def stamp_ns(header) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


images = {}
with Reader(out / "input_bag") as reader:
    conns = [c for c in reader.connections if c.msgtype == "sensor_msgs/msg/Image"]
    for conn, _, raw in reader.messages(connections=conns):
        msg = ts.deserialize_cdr(raw, conn.msgtype)
        images[stamp_ns(msg.header)] = np.asarray(msg.data, dtype=np.uint8).reshape(msg.height, msg.width, 3)
order = {s: i for i, s in enumerate(sorted(images))}
(out / "overlays").mkdir(exist_ok=True)
written = 0
with Reader(out / "output_bag") as reader:
    conns = [c for c in reader.connections if c.topic.endswith("/dynamic_mask")]
    for conn, _, raw in reader.messages(connections=conns):
        msg = ts.deserialize_cdr(raw, conn.msgtype)
        s = stamp_ns(msg.header)
        if s not in images:
            continue
        mask = np.asarray(msg.data, dtype=np.uint8).reshape(msg.height, msg.step)[:, :msg.width] > 0
        side = np.concatenate([images[s], overlay_mask(images[s], mask)], axis=1)
        Image.fromarray(side).save(out / "overlays" / f"frame_{order[s]:04d}.png")
        written += 1
print(f"[demo] wrote {written} overlay PNGs (input | input with the dynamic mask in red) to {out / 'overlays'}")
EOF

cat <<EOF
[demo] done in $(( $(date +%s) - START )) s. Results in $DEMO_OUT:
[demo]   input_bag/    the synthetic camera stream (/image, /camera_info)
[demo]   output_bag/   every topic of the node (mcap): /vggt4d/dynamic_mask, /vggt4d/dynamic_overlay, /tf,
[demo]                 /vggt4d/odometry, /vggt4d/path, /vggt4d/static_cloud, /vggt4d/map_cloud,
[demo]                 /vggt4d/dynamic_cloud, /vggt4d/window, /diagnostics
[demo]   overlays/     frame_NNNN.png: input | input with the dynamic mask in red
[demo]   node.log      the node's console output
[demo] View it in rviz2 (needs a ROS 2 installation with rosbag2's mcap plugin, e.g. Jazzy/Kilted):
[demo]   ros2 bag play $DEMO_OUT/output_bag --loop
[demo]   rviz2 -d $ROOT/config/vggt4d.rviz        # fixed frame vggt4d_map
[demo] or feed the input bag to the node itself:
[demo]   ros2 launch vggt4d_ros vggt4d.launch.py &  ros2 bag play $DEMO_OUT/input_bag
EOF
