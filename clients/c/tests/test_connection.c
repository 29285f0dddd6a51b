/* Section 10: the connection against a scripted server built from the same primitives
 * (a real handshake with a fresh static key; protected packets sealed and opened with the
 * derived keys). The simulated clock makes every timer exact. */
#include <netinet/in.h>
#include <sodium.h>
#include <stdlib.h>

#include "conn.h"
#include "test.h"
#include "wire.h"

typedef struct fake_server {
    uint8_t s_priv[32], s_pub[32];
    char pin[64];
    uint8_t cid[16];
    q_dir_keys seal, open;
    int no_aes;              /* the server has ChaCha20-Poly1305 only */
    int downgrade;           /* a man in the middle removed AES-256-GCM from the offer */
    q_cipher cipher;
    uint64_t next_pn;
    q_recv_tracker recv;
    /* the last client packet opened */
    uint8_t flags;
    uint64_t pn;
    uint32_t ack;
    q_sack sack[Q_MAX_SACK];
    int nsack;
    uint8_t payload[Q_MAX_DATAGRAM];
    size_t payload_len;
} fake_server;

static struct sockaddr_in server_addr(void) {
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons(9090);
    a.sin_addr.s_addr = htonl(0x7F000001);
    return a;
}

static void fs_init(fake_server *fs) {
    memset(fs, 0, sizeof *fs);
    randombytes_buf(fs->s_priv, 32);
    crypto_scalarmult_base(fs->s_pub, fs->s_priv);
    sodium_bin2base64(fs->pin, sizeof fs->pin, fs->s_pub, 32, sodium_base64_VARIANT_URLSAFE);
    fs->next_pn = 1;
    q_recv_init(&fs->recv, 256, 0.025);
}

static void fs_free(fake_server *fs) { q_recv_free(&fs->recv); }

#define FS_COOKIE 118

/* The SYN-ACK for a SYN (the first offered cipher the server has); derives the server's
 * keys. 0 if the SYN is not a ClientHello. */
static size_t fs_server_hello(fake_server *fs, const uint8_t *syn, size_t n, uint8_t fec_k,
                              uint8_t fec_m, uint32_t keepalive_ms, uint32_t idle_ms,
                              uint8_t *out) {
    if (n != 1200)
        return 0;
    memcpy(fs->cid, syn + 6, 16);
    const uint8_t *e_c = syn + 32, *offer = syn + 64;
    uint8_t seen[1 + Q_MAX_OFFER];
    size_t offer_len = 1 + (size_t)offer[0];
    if (offer[0] < 1 || offer[0] > Q_MAX_OFFER)
        return 0;
    memcpy(seen, offer, offer_len);
    if (fs->downgrade) { /* the server sees ChaCha20-Poly1305 only */
        seen[0] = 1;
        seen[1] = Q_CIPHER_CHACHA20POLY1305;
        offer_len = 2;
    }
    int chosen = 0;
    for (size_t i = 1; i < offer_len && !chosen; i++)
        if (seen[i] == Q_CIPHER_CHACHA20POLY1305 ||
            (seen[i] == Q_CIPHER_AES256GCM && !fs->no_aes))
            chosen = seen[i];
    if (!chosen)
        return 0;
    fs->cipher = (q_cipher)chosen;
    uint8_t e_s_priv[32], e_s[32], ee[32], es[32];
    randombytes_buf(e_s_priv, 32);
    crypto_scalarmult_base(e_s, e_s_priv);
    if (crypto_scalarmult(ee, e_s_priv, e_c) != 0 || crypto_scalarmult(es, fs->s_priv, e_c) != 0)
        return 0;
    q_schedule sch;
    q_key_schedule(fs->cid, e_c, seen, offer_len, e_s, fs->s_pub, fs->cipher, ee, es, &sch);
    q_keys_init(&fs->seal, fs->cipher, sch.server_secret);
    q_keys_init(&fs->open, fs->cipher, sch.client_secret);
    uint8_t *p = out + Q_HEADER_SIZE;
    memcpy(p, e_s, 32);
    memcpy(p + 32, fs->s_pub, 32);
    p[64] = (uint8_t)chosen;
    q_put16(p + 65, FS_COOKIE);
    randombytes_buf(p + 67, FS_COOKIE);
    uint8_t params[10] = {fec_k, fec_m};
    q_put32(params + 2, keepalive_ms);
    q_put32(params + 6, idle_ms);
    static const uint8_t zero[12] = {0};
    q_aead_once_seal(fs->cipher, sch.confirm_key, zero, sch.transcript, 32, params, 10,
                     p + 67 + FS_COOKIE);
    size_t len = Q_SERVER_HELLO_FIXED + FS_COOKIE;
    q_header_encode(out, Q_SYN | Q_ACK, fs->cid, 0, 0, (uint16_t)len);
    return Q_HEADER_SIZE + len;
}

/* A protected packet from the server carrying `frames`. */
static size_t fs_packet(fake_server *fs, uint8_t flags, const uint8_t *frames, size_t len,
                        uint8_t *out) {
    uint32_t ack32;
    q_sack sack[Q_MAX_SACK];
    int nsack = q_recv_ack_fields(&fs->recv, &ack32, sack);
    for (int i = 0; i < nsack; i++) {
        q_put32(out + 32 + 8 * i, sack[i].start);
        q_put32(out + 36 + 8 * i, sack[i].end);
    }
    if (len)
        memcpy(out + 32 + 8 * nsack, frames, len);
    uint64_t pn = fs->next_pn++;
    q_header_encode(out, (uint8_t)(flags | Q_ACK | q_keys_phase_flag(&fs->seal)), fs->cid,
                    (uint32_t)pn, ack32, (uint16_t)len);
    q_keys_seal(&fs->seal, pn, out, 32, out + 32, 8 * (size_t)nsack + len);
    return 32 + 8 * (size_t)nsack + len + 16;
}

/* Open a client packet into fs->payload; 0 or -1. */
static int fs_open(fake_server *fs, const uint8_t *d, size_t n) {
    q_header h;
    uint8_t body[Q_MAX_DATAGRAM];
    if (q_header_decode(d, n, &h) != 0 || n < 48)
        return -1;
    uint64_t pn = q_recv_expand(&fs->recv, h.seq);
    memcpy(body, d + 32, n - 32);
    long len = q_keys_open(&fs->open, (h.flags & Q_KEY_PHASE) ? 1 : 0, pn, 0, 1.0, d, 32, body,
                           n - 32);
    const uint8_t *payload;
    if (len < 0 || q_split_body(body, (size_t)len, h.payload_len, fs->sack, &fs->nsack,
                                &payload) != 0)
        return -1;
    int eliciting;
    if (q_frames_check(payload, h.payload_len, &eliciting) != 0)
        return -1;
    q_recv_on_received(&fs->recv, pn, eliciting, 0);
    fs->flags = h.flags;
    fs->pn = pn;
    fs->ack = h.ack;
    memcpy(fs->payload, payload, h.payload_len);
    fs->payload_len = h.payload_len;
    return 0;
}

/* The first frame of the given type in the last opened packet. */
static int fs_find(const fake_server *fs, uint8_t type, q_frame *out) {
    size_t pos = 0;
    while (q_frame_next(fs->payload, fs->payload_len, &pos, out) == 1)
        if (out->type == type)
            return 1;
    return 0;
}

static int next_dgram(quantum_connection *c, double now, uint8_t *buf, size_t *len) {
    return quantum_connection_next_datagram(c, now, buf, Q_MAX_DATAGRAM, len) == 1;
}

static void feed(quantum_connection *c, const uint8_t *d, size_t n, double now) {
    struct sockaddr_in a = server_addr();
    quantum_connection_receive(c, d, n, &a, sizeof a, now);
}

static void test_config(quantum_config *cfg) {
    quantum_config_default(cfg);
    cfg->keepalive_interval = 0;
}

/* A fresh connection whose SYN has been pulled into syn (1200 bytes); 1 on success. */
static int syn_sent(quantum_connection **c, const char *pin, uint8_t syn[Q_MAX_DATAGRAM]) {
    quantum_config cfg;
    test_config(&cfg);
    struct sockaddr_in a = server_addr();
    quantum_credentials cred = {"alice", NULL, NULL, NULL, 0, NULL, 0};
    size_t n;
    return quantum_connection_create(c, &cfg, &cred, pin, &a, sizeof a, NULL, 0.0) == 0 &&
           next_dgram(*c, 0.0, syn, &n) && n == 1200;
}

/* A connection established with the fake server at time 0; 1 on success. */
static int establish(quantum_connection **out, fake_server *fs, const quantum_config *cfg,
                     uint8_t fec_k, uint8_t fec_m) {
    quantum_config defaults;
    if (!cfg) {
        test_config(&defaults);
        cfg = &defaults;
    }
    struct sockaddr_in a = server_addr();
    quantum_credentials cred = {"alice", "v1.ticket", NULL, NULL, 0, NULL, 0};
    fs_init(fs);
    if (quantum_connection_create(out, cfg, &cred, fs->pin, &a, sizeof a, NULL, 0.0) != 0)
        return 0;
    quantum_connection *c = *out;
    uint8_t d[Q_MAX_DATAGRAM], reply[Q_MAX_DATAGRAM];
    size_t n;
    if (!next_dgram(c, 0.0, d, &n))
        return 0;
    size_t rn = fs_server_hello(fs, d, n, fec_k, fec_m, 10000, 60000, reply);
    feed(c, reply, rn, 0.010);
    if (!next_dgram(c, 0.010, d, &n) || d[5] != Q_ACK)
        return 0;
    uint8_t frame[64];
    size_t fl = q_enc_session(frame, (const uint8_t *)"SESSION-ID-16-BY", (const uint8_t *)"tok",
                              3, 1800000, 0);
    rn = fs_packet(fs, 0, frame, fl, reply);
    feed(c, reply, rn, 0.020);
    quantum_event ev;
    return quantum_connection_next_event(c, &ev) == 1 && ev.type == QUANTUM_EVENT_CONNECTED;
}

static void test_handshake_and_session(void) {
    fake_server fs;
    quantum_connection *c;
    fs_init(&fs);
    uint8_t d[Q_MAX_DATAGRAM], reply[Q_MAX_DATAGRAM], syn[Q_MAX_DATAGRAM];
    size_t n;
    CHECK(syn_sent(&c, fs.pin, syn) && syn[5] == Q_SYN);
    CHECK(!next_dgram(c, 0.0, d, &n)); /* one SYN, nothing else */
    size_t rn = fs_server_hello(&fs, syn, 1200, 10, 3, 10000, 60000, reply);
    feed(c, reply, rn, 0.040);
    CHECK(quantum_connection_state(c) == QUANTUM_STATE_AWAIT_ACCEPT);
    CHECK(c->sent.rtt.sampled && c->sent.rtt.srtt > 0.039 && c->sent.rtt.srtt < 0.041);
    CHECK(c->fec_on && c->params.fec_k == 10);
    CHECK(next_dgram(c, 0.040, d, &n) && d[5] == Q_ACK && q_get32(d + 22) == 0);
    /* cookie length, cookie, sealed credentials (flags, user, fec, no metadata) */
    CHECK(n == 32 + 2 + FS_COOKIE + 16 + 1 + 2 + 5 + 2 + 1);
    CHECK(q_get16(d + 32) == FS_COOKIE && memcmp(d + 34, reply + 32 + 67, FS_COOKIE) == 0);
    feed(c, reply, rn, 0.041); /* a second server hello: ignored */
    CHECK(quantum_connection_state(c) == QUANTUM_STATE_AWAIT_ACCEPT);
    uint8_t frame[64];
    size_t fl = q_enc_session(frame, (const uint8_t *)"SESSION-ID-16-BY", (const uint8_t *)"tok",
                              3, 1800000, 1);
    rn = fs_packet(&fs, 0, frame, fl, reply);
    feed(c, reply, rn, 0.080);
    quantum_event ev;
    CHECK(quantum_connection_next_event(c, &ev) == 1 && ev.type == QUANTUM_EVENT_CONNECTED);
    CHECK(memcmp(ev.session_id, "SESSION-ID-16-BY", 16) == 0);
    CHECK(strcmp(ev.session_token, "tok") == 0 && ev.remaining_ms == 1800000 && ev.resumed == 1);
    CHECK(quantum_connection_state(c) == QUANTUM_STATE_ESTABLISHED);
    CHECK(c->hs == NULL); /* nothing of the handshake is kept */
    CHECK(memcmp(quantum_connection_server_public_key(c), fs.s_pub, 32) == 0);
    /* the SESSION frame is owed an ACK within max_ack_delay */
    CHECK(!next_dgram(c, 0.080, d, &n));
    double ack_at = quantum_connection_next_timer(c);
    CHECK(ack_at == 0.080 + 0.025);
    CHECK(next_dgram(c, ack_at, d, &n));
    CHECK(fs_open(&fs, d, n) == 0);
    CHECK(fs.payload_len == 0);
    CHECK(fs.ack == 2);
    quantum_connection_destroy(c);
    fs_free(&fs);
}

static void test_handshake_resends_then_times_out(void) {
    quantum_connection *c;
    uint8_t d[Q_MAX_DATAGRAM], first[Q_MAX_DATAGRAM];
    size_t n;
    CHECK(syn_sent(&c, NULL, first));
    int sent = 1;
    double now = 0.0;
    quantum_event ev;
    while (quantum_connection_state(c) != QUANTUM_STATE_CLOSED && now < 10) {
        now = quantum_connection_next_timer(c);
        quantum_connection_handle_timer(c, now);
        while (next_dgram(c, now, d, &n)) {
            CHECK(n == 1200 && memcmp(d, first, 1200) == 0); /* the same bytes every time */
            sent++;
        }
    }
    CHECK(sent == 5 && now == 5.0);
    CHECK(quantum_connection_next_event(c, &ev) == 1 && ev.type == QUANTUM_EVENT_DISCONNECTED);
    CHECK(ev.code == QUANTUM_CLOSE_HANDSHAKE_TIMEOUT && !ev.by_peer);
    CHECK(strcmp(ev.reason, "handshake timeout") == 0);
    quantum_connection_destroy(c);
}

static void test_plain_reject_and_retry(void) {
    quantum_connection *c;
    uint8_t d[Q_MAX_DATAGRAM], reply[256];
    size_t n;
    CHECK(syn_sent(&c, NULL, d));
    /* RETRY: the SYN goes out again at once, with the cookie */
    uint8_t cookie[36];
    randombytes_buf(cookie, 36);
    q_header_encode(reply, Q_SYN | Q_URG, c->cid, 0, 0, 36);
    memcpy(reply + 32, cookie, 36);
    feed(c, reply, 68, 0.01);
    /* e_c, the offer (n, ids), the cookie length, the cookie */
    size_t at = 32 + 32 + 1 + d[32 + 32];
    CHECK(next_dgram(c, 0.01, d, &n) && n == 1200 && d[at] == 36);
    CHECK(memcmp(d + at + 1, cookie, 36) == 0);
    q_header_encode(reply, Q_SYN | Q_URG, c->cid, 0, 0, 35); /* malformed: ignored */
    feed(c, reply, 67, 0.02);
    CHECK(!next_dgram(c, 0.02, d, &n) && c->stats.dropped == 1);
    /* a plaintext REJECT while SYN_SENT ends it */
    size_t fl = q_enc_code_reason(reply + 32, Q_FRAME_REJECT, 19, (const uint8_t *)"full", 4);
    q_header_encode(reply, Q_RST, c->cid, 0, 0, (uint16_t)fl);
    feed(c, reply, 32 + fl, 0.03);
    quantum_event ev;
    CHECK(quantum_connection_next_event(c, &ev) == 1 && ev.type == QUANTUM_EVENT_DISCONNECTED);
    CHECK(ev.code == 19 && ev.by_peer && strcmp(ev.reason, "full") == 0);
    quantum_connection_destroy(c);
}

static void test_pin_mismatch(void) {
    fake_server fs, other;
    fs_init(&fs);
    fs_init(&other);
    quantum_connection *c;
    char fp[64];
    CHECK(quantum_fingerprint(other.s_pub, fp, sizeof fp) == 0);
    uint8_t d[Q_MAX_DATAGRAM], reply[Q_MAX_DATAGRAM];
    CHECK(syn_sent(&c, fp, d));
    size_t rn = fs_server_hello(&fs, d, 1200, 0, 0, 10000, 60000, reply);
    feed(c, reply, rn, 0.01);
    quantum_event ev;
    CHECK(quantum_connection_next_event(c, &ev) == 1 && ev.type == QUANTUM_EVENT_DISCONNECTED);
    CHECK(ev.code == QUANTUM_CLOSE_BAD_SERVER_KEY);
    quantum_connection_destroy(c);
    fs_free(&fs);
    fs_free(&other);
}

static void test_messages_both_ways(void) {
    fake_server fs;
    quantum_connection *c;
    CHECK(establish(&c, &fs, NULL, 0, 0));
    uint8_t frames[Q_MAX_DATAGRAM], pkt[Q_MAX_DATAGRAM + 8], d[Q_MAX_DATAGRAM];
    /* server -> client: an unordered message in byte-offset fragments, the tail first, and a
     * sequenced one in the same packet; then a fragment overlapping both pieces */
    size_t fl = q_enc_fragment(frames, 4, 1, 0, 6, 11, (const uint8_t *)"world", 5);
    fl += q_enc_message(frames + fl, 4, 3, 0, (const uint8_t *)"seq", 3);
    size_t n = fs_packet(&fs, 0, frames, fl, pkt);
    feed(c, pkt, n, 1.0);
    fl = q_enc_fragment(frames, 4, 1, 0, 4, 11, (const uint8_t *)"o wo", 4); /* inside: dup */
    n = fs_packet(&fs, 0, frames, fl, pkt);
    feed(c, pkt, n, 1.0);
    fl = q_enc_fragment(frames, 4, 1, 0, 0, 11, (const uint8_t *)"hello w", 7); /* overlaps */
    n = fs_packet(&fs, 0, frames, fl, pkt);
    feed(c, pkt, n, 1.0);
    quantum_event ev;
    CHECK(quantum_connection_next_event(c, &ev) == 1 && ev.type == QUANTUM_EVENT_MESSAGE);
    CHECK(ev.mode == 3 && ev.length == 3 && memcmp(ev.data, "seq", 3) == 0);
    CHECK(quantum_connection_next_event(c, &ev) == 1 && ev.channel == 4 && ev.mode == 1);
    CHECK(ev.length == 11 && memcmp(ev.data, "hello world", 11) == 0);
    CHECK(quantum_connection_next_event(c, &ev) == 0);
    feed(c, pkt, n, 1.0); /* the same datagram again: a replay, dropped before decryption */
    CHECK(quantum_connection_next_event(c, &ev) == 0 && c->stats.dropped == 1);
    pkt[40] ^= 1; /* tampered */
    feed(c, pkt, n, 1.0);
    CHECK(quantum_connection_next_event(c, &ev) == 0 && c->stats.dropped == 2);
    /* a PING (a PMTU probe: PING then PADDING up to 1472 bytes) is acknowledged */
    memset(frames, 0, sizeof frames);
    frames[0] = Q_FRAME_PING;
    n = fs_packet(&fs, 0, frames, 1472 - 32 - 16, pkt);
    CHECK(n == 1472);
    feed(c, pkt, n, 1.0);
    CHECK(c->stats.dropped == 2);
    CHECK(c->stats.packets_received == 5);
    double ack_at = quantum_connection_next_timer(c);
    CHECK(ack_at <= 1.0 + 0.025 + 1e-9);
    CHECK(next_dgram(c, ack_at, d, &n) && fs_open(&fs, d, n) == 0);
    CHECK(fs.ack == (uint32_t)fs.next_pn && n <= 1200);
    /* a datagram above 1472 bytes is malformed: dropped unread */
    n = fs_packet(&fs, 0, frames, 1473 - 32 - 16, pkt);
    feed(c, pkt, n, 1.1);
    CHECK(c->stats.dropped == 3);

    /* client -> server: 5000 bytes in fragments as large as a 1200-byte datagram allows */
    static uint8_t msg[5000];
    for (int i = 0; i < 5000; i++)
        msg[i] = (uint8_t)(i * 7);
    CHECK(quantum_connection_send(c, 9, QUANTUM_RELIABLE_ORDERED, msg, sizeof msg) == 0);
    static uint8_t rebuilt[5000];
    size_t total = 0, expect_offset = 0;
    int packets = 0;
    while (next_dgram(c, 1.2, d, &n)) {
        CHECK(n <= 1200 && fs_open(&fs, d, n) == 0);
        packets++;
        size_t pos = 0;
        q_frame f;
        while (q_frame_next(fs.payload, fs.payload_len, &pos, &f) == 1)
            if (f.type == Q_FRAME_MESSAGE) {
                CHECK(f.u.msg.channel == 9 && f.u.msg.fragment && f.u.msg.total == 5000);
                CHECK(f.u.msg.offset == expect_offset);
                memcpy(rebuilt + f.u.msg.offset, f.u.msg.data, f.u.msg.length);
                total += f.u.msg.length;
                expect_offset += f.u.msg.length;
            }
    }
    /* D = 1200 - 112 = 1088 payload bytes: 1071 data bytes a fragment */
    CHECK(packets == 5 && total == 5000 && memcmp(rebuilt, msg, 5000) == 0);
    /* a message that fits one packet whole goes whole (9 + length bytes) */
    CHECK(quantum_connection_send(c, 9, QUANTUM_RELIABLE_ORDERED, msg, 1079) == 0);
    CHECK(next_dgram(c, 1.2, d, &n) && fs_open(&fs, d, n) == 0);
    q_frame f;
    CHECK(fs_find(&fs, Q_FRAME_MESSAGE, &f) && !f.u.msg.fragment && f.u.msg.length == 1079);
    CHECK(quantum_connection_max_unreliable(c) == 1024);
    CHECK(quantum_connection_send(c, 0, QUANTUM_UNRELIABLE, msg, 1025) == QUANTUM_E_TOO_LARGE);
    CHECK(quantum_connection_send(c, 0, QUANTUM_UNRELIABLE_SEQUENCED, msg, 1024) == 0);
    n = fs_packet(&fs, 0, NULL, 0, pkt); /* everything acknowledged: the window is open */
    feed(c, pkt, n, 1.25);
    CHECK(next_dgram(c, 1.25, d, &n) && fs_open(&fs, d, n) == 0 && n <= 1200);
    CHECK(fs_find(&fs, Q_FRAME_MESSAGE, &f) && !f.u.msg.fragment && f.u.msg.length == 1024);
    quantum_connection_destroy(c);
    fs_free(&fs);
}

/* Lost packets: their reliable frames go out again under new packet numbers. */
static void test_rto_and_fast_retransmit(void) {
    fake_server fs;
    quantum_connection *c;
    CHECK(establish(&c, &fs, NULL, 0, 0));
    uint8_t d[Q_MAX_DATAGRAM], pkt[Q_MAX_DATAGRAM];
    size_t n;
    uint64_t first_pn = 0;
    for (int i = 0; i < 5; i++) {
        uint8_t m = (uint8_t)('a' + i);
        CHECK(quantum_connection_send(c, 0, QUANTUM_RELIABLE_ORDERED, &m, 1) == 0);
        CHECK(next_dgram(c, 1.0, d, &n) && fs_open(&fs, d, n) == 0);
        if (i == 0)
            first_pn = fs.pn;
        /* the server receives all but the first */
    }
    /* an ack naming the four later ones: the first is lost (three higher acked) */
    q_recv_tracker saved = fs.recv;
    Q_UNUSED(saved);
    uint8_t frames[16];
    size_t fl = q_enc_u32_frame(frames, Q_FRAME_KEEPALIVE_ACK, 0); /* any frame: not eliciting */
    Q_UNUSED(fl);
    /* build the ack by hand: cumulative = first_pn, SACK first_pn + 1 .. first_pn + 4 */
    uint8_t body[64];
    q_put32(body, (uint32_t)(first_pn + 1));
    q_put32(body + 4, (uint32_t)(first_pn + 4));
    uint64_t pn = fs.next_pn++;
    q_header_encode(pkt, Q_ACK, fs.cid, (uint32_t)pn, (uint32_t)first_pn, 0);
    memcpy(pkt + 32, body, 8);
    q_keys_seal(&fs.seal, pn, pkt, 32, pkt + 32, 8);
    feed(c, pkt, 32 + 8 + 16, 1.05);
    CHECK(c->stats.fast_retransmits == 1 && c->stats.packets_lost == 1);
    CHECK(next_dgram(c, 1.05, d, &n) && fs_open(&fs, d, n) == 0);
    q_frame f;
    CHECK(fs_find(&fs, Q_FRAME_MESSAGE, &f) && f.u.msg.data[0] == 'a' && fs.pn > first_pn + 4);
    /* nothing acknowledges the retransmission: the RTO sends it once more */
    double rto_at = quantum_connection_next_timer(c);
    CHECK(rto_at > 1.05);
    quantum_connection_handle_timer(c, rto_at);
    CHECK(c->stats.timeout_retransmits == 1);
    uint64_t before = fs.pn;
    CHECK(next_dgram(c, rto_at, d, &n) && fs_open(&fs, d, n) == 0 && fs.pn > before);
    CHECK(fs_find(&fs, Q_FRAME_MESSAGE, &f) && f.u.msg.data[0] == 'a' && f.u.msg.id == 0);
    quantum_connection_destroy(c);
    fs_free(&fs);
}

static void test_heartbeat_resends_and_is_answered(void) {
    fake_server fs;
    quantum_connection *c;
    CHECK(establish(&c, &fs, NULL, 0, 0));
    uint8_t d[Q_MAX_DATAGRAM], pkt[Q_MAX_DATAGRAM], frames[32];
    size_t n;
    uint32_t id;
    CHECK(quantum_connection_heartbeat(c, 2.0, 1.0, &id) == 0);
    CHECK(next_dgram(c, 1.0, d, &n) && fs_open(&fs, d, n) == 0);
    q_frame f;
    CHECK(fs_find(&fs, Q_FRAME_KEEPALIVE, &f) && f.u.keepalive.id == id);
    /* unanswered: a fresh keepalive after max(2 x SRTT, 250 ms) (the RTO of the packet that
     * carried the first fires before, at 1.2 s, and changes nothing: keepalives are not
     * retransmitted) */
    double t = quantum_connection_next_timer(c);
    CHECK(t > 1.199 && t < 1.201);
    quantum_connection_handle_timer(c, t);
    CHECK(!next_dgram(c, t, d, &n));
    t = quantum_connection_next_timer(c);
    CHECK(t > 1.249 && t < 1.251);
    quantum_connection_handle_timer(c, t);
    CHECK(next_dgram(c, t, d, &n) && fs_open(&fs, d, n) == 0);
    CHECK(fs_find(&fs, Q_FRAME_KEEPALIVE, &f) && f.u.keepalive.id != id);
    uint32_t second = f.u.keepalive.id;
    /* the answer to the second one completes the heartbeat, reported under the first id */
    size_t fl = q_enc_keepalive_ack(frames, second, 1234567);
    n = fs_packet(&fs, 0, frames, fl, pkt);
    feed(c, pkt, n, 1.3);
    quantum_event ev;
    CHECK(quantum_connection_next_event(c, &ev) == 1 && ev.type == QUANTUM_EVENT_KEEPALIVE);
    CHECK(ev.keepalive_id == id && ev.remaining_ms == 1234567);
    CHECK(ev.rtt > 0.049 && ev.rtt < 0.051);
    fl = q_enc_keepalive_ack(frames, id, 1); /* a late answer to the first: swallowed */
    n = fs_packet(&fs, 0, frames, fl, pkt);
    feed(c, pkt, n, 1.31);
    CHECK(quantum_connection_next_event(c, &ev) == 0);
    /* a heartbeat nobody answers times out */
    CHECK(quantum_connection_heartbeat(c, 0.5, 2.0, &id) == 0);
    while (quantum_connection_next_event(c, &ev) == 0) {
        t = quantum_connection_next_timer(c);
        CHECK(t > 0 && t < 2.6);
        quantum_connection_handle_timer(c, t);
        while (next_dgram(c, t, d, &n))
            ;
    }
    CHECK(ev.type == QUANTUM_EVENT_KEEPALIVE_TIMEOUT && ev.keepalive_id == id);
    quantum_connection_destroy(c);
    fs_free(&fs);
}

static void test_path_challenge_is_answered(void) {
    fake_server fs;
    quantum_connection *c;
    CHECK(establish(&c, &fs, NULL, 0, 0));
    uint8_t d[Q_MAX_DATAGRAM], pkt[Q_MAX_DATAGRAM], frames[16];
    static const uint8_t data[8] = {9, 8, 7, 6, 5, 4, 3, 2};
    size_t fl = q_enc_path(frames, Q_FRAME_PATH_CHALLENGE, data);
    size_t n = fs_packet(&fs, 0, frames, fl, pkt);
    feed(c, pkt, n, 1.0);
    CHECK(next_dgram(c, 1.0, d, &n) && fs_open(&fs, d, n) == 0);
    q_frame f;
    CHECK(fs_find(&fs, Q_FRAME_PATH_RESPONSE, &f) && memcmp(f.u.path.data, data, 8) == 0);
    CHECK(c->stats.path_challenges_answered == 1);
    quantum_connection_destroy(c);
    fs_free(&fs);
}

static void test_malformed_frames_reset_the_connection(void) {
    fake_server fs;
    quantum_connection *c;
    CHECK(establish(&c, &fs, NULL, 0, 0));
    uint8_t d[Q_MAX_DATAGRAM], pkt[Q_MAX_DATAGRAM];
    uint8_t bad[2] = {0x0C, 0}; /* an unknown frame type, authenticated */
    size_t n = fs_packet(&fs, 0, bad, 2, pkt);
    feed(c, pkt, n, 1.0);
    quantum_event ev;
    CHECK(quantum_connection_next_event(c, &ev) == 1 && ev.type == QUANTUM_EVENT_DISCONNECTED);
    CHECK(ev.code == QUANTUM_CLOSE_PROTOCOL_VIOLATION && !ev.by_peer);
    CHECK(next_dgram(c, 1.0, d, &n) && fs_open(&fs, d, n) == 0 && (fs.flags & Q_RST));
    q_frame f;
    CHECK(fs_find(&fs, Q_FRAME_CLOSE, &f) && f.u.close.code == QUANTUM_CLOSE_PROTOCOL_VIOLATION);
    CHECK(!next_dgram(c, 1.0, d, &n));
    quantum_connection_destroy(c);
    fs_free(&fs);
}

static void test_server_fin_and_client_close(void) {
    fake_server fs;
    quantum_connection *c;
    CHECK(establish(&c, &fs, NULL, 0, 0));
    uint8_t d[Q_MAX_DATAGRAM], pkt[Q_MAX_DATAGRAM], frames[32];
    size_t fl = q_enc_code_reason(frames, Q_FRAME_CLOSE, 4, (const uint8_t *)"bye", 3);
    size_t n = fs_packet(&fs, Q_FIN, frames, fl, pkt);
    feed(c, pkt, n, 1.0);
    quantum_event ev;
    CHECK(quantum_connection_next_event(c, &ev) == 1 && ev.type == QUANTUM_EVENT_DISCONNECTED);
    CHECK(ev.code == 4 && ev.by_peer && strcmp(ev.reason, "bye") == 0);
    /* the FIN is acknowledged at once */
    CHECK(next_dgram(c, 1.0, d, &n) && fs_open(&fs, d, n) == 0 && fs.payload_len == 0);
    CHECK(fs.ack == (uint32_t)fs.next_pn);
    quantum_connection_destroy(c);
    fs_free(&fs);

    /* our close: queued data first, the FIN once it is acknowledged, done when the FIN is */
    CHECK(establish(&c, &fs, NULL, 0, 0));
    CHECK(quantum_connection_send(c, 0, QUANTUM_RELIABLE_ORDERED, "last", 4) == 0);
    CHECK(quantum_connection_close(c, "done") == 0);
    CHECK(quantum_connection_send(c, 0, QUANTUM_RELIABLE_ORDERED, "x", 1) == QUANTUM_E_CLOSED);
    CHECK(next_dgram(c, 1.0, d, &n) && fs_open(&fs, d, n) == 0 && !(fs.flags & Q_FIN));
    CHECK(!next_dgram(c, 1.0, d, &n)); /* the FIN waits for the data's acknowledgement */
    n = fs_packet(&fs, 0, NULL, 0, pkt);
    feed(c, pkt, n, 1.05);
    CHECK(next_dgram(c, 1.05, d, &n) && fs_open(&fs, d, n) == 0 && (fs.flags & Q_FIN));
    q_frame f;
    CHECK(fs_find(&fs, Q_FRAME_CLOSE, &f) && f.u.close.code == 0 && f.u.close.length == 4);
    n = fs_packet(&fs, 0, NULL, 0, pkt);
    feed(c, pkt, n, 1.1);
    CHECK(quantum_connection_next_event(c, &ev) == 1 && ev.type == QUANTUM_EVENT_DISCONNECTED);
    CHECK(ev.code == 0 && !ev.by_peer && strcmp(ev.reason, "done") == 0);
    quantum_connection_destroy(c);
    fs_free(&fs);
}

static void test_idle_timeout_follows_the_server(void) {
    quantum_config cfg;
    test_config(&cfg);
    cfg.idle_timeout = 100; /* the server's 60 s is shorter: it applies */
    fake_server fs;
    quantum_connection *c;
    CHECK(establish(&c, &fs, &cfg, 0, 0));
    uint8_t d[Q_MAX_DATAGRAM];
    size_t n;
    while (next_dgram(c, 0.05, d, &n))
        ;
    double t = quantum_connection_next_timer(c);
    CHECK(t > 60.019 && t < 60.021); /* 60 s after the SESSION frame arrived */
    quantum_connection_handle_timer(c, t);
    quantum_event ev;
    CHECK(quantum_connection_next_event(c, &ev) == 1 && ev.code == QUANTUM_CLOSE_IDLE_TIMEOUT);
    CHECK(quantum_connection_next_timer(c) < 0);
    quantum_connection_destroy(c);
    fs_free(&fs);
}

static void test_fec_recovers_a_lost_packet(void) {
    fake_server fs;
    quantum_connection *c;
    CHECK(establish(&c, &fs, NULL, 10, 3));
    q_fec_encoder *e = q_fec_encoder_new(10, 3);
    uint8_t frames[64], pkt[3][Q_MAX_DATAGRAM];
    size_t len[3];
    uint64_t pns[3];
    for (int i = 0; i < 3; i++) {
        char text[24];
        snprintf(text, sizeof text, "message %d", i);
        size_t fl = q_enc_message(frames, 1, 1, (uint32_t)i, (const uint8_t *)text, 9);
        pns[i] = fs.next_pn;
        len[i] = fs_packet(&fs, Q_PSH, frames, fl, pkt[i]);
        q_fec_encoder_add(e, pns[i], frames, fl);
    }
    q_fec_encoder_flush(e);
    CHECK(e->out_count == 2); /* min(3, ceil(3 x 3 / 10) + 1) */
    feed(c, pkt[0], len[0], 1.0);
    feed(c, pkt[2], len[2], 1.0); /* pkt[1] is lost */
    uint8_t pframe[Q_MAX_PAYLOAD], ppkt[Q_MAX_DATAGRAM];
    size_t pl = q_enc_parity(pframe, e->out_group, (uint8_t)e->out_count, 0, 3, e->out_seqs,
                             e->shards[0], e->out_size);
    size_t pn = fs_packet(&fs, Q_FEC, pframe, pl, ppkt);
    feed(c, ppkt, pn, 1.0);
    quantum_event ev;
    int seen[3] = {0};
    while (quantum_connection_next_event(c, &ev) == 1)
        if (ev.type == QUANTUM_EVENT_MESSAGE && ev.length == 9)
            seen[ev.data[8] - '0']++;
    CHECK(seen[0] == 1 && seen[1] == 1 && seen[2] == 1 && c->stats.fec_recovered == 1);
    feed(c, pkt[1], len[1], 1.1); /* the original arrives late: a duplicate */
    CHECK(quantum_connection_next_event(c, &ev) == 0);
    free(e);
    quantum_connection_destroy(c);
    fs_free(&fs);
}

static void test_ack_floor_moves_our_ack(void) {
    fake_server fs;
    quantum_connection *c;
    CHECK(establish(&c, &fs, NULL, 0, 0));
    uint8_t d[Q_MAX_DATAGRAM], pkt[Q_MAX_DATAGRAM], frames[16];
    size_t fl = q_enc_u32_frame(frames, Q_FRAME_KEEPALIVE_ACK, 0);
    Q_UNUSED(fl);
    fs.next_pn++; /* pn 2 is never sent: the client's cumulative ack sticks at it */
    size_t n = fs_packet(&fs, 0, (const uint8_t *)"\x02\x00\x00\x00\x01", 5, pkt);
    feed(c, pkt, n, 1.0);
    CHECK(next_dgram(c, 1.0, d, &n) && fs_open(&fs, d, n) == 0);
    CHECK(fs.ack == 2 && fs.nsack == 1 && fs.sack[0].start == 3);
    fl = q_enc_u32_frame(frames, Q_FRAME_ACK_FLOOR, 3);
    n = fs_packet(&fs, 0, frames, fl, pkt);
    feed(c, pkt, n, 1.1);
    CHECK(!next_dgram(c, 1.1, d, &n)); /* in order: the acknowledgement is delayed */
    CHECK(next_dgram(c, 1.125, d, &n) && fs_open(&fs, d, n) == 0);
    CHECK(fs.ack == 5 && fs.nsack == 0);
    quantum_connection_destroy(c);
    fs_free(&fs);
}

/* Key update (section 6), both directions against the fake server's own key state. */
static void test_key_update_both_ways(void) {
    quantum_config cfg;
    test_config(&cfg);
    cfg.key_update_packets = 20;
    fake_server fs;
    quantum_connection *c;
    CHECK(establish(&c, &fs, &cfg, 0, 0));
    uint8_t d[Q_MAX_DATAGRAM], pkt[Q_MAX_DATAGRAM];
    size_t n;
    double now = 1.0;
    int phase_seen[2] = {0, 0};
    for (int i = 0; i < 70; i++) {
        now += 0.01;
        CHECK(quantum_connection_send(c, 0, QUANTUM_RELIABLE_ORDERED, "k", 1) == 0);
        while (next_dgram(c, now, d, &n)) {
            CHECK(fs_open(&fs, d, n) == 0); /* the server follows every generation */
            phase_seen[(d[5] & Q_KEY_PHASE) ? 1 : 0]++;
        }
        n = fs_packet(&fs, 0, NULL, 0, pkt); /* acknowledge everything */
        feed(c, pkt, n, now);
    }
    /* 20 packets a generation (after an acknowledgement of the current one) */
    CHECK(c->seal.generation >= 3 && c->stats.key_updates == c->seal.generation);
    CHECK(fs.open.generation == c->seal.generation && phase_seen[0] && phase_seen[1]);
    /* the server updates: the client derives the next generation on demand */
    q_keys_update(&fs.seal);
    static const uint8_t ping[1] = {Q_FRAME_PING};
    n = fs_packet(&fs, 0, ping, 1, pkt);
    CHECK(pkt[5] & Q_KEY_PHASE);
    CHECK(c->open.generation == 0);
    feed(c, pkt, n, now);
    CHECK(c->open.generation == 1 && c->open.has_prev);
    uint64_t received = c->stats.packets_received;
    /* a forged packet with the other phase changes nothing */
    pkt[5] ^= Q_KEY_PHASE;
    pkt[22 + 3] ^= 0x40; /* a higher pn too */
    feed(c, pkt, n, now);
    CHECK(c->open.generation == 1 && c->stats.packets_received == received);
    /* the previous generation goes 3 x RTO after the switch */
    quantum_connection_handle_timer(c, now + 10.0);
    CHECK(!c->open.has_prev);
    quantum_connection_destroy(c);
    fs_free(&fs);
}

/* Reordering across a key update: a packet of the previous generation, numbered below the
 * first of the current one, still opens while the previous keys are kept. */
static void test_key_update_keeps_the_previous_generation(void) {
    fake_server fs;
    quantum_connection *c;
    CHECK(establish(&c, &fs, NULL, 0, 0));
    static const uint8_t ping[1] = {Q_FRAME_PING};
    uint8_t old_pkt[Q_MAX_DATAGRAM], new_pkt[Q_MAX_DATAGRAM];
    size_t old_n = fs_packet(&fs, 0, ping, 1, old_pkt); /* generation 0, pn k */
    q_keys_update(&fs.seal);
    size_t new_n = fs_packet(&fs, 0, ping, 1, new_pkt); /* generation 1, pn k + 1 */
    feed(c, new_pkt, new_n, 1.0);
    CHECK(c->open.generation == 1);
    uint64_t received = c->stats.packets_received;
    feed(c, old_pkt, old_n, 1.01);
    CHECK(c->stats.packets_received == received + 1 && c->open.generation == 1);
    quantum_connection_destroy(c);
    fs_free(&fs);

    /* ... but not once the previous keys are gone */
    CHECK(establish(&c, &fs, NULL, 0, 0));
    old_n = fs_packet(&fs, 0, ping, 1, old_pkt);
    q_keys_update(&fs.seal);
    new_n = fs_packet(&fs, 0, ping, 1, new_pkt);
    feed(c, new_pkt, new_n, 1.0);
    received = c->stats.packets_received;
    feed(c, old_pkt, old_n, 30.0);
    CHECK(c->stats.packets_received == received);
    quantum_connection_destroy(c);
    fs_free(&fs);
}

/* No acknowledgement of the current generation: no key update, so a generation's packet
 * limit closes the connection with KEYS_EXHAUSTED, never sealing one packet beyond it. */
static void test_key_limit_closes_gracefully(void) {
    quantum_config cfg;
    test_config(&cfg);
    cfg.packets_per_key = 2048;
    cfg.key_update_packets = 16;
    fake_server fs;
    quantum_connection *c;
    CHECK(establish(&c, &fs, &cfg, 0, 0));
    uint8_t d[Q_MAX_DATAGRAM], pkt[Q_MAX_DATAGRAM];
    size_t n;
    double now = 1.0;
    quantum_event ev;
    int closed = 0, sealed = 0;
    static const uint8_t ping[1] = {Q_FRAME_PING};
    /* the server sends PINGs (each owes an ACK) and acknowledges nothing */
    for (int i = 0; i < 6000 && !closed; i++) {
        now += 0.03;
        n = fs_packet(&fs, 0, ping, 1, pkt); /* its ack field acknowledges nothing */
        feed(c, pkt, n, now);
        quantum_connection_handle_timer(c, now);
        while (next_dgram(c, now, d, &n))
            sealed++;
        while (quantum_connection_next_event(c, &ev) == 1)
            closed = ev.type == QUANTUM_EVENT_DISCONNECTED;
    }
    CHECK(closed && ev.code == QUANTUM_CLOSE_KEYS_EXHAUSTED);
    CHECK(c->seal.generation == 0 && c->seal.sealed <= 2048 && sealed <= 2048);
    quantum_connection_destroy(c);
    fs_free(&fs);
}

/* The offer, the negotiated cipher, and a downgrade caught by the confirmation. */
static void test_cipher_negotiation_and_downgrade(void) {
    fake_server fs;
    quantum_connection *c;
    uint8_t syn[Q_MAX_DATAGRAM], reply[Q_MAX_DATAGRAM], d[Q_MAX_DATAGRAM];
    size_t n;
    int aes = crypto_aead_aes256gcm_is_available();
    fs_init(&fs);
    CHECK(syn_sent(&c, fs.pin, syn));
    if (aes) /* AES-256-GCM first where the CPU has it */
        CHECK(syn[64] == 2 && syn[65] == Q_CIPHER_AES256GCM &&
              syn[66] == Q_CIPHER_CHACHA20POLY1305 && syn[67] == 0);
    else
        CHECK(syn[64] == 1 && syn[65] == Q_CIPHER_CHACHA20POLY1305 && syn[66] == 0);
    fs.no_aes = 1; /* the server has ChaCha20-Poly1305 only: it is chosen */
    size_t rn = fs_server_hello(&fs, syn, 1200, 0, 0, 10000, 60000, reply);
    feed(c, reply, rn, 0.01);
    CHECK(quantum_connection_state(c) == QUANTUM_STATE_AWAIT_ACCEPT);
    CHECK(c->seal.cipher == Q_CIPHER_CHACHA20POLY1305);
    CHECK(next_dgram(c, 0.01, d, &n) && d[5] == Q_ACK);
    quantum_connection_destroy(c);
    fs_free(&fs);

    /* a man in the middle strips AES-256-GCM from the offer: the server's h differs from
     * ours, the confirmation does not open, BAD_SERVER_KEY */
    if (aes) {
        fs_init(&fs);
        fs.downgrade = 1;
        CHECK(syn_sent(&c, fs.pin, syn));
        rn = fs_server_hello(&fs, syn, 1200, 0, 0, 10000, 60000, reply);
        feed(c, reply, rn, 0.01);
        quantum_event ev;
        CHECK(quantum_connection_next_event(c, &ev) == 1 && ev.type == QUANTUM_EVENT_DISCONNECTED);
        CHECK(ev.code == QUANTUM_CLOSE_BAD_SERVER_KEY);
        quantum_connection_destroy(c);
        fs_free(&fs);
    }

    /* forced preferences */
    quantum_config cfg;
    test_config(&cfg);
    cfg.cipher_preference = QUANTUM_CIPHERS_CHACHA_ONLY;
    struct sockaddr_in a = server_addr();
    quantum_credentials cred = {"alice", NULL, NULL, NULL, 0, NULL, 0};
    CHECK(quantum_connection_create(&c, &cfg, &cred, NULL, &a, sizeof a, NULL, 0.0) == 0);
    CHECK(next_dgram(c, 0.0, syn, &n) && syn[64] == 1 && syn[65] == Q_CIPHER_CHACHA20POLY1305);
    quantum_connection_destroy(c);
    cfg.cipher_preference = QUANTUM_CIPHERS_CHACHA_FIRST;
    CHECK(quantum_connection_create(&c, &cfg, &cred, NULL, &a, sizeof a, NULL, 0.0) == 0);
    CHECK(next_dgram(c, 0.0, syn, &n) && syn[65] == Q_CIPHER_CHACHA20POLY1305);
    quantum_connection_destroy(c);
    cfg.cipher_preference = 4;
    CHECK(quantum_connection_create(&c, &cfg, &cred, NULL, &a, sizeof a, NULL, 0.0) ==
          QUANTUM_E_INVALID);
    /* a server that chose a cipher we did not offer: ignored (unauthenticated) */
    cfg.cipher_preference = QUANTUM_CIPHERS_CHACHA_ONLY;
    fs_init(&fs);
    CHECK(quantum_connection_create(&c, &cfg, &cred, NULL, &a, sizeof a, NULL, 0.0) == 0);
    CHECK(next_dgram(c, 0.0, syn, &n));
    syn[65] = Q_CIPHER_AES256GCM; /* the server sees an AES offer and chooses it */
    if (aes) {
        rn = fs_server_hello(&fs, syn, 1200, 0, 0, 10000, 60000, reply);
        feed(c, reply, rn, 0.01);
        CHECK(quantum_connection_state(c) == QUANTUM_STATE_SYN_SENT && c->stats.dropped == 1);
    }
    quantum_connection_destroy(c);
    fs_free(&fs);
    /* CIPHER_NOT_SUPPORTED: a plaintext REJECT ends the handshake with code 30 */
    CHECK(syn_sent(&c, NULL, syn));
    uint8_t rej[64];
    size_t fl = q_enc_code_reason(rej + 32, Q_FRAME_REJECT, QUANTUM_CLOSE_CIPHER_NOT_SUPPORTED,
                                  (const uint8_t *)"no cipher", 9);
    q_header_encode(rej, Q_RST, c->cid, 0, 0, (uint16_t)fl);
    feed(c, rej, 32 + fl, 0.02);
    quantum_event ev;
    CHECK(quantum_connection_next_event(c, &ev) == 1 && ev.code == 30 && ev.by_peer);
    CHECK(strcmp(quantum_close_code_name(ev.code), "CIPHER_NOT_SUPPORTED") == 0);
    quantum_connection_destroy(c);
}

void run_connection_tests(void) {
    RUN(test_handshake_and_session);
    RUN(test_handshake_resends_then_times_out);
    RUN(test_plain_reject_and_retry);
    RUN(test_pin_mismatch);
    RUN(test_messages_both_ways);
    RUN(test_rto_and_fast_retransmit);
    RUN(test_heartbeat_resends_and_is_answered);
    RUN(test_path_challenge_is_answered);
    RUN(test_malformed_frames_reset_the_connection);
    RUN(test_server_fin_and_client_close);
    RUN(test_idle_timeout_follows_the_server);
    RUN(test_fec_recovers_a_lost_packet);
    RUN(test_ack_floor_moves_our_ack);
    RUN(test_key_limit_closes_gracefully);
    RUN(test_key_update_both_ways);
    RUN(test_key_update_keeps_the_previous_generation);
    RUN(test_cipher_negotiation_and_downgrade);
}
