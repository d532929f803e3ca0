#!/bin/sh
# Open descriptors: unlink while open, several handles, FIFOs.
. "$(dirname "$0")/tap.sh"
scratch
plan 5

printf 'still here' > f
exec 3< f
rm f
is "read an unlinked file through an open fd" "$(cat <&3)" "still here"
exec 3<&-
printf abc > g
exec 4< g 5>> g
printf def >&5
is "a second handle sees the first one's write" "$(cat <&4)" abcdef
exec 4<&- 5>&-
ok "mkfifo" mkfifo p
is "fifo type" "$(stat -c %F p)" fifo
(printf piped > p &)
is "a fifo carries data" "$(cat p)" piped
done_testing
