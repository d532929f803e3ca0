#!/bin/sh
# Directories: mkdir/rmdir and their errnos, listing many entries.
. "$(dirname "$0")/tap.sh"
scratch
plan 10

ok "mkdir" mkdir d
fails_with "mkdir of an existing name is EEXIST" "File exists" mkdir d
ok "mkdir -p nested" mkdir -p d/a/b/c
fails_with "rmdir of a non-empty directory is ENOTEMPTY" "not empty" rmdir d/a
touch file
fails_with "rmdir of a file is ENOTDIR" "Not a directory" rmdir file
fails_with "a file used as a directory is ENOTDIR" "Not a directory" touch file/x
fails_with "unlink of a directory is EISDIR" "s a directory" rm d/a/b/c
ok "rmdir of an empty directory" rmdir d/a/b/c
mkdir many
i=0
while [ $i -lt 500 ]; do : > "many/f$i"; i=$((i + 1)); done
is "readdir sees all 500 entries" "$(ls many | wc -l | tr -d ' ')" 500
is "readdir sees . and .." "$(ls -a many | grep -c '^\.\.\?$')" 2
done_testing
