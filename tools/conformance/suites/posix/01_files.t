#!/bin/sh
# Regular files: create, write, append, overwrite at an offset, truncate, sparse files.
. "$(dirname "$0")/tap.sh"
scratch
plan 10

ok "create an empty file" touch empty
is "empty file has size 0" "$(stat -c %s empty)" 0
printf 'hello\n' > f
is "write and read back" "$(cat f)" hello
printf 'world\n' >> f
is "append" "$(cat f | tr '\n' ' ')" "hello world "
printf 'J' | dd of=f bs=1 seek=6 conv=notrunc 2>/dev/null
is "overwrite at an offset" "$(sed -n 2p f)" Jorld
truncate -s 3 f 2>/dev/null || dd if=/dev/null of=f bs=1 seek=3 2>/dev/null
is "truncate shrinks" "$(cat f)" hel
dd if=/dev/null of=sparse bs=1 seek=1048576 2>/dev/null
is "truncate grows (sparse)" "$(stat -c %s sparse)" 1048576
is "a hole reads as zeros" "$(dd if=sparse bs=1 skip=4096 count=4 2>/dev/null | od -An -tx1 | tr -d ' \n')" 00000000
dd if=/dev/zero of=big bs=65536 count=64 2>/dev/null
is "4 MiB written in 64 KiB blocks" "$(stat -c %s big)" 4194304
fails_with "open of a missing file is ENOENT" "No such file or directory" cat nothing
done_testing
