/*
 * tlv_dump.c - decode TLV payloads with nDPI's own deserializer (libndpi),
 * the reference for what ntopng reads, and print them as JSON lines: one
 * object per record, {"KEY": value, ...} with integers as numbers and
 * strings as strings, then one line {"_records": N} per payload.
 *
 *   tlv_dump FILE...     (each file: one payload)
 *
 * Exit 1 if a payload is refused (bad version/format, malformed item).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ndpi_api.h>

static void print_string(const ndpi_string *s)
{
    putchar('"');
    for (unsigned i = 0; i < s->str_len; i++) {
        unsigned char c = (unsigned char)s->str[i];
        if (c == '"' || c == '\\')
            printf("\\%c", c);
        else if (c < 0x20 || c > 0x7e)
            printf("\\u%04x", c);
        else
            putchar(c);
    }
    putchar('"');
}

static int dump(const char *path)
{
    static uint8_t buf[1 << 20];
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        perror(path);
        return 1;
    }
    size_t len = fread(buf, 1, sizeof buf, f);
    fclose(f);

    ndpi_deserializer d;
    if (ndpi_init_deserializer_buf(&d, buf, (uint32_t)len) != 0 ||
        ndpi_deserialize_get_format(&d) != ndpi_serialization_format_tlv) {
        fprintf(stderr, "%s: not an nDPI TLV payload\n", path);
        return 1;
    }
    unsigned records = 0, items = 0;
    ndpi_serialization_type kt, et;
    while ((et = ndpi_deserialize_get_item_type(&d, &kt)) != ndpi_serialization_unknown) {
        if (et == ndpi_serialization_end_of_record) {
            printf("}\n");
            records++;
            items = 0;
            if (ndpi_deserialize_next(&d) != 0)
                break;
            continue;
        }
        uint32_t key;
        if (kt != ndpi_serialization_uint32 || ndpi_deserialize_key_uint32(&d, &key) != 0) {
            fprintf(stderr, "%s: record %u: key type %d is not a numeric id\n", path, records, kt);
            return 1;
        }
        printf(items++ ? ", \"%u\": " : "{\"%u\": ", key);
        if (et == ndpi_serialization_uint32) {
            uint32_t v;
            ndpi_deserialize_value_uint32(&d, &v);
            printf("%u", v);
        } else if (et == ndpi_serialization_uint64) {
            uint64_t v;
            ndpi_deserialize_value_uint64(&d, &v);
            printf("%llu", (unsigned long long)v);
        } else if (et == ndpi_serialization_string) {
            ndpi_string s;
            ndpi_deserialize_value_string(&d, &s);
            print_string(&s);
        } else {
            fprintf(stderr, "%s: record %u key %u: value type %d\n", path, records, key, et);
            return 1;
        }
        if (ndpi_deserialize_next(&d) != 0) {
            fprintf(stderr, "%s: record %u: malformed item after key %u\n", path, records, key);
            return 1;
        }
    }
    if (items) {
        fprintf(stderr, "%s: last record has no end-of-record\n", path);
        return 1;
    }
    printf("{\"_records\": %u}\n", records);
    return 0;
}

int main(int argc, char **argv)
{
    int rc = 0;
    for (int i = 1; i < argc; i++)
        rc |= dump(argv[i]);
    return rc;
}
