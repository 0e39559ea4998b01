/*
 * PieceStore from C: open a store, put, get (a borrowed buffer), read a range, look at the
 * metadata, list, and handle an error. Built and run by scripts/test.sh:
 *
 *   cargo build --release -p piecestore-c
 *   cc bindings/c/examples/example.c -I bindings/c/include \
 *      target/release/libpiecestore_c.a -lpthread -ldl -lm -o example
 *   ./example file:///tmp/pieces        # or: ./example memory://
 */
#include <stdio.h>
#include <string.h>

#include "piecestore.h"

/* Prints a failed call's error and frees it; returns 1 for main's exit code. */
static int fail(const char *what, PsError *err) {
    fprintf(stderr, "%s failed (status %d): %s\n", what, (int)ps_error_status(err),
            ps_error_message(err));
    ps_error_free(err);
    return 1;
}

int main(int argc, char **argv) {
    const char *spec = argc > 1 ? argv[1] : "memory://";
    /* Options as every binding takes them: names and values, NUL-terminated. */
    const char *names[] = {"max_retries"};
    const char *values[] = {"3"};
    PsStore *store = NULL;
    PsError *err = NULL;

    if (ps_open(spec, names, values, 1, &store, &err) != PS_OK) return fail("open", err);
    printf("piecestore %s opened %s\n", ps_version(), spec);

    const char *key = "1_s0";
    const char *data = "hello from C";
    if (ps_put(store, (const uint8_t *)key, strlen(key), (const uint8_t *)data, strlen(data),
               false, NULL, &err) != PS_OK)
        return fail("put", err);

    /* A read borrows the library's buffer: no copy until ps_bytes_free. */
    PsBytes got = {0};
    if (ps_get(store, (const uint8_t *)key, strlen(key), NULL, &got, &err) != PS_OK)
        return fail("get", err);
    printf("get: %.*s\n", (int)got.len, (const char *)got.data);
    int same = got.len == strlen(data) && memcmp(got.data, data, got.len) == 0;
    ps_bytes_free(&got);
    if (!same) { fprintf(stderr, "get returned other bytes\n"); return 1; }

    PsBytes part = {0};
    if (ps_get_range(store, (const uint8_t *)key, strlen(key), 6, 4, NULL, &part, &err) != PS_OK)
        return fail("get_range", err);
    printf("get_range(6, 4): %.*s\n", (int)part.len, (const char *)part.data);
    ps_bytes_free(&part);

    PsPieceInfo info;
    if (ps_head(store, (const uint8_t *)key, strlen(key), NULL, &info, &err) != PS_OK)
        return fail("head", err);
    printf("head: %llu bytes, crc32c %08x\n", (unsigned long long)info.size, info.crc32c);

    PsList *list = NULL;
    if (ps_list_open(store, (const uint8_t *)"1_", 2, &list, &err) != PS_OK)
        return fail("list", err);
    bool more = true;
    while (more) {
        if (ps_list_next(list, NULL, &info, &more, &err) != PS_OK) return fail("list", err);
        if (more) printf("list: %.*s (%llu bytes)\n", (int)info.key_len, (const char *)info.key,
                         (unsigned long long)info.size);
    }
    ps_list_free(list);

    /* Errors are values: a status, and a PsError with the message and the key. */
    const char *missing = "2_s0";
    PsBytes none = {0};
    PsStatus st = ps_get(store, (const uint8_t *)missing, strlen(missing), NULL, &none, &err);
    if (st != PS_NOT_FOUND) { fprintf(stderr, "expected PS_NOT_FOUND, got %d\n", (int)st); return 1; }
    printf("missing piece: %s (key %s)\n", ps_error_message(err), ps_error_key(err));
    ps_error_free(err);
    err = NULL;

    if (ps_close(store, &err) != PS_OK) return fail("close", err);
    ps_store_free(store);
    puts("ok");
    return 0;
}
