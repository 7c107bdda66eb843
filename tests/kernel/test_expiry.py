"""Expiry against the real kernel map: an idle flow becomes one record with its exact counts
and is gone from the kernel map, while a flow that keeps sending stays in it."""

from __future__ import annotations

import time

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from flowscope import abi
from flowscope.collect.collector import Collector, CollectorSettings
from flowscope.kernel.session import Probe
from tests.netns import veth_namespace


def test_idle_flow_is_written_and_removed_from_the_kernel_map() -> None:
    with veth_namespace() as net:

        def frame(sport: int) -> bytes:
            return bytes(
                Ether(src=net.peer_mac, dst=net.host_mac)
                / IP(src=net.peer_ip4, dst=net.host_ip4)
                / UDP(sport=sport, dport=7000)
                / (b"z" * 100)
            )

        with Probe([net.host_if], mode="generic", direction="ingress") as probe:
            settings = CollectorSettings(interval=0.2, idle_timeout=1.0, active_timeout=600)
            collector = Collector(probe.program, settings, iface_names=probe.interface_names())
            net.send_frames([frame(6001)] * 4)  # then silence: goes idle
            records = []
            deadline = time.monotonic() + 6
            while time.monotonic() < deadline and not records:
                net.send_frames([frame(6002)])  # keeps sending: stays live
                time.sleep(0.2)
                records += [r for r in collector.tick().records if r.key.sport == 6001]
            in_kernel = {
                batch.key(i).sport
                for batch in [probe.program.read_flows(abi.AF_INET)]
                for i in range(len(batch))
            }
    assert len(records) == 1
    (rec,) = records
    assert (rec.packets, rec.bytes, rec.end_reason) == (4, 4 * len(frame(6001)), "idle")
    assert rec.iface == net.host_if
    assert 6001 not in in_kernel  # lookup-and-delete took it out of the map
    assert 6002 in in_kernel
