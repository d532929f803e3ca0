/* C answers for GETXATTR and LISTXATTR on the virtio-fs path (issue 11), dispatched from
 * msb_meta_serve (csrc/fuse_meta.c) with fuse_meta.c's rule: answer only what is
 * unambiguous, hand everything else back to Python untouched (it checks everything and
 * replies the right errno), count nothing before the decision to answer.
 *
 * Why: every write() asks for security.capability first (the kernel's
 * file_remove_privs), so an untar's requests are a fifth GETXATTR, nearly all of them
 * security.capability answered ENODATA.
 *
 * Which host name a client's xattr name reaches, or which errno refuses it, is the xattr
 * map's and the policy's (msbfs/tree/policy.py XattrRule behind Tree._xattr_name): ONE
 * definition. Python runs it for a few hot client names (msbfs/fastxattr.py) and writes
 * each answer here, in `hot`: the host name, or the errno. A name whose answer depends
 * on the caller (a map sending it to trusted.*: root reads it, others get ENODATA) is not
 * written; nor is any other name. C compares the request's name with these bytes and
 * nothing else: it knows no rule.
 *
 * GETXATTR (Tree.getxattr, FuseSession._getxattr): a hot name, NUL-terminated, in a
 * body of at most the fuse_getxattr_in and 256 bytes more, on a node in the table on the
 * root's device (others: Python's). The value is read as the tree reads it: getxattr(2)
 * on /proc/self/fd/N of the inode's O_PATH fd, as the daemon (the tree switches no
 * credentials for it). Size 0: fuse_getxattr_out with the length; a value larger than
 * the size or the reply room: ERANGE; getxattr's errno otherwise, as the codec maps an
 * OSError. A value larger than the stack buffer (MSB_XATTR_VALUE_MAX) goes to Python.
 *
 * LISTXATTR (Tree.listxattr): only a node whose host list is empty (most files): the
 * list is then empty whatever the rules would hide, and listxattr(2)'s errno is the
 * reply. A non-empty list is filtered by XattrRule.client_name: Python's.
 *
 * Without xattrs (`off`: Tree.xattr false) every GETXATTR/LISTXATTR is ENOSYS, as
 * FuseSession._xattrs_off answers before parsing anything.
 *
 * All zero (calloc) means "everything to Python". Written before msb_meta.enabled. */
#ifndef MSBFS_FUSE_XATTR_H
#define MSBFS_FUSE_XATTR_H

#include <stdint.h>

struct fuse_in_header;
struct msb_meta;
struct msb_vq;
struct msb_chain;

#define MSB_XATTR_HOT 8              /* hot client names Python may table */
#define MSB_XATTR_CLIENT_MAX 63      /* a hot client name's longest (XATTR_NAME_MAX is 255) */
#define MSB_XATTR_HOST_MAX 255       /* XATTR_NAME_MAX: Tree._xattr_name refuses longer */
#define MSB_XATTR_VALUE_MAX 4096     /* values read on the stack; larger: Python's */

struct msb_xattr_hot {
    uint32_t client_len;               /* 0: an unused slot */
    int err;                           /* > 0: the errno that refuses the name */
    char client[MSB_XATTR_CLIENT_MAX + 1];
    char host[MSB_XATTR_HOST_MAX + 1];   /* err 0: the host's name, NUL-terminated */
};

struct msb_xattr_stats {
    uint64_t getxattrs, getxattr_ns, listxattrs, enosys;
};

struct msb_xattr {
    int off;                           /* Tree.xattr false: ENOSYS (FuseSession._xattrs_off) */
    int get;                           /* GETXATTR of the hot names answered here */
    int list;                          /* LISTXATTR of nodes with no xattrs answered here */
    struct msb_xattr_hot hot[MSB_XATTR_HOT];
    struct msb_xattr_stats stats;
};

/* GETXATTR or LISTXATTR (ih->opcode), with msb_meta_serve's contract: 1 answered and
 * pushed; 0 Python's; < 0 the push's -errno. */
int msb_xattr_serve(struct msb_meta *m, struct msb_vq *vq, struct msb_chain *c,
                    const struct fuse_in_header *ih);

/* For msbfs/fastxattr.py: the configuration inside m, and the counters. */
struct msb_xattr *msb_meta_xattr(struct msb_meta *m);
void msb_xattr_stats(struct msb_meta *m, struct msb_xattr_stats *out);

#endif
