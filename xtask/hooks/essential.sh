#!/bin/sh
# mmdebstrap --essential-hook: configure initramfs-tools before the kernel is installed, so the
# one (emulated, slow) mkinitramfs run builds a small initrd from a module list instead of
# MODULES=most. $1: the new root; $PI2PI_HOOKS/modules: one module name per line.
set -eu
mkdir -p "$1/etc/initramfs-tools/conf.d"
printf 'MODULES=list\nCOMPRESS=zstd\n' > "$1/etc/initramfs-tools/conf.d/pi2pi.conf"
cp "$PI2PI_HOOKS/modules" "$1/etc/initramfs-tools/modules"
