#!/bin/sh
# mmdebstrap --customize-hook: the few steps that must run inside the (emulated) root, then
# removal of everything that would make two builds differ or two cards share an identity.
# $1: the new root. From xtask's environment: PI2PI_HOOKS (where the lock's inputs go),
# PI2PI_USER, PI2PI_LOCALE, PI2PI_PASSWORD_HASH ('' = locked), SOURCE_DATE_EPOCH.
set -eu
root="$1"; out="$PI2PI_HOOKS"; user="$PI2PI_USER"; locale="$PI2PI_LOCALE"; hash="$PI2PI_PASSWORD_HASH"; epoch="$SOURCE_DATE_EPOCH"

# What was installed, and the archive's SHA-256 of each .deb, for image.lock.
cp "$root/var/lib/dpkg/status" "$out/dpkg-status"
cat "$root"/var/lib/apt/lists/*_Packages > "$out/Packages"
rm -f "$root/etc/apt/preferences.d/pi2pi-lock"

# The one initramfs build (essential.sh put update-initramfs aside). Its post-update hook
# (raspi-firmware's) copies the kernel, the initrd and the dtbs to /boot/firmware.
rm "$root/usr/sbin/update-initramfs"
chroot "$root" dpkg-divert --quiet --local --rename --remove /usr/sbin/update-initramfs
chroot "$root" update-initramfs -c -k all

# Each root slot keeps its kernel and initrd in its own /boot, where U-Boot's boot.scr loads them
# (through the /vmlinuz and /initrd.img links apt keeps). raspi-firmware's hooks would copy a
# newer kernel to the boot partition both slots share and rewrite its config.txt to start that
# kernel directly, past U-Boot and the slots. They are diverted (dpkg keeps the package's
# versions beside them, as *.distrib, which run-parts skips), and the card's layer puts pi2pi's
# hook in their place: raspi-firmware's own postinst runs the kernel hook by name.
for hook in /etc/kernel/postinst.d/z50-raspi-firmware /etc/kernel/postrm.d/z50-raspi-firmware \
            /etc/initramfs/post-update.d/z50-raspi-firmware; do
    if [ -e "$root$hook" ]; then
        chroot "$root" dpkg-divert --quiet --local --rename --add "$hook"
    fi
done

sed -i "s/^# *\($locale \)/\1/" "$root/etc/locale.gen"
chroot "$root" locale-gen >/dev/null

chroot "$root" useradd --create-home --shell /bin/bash --groups sudo,adm,dialout "$user"
if [ -n "$hash" ]; then
    chroot "$root" usermod --password "$hash" "$user"
fi

# Identity belongs to each card (layers) or each boot (machine-id), never to the shared base.
rm -f "$root"/etc/ssh/ssh_host_*
: > "$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"
# fake-hwclock's postinst saved the build machine's clock; a Pi (no RTC) starts from the build's
# epoch instead, which also keeps two builds identical.
date -u -d "@$epoch" '+%Y-%m-%d %H:%M:%S' > "$root/etc/fake-hwclock.data"
# Build-time records with wall-clock times in them.
rm -f "$root"/var/log/dpkg.log "$root"/var/log/alternatives.log "$root"/var/log/apt/*.log \
      "$root/var/cache/ldconfig/aux-cache" "$root"/var/cache/debconf/*-old "$root"/var/lib/dpkg/*-old
