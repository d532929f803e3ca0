# The README's two set-up commands live here: `make demo` and `make test`.
# Both work on a fresh Debian 12 machine and are quiet and quick when already set up.

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
BUILD := build

# Debian packages the project uses: FUSE (host mounts, pyfuse3 build), e2fsprogs and
# fuse2fs (disk volumes), QEMU (guests, and the C virtiofsd we compare against),
# busybox + cpio + xz (guest initramfs), bindfs (benchmark reference), attr (xattr tools),
# valgrind (the C test build), libseccomp-dev (the serve daemon's syscall allowlist).
APT_PACKAGES := fuse3 libfuse3-dev pkg-config e2fsprogs fuse2fs qemu-system-x86 qemu-utils \
	busybox-static cpio xz-utils bindfs attr valgrind python3-venv gcc libseccomp-dev

.PHONY: demo test deps venv native guest lint bench clean

deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
		| grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

$(VENV)/.installed: pyproject.toml setup.py csrc/*.c csrc/*.h csrc/*.cdef csrc/build_native.py csrc/build_vhost.py | deps
	@[ -x $(PY) ] || python3 -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip >/dev/null
	@$(PY) -m pip install -q -e '.[test]'
	@touch $@

# Bytecode for our own sources, as a wheel install has it: the editable install writes
# none, and where PYTHONDONTWRITEBYTECODE is set (this machine, CI) every daemon, CLI and
# test process compiled all of msbfs again (~0.2 s of CPU per process; `msbfs run`
# launched at 0.88-0.94x virtiofsd's speed without it, 0.95-1.01x with, tools.bench.guest
# --launch-only, 5 rounds each). Re-run each time: a source edited since is compiled
# again, the rest is a stat each.
venv: deps $(VENV)/.installed
	@$(PY) -m compileall -q msbfs vhost tools >/dev/null

# The guest image goes to the per-user cache (`msbfs guest path`), the one place that
# `msbfs run`, the tests, the demo and CI all look: built once, rebuilt when an input changes.
guest: venv
	@$(PY) -m msbfs guest build --quiet

demo: venv guest
	@$(PY) -m tools.demo

test: venv guest
	@$(PY) -m pytest -q

lint: venv
	@$(VENV)/bin/ruff check msbfs vhost tools tests

bench: venv
	@$(PY) -m tools.bench

clean:
	rm -rf $(BUILD) $(VENV) *.egg-info msbfs/_native*.so vhost/_native*.so
