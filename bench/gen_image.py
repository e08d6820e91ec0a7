#!/usr/bin/env python3
"""Writes a dense "mixed" disk image for the backup benchmark.

Regions of 64 KiB alternate between random bytes and log-like text (compressible, like
/var/log), every 4 KiB block carrying its own block number, so no two 4 KiB blocks are
alike and deduplication cannot help: the benchmark measures read + hash + compress +
store, not dedup. Deterministic for a given seed.

usage: gen_image.py PATH SIZE_MIB [SEED]
"""
import random
import sys

BLOCK = 4096
REGION = 64 * 1024


def log_block(n: int, rng: random.Random) -> bytes:
    lines = []
    size = 0
    i = 0
    while size < BLOCK:
        line = (
            f"2026-11-28T03:{(n // 60) % 60:02d}:{n % 60:02d}.{i:03d}Z web-{n % 17:02d} "
            f"app[{1000 + n % 977}]: block={n} req={rng.randrange(1 << 30)} "
            f"GET /api/v1/items/{rng.randrange(100000)} status=200 "
            f"bytes={rng.randrange(65536)} ms={rng.randrange(500)}\n"
        )
        lines.append(line)
        size += len(line)
        i += 1
    return "".join(lines).encode()[:BLOCK]


def main() -> None:
    path, size_mib = sys.argv[1], int(sys.argv[2])
    seed = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    rng = random.Random(seed)
    blocks = size_mib * 1024 * 1024 // BLOCK
    per_region = REGION // BLOCK
    with open(path, "wb") as f:
        buf = []
        for n in range(blocks):
            if (n // per_region) % 2 == 0:
                b = bytearray(rng.randbytes(BLOCK))
                b[:8] = n.to_bytes(8, "little")
                buf.append(bytes(b))
            else:
                buf.append(log_block(n, rng))
            if len(buf) == 256:
                f.write(b"".join(buf))
                buf = []
        f.write(b"".join(buf))


if __name__ == "__main__":
    main()
