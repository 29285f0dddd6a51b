/* Serial arithmetic, the header and SACK split, and the frame decoder's refusals. */
#include "test.h"
#include "wire.h"

static void test_serial_diff_and_expand(void) {
    CHECK(q_serial_diff(1, 0) == 1);
    CHECK(q_serial_diff(0, 1) == -1);
    CHECK(q_serial_diff(0, 0xFFFFFFFFu) == 1); /* across the wrap */
    CHECK(q_serial_diff(0x80000000u, 0) == -(int64_t)0x80000000u); /* the undefined pair */
    CHECK(q_expand(5, 0) == 5);
    CHECK(q_expand(0, 0xFFFFFFFFull) == 0x100000000ull);
    CHECK(q_expand(0xFFFFFFFFu, 0x100000000ull) == 0xFFFFFFFFull); /* just behind */
    CHECK(q_expand(2, 0x1FFFFFFF0ull) == 0x200000002ull);
    CHECK(q_expand(0x80000001u, 0) == 0x80000001ull); /* cannot go below 0 */
    /* RFC 9000 A.3's example, at 32 bits: closest to expected wins */
    CHECK(q_expand(0x00000010u, 0x1FFFFFFFEull) == 0x200000010ull);
}

static void test_split_body_bounds(void) {
    uint8_t body[200] = {0};
    q_sack sack[Q_MAX_SACK];
    int k;
    const uint8_t *payload;
    CHECK(q_split_body(body, 10, 10, sack, &k, &payload) == 0 && k == 0 && payload == body);
    CHECK(q_split_body(body, 18, 10, sack, &k, &payload) == 0 && k == 1 && payload == body + 8);
    CHECK(q_split_body(body, 9, 10, sack, &k, &payload) == -1);  /* truncated */
    CHECK(q_split_body(body, 13, 10, sack, &k, &payload) == -1); /* not whole blocks */
    CHECK(q_split_body(body, 72 + 8, 8, sack, &k, &payload) == -1); /* nine blocks */
    CHECK(q_split_body(body, 1425, 1425, sack, &k, &payload) == -1); /* payload > 1424 */
    q_put32(body, 10);
    q_put32(body + 4, 9); /* ends before it starts */
    CHECK(q_split_body(body, 8, 0, sack, &k, &payload) == -1);
    q_put32(body, 0xFFFFFFFFu);
    q_put32(body + 4, 2); /* straddles the wrap: valid */
    CHECK(q_split_body(body, 8, 0, sack, &k, &payload) == 0 && k == 1);
}

static void test_header_refusals(void) {
    uint8_t d[64] = {'Q', 'U', 'N', 'T', 2};
    q_header h;
    CHECK(q_header_decode(d, 32, &h) == 0);
    CHECK(q_header_decode(d, 31, &h) == -1);
    d[0] = 'X';
    CHECK(q_header_decode(d, 32, &h) == -1);
    uint8_t big[Q_MAX_DATAGRAM + 1] = {'Q', 'U', 'N', 'T', 2};
    q_sack sack[Q_MAX_SACK];
    int k;
    const uint8_t *payload;
    CHECK(q_decode_plain(big, sizeof big, &h, sack, &k, &payload) == -1); /* > 1472 bytes */
}

static int malformed(const uint8_t *p, size_t n) {
    int e;
    return q_frames_check(p, n, &e) == -1;
}

static void test_frame_refusals(void) {
    uint8_t b[64];
    size_t n = q_enc_message(b, 1, 0, 7, (const uint8_t *)"abc", 3);
    for (size_t cut = 1; cut < n; cut++)
        CHECK(malformed(b, cut)); /* every truncation */
    b[2] = 4; /* a reserved mode bit */
    CHECK(malformed(b, n));
    n = q_enc_fragment(b, 1, 0, 7, 0, 3, (const uint8_t *)"abc", 3);
    for (size_t cut = 1; cut < n; cut++)
        CHECK(malformed(b, cut)); /* every truncation of a fragment too */
    CHECK(!malformed(b, n));
    uint8_t pad[4] = {Q_FRAME_KEEPALIVE_ACK};
    CHECK(malformed(pad, 4));
    uint8_t padding[5] = {0, 0, 0, 1, 0}; /* a non-zero byte in the padding */
    CHECK(malformed(padding, 5));
    /* a probe's long padding (read eight bytes at a time, then the tail): a non-zero byte
     * anywhere in it is malformed, none is PING alone */
    static uint8_t probe[1232];
    probe[0] = Q_FRAME_PING;
    for (size_t at = 1; at < sizeof probe; at++) {
        probe[at] = 0x20;
        CHECK(malformed(probe, sizeof probe));
        CHECK(malformed(probe, at + 1)); /* at the very end of a shorter payload */
        probe[at] = 0;
    }
    size_t pos = 0;
    q_frame f;
    CHECK(!malformed(probe, sizeof probe) && q_frame_next(probe, sizeof probe, &pos, &f) == 1);
    CHECK(f.type == Q_FRAME_PING && q_frame_next(probe, sizeof probe, &pos, &f) == 0);
    CHECK(pos == sizeof probe);
    uint8_t unknown[1] = {0x0C};
    CHECK(malformed(unknown, 1));
    n = q_enc_code_reason(b, Q_FRAME_CLOSE, 1, (const uint8_t *)"\xc3\x28", 2); /* bad UTF-8 */
    CHECK(malformed(b, n));
    n = q_enc_code_reason(b, Q_FRAME_CLOSE, 1, (const uint8_t *)"\xed\xa0\x80", 3); /* surrogate */
    CHECK(malformed(b, n));
    uint8_t session[64];
    n = q_enc_session(session, (const uint8_t *)"0123456789abcdef", (const uint8_t *)"t\x80", 2,
                      0, 0);
    CHECK(malformed(session, n)); /* non-ASCII token */
    n = q_enc_session(session, (const uint8_t *)"0123456789abcdef", (const uint8_t *)"t", 1, 0, 3);
    CHECK(malformed(session, n)); /* resumed must be 0, 1 or 2 (carried over, 12.4) */
    uint32_t seqs[1] = {1};
    n = q_enc_parity(b, 1, 2, 2, 1, seqs, (const uint8_t *)"xy", 2); /* index >= m */
    CHECK(malformed(b, n));
    int e;
    n = q_enc_keepalive_ack(b, 1, 2);
    CHECK(q_frames_check(b, n, &e) == 0 && e == 0); /* KEEPALIVE_ACK alone elicits nothing */
    n += q_enc_u32_frame(b + n, Q_FRAME_KEEPALIVE, 3);
    CHECK(q_frames_check(b, n, &e) == 0 && e == 1);
    CHECK(q_frames_check(b, 0, &e) == 0 && e == 0); /* a pure ACK */
}

static void test_utf8(void) {
    CHECK(q_utf8_valid((const uint8_t *)"h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80", 15));
    CHECK(!q_utf8_valid((const uint8_t *)"\xc0\xaf", 2));         /* overlong */
    CHECK(!q_utf8_valid((const uint8_t *)"\xf4\x90\x80\x80", 4)); /* above U+10FFFF */
    CHECK(!q_utf8_valid((const uint8_t *)"\xe2\x82", 2));         /* truncated */
}

void run_wire_tests(void) {
    RUN(test_serial_diff_and_expand);
    RUN(test_split_body_bounds);
    RUN(test_header_refusals);
    RUN(test_frame_refusals);
    RUN(test_utf8);
}
