#!/usr/bin/env python3
"""Draw Piko Connector's icons as PNG (and ICO/ICNS wrappers) with the standard library only.

Run from anywhere: `python3 connector-gui/icons/draw.py`. The outputs are committed, so a build
needs neither this script nor an image library; rerun it only to change a drawing.

Tray icons differ in shape as well as colour, so that they read without colour vision and on
light or dark panels (each has a dark rim around a light fill, or the reverse):
- tray-connected.png: a filled green disc with a white check mark;
- tray-warning.png: a filled amber disc with a dark exclamation mark;
- tray-off.png: a grey ring (outline only) with nothing inside.
"""

import math
import os
import struct
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
SAMPLES = 4  # supersampling per axis, for smooth edges


def png(width, height, pixels):
    """Encode RGBA rows (list of bytearrays) as a PNG file's bytes."""
    raw = b"".join(b"\x00" + bytes(row) for row in pixels)

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def render(size, layers):
    """Composite `layers` (colour, inside(x, y) in unit coordinates) over a transparent square."""
    rows = []
    for py in range(size):
        row = bytearray()
        for px in range(size):
            r = g = b = a = 0.0
            for colour, inside in layers:
                hits = 0
                for sy in range(SAMPLES):
                    for sx in range(SAMPLES):
                        x = (px + (sx + 0.5) / SAMPLES) / size
                        y = (py + (sy + 0.5) / SAMPLES) / size
                        if inside(x, y):
                            hits += 1
                cov = hits / (SAMPLES * SAMPLES) * (colour[3] / 255 if len(colour) > 3 else 1.0)
                # "over" compositing in straight alpha
                na = cov + a * (1 - cov)
                if na > 0:
                    r = (colour[0] * cov + r * a * (1 - cov)) / na
                    g = (colour[1] * cov + g * a * (1 - cov)) / na
                    b = (colour[2] * cov + b * a * (1 - cov)) / na
                a = na
            row += bytes((round(r), round(g), round(b), round(a * 255)))
        rows.append(row)
    return png(size, size, rows)


def disc(cx, cy, radius):
    return lambda x, y: (x - cx) ** 2 + (y - cy) ** 2 <= radius**2


def ring(cx, cy, outer, inner):
    return lambda x, y: inner**2 <= (x - cx) ** 2 + (y - cy) ** 2 <= outer**2


def segment(ax, ay, bx, by, half_width):
    """A thick line with round caps."""

    def inside(x, y):
        dx, dy = bx - ax, by - ay
        t = max(0.0, min(1.0, ((x - ax) * dx + (y - ay) * dy) / (dx * dx + dy * dy)))
        qx, qy = ax + t * dx, ay + t * dy
        return (x - qx) ** 2 + (y - qy) ** 2 <= half_width**2

    return inside


def rounded_square(margin, radius):
    def inside(x, y):
        lo, hi = margin + radius, 1 - margin - radius
        cx, cy = min(max(x, lo), hi), min(max(y, lo), hi)
        return (x - cx) ** 2 + (y - cy) ** 2 <= radius**2

    return inside


GREEN, GREEN_RIM = (22, 163, 74), (10, 80, 36)
AMBER, AMBER_RIM = (245, 158, 11), (120, 60, 0)
GREY, GREY_RIM = (150, 150, 150), (60, 60, 60)
WHITE, INK = (255, 255, 255), (40, 24, 0)
ACCENT = (37, 99, 235)


def tray_connected(size):
    return render(size, [
        (GREEN_RIM, disc(0.5, 0.5, 0.47)),
        (GREEN, disc(0.5, 0.5, 0.41)),
        (WHITE, segment(0.30, 0.52, 0.44, 0.66, 0.065)),
        (WHITE, segment(0.44, 0.66, 0.71, 0.37, 0.065)),
    ])


def tray_warning(size):
    return render(size, [
        (AMBER_RIM, disc(0.5, 0.5, 0.47)),
        (AMBER, disc(0.5, 0.5, 0.41)),
        (INK, segment(0.5, 0.25, 0.5, 0.56, 0.07)),
        (INK, disc(0.5, 0.74, 0.075)),
    ])


def tray_off(size):
    return render(size, [
        (GREY_RIM, ring(0.5, 0.5, 0.47, 0.29)),
        (GREY, ring(0.5, 0.5, 0.43, 0.33)),
    ])


def app_icon(size):
    # The app icon: a blue tile with a white "tunnel" (a ring) and the service inside (a dot).
    return render(size, [
        (ACCENT, rounded_square(0.04, 0.2)),
        (WHITE, ring(0.5, 0.5, 0.34, 0.24)),
        (WHITE, disc(0.5, 0.5, 0.12)),
    ])


def ico(png_bytes, size):
    # An ICO file may hold a PNG image as is (Windows Vista and later).
    header = struct.pack("<HHH", 0, 1, 1)
    entry = struct.pack("<BBBBHHII", size % 256, size % 256, 0, 0, 1, 32, len(png_bytes), 22)
    return header + entry + png_bytes


def icns(png_bytes):
    # ic08 = 256x256 PNG; enough for the DMG bundle.
    body = b"ic08" + struct.pack(">I", len(png_bytes) + 8) + png_bytes
    return b"icns" + struct.pack(">I", len(body) + 8) + body


def write(name, data):
    with open(os.path.join(HERE, name), "wb") as f:
        f.write(data)


def main():
    for name, draw in [("tray-connected", tray_connected), ("tray-warning", tray_warning), ("tray-off", tray_off)]:
        write(f"{name}.png", draw(64))
    big = app_icon(256)
    write("icon.png", big)
    write("128x128.png", app_icon(128))
    write("32x32.png", app_icon(32))
    write("icon.ico", ico(big, 256))
    write("icon.icns", icns(big))


if __name__ == "__main__":
    main()
