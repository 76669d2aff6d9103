"""Test helper: build `struct ft_record` arrays (the layout of
include/ft_records.h, declared in the exporters' own cffi module)."""
import ipaddress

from flowprobe.exporters._encode import ffi

T0_NS = 1685577600_123_456_789      # 2023-06-01T00:00:00.123456789Z


def make_records(specs):
    """specs: dicts with src/dst (address strings) and any ft_record field."""
    arr = ffi.new("struct ft_record[]", max(1, len(specs)))
    for i, s in enumerate(specs):
        r = arr[i]
        src = ipaddress.ip_address(s.get("src", "198.18.0.1"))
        dst = ipaddress.ip_address(s.get("dst", "198.19.0.1"))
        r.ip_version = src.version
        ffi.memmove(r.src_addr, src.packed, len(src.packed))
        ffi.memmove(r.dst_addr, dst.packed, len(dst.packed))
        r.packets = s.get("packets", 1)
        r.octets = s.get("octets", 100)
        r.first_ns = s.get("first_ns", T0_NS)
        r.last_ns = s.get("last_ns", r.first_ns)
        for k in ("ifindex", "src_port", "dst_port", "vlan", "inner_vlan", "protocol",
                  "tos", "tcp_flags", "ttl_min", "ttl_max", "end_reason"):
            if k in s:
                setattr(r, k, s[k])
        for k in ("app_master", "app_id", "app_source"):
            if k in s:
                setattr(r, k, s[k])
        if "app_name" in s:
            name = s["app_name"].encode() if isinstance(s["app_name"], str) else s["app_name"]
            ffi.memmove(r.app_name, name, len(name))
        if "src_mac" in s:
            r.has_mac = 1
            ffi.memmove(r.src_mac, bytes.fromhex(s["src_mac"].replace(":", "")), 6)
            ffi.memmove(r.dst_mac, bytes.fromhex(s["dst_mac"].replace(":", "")), 6)
    return arr


def address(arr):
    return int(ffi.cast("uintptr_t", arr))


FIXED = [
    dict(src="198.18.0.1", dst="198.19.0.2", protocol=6, src_port=40000, dst_port=443,
         tcp_flags=0x1B, tos=0x10, packets=10, octets=5200, ttl_min=60, ttl_max=64,
         first_ns=T0_NS, last_ns=T0_NS + 1_500_000_000, ifindex=3, vlan=100, end_reason=3,
         src_mac="02:00:00:00:00:01", dst_mac="02:00:00:00:00:02"),
    dict(src="2001:db8::1", dst="2001:db8::2", protocol=58, dst_port=128 << 8, packets=2,
         octets=208, ttl_min=64, ttl_max=64, first_ns=T0_NS + 5_000_000,
         last_ns=T0_NS + 1_005_000_000, ifindex=3, end_reason=1),
    dict(src="198.18.0.3", dst="198.19.0.4", protocol=1, dst_port=(3 << 8) | 3, packets=1,
         octets=56, tos=0, ttl_min=255, ttl_max=255, first_ns=T0_NS + 7_000_000,
         ifindex=3, vlan=200, inner_vlan=300, end_reason=4),
    dict(src="198.18.0.5", dst="198.19.0.6", protocol=17, src_port=5353, dst_port=5353,
         packets=5_000_000_000, octets=(1 << 32) + 5, first_ns=T0_NS,
         last_ns=T0_NS + 60_000_000_000, ifindex=70000, end_reason=2),
]


# The FIXED records labelled by nDPI (4.2 ids): TLS.Google, an unknown flow
# (inspected, nothing found), DNS guessed at give-up, and one flow that got
# no DPI state (no label).
APP = [dict(app_master=91, app_id=126, app_source=1, app_name="TLS.Google"),
       dict(app_master=0, app_id=0, app_source=4, app_name="Unknown"),
       dict(app_master=0, app_id=5, app_source=2, app_name="DNS"),
       dict(app_source=3)]
FIXED_APP = [{**f, **a} for f, a in zip(FIXED, APP)]
