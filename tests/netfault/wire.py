#!/usr/bin/env python3
"""A slow, lossy wire between two TUN devices: what `tc netem delay ... loss ...` would do on a
kernel that has netem. Every IP packet read from one device is written to the other after DELAY_MS
milliseconds, or dropped with probability LOSS_PERCENT / 100, in each direction.

    wire.py HOST_IF NS_IF DELAY_MS LOSS_PERCENT READY_FILE

Both devices must exist (ip tuntap add ... mode tun); the wire attaches to both, writes READY_FILE,
and runs until killed. netns.sh moves NS_IF into the namespace after READY_FILE appears (an
attached TUN device keeps its file descriptor when it changes namespace).
"""
import collections
import fcntl
import os
import random
import select
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


def attach(name):
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def main():
    host_if, ns_if, delay_ms, loss_percent, ready = sys.argv[1:6]
    delay = float(delay_ms) / 1000.0
    loss = float(loss_percent) / 100.0
    a, b = attach(host_if), attach(ns_if)
    peer = {a: b, b: a}
    queue = collections.deque()  # (due, destination fd, packet), due times in order
    with open(ready, "w") as f:
        f.write(str(os.getpid()))
    while True:
        timeout = max(0.0, queue[0][0] - time.monotonic()) if queue else 1.0
        readable, _, _ = select.select([a, b], [], [], timeout)
        now = time.monotonic()
        for fd in readable:
            while True:
                try:
                    packet = os.read(fd, 65536)
                except BlockingIOError:
                    break
                except OSError:  # the device went away (or is moving namespace)
                    break
                if random.random() >= loss:
                    queue.append((now + delay, peer[fd], packet))
        now = time.monotonic()
        while queue and queue[0][0] <= now:
            _, fd, packet = queue.popleft()
            try:
                os.write(fd, packet)
            except OSError:
                pass  # no route or device down: the packet is lost, as on a wire


if __name__ == "__main__":
    main()
