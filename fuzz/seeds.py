#!/usr/bin/env python3
"""Writes the small seed corpora under fuzz/corpus/<target>/seed-*.

Each seed follows the input layout documented at the top of its target.
Run from anywhere: python3 fuzz/seeds.py
"""

import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def crc32c(data, crc=0):
    crc ^= 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


assert crc32c(b"123456789") == 0xE3069283


def frame(kind, payload, flags=0, reserved=0):
    h = struct.pack(">IBBH", len(payload), kind, flags, reserved)
    return h + struct.pack(">I", crc32c(h + payload)) + payload


HEARTBEAT = frame(2, b"")


def envelope(to, frm, cls, payload):
    return struct.pack(">QQB", to, frm, cls) + payload


def hello(version=1, lane=1, flags=0, cluster=0xC1, frm=1, to=2):
    return b"RFTW" + struct.pack(">HBBQQQ", version, lane, flags, cluster, frm, to)


def begin(size, inline, msg=b""):
    return struct.pack(">QB", size, 1 if inline else 0) + msg


def end(size, crc):
    return struct.pack(">QI", size, crc)


def limit(max_len):
    """common::pick_max bytes for a limit below 256: mode 2, raw value."""
    return bytes([2]) + struct.pack(">I", max_len)


def plan(*sizes):
    return bytes([len(sizes)]) + bytes(sizes)


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def snapshot_stream(data, message, chunk):
    s = frame(3, begin(len(data), False, message))
    for i in range(0, len(data), chunk):
        s += frame(4, data[i : i + chunk])
    return s + frame(5, end(len(data), crc32c(data)))


def main():
    msg = frame(1, envelope(2, 1, 0, b"hello"))
    stream = HEARTBEAT + msg + frame(5, end(5, crc32c(b"hello"))) + frame(6, b"\x00")
    # frame_decoder: flags, limit, chunk plan, stream.
    write("frame_decoder", "whole", b"\x00" + limit(200) + plan() + stream)
    write("frame_decoder", "bytewise", b"\x00" + limit(200) + plan(1) + stream)
    write("frame_decoder", "mixed", b"\x00" + limit(200) + plan(5, 0, 13, 0x81) + stream)
    write("frame_decoder", "exact-limit", b"\x00" + limit(22) + plan(7) + msg + msg)
    write("frame_decoder", "oversize", b"\x00" + limit(21) + plan(3) + msg)
    write("frame_decoder", "unknown-kind", b"\x01" + limit(50) + plan() + frame(9, b"x"))
    write("frame_decoder", "reserved", b"\x01" + limit(50) + plan(2) + frame(1, b"x", 0, 1))
    write("frame_decoder", "truncated", b"\x00" + limit(200) + plan(4) + msg[:-3])
    write("frame_decoder", "dialer", b"\x00" + bytes([0, 0, 0, 0, 0]) + plan(1) + HEARTBEAT * 3)

    # handshake: cluster id, local id, flags, bytes.
    ids = struct.pack(">QQ", 0xC1, 2)
    write("handshake", "hello", ids + b"\x00" + hello())
    write("handshake", "hello-removed", ids + b"\x01" + hello(lane=0))
    write("handshake", "hello-snapshot", ids + b"\x02" + hello(lane=2))
    write("handshake", "hello-v2", ids + b"\x00" + hello(version=2)[:6])
    write("handshake", "hello-flags", ids + b"\x00" + hello(flags=1))
    write("handshake", "accept", ids + b"\x00" + b"RFTW\x00\x01\x00\x00")
    write("handshake", "reject", ids + b"\x00" + b"RFTW\x00\x01\x01\x02")
    write("handshake", "http", ids + b"\x00" + b"GET / HTTP/1.1\r\n")

    # snapshot_stream, mode 0: payloads.
    write("snapshot_stream", "begin", b"\x00" + begin(5, False, envelope(2, 1, 3, b"m")))
    write("snapshot_stream", "begin-inline", b"\x00" + begin(5, True))
    write("snapshot_stream", "end", b"\x00" + end(5, crc32c(b"hello")))
    write("snapshot_stream", "ack", b"\x00\x07")
    # Mode 1: raw streams (fix-CRC byte, limit, plan, stream).
    good = snapshot_stream(b"0123456789abcdef" * 4, envelope(2, 1, 3, b"meta"), 10)
    write("snapshot_stream", "raw-good", b"\x01\x00" + limit(100) + plan(7, 1) + good)
    write("snapshot_stream", "raw-long", b"\x01\x00" + limit(100) + plan() + good + frame(4, b"z"))
    inline = frame(3, begin(20, True)) + frame(4, envelope(2, 1, 3, b"xyz")) + frame(5, end(20, crc32c(envelope(2, 1, 3, b"xyz"))))
    write("snapshot_stream", "raw-inline", b"\x01\x00" + limit(100) + plan(3) + inline)
    write("snapshot_stream", "raw-hb-first", b"\x01\x01" + limit(100) + plan() + HEARTBEAT + good)
    # Mode 2: well-formed streams (opts, chunk, class, flip, plan, payload len, payload, data).
    for name, opts in [("wf-plain", 0), ("wf-inline", 1), ("wf-heartbeats", 2), ("wf-big", 4)]:
        write(
            "snapshot_stream",
            name,
            b"\x02" + bytes([opts, 9, 3]) + struct.pack(">I", 1234) + plan(5, 1, 0x82) + b"\x04meta" + bytes(range(200)),
        )


if __name__ == "__main__":
    main()
