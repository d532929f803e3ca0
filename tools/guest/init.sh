#!/bin/busybox sh
# /init of the msbfs guest initramfs: mount the kernel filesystems, load the modules the
# kernel does not have built in (virtio_blk, ext4 and their dependencies, listed in load
# order by the image builder), then hand PID 1 to msb-agent, which runs the host's commands
# over the virtio-serial port. Mounting volumes is the host's first command, so a failure
# there is reported as that command's stderr rather than lost on the console.
/bin/busybox --install -s /bin
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mkdir -p /proc /sys /dev /tmp /run /mnt
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
hostname msb-guest
ip link set lo up 2>/dev/null
while read -r module; do
	insmod "/lib/modules/$module" || echo "msb-init: cannot load $module" >&2
done < /etc/msb-modules
# The agent port is the first virtio device's first port: the launcher puts
# virtio-serial first on the PCI bus (see msbfs/launcher/qemu.py).
exec /sbin/msb-agent /dev/vport0p1
