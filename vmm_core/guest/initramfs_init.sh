#!/bin/busybox sh
# Cube initramfs: load the virtio stack, mount the guest base image read-only, hand over to the
# guest init. Kept tiny: every line here runs on every cold boot.
/bin/busybox mkdir -p /proc /sys /dev /newroot
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox --install -s /bin

fail() { echo "cube-initramfs: $*" >/dev/console; sleep 1; poweroff -f; }

# Modules in dependency order (virtio_ring, virtio, virtio_mmio, then devices), computed at build.
while read -r mod; do
  insmod "/lib/modules/$mod" 2>/dev/null || echo "cube-initramfs: insmod $mod failed" >/dev/console
done < /modules.order

# The base image is the virtio disk whose serial is cube-base (order of mmio devices is not fixed).
root_serial=cube-base
root_fstype=erofs
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    cube.root_serial=*) root_serial="${arg#cube.root_serial=}" ;;
    cube.root_fstype=*) root_fstype="${arg#cube.root_fstype=}" ;;
  esac
done
dev=""
for i in $(seq 1 200); do
  for s in /sys/block/vd*/serial; do
    [ -e "$s" ] || continue
    if [ "$(cat "$s")" = "$root_serial" ]; then dev="/dev/$(basename "$(dirname "$s")")"; break 2; fi
  done
  sleep 0.02
done
[ -n "$dev" ] || fail "no disk with serial $root_serial"
mount -t "$root_fstype" -o ro "$dev" /newroot || fail "mount $dev ($root_fstype) failed"
mount --move /dev /newroot/dev
umount /proc /sys
exec switch_root /newroot /sbin/cube-init
