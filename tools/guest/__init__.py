"""The guest image (kernel + initramfs with the msb-agent) for tests, benchmarks and
``msbfs run``: ``python -m tools.guest build [--quiet]``."""
