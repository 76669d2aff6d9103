/*
 * parse.c - link layer -> VLAN/MPLS -> IPv4/IPv6 (+ extension headers) ->
 * TCP/UDP/SCTP/ICMP fields of one packet, never reading past caplen.
 *
 * Accounting rule (see enum ft_skip in flowtable.h): a packet is accepted
 * once its network header is fully captured and consistent. Everything
 * beyond it is best effort: what was not captured stays zero and the
 * packet is flagged l4_partial. Octets are the IP total length, so a
 * snap-length-truncated packet counts its full length and Ethernet padding
 * never counts. The transport header is only read inside the IP datagram
 * (never into padding).
 */
#include <string.h>

#include "ft_internal.h"

#define ETH_P_IPV4 0x0800
#define ETH_P_IPV6 0x86DD
#define ETH_P_8021Q 0x8100
#define ETH_P_8021AD 0x88A8
#define ETH_P_QINQ_OLD 0x9100
#define ETH_P_MPLS_UC 0x8847
#define ETH_P_MPLS_MC 0x8848
#define ETH_P_PPPOE_SESS 0x8864

#define MAX_MPLS_LABELS 8
#define MAX_IPV6_EXT 8

static inline uint16_t be16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }

static inline uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static inline uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[3] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[1] << 8 | p[0];
}

static int is_vlan_tpid(uint16_t et)
{
    return et == ETH_P_8021Q || et == ETH_P_8021AD || et == ETH_P_QINQ_OLD;
}

/* BSD AF_ values of the NULL/LOOP link types (they differ per OS). */
static uint16_t af_to_ethertype(uint32_t af)
{
    switch (af) {
    case 2:
        return ETH_P_IPV4;
    case 10: /* Linux */
    case 24: /* NetBSD, OpenBSD */
    case 28: /* FreeBSD */
    case 30: /* macOS */
        return ETH_P_IPV6;
    default:
        return 0;
    }
}

/* Transport fields from the bytes l4[0..len) of protocol proto. */
static void parse_l4(struct ft_parsed *o, uint8_t proto, const uint8_t *l4, uint32_t len)
{
    switch (proto) {
    case 6: /* TCP */
        if (len >= 4) {
            o->key.sport = be16(l4);
            o->key.dport = be16(l4 + 2);
        }
        if (len >= 14)
            o->tcp_flags = l4[13];
        else
            o->l4_partial = 1;
        break;
    case 17:  /* UDP */
    case 33:  /* DCCP */
    case 132: /* SCTP */
    case 136: /* UDP-Lite */
        if (len >= 4) {
            o->key.sport = be16(l4);
            o->key.dport = be16(l4 + 2);
        } else {
            o->l4_partial = 1;
        }
        break;
    case 1:  /* ICMP: only inside IPv4 */
    case 58: /* ICMPv6: only inside IPv6 */
        if ((proto == 1) != (o->key.ipver == 4))
            break;
        if (len >= 2)
            o->key.dport = (uint16_t)(l4[0] << 8 | l4[1]);
        else
            o->l4_partial = 1;
        break;
    default:
        break;
    }
}

static int parse_ipv4(struct ft_parsed *o, const uint8_t *ip, uint32_t cap, uint32_t wire)
{
    if (cap < 20)
        return FT_SKIP_IP_TRUNCATED;
    if ((ip[0] >> 4) != 4)
        return FT_SKIP_IP_VERSION;
    uint32_t ihl = (uint32_t)(ip[0] & 0x0f) * 4;
    if (ihl < 20)
        return FT_SKIP_IP_HEADER;
    if (cap < ihl)
        return FT_SKIP_IP_TRUNCATED;
    uint32_t total = be16(ip + 2);
    if (total == 0) {
        /* TSO/BIG TCP super-frames captured on the sending host carry 0. */
        total = wire;
    } else if (total < ihl) {
        return FT_SKIP_IP_HEADER;
    } else if (total > wire) {
        return FT_SKIP_IP_LENGTH;
    }
    o->key.ipver = 4;
    o->key.tos = ip[1];
    o->ttl = ip[8];
    o->key.proto = ip[9];
    memcpy(o->key.src, ip + 12, 4);
    memcpy(o->key.dst, ip + 16, 4);
    o->octets = total;
    if ((be16(ip + 6) & 0x1fff) != 0) {
        o->fragment = 1;
        return FT_PARSE_OK;
    }
    uint32_t end = total < cap ? total : cap;
    parse_l4(o, o->key.proto, ip + ihl, end - ihl);
    return FT_PARSE_OK;
}

/* The Jumbo Payload option (RFC 2675) of a hop-by-hop header, or 0. */
static uint32_t ipv6_jumbo_length(const uint8_t *hbh, uint32_t len)
{
    uint32_t off = 2;
    while (off < len) {
        uint8_t type = hbh[off];
        if (type == 0) { /* Pad1 */
            off++;
            continue;
        }
        if (off + 2 > len)
            return 0;
        uint8_t olen = hbh[off + 1];
        if (type == 0xC2 && olen == 4 && off + 6 <= len)
            return be32(hbh + off + 2);
        off += 2u + olen;
    }
    return 0;
}

static int parse_ipv6(struct ft_parsed *o, const uint8_t *ip, uint32_t cap, uint32_t wire)
{
    if (cap < 40)
        return FT_SKIP_IP_TRUNCATED;
    if ((ip[0] >> 4) != 6)
        return FT_SKIP_IP_VERSION;
    uint32_t total = 40u + be16(ip + 4);
    uint8_t nh = ip[6];
    if (total == 40 && nh == 0) {
        /* Jumbogram (or BIG TCP): the length is in the hop-by-hop header. */
        uint32_t hlen = cap >= 42 ? ((uint32_t)ip[41] + 1) * 8 : 0;
        uint32_t jumbo = (hlen && 40 + hlen <= cap) ? ipv6_jumbo_length(ip + 40, hlen) : 0;
        total = jumbo ? 40u + jumbo : wire;
    }
    if (total > wire)
        return FT_SKIP_IP_LENGTH;
    o->key.ipver = 6;
    o->key.tos = (uint8_t)((ip[0] & 0x0f) << 4 | ip[1] >> 4);
    o->ttl = ip[7];
    memcpy(o->key.src, ip + 8, 16);
    memcpy(o->key.dst, ip + 24, 16);
    o->octets = total;

    /* A bounded walk of the extension headers, inside the datagram. */
    uint32_t end = total < cap ? total : cap;
    uint32_t off = 40;
    for (int i = 0; i <= MAX_IPV6_EXT; i++) {
        o->key.proto = nh;
        uint32_t hlen;
        switch (nh) {
        case 0:   /* hop-by-hop */
        case 43:  /* routing */
        case 60:  /* destination options */
        case 135: /* mobility */
            if (off + 2 > end)
                goto partial;
            hlen = ((uint32_t)ip[off + 1] + 1) * 8;
            break;
        case 51: /* AH */
            if (off + 2 > end)
                goto partial;
            hlen = ((uint32_t)ip[off + 1] + 2) * 4;
            break;
        case 44: /* fragment */
            if (off + 8 > end)
                goto partial;
            if ((be16(ip + off + 2) >> 3) != 0) {
                o->key.proto = ip[off];
                o->fragment = 1;
                return FT_PARSE_OK;
            }
            hlen = 8;
            break;
        default:
            parse_l4(o, nh, ip + off, end > off ? end - off : 0);
            return FT_PARSE_OK;
        }
        if (off + hlen > end)
            goto partial;
        nh = ip[off];
        off += hlen;
    }
partial:
    /* Chain truncated or longer than the walk allows: keep what we have. */
    o->l4_partial = 1;
    return FT_PARSE_OK;
}

/* Link layer: returns the offset of the network header and its ethertype
 * (0 when not IP), or a skip reason through *skip. */
static uint32_t parse_link(struct ft_parsed *o, const struct ft_pkt *p, uint32_t linktype,
                           uint16_t *ethertype, int *skip)
{
    const uint8_t *d = p->data;
    uint32_t cap = p->caplen;
    uint32_t off;
    uint16_t et;
    *skip = FT_PARSE_OK;

    switch (linktype) {
    case FT_LINK_ETHERNET:
        if (cap < 14)
            goto truncated;
        o->mac = d;
        o->has_mac = 1;
        et = be16(d + 12);
        off = 14;
        break;
    case FT_LINK_LINUX_SLL:
        if (cap < 16)
            goto truncated;
        et = be16(d + 14);
        off = 16;
        break;
    case FT_LINK_LINUX_SLL2:
        if (cap < 20)
            goto truncated;
        et = be16(d);
        off = 20;
        break;
    case FT_LINK_RAW:
    case FT_LINK_RAW_DLT12:
    case FT_LINK_RAW_DLT14:
        if (cap < 1) {
            *skip = FT_SKIP_IP_TRUNCATED;
            return 0;
        }
        et = (d[0] >> 4) == 6 ? ETH_P_IPV6 : ETH_P_IPV4;
        off = 0;
        break;
    case FT_LINK_IPV4:
        et = ETH_P_IPV4;
        off = 0;
        break;
    case FT_LINK_IPV6:
        et = ETH_P_IPV6;
        off = 0;
        break;
    case FT_LINK_NULL:
    case FT_LINK_LOOP: {
        if (cap < 4)
            goto truncated;
        uint32_t af = linktype == FT_LINK_LOOP ? be32(d) : le32(d);
        if (af > 0xffff) /* written on a host of the other byte order */
            af = (af >> 24) | ((af >> 8) & 0xff00);
        et = af_to_ethertype(af);
        off = 4;
        break;
    }
    default:
        *skip = FT_SKIP_LINKTYPE;
        return 0;
    }

    /* VLAN tags: a kernel-stripped tag is the outer one. */
    int tags = 0;
    if (p->vlan_valid) {
        o->key.vlan = p->vlan_tci & 0x0fff;
        tags = 1;
    }
    while (is_vlan_tpid(et)) {
        if (cap < off + 4)
            goto truncated;
        if (tags == 2) {
            *skip = FT_SKIP_VLAN_DEPTH;
            return 0;
        }
        uint16_t vid = be16(d + off) & 0x0fff;
        if (tags == 0)
            o->key.vlan = vid;
        else
            o->inner_vlan = vid;
        tags++;
        et = be16(d + off + 2);
        off += 4;
    }

    if (et == ETH_P_MPLS_UC || et == ETH_P_MPLS_MC) {
        int labels = 0;
        for (;;) {
            if (cap < off + 4)
                goto truncated;
            int bottom = d[off + 2] & 1;
            off += 4;
            if (++labels > MAX_MPLS_LABELS) {
                *skip = FT_SKIP_MPLS;
                return 0;
            }
            if (bottom)
                break;
        }
        if (cap < off + 1) {
            *skip = FT_SKIP_IP_TRUNCATED;
            return 0;
        }
        uint8_t v = d[off] >> 4;
        if (v != 4 && v != 6) {
            *skip = FT_SKIP_MPLS;
            return 0;
        }
        et = v == 4 ? ETH_P_IPV4 : ETH_P_IPV6;
    } else if (et == ETH_P_PPPOE_SESS) {
        /* PPPoE session header (6) + PPP protocol (2). */
        if (cap < off + 8)
            goto truncated;
        uint16_t ppp = be16(d + off + 6);
        et = ppp == 0x0021 ? ETH_P_IPV4 : ppp == 0x0057 ? ETH_P_IPV6 : 0;
        off += 8;
    }
    *ethertype = et;
    return off;

truncated:
    *skip = FT_SKIP_L2_TRUNCATED;
    return 0;
}

int ft_parse(const struct ft_pkt *p, uint32_t linktype, struct ft_parsed *o)
{
    memset(o, 0, sizeof(*o));
    uint16_t et = 0;
    int skip;
    uint32_t off = parse_link(o, p, linktype, &et, &skip);
    if (skip != FT_PARSE_OK)
        return skip;

    uint32_t cap = p->caplen - off;
    uint32_t wire = p->wirelen > p->caplen ? p->wirelen : p->caplen;
    wire -= off;
    const uint8_t *ip = p->data + off;

    if (linktype == FT_LINK_IPV4 || linktype == FT_LINK_IPV6) {
        /* The link type promises a version: a mismatch is malformed. */
        if (cap >= 1 && (ip[0] >> 4) != (linktype == FT_LINK_IPV4 ? 4 : 6))
            return FT_SKIP_IP_VERSION;
    }
    int v;
    if (et == ETH_P_IPV4)
        v = parse_ipv4(o, ip, cap, wire);
    else if (et == ETH_P_IPV6)
        v = parse_ipv6(o, ip, cap, wire);
    else
        return FT_SKIP_NON_IP;
    if (v == FT_PARSE_OK) {
        /* What DPI reads: the datagram as captured, never the padding. */
        o->l3 = ip;
        o->l3_len = o->octets < cap ? o->octets : cap;
    }
    return v;
}
