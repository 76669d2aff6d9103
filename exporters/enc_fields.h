/*
 * enc_fields.h - the integer value of an ft_record field (enum enc_field_id),
 * shared by the record encoders (encode.c, tlv.c). Internal: not part of the
 * cffi cdef. Times: *_MS are ms since the Unix epoch, *_UPTIME ms since
 * boot_ms truncated to 32 bits; addresses and MACs are not integers (0).
 *
 * Include it after ft_records.h and encode.h: those two are read verbatim as
 * cffi cdefs and so cannot carry include guards.
 */
#ifndef FLOWPROBE_ENC_FIELDS_H
#define FLOWPROBE_ENC_FIELDS_H

#define ICMP4 1
#define ICMP6 58

static inline uint64_t field_value(const struct ft_record *r, unsigned field,
                                   uint64_t boot_ms)
{
    switch (field) {
    case ENC_F_SRC_PORT:
        return r->src_port;
    case ENC_F_DST_PORT:
        return r->dst_port;
    case ENC_F_PROTOCOL:
        return r->protocol;
    case ENC_F_TOS:
        return r->tos;
    case ENC_F_TCP_FLAGS:
        return r->tcp_flags;
    case ENC_F_PACKETS:
        return r->packets;
    case ENC_F_OCTETS:
        return r->octets;
    case ENC_F_START_MS:
        return r->first_ns / 1000000u;
    case ENC_F_END_MS:
        return r->last_ns / 1000000u;
    case ENC_F_START_UPTIME:
        return (uint32_t)(r->first_ns / 1000000u - boot_ms);
    case ENC_F_END_UPTIME:
        return (uint32_t)(r->last_ns / 1000000u - boot_ms);
    case ENC_F_IFINDEX:
        return r->ifindex;
    case ENC_F_VLAN:
        return r->vlan;
    case ENC_F_INNER_VLAN:
        return r->inner_vlan;
    case ENC_F_TTL_MIN:
        return r->ttl_min;
    case ENC_F_TTL_MAX:
        return r->ttl_max;
    case ENC_F_END_REASON:
        return r->end_reason;
    case ENC_F_IP_VERSION:
        return r->ip_version;
    case ENC_F_ICMP_TYPE_CODE:
        return (r->protocol == ICMP4 || r->protocol == ICMP6) ? r->dst_port : 0;
    case ENC_F_APP_MASTER:
        return r->app_master;
    case ENC_F_APP_ID:
        return r->app_id;
    default:
        return 0;
    }
}

#endif
