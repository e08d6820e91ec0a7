#!/usr/bin/env bash
# Installs the Debian packages Bora needs to build, test and benchmark.
# Idempotent; safe to run on every CI run. Needs root (or sudo).
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# build: libclang for RocksDB's bindgen, a C++ compiler for RocksDB itself
# runtime: qemu-utils (qemu-img, qemu-nbd, qemu-storage-daemon), e2fsprogs (mkfs.ext4 -d)
# tests: gdisk/fdisk (partition tables), dosfstools/mtools (FAT), ntfs-3g (NTFS) build
#   disk images for `bora files` without mounting anything
# bench: restic and zstd as the references the benchmark is judged against, bc for its sums
PKGS=(clang libclang-dev g++ make pkg-config qemu-utils e2fsprogs zstd restic bc
      gdisk fdisk dosfstools mtools ntfs-3g)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get -o DPkg::Lock::Timeout=300 update -q
  $SUDO apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends "${missing[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install a Rust toolchain (rustup) first" >&2
  exit 1
fi
