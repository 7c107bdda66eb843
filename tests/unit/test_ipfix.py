"""IPFIX encoding against hand-checked bytes, message sizes and sequence numbers, the target
syntax, and the exporter over loopback UDP and TCP (a collector that goes away and comes back)."""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from flowscope import abi
from flowscope.cli import main
from flowscope.errors import UsageError
from flowscope.export import ipfix, ipfix_records
from flowscope.model import FlowKey, FlowRecord, Owner

T0 = 1_790_000_000.123  # 2026-09-21T14:13:20.123Z


def rec4(n: int = 0, reason: str = "idle") -> FlowRecord:
    key = FlowKey(abi.AF_INET, "198.18.0.2", "198.18.0.1", 4000 + n, 53, 17, 100, 7, 0)
    return FlowRecord(key, "veth0", 5, 710, 640, T0, T0 + 1.5, 0x12, reason, drops=3)


def rec6_icmp() -> FlowRecord:
    # ICMPv6 echo request: type 128, code 0 -> dport 128 * 256
    key = FlowKey(abi.AF_INET6, "2001:db8::2", "2001:db8::1", 0, 0x8000, 58, 0, 3, 1)
    return FlowRecord(key, "veth0", 2, 236, 208, T0 + 0.127, T0 + 0.627, 0, "shutdown")


TEMPLATE_SET = bytes.fromhex(
    # set header: set id 2 (template set), length 4 + 4 * 80 = 324
    "0002 0144"
    # template record: id 256 (IPv4), 19 fields; each field: IE id, length
    "0100 0013"
    "0008 0004"  # sourceIPv4Address (8), 4
    "000c 0004"  # destinationIPv4Address (12), 4
    "0007 0002"  # sourceTransportPort (7), 2
    "000b 0002"  # destinationTransportPort (11), 2
    "0004 0001"  # protocolIdentifier (4), 1
    "0006 0002"  # tcpControlBits (6), 2
    "0001 0008"  # octetDeltaCount (1), 8: IP bytes
    "0160 0008"  # layer2OctetDeltaCount (352), 8: frame bytes
    "0002 0008"  # packetDeltaCount (2), 8
    "0098 0008"  # flowStartMilliseconds (152), 8
    "0099 0008"  # flowEndMilliseconds (153), 8
    "003a 0002"  # vlanId (58), 2
    "000a 0004"  # ingressInterface (10), 4
    "003d 0001"  # flowDirection (61), 1
    "0088 0001"  # flowEndReason (136), 1
    "0020 0002"  # icmpTypeCodeIPv4 (32), 2
    "0085 0008"  # droppedPacketDeltaCount (133), 8: packets the kernel dropped
    "0060 ffff"  # applicationName (96), variable length: the process's comm
    "0173 ffff"  # userName (371), variable length
    # template record: id 257 (IPv6), 19 fields
    "0101 0013"
    "001b 0010"  # sourceIPv6Address (27), 16
    "001c 0010"  # destinationIPv6Address (28), 16
    "0007 0002 000b 0002 0004 0001 0006 0002"  # ports, protocol, TCP flags (as above)
    "0001 0008 0160 0008 0002 0008"  # octets, layer 2 octets, packets
    "0098 0008 0099 0008"  # start, end
    "003a 0002 000a 0004 003d 0001 0088 0001"  # VLAN, interface, direction, end reason
    "008b 0002"  # icmpTypeCodeIPv6 (139), 2
    "0085 0008"  # droppedPacketDeltaCount (133), 8
    "0060 ffff 0173 ffff"  # applicationName, userName
    # template record: id 258 (IPv4, sent), as 256 but egressInterface (14) for the interface
    "0102 0013"
    "0008 0004 000c 0004"
    "0007 0002 000b 0002 0004 0001 0006 0002"
    "0001 0008 0160 0008 0002 0008"
    "0098 0008 0099 0008"
    "003a 0002 000e 0004 003d 0001 0088 0001"  # VLAN, egressInterface (14), 4, ...
    "0020 0002 0085 0008 0060 ffff 0173 ffff"
    # template record: id 259 (IPv6, sent), as 257 but egressInterface (14)
    "0103 0013"
    "001b 0010 001c 0010"
    "0007 0002 000b 0002 0004 0001 0006 0002"
    "0001 0008 0160 0008 0002 0008"
    "0098 0008 0099 0008"
    "003a 0002 000e 0004 003d 0001 0088 0001"
    "008b 0002 0085 0008 0060 ffff 0173 ffff"
)

DATA_MESSAGE = bytes.fromhex(
    # message header: version 10, length 16 + 79 + 103 = 198, export time 1790000002
    # (0x6ab13b82), sequence 0 (no data record sent before), observation domain 42
    "000a 00c6 6ab13b82 00000000 0000002a"
    # data set for template 256, length 4 + 75
    "0100 004f"
    "c6120002"  # 198.18.0.2
    "c6120001"  # 198.18.0.1
    "0fa0"  # source port 4000
    "0035"  # destination port 53
    "11"  # UDP
    "0012"  # TCP flags SYN|ACK
    "0000000000000280"  # octetDeltaCount 640 (IP bytes)
    "00000000000002c6"  # layer2OctetDeltaCount 710 (frame bytes)
    "0000000000000005"  # 5 packets
    "000001a0c4506c7b"  # flowStartMilliseconds 1790000000123
    "000001a0c4507257"  # flowEndMilliseconds 1790000001623
    "0064"  # VLAN 100
    "00000007"  # ingress ifindex 7
    "00"  # flowDirection ingress
    "01"  # flowEndReason idle timeout
    "0000"  # not ICMP
    "0000000000000003"  # 3 packets dropped by the kernel
    "00 00"  # no process: an empty applicationName and userName
    # data set for template 259 (IPv6, sent: the record's direction is egress), length 4 + 99
    "0103 0067"
    "20010db8000000000000000000000002"  # 2001:db8::2
    "20010db8000000000000000000000001"  # 2001:db8::1
    "0000 8000 3a 0000"  # ports 0 and type*256+code, ICMPv6, no TCP flags
    "00000000000000d0"  # 208 IP bytes
    "00000000000000ec"  # 236 frame bytes
    "0000000000000002"  # 2 packets
    "000001a0c4506cfa"  # 1790000000250
    "000001a0c4506eee"  # 1790000000750
    "0000 00000003 01 04 8000"  # untagged, ifindex 3, egress, forced end, echo request 128/0
    "0000000000000000"  # drops not followed (-1): 0
    "00 00"  # no process
)


def test_template_set_is_the_hand_checked_bytes() -> None:
    assert ipfix_records.TEMPLATE_SET == TEMPLATE_SET


def test_data_message_is_the_hand_checked_bytes() -> None:
    enc = ipfix_records.Encoder(domain_id=42)
    [msg] = enc.pack([rec4(), rec6_icmp()], export_time=1790000002)
    assert msg.data == DATA_MESSAGE
    assert (msg.records, msg.sequence, enc.sequence) == (2, 0, 2)


def test_templates_travel_first_when_asked() -> None:
    enc = ipfix_records.Encoder(domain_id=42)
    [msg] = enc.pack([rec4(), rec6_icmp()], export_time=1790000002, templates=True)
    # header with length 198 + 324 = 522, then the template set, then the same data sets
    assert msg.data[:16] == bytes.fromhex("000a 020a 6ab13b82 00000000 0000002a")
    assert msg.data[16:340] == TEMPLATE_SET
    assert msg.data[340:] == DATA_MESSAGE[16:]


def test_end_reasons_follow_rfc_5102() -> None:
    codes = {r: struct.unpack_from("!B", ipfix_records.encode_record(rec4(0, r))[1], 62)[0]
             for r in ("idle", "active", "fin", "rst", "shutdown", "evicted")}  # fmt: skip
    assert codes == {"idle": 1, "active": 2, "fin": 3, "rst": 3, "shutdown": 4, "evicted": 5}


def test_messages_stay_under_the_path_mtu_and_sequence_counts_records() -> None:
    enc = ipfix_records.Encoder(mtu=1400)  # 1352 bytes of IPFIX: 1400 minus IPv6 and UDP headers
    msgs = enc.pack([rec4(i) for i in range(100)], export_time=0, templates=True)
    # 16 header + 324 templates + 4 set header + 13 * 75 = 1319; then 20 + 17 * 75 = 1295
    assert [m.records for m in msgs] == [13, 17, 17, 17, 17, 17, 2]
    assert [len(m.data) for m in msgs] == [1319, 1295, 1295, 1295, 1295, 1295, 170]
    assert [m.sequence for m in msgs] == [0, 13, 30, 47, 64, 81, 98]
    assert [struct.unpack_from("!I", m.data, 8)[0] for m in msgs] == [0, 13, 30, 47, 64, 81, 98]
    assert enc.sequence == 100
    small = ipfix_records.Encoder(mtu=576).pack([rec4(i) for i in range(20)], export_time=0)
    assert max(len(m.data) for m in small) <= 576 - 48


def test_sequence_wraps_at_2_to_the_32() -> None:
    enc = ipfix_records.Encoder()
    enc.sequence = 2**32 - 1
    first, second = enc.pack([rec4(1)], 0), enc.pack([rec4(2)], 0)
    assert (first[0].sequence, second[0].sequence, enc.sequence) == (2**32 - 1, 0, 1)


@pytest.mark.parametrize(
    ("text", "target"),
    [
        ("127.0.0.1:4739", ipfix.Target("udp", "127.0.0.1", 4739)),
        ("udp://collector.example:2055", ipfix.Target("udp", "collector.example", 2055)),
        ("tcp://10.0.0.1:4739", ipfix.Target("tcp", "10.0.0.1", 4739)),
        ("TCP://[2001:db8::1]:4739", ipfix.Target("tcp", "2001:db8::1", 4739)),
        ("[::1]:9995", ipfix.Target("udp", "::1", 9995)),
    ],
)
def test_targets(text: str, target: ipfix.Target) -> None:
    assert ipfix.parse_target(text) == target


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("collector", "no port"),
        ("sctp://h:1", "unknown transport 'sctp'"),
        ("h:0", "port must be 1-65535"),
        ("h:70000", "port must be 1-65535"),
        (":4739", "no host"),
        ("2001:db8::1:4739", "no port"),
        ("[2001:db8::1]", "no port"),
    ],
)
def test_bad_targets(text: str, message: str) -> None:
    with pytest.raises(UsageError) as e:
        ipfix.parse_target(text)
    assert message in e.value.message
    assert e.value.exit_code == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ipfix", "collector"], "--ipfix 'collector': no port"),
        (["--metrics", "99999"], "--metrics '99999': port must be 1-65535"),
        (["--metrics", "::1:9100"], "an IPv6 address goes in brackets"),
        (["--ipfix-mtu", "100", "--ipfix", "h:1"], "x>=576"),
    ],
)
def test_bad_flags_are_one_line_and_exit_2(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["record", "-i", "lo", *args])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


# --- the exporter over loopback -------------------------------------------------------------------


def parse(data: bytes) -> tuple[tuple[int, ...], list[tuple[int, list[bytes]]]]:
    """(header fields, [(set id, [records])]) of one message; template sets as one blob.
    The records have no process: each ends in two empty strings (two bytes)."""
    header = ipfix_records.HEADER.unpack_from(data)
    assert header[0] == 10 and header[1] == len(data)
    sets = []
    pos = 16
    while pos < len(data):
        set_id, length = ipfix_records.SET_HEADER.unpack_from(data, pos)
        body = data[pos + 4 : pos + length]
        size = {256: ipfix_records.RECORD_V4.size + 2, 257: ipfix_records.RECORD_V6.size + 2}.get(
            set_id, len(body)
        )
        sets.append((set_id, [body[i : i + size] for i in range(0, len(body), size)]))
        pos += length
    return header, sets


def ports(sets: list[tuple[int, list[bytes]]]) -> list[int]:
    return [ipfix_records.RECORD_V4.unpack_from(r)[2] for sid, rs in sets if sid == 256 for r in rs]


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def test_udp_templates_first_then_every_n_messages_and_every_interval() -> None:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(10)
    clock = FakeClock()
    target = ipfix.Target("udp", "127.0.0.1", rx.getsockname()[1])
    with ipfix.Exporter(target, template_messages=3, template_interval=60, clock=clock) as ex:
        for i in range(5):
            ex.submit([rec4(i)], None, [])
            assert ex.flush(10)
        clock.now += 60
        ex.submit([rec4(5)], None, [])
        assert ex.flush(10)
        msgs = [parse(rx.recv(65536)) for _ in range(6)]
    rx.close()
    has_templates = [sets[0][0] == 2 for _, sets in msgs]
    assert has_templates == [True, False, False, True, False, True]
    assert [h[3] for h, _ in msgs] == [0, 1, 2, 3, 4, 5]  # sequence numbers
    assert [p for _, sets in msgs for p in ports(sets)] == [4000, 4001, 4002, 4003, 4004, 4005]
    assert (ex.sent, ex.lost, ex.messages) == (6, 0, 6)


class Collector:
    """A TCP collector on loopback that can be stopped and started on the same port."""

    def __init__(self) -> None:
        self.port = 0
        self.listener: socket.socket | None = None
        self.conn: socket.socket | None = None
        self.start()

    def start(self) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen()
        s.settimeout(10)
        self.port = s.getsockname()[1]
        self.listener = s

    def accept(self) -> None:
        assert self.listener is not None
        self.conn, _ = self.listener.accept()
        self.conn.settimeout(10)

    def messages(self, n: int) -> list[tuple[tuple[int, ...], list[tuple[int, list[bytes]]]]]:
        assert self.conn is not None
        out = []
        for _ in range(n):
            head = self._read(16)
            out.append(parse(head + self._read(struct.unpack_from("!H", head, 2)[0] - 16)))
        return out

    def records(self, n: int) -> int:
        """Read messages until they held ``n`` data records (however the exporter split
        them: two flows that expire in two ticks travel in two messages); how many came."""
        got = 0
        while got < n:
            [(_, sets)] = self.messages(1)
            got += sum(len(r) for sid, r in sets if sid >= 256)
        return got

    def _read(self, n: int) -> bytes:
        assert self.conn is not None
        data = b""
        while len(data) < n:
            chunk = self.conn.recv(n - len(data))
            assert chunk, "exporter closed the connection"
            data += chunk
        return data

    def stop(self) -> None:
        for s in (self.conn, self.listener):
            if s is not None:
                s.close()
        self.conn = self.listener = None


def wait_for(condition: object, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.stop()


def test_tcp_collector_going_away_loses_records_counted_and_export_resumes(
    collector: Collector,
) -> None:
    target = ipfix.Target("tcp", "127.0.0.1", collector.port)
    ex = ipfix.Exporter(target, backoff=0.05, max_backoff=0.2)
    try:
        collector.accept()
        [(header, sets)] = collector.messages(1)  # templates first, once per connection
        assert (header[3], [s[0] for s in sets]) == (0, [2])
        ex.submit([rec4(0), rec4(1), rec4(2)], None, [])
        assert ex.flush(10)
        [(header, sets)] = collector.messages(1)
        assert (header[3], ports(sets)) == (0, [4000, 4001, 4002])

        collector.stop()  # the collector goes away: collection goes on, records are lost
        for i in range(3, 7):
            ex.submit([rec4(i)], None, [])
        assert ex.flush(10)
        assert (ex.sent, ex.lost) == (3, 4)
        assert ex.status is not None and "127.0.0.1" in ex.status

        collector.start()  # it comes back on the same port: the exporter reconnects
        collector.accept()
        [(header, sets)] = collector.messages(1)
        assert (header[3], [s[0] for s in sets]) == (0, [2])  # a new session: templates again
        wait_for(lambda: ex.connected, "the reconnection")
        ex.submit([rec4(7), rec4(8)], None, [])
        assert ex.flush(10)
        [(header, sets)] = collector.messages(1)
        assert (header[3], ports(sets)) == (0, [4007, 4008])
        assert (ex.sent, ex.lost, ex.connections) == (5, 4, 2)
        assert ex.status is None
    finally:
        ex.close()


def test_a_full_queue_loses_records_instead_of_blocking() -> None:
    # a TCP collector that accepts nothing: the exporter keeps failing and never blocks submit
    blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    blocker.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
    target = ipfix.Target("tcp", "127.0.0.1", blocker.getsockname()[1])
    ex = ipfix.Exporter(target, max_queue=10, backoff=60)
    try:
        done = threading.Event()

        def submit() -> None:
            for i in range(100):
                ex.submit([rec4(i)], None, [])
            done.set()

        threading.Thread(target=submit).start()
        assert done.wait(10)
        assert ex.flush(10)
        assert (ex.sent, ex.lost) == (0, 100)
    finally:
        ex.close()
        blocker.close()


@pytest.mark.parametrize(
    "command", [["record", "-i", "lo"], ["live", "-i", "lo"], ["demo"], ["replay"]]
)
def test_every_collecting_command_takes_the_export_flags(
    command: list[str], tmp_path: Path
) -> None:
    """record, live, demo and replay all parse --ipfix and --metrics (before doing anything)."""
    if command == ["replay"]:
        (tmp_path / "c.pcap").write_bytes(b"")
        command = ["replay", str(tmp_path / "c.pcap")]
    for args, message in (
        (["--ipfix", "collector"], "--ipfix 'collector': no port"),
        (["--metrics", "99999"], "--metrics '99999': port must be 1-65535"),
    ):
        result = CliRunner().invoke(main, [*command, *args])
        assert (result.exit_code, result.output.count("\n")) == (2, 1), result.output
        assert message in result.output


def tshark_fields(tmp_path: Path, records: list[FlowRecord], *fields: str) -> list[list[str]]:
    """The records exported in one message (with the templates), sent in a UDP datagram
    written to a capture, as tshark's IPFIX dissector reads them: for each field, its values
    over the whole message (tshark leaves out empty strings)."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw
    from scapy.utils import wrpcap

    [msg] = ipfix_records.Encoder().pack(records, export_time=int(T0), templates=True)
    frame = Ether() / IP(src="127.0.0.1", dst="127.0.0.1") / UDP(sport=40000, dport=4739)
    pcap = tmp_path / "ipfix.pcap"
    wrpcap(str(pcap), [frame / Raw(msg.data)])
    out = subprocess.run(
        ["tshark", "-r", str(pcap), "-d", "udp.port==4739,cflow", "-T", "fields",
         "-E", "occurrence=a", "-E", "aggregator=|",
         *[arg for f in fields for arg in ("-e", f)]],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    return [f.split("|") for f in out.split("\t")]


@pytest.mark.skipif(shutil.which("tshark") is None, reason="needs tshark (make setup)")
def test_tshark_decodes_sent_flows_with_egress_interface(tmp_path: Path) -> None:
    """Issue #14: an egress record was exported with its interface as ingressInterface (IE
    10); tshark read it as `InputInt: 64, Direction: Egress`. Now sent flows travel in their
    own templates with egressInterface (IE 14), received flows keep ingressInterface."""
    sent = FlowKey(abi.AF_INET, "198.18.0.1", "198.18.0.2", 53, 4000, 17, 0, 64, abi.DIR_EGRESS)
    sent6 = FlowKey(abi.AF_INET6, "2001:db8::1", "2001:db8::2", 443, 5000, 6, 0, 65, 1)
    received = FlowKey(abi.AF_INET, "198.18.0.2", "198.18.0.1", 4000, 53, 17, 0, 7, 0)
    records = [
        FlowRecord(k, "veth0", 3, 300, 258, T0, T0 + 1, 0, "idle") for k in (sent, sent6, received)
    ]
    inputs, outputs, directions = tshark_fields(
        tmp_path, records, "cflow.inputint", "cflow.outputint", "cflow.direction"
    )
    assert inputs == ["7"]  # only the received flow names an input interface
    assert sorted(outputs) == ["64", "65"]
    assert sorted(directions) == ["0", "1", "1"]


@pytest.mark.skipif(shutil.which("tshark") is None, reason="needs tshark (make setup)")
def test_tshark_reads_the_process_and_user_of_each_flow(tmp_path: Path) -> None:
    """Issue #16: the owning process travels as applicationName (IE 96) and its user as
    userName (IE 371), variable-length strings; a flow without a process has empty ones and
    the records around it still decode."""
    key = FlowKey(abi.AF_INET, "198.18.0.1", "198.18.0.2", 443, 5000, 6, 0, 7, abi.DIR_EGRESS)
    key6 = FlowKey(abi.AF_INET6, "2001:db8::2", "2001:db8::1", 5001, 22, 6, 0, 7, 0)
    records = [
        FlowRecord(key, "veth0", 3, 300, 258, T0, T0 + 1, 0, "idle", Owner(812, "nginx", 0)),
        FlowRecord(key6, "veth0", 3, 300, 258, T0, T0 + 1, 0, "idle"),
        FlowRecord(key6, "veth0", 3, 300, 258, T0, T0 + 1, 0, "idle", Owner(9, "sshd", 0)),
    ]
    names, users, sports = tshark_fields(
        tmp_path, records, "cflow.appl_name", "cflow.user_name", "cflow.srcport"
    )
    assert names == ["nginx", "sshd"]  # tshark lists no empty string
    assert users == ["root", "root"]
    assert sports == ["443", "5001", "5001"]  # all three records, in order


@pytest.mark.skipif(shutil.which("tshark") is None, reason="needs tshark (make setup)")
def test_tshark_reads_the_drops_of_each_flow(tmp_path: Path) -> None:
    """Issue #17: the packets of a flow the kernel dropped travel as droppedPacketDeltaCount
    (IE 133); a flow whose drops are not followed says 0."""
    key = FlowKey(abi.AF_INET, "198.18.0.2", "198.18.0.1", 4000, 443, 6, 0, 7, 0)
    key6 = FlowKey(abi.AF_INET6, "2001:db8::2", "2001:db8::1", 5001, 22, 6, 0, 7, 0)
    records = [
        FlowRecord(key, "veth0", 30, 3000, 2580, T0, T0 + 1, 0, "idle", drops=12),
        FlowRecord(key6, "veth0", 3, 300, 258, T0, T0 + 1, 0, "idle"),
    ]
    (dropped,) = tshark_fields(tmp_path, records, "cflow.drop_packets")
    assert dropped == ["12", "0"]


def test_long_strings_take_the_three_byte_length() -> None:
    """RFC 7011 section 7: below 255 bytes one length byte, from 255 on 255 and two bytes."""
    assert ipfix_records.variable("") == b"\x00"
    assert ipfix_records.variable("ab") == b"\x02ab"
    assert ipfix_records.variable("x" * 254)[:1] == b"\xfe"
    assert ipfix_records.variable("x" * 300)[:3] == b"\xff\x01\x2c"
