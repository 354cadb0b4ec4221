"""Writes docs/images/icon.png, the pack's Comfy Registry icon (pyproject.toml [tool.comfy] Icon).

Standard library only, deterministic: `python3 scripts/make_icon.py` gives the same bytes everywhere.
The picture: the gate (a sigmoid, the pack's fidelity / prompt-alignment switch) crossing a subject
box (the subject-reference half), on a rounded square. 256 x 256 RGBA, 4x4 supersampled.
"""

import math
import os
import struct
import zlib

SIZE, SS = 256, 4
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "docs", "images", "icon.png")

TOP, BOTTOM = (43, 29, 92), (15, 110, 115)          # indigo to teal
GATE, BOX = (255, 159, 67), (245, 245, 250)           # orange curve, white box


def _mix(a, b, t):
    return tuple(x + (y - x) * t for x, y in zip(a, b))


def _inside_rounded(x, y, r=0.18):
    cx, cy = min(max(x, r), 1 - r), min(max(y, r), 1 - r)
    return (x - cx) ** 2 + (y - cy) ** 2 <= r * r


def _gate_distance(x, y):
    """Distance from (x, y) to the curve y = 0.5 - 0.28 * tanh((x - 0.5) / 0.09), in unit coordinates."""
    k = 0.09
    t = math.tanh((x - 0.5) / k)
    fy = 0.5 - 0.28 * t
    slope = -0.28 * (1 - t * t) / k
    return abs(y - fy) / math.sqrt(1 + slope * slope)


def _on_box(x, y, x0=0.56, y0=0.56, x1=0.84, y1=0.84, w=0.022):
    inside_outer = x0 - w <= x <= x1 + w and y0 - w <= y <= y1 + w
    inside_inner = x0 + w < x < x1 - w and y0 + w < y < y1 - w
    return inside_outer and not inside_inner


def pixel(px, py):
    acc = [0.0, 0.0, 0.0, 0.0]
    for sy in range(SS):
        for sx in range(SS):
            x, y = (px + (sx + 0.5) / SS) / SIZE, (py + (sy + 0.5) / SS) / SIZE
            if not _inside_rounded(x, y):
                continue
            color = _mix(TOP, BOTTOM, y)
            if _on_box(x, y):
                color = BOX
            if _gate_distance(x, y) < 0.035:
                color = GATE
            for i in range(3):
                acc[i] += color[i]
            acc[3] += 255
    n = SS * SS
    alpha = acc[3] / n
    if alpha == 0:
        return (0, 0, 0, 0)
    covered = acc[3] / 255
    return tuple(round(c / covered) for c in acc[:3]) + (round(alpha),)


def png(width, height, rows):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xffffffff)
    raw = b"".join(b"\x00" + bytes(v for p in row for v in p) for row in rows)
    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)        # 8-bit RGBA
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def main():
    rows = [[pixel(x, y) for x in range(SIZE)] for y in range(SIZE)]
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "wb") as f:
        f.write(png(SIZE, SIZE, rows))
    print(f"wrote {os.path.relpath(OUT, ROOT)} ({SIZE}x{SIZE}, {os.path.getsize(OUT)} bytes)")


if __name__ == "__main__":
    main()
