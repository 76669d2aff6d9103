/*
 * jsonl.c - flow records as JSON lines (the format is in jsonl.h).
 *
 * Per record: fixed keys copied as literals, integers by a two-digits-at-a-
 * time conversion, addresses by hand (inet_ntop would print IPv4-mapped
 * IPv6 addresses with a dotted tail, Python's ipaddress does not). No
 * snprintf, nothing allocated.
 */
#include <errno.h>
#include <poll.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "flowtable.h"
#include "jsonl.h"

/* the longest line: two IPv6 addresses of 39 characters, every integer at
 * its maximum, every optional key: well below JSONL_LINE_MAX */
_Static_assert(JSONL_LINE_MAX >= 768, "JSONL_LINE_MAX too small");

static const char DIGITS2[201] =
    "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
    "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
    "8081828384858687888990919293949596979899";
static const char HEX[] = "0123456789abcdef";

static inline char *put_lit(char *p, const char *s, size_t len)
{
    memcpy(p, s, len);
    return p + len;
}

#define LIT(p, s) put_lit((p), (s), sizeof(s) - 1)

static inline char *put_u64(char *p, uint64_t v)
{
    char tmp[20];
    char *t = tmp + sizeof(tmp);
    size_t len;

    while (v >= 100) {
        unsigned d = (unsigned)(v % 100) * 2;
        v /= 100;
        t -= 2;
        t[0] = DIGITS2[d];
        t[1] = DIGITS2[d + 1];
    }
    if (v >= 10) {
        t -= 2;
        t[0] = DIGITS2[v * 2];
        t[1] = DIGITS2[v * 2 + 1];
    } else {
        *--t = (char)('0' + v);
    }
    len = (size_t)(tmp + sizeof(tmp) - t);
    memcpy(p, t, len);
    return p + len;
}

static inline char *put_ipv4(char *p, const uint8_t *a)
{
    for (int i = 0; i < 4; i++) {
        if (i)
            *p++ = '.';
        p = put_u64(p, a[i]);
    }
    return p;
}

static inline char *put_hextet(char *p, unsigned v)
{
    int shift = 12;

    while (shift > 0 && !(v >> shift))
        shift -= 4;
    for (; shift >= 0; shift -= 4)
        *p++ = HEX[(v >> shift) & 0xf];
    return p;
}

/* RFC 5952 as Python's ipaddress.IPv6Address.__str__ (3.11) */
static char *put_ipv6(char *p, const uint8_t *a)
{
    unsigned h[8];
    int best = -1, best_len = 0, cur = -1, cur_len = 0;

    for (int i = 0; i < 8; i++) {
        h[i] = (unsigned)a[2 * i] << 8 | a[2 * i + 1];
        if (h[i] == 0) {
            if (cur < 0) {
                cur = i;
                cur_len = 0;
            }
            cur_len++;
            if (cur_len > best_len) {
                best = cur;
                best_len = cur_len;
            }
        } else {
            cur = -1;
        }
    }
    if (best_len < 2)
        best = -1;
    for (int i = 0; i < 8; i++) {
        if (i == best) {
            *p++ = ':';
            if (i == 0)
                *p++ = ':';
            i += best_len - 1;
            continue;
        }
        p = put_hextet(p, h[i]);
        if (i < 7)
            *p++ = ':';
    }
    return p;
}

static inline char *put_mac(char *p, const uint8_t *m)
{
    for (int i = 0; i < 6; i++) {
        if (i)
            *p++ = ':';
        *p++ = HEX[m[i] >> 4];
        *p++ = HEX[m[i] & 0xf];
    }
    return p;
}

static size_t format_record(const struct ft_record *r, char *out)
{
    char *p = out;
    int v4 = r->ip_version == 4;

    if (v4) {
        p = LIT(p, "{\"sourceIPv4Address\":\"");
        p = put_ipv4(p, r->src_addr);
        p = LIT(p, "\",\"destinationIPv4Address\":\"");
        p = put_ipv4(p, r->dst_addr);
    } else {
        p = LIT(p, "{\"sourceIPv6Address\":\"");
        p = put_ipv6(p, r->src_addr);
        p = LIT(p, "\",\"destinationIPv6Address\":\"");
        p = put_ipv6(p, r->dst_addr);
    }
    p = LIT(p, "\",\"sourceTransportPort\":");
    p = put_u64(p, r->src_port);
    p = LIT(p, ",\"destinationTransportPort\":");
    p = put_u64(p, r->dst_port);
    p = LIT(p, ",\"protocolIdentifier\":");
    p = put_u64(p, r->protocol);
    p = LIT(p, ",\"ipClassOfService\":");
    p = put_u64(p, r->tos);
    p = LIT(p, ",\"packetDeltaCount\":");
    p = put_u64(p, r->packets);
    p = LIT(p, ",\"octetDeltaCount\":");
    p = put_u64(p, r->octets);
    p = LIT(p, ",\"flowStartMilliseconds\":");
    p = put_u64(p, r->first_ns / 1000000);
    p = LIT(p, ",\"flowEndMilliseconds\":");
    p = put_u64(p, r->last_ns / 1000000);
    p = LIT(p, ",\"flowEndReason\":");
    p = put_u64(p, r->end_reason);
    p = LIT(p, ",\"ipVersion\":");
    p = put_u64(p, r->ip_version);
    p = LIT(p, ",\"minimumTTL\":");
    p = put_u64(p, r->ttl_min);
    p = LIT(p, ",\"maximumTTL\":");
    p = put_u64(p, r->ttl_max);
    p = LIT(p, ",\"ingressInterface\":");
    p = put_u64(p, r->ifindex);
    if (r->protocol == 6) {
        p = LIT(p, ",\"tcpControlBits\":");
        p = put_u64(p, r->tcp_flags);
    }
    if (r->protocol == 1 && v4) {
        p = LIT(p, ",\"icmpTypeCodeIPv4\":");
        p = put_u64(p, r->dst_port);
    } else if (r->protocol == 58 && !v4) {
        p = LIT(p, ",\"icmpTypeCodeIPv6\":");
        p = put_u64(p, r->dst_port);
    }
    if (r->vlan) {
        p = LIT(p, ",\"vlanId\":");
        p = put_u64(p, r->vlan);
    }
    if (r->inner_vlan) {
        p = LIT(p, ",\"dot1qCustomerVlanId\":");
        p = put_u64(p, r->inner_vlan);
    }
    if (r->has_mac) {
        p = LIT(p, ",\"sourceMacAddress\":\"");
        p = put_mac(p, r->src_mac);
        p = LIT(p, "\",\"destinationMacAddress\":\"");
        p = put_mac(p, r->dst_mac);
        *p++ = '"';
    }
    p = LIT(p, "}\n");
    return (size_t)(p - out);
}

size_t jsonl_format(uintptr_t record, char *out)
{
    return format_record((const struct ft_record *)record, out);
}

static int write_all(int fd, const char *buf, size_t len)
{
    while (len) {
        ssize_t w = write(fd, buf, len);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN) {
                struct pollfd pfd = { .fd = fd, .events = POLLOUT };
                if (poll(&pfd, 1, -1) < 0 && errno != EINTR)
                    return -errno;
                continue;
            }
            return -errno;
        }
        buf += w;
        len -= (size_t)w;
    }
    return 0;
}

int jsonl_write(int fd, uintptr_t records, size_t n, char *buf, size_t cap,
                size_t chunk)
{
    const struct ft_record *recs = (const struct ft_record *)records;
    size_t pos = 0;
    int rc;

    if (!buf || chunk == 0 || cap < chunk + JSONL_LINE_MAX)
        return -EINVAL;
    for (size_t i = 0; i < n; i++) {
        size_t len = format_record(&recs[i], buf + pos);
        if (pos + len > chunk && pos > 0) {
            /* the chunk is full: write it, keep the new line for the next */
            rc = write_all(fd, buf, pos);
            if (rc)
                return rc;
            memmove(buf, buf + pos, len);
            pos = 0;
        }
        pos += len;
    }
    return pos ? write_all(fd, buf, pos) : 0;
}
