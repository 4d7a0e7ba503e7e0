#!/usr/bin/env bash
# Run every test (`make test`, after tools/setup_env.sh) from the repository root.
# Extra arguments go to pytest, e.g. `make test PYTEST_ARGS="-k windows -x"`.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# Safety net for anything that starts a ROS context without test/ros_helpers.py: discovery stays on this
# machine, on a random domain, and ROS logs stay out of the home directory.
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-$(( RANDOM % 100 + 1 ))}"
export RMW_IMPLEMENTATION=rmw_fastrtps_cpp
export ROS_HOME="$ROOT/build/ros_home"
mkdir -p "$ROS_HOME"
export PYTHONDONTWRITEBYTECODE=1

# `test` unless a test path is given (tools/run_tests.sh test/test_x.py -x runs that file only).
paths=(test)
for arg in "$@"; do
  case "$arg" in test/*|./test/*|*.py|*.py::*) paths=(); break ;; esac
done
.venv/bin/python -m pytest "${paths[@]}" -q -ra -p no:cacheprovider --timeout=900 "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "run_tests: pytest collected no tests" >&2
fi
exit "$rc"
