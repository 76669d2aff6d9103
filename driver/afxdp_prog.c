/*
 * afxdp_prog.c - flowprobe's XDP program for the AF_XDP path (see afxdp.h):
 * a hand-assembled redirect into an XSKMAP, loaded with bpf() and attached
 * through a bpf_link; removal of a stale netlink-attached copy; queries for
 * `nic check`. The sockets are in afxdp.c.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/if_link.h>

#include "afxdp.h"

#define AFXDP_PROG_NAME "flowprobe_xsk"
#define AFXDP_MAP_NAME "flowprobe_xsks"
#define AFXDP_MAX_QUEUES 4096

static uint32_t mode_flags(uint32_t mode)
{
    return mode == AFXDP_MODE_SKB ? XDP_FLAGS_SKB_MODE : XDP_FLAGS_DRV_MODE;
}

/* r2 = ctx->rx_queue_index; r1 = map; r3 = XDP_DROP;
 * r0 = bpf_redirect_map(r1, r2, r3); exit */
static int load_program(int map_fd)
{
    struct bpf_insn insns[6];

    memset(insns, 0, sizeof(insns));
    insns[0].code = BPF_LDX | BPF_MEM | BPF_W;
    insns[0].dst_reg = BPF_REG_2;
    insns[0].src_reg = BPF_REG_1;
    insns[0].off = offsetof(struct xdp_md, rx_queue_index);
    insns[1].code = BPF_LD | BPF_DW | BPF_IMM;
    insns[1].dst_reg = BPF_REG_1;
    insns[1].src_reg = BPF_PSEUDO_MAP_FD;
    insns[1].imm = map_fd;
    /* insns[2]: the upper half of the 64-bit immediate, all zero */
    insns[3].code = BPF_ALU64 | BPF_MOV | BPF_K;
    insns[3].dst_reg = BPF_REG_3;
    insns[3].imm = XDP_DROP;
    insns[4].code = BPF_JMP | BPF_CALL;
    insns[4].imm = BPF_FUNC_redirect_map;
    insns[5].code = BPF_JMP | BPF_EXIT;
    int fd = bpf_prog_load(BPF_PROG_TYPE_XDP, AFXDP_PROG_NAME, "Dual BSD/GPL",
                           insns, 6, NULL);
    return fd < 0 ? -errno : fd;
}

/* fd and info (with its first map id) of program id, or -errno. */
static int prog_by_id(uint32_t id, struct bpf_prog_info *info, uint32_t *map_id)
{
    int fd = bpf_prog_get_fd_by_id(id);
    if (fd < 0)
        return -errno;
    uint32_t len = sizeof(*info);
    memset(info, 0, sizeof(*info));
    info->nr_map_ids = 1;
    info->map_ids = (uint64_t)(uintptr_t)map_id;
    if (bpf_obj_get_info_by_fd(fd, info, &len)) {
        int e = -errno;
        close(fd);
        return e;
    }
    return fd;
}

int afxdp_prog_query(int ifindex, uint32_t *prog_id, uint32_t *mode,
                     char *name, size_t name_len)
{
    LIBBPF_OPTS(bpf_xdp_query_opts, q);
    if (bpf_xdp_query(ifindex, 0, &q))
        return -errno;
    *prog_id = q.drv_prog_id ? q.drv_prog_id : q.skb_prog_id;
    *mode = q.drv_prog_id ? AFXDP_MODE_NATIVE
          : q.skb_prog_id ? AFXDP_MODE_SKB : AFXDP_MODE_AUTO;
    if (name_len)
        name[0] = '\0';
    if (*prog_id && name_len) {
        struct bpf_prog_info info;
        uint32_t map_id = 0;
        int fd = prog_by_id(*prog_id, &info, &map_id);
        if (fd < 0)
            return fd;
        close(fd);
        size_t n = strnlen(info.name, sizeof(info.name));
        if (n >= name_len)
            n = name_len - 1;
        memcpy(name, info.name, n);
        name[n] = '\0';
    }
    return 0;
}

/* 1 when a live bpf_link (some running process) attaches prog_id to ifindex. */
static int has_live_link(int ifindex, uint32_t prog_id)
{
    uint32_t id = 0;

    while (bpf_link_get_next_id(id, &id) == 0) {
        int fd = bpf_link_get_fd_by_id(id);
        if (fd < 0)
            continue;
        struct bpf_link_info info;
        uint32_t len = sizeof(info);
        memset(&info, 0, sizeof(info));
        int rc = bpf_obj_get_info_by_fd(fd, &info, &len);
        close(fd);
        if (rc == 0 && info.type == BPF_LINK_TYPE_XDP &&
            info.prog_id == prog_id && (int)info.xdp.ifindex == ifindex)
            return 1;
    }
    return 0;
}

/* Detach flowprobe programs left attached by netlink (a live bpf_link
 * refuses: -EBUSY, another flowprobe runs there). Foreign: -EEXIST. */
static int remove_stale(struct afxdp_prog *p, uint32_t *other_id)
{
    LIBBPF_OPTS(bpf_xdp_query_opts, q);
    if (bpf_xdp_query(p->ifindex, 0, &q))
        return -errno;
    uint32_t ids[2] = {q.drv_prog_id, q.skb_prog_id};
    uint32_t flags[2] = {XDP_FLAGS_DRV_MODE, XDP_FLAGS_SKB_MODE};
    if (q.hw_prog_id) {
        *other_id = q.hw_prog_id;
        return -EEXIST;
    }
    for (int i = 0; i < 2; i++) {
        if (!ids[i])
            continue;
        struct bpf_prog_info info;
        uint32_t map_id = 0;
        int fd = prog_by_id(ids[i], &info, &map_id);
        if (fd < 0)
            return fd;
        if (strncmp(info.name, AFXDP_PROG_NAME, sizeof(info.name))) {
            close(fd);
            *other_id = ids[i];
            return -EEXIST;
        }
        if (has_live_link(p->ifindex, ids[i])) {
            close(fd);
            return -EBUSY;      /* a running flowprobe holds it */
        }
        LIBBPF_OPTS(bpf_xdp_attach_opts, a, .old_prog_fd = fd);
        int rc = bpf_xdp_detach(p->ifindex, flags[i] | XDP_FLAGS_REPLACE, &a);
        int e = rc ? (rc < 0 ? rc : -errno) : 0;
        close(fd);
        if (e)
            return e;
        p->stale_removed++;
    }
    return 0;
}

static void prog_reset(struct afxdp_prog *p, int ifindex)
{
    memset(p, 0, sizeof(*p));
    p->prog_fd = p->map_fd = p->link_fd = -1;
    p->ifindex = ifindex;
}

int afxdp_prog_attach(struct afxdp_prog *p, int ifindex, uint32_t queues,
                      uint32_t mode, uint32_t *other_id)
{
    int rc;

    prog_reset(p, ifindex);
    *other_id = 0;
    if (!queues || queues > AFXDP_MAX_QUEUES || mode > AFXDP_MODE_SKB)
        return -EINVAL;
    rc = remove_stale(p, other_id);
    if (rc)
        return rc;
    p->map_fd = bpf_map_create(BPF_MAP_TYPE_XSKMAP, AFXDP_MAP_NAME,
                               sizeof(uint32_t), sizeof(uint32_t), queues, NULL);
    if (p->map_fd < 0) {
        rc = -errno;
        goto fail;
    }
    p->prog_fd = load_program(p->map_fd);
    if (p->prog_fd < 0) {
        rc = p->prog_fd;
        goto fail;
    }
    uint32_t try[2] = {mode == AFXDP_MODE_AUTO ? AFXDP_MODE_NATIVE : mode,
                       mode == AFXDP_MODE_AUTO ? AFXDP_MODE_SKB : 0};
    rc = -EINVAL;
    for (int i = 0; i < 2 && try[i]; i++) {
        LIBBPF_OPTS(bpf_link_create_opts, lo, .flags = mode_flags(try[i]));
        p->link_fd = bpf_link_create(p->prog_fd, ifindex, BPF_XDP, &lo);
        if (p->link_fd >= 0) {
            p->mode = try[i];
            break;
        }
        rc = -errno;
    }
    if (p->link_fd < 0)
        goto fail;
    struct bpf_prog_info info;
    uint32_t len = sizeof(info);
    memset(&info, 0, sizeof(info));
    if (bpf_obj_get_info_by_fd(p->prog_fd, &info, &len) == 0)
        p->prog_id = info.id;
    return 0;
fail:
    afxdp_prog_close(p);
    p->ifindex = ifindex;
    return rc;
}

int afxdp_prog_open(struct afxdp_prog *p, int ifindex)
{
    uint32_t id, mode, map_id = 0;
    char name[16];
    struct bpf_prog_info info;

    prog_reset(p, ifindex);
    int rc = afxdp_prog_query(ifindex, &id, &mode, name, sizeof(name));
    if (rc)
        return rc;
    if (!id || strcmp(name, AFXDP_PROG_NAME) || !has_live_link(ifindex, id))
        return -ENOENT;
    p->prog_fd = prog_by_id(id, &info, &map_id);
    if (p->prog_fd < 0)
        return p->prog_fd;
    if (info.nr_map_ids != 1) {
        afxdp_prog_close(p);
        return -ENOENT;
    }
    p->map_fd = bpf_map_get_fd_by_id(map_id);
    if (p->map_fd < 0) {
        rc = -errno;
        afxdp_prog_close(p);
        return rc;
    }
    p->prog_id = id;
    p->mode = mode;
    return 0;
}

void afxdp_prog_close(struct afxdp_prog *p)
{
    /* Closing the link's last fd detaches the program. */
    if (p->link_fd >= 0)
        close(p->link_fd);
    if (p->prog_fd >= 0)
        close(p->prog_fd);
    if (p->map_fd >= 0)
        close(p->map_fd);
    p->link_fd = p->prog_fd = p->map_fd = -1;
}
