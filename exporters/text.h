/*
 * text.h - numbers, addresses and MACs as text, for the exporters that write
 * text (jsonl.c: JSON lines; tlv.c: ntopng's TLV strings). Internal: not
 * part of any cffi cdef. Each put_* writes at p and returns the end; the
 * caller provides the room (20 digits, 15 for IPv4, 39 for IPv6, 17 for a
 * MAC). Addresses are written by hand, as Python's ipaddress writes them
 * (inet_ntop would print IPv4-mapped IPv6 addresses with a dotted tail):
 * the JSON lines stay byte-identical to json.dumps of the Python records.
 */
#ifndef FLOWPROBE_TEXT_H
#define FLOWPROBE_TEXT_H

#include <stddef.h>
#include <stdint.h>

static const char DIGITS2[201] =
    "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
    "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
    "8081828384858687888990919293949596979899";
static const char HEX[] = "0123456789abcdef";

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
static inline char *put_ipv6(char *p, const uint8_t *a)
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

#endif
