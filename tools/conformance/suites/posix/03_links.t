#!/bin/sh
# Hard links and symbolic links.
. "$(dirname "$0")/tap.sh"
scratch
plan 10

printf data > f
ok "hard link" ln f g
is "link count 2" "$(stat -c %h f)" 2
is "both names share an inode" "$(stat -c %i g)" "$(stat -c %i f)"
rm f
is "unlink keeps the other name" "$(cat g)" data
ok "symlink" ln -s g s
is "readlink" "$(readlink s)" g
is "read through a symlink" "$(cat s)" data
ln -s nowhere dangling
fails_with "a dangling symlink is ENOENT" "No such file or directory" cat dangling
ln -s loop1 loop2; ln -s loop2 loop1
fails_with "a symlink loop is ELOOP" "Too many levels of symbolic links" cat loop1
mkdir d
fails_with "hard link to a directory is EPERM" "not" ln d dlink
done_testing
