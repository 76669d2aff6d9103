/* udpsend.c - see udpsend.h. */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "udpsend.h"

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif

#define UDP_BATCH_MAX 64           /* sends per sendmmsg() */
#define UDP_GSO_SEGS 64            /* the kernel's UDP_MAX_SEGMENTS before 5.3 */
#define UDP_GSO_BYTES 64000        /* below IPv4's 65507-byte payload limit */

/* How many messages from `i` go in one send: a run of one size, its last
 * message possibly shorter (what UDP_SEGMENT cuts back exactly). */
static uint32_t run_of(const uint32_t *lens, uint32_t i, uint32_t n)
{
    uint32_t seg = lens[i], k = 1;
    size_t bytes = seg;

    while (i + k < n && k < UDP_GSO_SEGS && bytes + lens[i + k] <= UDP_GSO_BYTES &&
           lens[i + k] <= seg) {
        bytes += lens[i + k];
        if (lens[i + k++] < seg)
            break;
    }
    return k;
}

/* The kernel refused the offload itself, not the datagrams. */
static int gso_refused(int e)
{
    return e == EIO || e == EINVAL || e == EMSGSIZE || e == ENOPROTOOPT ||
           e == EOPNOTSUPP;
}

int udp_send_batch(int fd, const uint8_t *buf, const uint32_t *lens,
                   uint32_t n, int *gso, uint32_t *groups, uint32_t *ngroups,
                   int *err)
{
    struct mmsghdr msgs[UDP_BATCH_MAX];
    struct iovec iov[UDP_BATCH_MAX];
    uint32_t cnt[UDP_BATCH_MAX];
    union {
        char buf[CMSG_SPACE(sizeof(uint16_t))];
        struct cmsghdr align;
    } ctl[UDP_BATCH_MAX];
    uint32_t done = 0, ng = 0;
    size_t off = 0;

    *err = 0;
    while (done < n) {
        uint32_t k = 0, at = done;
        size_t o = off;
        int offloaded = 0;

        memset(msgs, 0, sizeof(msgs));
        while (k < UDP_BATCH_MAX && at < n) {
            uint32_t c = *gso ? run_of(lens, at, n) : 1;
            size_t bytes = 0;
            for (uint32_t j = 0; j < c; j++)
                bytes += lens[at + j];
            iov[k].iov_base = (void *)(buf + o);
            iov[k].iov_len = bytes;
            msgs[k].msg_hdr.msg_iov = &iov[k];
            msgs[k].msg_hdr.msg_iovlen = 1;
            if (c > 1) {
                struct cmsghdr *cm = (struct cmsghdr *)ctl[k].buf;
                uint16_t seg = (uint16_t)lens[at];
                msgs[k].msg_hdr.msg_control = ctl[k].buf;
                msgs[k].msg_hdr.msg_controllen = sizeof(ctl[k].buf);
                cm->cmsg_level = SOL_UDP;
                cm->cmsg_type = UDP_SEGMENT;
                cm->cmsg_len = CMSG_LEN(sizeof(seg));
                memcpy(CMSG_DATA(cm), &seg, sizeof(seg));
                if (k == 0)
                    offloaded = 1;
            }
            cnt[k++] = c;
            at += c;
            o += bytes;
        }
        int rc = sendmmsg(fd, msgs, k, 0);
        if (rc < 0) {
            if (errno == EINTR)
                continue;
            if (offloaded && gso_refused(errno)) {
                *gso = 0;          /* the same messages again, one by one */
                continue;
            }
            *err = errno;
            break;
        }
        for (int i = 0; i < rc; i++) {
            for (uint32_t j = 0; j < cnt[i]; j++)
                off += lens[done + j];
            done += cnt[i];
            if (groups)
                groups[ng] = cnt[i];
            ng++;
        }
        /* rc < k: the kernel stopped early; the next call reports why */
    }
    if (ngroups)
        *ngroups = ng;
    return (int)done;
}
