/*
 * ft_internal.h - what parse.c and flowtable.c share; not part of the API
 * (flowtable.h is). Everything here is private to the _flowtable extension.
 */
#ifndef FT_INTERNAL_H
#define FT_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "ft_records.h"
#include "flowtable.h"

/* The flow key: compared and hashed as six 64-bit words. Addresses in
 * network byte order (IPv4 in bytes 0..3, the rest zero); the rest in host
 * order. Padding is always zero so memcmp/hash see only meaningful bytes. */
struct ft_key {
    uint8_t src[16];
    uint8_t dst[16];
    uint32_t ifindex;
    uint16_t sport;
    uint16_t dport;     /* ICMP/ICMPv6: type << 8 | code */
    uint16_t vlan;      /* outer VLAN id, 0 when untagged */
    uint8_t proto;
    uint8_t tos;
    uint8_t ipver;      /* 4 or 6 */
    uint8_t pad[3];
};

/* What the parser extracted from one packet. */
struct ft_parsed {
    struct ft_key key;
    uint64_t hash;
    uint32_t octets;        /* IP total length (IPv6: 40 + payload) */
    uint16_t inner_vlan;
    uint8_t tcp_flags;
    uint8_t ttl;
    uint8_t has_mac;
    uint8_t l4_partial;     /* transport fields not (all) captured */
    uint8_t fragment;       /* a non-first fragment: no ports */
    uint8_t pad;
    const uint8_t *mac;     /* destination MAC, then source MAC */
    const uint8_t *l3;      /* the IP header (into the packet's data) */
    uint32_t l3_len;        /* captured bytes of the datagram from l3 on */
    uint32_t pad2;
};

/* Parse one packet. Returns FT_PARSE_OK, or an enum ft_skip reason. */
#define FT_PARSE_OK (-1)
int ft_parse(const struct ft_pkt *pkt, uint32_t linktype, struct ft_parsed *out);

/* TCP flag bits. */
#define FT_TCP_FIN 0x01
#define FT_TCP_RST 0x04

#endif
