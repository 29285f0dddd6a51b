/* The packet and frame vectors of docs/PROTOCOL.md section 11, read from the file given on
 * the command line at test time: each built with the library's encoders and compared byte for
 * byte, then decoded back to what it was built from. A row or packet the spec adds that this
 * file does not know fails the tests (a new vector must be checked here too). */
#include "test.h"
#include "wire.h"

static const char *section11(void) { return spec_section("## 11. Wire test vectors"); }

#define PACKET_VECTORS 3

/* Packet vector `number` of section 11, built with the library's encoders. */
static size_t build_packet(int number, uint8_t *out) {
    uint8_t cid[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}, ab[16];
    memset(ab, 0xab, 16);
    switch (number) {
    case 1: /* SYN, cid 00..0f, seq 0, ack 0, no SACK, payload "hello" */
        q_header_encode(out, Q_SYN, cid, 0, 0, 5);
        memcpy(out + 32, "hello", 5);
        return 37;
    case 2: /* ACK|PSH, cid ab x 16, seq FFFFFFFE, ack 5, SACK (FFFFFFFF..2) (7..9),
             * KEEPALIVE(42) */
        q_header_encode(out, Q_ACK | Q_PSH, ab, 0xFFFFFFFEu, 5, 5);
        q_put32(out + 32, 0xFFFFFFFFu);
        q_put32(out + 36, 2);
        q_put32(out + 40, 7);
        q_put32(out + 44, 9);
        return 48 + q_enc_u32_frame(out + 48, Q_FRAME_KEEPALIVE, 42);
    case 3: /* pure ACK, cid 00..0f, seq 7, ack 3, SACK (5..6), no payload */
        q_header_encode(out, Q_ACK, cid, 7, 3, 0);
        q_put32(out + 32, 5);
        q_put32(out + 36, 6);
        return 40;
    default:
        return 0;
    }
}

static void test_packet_vectors(void) {
    CHECK(section11() != NULL);
    const char *frames = spec_find(section11(), "Frames (hex");
    CHECK(frames != NULL);
    int seen = 0;
    for (int number = 1; number <= 9; number++) {
        char label[16], want[512];
        snprintf(label, sizeof label, "%d.", number);
        const char *item = spec_line(section11(), label);
        if (!item || item > frames)
            continue; /* (numbered lines after the packets are not packet vectors) */
        seen++;
        uint8_t out[256];
        size_t n = build_packet(number, out);
        if (n == 0)
            fprintf(stderr, "    unknown packet vector %d of section 11\n", number);
        CHECK(n != 0);
        CHECK(spec_value(section11(), label, want, sizeof want) == 0);
        CHECK(bytes_equal_hex(out, n, want));
    }
    CHECK(seen == PACKET_VECTORS);

    /* and they decode to what they were built from */
    uint8_t dgram[256];
    q_header h;
    q_sack sack[Q_MAX_SACK];
    int nsack;
    const uint8_t *payload;
    size_t n = build_packet(2, dgram);
    CHECK(q_decode_plain(dgram, n, &h, sack, &nsack, &payload) == 0);
    CHECK(h.version == QUANTUM_WIRE_VERSION && h.flags == (Q_ACK | Q_PSH));
    CHECK(h.seq == 0xFFFFFFFEu && h.ack == 5 && h.payload_len == 5 && nsack == 2);
    CHECK(sack[0].start == 0xFFFFFFFFu && sack[0].end == 2 && sack[1].start == 7 &&
          sack[1].end == 9);
    CHECK(q_serial_diff(sack[0].end, sack[0].start) == 3); /* the block spans the wrap */
    size_t pos = 0;
    q_frame f;
    CHECK(q_frame_next(payload, h.payload_len, &pos, &f) == 1 && f.type == Q_FRAME_KEEPALIVE);
    CHECK(f.u.keepalive.id == 42 && q_frame_next(payload, h.payload_len, &pos, &f) == 0);
    n = build_packet(3, dgram);
    CHECK(q_decode_plain(dgram, n, &h, sack, &nsack, &payload) == 0);
    CHECK(h.flags == Q_ACK && h.seq == 7 && h.ack == 3 && h.payload_len == 0);
    CHECK(nsack == 1 && sack[0].start == 5 && sack[0].end == 6);
    n = build_packet(1, dgram);
    CHECK(q_decode_plain(dgram, n, &h, sack, &nsack, &payload) == 0);
    CHECK(h.flags == Q_SYN && nsack == 0 && h.payload_len == 5 && !memcmp(payload, "hello", 5));
}

/* One row of the frame table: the frame the description names. */
typedef struct frame_vector {
    const char *description;
    q_frame frame;
    size_t padding; /* PADDING bytes after the frame */
} frame_vector;

static const uint8_t PATH[8] = {1, 2, 3, 4, 5, 6, 7, 8};
static const uint8_t SID[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
static const uint8_t PARITY_SEQS[8] = {0, 0, 0, 1, 0, 0, 0, 2};

#define MSG(ch, md, i, frag, off, tot, len, d)                                                 \
    {.type = Q_FRAME_MESSAGE, .u.msg = {ch, md, i, frag, off, tot, len, (const uint8_t *)d}}

static const frame_vector FRAME_VECTORS[] = {
    {"MESSAGE(channel 3, RELIABLE_UNORDERED, id 258, whole message \"hi\")",
     MSG(3, QUANTUM_RELIABLE_UNORDERED, 258, 0, 0, 2, 2, "hi"), 0},
    {"MESSAGE fragment: bytes 1000..1001 (\"hi\") of a 1002-byte message, channel 3, "
     "RELIABLE_UNORDERED, id 258 (mode byte `81`)",
     MSG(3, QUANTUM_RELIABLE_UNORDERED, 258, 1, 1000, 1002, 2, "hi"), 0},
    {"PING", {.type = Q_FRAME_PING}, 0},
    {"KEEPALIVE(42)", {.type = Q_FRAME_KEEPALIVE, .u.keepalive = {42}}, 0},
    {"KEEPALIVE_ACK(42, 1800000 ms)",
     {.type = Q_FRAME_KEEPALIVE_ACK, .u.keepalive_ack = {42, 1800000}}, 0},
    {"KEEPALIVE_ACK(7, no session)",
     {.type = Q_FRAME_KEEPALIVE_ACK, .u.keepalive_ack = {7, 0xFFFFFFFFu}}, 0},
    {"CLOSE(4, \"bye\")",
     {.type = Q_FRAME_CLOSE, .u.close = {4, 3, (const uint8_t *)"bye"}}, 0},
    {"PARITY(group 17, m 3, index 1, seqs (1, 2), shard `aabbcc`)",
     {.type = Q_FRAME_PARITY,
      .u.parity = {17, 3, 1, 2, PARITY_SEQS, 3, (const uint8_t *)"\xaa\xbb\xcc"}},
     0},
    {"ACK_FLOOR(`FFFFFFF0`)", {.type = Q_FRAME_ACK_FLOOR, .u.ack_floor = {0xFFFFFFF0u}}, 0},
    {"PATH_CHALLENGE(`0102030405060708`)", {.type = Q_FRAME_PATH_CHALLENGE, .u.path = {PATH}},
     0},
    {"PATH_RESPONSE(`0102030405060708`)", {.type = Q_FRAME_PATH_RESPONSE, .u.path = {PATH}}, 0},
    {"SESSION(id `000102...0f`, \"tok\", 60000 ms, resumed)",
     {.type = Q_FRAME_SESSION, .u.session = {SID, 3, (const uint8_t *)"tok", 60000, 1}}, 0},
    {"REJECT(19, \"full\")", {.type = Q_FRAME_REJECT, .u.close = {19, 4, (const uint8_t *)"full"}},
     0},
    {"SESSION(id `000102...0f`, \"tok\", 60000 ms, resumed and carried over, 12.4)",
     {.type = Q_FRAME_SESSION, .u.session = {SID, 3, (const uint8_t *)"tok", 60000, 2}}, 0},
    {"KEEPALIVE(1) then 3 bytes of PADDING (decodes to KEEPALIVE(1) alone)",
     {.type = Q_FRAME_KEEPALIVE, .u.keepalive = {1}}, 3},
};
#define FRAME_VECTOR_COUNT (sizeof FRAME_VECTORS / sizeof FRAME_VECTORS[0])

/* The frame encoded with the library's encoder for its type; its length. */
static size_t encode_frame(const q_frame *f, uint8_t *out) {
    switch (f->type) {
    case Q_FRAME_MESSAGE:
        return f->u.msg.fragment
                   ? q_enc_fragment(out, f->u.msg.channel, f->u.msg.mode, f->u.msg.id,
                                    f->u.msg.offset, f->u.msg.total, f->u.msg.data,
                                    f->u.msg.length)
                   : q_enc_message(out, f->u.msg.channel, f->u.msg.mode, f->u.msg.id,
                                   f->u.msg.data, f->u.msg.length);
    case Q_FRAME_PING:
        out[0] = Q_FRAME_PING;
        return 1;
    case Q_FRAME_KEEPALIVE:
        return q_enc_u32_frame(out, Q_FRAME_KEEPALIVE, f->u.keepalive.id);
    case Q_FRAME_ACK_FLOOR:
        return q_enc_u32_frame(out, Q_FRAME_ACK_FLOOR, f->u.ack_floor.floor);
    case Q_FRAME_KEEPALIVE_ACK:
        return q_enc_keepalive_ack(out, f->u.keepalive_ack.id, f->u.keepalive_ack.remaining_ms);
    case Q_FRAME_CLOSE:
    case Q_FRAME_REJECT:
        return q_enc_code_reason(out, f->type, f->u.close.code, f->u.close.reason,
                                 f->u.close.length);
    case Q_FRAME_PARITY: {
        uint32_t seqs[Q_MAX_PARITY_SEQS];
        for (int i = 0; i < f->u.parity.k; i++)
            seqs[i] = q_get32(f->u.parity.seqs + 4 * i);
        return q_enc_parity(out, f->u.parity.group, f->u.parity.m, f->u.parity.index,
                            f->u.parity.k, seqs, f->u.parity.shard, f->u.parity.length);
    }
    case Q_FRAME_PATH_CHALLENGE:
    case Q_FRAME_PATH_RESPONSE:
        return q_enc_path(out, f->type, f->u.path.data);
    case Q_FRAME_SESSION:
        return q_enc_session(out, f->u.session.session_id, f->u.session.token,
                             f->u.session.token_len, f->u.session.remaining_ms,
                             f->u.session.resumed);
    default:
        return 0;
    }
}

/* Whether a decoded frame is the expected one, field by field (data compared by value). */
static int frame_is(const q_frame *got, const q_frame *want) {
    if (got->type != want->type)
        return 0;
    switch (want->type) {
    case Q_FRAME_MESSAGE:
        return got->u.msg.channel == want->u.msg.channel && got->u.msg.mode == want->u.msg.mode &&
               got->u.msg.id == want->u.msg.id && got->u.msg.fragment == want->u.msg.fragment &&
               got->u.msg.offset == want->u.msg.offset && got->u.msg.total == want->u.msg.total &&
               got->u.msg.length == want->u.msg.length &&
               memcmp(got->u.msg.data, want->u.msg.data, want->u.msg.length) == 0;
    case Q_FRAME_PING:
        return 1;
    case Q_FRAME_KEEPALIVE:
        return got->u.keepalive.id == want->u.keepalive.id;
    case Q_FRAME_ACK_FLOOR:
        return got->u.ack_floor.floor == want->u.ack_floor.floor;
    case Q_FRAME_KEEPALIVE_ACK:
        return got->u.keepalive_ack.id == want->u.keepalive_ack.id &&
               got->u.keepalive_ack.remaining_ms == want->u.keepalive_ack.remaining_ms;
    case Q_FRAME_CLOSE:
    case Q_FRAME_REJECT:
        return got->u.close.code == want->u.close.code &&
               got->u.close.length == want->u.close.length &&
               memcmp(got->u.close.reason, want->u.close.reason, want->u.close.length) == 0;
    case Q_FRAME_PARITY:
        return got->u.parity.group == want->u.parity.group &&
               got->u.parity.m == want->u.parity.m && got->u.parity.index == want->u.parity.index &&
               got->u.parity.k == want->u.parity.k &&
               memcmp(got->u.parity.seqs, want->u.parity.seqs, 4u * want->u.parity.k) == 0 &&
               got->u.parity.length == want->u.parity.length &&
               memcmp(got->u.parity.shard, want->u.parity.shard, want->u.parity.length) == 0;
    case Q_FRAME_PATH_CHALLENGE:
    case Q_FRAME_PATH_RESPONSE:
        return memcmp(got->u.path.data, want->u.path.data, Q_PATH_DATA) == 0;
    case Q_FRAME_SESSION:
        return memcmp(got->u.session.session_id, want->u.session.session_id, 16) == 0 &&
               got->u.session.token_len == want->u.session.token_len &&
               memcmp(got->u.session.token, want->u.session.token, want->u.session.token_len) ==
                   0 &&
               got->u.session.remaining_ms == want->u.session.remaining_ms &&
               got->u.session.resumed == want->u.session.resumed;
    default:
        return 0;
    }
}

typedef struct frame_rows {
    int seen, matched, failed, not_spoken;
    int used[FRAME_VECTOR_COUNT];
} frame_rows;

/* Rows of frames libquantum does not speak, each with why: it never asks a resume to carry
 * its streams over (credentials flag 0x20, 12.4), so no server ever sends it DELIVERED. */
static const char *const NOT_SPOKEN[] = {
    "DELIVERED((0, 0, 7), (3, 1, `FFFFFFFE`))",
};
#define NOT_SPOKEN_COUNT (sizeof NOT_SPOKEN / sizeof NOT_SPOKEN[0])

static void on_frame_row(const char *desc, const char *hex, void *ctx) {
    frame_rows *rows = ctx;
    rows->seen++;
    for (size_t i = 0; i < NOT_SPOKEN_COUNT; i++)
        if (strcmp(desc, NOT_SPOKEN[i]) == 0) {
            rows->not_spoken++;
            rows->matched++;
            return;
        }
    const frame_vector *v = NULL;
    for (size_t i = 0; i < FRAME_VECTOR_COUNT && !v; i++)
        if (strcmp(desc, FRAME_VECTORS[i].description) == 0) {
            v = &FRAME_VECTORS[i];
            rows->used[i]++;
        }
    if (!v) { /* a new vector in the spec must be checked here too */
        fprintf(stderr, "    unknown frame vector row: %s\n", desc);
        rows->failed++;
        return;
    }
    uint8_t built[256], spec[256];
    size_t n = encode_frame(&v->frame, built);
    memset(built + n, 0, v->padding);
    n += v->padding;
    if (!bytes_equal_hex(built, n, hex)) {
        fprintf(stderr, "    frame vector differs: %s\n", desc);
        rows->failed++;
        return;
    }
    /* and it decodes to that frame alone (padding is skipped), nothing left over */
    size_t len = hex_decode(hex, spec, sizeof spec), pos = 0;
    q_frame f;
    int eliciting;
    if (q_frames_check(spec, len, &eliciting) != 0 || q_frame_next(spec, len, &pos, &f) != 1 ||
        !frame_is(&f, &v->frame) || q_frame_next(spec, len, &pos, &f) != 0) {
        fprintf(stderr, "    frame vector does not decode to its frame alone: %s\n", desc);
        rows->failed++;
        return;
    }
    /* every frame but KEEPALIVE_ACK (and padding) elicits an acknowledgement (4) */
    if (eliciting != (v->frame.type != Q_FRAME_KEEPALIVE_ACK)) {
        fprintf(stderr, "    frame vector elicits an ACK wrongly: %s\n", desc);
        rows->failed++;
        return;
    }
    rows->matched++;
}

static void test_frame_vectors(void) {
    frame_rows rows;
    memset(&rows, 0, sizeof rows);
    CHECK(spec_table(section11(), on_frame_row, &rows) ==
          (int)(FRAME_VECTOR_COUNT + NOT_SPOKEN_COUNT));
    CHECK(rows.failed == 0 && rows.not_spoken == (int)NOT_SPOKEN_COUNT);
    CHECK(rows.matched == rows.seen);
    for (size_t i = 0; i < FRAME_VECTOR_COUNT; i++)
        CHECK(rows.used[i] == 1); /* each row once: none of ours went missing from the spec */
}

/* Decoding field by field, and what the MESSAGE decoder refuses. */
static void test_frame_vector_fields(void) {
    uint8_t b[64];
    size_t pos = 0;
    q_frame f;
    size_t n = q_enc_fragment(b, 3, 0, 7, 1300, 5000, (const uint8_t *)"hi", 2);
    CHECK(n == 19 && q_frame_next(b, n, &pos, &f) == 1 && f.u.msg.channel == 3);
    CHECK(f.u.msg.mode == 0 && f.u.msg.fragment && f.u.msg.id == 7 && f.u.msg.offset == 1300);
    CHECK(f.u.msg.total == 5000 && f.u.msg.length == 2 && memcmp(f.u.msg.data, "hi", 2) == 0);
    n = q_enc_message(b, 3, 1, 258, (const uint8_t *)"hi", 2);
    pos = 0;
    CHECK(n == 11 && q_frame_next(b, n, &pos, &f) == 1 && !f.u.msg.fragment);
    CHECK(f.u.msg.id == 258 && f.u.msg.total == 2 && f.u.msg.offset == 0 && pos == 11);
    int eliciting;
    uint8_t ping = Q_FRAME_PING;
    CHECK(q_frames_check(&ping, 1, &eliciting) == 0 && eliciting); /* PING elicits an ACK */
    /* malformed MESSAGE frames */
    n = q_enc_fragment(b, 3, 0, 7, 1300, 5000, (const uint8_t *)"hi", 2);
    b[2] = 0x80 | 0x04; /* a reserved mode bit */
    CHECK(q_frames_check(b, n, &eliciting) == -1);
    b[2] = 0x80 | 2; /* an unreliable mode in fragments */
    CHECK(q_frames_check(b, n, &eliciting) == -1);
    b[2] = 0x80;
    q_put32(b + 7, 4999); /* offset + length > total */
    CHECK(q_frames_check(b, n, &eliciting) == -1);
    q_put32(b + 7, 0);
    q_put32(b + 11, QUANTUM_MAX_MESSAGE_SIZE + 1); /* total above 1 MiB */
    CHECK(q_frames_check(b, n, &eliciting) == -1);
    n = q_enc_fragment(b, 3, 0, 7, 0, 5000, (const uint8_t *)"", 0); /* an empty fragment */
    CHECK(q_frames_check(b, n, &eliciting) == -1);
    n = q_enc_fragment(b, 3, 0, 7, 0, 5000, (const uint8_t *)"hi", 2);
    CHECK(q_frames_check(b, n - 1, &eliciting) == -1); /* truncated */
    CHECK(q_frames_check(b, 15, &eliciting) == -1);    /* truncated in the fields */
    uint8_t unknown = 0x0C;
    CHECK(q_frames_check(&unknown, 1, &eliciting) == -1);
}

void run_wire_vector_tests(void) {
    RUN(test_packet_vectors);
    RUN(test_frame_vectors);
    RUN(test_frame_vector_fields);
}
