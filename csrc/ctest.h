/* What the standalone C tests share (csrc/test_*.c, built by tests/test_*_c.py under
 * ASan/UBSan): CHECK counts a failed condition and goes on, so one run reports them all. */
#ifndef MSBFS_CTEST_H
#define MSBFS_CTEST_H

#include <stdio.h>

static int failures;
#define CHECK(cond)                                                                   \
    do {                                                                              \
        if (!(cond)) {                                                                \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);  \
            failures++;                                                               \
        }                                                                             \
    } while (0)

#endif
