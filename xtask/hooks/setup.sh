#!/bin/sh
# mmdebstrap --setup-hook: pin apt to image.lock before anything is downloaded.
# $1: the new root; $2: apt preferences rendered from image.lock (may be empty).
set -eu
mkdir -p "$1/etc/apt/preferences.d"
cp "$2" "$1/etc/apt/preferences.d/pi2pi-lock"
