#!/bin/sh
# Extended attributes (user namespace), when the attr tools are there.
. "$(dirname "$0")/tap.sh"
scratch
plan 4

touch f
if ! command -v setfattr >/dev/null 2>&1; then
    skip "setfattr missing"; skip "setfattr missing"; skip "setfattr missing"; skip "setfattr missing"
    exit 0
fi
ok "set a user xattr" setfattr -n user.colour -v blue f
is "get it back" "$(getfattr --only-values -n user.colour f 2>/dev/null)" blue
ok "remove it" setfattr -x user.colour f
fails_with "a missing xattr is ENODATA" "No such attribute" getfattr -n user.colour f
done_testing
