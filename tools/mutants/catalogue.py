"""The mutants: each one drops exactly ONE rule the server promises (ARCHITECTURE.md,
"Security model and where each rule lives"; the rules' table is msbfs/tree/policy.py's), as a precise source edit.

An ``Edit`` names a file, the exact text it replaces and the replacement. The text must
occur exactly once in the file of the revision under test (``apply`` fails otherwise), so
when the code moves the catalogue fails loudly instead of testing nothing.

A mutant lists, per front that claims its rule, the pytest selection that must go red
(node ids or ``-k`` expressions, as pytest arguments), and, per front that cannot observe
the rule, why (``unobservable``). Fronts:

- ``tree``: ``msbfs.tree.Tree`` called directly (tests/test_tree_*);
- ``virtiofs``: FUSE requests through the codec or the in-tree vhost-user frontend into
  an in-process device or a real ``msbfs serve`` (tests/test_virtiofs_*,
  tests/test_serve_*, tests/test_fuse_server.py, tests/test_confinement.py);
- ``guest``: a real Linux guest under TCG (tests/test_guest_*);
- ``hostmount``: ``msbfs mount`` on a real FUSE mount (tests/test_policy_mount.py,
  tests/test_hostmount*).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

FRONTS = ("tree", "virtiofs", "guest", "hostmount")

Selection = tuple[str, ...]


class CatalogueError(Exception):
    """A mutant's edit does not match the source exactly once: the catalogue has rotted."""


@dataclass(frozen=True)
class Edit:
    path: str  # relative to the repository root
    old: str
    new: str

    def apply(self, text: str) -> str:
        n = text.count(self.old)
        if n != 1:
            raise CatalogueError(
                f"{self.path}: expected the text exactly once, found it {n} times:\n"
                f"{self.old}")
        return text.replace(self.old, self.new)


@dataclass(frozen=True)
class Mutant:
    name: str
    rule: str  # what the server promises, which this mutant drops
    edits: tuple[Edit, ...]
    fronts: dict[str, Selection]  # front -> pytest arguments that must fail
    unobservable: dict[str, str] = field(default_factory=dict)  # front -> why not claimed
    policy_flag: bool = False  # one of the policy flags CI runs (tests/test_mutants.py)

    def __post_init__(self) -> None:
        bad = (set(self.fronts) | set(self.unobservable)) - set(FRONTS)
        if bad:
            raise CatalogueError(f"{self.name}: unknown fronts {sorted(bad)}")
        both = set(self.fronts) & set(self.unobservable)
        if both:
            raise CatalogueError(f"{self.name}: fronts both claimed and unobservable {both}")

    @property
    def native(self) -> bool:
        """Whether the extension must be rebuilt (an edit in csrc/)."""
        return any(e.path.startswith("csrc/") for e in self.edits)


TREE = "msbfs/tree/tree.py"
POLICY = "msbfs/tree/policy.py"
CONFINE = "msbfs/confine.py"

# Reasons shared by several mutants.
KERNEL_OPENS_DEVICES = ("the client kernel opens device nodes itself (its own driver for "
                        "the reported major:minor); it never sends OPEN or CREATE for one")
KERNEL_RESOLVES_NAMES = ("the client kernel sends single, valid components and resolves "
                         "'..' in its own dcache: no such request can be made from it")
NO_XATTR_TOOLS = ("the guest image's busybox has no getfattr/setfattr: no guest program "
                  "can make xattr calls")
MASKED_BY_CAPS = ("masked by confinement: the daemon has no CAP_SYS_ADMIN, so the host "
                  "kernel itself refuses trusted.* (a second, independent layer)")
KERNEL_ONLY_SENDS_BESIDE = ("the client kernel sends KILL_SUIDGID only beside a truncate or "
                            "chown (HANDLE_KILLPRIV_V2), never alone")
NOT_THIS_TRANSPORT = ("a rule of the vhost-user transport (its descriptor chains, its queue "
                      "threads); a host mount's /dev/fuse requests reach pyfuse3 or the "
                      "relay's own code (csrc/devfuse.c), never this one")
NO_DAEMON = "confinement is msbfs serve's; this front runs no serve daemon"
RELAY_ONLY = ("the relay (csrc/devfuse.c) is the host mount's: a virtio-fs client negotiates "
              "HANDLE_KILLPRIV_V2 and says FUSE_OPEN_KILL_SUIDGID, which C's OPEN leaves to "
              "the tree by its own check")
NO_HOST_LOCKS = ("msbfs mount does not serve POSIX locks (pyfuse3 has no lock callbacks: the "
                 "host kernel keeps them), so no lock description ever exists there")
BUDGET_SIZE = ("the budget is a fraction of the daemon's fd limit (thousands): a kernel "
               "client would have to hold thousands of files open")

# Fronts shared by the mutants of one rule.
READONLY: dict[str, Selection] = {
    "tree": ("tests/test_tree_policy.py::test_readonly_refuses_every_mutation",),
    "virtiofs": ("tests/test_fuse_server.py::test_policy_through_the_codec",
                 "tests/test_virtiofs_serve.py::test_old_dash_o_form_and_policy"),
    "guest": ("tests/test_guest_policy.py::test_readonly_after_remount",),
    "hostmount": ("tests/test_policy_mount.py::test_readonly_nothing_writes",),
}
NOSUID_MODE: dict[str, Selection] = {
    "tree": ("tests/test_tree_policy.py::test_nosuid_never_stores_or_reports_setid",),
    "virtiofs": ("tests/test_virtiofs_policy_mutants.py",),
    "guest": ("tests/test_guest_policy.py::test_nosuid_after_remount",),
    "hostmount": ("tests/test_policy_mount.py::test_nosuid_bits_do_not_stick",
                  "tests/test_hostmount_policy_mutants.py"
                  "::test_nosuid_hides_setid_bits_the_host_already_had"),
}
NOSUID_CAP: dict[str, Selection] = {
    "tree": ("tests/test_tree_xattr_policy.py"
             "::test_nosuid_never_stores_or_shows_file_capabilities",),
    "virtiofs": ("tests/test_virtiofs_xattr.py"
                 "::test_xattrmap_option_remaps_and_nosuid_hides_capabilities",),
    "hostmount": ("tests/test_hostmount_xattr.py",
                  "tests/test_hostmount_policy_mutants.py"
                  "::test_nosuid_file_capabilities_under_a_map_that_passes_them"),
}
QUOTA_INODES: dict[str, Selection] = {
    "tree": ("tests/test_tree_hardening.py::test_inode_quota",),
    "virtiofs": ("tests/test_serve_limits.py::test_quota_inodes_option_on_a_directory",
                 "tests/test_serve_limits.py::test_inode_quota_from_the_volume_record",
                 "tests/test_virtiofs_policy_mutants.py::test_inode_quota_stops_create"),
    "guest": ("tests/test_guest_policy_mutants.py",),
    "hostmount": ("tests/test_hostmount_policy_mutants.py",),
}
CONTAINMENT_UNOBSERVABLE = {"guest": KERNEL_RESOLVES_NAMES, "hostmount": KERNEL_RESOLVES_NAMES}
NO_ACCESS_OP = {
    "guest": "a guest mounts with default_permissions: its kernel never sends ACCESS",
    "hostmount": "msbfs mount uses default_permissions: the kernel never sends ACCESS",
}
CONFINE_FRONTS: dict[str, Selection] = {
    "virtiofs": ("tests/test_confinement.py::test_defaults_confine_the_serving_process",
                 "tests/test_confinement.py::test_the_sandbox_shows_nothing_of_the_host",
                 "tests/test_confinement.py::test_other_sandboxes_keep_the_other_layers"),
    "guest": ("tests/test_guest_confinement.py",),
}

MUTANTS: tuple[Mutant, ...] = (
    # ---- readonly ---------------------------------------------------------------------
    Mutant(
        "readonly-mutation", "readonly: every mutating op is EROFS",
        (Edit(POLICY, "        if self.readonly:\n            raise os_error(errno.EROFS)\n",
              "        pass\n"),),
        READONLY,
        policy_flag=True),
    Mutant(
        "readonly-open", "readonly: no writable open succeeds",
        (Edit(POLICY, "        if self.readonly and (flags & os.O_ACCMODE != os.O_RDONLY",
              "        if False and (flags & os.O_ACCMODE != os.O_RDONLY"),),
        READONLY,
        policy_flag=True),
    Mutant(
        "readonly-access", "readonly: access(W_OK) answers EROFS",
        (Edit(POLICY, "        if self.readonly and mask & os.W_OK",
              "        if False and mask & os.W_OK"),),
        {"tree": ("tests/test_tree_policy.py::test_readonly_refuses_every_mutation",),
         "virtiofs": ("tests/test_virtiofs_policy_mutants.py",)},
        NO_ACCESS_OP,
        policy_flag=True),
    Mutant(
        "readonly-datapath", "readonly: the C data path never writes (data_fd refuses)",
        (Edit(POLICY, "        return self.readonly or self.quota_bytes is not None",
              "        return self.quota_bytes is not None"),),
        {},
        {front: "equivalent mutant: no writable handle can exist in a readonly tree "
                "(open, create and tmpfile refuse first), so data_fd is never asked for one"
         for front in FRONTS}),
    # ---- noexec -----------------------------------------------------------------------
    Mutant(
        "noexec-open", "noexec: an open carrying FMODE_EXEC is EACCES",
        (Edit(POLICY, "        if self.noexec and flags & FMODE_EXEC:",
              "        if False and flags & FMODE_EXEC:"),),
        {"tree": ("tests/test_tree_policy.py::test_noexec_refuses_exec_opens_only",),
         "virtiofs": ("tests/test_fuse_server.py::test_policy_through_the_codec",
                      "tests/test_virtiofs_serve.py::test_old_dash_o_form_and_policy"),
         "guest": ("tests/test_guest_policy.py::test_noexec_after_remount",),
         "hostmount": ("tests/test_policy_mount.py::test_noexec_script_cannot_be_executed",)},
        policy_flag=True),
    Mutant(
        "noexec-access", "noexec: access(X_OK) of a file is EACCES",
        (Edit(POLICY, "        if self.noexec and mask & os.X_OK",
              "        if False and mask & os.X_OK"),),
        {"tree": ("tests/test_tree_policy.py::test_noexec_refuses_exec_opens_only",),
         "virtiofs": ("tests/test_virtiofs_policy_mutants.py",)},
        NO_ACCESS_OP,
        policy_flag=True),
    # ---- nosuid -----------------------------------------------------------------------
    Mutant(
        "nosuid-stored", "nosuid: set-id bits are never stored",
        (Edit(POLICY, "        return mode & ~SETID_BITS if self.nosuid else mode",
              "        return mode"),),
        NOSUID_MODE,
        policy_flag=True),
    Mutant(
        "nosuid-reported", "nosuid: set-id bits are never reported",
        (Edit(POLICY, "        return ~SETID_BITS if self.nosuid else ~0",
              "        return ~0"),),
        NOSUID_MODE,
        policy_flag=True),
    Mutant(
        "nosuid-setcap", "nosuid: security.capability is never stored",
        (Edit(POLICY, "        if self.nosuid:\n            raise os_error(errno.EPERM)",
              "        pass"),),
        {"tree": ("tests/test_tree_policy.py::test_nosuid_refuses_file_capabilities",
                  "tests/test_tree_xattr_policy.py"
                  "::test_nosuid_never_stores_or_shows_file_capabilities"),
         "virtiofs": ("tests/test_virtiofs_xattr.py"
                      "::test_xattrmap_option_remaps_and_nosuid_hides_capabilities",),
         "hostmount": NOSUID_CAP["hostmount"]},
        {"guest": NO_XATTR_TOOLS},
        policy_flag=True),
    Mutant(
        "nosuid-getcap", "nosuid: security.capability is never shown (getxattr)",
        (Edit(POLICY, "            elif self.policy.nosuid:\n                raise os_error(errno.ENODATA)",
              "            elif False:\n                raise os_error(errno.ENODATA)"),),
        NOSUID_CAP,
        {"guest": NO_XATTR_TOOLS},
        policy_flag=True),
    Mutant(
        "nosuid-listcap", "nosuid: security.capability is never listed",
        (Edit(POLICY, "        if self.policy.nosuid and _CAPABILITY in (name, host):\n"
                    "            return None",
              "        if False:\n            return None"),),
        NOSUID_CAP,
        {"guest": NO_XATTR_TOOLS},
        policy_flag=True),
    # ---- nodev ------------------------------------------------------------------------
    Mutant(
        "nodev-mknod", "nodev: device nodes are never created",
        (Edit(POLICY, "        if self.nodev and stat.S_IFMT(mode) in _DEVICE_TYPES:",
              "        if False and stat.S_IFMT(mode) in _DEVICE_TYPES:"),),
        {"tree": ("tests/test_tree_policy.py::test_nodev",),
         "virtiofs": ("tests/test_virtiofs_policy_mutants.py",),
         "guest": ("tests/test_guest_policy.py::test_nodev_after_remount",),
         "hostmount": ("tests/test_policy_mount.py::test_nodev_no_device_created_or_opened",)},
        policy_flag=True),
    Mutant(
        "nodev-rdev", "nodev: a device node is reported as 0:0 (names no device)",
        (Edit(POLICY, "        return AttrShape(self.reported_mode_mask, self.squash_uid, self.squash_gid,\n"
                      "                         self.nodev)",
              "        return AttrShape(self.reported_mode_mask, self.squash_uid, self.squash_gid,\n"
                      "                         False)"),),
        {"tree": ("tests/test_tree_policy.py::test_nodev",),
         "virtiofs": ("tests/test_virtiofs_policy_mutants.py",),
         "guest": ("tests/test_guest_policy_mutants.py",),
         "hostmount": ("tests/test_policy_mount.py::test_nodev_existing_device_is_not_opened",)},
        policy_flag=True),
    # ---- special files ----------------------------------------------------------------
    Mutant(
        "device-open", "no device is ever opened for a client (EBADF; EACCES under nodev)",
        (Edit(POLICY, "        if kind in _DEVICE_TYPES:\n",
              "        if False:\n"),),
        {"tree": ("tests/test_tree_policy.py::test_no_device_is_ever_opened",),
         "virtiofs": ("tests/test_virtiofs_policy_mutants.py",)},
        {"guest": KERNEL_OPENS_DEVICES, "hostmount": KERNEL_OPENS_DEVICES},
        policy_flag=True),
    Mutant(
        "device-create", "CREATE of an existing device name never opens the device",
        (Edit(TREE, "            self.policy.check_open(flags, kind)\n", ""),),
        {"tree": ("tests/test_tree_policy.py::test_no_device_is_ever_opened",),
         "virtiofs": ("tests/test_virtiofs_policy_mutants.py",)},
        {"guest": KERNEL_OPENS_DEVICES + " (a positive lookup comes first)",
         "hostmount": KERNEL_OPENS_DEVICES + " (a positive lookup comes first)"},
        policy_flag=True),
    # ---- quota ------------------------------------------------------------------------
    Mutant(
        "quota-reserve", "quota: growth past the byte limit is refused before the syscall",
        (Edit(POLICY, "        if growth > 0 and growth > self.available:",
              "        if False:"),),
        {"tree": ("tests/test_tree_policy.py::test_quota_enospc_statfs_and_accounting",),
         "virtiofs": ("tests/test_virtiofs_policy_mutants.py",),
         "guest": ("tests/test_guest_policy_mutants.py",),
         "hostmount": ("tests/test_hostmount_policy_mutants.py",)},
        policy_flag=True),
    Mutant(
        "quota-write", "quota: a write is cut to what fits, ENOSPC when nothing does",
        (Edit(POLICY, "        if est <= self.available:\n            return length",
              "        if True:\n            return length"),),
        {"tree": ("tests/test_tree_policy.py::test_quota_enospc_statfs_and_accounting",),
         "virtiofs": ("tests/test_virtiofs_serve.py::test_named_volume_holds_its_lock_and_quota",),
         "guest": ("tests/test_guest_policy_mutants.py",),
         "hostmount": ("tests/test_hostmount_policy_mutants.py",)},
        policy_flag=True),
    Mutant(
        "quota-datapath", "quota: writes under a byte quota never take the C data path",
        (Edit(POLICY, "        return self.readonly or self.quota_bytes is not None",
              "        return self.readonly"),),
        {"virtiofs": ("tests/test_virtiofs_serve.py::test_named_volume_holds_its_lock_and_quota",),
         "guest": ("tests/test_guest_policy_mutants.py",),
         "hostmount": ("tests/test_hostmount_policy_mutants.py::test_quota_stops_writes",
                       "tests/test_hostmount_relay_policy.py"
                       "::test_quota_stops_writes_through_a_handle_open_for_reading_too")},
        {"tree": "data_fd only hands fds to the C data paths (the vhost transport's, the "
                 "host mount relay's)"},
        policy_flag=True),
    Mutant(
        "quota-inodes", "quota: no inode past the inode limit (mknod, mkdir, symlink, tmpfile)",
        (Edit(POLICY, "        if self.inodes_available < 1:",
              "        if False:"),),
        QUOTA_INODES,
        policy_flag=True),
    Mutant(
        "quota-inodes-create", "quota: CREATE makes no inode past the inode limit",
        (Edit(TREE, "        room = self.quota is None or self.quota.inodes_available > 0",
              "        room = True"),),
        QUOTA_INODES,
        policy_flag=True),
    Mutant(
        "quota-xattr", "quota: xattr blocks are charged and refused past the limit",
        (Edit(TREE, "        self.quota.reserve(growth)\n", ""),),
        {"tree": ("tests/test_tree_xattr_policy.py::test_quota_charges_xattr_blocks",),
         "virtiofs": ("tests/test_virtiofs_policy_mutants.py",),
         "hostmount": ("tests/test_hostmount_policy_mutants.py",)},
        {"guest": NO_XATTR_TOOLS},
        policy_flag=True),
    # ---- name containment -------------------------------------------------------------
    Mutant(
        "name-slash", "a name is one component: '/' in a name is EINVAL",
        (Edit(TREE, '    if b"/" in name or b"\\0" in name:',
              '    if b"\\0" in name:'),),
        {"tree": ("tests/test_tree_policy_mutants.py",),
         "virtiofs": ("tests/test_fuse_server.py::test_namespace_ops",
                      "tests/test_virtiofs_policy_mutants.py")},
        CONTAINMENT_UNOBSERVABLE),
    Mutant(
        "resolve-beneath", "lookups open with RESOLVE_BENEATH (never leave the parent)",
        (Edit("msbfs/syscalls.py",
              "RESOLVE_CONTAINED = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS",
              "RESOLVE_CONTAINED = RESOLVE_NO_MAGICLINKS"),),
        {},
        {front: "equivalent behind _name alone: every name reaching openat2 is one "
                "component other than '..' opened O_NOFOLLOW, which cannot leave the "
                "parent; name-slash+resolve-beneath drops both layers"
         for front in FRONTS}),
    Mutant(
        "name-slash+resolve-beneath", "containment: a name with '/' or '..' never leaves the root",
        (Edit(TREE, '    if b"/" in name or b"\\0" in name:',
              '    if b"\\0" in name:'),
         Edit("msbfs/syscalls.py",
              "RESOLVE_CONTAINED = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS",
              "RESOLVE_CONTAINED = RESOLVE_NO_MAGICLINKS")),
        {"tree": ("tests/test_tree_policy_mutants.py",),
         "virtiofs": ("tests/test_virtiofs_policy_mutants.py",)},
        CONTAINMENT_UNOBSERVABLE),
    Mutant(
        "dotdot-root", "the root's '..' is the root",
        (Edit(TREE, "        if p.nodeid == ROOT_ID:\n            st = os.stat(root.fd)",
              "        if False:\n            st = os.stat(root.fd)"),),
        {"tree": ("tests/test_tree_inodes.py::test_dotdot_never_leaves_the_root",),
         "virtiofs": ("tests/test_virtiofs_policy_mutants.py",)},
        CONTAINMENT_UNOBSERVABLE),
    Mutant(
        "readdir-c-dotdot-root", "a listing of the root answered in C shows the root's own "
        "ino for '..', never the host parent's (Tree.readdir's rule)",
        (Edit("csrc/fuse_readdir.c", "        if (d->is_root && len == 2 && dot)\n",
              "        if (0 && d->is_root && len == 2 && dot)\n"),),
        {"virtiofs": ("tests/test_virtiofs_readdir.py::test_c_and_python_list_the_same_bytes",),
         "hostmount": ("tests/test_hostmount_relay_policy.py"
                       "::test_the_roots_dotdot_is_the_root_in_a_listing",)},
        {"tree": "READDIR in C is the vhost transport's and the host mount relay's",
         "guest": "a guest's ls stats '..', which at the mount root is the guest's own "
                  "parent: the d_ino of the '..' record never shows without a getdents "
                  "tool in the guest image"}),
    Mutant(
        "named-node-identity", "a node a lookup added by name (csrc/inodes.h) is opened "
        "only if its name still holds the object the lookup found (dev, ino, kind, birth)",
        (Edit("csrc/inodes.c",
              "    else if ((uint64_t)st.st_dev != dev || (uint64_t)st.st_ino != ino\n"
              "             || (st.st_mode & S_IFMT) != kind || born != btime)\n",
              "    else if (0)\n"),),
        {"tree": ("tests/test_tree_named.py::test_a_swapped_name_never_reaches_the_new_object",),
         "virtiofs": ("tests/test_virtiofs_policy_mutants.py"
                      "::test_a_named_node_never_reaches_what_took_its_name",)},
        {"guest": "the client kernel looks a name up again (its attributes expired, or "
                  "LOOKUP_REVAL) before it uses the node a listing gave: a swapped name "
                  "gets a node of its own, the old one is not used again",
         "hostmount": "the client kernel looks a name up again (its attributes expired, "
                      "or LOOKUP_REVAL) before it uses the node a listing gave: a swapped "
                      "name gets a node of its own, the old one is not used again"}),
    Mutant(
        "dotdot-beneath", "'..' of a directory moved out of the root is ENOENT",
        (Edit(TREE, "            self._check_beneath_root(fd, st)\n", ""),),
        {"tree": ("tests/test_tree_inodes.py::test_directory_moved_out_of_the_root_has_no_parent",),
         "virtiofs": ("tests/test_virtiofs_policy_mutants.py",)},
        CONTAINMENT_UNOBSERVABLE),
    # ---- xattr policy -----------------------------------------------------------------
    Mutant(
        "xattr-trusted", "default xattr map: trusted.* is refused",
        (Edit("msbfs/tree/xattrmap.py",
              'DEFAULT_XATTRMAP = ":bad:all:trusted.:trusted.: :bad:all:security.',
              'DEFAULT_XATTRMAP = ":bad:all:security.'),),
        {"tree": ("tests/test_tree_xattr_policy.py"
                  "::test_default_refuses_trusted_and_security_even_for_root",),
         "virtiofs": ("tests/test_virtiofs_policy_mutants.py",),
         "hostmount": ("tests/test_hostmount_xattr.py",)},
        {"guest": NO_XATTR_TOOLS + "; and " + MASKED_BY_CAPS}),
    Mutant(
        "xattr-security", "default xattr map: security.* is refused",
        (Edit("msbfs/tree/xattrmap.py",
              ' :bad:all:security.:security.: :ok:all:::"',
              ' :ok:all:::"'),),
        {"tree": ("tests/test_tree_xattr_policy.py"
                  "::test_default_refuses_trusted_and_security_even_for_root",),
         "virtiofs": ("tests/test_virtiofs_xattr.py::test_default_map_refuses_privileged_namespaces",),
         "hostmount": ("tests/test_hostmount_xattr.py",
                       "tests/test_hostmount_policy_mutants.py"
                       "::test_default_map_keeps_host_security_xattrs_away")},
        {"guest": NO_XATTR_TOOLS}),
    # ---- KILL_SUIDGID -----------------------------------------------------------------
    Mutant(
        "kill-suidgid-alone", "SETATTR's KILL_SUIDGID only beside a permitted change",
        (Edit(TREE, "        if (valid & FATTR_KILL_SUIDGID and valid & (FATTR_SIZE | FATTR_UID"
                    " | FATTR_GID)\n                and not valid & FATTR_MODE):",
              "        if valid & FATTR_KILL_SUIDGID and not valid & FATTR_MODE:"),),
        {"tree": ("tests/test_tree_hardening.py::test_kill_suidgid_alone_changes_nothing",),
         "virtiofs": ("tests/test_virtiofs_policy_mutants.py",)},
        {"guest": KERNEL_ONLY_SENDS_BESIDE, "hostmount": KERNEL_ONLY_SENDS_BESIDE}),
    Mutant(
        "kill-suidgid-write", "a WRITE with KILL_SUIDGID clears the set-id bits (tree)",
        (Edit(TREE, "        if kill_suidgid:\n            self._kill_suidgid(h.fd, ctx)\n", ""),),
        {"tree": ("tests/test_tree_creds.py::test_write_and_truncate_kill_suidgid",),
         "virtiofs": ("tests/test_virtiofs_policy_mutants.py",),
         "guest": ("tests/test_guest_policy_mutants.py",)},
        {"hostmount": "msbfs mount does not negotiate HANDLE_KILLPRIV_V2: the host kernel "
                      "clears set-id bits itself with a SETATTR of the mode"}),
    Mutant(
        "kill-suidgid-datapath", "the C data path leaves a KILL_SUIDGID write on a set-id "
        "file to the tree",
        (Edit("csrc/fuse_datapath.c",
              "        if (wi.write_flags & FUSE_WRITE_KILL_SUIDGID) {",
              "        if (0) {"),),
        {"virtiofs": ("tests/test_virtiofs_policy_mutants.py",),
         "guest": ("tests/test_guest_policy_mutants.py",)},
        {"tree": "the C data path is the vhost transport's",
         "hostmount": "the host mount relay serves WRITE with its own code "
                      "(csrc/devfuse.c serve_write), not fuse_datapath.c's; and the host "
                      "kernel never sends FUSE_WRITE_KILL_SUIDGID (msbfs mount does not "
                      "negotiate HANDLE_KILLPRIV_V2)"}),
    Mutant(
        "relay-trunc-open-in-c", "a host caller other than root truncating on open loses the "
        "file's set-id bits as natively: the relay leaves such an OPEN to HostOps (C's "
        "openat, with the daemon's CAP_FSETID, would keep them)",
        (Edit("csrc/devfuse.c", "        return (flags & O_TRUNC) != 0;",
              "        return 0;"),),
        {"hostmount": ("tests/test_hostmount_relay_policy.py"
                       "::test_truncating_open_by_another_user_clears_setid_bits_as_natively",)},
        {"tree": "a rule of the host mount's relay (csrc/devfuse.c), above the tree",
         "virtiofs": RELAY_ONLY, "guest": RELAY_ONLY}),
    *(Mutant(
        name, "nosuid: a host file's set-id bits (hidden from the kernel, so never "
        "cleared by it) go when a caller other than root writes it: the relay leaves "
        "every WRITE and such a caller's opens for writing to HostOps, which clears them "
        "by the opener's rights",
        (Edit("csrc/devfuse.c", old, ""),),
        {"hostmount": ("tests/test_hostmount_relay.py"
                       "::test_same_answers_with_the_relay_on_off_and_natively[nosuid]",)},
        {"tree": "a rule of the host mount's relay (csrc/devfuse.c), above the tree",
         "virtiofs": RELAY_ONLY, "guest": RELAY_ONLY})
      for name, old in (
          ("relay-nosuid-write-in-c", "    if (hidden && op == FUSE_WRITE)\n        return 1;\n"),
          ("relay-nosuid-open-in-c", "        if (hidden && (flags & O_ACCMODE) != O_RDONLY)\n"
                                     "            return 1;\n"))),
    Mutant(
        "relay-killpriv-in-c", "where libfuse negotiated HANDLE_KILLPRIV(_V2), the relay "
        "leaves OPEN, CREATE, WRITE and SETATTR to HostOps, which clears set-id bits by the "
        "opener's rights",
        (Edit("csrc/devfuse.c", "        return op != FUSE_READ;", "        return 0;"),),
        {},
        {"tree": "a rule of the host mount's relay (csrc/devfuse.c), above the tree",
         "virtiofs": RELAY_ONLY, "guest": RELAY_ONLY,
         "hostmount": "equivalent with this libfuse: pyfuse3 3.5's libfuse negotiates neither "
                      "HANDLE_KILLPRIV nor _V2 (INIT flags seen 0x4050b039), so the kernel "
                      "clears set-id bits itself with a SETATTR and the branch never runs"}),
    Mutant(
        "relay-write-without-write-perm", "quota: the C data path (virtio-fs and the host "
        "mount relay) writes only through a handle the table lets C write through "
        "(MSB_FS_WRITE: Tree.data_fd's rule, never a quota tree's handle); any other WRITE "
        "is the tree's",
        (Edit("csrc/fuse_datapath.c", "        int fd = msb_fs_table_get(t, wi.fh, MSB_FS_WRITE);",
              "        int fd = msb_fs_table_get(t, wi.fh, MSB_FS_READ);"),),
        {"hostmount": ("tests/test_hostmount_relay_policy.py"
                       "::test_quota_stops_writes_through_a_handle_open_for_reading_too",)},
        {"tree": "a rule of the C data path (csrc/fuse_datapath.c), above the tree",
         **{front: "not claimed here: quota-datapath claims this front's quota writes "
                   "(the same classify serves it)"
            for front in ("virtiofs", "guest")}}),
    # ---- locks ------------------------------------------------------------------------
    Mutant(
        "lock-reopen-mode", "a lock never re-opens a file with more access than its handle",
        (Edit("msbfs/tree/record_locks.py", "        flags = acc | os.O_CLOEXEC | os.O_NOCTTY",
              "        flags = os.O_RDWR | os.O_CLOEXEC | os.O_NOCTTY"),),
        {"tree": ("tests/test_tree_hardening.py::test_read_lock_never_reopens_for_writing",),
         "virtiofs": ("tests/test_virtiofs_policy_mutants.py",)},
        {"guest": "the guest image has no program taking POSIX record locks (busybox has no "
                  "flock/fcntl-lock applet)",
         "hostmount": NO_HOST_LOCKS}),
    Mutant(
        "lock-write-on-readonly-handle", "a write lock through a read-only handle is EBADF",
        (Edit("msbfs/tree/record_locks.py",
              "        if lock.type == fcntl.F_WRLCK and not h.writable:\n"
              "            raise os_error(errno.EBADF)\n", ""),),
        {"tree": ("tests/test_tree_hardening.py::test_read_lock_never_reopens_for_writing",
                  "tests/test_tree_policy_mutants.py"),
         "virtiofs": ("tests/test_virtiofs_policy_mutants.py",)},
        {"guest": "the guest kernel refuses F_WRLCK on a read-only fd itself (EBADF) before "
                  "any request; and busybox has no lock applet",
         "hostmount": NO_HOST_LOCKS}),
    Mutant(
        "flush-c-ignores-locks", "a FLUSH answered in C while an owner holds record locks "
        "would leave them held: C hands FLUSH to the tree whenever a lock description exists",
        (Edit("csrc/fuse_meta.c",
              "    if (__atomic_load_n(&m->lock_descs, __ATOMIC_ACQUIRE) != 0 || !m->table)",
              "    if (!m->table)"),),
        {"virtiofs": ("tests/test_virtiofs_meta.py::test_flush_with_record_locks_is_python_s",)},
        {"tree": "FLUSH in C is the vhost transport's and the host mount relay's",
         "guest": "the guest image has no program taking POSIX record locks (busybox has no "
                  "flock/fcntl-lock applet)",
         "hostmount": NO_HOST_LOCKS}),
    Mutant(
        "remove-c-ignores-readonly", "readonly: UNLINK/RMDIR answered in C are EROFS too (the "
        "policy's own check_mutation errno, compiled by Policy.c_decisions)",
        (Edit("csrc/fuse_names.c", "    int err = n->mutation_errno;\n", "    int err = 0;\n"),),
        {"virtiofs": ("tests/test_virtiofs_names.py"
                      "::test_unlink_rmdir_c_and_python_reply_the_same_bytes[readonly]",),
         "guest": ("tests/test_guest_policy.py::test_readonly_after_remount",),
         "hostmount": READONLY["hostmount"]},
        {"tree": "UNLINK/RMDIR in C are the vhost transport's and the host mount relay's"}),
    Mutant(
        "open-c-ignores-policy", "readonly/noexec: OPEN answered in C is EROFS/EACCES as "
        "check_open says (its own errnos per flag bits, compiled by msbfs/fastopen.py)",
        (Edit("csrc/fuse_handles.c", "    if (err) {\n        count(&m->open.stats.open_errors",
              "    if (0) {\n        count(&m->open.stats.open_errors"),),
        {"virtiofs": ("tests/test_virtiofs_handles.py"
                      "::test_opens_and_releases_reply_as_python[-readonly]",),
         "guest": ("tests/test_guest_policy.py::test_readonly_after_remount",),
         "hostmount": (*READONLY["hostmount"],
                       "tests/test_policy_mount.py::test_noexec_script_cannot_be_executed")},
        {"tree": "OPEN in C is the vhost transport's and the host mount relay's"}),
    Mutant(
        "release-c-ignores-locks", "a RELEASE answered in C while an owner holds record locks "
        "would leave them held: C hands RELEASE to the tree whenever a lock description exists",
        (Edit("csrc/fuse_handles.c",
              "        if (__atomic_load_n(&m->lock_descs, __ATOMIC_ACQUIRE) != 0\n"
              "            || (ri.release_flags & FUSE_RELEASE_FLOCK_UNLOCK))",
              "        if ((ri.release_flags & FUSE_RELEASE_FLOCK_UNLOCK))"),),
        {"virtiofs": ("tests/test_virtiofs_handles.py::test_record_locks_keep_release_in_python",)},
        {"tree": "RELEASE in C is the vhost transport's and the host mount relay's",
         "guest": "the guest image has no program taking POSIX record locks (busybox has no "
                  "flock/fcntl-lock applet)",
         "hostmount": NO_HOST_LOCKS}),
    Mutant(
        "mkdir-c-ignores-readonly", "readonly: MKDIR answered in C is EROFS too (the policy's "
        "own check_mutation errno, compiled by Policy.c_decisions)",
        (Edit("csrc/fuse_names.c",
              "    if (n->mutation_errno) {\n        count(&n->stats.mkdirs, 1);",
              "    if (0) {\n        count(&n->stats.mkdirs, 1);"),),
        {"virtiofs": ("tests/test_virtiofs_names.py"
                      "::test_mkdir_c_and_python_reply_the_same_bytes[readonly]",),
         "guest": ("tests/test_guest_policy.py::test_readonly_after_remount",),
         "hostmount": READONLY["hostmount"]},
        {"tree": "MKDIR in C is the vhost transport's and the host mount relay's"}),
    Mutant(
        "rename-c-ignores-readonly", "readonly: RENAME/RENAME2 answered in C are EROFS too (the "
        "policy's own check_mutation errno, compiled by Policy.c_decisions)",
        (Edit("csrc/fuse_names2.c", "    int err = m->names.mutation_errno;\n",
              "    int err = 0;\n"),),
        {"virtiofs": ("tests/test_virtiofs_names2.py"
                      "::test_c_and_python_reply_the_same_bytes[rename-readonly]",),
         "guest": ("tests/test_guest_policy.py::test_readonly_after_remount",),
         "hostmount": READONLY["hostmount"]},
        {"tree": "RENAME in C is the vhost transport's and the host mount relay's"}),
    Mutant(
        "names2-c-ignores-quota", "quota: a RENAME over a file, a SYMLINK and a LINK are charged "
        "(the replaced file freed, the new inode, the parent's growth): a tree with a quota "
        "keeps them in Python",
        (Edit("msbfs/fastnames2.py", "    uncharged = 0 if config.charged else 1\n",
              "    uncharged = 1\n"),),
        {"virtiofs": ("tests/test_virtiofs_names2.py"
                      "::test_c_and_python_reply_the_same_bytes[rename-quota]",
                      "tests/test_virtiofs_names2.py"
                      "::test_c_and_python_reply_the_same_bytes[symlink-quota]")},
        {"tree": "RENAME/SYMLINK/LINK in C are the vhost transport's and the host mount relay's",
         "guest": "no guest test compares a quota's charge after renames or symlinks (the "
                  "virtio-fs front compares both devices' charges exactly)",
         "hostmount": "no host-mount test compares a quota's charge after renames or "
                      "symlinks (the virtio-fs front compares both devices' charges exactly)"}),
    Mutant(
        "setattr-c-ignores-readonly", "readonly: a chmod or utimes answered in C is EROFS too "
        "(the policy's own check_mutation errno, compiled by Policy.c_decisions)",
        (Edit("csrc/fuse_setattr.c",
              "    int err = valid & CHANGES ? n->mutation_errno : 0;",
              "    int err = 0;"),),
        {"virtiofs": ("tests/test_virtiofs_setattr.py"
                      "::test_setattr_c_and_python_reply_the_same_bytes[readonly]",),
         "guest": ("tests/test_guest_policy.py::test_readonly_after_remount",),
         "hostmount": READONLY["hostmount"]},
        {"tree": "SETATTR in C is the vhost transport's and the host mount relay's"}),
    Mutant(
        "setattr-c-ignores-nosuid", "nosuid: a chmod answered in C stores no set-id bit (the "
        "mask Policy.stored_mode is, compiled by Policy.c_decisions)",
        (Edit("csrc/fuse_setattr.c",
              "    mode &= 07777 & n->stored_mask;",
              "    mode &= 07777;"),),
        {"virtiofs": ("tests/test_virtiofs_setattr.py"
                      "::test_setattr_c_and_python_reply_the_same_bytes[nosuid]",),
         "guest": ("tests/test_guest_policy.py::test_nosuid_after_remount",),
         "hostmount": ("tests/test_policy_mount.py::test_nosuid_bits_do_not_stick",)},
        {"tree": "SETATTR in C is the vhost transport's and the host mount relay's"}),
    Mutant(
        "setattr-c-chown-kills-nothing", "KILL_SUIDGID with a chown clears the set-id bits "
        "policy.killed_setid_bits names for the caller (a lone S_ISGID too, for a caller not "
        "in the file's group): C answers only a chown with nothing to kill",
        (Edit("csrc/fuse_setattr.c",
              "        if (fstat(fd, &pre) < 0 || (S_ISREG(pre.st_mode) && (pre.st_mode & (S_ISUID | S_ISGID))))",
              "        if (fstat(fd, &pre) < 0)"),),
        {"virtiofs": ("tests/test_virtiofs_setattr.py"
                      "::test_setattr_c_and_python_reply_the_same_bytes[default]",)},
        {"tree": "SETATTR in C is the vhost transport's and the host mount relay's",
         "guest": "a guest's chown comes from root (in every group for the tree) or from "
                  "the owner to a group of its own: only a synthetic request is a stranger's",
         "hostmount": "msbfs mount does not negotiate HANDLE_KILLPRIV_V2: the host kernel "
                      "never sends KILL_SUIDGID (it clears set-id bits itself)"}),
    Mutant(
        "access-c-as-daemon", "ACCESS answers for its caller (fsuid/fsgid), never the daemon: "
        "C switches to the caller as Identities does",
        (Edit("csrc/fuse_names.c",
              "        if (as_caller && msb_switch_creds(ih->uid, ih->gid, (size_t)-1, NULL) < 0) {",
              "        if (0) {"),),
        {"virtiofs": ("tests/test_virtiofs_names.py"
                      "::test_access_c_and_python_reply_the_same_bytes",)},
        {"tree": "ACCESS in C is the vhost transport's", **NO_ACCESS_OP}),
    Mutant(
        "access-c-keeps-caller", "a serving thread is back to the daemon's fsuid/fsgid after an "
        "ACCESS answered in C (later requests on it act as the daemon)",
        (Edit("csrc/fuse_names.c",
              "        if (as_caller)\n            msb_switch_creds(n->own_uid, n->own_gid, (size_t)-1, NULL);",
              "        if (as_caller)\n            (void)0;"),),
        {"virtiofs": ("tests/test_virtiofs_names.py"
                      "::test_access_c_and_python_reply_the_same_bytes",)},
        {"tree": "ACCESS in C is the vhost transport's", **NO_ACCESS_OP}),
    Mutant(
        "getxattr-c-ignores-map", "GETXATTR answered in C reaches the host name the xattr map "
        "gives (or its refusal: security.* is ENODATA by default), compiled by running the "
        "tree's own name rule (msbfs/fastxattr.py), never the client's name as it came",
        (Edit("msbfs/fastxattr.py",
              "        answers = {_answer(tree, name, uid) for uid in CALLERS}",
              "        answers = {name}"),),
        {"virtiofs": ("tests/test_virtiofs_xattr_c.py"
                      "::test_getxattr_listxattr_c_and_python_reply_the_same_bytes[ext4-default]",
                      "tests/test_virtiofs_xattr.py"
                      "::test_default_map_refuses_privileged_namespaces"),
         "hostmount": ("tests/test_hostmount_relay_policy.py"
                       "::test_default_map_hides_the_hosts_file_capabilities",)},
        {"tree": "GETXATTR in C is the vhost transport's and the host mount relay's",
         "guest": NO_XATTR_TOOLS}),
    Mutant(
        "getxattr-c-client-name", "GETXATTR answered in C reads the host's name of the "
        "attribute, not the client's (a renaming map: user.virtiofs.security.*)",
        (Edit("csrc/fuse_xattr.c", "getxattr(path, h->host, rep.u.value",
              "getxattr(path, h->client, rep.u.value"),),
        {"virtiofs": ("tests/test_virtiofs_xattr_c.py"
                      "::test_getxattr_listxattr_c_and_python_reply_the_same_bytes"
                      "[ext4-rename-security]",),
         "hostmount": ("tests/test_hostmount_relay_policy.py"
                       "::test_renaming_map_reads_the_hosts_name_of_a_hot_attribute",)},
        {"tree": "GETXATTR in C is the vhost transport's and the host mount relay's",
         "guest": NO_XATTR_TOOLS}),
    Mutant(
        "getxattr-c-one-answer-for-all", "C answers GETXATTR only of names whose answer "
        "is the same for every caller (msbfs/fastxattr.py): a map that sends a name to "
        "trusted.* gives root the value and anyone else ENODATA, never root's answer",
        (Edit("msbfs/fastxattr.py",
              "        if len(answers) != 1:\n"
              "            continue  # the caller decides: Python's\n"
              "        (a,) = answers\n",
              "        a = _answer(tree, name, 0)\n"),),
        {"virtiofs": ("tests/test_virtiofs_xattr_c.py"
                      "::test_c_answers_only_names_the_rule_decided_for_every_caller",),
         "hostmount": ("tests/test_hostmount_relay_policy.py"
                       "::test_a_map_that_depends_on_the_caller_answers_each_caller",)},
        {"tree": "GETXATTR in C is the vhost transport's and the host mount relay's",
         "guest": NO_XATTR_TOOLS}),
    # ---- per-client budgets -----------------------------------------------------------
    Mutant(
        "budget-handles", "a client's open handles are bounded (EMFILE past the budget)",
        (Edit("csrc/handles.c",
              "    return t->max_handles != MSB_HANDLES_NONE && t->count >= t->max_handles;",
              "    return 0;"),),
        {"tree": ("tests/test_tree_hardening.py::test_handle_budget",),
         "virtiofs": ("tests/test_serve_limits.py"
                      "::test_a_client_that_never_lets_go_cannot_starve_the_daemon",)},
        {"guest": BUDGET_SIZE, "hostmount": BUDGET_SIZE}),
    Mutant(
        "budget-inodes", "a client's inodes are bounded (ENFILE past the budget)",
        (Edit("csrc/inodes.c",
              "    if (t->max_inodes != MSB_INODES_NONE && t->count >= t->max_inodes)\n",
              "    if (0)\n"),),
        {"tree": ("tests/test_tree_hardening.py::test_inode_budget",),
         "virtiofs": ("tests/test_virtiofs_policy_mutants.py",)},
        {"guest": BUDGET_SIZE, "hostmount": BUDGET_SIZE}),
    # ---- the transport ----------------------------------------------------------------
    Mutant(
        "forget-reply-room", "FORGET/BATCH_FORGET are served without room for a reply",
        (Edit("msbfs/fuse/server.py",
              "    Opcode.FORGET: 0, Opcode.BATCH_FORGET: 0, Opcode.INTERRUPT: 0,",
              "    Opcode.INTERRUPT: 0,"),),
        {"virtiofs": ("tests/test_virtiofs_forget.py",),
         "guest": ("tests/test_guest_forget.py",)},
        {"tree": "a rule of the FUSE codec, below the tree", "hostmount": NOT_THIS_TRANSPORT}),
    Mutant(
        "slow-path-grace", "a Python slow request never reads through an fd another "
        "queue's C RELEASE closed and a new open reused: it runs in a grace section",
        (Edit("csrc/fuse_datapath.c",
              "        msb_inodes_hold(inodes);\n    msb_grace_enter();\n",
              "        msb_inodes_hold(inodes);\n"),
         Edit("csrc/fuse_datapath.c",
              "{\n    msb_grace_exit();\n    if (inodes)\n        msb_inodes_unhold(inodes);",
              "{\n    if (inodes)\n        msb_inodes_unhold(inodes);")),
        {"virtiofs": ("tests/test_virtiofs_slow_grace.py",)},
        {"tree": "grace sections are the vhost transport's queue threads'",
         "guest": "the window lies between a Python lookup and its pread (microseconds): "
                  "only an in-process device with a gated lookup opens it at will",
         "hostmount": NOT_THIS_TRANSPORT}),
    # ---- confinement ------------------------------------------------------------------
    Mutant(
        "confine-seccomp", "the seccomp allowlist is loaded",
        (Edit(CONFINE, "    set_no_new_privs()\n    install_seccomp(c.seccomp)\n",
              "    set_no_new_privs()\n"),),
        CONFINE_FRONTS, {"tree": NO_DAEMON, "hostmount": NO_DAEMON}),
    Mutant(
        "confine-caps", "capabilities beyond serving's are dropped (CAP_SYS_ADMIN kept here)",
        (Edit(CONFINE, '    "mknod", "setfcap"))', '    "mknod", "setfcap", "sys_admin"))'),),
        CONFINE_FRONTS, {"tree": NO_DAEMON, "hostmount": NO_DAEMON}),
    Mutant(
        "confine-pidns", "the serving process is in a pid namespace of its own",
        (Edit(CONFINE, '        _check(lib.msb_unshare(CLONE_NEWPID), "unshare(CLONE_NEWPID)")\n',
              ""),),
        CONFINE_FRONTS, {"tree": NO_DAEMON, "hostmount": NO_DAEMON}),
    Mutant(
        "confine-nnp", "no_new_privs is set",
        (Edit(CONFINE, "    drop_capabilities(c.caps)\n    set_no_new_privs()\n",
              "    drop_capabilities(c.caps)\n"),),
        {"virtiofs": ("tests/test_serve_confinement_mutants.py",)},
        {"tree": NO_DAEMON, "hostmount": NO_DAEMON,
         "guest": "guest daemons run with the default seccomp filter, and libseccomp sets "
                  "no_new_privs itself when it loads one (SCMP_FLTATR_CTL_NNP): only "
                  "--seccomp=none shows the layer, which the launcher never passes"}),
)

_SANITY_FRONTS: dict[str, Selection] = {
    "tree": ("tests/test_tree_policy.py::test_nodev",),
    "virtiofs": ("tests/test_virtiofs_serve.py::test_old_dash_o_form_and_policy",),
    "guest": ("tests/test_guest_policy.py::test_nodev_after_remount",),
    "hostmount": ("tests/test_policy_mount.py::test_nodev_no_device_created_or_opened",),
}

#: Not rules: they prove the runner tests the scratch copy. The first breaks an import
#: of the test process itself; the second breaks only building a tree, which for the
#: host mount, the guest and ``msbfs serve`` happens in a daemon the test starts (so
#: the daemons, too, run the scratch copy). Every front must go red on both.
SANITY = (
    Mutant("sanity-import", "the scratch copy is what the test process imports",
           (Edit(POLICY, "\nfrom __future__ import annotations\n",
                 "\nfrom __future__ import annotations\n\n"
                 "raise ImportError('msbfs mutant sanity check')\n"),),
           _SANITY_FRONTS),
    Mutant("sanity-daemon", "the scratch copy is what the daemons run",
           (Edit(TREE, "        if cache not in _TIMEOUTS:\n",
                 "        raise RuntimeError('msbfs mutant sanity check')\n"
                 "        if cache not in _TIMEOUTS:\n"),),
           _SANITY_FRONTS),
)


def front_of(test_file: str) -> str | None:
    """The front a test file belongs to (None: a unit test of no front)."""
    name = os.path.basename(test_file)
    if name.startswith("test_tree_"):
        return "tree"
    if (name.startswith(("test_virtiofs_", "test_serve_"))
            or name in ("test_fuse_server.py", "test_confinement.py")):
        return "virtiofs"
    if name.startswith("test_guest_"):
        return "guest"
    if name == "test_policy_mount.py" or name.startswith("test_hostmount"):
        return "hostmount"
    return None


def selection_files(sel: Selection) -> list[str]:
    """The test files a selection names (its non-option arguments, node ids cut)."""
    files, skip = [], False
    for arg in sel:
        if skip:
            skip = False
        elif arg.startswith("-"):
            skip = arg in ("-k", "-m")
        else:
            files.append(arg.split("::", 1)[0])
    return files


def lint(mutants: tuple[Mutant, ...] | None = None) -> list[str]:
    """What is wrong with the catalogue itself: a selection naming another front's tests,
    a front neither claimed nor explained."""
    problems = []
    for m in mutants or (*MUTANTS, *SANITY):
        for front, sel in m.fronts.items():
            for f in selection_files(sel):
                if front_of(f) != front:
                    problems.append(f"{m.name}: {f} is not a {front} test")
        missing = set(FRONTS) - set(m.fronts) - set(m.unobservable)
        if missing:
            problems.append(f"{m.name}: fronts neither claimed nor explained: {sorted(missing)}")
    return problems


def by_name() -> dict[str, Mutant]:
    return {m.name: m for m in (*MUTANTS, *SANITY)}
