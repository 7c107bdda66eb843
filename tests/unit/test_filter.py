"""The filter language: what each filter selects, in memory and in SQLite alike; where and how
it reports mistakes; and, by property tests, that rendering round-trips, that SQL and
matches() agree, that no user text reaches the SQL text, and that parse fails only with
FilterSyntaxError."""

from __future__ import annotations

import ipaddress
import sqlite3
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import astuple, dataclass, fields, replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowscope.errors import UsageError
from flowscope.model import Owner
from flowscope.query.filter import FilterSyntaxError, parse
from flowscope.query.nodes import (
    And,
    Compare,
    DropReason,
    Equals,
    Expr,
    Filter,
    Flags,
    Health,
    Host,
    Net,
    Not,
    Or,
    Owned,
    Port,
    register_sql_functions,
)


@dataclass(frozen=True)
class Row:
    """A flow as both back ends see it: attributes for matches(), columns for the table."""

    id: int
    iface: str
    vlan: int
    family: int
    src: str
    dst: str
    sport: int
    dport: int
    proto: int
    packets: int
    bytes: int
    ip_bytes: int
    tcp_flags: int
    direction: str
    pid: int | None = None
    comm: str | None = None
    uid: int | None = None
    container: str | None = None
    retrans: int | None = None
    rtt_us: int | None = None
    drops: int | None = None
    drop_reason: str | None = None
    resets: int | None = None

    @property
    def owner(self) -> Owner | None:
        """The process of the flow's local socket, from the columns history keeps."""
        if self.pid is None:
            return None
        assert self.comm is not None and self.uid is not None
        cgroup = f"/system.slice/{self.container}" if self.container else "/user.slice"
        return Owner(self.pid, self.comm, self.uid, cgroup)


NGINX = (812, "nginx", 33, "nginx.service")
SSHD = (640, "sshd", 0, "ssh.service")
SHELL = (4410, "curl", 1000, "")


F, S, R, P, A = 1, 2, 4, 8, 16  # TCP flag bits FIN SYN RST PSH ACK
M, G = 10**6, 10**9


def flow(
    id: int,
    iface: str,
    vlan: int,
    src: str,
    dst: str,
    sport: int,
    dport: int,
    proto: int,
    packets: int,
    bytes: int,
    tcp_flags: int,
    direction: str,
    owner: tuple[int, str, int, str] | None = None,
) -> Row:
    """A Row with family taken from the address and ip_bytes that do not matter here."""
    family = 6 if ":" in src else 4
    return Row(
        id,
        iface,
        vlan,
        family,
        src,
        dst,
        sport,
        dport,
        proto,
        packets,
        bytes,
        bytes,
        tcp_flags,
        direction,
        *(owner or (None, None, None, None)),
    )


ROWS = [
    flow(1, "eth0", 0, "10.0.0.1", "192.168.1.10", 51000, 443, 6, 10, 1500, S | A, "ingress",
         NGINX),
    flow(2, "eth0", 0, "192.168.1.10", "10.0.0.1", 443, 51000, 6, 8, 12000, F | A | P, "egress",
         NGINX),
    flow(3, "eth1", 100, "10.1.2.3", "8.8.8.8", 5353, 53, 17, 1, 80, 0, "egress"),
    flow(4, "eth1", 100, "2001:db8::1", "2001:db8:1::2", 0, 128 * 256, 58, 3, 312, 0, "egress"),
    flow(5, "we'ird; if", 4095, "fe80::1", "ff02::1", 546, 547, 17, 900, 2 * M, 0, "ingress"),
    flow(6, "wg0", 0, "172.16.0.5", "10.0.0.200", 22, 60000, 6, 5000, 3 * G, S | R, "egress", SSHD),
    flow(7, "eth0", 7, "10.0.0.1", "10.0.0.2", 2905, 2905, 132, 2, 200, 0, "ingress"),
]  # fmt: skip

# flows 1-3 are followed: a local TCP connection (1, 2) and a flow the kernel dropped (2, 3)
ROWS[0] = replace(ROWS[0], retrans=3, rtt_us=42_000, drops=0)
ROWS[1] = replace(ROWS[1], retrans=0, rtt_us=42_000, drops=2, drop_reason="TC_INGRESS")
ROWS[2] = replace(ROWS[2], drops=5, drop_reason="NO_SOCKET", resets=0)
ROWS[5] = replace(ROWS[5], resets=1)  # the sent flow of a connection this host reset

SCHEMA = """CREATE TABLE flows (id INTEGER PRIMARY KEY, iface TEXT NOT NULL, vlan INTEGER NOT NULL,
    family INTEGER NOT NULL, src TEXT NOT NULL, dst TEXT NOT NULL, sport INTEGER NOT NULL,
    dport INTEGER NOT NULL, proto INTEGER NOT NULL, packets INTEGER NOT NULL,
    bytes INTEGER NOT NULL, ip_bytes INTEGER NOT NULL, tcp_flags INTEGER NOT NULL,
    direction TEXT NOT NULL, pid INTEGER, comm TEXT, uid INTEGER, container TEXT,
    retrans INTEGER, rtt_us INTEGER, drops INTEGER, drop_reason TEXT, resets INTEGER)"""


def make_db(rows: Sequence[Row]) -> sqlite3.Connection:
    """An in-memory flows table holding these rows, with fs_in_net registered."""
    conn = sqlite3.connect(":memory:")
    register_sql_functions(conn)
    conn.execute(SCHEMA)
    marks = ", ".join("?" * len(fields(Row)))
    conn.executemany(f"INSERT INTO flows VALUES ({marks})", [astuple(r) for r in rows])
    return conn


def sql_ids(conn: sqlite3.Connection, f: Filter) -> set[int]:
    where, params = f.to_sql()
    return {i for (i,) in conn.execute(f"SELECT id FROM flows WHERE {where}", params)}


def memory_ids(rows: Sequence[Row], f: Filter) -> set[int]:
    return {r.id for r in rows if f.matches(r)}


@pytest.fixture
def db() -> Iterator[sqlite3.Connection]:
    conn = make_db(ROWS)
    yield conn
    conn.close()


EVERY = {r.id for r in ROWS}

EXAMPLES = [
    ("", EVERY),
    ("   ", EVERY),
    ("host 10.0.0.1", {1, 2, 7}),
    ("src 10.0.0.1", {1, 7}),
    ("src host 10.0.0.1", {1, 7}),
    ("dst 10.0.0.1", {2}),
    ("dst host 10.0.0.1", {2}),
    ("host 2001:DB8::1", {4}),  # normalized by ipaddress
    ("host 2001:0db8:0000::0001", {4}),
    ("net 10.0.0.0/8", {1, 2, 3, 6, 7}),
    ("src net 10.0.0.0/8", {1, 3, 7}),
    ("dst net 10.0.0.0/24", {2, 6, 7}),
    ("net 2001:db8::/32", {4}),
    ("net fe80::/10 or net ff00::/8", {5}),
    ("net 0.0.0.0/0", {1, 2, 3, 6, 7}),  # an IPv4 net never holds IPv6 addresses
    ("net ::/0", {4, 5}),
    ("retrans > 0", {1}),
    ("resets > 0", {6}),
    ("resets = 0", {3}),
    ("not resets > 0", EVERY - {6}),
    ("retrans = 0", {2}),
    ("not retrans > 0", EVERY - {1}),  # not followed is not "more than 0"
    ("rtt > 40ms", {1, 2}),
    ("rtt > 42ms", set()),
    ("rtt >= 42000us", {1, 2}),
    ("rtt < 0.5s", {1, 2}),
    ("drops > 0", {2, 3}),
    ("drops >= 0", {1, 2, 3}),
    ("drop reason no_socket", {3}),
    ("not drop reason NO_SOCKET", EVERY - {3}),
    ('tcp and drops > 0 or drop reason "NO_SOCKET"', {2, 3}),
    ("net 8.8.8.8", {3}),  # a bare address is a /32
    ("port 443", {1, 2}),
    ("sport 443", {2}),
    ("src port 443", {2}),
    ("dport 443", {1}),
    ("dst port 53", {3}),
    ("port 2905", {7}),
    ("proto tcp", {1, 2, 6}),
    ("tcp", {1, 2, 6}),
    ("udp", {3, 5}),
    ("icmp6", {4}),
    ("proto icmpv6", {4}),
    ("icmp", set()),
    ("proto sctp", {7}),
    ("proto 132", {7}),
    ("proto 17", {3, 5}),
    ("vlan 100", {3, 4}),
    ("vlan 0", {1, 2, 6}),
    ("vlan 4095", {5}),
    ("iface eth0", {1, 2, 7}),
    ('iface "eth0"', {1, 2, 7}),
    ("iface eth", set()),
    ('iface "we\'ird; if"', {5}),
    ("bytes > 1500", {2, 5, 6}),
    ("bytes >= 1500", {1, 2, 5, 6}),
    ("bytes < 1500", {3, 4, 7}),
    ("bytes <= 1.5k", {1, 3, 4, 7}),
    ("bytes = 80", {3}),
    ("bytes == 80", {3}),
    ("bytes != 80", EVERY - {3}),
    ("bytes > 2M", {6}),
    ("bytes >= 2M", {5, 6}),
    ("bytes >= 3G", {6}),
    ("packets >= 1k", {6}),
    ("packets > 8", {1, 5, 6}),
    ("packets>8", {1, 5, 6}),
    ("flags S", {1, 6}),
    ("flags SA", {1}),
    ("flags AS", {1}),
    ("flags sa", {1}),
    ("flags A", {1, 2}),
    ("flags FPA", {2}),
    ("flags R", {6}),
    ("ingress", {1, 5, 7}),
    ("egress", {2, 3, 4, 6}),
    ("not tcp", {3, 4, 5, 7}),
    ("! tcp", {3, 4, 5, 7}),
    ("!tcp", {3, 4, 5, 7}),
    ("not not tcp", {1, 2, 6}),
    ("tcp and port 443", {1, 2}),
    ("tcp && port 443", {1, 2}),
    ("udp or icmp6", {3, 4, 5}),
    ("udp || icmp6", {3, 4, 5}),
    ("TCP AND NOT PORT 443", {6}),  # keywords are case-insensitive
    # precedence: not > and > or
    ("udp or tcp and port 22", {3, 5, 6}),
    ("(udp or tcp) and port 22", {6}),
    ("not udp and vlan 100", {4}),
    ("not (udp and vlan 100)", EVERY - {3}),
    ("egress and not tcp or iface wg0", {3, 4, 6}),
    ("((((egress))))", {2, 3, 4, 6}),
    ("src net 10.0.0.0/8 and (dport 443 or dport 53) and ingress", {1}),
    # tcpdump's qualifier order: a protocol before a host, net or port term is both
    ("tcp port 443", {1, 2}),
    ("udp port 443", set()),
    ("udp dst port 53", {3}),
    ("tcp src port 443", {2}),
    ("tcp dport 443", {1}),
    ("tcp host 10.0.0.1", {1, 2}),
    ("udp net 10.0.0.0/8", {3}),
    ("not tcp port 443", EVERY - {1, 2}),
    ("udp port 53 or tcp port 443", {1, 2, 3}),
    # the process of the flow's local socket; flows without one match none of these
    ("proc nginx", {1, 2}),
    ('proc "nginx"', {1, 2}),
    ("proc nginx-x", set()),
    ("pid 640", {6}),
    ("pid 1", set()),
    ("user 33", {1, 2}),
    ("user root", {6}),
    ("user 0", {6}),
    ("container nginx.service", {1, 2}),
    ("not proc nginx", EVERY - {1, 2}),  # NOT of NULL: SQL and memory agree (never a match)
    ("proc sshd or proc nginx", {1, 2, 6}),
]


@pytest.mark.parametrize(("text", "expected"), EXAMPLES, ids=[t or "<empty>" for t, _ in EXAMPLES])
def test_example_selects_the_same_rows_in_memory_and_in_sqlite(
    db: sqlite3.Connection, text: str, expected: set[int]
) -> None:
    f = parse(text)
    assert memory_ids(ROWS, f) == expected
    assert sql_ids(db, f) == expected
    again = parse(str(f))
    assert again == f  # the canonical form parses back to the same tree
    assert memory_ids(ROWS, again) == expected


def test_empty_filter_is_sql_true_and_renders_empty() -> None:
    f = parse("  ")
    assert f.to_sql() == ("1", [])
    assert f.matches_all
    assert str(f) == ""
    assert not parse("tcp").matches_all


def test_text_keeps_what_was_typed_and_str_is_canonical() -> None:
    f = parse("  src 2001:DB8::1  &&  !  (TCP || bytes>1.5k) ")
    assert f.text == "src 2001:DB8::1  &&  !  (TCP || bytes>1.5k)"
    assert str(f) == "src 2001:db8::1 and not (proto tcp or bytes > 1500)"


@pytest.mark.parametrize(
    ("text", "sql", "params"),
    [
        ("host 10.0.0.1", "(src = ? OR dst = ?)", ["10.0.0.1", "10.0.0.1"]),
        ("src net 10.0.0.0/8", "fs_in_net(src, ?)", ["10.0.0.0/8"]),
        ("flags SA", "(tcp_flags & ?) = ?", [18, 18]),
        ("not vlan 3", "NOT (vlan = ?)", [3]),
        ("iface x or bytes > 1k", "(iface = ? OR bytes > ?)", ["x", 1000]),
        ("ingress", "direction = ?", ["ingress"]),
    ],
)
def test_sql_binds_every_value(text: str, sql: str, params: list[object]) -> None:
    assert parse(text).to_sql() == (sql, params)


ERRORS = [
    ("port abc", 6, "expected a port number (0-65535), found 'abc'"),
    ("tcp and port abc", 14, "expected a port number (0-65535), found 'abc'"),
    ("port 65536", 6, "expected a port number (0-65535), found '65536'"),
    ("sport -1", 7, "expected a port number (0-65535), found '-1'"),
    ("port", 5, "expected a port number (0-65535), found end of filter"),
    ("vlan 4096", 6, "expected a VLAN id (0-4095), found '4096'"),
    ("host 10.0.0.256", 6, "expected an IPv4 or IPv6 address, found '10.0.0.256'"),
    ("src net 10.0.0.0/33", 9, "expected a network such as 10.0.0.0/8 or 2001:db8::/32, "
     "found '10.0.0.0/33'"),
    ("net 10.0.0.1/8", 5, "expected a network without host bits set (did you mean 10.0.0.0/8?), "
     "found '10.0.0.1/8'"),
    ("dst nonsense", 5, "expected an IPv4 or IPv6 address, found 'nonsense'"),
    ("proto foo", 7, "expected a protocol name (ah, dccp, esp, gre, icmp, icmp6, icmpv6, igmp, "
     "ipv6, ipv6-icmp, sctp, tcp, udp, udplite) or number (0-255), found 'foo'"),
    ("proto 256", 7, "expected a protocol name (ah, dccp, esp, gre, icmp, icmp6, icmpv6, igmp, "
     "ipv6, ipv6-icmp, sctp, tcp, udp, udplite) or number (0-255), found '256'"),
    ("tcp udp", 5, "expected 'and', 'or' or end of filter, found 'udp'"),
    ("tcp port", 9, "expected a port number (0-65535), found end of filter"),
    ("(tcp", 5, "expected 'and', 'or' or ')', found end of filter"),
    ("(tcp udp)", 6, "expected 'and', 'or' or ')', found 'udp'"),
    ("tcp)", 4, "expected 'and', 'or' or end of filter, found ')'"),
    ("()", 2, "expected a filter term (host, src, dst, net, port, proto, vlan, iface, bytes, "
     "flags, proc, ...), found ')'"),
    ("tcp and", 8, "expected a filter term (host, src, dst, net, port, proto, vlan, iface, bytes, "
     "flags, proc, ...), found end of filter"),
    ("tcp & udp", 5, "expected 'and', 'or' or end of filter, found '&'"),
    ("bytes 5", 7, "expected a comparison (>, >=, <, <=, =, !=), found '5'"),
    ("bytes > lots", 9, "expected a whole number, optionally with k, M or G (like 1500, 64k, "
     "1.5M), found 'lots'"),
    ("bytes > 1.5", 9, "expected a whole number, optionally with k, M or G (like 1500, 64k, "
     "1.5M), found '1.5'"),
    ("packets > 10T", 11, "expected a whole number, optionally with k, M or G (like 1500, 64k, "
     "1.5M), found '10T'"),
    ("bytes > 99999999999G", 9, "expected a whole number, optionally with k, M or G (like 1500, "
     "64k, 1.5M), found '99999999999G'"),
    ("flags SAX", 9, "expected TCP flag letters (any of FSRPAUEC), found 'X'"),
    ("flags", 6, "expected TCP flag letters (any of FSRPAUEC), found end of filter"),
    ('iface "eth0', 12, "expected a closing '\"', found end of filter"),
    ("iface", 6, 'expected an interface name (double-quote it if it has odd characters: "..."), '
     "found end of filter"),
    ("iface ;", 7, 'expected an interface name (double-quote it if it has odd characters: "..."), '
     "found ';'"),
    ("ingres", 1, "expected a filter term (host, src, dst, net, port, proto, vlan, iface, bytes, "
     "flags, proc, ...), found 'ingres'"),
    ("host\n10.0.0.1 and port\t\tx", 25, "expected a port number (0-65535), found 'x'"),
    ("rtt > 50", 7, "expected a duration with us, ms or s (like 800us, 50ms, 1.5s), found '50'"),
    ("rtt > 5h", 7, "expected a duration with us, ms or s (like 800us, 50ms, 1.5s), found '5h'"),
    ("rtt > 0.5us", 7, "expected a duration with us, ms or s (like 800us, 50ms, 1.5s), "
     "found '0.5us'"),
    ("retrans 3", 9, "expected a comparison (>, >=, <, <=, =, !=), found '3'"),
    ("drops > many", 9, "expected a whole number, optionally with k, M or G (like 1500, 64k, "
     "1.5M), found 'many'"),
    ("drop NO_SOCKET", 6, "expected 'reason', found 'NO_SOCKET'"),
    ("drop reason", 12, "expected a drop reason (NO_SOCKET, TC_INGRESS, ...) (double-quote it if "
     'it has odd characters: "..."), found end of filter'),
]  # fmt: skip


def test_a_drop_reason_must_be_one_of_the_names_given() -> None:
    names = {"NO_SOCKET", "TC_INGRESS", "NETFILTER_DROP"}
    asked: list[int] = []

    def known() -> set[str]:
        asked.append(1)
        return names

    assert parse("drop reason no_socket", known) == parse("drop reason no_socket")
    assert (
        parse('tcp and drop reason "TC_INGRESS"', known).text == 'tcp and drop reason "TC_INGRESS"'
    )
    with pytest.raises(FilterSyntaxError) as caught:
        parse("tcp and drop reason NO_SOKCET", known)
    assert str(caught.value) == (
        "column 21: expected a drop reason this kernel has (did you mean NO_SOCKET?), "
        "found 'NO_SOKCET'"
    )
    with pytest.raises(FilterSyntaxError, match=r"has \(NO_SOCKET, TC_INGRESS, \.\.\.\)"):
        parse("drop reason QWERTY", known)
    # the names are asked for only by a drop reason term; None, or no source, takes any name
    asked.clear()
    parse("port 22 and drops > 0", known)
    assert asked == []
    assert parse("drop reason QWERTY", lambda: None).text == "drop reason QWERTY"
    # a reason outside the kernel's enum (a subsystem's) is shown, and filtered, as its number
    assert parse("drop reason 65537", known).text == "drop reason 65537"
    assert parse("drop reason QWERTY").text == "drop reason QWERTY"


@pytest.mark.parametrize(("text", "column", "message"), ERRORS, ids=[t for t, _, _ in ERRORS])
def test_error_names_column_and_what_was_expected(text: str, column: int, message: str) -> None:
    with pytest.raises(FilterSyntaxError) as caught:
        parse(text)
    assert caught.value.column == column
    assert str(caught.value) == f"column {column}: {message}"
    assert "\n" not in str(caught.value)


def test_syntax_error_is_a_usage_error() -> None:
    with pytest.raises(UsageError) as caught:
        parse("port x")
    assert caught.value.exit_code == 2


def test_odd_token_in_message_stays_on_one_line() -> None:
    with pytest.raises(FilterSyntaxError) as caught:
        parse('host "a\nb"')
    assert caught.value.column == 6
    assert "\n" not in str(caught.value)


def test_iface_names_that_need_quotes_render_quoted() -> None:
    assert str(parse('iface "we\'ird; if"')) == 'iface "we\'ird; if"'
    assert str(parse(r'iface "a \"b\" \\ c"')) == r'iface "a \"b\" \\ c"'
    assert parse(r'iface "a \"b\" \\ c"').to_sql() == ("iface = ?", ['a "b" \\ c'])
    assert str(parse('iface "and"')) == 'iface "and"'  # keywords are quoted for readability
    assert str(parse('iface ""')) == 'iface ""'
    assert str(parse('iface "eth0.100"')) == "iface eth0.100"


def test_module_stays_out_of_the_ui_and_kernel_layers() -> None:
    code = (
        "import sys, flowscope.query.filter; "
        "print([m for m in ('textual', 'bcc', 'pyroute2') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- property tests --------------------------------------------------------------------------

ADDRESSES = [
    "10.0.0.1",
    "10.0.0.200",
    "192.168.1.10",
    "8.8.8.8",
    "2001:db8::1",
    "2001:db8:1::2",
    "fe80::1",
    "::ffff:10.0.0.1",
]
IFACES = ["eth0", "eth1", "wg0", "we'ird; if", "and", 'q"uote\\']
addresses = st.sampled_from(ADDRESSES) | st.ip_addresses().map(str)
ports = st.sampled_from([0, 22, 53, 443, 65535]) | st.integers(0, 65535)
counts = st.sampled_from([0, 1, 1000, 1500, 10**6]) | st.integers(0, 2**63 - 1)
sides = st.sampled_from(["src", "dst", "any"])
ifaces = st.sampled_from(IFACES) | st.text(st.characters(codec="utf-8"), max_size=16)
names = st.text(st.characters(codec="utf-8"), min_size=1, max_size=16)
owners = st.none() | st.sampled_from([NGINX, SSHD, SHELL])


@st.composite
def networks(draw: st.DrawFn) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    address = ipaddress.ip_address(draw(addresses))
    prefix = draw(st.integers(0, address.max_prefixlen))
    return ipaddress.ip_network(f"{address}/{prefix}", strict=False)


leaves: st.SearchStrategy[Expr] = st.one_of(
    st.builds(Host, sides, addresses.map(lambda a: str(ipaddress.ip_address(a)))),
    st.builds(Net, sides, networks()),
    st.builds(Port, sides, ports),
    st.builds(Equals, st.just("proto"), st.sampled_from([1, 6, 17, 58, 132]) | st.integers(0, 255)),
    st.builds(Equals, st.just("vlan"), st.sampled_from([0, 100]) | st.integers(0, 4095)),
    st.builds(Equals, st.just("iface"), ifaces),
    st.builds(Equals, st.just("direction"), st.sampled_from(["ingress", "egress"])),
    st.builds(
        Compare,
        st.sampled_from(["bytes", "packets"]),
        st.sampled_from([">", ">=", "<", "<=", "=", "!="]),
        counts,
    ),
    st.builds(Flags, st.integers(1, 255)),
    st.builds(Owned, st.just("comm"), st.sampled_from(["nginx", "sshd", "curl"]) | names),
    st.builds(Owned, st.just("pid"), st.sampled_from([812, 640, 4410]) | st.integers(0, 2**22)),
    st.builds(Owned, st.just("uid"), st.sampled_from([0, 33, 1000]) | st.integers(0, 2**32 - 1)),
    st.builds(Owned, st.just("container"), st.sampled_from(["nginx.service", ""]) | names),
    st.builds(
        Health,
        st.sampled_from(["retrans", "rtt_us", "drops", "resets"]),
        st.sampled_from([">", ">=", "<", "<=", "=", "!="]),
        st.sampled_from([0, 1, 3, 1000, 50_000]) | st.integers(0, 2**40),
    ),
    st.builds(DropReason, st.sampled_from(["NO_SOCKET", "tc_ingress", "ß", "É"]) | names),
)
trees: st.SearchStrategy[Expr] = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.builds(Not, children),
        st.lists(children, min_size=2, max_size=4).map(lambda ps: And(tuple(ps))),
        st.lists(children, min_size=2, max_size=4).map(lambda ps: Or(tuple(ps))),
    ),
    max_leaves=12,
)


@st.composite
def rows(draw: st.DrawFn, id: int) -> Row:
    src, dst = draw(addresses), draw(addresses)
    return Row(
        id=id,
        iface=draw(ifaces),
        vlan=draw(st.sampled_from([0, 100]) | st.integers(0, 4095)),
        family=6 if ":" in src else 4,
        src=src,
        dst=dst,
        sport=draw(ports),
        dport=draw(ports),
        proto=draw(st.sampled_from([1, 6, 17, 58, 132]) | st.integers(0, 255)),
        packets=draw(counts),
        bytes=draw(counts),
        ip_bytes=0,
        tcp_flags=draw(st.integers(0, 255)),
        direction=draw(st.sampled_from(["ingress", "egress"])),
        **dict(zip(("pid", "comm", "uid", "container"), draw(owners) or (None,) * 4, strict=True)),
        retrans=draw(st.none() | st.sampled_from([0, 1, 3]) | st.integers(0, 2**31)),
        rtt_us=draw(st.none() | st.sampled_from([999, 1000, 50_000]) | st.integers(0, 2**31)),
        drops=draw(st.none() | st.sampled_from([0, 1, 3]) | st.integers(0, 2**31)),
        drop_reason=draw(
            st.none() | st.sampled_from(["NO_SOCKET", "TC_INGRESS", "SS", "é"]) | names
        ),
        resets=draw(st.none() | st.sampled_from([0, 1, 2])),
    )


row_sets = st.integers(1, 12).flatmap(lambda n: st.tuples(*(rows(i) for i in range(1, n + 1))))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=trees, sample=row_sets)
def test_rendered_tree_parses_to_an_equivalent_filter(tree: Expr, sample: tuple[Row, ...]) -> None:
    original = Filter(tree)
    parsed = parse(str(original))
    assert str(parse(str(parsed))) == str(parsed)  # the canonical form is a fixed point
    for row in sample:
        assert parsed.matches(row) == original.matches(row)
    conn = make_db(sample)
    try:
        assert sql_ids(conn, parsed) == memory_ids(sample, original)
    finally:
        conn.close()


INJECTIONS = [
    "'; DROP TABLE flows; --",
    '"; DROP TABLE flows; --',
    "x' OR '1'='1",
    "eth0) OR 1=1 --",
    "\\",
    "\\'",
    "",
    "a\x00b",
]


def quoted(name: str) -> str:
    """The documented quoting rule for interface names."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(INJECTIONS) | st.text(st.characters(codec="utf-8")))
def test_iface_text_is_bound_never_spliced(name: str) -> None:
    f = parse(f"iface {quoted(name)}")
    assert f.to_sql() == ("iface = ?", [name])
    assert parse(str(f)) == f
    conn = make_db(
        [ROWS[0], Row(99, name, *astuple(ROWS[0])[2:])]  # same flow, the odd name as iface
    )
    try:
        assert sql_ids(conn, f) == ({1, 99} if name == "eth0" else {99})
        assert conn.execute("SELECT count(*) FROM flows").fetchone() == (2,)
    finally:
        conn.close()


def test_drop_table_text_never_reaches_sql() -> None:
    where, params = parse('iface "\'; DROP TABLE flows; --" or not iface x').to_sql()
    assert "DROP" not in where and "'" not in where
    assert params == ["'; DROP TABLE flows; --", "x"]


VOCABULARY = [
    "host", "src", "dst", "net", "port", "sport", "dport", "proto", "tcp", "udp", "icmp",
    "icmp6", "vlan", "iface", "bytes", "packets", "flags", "ingress", "egress", "and", "or",
    "not", "&&", "||", "!", "(", ")", ">", ">=", "<", "<=", "=", "!=", "==", "10.0.0.1",
    "10.0.0.0/8", "2001:DB8::1", "::/0", "80", "65536", "1.5M", "10k", "SA", "x", '"', '"a b"',
    "\\", "'", ";", "-1", "4095", "99999999999999999999999", "retrans", "rtt", "drops", "drop",
    "reason", "50ms", "1.5s", "800us", "9e9s", "NO_SOCKET",
]  # fmt: skip


@settings(max_examples=500, deadline=None)
@given(
    text=st.text()
    | st.lists(st.sampled_from(VOCABULARY), max_size=12).map(" ".join)
    | st.lists(st.sampled_from(VOCABULARY), max_size=12).map("".join)
)
def test_parse_fails_only_with_filter_syntax_error(text: str) -> None:
    try:
        f = parse(text)
    except FilterSyntaxError as e:
        assert 1 <= e.column <= len(text) + 1
        assert "\n" not in str(e)
        return
    # Whatever parses renders back to itself and runs as SQL.
    assert parse(str(f)) == f
    conn = make_db(ROWS)
    try:
        assert sql_ids(conn, f) == memory_ids(ROWS, f)
    finally:
        conn.close()
