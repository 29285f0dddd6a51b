/* The test vectors of docs/PROTOCOL.md 2.4 and 5.7, read from the file given on the command
 * line at test time (the spec is the one source: no vector is copied into this file): the
 * address vectors (2.4), the handshake, key schedule, key update, packet protection and PMTU
 * probe vectors of both cipher orders, and the Retry (5.7). Section 11's packet and frame
 * vectors are test_vectors_wire.c's.
 *
 * What the client computes (ClientHello, key schedule, ClientFinish, sealed packets, frames)
 * is computed with the library's own code and compared. What only a server computes (the
 * ServerHello's cookie, the Retry's MAC, the address tags) is recomputed here from the spec's
 * formulas with libsodium, so the spec's server-side vectors are checked by a second
 * implementation too; the client then consumes them as it would from a real server. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sodium.h>
#include <stdlib.h>

#include "conn.h"
#include "handshake.h"
#include "test.h"
#include "wire.h"

#define BLOCK 8192 /* a code block of the spec, copied */

static int expect_in(const char *block, const char *label, const uint8_t *data, size_t len) {
    char want[2048];
    if (spec_value(block, label, want, sizeof want) != 0) {
        fprintf(stderr, "    no value for %s in docs/PROTOCOL.md\n", label);
        return 0;
    }
    if (!bytes_equal_hex(data, len, want)) {
        fprintf(stderr, "    (%s)\n", label);
        return 0;
    }
    return 1;
}

/* A value of a block decoded into out; its length, or 0. */
static size_t value_bytes(const char *block, const char *label, uint8_t *out, size_t cap) {
    char hex[4096];
    if (spec_value(block, label, hex, sizeof hex) != 0)
        return 0;
    return hex_decode(hex, out, cap);
}

/* The text between the first pair of `quote` characters after `from` on its line. */
static int quoted(const char *from, char quote, char *out, size_t cap) {
    char line[512];
    spec_copy_line(from, line, sizeof line);
    char *a = strchr(line, quote), *b = a ? strchr(a + 1, quote) : NULL;
    if (!b || (size_t)(b - a - 1) >= cap)
        return -1;
    memcpy(out, a + 1, (size_t)(b - a - 1));
    out[b - a - 1] = 0;
    return 0;
}

/* The hex digits of `from`'s line after `marker` (spaces between groups allowed), up to the
 * first character that is neither: decoded into out; its length, or 0. */
static size_t hex_after(const char *from, const char *marker, uint8_t *out, size_t cap) {
    char line[512], digits[512];
    spec_copy_line(from, line, sizeof line);
    const char *p = strstr(line, marker);
    if (!p)
        return 0;
    p += strlen(marker);
    while (*p == ' ' || *p == '=')
        p++;
    size_t n = 0;
    while (*p && n + 1 < sizeof digits) {
        char one[2];
        if (hex_run(p, one, sizeof one))
            digits[n++] = *p;
        else if (*p != ' ' || !hex_run(p + 1, one, sizeof one))
            break;
        p++;
    }
    digits[n] = 0;
    return n && n % 2 == 0 ? hex_decode(digits, out, cap) : 0;
}

/* ---------------------------------------------------------------- addresses (2.4) */

/* The address bytes of 2.4: port u16 || ip (4 bytes for IPv4 and IPv4-mapped IPv6, else 16).
 * Returns their length, or 0 for text that is not an IP address. */
static size_t address_bytes(const char *text, uint16_t port, uint8_t out[18]) {
    struct in_addr v4;
    struct in6_addr v6;
    q_put16(out, port);
    if (inet_pton(AF_INET, text, &v4) == 1) {
        memcpy(out + 2, &v4, 4);
        return 6;
    }
    if (inet_pton(AF_INET6, text, &v6) != 1)
        return 0;
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (memcmp(v6.s6_addr, mapped, 12) == 0) {
        memcpy(out + 2, v6.s6_addr + 12, 4);
        return 6;
    }
    memcpy(out + 2, v6.s6_addr, 16);
    return 18;
}

static void address_tag(const uint8_t *bytes, size_t n, uint8_t tag[16]) {
    uint8_t digest[32];
    crypto_hash_sha256(digest, bytes, n);
    memcpy(tag, digest, 16);
}

static void test_address_vectors(void) {
    const char *intro = spec_find(spec_section("### 2.4 Addresses"), "Address vectors (port ");
    CHECK(intro != NULL);
    unsigned port;
    CHECK(sscanf(intro, "Address vectors (port %u;", &port) == 1 && port <= 65535);
    static char block[BLOCK];
    CHECK(spec_block(intro, block, sizeof block) == 0);
    /* rows: "ADDRESS  address bytes HEX", "         address tag   HEX", or
     * "ADDRESS  (the same address bytes and tag as OTHER)" */
    int addresses = 0, same = 0;
    char name[64] = "";
    uint8_t bytes[18], want[32], tag[16];
    size_t nbytes = 0;
    for (const char *p = block; *p;) {
        char line[256];
        size_t len = spec_copy_line(p, line, sizeof line);
        if (line[0] != ' ' && len) {
            CHECK(sscanf(line, "%63s", name) == 1);
            nbytes = address_bytes(name, (uint16_t)port, bytes);
            CHECK(nbytes != 0);
            addresses++;
            const char *as = strstr(line, "(the same address bytes and tag as ");
            if (as) {
                char other[64];
                uint8_t other_bytes[18];
                CHECK(sscanf(as, "(the same address bytes and tag as %63[^)])", other) == 1);
                size_t on = address_bytes(other, (uint16_t)port, other_bytes);
                CHECK(on == nbytes && memcmp(other_bytes, bytes, nbytes) == 0);
                same++;
            }
        }
        int named = strstr(line, "(the same address bytes") != NULL;
        const char *field = named ? NULL : strstr(line, "address bytes ");
        if (field) {
            CHECK(hex_after(field, "address bytes", want, sizeof want) == nbytes);
            CHECK(memcmp(want, bytes, nbytes) == 0);
        }
        field = named ? NULL : strstr(line, "address tag ");
        if (field) {
            address_tag(bytes, nbytes, tag);
            CHECK(hex_after(field, "address tag", want, sizeof want) == 16);
            CHECK(memcmp(want, tag, 16) == 0);
        }
        p += len;
        if (*p == '\n')
            p++;
    }
    CHECK(addresses >= 3 && same >= 1);
}

/* -------------------------------------------------------------------- handshake (5.7) */

static const char *section57(void) { return spec_section("### 5.7 Test vectors"); }

/* What the inputs paragraph and the common outputs of 5.7 say. */
typedef struct vector_inputs {
    uint8_t s_priv[32], c_eph_priv[32], s_eph_priv[32];
    char random_label[96];
    uint8_t cid[16];
    uint8_t addr[18];
    size_t addr_len;
    double now_hello, now_finish;
    uint8_t params[Q_PARAMS_SIZE];
    uint8_t credentials[256];
    size_t credentials_len;
    char fingerprint[64];
    char cookie_label[64], retry_label[64];
} vector_inputs;

static int label_key(const char *block, const char *what, uint8_t out[32]) {
    char label[96];
    const char *line = spec_line(block, what);
    if (!line || quoted(line, '"', label, sizeof label) != 0)
        return -1;
    crypto_hash_sha256(out, (const uint8_t *)label, strlen(label));
    return 0;
}

/* draw `index` (1, 2, 3...) of the vector server's random source: block index - 1, cut */
static void server_random(const vector_inputs *in, unsigned index, uint8_t *out, size_t n) {
    uint8_t input[128], digest[32];
    size_t len = strlen(in->random_label);
    memcpy(input, in->random_label, len);
    q_put32(input + len, index - 1);
    crypto_hash_sha256(digest, input, len + 4);
    memcpy(out, digest, n);
}

/* Each input the 5.7 paragraph states, or a message naming the one it could not read. */
#define NEED(cond, what)                                                                     \
    do {                                                                                     \
        if (!(cond)) {                                                                       \
            fprintf(stderr, "    docs/PROTOCOL.md 5.7: cannot read %s\n", what);            \
            return -1;                                                                       \
        }                                                                                    \
    } while (0)

static int read_inputs(vector_inputs *in) {
    static char block[BLOCK];
    char line[512];
    memset(in, 0, sizeof *in);
    NEED(spec_block(section57(), block, sizeof block) == 0, "the inputs block");
    NEED(label_key(block, "server static private", in->s_priv) == 0, "server static private");
    NEED(label_key(block, "client ephemeral private", in->c_eph_priv) == 0,
         "client ephemeral private");
    NEED(label_key(block, "server ephemeral private", in->s_eph_priv) == 0,
         "server ephemeral private");
    const char *at = spec_line(block, "server random(n)");
    NEED(at && quoted(at, '"', in->random_label, sizeof in->random_label) == 0,
         "server random(n)");
    at = spec_line(block, "cid ");
    NEED(at && hex_after(at, "cid", in->cid, 16) == 16, "cid");
    spec_copy_line(at, line, sizeof line);
    char ip[64];
    unsigned port;
    const char *addr = strstr(line, "client address ");
    NEED(addr && sscanf(addr, "client address %63s port %u", ip, &port) == 2 && port <= 65535 &&
             (in->addr_len = address_bytes(ip, (uint16_t)port, in->addr)) != 0,
         "client address");
    spec_copy_line(spec_line(block, "now "), line, sizeof line);
    const char *finish = strstr(line, "), ");
    NEED(sscanf(line, "now = %lf", &in->now_hello) == 1 && finish &&
             sscanf(finish, "), %lf (finish)", &in->now_finish) == 1,
         "now");
    spec_copy_line(spec_line(block, "params "), line, sizeof line);
    NEED(strrchr(line, '(') &&
             hex_after(strrchr(line, '('), "(", in->params, sizeof in->params) == Q_PARAMS_SIZE,
         "params");
    at = spec_line(block, "credentials ");
    at = at ? strchr(at, '\n') : NULL;
    NEED(at && (in->credentials_len = hex_after(at + 1, "", in->credentials,
                                                sizeof in->credentials)) != 0,
         "credentials");
    /* the common outputs (the next block) */
    const char *common = spec_find(section57(), "Outputs common to both handshakes");
    NEED(common && spec_block(common, block, sizeof block) == 0 &&
             spec_value(block, "fingerprint", in->fingerprint, sizeof in->fingerprint) == 0,
         "the fingerprint");
    /* the labels the server's cookie and Retry use (5.1) */
    const char *overview = spec_section("### 5.1 Overview");
    at = spec_line(overview, "COOKIE_LABEL");
    NEED(at && quoted(at, '"', in->cookie_label, sizeof in->cookie_label) == 0, "COOKIE_LABEL");
    at = spec_line(overview, "RETRY_LABEL");
    NEED(at && quoted(at, '"', in->retry_label, sizeof in->retry_label) == 0, "RETRY_LABEL");
    return 0;
}

static void test_vector_inputs_and_common_outputs(void) {
    static vector_inputs in;
    CHECK(read_inputs(&in) == 0);
    static char block[BLOCK];
    CHECK(spec_block(spec_find(section57(), "Outputs common to both handshakes"), block,
                     sizeof block) == 0);
    uint8_t s_pub[32], e_c[32], tag[16];
    crypto_scalarmult_base(s_pub, in.s_priv);
    crypto_scalarmult_base(e_c, in.c_eph_priv);
    CHECK(expect_in(block, "S (server static public)", s_pub, 32));
    char fp[52];
    q_fingerprint(s_pub, fp);
    CHECK(strcmp(fp, in.fingerprint) == 0);
    CHECK(expect_in(block, "e_c (client public)", e_c, 32));
    address_tag(in.addr, in.addr_len, tag);
    CHECK(expect_in(block, "address tag", tag, 16));
    /* the credentials as the library encodes them: user, ticket, fec (10, 3), one entry */
    quantum_metadata meta[1] = {{"room", "lobby"}};
    quantum_credentials cred = {"alice", "v1.test", NULL, NULL, 0, meta, 1};
    uint8_t encoded[Q_MAX_CREDENTIALS];
    size_t len;
    CHECK(q_credentials_encode(&cred, 10, 3, encoded, sizeof encoded, &len) == 0);
    CHECK(len == in.credentials_len && memcmp(encoded, in.credentials, len) == 0);
    CHECK(in.now_finish > in.now_hello);
}

static void params_bytes(const q_params *p, uint8_t out[Q_PARAMS_SIZE]) {
    out[0] = p->fec_k;
    out[1] = p->fec_m;
    q_put32(out + 2, p->keepalive_ms);
    q_put32(out + 6, p->idle_ms);
}

/* The server cookie of a vector ServerHello (5.2.4), opened as the vector server would. */
static int check_cookie(const vector_inputs *in, const uint8_t *cookie, size_t len,
                        const q_client_hs *hs, const uint8_t prk[32]) {
    uint8_t key[32], nonce[12], ad[128], plain[89], tag[16];
    if (len != 118 || cookie[0] != (uint8_t)((unsigned long)(in->now_hello / 10) % 256)) /* floor: now > 0 */
        return 0;
    server_random(in, 1, key, 32);
    server_random(in, 2, nonce, 12);
    if (memcmp(cookie + 1, nonce, 12) != 0)
        return 0;
    size_t label = strlen(in->cookie_label);
    memcpy(ad, in->cookie_label, label);
    ad[label] = cookie[0];
    memcpy(ad + label + 1, in->cid, 16);
    if (q_aead_once_open(Q_CIPHER_AES256GCM, key, nonce, ad, label + 17, cookie + 13, 105,
                         plain) != 0)
        return 0;
    uint8_t issued[8];
    double at = in->now_hello;
    uint64_t bits;
    memcpy(&bits, &at, 8);
    for (int i = 0; i < 8; i++)
        issued[i] = (uint8_t)(bits >> (56 - 8 * i));
    address_tag(in->addr, in->addr_len, tag);
    return memcmp(plain, prk, 32) == 0 && memcmp(plain + 32, hs->schedule.transcript, 32) == 0 &&
           plain[64] == hs->schedule.cipher && memcmp(plain + 65, issued, 8) == 0 &&
           memcmp(plain + 73, tag, 16) == 0;
}

/* "generation G, pn N" of a description line */
static int generation_pn(const char *line, unsigned *generation, unsigned *pn) {
    const char *g = line ? strstr(line, "generation ") : NULL;
    return g && sscanf(g, "generation %u", generation) == 1 && strstr(g, "pn ") &&
                   sscanf(strstr(g, "pn "), "pn %u", pn) == 1
               ? 0
               : -1;
}

/* The PMTU probe vector: what a server sends to test a path of `size` bytes (10.6), opened
 * by the library's connection as a probe from the server arriving at the client. */
static void check_probe(const vector_inputs *in, const char *block, const q_client_hs *hs,
                        const q_params *params) {
    const char *line = spec_line(block, "PMTU probe (10.6), server -> client");
    CHECK(line != NULL);
    unsigned generation, pn, ack, size;
    CHECK(generation_pn(line, &generation, &pn) == 0 && generation == 0);
    CHECK(strstr(line, "ack ") && sscanf(strstr(line, "ack "), "ack %u", &ack) == 1);
    const char *sizes = strstr(line, ", no SACK blocks, ");
    CHECK(sizes && sscanf(sizes, ", no SACK blocks, %u bytes:", &size) == 1);
    CHECK(size > Q_BASE_DATAGRAM && size <= Q_MAX_DATAGRAM);
    /* header, PING, PADDING to the size, sealed with the server's generation 0 */
    uint8_t probe[Q_MAX_DATAGRAM], digest[32];
    uint16_t payload_len = (uint16_t)(size - Q_HEADER_SIZE - Q_TAG_SIZE);
    q_header_encode(probe, Q_ACK, in->cid, pn, ack, payload_len);
    CHECK(expect_in(block, "probe header", probe, Q_HEADER_SIZE));
    memset(probe + Q_HEADER_SIZE, 0, payload_len);
    probe[Q_HEADER_SIZE] = Q_FRAME_PING;
    q_dir_keys server;
    CHECK(q_keys_init(&server, hs->schedule.cipher, hs->schedule.server_secret) == 0);
    q_keys_seal(&server, pn, probe, Q_HEADER_SIZE, probe + Q_HEADER_SIZE, payload_len);
    q_keys_wipe(&server);
    CHECK(expect_in(block, "probe body[0:32]", probe + Q_HEADER_SIZE, 32));
    CHECK(expect_in(block, "probe tag", probe + size - Q_TAG_SIZE, Q_TAG_SIZE));
    crypto_hash_sha256(digest, probe, size);
    CHECK(expect_in(block, "SHA-256(probe)", digest, 32));

    /* the connection takes it like any packet: opened, a PING (elicits an acknowledgement),
     * and the acknowledgement it sends covers it */
    struct sockaddr_in server_addr;
    memset(&server_addr, 0, sizeof server_addr);
    server_addr.sin_family = AF_INET;
    server_addr.sin_port = htons(4433);
    quantum_credentials cred = {"alice", NULL, NULL, NULL, 0, NULL, 0};
    quantum_connection *c;
    CHECK(quantum_connection_create(&c, NULL, &cred, NULL, &server_addr, sizeof server_addr,
                                    in->cid, in->now_finish) == 0);
    CHECK(q_connection_install_keys(c, &hs->schedule, params, in->now_finish) == 0);
    uint8_t out[1500];
    size_t len;
    while (quantum_connection_next_datagram(c, in->now_finish, out, sizeof out, &len) == 1) {
    }
    quantum_stats before, after;
    quantum_connection_stats(c, &before);
    CHECK(quantum_connection_receive(c, probe, size, NULL, 0, in->now_finish + 0.01) == 0);
    quantum_connection_stats(c, &after);
    /* past any delayed-acknowledgement wait, the acknowledgement names the probe */
    int acked = 0;
    double at = in->now_finish + 0.5;
    quantum_connection_handle_timer(c, at);
    while (quantum_connection_next_datagram(c, at, out, sizeof out, &len) == 1) {
        q_header h;
        if (q_header_decode(out, len, &h) == 0 && h.ack == pn + 1) /* next expected */
            acked = 1;
    }
    quantum_connection_destroy(c);
    CHECK(after.dropped == before.dropped);
    CHECK(after.packets_received == before.packets_received + 1);
    CHECK(acked);
}

/* One "Handshake ... first" paragraph of 5.7 and its block: the client's side computed by
 * the library, the server's recomputed here. */
static void check_handshake(const vector_inputs *in, const char *title, q_cipher chosen_cipher) {
    const char *intro = spec_find(section57(), title);
    CHECK(intro != NULL);
    uint8_t offer[1 + Q_MAX_OFFER], chosen[4];
    size_t offer_len = hex_after(intro, "the client offers `", offer, sizeof offer);
    CHECK(offer_len >= 2 && offer_len == 1 + (size_t)offer[0]);
    CHECK(hex_after(intro, "the server chooses `", chosen, sizeof chosen) == 1);
    CHECK(chosen[0] == chosen_cipher && q_cipher_available(chosen_cipher));
    static char block[BLOCK];
    CHECK(spec_block(intro, block, sizeof block) == 0);

    quantum_metadata meta[1] = {{"room", "lobby"}};
    quantum_credentials cred = {"alice", "v1.test", NULL, NULL, 0, meta, 1};
    static q_client_hs hs;
    CHECK(q_client_hs_init(&hs, in->cid, &cred, 10, 3, in->fingerprint, offer,
                           in->c_eph_priv) == 0);
    CHECK(hs.credentials_len == in->credentials_len &&
          memcmp(hs.credentials, in->credentials, in->credentials_len) == 0);

    /* "ClientHello  e_c || OFFER || 00 || N zero bytes (TOTAL bytes)" */
    uint8_t hello[Q_HELLO_SIZE], digest[32], cookie_len[4];
    q_client_hello(&hs, hello);
    const char *line = spec_line(block, "ClientHello ");
    CHECK(line != NULL && strstr(line, "e_c || "));
    uint8_t stated_offer[1 + Q_MAX_OFFER];
    CHECK(hex_after(line, "e_c || ", stated_offer, sizeof stated_offer) == offer_len);
    CHECK(memcmp(stated_offer, offer, offer_len) == 0);
    const char *rest = strstr(strstr(line, "e_c || ") + 7, "|| ");
    CHECK(rest && hex_after(rest, "|| ", cookie_len, sizeof cookie_len) == 1);
    unsigned zeros, total;
    rest = strstr(rest + 3, "|| ");
    CHECK(rest && sscanf(rest, "|| %u zero bytes (%u bytes)", &zeros, &total) == 2);
    CHECK(total == Q_HELLO_SIZE && 32 + offer_len + 1 + zeros == total);
    CHECK(memcmp(hello, hs.eph_public, 32) == 0 && memcmp(hello + 32, offer, offer_len) == 0);
    CHECK(hello[32 + offer_len] == cookie_len[0] && cookie_len[0] == 0);
    for (size_t i = 32 + offer_len + 1; i < Q_HELLO_SIZE; i++)
        CHECK(hello[i] == 0);
    crypto_hash_sha256(digest, hello, sizeof hello);
    CHECK(expect_in(block, "SHA-256(ClientHello)", digest, 32));

    /* the ServerHello, as the vector server builds it */
    uint8_t server_hello[1200], e_s[32], s_pub[32];
    size_t sh_len = value_bytes(block, "ServerHello", server_hello, sizeof server_hello);
    CHECK(sh_len == Q_SERVER_HELLO_FIXED + 118);
    crypto_scalarmult_base(e_s, in->s_eph_priv);
    crypto_scalarmult_base(s_pub, in->s_priv);
    CHECK(memcmp(server_hello, e_s, 32) == 0 && memcmp(server_hello + 32, s_pub, 32) == 0);
    CHECK(server_hello[64] == chosen_cipher && q_get16(server_hello + 65) == 118);

    q_params params;
    const char *why = NULL;
    CHECK(q_client_on_server_hello(&hs, server_hello, sh_len, &params, &why) == 0);
    uint8_t p[Q_PARAMS_SIZE];
    params_bytes(&params, p);
    CHECK(memcmp(p, in->params, Q_PARAMS_SIZE) == 0);
    CHECK(hs.schedule.cipher == chosen_cipher);
    CHECK(expect_in(block, "ClientFinish", hs.finish, hs.finish_len));
    CHECK(hs.finish_len == 2 + 118 + in->credentials_len + 16);
    CHECK(memcmp(hs.finish + 2, server_hello + 67, 118) == 0); /* the cookie, echoed */
    CHECK(expect_in(block, "h (transcript)", hs.schedule.transcript, 32));

    /* prk = HMAC-SHA256(h, ee || es): the schedule's keys are its expansions */
    uint8_t ikm[64], prk[32], key[32], iv[12];
    CHECK(crypto_scalarmult(ikm, in->c_eph_priv, e_s) == 0);
    CHECK(crypto_scalarmult(ikm + 32, in->c_eph_priv, s_pub) == 0);
    crypto_auth_hmacsha256_state mac;
    crypto_auth_hmacsha256_init(&mac, hs.schedule.transcript, 32);
    crypto_auth_hmacsha256_update(&mac, ikm, 64);
    crypto_auth_hmacsha256_final(&mac, prk);
    CHECK(expect_in(block, "prk", prk, 32));
    q_expand_label(prk, "confirm", key, 32);
    CHECK(memcmp(key, hs.schedule.confirm_key, 32) == 0);
    CHECK(check_cookie(in, server_hello + 67, 118, &hs, prk));
    CHECK(expect_in(block, "confirm_key", hs.schedule.confirm_key, 32));
    CHECK(expect_in(block, "finish_key", hs.schedule.finish_key, 32));
    CHECK(expect_in(block, "client_secret_0", hs.schedule.client_secret, 32));
    CHECK(expect_in(block, "server_secret_0", hs.schedule.server_secret, 32));

    /* the generations: 0 of each direction, 1 of the client's */
    uint8_t next[32];
    q_expand_label(hs.schedule.client_secret, "key", key, 32);
    q_expand_label(hs.schedule.client_secret, "iv", iv, 12);
    CHECK(expect_in(block, "client_key_0", key, 32) && expect_in(block, "client_iv_0", iv, 12));
    q_expand_label(hs.schedule.server_secret, "key", key, 32);
    q_expand_label(hs.schedule.server_secret, "iv", iv, 12);
    CHECK(expect_in(block, "server_key_0", key, 32) && expect_in(block, "server_iv_0", iv, 12));
    q_expand_label(hs.schedule.client_secret, "key update", next, 32);
    CHECK(expect_in(block, "client_secret_1", next, 32));
    q_expand_label(next, "key", key, 32);
    q_expand_label(next, "iv", iv, 12);
    CHECK(expect_in(block, "client_key_1", key, 32) && expect_in(block, "client_iv_1", iv, 12));

    /* protected packets, generation 0 then 1 (KEY_PHASE): the sender's and the receiver's
     * view, through the library's key generations */
    const char *gen0 = spec_line(block, "protected packet, client -> server");
    const char *gen1 = spec_line(block, "after one key update");
    unsigned g0, pn0, g1, pn1;
    CHECK(generation_pn(gen0, &g0, &pn0) == 0 && g0 == 0);
    CHECK(generation_pn(gen1, &g1, &pn1) == 0 && g1 == 1);
    uint8_t body_text[16], body[64], header0[32], header1[32];
    size_t body_len = hex_after(strstr(gen0, "body \"hello\" ("), "(", body_text,
                                sizeof body_text);
    CHECK(body_len == 5 && memcmp(body_text, "hello", 5) == 0);
    q_header_encode(header0, Q_ACK, in->cid, pn0, 0, (uint16_t)body_len);
    q_header_encode(header1, Q_ACK | Q_KEY_PHASE, in->cid, pn1, 0, (uint16_t)body_len);
    CHECK(expect_in(gen0, "header", header0, 32) && expect_in(gen1, "header", header1, 32));
    q_dir_keys tx, rx;
    CHECK(q_keys_init(&tx, chosen_cipher, hs.schedule.client_secret) == 0);
    CHECK(q_keys_init(&rx, chosen_cipher, hs.schedule.client_secret) == 0);
    CHECK(q_keys_phase_flag(&tx) == 0);
    memcpy(body, body_text, body_len);
    q_keys_seal(&tx, pn0, header0, 32, body, body_len);
    CHECK(expect_in(gen0, "sealed", body, body_len + Q_TAG_SIZE));
    CHECK(q_keys_open(&rx, 0, pn0, 0.0, 1.0, header0, 32, body, body_len + Q_TAG_SIZE) == 5);
    q_keys_update(&tx);
    CHECK(q_keys_phase_flag(&tx) == Q_KEY_PHASE && tx.generation == 1);
    memcpy(body, body_text, body_len);
    q_keys_seal(&tx, pn1, header1, 32, body, body_len);
    CHECK(expect_in(gen1, "sealed", body, body_len + Q_TAG_SIZE));
    CHECK(q_keys_open(&rx, 1, pn1, 0.0, 1.0, header1, 32, body, body_len + Q_TAG_SIZE) == 5);
    CHECK(rx.generation == 1 && rx.has_prev && memcmp(body, "hello", 5) == 0);
    q_keys_wipe(&tx);
    q_keys_wipe(&rx);

    check_probe(in, block, &hs, &params);
    if (q_test_failed_flag)
        return;

    /* a changed offer (reordered, or AES-256-GCM removed) fails the confirmation */
    static q_client_hs other;
    uint8_t changed[1 + Q_MAX_OFFER];
    memcpy(changed, offer, offer_len);
    changed[1] = offer[2];
    changed[2] = offer[1];
    CHECK(q_client_hs_init(&other, in->cid, &cred, 10, 3, in->fingerprint, changed,
                           in->c_eph_priv) == 0);
    CHECK(q_client_on_server_hello(&other, server_hello, sh_len, &params, &why) ==
          QUANTUM_CLOSE_BAD_SERVER_KEY); /* same ciphers, another order: another h */
    uint8_t without[2] = {1, (uint8_t)(chosen_cipher == Q_CIPHER_AES256GCM
                                           ? Q_CIPHER_CHACHA20POLY1305
                                           : Q_CIPHER_AES256GCM)};
    CHECK(q_client_hs_init(&other, in->cid, &cred, 10, 3, in->fingerprint, without,
                           in->c_eph_priv) == 0);
    CHECK(q_client_on_server_hello(&other, server_hello, sh_len, &params, &why) ==
          QUANTUM_CLOSE_PROTOCOL_VIOLATION); /* a cipher we did not offer: not even tried */
}

static void test_handshake_vectors_aes_first(void) {
    static vector_inputs in;
    CHECK(read_inputs(&in) == 0);
    check_handshake(&in, "Handshake AES-256-GCM first", Q_CIPHER_AES256GCM);
}

static void test_handshake_vectors_chacha_first(void) {
    static vector_inputs in;
    CHECK(read_inputs(&in) == 0);
    check_handshake(&in, "Handshake ChaCha20-Poly1305 first", Q_CIPHER_CHACHA20POLY1305);
}

/* "Retry at now = T, retry_rotation R s (slot N)": the MAC recomputed, then the client echoes
 * the cookie in its next hello. */
static void test_retry_vector(void) {
    static vector_inputs in;
    CHECK(read_inputs(&in) == 0);
    const char *intro = spec_find(section57(), "Retry at now = ");
    CHECK(intro != NULL);
    double at, rotation;
    unsigned slot;
    CHECK(sscanf(intro, "Retry at now = %lf, retry_rotation %lf s (slot %u)", &at, &rotation,
                 &slot) == 3);
    CHECK(at > 0 && (unsigned)(at / rotation) == slot); /* floor */
    static char block[BLOCK];
    CHECK(spec_block(intro, block, sizeof block) == 0);
    uint8_t retry[64];
    CHECK(hex_after(block, "", retry, sizeof retry) == Q_RETRY_COOKIE_SIZE);
    CHECK(q_get32(retry) == slot);
    uint8_t secret[32], input[128], mac[32];
    server_random(&in, 3, secret, 32); /* the server's third draw */
    size_t n = strlen(in.retry_label);
    memcpy(input, in.retry_label, n);
    memcpy(input + n, in.cid, 16);
    q_put32(input + n + 16, slot);
    memcpy(input + n + 20, in.addr, in.addr_len);
    crypto_auth_hmacsha256(mac, input, n + 20 + in.addr_len, secret);
    CHECK(memcmp(mac, retry + 4, 32) == 0);

    quantum_credentials cred = {"alice", "v1.test", NULL, NULL, 0, NULL, 0};
    static const uint8_t offer[3] = {2, Q_CIPHER_AES256GCM, Q_CIPHER_CHACHA20POLY1305};
    static q_client_hs hs;
    uint8_t hello[Q_HELLO_SIZE];
    CHECK(q_client_hs_init(&hs, in.cid, &cred, 10, 3, NULL, offer, in.c_eph_priv) == 0);
    CHECK(q_client_on_retry(&hs, retry, Q_RETRY_COOKIE_SIZE) == 0);
    q_client_hello(&hs, hello);
    CHECK(hello[35] == Q_RETRY_COOKIE_SIZE && memcmp(hello + 36, retry, 36) == 0);
    CHECK(q_client_on_retry(&hs, retry, Q_RETRY_COOKIE_SIZE - 1) == -1);
}

void run_handshake_vector_tests(void) {
    RUN(test_address_vectors);
    RUN(test_vector_inputs_and_common_outputs);
    RUN(test_handshake_vectors_aes_first);
    RUN(test_handshake_vectors_chacha_first);
    RUN(test_retry_vector);
}
