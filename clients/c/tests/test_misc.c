/* Pinning, credential bounds, configuration checks, the AEAD's two ciphers. */
#include <netinet/in.h>
#include <sodium.h>
#include <stdlib.h>

#include "aead.h"
#include "handshake.h"
#include "test.h"

static void test_pin_forms(void) {
    uint8_t key[32], parsed[32];
    for (int i = 0; i < 32; i++)
        key[i] = (uint8_t)(250 + i); /* bytes that make '+' '/' in base64 */
    char std[64], url[64], fp[64], tmp[80];
    sodium_bin2base64(std, sizeof std, key, 32, sodium_base64_VARIANT_ORIGINAL);
    sodium_bin2base64(url, sizeof url, key, 32, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    int has_key, has_fp;
    CHECK(q_parse_pin(std, parsed, &has_key, fp, &has_fp) == 0 && has_key && !has_fp);
    CHECK(memcmp(parsed, key, 32) == 0);
    snprintf(tmp, sizeof tmp, "  %s\n", url); /* surrounding whitespace, URL-safe, no padding */
    CHECK(q_parse_pin(tmp, parsed, &has_key, fp, &has_fp) == 0 && memcmp(parsed, key, 32) == 0);
    char f[52];
    q_fingerprint(key, f);
    CHECK(strlen(f) == 50 && strncmp(f, "SHA256:", 7) == 0);
    CHECK(q_parse_pin(f, parsed, &has_key, fp, &has_fp) == 0 && has_fp && strcmp(fp, f) == 0);
    CHECK(q_parse_pin("SHA256:short", parsed, &has_key, fp, &has_fp) == QUANTUM_E_SERVER_KEY);
    CHECK(q_parse_pin("not base64 !", parsed, &has_key, fp, &has_fp) == QUANTUM_E_SERVER_KEY);
    CHECK(q_parse_pin("AAAA", parsed, &has_key, fp, &has_fp) == QUANTUM_E_SERVER_KEY);
    CHECK(q_parse_pin(NULL, parsed, &has_key, fp, &has_fp) == 0 && !has_key && !has_fp);
}

static void test_credential_bounds(void) {
    uint8_t out[Q_MAX_CREDENTIALS];
    size_t len;
    quantum_credentials c = {"alice", NULL, NULL, NULL, 0, NULL, 0};
    CHECK(q_credentials_encode(&c, 0, 0, out, sizeof out, &len) == 0 && len == 1 + 2 + 5 + 1);
    CHECK(out[0] == 0);
    c.user_id = "";
    CHECK(q_credentials_encode(&c, 0, 0, out, sizeof out, &len) == QUANTUM_E_CREDENTIALS);
    c.user_id = "bad \xff utf8";
    CHECK(q_credentials_encode(&c, 0, 0, out, sizeof out, &len) == QUANTUM_E_CREDENTIALS);
    c.user_id = "bob";
    quantum_metadata dup[2] = {{"room", "a"}, {"room", "b"}};
    c.metadata = dup;
    c.metadata_count = 2;
    CHECK(q_credentials_encode(&c, 0, 0, out, sizeof out, &len) == QUANTUM_E_CREDENTIALS);
    static char big[1100];
    memset(big, 'v', 1024);
    quantum_metadata two[2] = {{"a", big}, {"b", big}}; /* each fits, both do not */
    c.metadata = two;
    CHECK(q_credentials_encode(&c, 0, 0, out, sizeof out, &len) == QUANTUM_E_CREDENTIALS);
    c.metadata_count = 1;
    big[1000] = 0;
    CHECK(q_credentials_encode(&c, 10, 3, out, sizeof out, &len) == 0);
    CHECK(out[0] == 0x08); /* fec */
    uint8_t sid[16] = {1};
    quantum_credentials r = {"bob", "t", sid, "token", 1, NULL, 0};
    CHECK(q_credentials_encode(&r, 0, 0, out, sizeof out, &len) == 0 && out[0] == 0x07);
    CHECK(len == 1 + 2 + 3 + 2 + 1 + 16 + 1 + 5 + 1);
    CHECK(q_credentials_encode(&r, 33, 3, out, sizeof out, &len) == QUANTUM_E_CREDENTIALS);
    /* a ticket of 0..512 bytes; 1032 bytes encoded at most */
    static char ticket[600];
    memset(ticket, 't', 513);
    quantum_credentials t = {"bob", ticket, NULL, NULL, 0, NULL, 0};
    CHECK(q_credentials_encode(&t, 0, 0, out, sizeof out, &len) == QUANTUM_E_CREDENTIALS);
    ticket[512] = 0;
    CHECK(q_credentials_encode(&t, 0, 0, out, sizeof out, &len) == 0);
    static char meta[1100];
    memset(meta, 'm', 1022); /* 11 bytes besides the value: 1033 encoded */
    quantum_metadata m1[1] = {{"k", meta}};
    quantum_credentials mc = {"bob", NULL, NULL, NULL, 0, m1, 1};
    CHECK(q_credentials_encode(&mc, 0, 0, out, sizeof out, &len) == QUANTUM_E_CREDENTIALS);
    meta[1021] = 0; /* exactly 1032 bytes */
    m1[0].value = meta;
    CHECK(q_credentials_encode(&mc, 0, 0, out, sizeof out, &len) == 0 && len == 1032);
}

static void test_config_is_checked(void) {
    quantum_config cfg;
    quantum_config_default(&cfg);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    quantum_credentials cred = {"alice", NULL, NULL, NULL, 0, NULL, 0};
    quantum_connection *c;
    cfg.window = 8;
    CHECK(quantum_connection_create(&c, &cfg, &cred, NULL, &a, sizeof a, NULL, 0) ==
          QUANTUM_E_INVALID);
    quantum_config_default(&cfg);
    cfg.max_datagram = 1500;
    CHECK(quantum_connection_create(&c, &cfg, &cred, NULL, &a, sizeof a, NULL, 0) ==
          QUANTUM_E_INVALID);
    cfg.max_datagram = 1472; /* only after PMTU probing, which libquantum does not do */
    CHECK(quantum_connection_create(&c, &cfg, &cred, NULL, &a, sizeof a, NULL, 0) ==
          QUANTUM_E_INVALID);
    cfg.max_datagram = 1200;
    CHECK(quantum_connection_create(&c, &cfg, &cred, NULL, &a, sizeof a, NULL, 0) == 0);
    CHECK(quantum_connection_max_unreliable(c) == QUANTUM_MAX_UNRELIABLE);
    quantum_connection_destroy(c);
    /* key update: below packets_per_key - 1024, at least 16 */
    cfg.key_update_packets = cfg.packets_per_key - 1024;
    CHECK(quantum_connection_create(&c, &cfg, &cred, NULL, &a, sizeof a, NULL, 0) ==
          QUANTUM_E_INVALID);
    cfg.key_update_packets = 15;
    CHECK(quantum_connection_create(&c, &cfg, &cred, NULL, &a, sizeof a, NULL, 0) ==
          QUANTUM_E_INVALID);
    quantum_config_default(&cfg);
    CHECK(cfg.key_update_packets == (uint64_t)1 << 22 && cfg.max_datagram == 1200);
    cfg.cipher_preference = QUANTUM_CIPHERS_AES_ONLY;
    CHECK(quantum_connection_create(&c, &cfg, &cred, NULL, &a, sizeof a, NULL, 0) ==
          (q_cipher_available(Q_CIPHER_AES256GCM) ? 0 : QUANTUM_E_CRYPTO));
    quantum_connection_destroy(c);
    CHECK(quantum_connection_create(&c, NULL, &cred, "SHA256:oops", &a, sizeof a, NULL, 0) ==
          QUANTUM_E_SERVER_KEY);
    CHECK(strcmp(quantum_error_string(QUANTUM_E_TOO_LARGE), "message too large") == 0);
    CHECK(strcmp(quantum_close_code_name(22), "BAD_RESUME") == 0);
}

static void test_both_ciphers(void) {
    uint8_t secret[32], header[32], body[64];
    randombytes_buf(secret, 32);
    randombytes_buf(header, 32);
    q_cipher ciphers[2] = {Q_CIPHER_AES256GCM, Q_CIPHER_CHACHA20POLY1305};
    for (int i = 0; i < 2; i++) {
        if (!q_cipher_available(ciphers[i]))
            continue; /* AES-256-GCM without AES-NI: ChaCha20-Poly1305 only */
        q_dir_keys tx, rx;
        CHECK(q_keys_init(&tx, ciphers[i], secret) == 0 && tx.generation == 0);
        CHECK(q_keys_init(&rx, ciphers[i], secret) == 0);
        memcpy(body, "payload!", 8);
        q_keys_seal(&tx, 77, header, 32, body, 8);
        uint8_t copy[64];
        memcpy(copy, body, 24);
        CHECK(q_keys_open(&rx, 0, 77, 0.0, 1.0, header, 32, copy, 24) == 8);
        CHECK(memcmp(copy, "payload!", 8) == 0);
        memcpy(copy, body, 24);
        CHECK(q_keys_open(&rx, 0, 78, 0.0, 1.0, header, 32, copy, 24) == -1); /* other pn */
        memcpy(copy, body, 24);
        header[0] ^= 1;
        CHECK(q_keys_open(&rx, 0, 77, 0.0, 1.0, header, 32, copy, 24) == -1); /* header */
        header[0] ^= 1;
        /* the other phase with a pn above the current generation's: the next generation,
         * which a forgery does not open (and nothing changes) */
        memcpy(copy, body, 24);
        CHECK(q_keys_open(&rx, 1, 90, 0.0, 1.0, header, 32, copy, 24) == -1);
        CHECK(rx.generation == 0 && !rx.has_prev);
        /* the sender updates: generation 1 opens, the receiver rotates and keeps generation 0
         * for reordered packets below generation 1's first pn, until it expires */
        uint8_t old[64];
        memcpy(old, "reorder!", 8);
        q_keys_seal(&tx, 79, header, 32, old, 8);
        q_keys_update(&tx);
        memcpy(body, "second!!", 8);
        q_keys_seal(&tx, 80, header, 32, body, 8);
        CHECK(q_keys_open(&rx, 1, 80, 5.0, 1.0, header, 32, body, 24) == 8);
        CHECK(rx.generation == 1 && rx.has_prev && rx.first_pn == 80);
        memcpy(copy, old, 24);
        CHECK(q_keys_open(&rx, 0, 79, 5.5, 1.0, header, 32, copy, 24) == 8); /* previous */
        memcpy(copy, old, 24);
        CHECK(q_keys_open(&rx, 0, 79, 6.0, 1.0, header, 32, copy, 24) == -1); /* expired */
        CHECK(!rx.has_prev);
        /* a generation-1 packet below the first one (reordered) opens with current keys */
        q_keys_seal(&tx, 81, header, 32, body, 8);
        q_keys_wipe(&tx);
        q_keys_wipe(&rx);
    }
}

void run_misc_tests(void) {
    RUN(test_pin_forms);
    RUN(test_credential_bounds);
    RUN(test_config_is_checked);
    RUN(test_both_ciphers);
}
