#!/bin/sh
# rename(2) through mv: over files, directories, into subdirectories.
. "$(dirname "$0")/tap.sh"
scratch
plan 8

printf one > a
ok "rename a file" mv a b
fails_with "the old name is gone" "No such file or directory" cat a
printf two > c
ok "rename over an existing file" mv c b
is "the target has the new content" "$(cat b)" two
mkdir d e
ok "rename a directory over an empty one" mv -T d e
mkdir f; touch f/x; mkdir g; touch g/y
fails_with "rename over a non-empty directory is ENOTEMPTY" "not empty" mv -T f g
ok "rename into a subdirectory" mv b e/b
is "found there" "$(cat e/b)" two
done_testing
