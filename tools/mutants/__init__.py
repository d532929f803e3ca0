"""Mutation testing of the server's promises (issue 13): a catalogue of hand-written
mutants, each dropping one rule the server enforces, run against every front that claims
the rule (tree, virtio-fs, guest, host mount) in a scratch copy of the repository.
``python -m tools.mutants --help``."""
