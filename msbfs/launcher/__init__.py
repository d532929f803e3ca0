"""The launcher: wires daemons, disks and tmpfs mounts to a QEMU guest and runs commands
in it through the agent channel. ``Sandbox`` is the public entry point."""
