#!/bin/sh
# mmdebstrap --essential-hook: configure initramfs-tools before the kernel is installed, so the
# one (emulated, slow) mkinitramfs run builds a small initrd from a module list instead of
# MODULES=most. $1: the new root; $PI2PI_HOOKS/modules: one module name per line.
# FSTYPE: the root's type, which initramfs-tools otherwise probes on the build machine (where the
# card's root does not exist) and then leaves fsck out of the initrd ("Warning: fsck not present,
# so skipping root file system" on every boot).
set -eu
mkdir -p "$1/etc/initramfs-tools/conf.d"
printf 'MODULES=list\nCOMPRESS=zstd\nFSTYPE=ext4\n' > "$1/etc/initramfs-tools/conf.d/pi2pi.conf"
cp "$PI2PI_HOOKS/modules" "$1/etc/initramfs-tools/modules"
