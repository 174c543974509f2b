#!/bin/sh
# mmdebstrap --essential-hook: configure initramfs-tools before the kernel is installed, so the
# one (emulated, slow) mkinitramfs run builds a small initrd from a module list instead of
# MODULES=most. $1: the new root; $PI2PI_HOOKS/modules: one module name per line.
# FSTYPE: the root's type, which initramfs-tools otherwise probes on the build machine (where the
# card's root does not exist) and then leaves fsck out of the initrd ("Warning: fsck not present,
# so skipping root file system" on every boot).
# COMPRESS=gzip: what mkinitramfs fell back to anyway (the base has no zstd; xz would save 3 MB but
# cost a Pi Zero seconds of every boot). The hook leaves udev's hardware database (13 MB, a third of
# the initrd) out: nothing the initrd does to find and check the root looks anything up in it.
set -eu
mkdir -p "$1/etc/initramfs-tools/conf.d" "$1/etc/initramfs-tools/hooks"
printf 'MODULES=list\nCOMPRESS=gzip\nFSTYPE=ext4\n' > "$1/etc/initramfs-tools/conf.d/pi2pi.conf"
cp "$PI2PI_HOOKS/modules" "$1/etc/initramfs-tools/modules"
cat > "$1/etc/initramfs-tools/hooks/pi2pi-no-hwdb" <<'HOOK'
#!/bin/sh
# pi2pi: the initrd finds and checks the root without udev's hardware database.
case "$1" in prereqs) echo udev; exit 0 ;; esac
rm -f "$DESTDIR/usr/lib/udev/hwdb.bin" "$DESTDIR/lib/udev/hwdb.bin"
HOOK
chmod 755 "$1/etc/initramfs-tools/hooks/pi2pi-no-hwdb"

# One initramfs build, not two: the kernel's postinst builds one and the initramfs-tools trigger
# that later packages pull builds it again (each a minute under emulation). Until the customize
# hook runs the real update-initramfs once, the name is a no-op; dpkg puts the real one aside.
chroot "$1" dpkg-divert --quiet --local --rename --divert /usr/sbin/update-initramfs.pi2pi --add /usr/sbin/update-initramfs
printf '#!/bin/sh\n# pi2pi: the base build runs the real update-initramfs once, at its end.\nexit 0\n' > "$1/usr/sbin/update-initramfs"
chmod 755 "$1/usr/sbin/update-initramfs"
