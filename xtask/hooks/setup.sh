#!/bin/sh
# mmdebstrap --setup-hook: pin apt to the lock before anything is downloaded.
# $1: the new root. $PI2PI_HOOKS/preferences: apt preferences rendered from the lock (may be empty).
set -eu
mkdir -p "$1/etc/apt/preferences.d"
cp "$PI2PI_HOOKS/preferences" "$1/etc/apt/preferences.d/pi2pi-lock"
