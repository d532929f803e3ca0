#!/bin/sh
# Attributes: mode, owner, times, umask, name length.
. "$(dirname "$0")/tap.sh"
scratch
plan 8

touch f
chmod 640 f
is "chmod" "$(stat -c %a f)" 640
(umask 027; : > masked)
is "umask applies on create" "$(stat -c %a masked)" 640
(umask 022; mkdir md)
is "umask applies on mkdir" "$(stat -c %a md)" 755
# TZ, not a ' UTC' suffix: busybox touch -d (every guest) takes no zone name.
TZ=UTC touch -m -d '2001-02-03 04:05:06' f
is "explicit mtime" "$(stat -c %Y f)" 981173106
if [ "$(id -u)" = 0 ]; then
    chown 1234:5678 f
    is "chown as root" "$(stat -c %u:%g f)" 1234:5678
else
    skip "chown needs root"
fi
long=$(printf '%0255d' 0)
ok "a 255-byte name" touch "$long"
fails_with "a 256-byte name is ENAMETOOLONG" "too long" touch "${long}1"
ln -s f sl
is "symlink is reported as such" "$(stat -c %F sl)" "symbolic link"
done_testing
