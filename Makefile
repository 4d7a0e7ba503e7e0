# The two commands of README.md. Both create or reuse .venv at the repo root, install what is missing
# (idempotent, quick when already set up) and build the ROS 2 package with colcon into build/ and install/.
#
#   make demo   # synthetic sequence -> VGGT4D node (via bag replay) -> output bag + overlay PNGs in demo_out/
#   make test   # every test
#
# WEIGHTS=<file|hub id> CONFIG=<preset|json> pick the model for the demo (default: facebook/VGGT-1B).

SHELL := /bin/bash
PY := .venv/bin/python
WEIGHTS ?=
CONFIG ?=
DEVICE ?= auto
DEMO_OUT ?= demo_out
PYTEST_ARGS ?=

.PHONY: setup demo test clean

setup:
	@bash tools/setup_env.sh

demo: setup
	@WEIGHTS="$(WEIGHTS)" CONFIG="$(CONFIG)" DEVICE="$(DEVICE)" DEMO_OUT="$(DEMO_OUT)" bash tools/demo.sh

test: setup
	@bash tools/run_tests.sh $(PYTEST_ARGS)

clean:
	rm -rf build install log $(DEMO_OUT)
