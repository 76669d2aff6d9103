/*
 * jsonl.c - flow records as JSON lines (the format is in jsonl.h).
 *
 * Per record: fixed keys copied as literals, integers and addresses by the
 * text helpers of text.h (shared with the ntopng TLV encoder). No snprintf,
 * nothing allocated.
 */
#include <errno.h>
#include <poll.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "ft_records.h"
#include "jsonl.h"
#include "text.h"

/* the longest line: two IPv6 addresses of 39 characters, every integer at
 * its maximum, every optional key (~600 bytes), and an application label of
 * 46 bytes each escaped as \u00XX (~340 bytes with its keys): below
 * JSONL_LINE_MAX (a test formats that record) */
_Static_assert(JSONL_LINE_MAX >= 1024, "JSONL_LINE_MAX too small");

static inline char *put_lit(char *p, const char *s, size_t len)
{
    memcpy(p, s, len);
    return p + len;
}

#define LIT(p, s) put_lit((p), (s), sizeof(s) - 1)

/* A JSON string body from at most `max` bytes of s (up to its NUL), as
 * Python's json.dumps writes s.decode("latin-1"): '"' and '\\' escaped,
 * \n \r \t \b \f by name, other control bytes and bytes >= 0x7f (DEL
 * too, as json.dumps does) as \u00XX. nDPI labels are plain ASCII; this
 * only keeps a bad byte from breaking the line. At most 6 output bytes per
 * input byte. */
static char *put_json_str(char *p, const char *s, size_t max)
{
    for (size_t i = 0; i < max && s[i]; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            *p++ = '\\';
            *p++ = (char)c;
        } else if (c >= 0x20 && c < 0x7f) {
            *p++ = (char)c;
        } else {
            *p++ = '\\';
            switch (c) {
            case '\n': *p++ = 'n'; break;
            case '\r': *p++ = 'r'; break;
            case '\t': *p++ = 't'; break;
            case '\b': *p++ = 'b'; break;
            case '\f': *p++ = 'f'; break;
            default:
                p = LIT(p, "u00");
                *p++ = HEX[c >> 4];
                *p++ = HEX[c & 0xf];
            }
        }
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
    if (r->app_source != FT_APP_NONE) {
        p = LIT(p, ",\"applicationName\":\"");
        p = put_json_str(p, r->app_name, sizeof(r->app_name));
        p = LIT(p, "\",\"ndpiMasterProtocol\":");
        p = put_u64(p, r->app_master);
        p = LIT(p, ",\"ndpiAppProtocol\":");
        p = put_u64(p, r->app_id);
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
