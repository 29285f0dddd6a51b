/* Every test vector printed in docs/PROTOCOL.md (sections 5.7 and 11), read from the
 * specification at test time: the spec stays the one source. The inputs are those the
 * specification lists (5.7 "Inputs"); each output is recomputed here, client side with the
 * library's own code, server side with libsodium directly. */
#include <sodium.h>
#include <stdlib.h>

#include "handshake.h"
#include "test.h"
#include "wire.h"

static void label_hash(const char *label, uint8_t out[32]) {
    crypto_hash_sha256(out, (const uint8_t *)label, strlen(label));
}

/* "server random(n)": successive SHA-256("quantum test vector random" || u32 counter) blocks,
 * one or more whole blocks per call, truncated to n */
typedef struct vector_random {
    uint32_t counter;
} vector_random;

static void vector_random_take(vector_random *r, uint8_t *out, size_t n) {
    size_t done = 0;
    while (done < n) {
        uint8_t in[64], block[32];
        size_t l = strlen("quantum test vector random");
        memcpy(in, "quantum test vector random", l);
        q_put32(in + l, r->counter++);
        crypto_hash_sha256(block, in, l + 4);
        size_t take = n - done < 32 ? n - done : 32;
        memcpy(out + done, block, take);
        done += take;
    }
}

static const char *section57(void) { return spec_section("### 5.7 Test vectors"); }

static int expect(const char *label, const uint8_t *data, size_t len) {
    char want[2048];
    if (spec_value(section57(), label, want, sizeof want) != 0) {
        fprintf(stderr, "    no value for %s in docs/PROTOCOL.md 5.7\n", label);
        return 0;
    }
    return bytes_equal_hex(data, len, want);
}

/* The vector inputs of 5.7. */
static const uint8_t CID[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
/* the client address 192.0.2.1, packed as cookies bind it (docs/protocol-1.0-addresses.md) */
static const uint8_t ADDR_IP[4] = {192, 0, 2, 1};
static const uint16_t ADDR_PORT = 4433;

/* The server's side of the vector handshake, built from the listed inputs. */
static int vector_server_hello(const uint8_t e_c[32], uint8_t out[Q_SERVER_HELLO_SIZE],
                               uint8_t s_pub[32], vector_random *rnd) {
    uint8_t s_priv[32], e_s_priv[32], e_s[32], ee[32], es[32];
    label_hash("quantum test vector server static", s_priv);
    label_hash("quantum test vector server ephemeral", e_s_priv);
    crypto_scalarmult_base(s_pub, s_priv);
    crypto_scalarmult_base(e_s, e_s_priv);
    if (crypto_scalarmult(ee, e_s_priv, e_c) != 0 || crypto_scalarmult(es, s_priv, e_c) != 0)
        return -1;
    q_schedule sch;
    q_key_schedule(CID, e_c, e_s, s_pub, ee, es, &sch);
    /* params = fec (10, 3), keepalive 10 s, idle timeout 60 s */
    uint8_t params[10] = {10, 3};
    q_put32(params + 2, 10000);
    q_put32(params + 6, 60000);
    uint8_t cookie_key[32], nonce[12];
    vector_random_take(rnd, cookie_key, 32);
    vector_random_take(rnd, nonce, 12);
    /* cookie: key id (epoch floor(1000 / 10) mod 256) || nonce || sealed plaintext */
    uint8_t key_id = 100;
    uint8_t plain[56], ad[128], addr[64];
    memcpy(plain, e_s_priv, 32);
    double issued = 1000.0;
    uint64_t bits;
    memcpy(&bits, &issued, 8);
    q_put64(plain + 32, bits);
    q_put16(addr, ADDR_PORT);
    memcpy(addr + 2, ADDR_IP, sizeof ADDR_IP);
    uint8_t tag[32];
    crypto_hash_sha256(tag, addr, 2 + sizeof ADDR_IP);
    memcpy(plain + 40, tag, 16);
    size_t adn = strlen(Q_COOKIE_LABEL);
    memcpy(ad, Q_COOKIE_LABEL, adn);
    ad[adn++] = key_id;
    memcpy(ad + adn, CID, 16);
    adn += 16;
    memcpy(ad + adn, e_c, 32);
    adn += 32;
    memcpy(out, e_s, 32);
    memcpy(out + 32, s_pub, 32);
    out[64] = key_id;
    memcpy(out + 65, nonce, 12);
    crypto_aead_aes256gcm_encrypt(out + 77, NULL, plain, sizeof plain, ad, adn, NULL, nonce,
                                  cookie_key);
    static const uint8_t zero[12] = {0};
    crypto_aead_aes256gcm_encrypt(out + 149, NULL, params, sizeof params, sch.transcript, 32,
                                  NULL, zero, sch.confirm_key);
    return 0;
}

static void test_handshake_vectors(void) {
    CHECK(section57() != NULL);
    uint8_t e_c_priv[32];
    label_hash("quantum test vector client ephemeral", e_c_priv);
    quantum_metadata meta[1] = {{"room", "lobby"}};
    quantum_credentials cred = {"alice", "v1.test", NULL, NULL, 0, meta, 1};
    char fp_text[64];
    CHECK(spec_value(section57(), "fingerprint", fp_text, sizeof fp_text) == 0);

    static q_client_hs hs;
    CHECK(q_client_hs_init(&hs, CID, &cred, 10, 3, fp_text, e_c_priv) == 0);
    CHECK(expect("e_c (client public)", hs.eph_public, 32));
    uint8_t hello[Q_HELLO_SIZE], digest[32];
    q_client_hello(&hs, hello);
    /* "ClientHello  e_c || 0000 || 00 || 1133 zero bytes (1168 bytes)" */
    CHECK(memcmp(hello, hs.eph_public, 32) == 0);
    for (int i = 32; i < Q_HELLO_SIZE; i++)
        CHECK(hello[i] == 0);
    crypto_hash_sha256(digest, hello, sizeof hello);
    CHECK(expect("SHA-256(ClientHello)", digest, 32));

    vector_random rnd = {0};
    uint8_t server_hello[Q_SERVER_HELLO_SIZE], s_pub[32];
    CHECK(vector_server_hello(hs.eph_public, server_hello, s_pub, &rnd) == 0);
    CHECK(expect("S (server static public)", s_pub, 32));
    char fp[52];
    q_fingerprint(s_pub, fp);
    CHECK(strcmp(fp, fp_text) == 0);
    CHECK(expect("ServerHello", server_hello, sizeof server_hello));

    q_params params;
    const char *why = NULL;
    CHECK(q_client_on_server_hello(&hs, server_hello, sizeof server_hello, &params, &why) == 0);
    CHECK(params.fec_k == 10 && params.fec_m == 3);
    CHECK(params.keepalive_ms == 10000 && params.idle_ms == 60000);
    CHECK(expect("ClientFinish", hs.finish, hs.finish_len));
    CHECK(expect("h (transcript)", hs.schedule.transcript, 32));
    CHECK(expect("confirm_key", hs.schedule.confirm_key, 32));
    CHECK(expect("finish_key", hs.schedule.finish_key, 32));
    CHECK(expect("client_key", hs.schedule.client_key, 32));
    CHECK(expect("client_iv", hs.schedule.client_iv, 12));
    CHECK(expect("server_key", hs.schedule.server_key, 32));
    CHECK(expect("server_iv", hs.schedule.server_iv, 12));

    /* the protected packet: pn 1, body "hello", client -> server, in both ciphers' code path */
    char header_hex[128];
    CHECK(spec_value(section57(), "header", header_hex, sizeof header_hex) == 0);
    uint8_t header[32], body[64];
    CHECK(hex_decode(header_hex, header, sizeof header) == 32);
    q_aead seal;
    CHECK(q_aead_init(&seal, Q_CIPHER_AES256GCM, hs.schedule.client_key, hs.schedule.client_iv) ==
          0);
    memcpy(body, "hello", 5);
    q_aead_seal(&seal, 1, header, 32, body, 5);
    CHECK(expect("sealed", body, 5 + 16));
    q_aead open;
    CHECK(q_aead_init(&open, Q_CIPHER_AES256GCM, hs.schedule.client_key, hs.schedule.client_iv) ==
          0);
    CHECK(q_aead_open(&open, 1, header, 32, body, 21) == 5);
    CHECK(memcmp(body, "hello", 5) == 0);

    /* Retry at now = 1000.0, rotation 60 s (slot 16): the third random draw is its secret */
    uint8_t secret[32], retry[36], msg[128];
    vector_random_take(&rnd, secret, 32);
    size_t n = strlen(Q_RETRY_LABEL);
    memcpy(msg, Q_RETRY_LABEL, n);
    memcpy(msg + n, CID, 16);
    n += 16;
    q_put32(msg + n, 16);
    n += 4;
    q_put16(msg + n, ADDR_PORT);
    n += 2;
    memcpy(msg + n, ADDR_IP, sizeof ADDR_IP);
    n += sizeof ADDR_IP;
    q_put32(retry, 16);
    crypto_auth_hmacsha256_state st;
    crypto_auth_hmacsha256_init(&st, secret, 32);
    crypto_auth_hmacsha256_update(&st, msg, n);
    crypto_auth_hmacsha256_final(&st, retry + 4);
    CHECK(expect("Retry at now = 1000.0,", retry, sizeof retry));
    /* and the client takes it: the next hello echoes the cookie */
    static q_client_hs fresh;
    CHECK(q_client_hs_init(&fresh, CID, &cred, 10, 3, NULL, e_c_priv) == 0);
    CHECK(q_client_on_retry(&fresh, retry, sizeof retry) == 0);
    q_client_hello(&fresh, hello);
    CHECK(hello[34] == 36 && memcmp(hello + 35, retry, 36) == 0);
}

/* ------------------------------------------------------------------------ section 11 */

static const char *section11(void) { return spec_section("## 11. Wire test vectors"); }

static void test_packet_vectors(void) {
    CHECK(section11() != NULL);
    char want[512];
    uint8_t out[256];
    uint8_t cid[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}, ab[16];
    memset(ab, 0xab, 16);

    /* 1. SYN, cid 00..0f, seq 0, ack 0, no SACK, payload "hello" */
    CHECK(spec_value(section11(), "1.", want, sizeof want) == 0);
    q_header_encode(out, Q_SYN, cid, 0, 0, 5);
    memcpy(out + 32, "hello", 5);
    CHECK(bytes_equal_hex(out, 37, want));

    /* 2. ACK|PSH, cid ab x 16, seq FFFFFFFE, ack 5, SACK (FFFFFFFF..2) (7..9), KEEPALIVE(42) */
    CHECK(spec_value(section11(), "2.", want, sizeof want) == 0);
    q_header_encode(out, Q_ACK | Q_PSH, ab, 0xFFFFFFFEu, 5, 5);
    q_put32(out + 32, 0xFFFFFFFFu);
    q_put32(out + 36, 2);
    q_put32(out + 40, 7);
    q_put32(out + 44, 9);
    q_enc_u32_frame(out + 48, Q_FRAME_KEEPALIVE, 42);
    CHECK(bytes_equal_hex(out, 53, want));
    uint8_t dgram[256];
    size_t n = hex_decode(want, dgram, sizeof dgram);
    q_header h;
    q_sack sack[Q_MAX_SACK];
    int nsack;
    const uint8_t *payload;
    CHECK(q_decode_plain(dgram, n, &h, sack, &nsack, &payload) == 0);
    CHECK(h.flags == 0x22 && h.seq == 0xFFFFFFFEu && h.ack == 5 && h.payload_len == 5);
    CHECK(nsack == 2 && sack[0].start == 0xFFFFFFFFu && sack[0].end == 2);
    CHECK(sack[1].start == 7 && sack[1].end == 9);
    size_t pos = 0;
    q_frame f;
    CHECK(q_frame_next(payload, 5, &pos, &f) == 1 && f.type == Q_FRAME_KEEPALIVE &&
          f.u.keepalive.id == 42);

    /* 3. pure ACK, cid 00..0f, seq 7, ack 3, SACK (5..6), no payload */
    CHECK(spec_value(section11(), "3.", want, sizeof want) == 0);
    q_header_encode(out, Q_ACK, cid, 7, 3, 0);
    q_put32(out + 32, 5);
    q_put32(out + 36, 6);
    CHECK(bytes_equal_hex(out, 40, want));
    n = hex_decode(want, dgram, sizeof dgram);
    CHECK(q_decode_plain(dgram, n, &h, sack, &nsack, &payload) == 0);
    CHECK(nsack == 1 && sack[0].start == 5 && sack[0].end == 6 && h.payload_len == 0);
}

typedef struct frame_rows {
    int seen, matched, failed;
} frame_rows;

/* Encode what the row describes; returns the length, or 0 for a row this test does not know
 * (which fails it: a new vector in the spec must be checked here too). */
static size_t build_described(const char *d, uint8_t *out) {
    static const uint8_t seq12[2] = {0}, path[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    Q_UNUSED(seq12);
    if (strcmp(d, "MESSAGE(channel 3, RELIABLE_UNORDERED, id 258, index 1, count 2, \"hi\")") == 0)
        return q_enc_message(out, 3, QUANTUM_RELIABLE_UNORDERED, 258, 1, 2,
                             (const uint8_t *)"hi", 2);
    if (strcmp(d, "KEEPALIVE(42)") == 0)
        return q_enc_u32_frame(out, Q_FRAME_KEEPALIVE, 42);
    if (strcmp(d, "KEEPALIVE_ACK(42, 1800000 ms)") == 0)
        return q_enc_keepalive_ack(out, 42, 1800000);
    if (strcmp(d, "KEEPALIVE_ACK(7, no session)") == 0)
        return q_enc_keepalive_ack(out, 7, QUANTUM_NO_SESSION);
    if (strcmp(d, "CLOSE(4, \"bye\")") == 0)
        return q_enc_code_reason(out, Q_FRAME_CLOSE, 4, (const uint8_t *)"bye", 3);
    if (strcmp(d, "PARITY(group 17, m 3, index 1, seqs (1, 2), shard `aabbcc`)") == 0) {
        uint32_t seqs[2] = {1, 2};
        uint8_t shard[3] = {0xaa, 0xbb, 0xcc};
        return q_enc_parity(out, 17, 3, 1, 2, seqs, shard, 3);
    }
    if (strcmp(d, "ACK_FLOOR(`FFFFFFF0`)") == 0)
        return q_enc_u32_frame(out, Q_FRAME_ACK_FLOOR, 0xFFFFFFF0u);
    if (strcmp(d, "PATH_CHALLENGE(`0102030405060708`)") == 0)
        return q_enc_path(out, Q_FRAME_PATH_CHALLENGE, path);
    if (strcmp(d, "PATH_RESPONSE(`0102030405060708`)") == 0)
        return q_enc_path(out, Q_FRAME_PATH_RESPONSE, path);
    if (strcmp(d, "SESSION(id `000102...0f`, \"tok\", 60000 ms, resumed)") == 0) {
        uint8_t id[16];
        for (int i = 0; i < 16; i++)
            id[i] = (uint8_t)i;
        return q_enc_session(out, id, (const uint8_t *)"tok", 3, 60000, 1);
    }
    if (strcmp(d, "REJECT(19, \"full\")") == 0)
        return q_enc_code_reason(out, Q_FRAME_REJECT, 19, (const uint8_t *)"full", 4);
    if (strcmp(d, "KEEPALIVE(1) then 3 bytes of PADDING (decodes to KEEPALIVE(1) alone)") == 0) {
        size_t n = q_enc_u32_frame(out, Q_FRAME_KEEPALIVE, 1);
        memset(out + n, 0, 3);
        return n + 3;
    }
    return 0;
}

static void on_frame_row(const char *desc, const char *hex, void *ctx) {
    frame_rows *rows = ctx;
    rows->seen++;
    uint8_t built[256], spec[256];
    size_t n = build_described(desc, built);
    if (n == 0) {
        fprintf(stderr, "    unknown frame vector row: %s\n", desc);
        rows->failed++;
        return;
    }
    if (!bytes_equal_hex(built, n, hex)) {
        fprintf(stderr, "    frame vector differs: %s\n", desc);
        rows->failed++;
        return;
    }
    /* and it decodes: one frame (padding is skipped), nothing left over */
    size_t len = hex_decode(hex, spec, sizeof spec), pos = 0;
    q_frame f;
    int eliciting;
    if (q_frames_check(spec, len, &eliciting) != 0 || q_frame_next(spec, len, &pos, &f) != 1 ||
        q_frame_next(spec, len, &pos, &f) != 0) {
        fprintf(stderr, "    frame vector does not decode to one frame: %s\n", desc);
        rows->failed++;
        return;
    }
    rows->matched++;
}

static void test_frame_vectors(void) {
    frame_rows rows = {0, 0, 0};
    CHECK(spec_table(section11(), on_frame_row, &rows) >= 12);
    CHECK(rows.failed == 0);
    CHECK(rows.matched == rows.seen);
}

/* Decoding the frame vectors field by field. */
static void test_frame_vector_fields(void) {
    uint8_t b[64];
    size_t pos = 0;
    q_frame f;
    size_t n = q_enc_session(b, (const uint8_t *)"0123456789abcdef", (const uint8_t *)"tok", 3,
                             60000, 1);
    CHECK(q_frame_next(b, n, &pos, &f) == 1 && f.type == Q_FRAME_SESSION);
    CHECK(f.u.session.token_len == 3 && memcmp(f.u.session.token, "tok", 3) == 0);
    CHECK(f.u.session.remaining_ms == 60000 && f.u.session.resumed == 1);
    uint32_t seqs[2] = {1, 2};
    n = q_enc_parity(b, 17, 3, 1, 2, seqs, (const uint8_t *)"\xaa\xbb\xcc", 3);
    pos = 0;
    CHECK(q_frame_next(b, n, &pos, &f) == 1 && f.type == Q_FRAME_PARITY);
    CHECK(f.u.parity.group == 17 && f.u.parity.m == 3 && f.u.parity.index == 1);
    CHECK(f.u.parity.k == 2 && q_get32(f.u.parity.seqs + 4) == 2 && f.u.parity.length == 3);
    n = q_enc_message(b, 3, 1, 258, 1, 2, (const uint8_t *)"hi", 2);
    pos = 0;
    CHECK(q_frame_next(b, n, &pos, &f) == 1 && f.u.msg.channel == 3 && f.u.msg.mode == 1);
    CHECK(f.u.msg.id == 258 && f.u.msg.index == 1 && f.u.msg.count == 2 && f.u.msg.length == 2);
}

void run_vector_tests(void) {
    RUN(test_handshake_vectors);
    RUN(test_packet_vectors);
    RUN(test_frame_vectors);
    RUN(test_frame_vector_fields);
}
