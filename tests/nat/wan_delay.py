#!/usr/bin/env python3
"""WAN latency for the NAT lab (tests/it/natlab.rs): holds every packet that nftables hands to
NFQUEUE queue 0 (a router's WAN ingress, before connection tracking) for DELAY_MS, then lets it
through, in arrival order. Python's standard library only: this kernel has no netem.

usage: wan_delay.py DELAY_MS     (prints "ready" once bound; stops on SIGTERM)
"""
import collections
import select
import signal
import socket
import struct
import sys
import time

NETLINK_NETFILTER = 12
QUEUE_SUBSYS = 3 << 8
MSG_PACKET, MSG_VERDICT, MSG_CONFIG = 0, 1, 2
REQUEST, ACK = 1, 4
CFG_CMD, CFG_PARAMS = 1, 2
CMD_BIND = 1
COPY_META = 1
ATTR_PACKET_HDR, ATTR_VERDICT_HDR = 1, 2
ACCEPT = 1
QUEUE = 0

delay = float(sys.argv[1]) / 1000.0
sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
sock.bind((0, 0))
sequence = 0


def attribute(kind, payload):
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * ((4 - len(raw) % 4) % 4)


def message(kind, attributes, flags=REQUEST):
    global sequence
    sequence += 1
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(QUEUE)) + b"".join(attributes)
    header = struct.pack("=IHHII", 16 + len(body), QUEUE_SUBSYS | kind, flags, sequence, 0)
    sock.send(header + body)


def configure(attributes):
    message(MSG_CONFIG, attributes, REQUEST | ACK)
    reply = sock.recv(4096)
    kind = struct.unpack_from("=H", reply, 4)[0]
    error = struct.unpack_from("=i", reply, 16)[0] if kind == 2 else 0
    if error:
        sys.exit("wan_delay: NFQUEUE configuration refused: errno %d" % -error)


configure([attribute(CFG_CMD, struct.pack("=BBH", CMD_BIND, 0, 0))])
configure([attribute(CFG_PARAMS, struct.pack(">IB", 0, COPY_META))])

running = [True]
signal.signal(signal.SIGTERM, lambda *_: running.clear())
signal.signal(signal.SIGINT, lambda *_: running.clear())
held = collections.deque()  # (release time, packet id): arrival order is release order
print("ready", flush=True)


def release(packet_id):
    message(MSG_VERDICT, [attribute(ATTR_VERDICT_HDR, struct.pack(">II", ACCEPT, packet_id))])


def packet_ids(data):
    at = 0
    while at + 16 <= len(data):
        length, kind = struct.unpack_from("=IH", data, at)
        if length < 16:
            return
        if kind == QUEUE_SUBSYS | MSG_PACKET:
            a = at + 20  # after the netlink and nfgen headers
            while a + 4 <= at + length:
                alen, akind = struct.unpack_from("=HH", data, a)
                if alen < 4:
                    break
                if akind & 0x7FFF == ATTR_PACKET_HDR:
                    yield struct.unpack_from(">I", data, a + 4)[0]
                    break
                a += (alen + 3) & ~3
        at += (length + 3) & ~3


while running:
    now = time.monotonic()
    while held and held[0][0] <= now:
        release(held.popleft()[1])
    timeout = max(0.0, held[0][0] - now) if held else 0.5
    try:
        readable, _, _ = select.select([sock], [], [], timeout)
    except InterruptedError:
        continue
    if readable:
        data = sock.recv(1 << 17)
        arrived = time.monotonic()
        for packet_id in packet_ids(data):
            held.append((arrived + delay, packet_id))
for _, packet_id in held:
    release(packet_id)
