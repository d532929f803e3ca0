"""FUSE, transport-free, in layers (after h11's readers / writers / connection):

- ``abi``      the kernel ABI (7.38): opcodes, flags, structs.
- ``requests`` decoding a request's bytes (sans-I/O, tree-free).
- ``replies``  encoding replies to bytes (sans-I/O, tree-free).
- ``server``   the session over a tree (``FuseSession``: INIT, state, dispatch to the
  opcode handlers, which call the tree).
- ``kernel``   the kernel's side (build requests, decode replies), for tests and tools.

Nothing is imported here, so that importing ``requests`` or ``replies`` loads no tree.
"""
