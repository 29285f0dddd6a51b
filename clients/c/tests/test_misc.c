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
    CHECK(q_credentials_encode(&c, 10, 3, out, sizeof out, &len) == 0);
    CHECK(out[0] == 0x08); /* fec */
    uint8_t sid[16] = {1};
    quantum_credentials r = {"bob", "t", sid, "token", 1, NULL, 0};
    CHECK(q_credentials_encode(&r, 0, 0, out, sizeof out, &len) == 0 && out[0] == 0x07);
    CHECK(len == 1 + 2 + 3 + 2 + 1 + 16 + 1 + 5 + 1);
    CHECK(q_credentials_encode(&r, 33, 3, out, sizeof out, &len) == QUANTUM_E_CREDENTIALS);
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
    cfg.max_datagram = 1200; /* the smallest datagrams: every size follows */
    CHECK(quantum_connection_create(&c, &cfg, &cred, NULL, &a, sizeof a, NULL, 0) == 0);
    CHECK(quantum_connection_max_unreliable(c) < 1300);
    quantum_connection_destroy(c);
    CHECK(quantum_connection_create(&c, NULL, &cred, "SHA256:oops", &a, sizeof a, NULL, 0) ==
          QUANTUM_E_SERVER_KEY);
    CHECK(strcmp(quantum_error_string(QUANTUM_E_TOO_LARGE), "message too large") == 0);
    CHECK(strcmp(quantum_close_code_name(22), "BAD_RESUME") == 0);
}

static void test_both_ciphers(void) {
    uint8_t key[32], iv[12], header[32], body[64];
    randombytes_buf(key, 32);
    randombytes_buf(iv, 12);
    randombytes_buf(header, 32);
    q_cipher ciphers[2] = {Q_CIPHER_AES256GCM, Q_CIPHER_CHACHA20POLY1305};
    for (int i = 0; i < 2; i++) {
        q_dir_keys k;
        memset(&k, 0, sizeof k);
        CHECK(q_keys_install(&k, ciphers[i], key, iv) == 0 && k.generation == 0);
        memcpy(body, "payload!", 8);
        q_aead_seal(q_keys_current(&k), 77, header, 32, body, 8);
        uint8_t copy[64];
        memcpy(copy, body, 24);
        CHECK(q_aead_open(q_keys_current(&k), 77, header, 32, copy, 24) == 8);
        CHECK(memcmp(copy, "payload!", 8) == 0);
        memcpy(copy, body, 24);
        CHECK(q_aead_open(q_keys_current(&k), 78, header, 32, copy, 24) == -1); /* other pn */
        memcpy(copy, body, 24);
        header[0] ^= 1;
        CHECK(q_aead_open(q_keys_current(&k), 77, header, 32, copy, 24) == -1); /* header */
        header[0] ^= 1;
        /* a second generation becomes current; the first stays for reordered packets */
        uint8_t key2[32], iv2[12];
        randombytes_buf(key2, 32);
        randombytes_buf(iv2, 12);
        CHECK(q_keys_install(&k, ciphers[i], key2, iv2) == 0);
        CHECK(k.generation == 1 && k.installed == 2);
        memcpy(copy, body, 24);
        CHECK(q_aead_open(&k.gen[1 - k.current], 77, header, 32, copy, 24) == 8);
        q_keys_wipe(&k);
    }
}

void run_misc_tests(void) {
    RUN(test_pin_forms);
    RUN(test_credential_bounds);
    RUN(test_config_is_checked);
    RUN(test_both_ciphers);
}
