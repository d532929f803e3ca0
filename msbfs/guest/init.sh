#!/bin/busybox sh
# /init of the msbfs guest initramfs: mount the kernel filesystems, load the modules the
# kernel does not have built in (virtio_blk, ext4 and their dependencies, listed in load
# order by the image builder) when there is a disk, then hand PID 1 to msb-agent, which runs the host's commands
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
# The modules serve disks only: skip them (a few hundred ms under TCG) when QEMU gave
# the guest no virtio-blk device (PCI id 0x1001 transitional, 0x1042 modern).
has_disk=
for dev in /sys/bus/pci/devices/*; do
	read -r id < "$dev/device"
	case $id in 0x1001|0x1042) has_disk=1 ;; esac
done
if [ -n "$has_disk" ]; then
	while read -r module; do
		insmod "/lib/modules/$module" || echo "msb-init: cannot load $module" >&2
	done < /etc/msb-modules
fi
# The agent port is the first virtio device's first port: the launcher puts
# virtio-serial first on the PCI bus (see msbfs/launcher/qemu.py).
exec /sbin/msb-agent /dev/vport0p1
