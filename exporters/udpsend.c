/* udpsend.c - see udpsend.h. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "udpsend.h"

#define UDP_BATCH_MAX 64

int udp_send_batch(int fd, const uint8_t *buf, const uint32_t *lens,
                   uint32_t n, int *err)
{
    struct mmsghdr msgs[UDP_BATCH_MAX];
    struct iovec iov[UDP_BATCH_MAX];
    uint32_t done = 0;
    size_t off = 0;

    *err = 0;
    while (done < n) {
        uint32_t k = n - done < UDP_BATCH_MAX ? n - done : UDP_BATCH_MAX;
        size_t o = off;
        memset(msgs, 0, sizeof(msgs[0]) * k);
        for (uint32_t i = 0; i < k; i++) {
            iov[i].iov_base = (void *)(buf + o);
            iov[i].iov_len = lens[done + i];
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            o += lens[done + i];
        }
        int rc = sendmmsg(fd, msgs, k, 0);
        if (rc < 0) {
            if (errno == EINTR)
                continue;
            *err = errno;
            return (int)done;
        }
        for (int i = 0; i < rc; i++)
            off += lens[done + (uint32_t)i];
        done += (uint32_t)rc;
        if ((uint32_t)rc < k) {
            /* The kernel stopped early: the next call reports why. */
            continue;
        }
    }
    return (int)done;
}
