"""A fuzz campaign against running ``msbfs serve`` daemons (issue 9).

Three classes of hostile input, each against a real daemon process over a real
vhost-user socket, driven by the in-tree frontend (``vhost/frontend.py``, QEMU's role):

- ``vhost``  (``vhost_class``): malformed, mis-sized and out-of-order vhost-user
  messages, bad fds, bad memory tables, rings outside guest memory;
- ``chains`` (``chains_class``): descriptor chains that point outside guest memory,
  loop, run too long, carry lying indirect tables, zero lengths, mixed-up directions,
  avail index jumps;
- ``fuse``   (``fuse_class`` + ``fuse_model``): structure-aware FUSE requests over a
  populated tree, mostly valid so they go deep, as root and two unprivileged users,
  plus mutated and random ones; replies counted per opcode and errno.

``campaign`` runs sessions and finds crashes, hangs (including a liveness probe on a
fresh connection), fd leaks and escapes (anything outside the served root changing);
``native`` builds the C ring walker and data path with ASan/UBSan and drives them with
the same kinds of damage in-process, where an out-of-region access is reported by the
sanitizer. Everything derives from a seed; findings are saved as reproducers that
``python -m tools.fuzz replay FILE`` runs again.
"""
