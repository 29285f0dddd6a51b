/* The client handshake: docs/PROTOCOL.md section 5. */
#include "handshake.h"

#include <sodium.h>

const char Q_PROTOCOL_LABEL[] = "Quantum 1.0 handshake: X25519, HKDF-SHA256";
const char Q_LABEL_PREFIX[] = "quantum 1.0 ";

static const uint8_t ZERO_NONCE[12] = {0};

/* Credential flags (5.2.5). */
enum { F_TICKET = 0x01, F_RESUME = 0x02, F_FALLBACK = 0x04, F_FEC = 0x08 };

/* --------------------------------------------------------------------------- credentials */

typedef struct writer {
    uint8_t *out;
    size_t cap, len;
    int failed;
} writer;

static void w_bytes(writer *w, const void *p, size_t n) {
    if (w->failed || w->cap - w->len < n) {
        w->failed = 1;
        return;
    }
    if (n)
        memcpy(w->out + w->len, p, n);
    w->len += n;
}
static void w_u8(writer *w, uint32_t v) {
    uint8_t b = (uint8_t)v;
    w_bytes(w, &b, 1);
}
static void w_u16(writer *w, uint32_t v) {
    uint8_t b[2];
    q_put16(b, v);
    w_bytes(w, b, 2);
}

/* A UTF-8 string within [lo, hi] bytes, or -1. */
static long text_len(const char *s, size_t lo, size_t hi) {
    if (!s)
        return -1;
    size_t n = strlen(s);
    if (n < lo || n > hi || !q_utf8_valid((const uint8_t *)s, n))
        return -1;
    return (long)n;
}

int q_credentials_encode(const quantum_credentials *c, int fec_k, int fec_m, uint8_t *out,
                         size_t cap, size_t *len) {
    writer w = {out, q_min_z(cap, Q_MAX_CREDENTIALS), 0, 0};
    uint8_t flags = 0;
    long user = text_len(c->user_id, 1, 1024);
    if (user < 0)
        return QUANTUM_E_CREDENTIALS;
    if (c->ticket)
        flags |= F_TICKET;
    if (c->resume_session_id)
        flags |= F_RESUME;
    if (c->resume_fallback)
        flags |= F_FALLBACK;
    if (fec_k || fec_m) {
        if (fec_k < 1 || fec_k > 32 || fec_m < 1 || fec_m > 16)
            return QUANTUM_E_CREDENTIALS;
        flags |= F_FEC;
    }
    if (c->metadata_count > 64 || (c->metadata_count && !c->metadata))
        return QUANTUM_E_CREDENTIALS;
    w_u8(&w, flags);
    w_u16(&w, (uint32_t)user);
    w_bytes(&w, c->user_id, (size_t)user);
    if (c->ticket) {
        long n = text_len(c->ticket, 0, Q_MAX_TICKET);
        if (n < 0)
            return QUANTUM_E_CREDENTIALS;
        w_u16(&w, (uint32_t)n);
        w_bytes(&w, c->ticket, (size_t)n);
    }
    if (c->resume_session_id) {
        long n = text_len(c->resume_token ? c->resume_token : "", 0, 255);
        if (n < 0)
            return QUANTUM_E_CREDENTIALS;
        w_bytes(&w, c->resume_session_id, 16);
        w_u8(&w, (uint32_t)n);
        w_bytes(&w, c->resume_token ? c->resume_token : "", (size_t)n);
    }
    if (flags & F_FEC) {
        w_u8(&w, (uint32_t)fec_k);
        w_u8(&w, (uint32_t)fec_m);
    }
    w_u8(&w, (uint32_t)c->metadata_count);
    for (size_t i = 0; i < c->metadata_count; i++) {
        long k = text_len(c->metadata[i].key, 1, 64);
        long v = text_len(c->metadata[i].value, 0, 1024);
        if (k < 0 || v < 0)
            return QUANTUM_E_CREDENTIALS;
        for (size_t j = 0; j < i; j++)
            if (strcmp(c->metadata[j].key, c->metadata[i].key) == 0)
                return QUANTUM_E_CREDENTIALS; /* the server refuses duplicate keys */
        w_u8(&w, (uint32_t)k);
        w_bytes(&w, c->metadata[i].key, (size_t)k);
        w_u16(&w, (uint32_t)v);
        w_bytes(&w, c->metadata[i].value, (size_t)v);
    }
    if (w.failed)
        return QUANTUM_E_CREDENTIALS; /* more than fits in the handshake packet */
    *len = w.len;
    return 0;
}

/* ------------------------------------------------------------------------------- pinning */

void q_fingerprint(const uint8_t key[32], char out[52]) {
    uint8_t digest[32];
    crypto_hash_sha256(digest, key, 32);
    memcpy(out, "SHA256:", 7);
    sodium_bin2base64(out + 7, 52 - 7, digest, sizeof digest,
                      sodium_base64_VARIANT_ORIGINAL_NO_PADDING);
}

static int is_space(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

int q_parse_pin(const char *text, uint8_t key[32], int *has_key, char fingerprint[52],
                int *has_fingerprint) {
    *has_key = *has_fingerprint = 0;
    if (!text)
        return 0;
    size_t start = 0, end = strlen(text);
    while (start < end && is_space(text[start]))
        start++;
    while (end > start && is_space(text[end - 1]))
        end--;
    if (start == end)
        return 0;
    const char *t = text + start;
    size_t n = end - start;
    if (n >= 7 && memcmp(t, "SHA256:", 7) == 0) {
        size_t d = n - 7;
        while (d > 0 && t[7 + d - 1] == '=')
            d--;
        if (d != 43)
            return QUANTUM_E_SERVER_KEY;
        memcpy(fingerprint, t, 7 + d);
        fingerprint[7 + d] = '\0';
        *has_fingerprint = 1;
        return 0;
    }
    /* base64, standard or URL-safe, padding optional: normalised to standard unpadded */
    char norm[64];
    size_t m = 0;
    while (n > 0 && t[n - 1] == '=')
        n--;
    if (n >= sizeof norm)
        return QUANTUM_E_SERVER_KEY;
    for (size_t i = 0; i < n; i++)
        norm[m++] = t[i] == '-' ? '+' : t[i] == '_' ? '/' : t[i];
    size_t bin_len = 0;
    uint8_t bin[48];
    if (sodium_base642bin(bin, sizeof bin, norm, m, NULL, &bin_len, NULL,
                          sodium_base64_VARIANT_ORIGINAL_NO_PADDING) != 0 || bin_len != 32)
        return QUANTUM_E_SERVER_KEY;
    memcpy(key, bin, 32);
    *has_key = 1;
    return 0;
}

/* --------------------------------------------------------------------------- key schedule */

size_t q_cipher_offer(int preference, uint8_t offer[1 + Q_MAX_OFFER]) {
    int aes = q_cipher_available(Q_CIPHER_AES256GCM);
    size_t n = 0;
    switch (preference) {
    case QUANTUM_CIPHERS_AUTO:
        if (aes)
            offer[1 + n++] = Q_CIPHER_AES256GCM;
        offer[1 + n++] = Q_CIPHER_CHACHA20POLY1305;
        break;
    case QUANTUM_CIPHERS_CHACHA_FIRST:
        offer[1 + n++] = Q_CIPHER_CHACHA20POLY1305;
        if (aes)
            offer[1 + n++] = Q_CIPHER_AES256GCM;
        break;
    case QUANTUM_CIPHERS_CHACHA_ONLY:
        offer[1 + n++] = Q_CIPHER_CHACHA20POLY1305;
        break;
    case QUANTUM_CIPHERS_AES_ONLY:
        if (aes)
            offer[1 + n++] = Q_CIPHER_AES256GCM;
        break;
    default:
        break;
    }
    offer[0] = (uint8_t)n;
    return n ? 1 + n : 0;
}

void q_expand_label(const uint8_t secret[32], const char *label, uint8_t *out, size_t len) {
    uint8_t block[crypto_auth_hmacsha256_BYTES];
    const uint8_t one = 1;
    crypto_auth_hmacsha256_state st;
    crypto_auth_hmacsha256_init(&st, secret, 32);
    crypto_auth_hmacsha256_update(&st, (const uint8_t *)Q_LABEL_PREFIX, strlen(Q_LABEL_PREFIX));
    crypto_auth_hmacsha256_update(&st, (const uint8_t *)label, strlen(label));
    crypto_auth_hmacsha256_update(&st, &one, 1);
    crypto_auth_hmacsha256_final(&st, block);
    memcpy(out, block, q_min_z(len, sizeof block));
    sodium_memzero(block, sizeof block);
    sodium_memzero(&st, sizeof st);
}

void q_key_schedule(const uint8_t cid[16], const uint8_t e_c[32], const uint8_t *offer,
                    size_t offer_len, const uint8_t e_s[32], const uint8_t s[32],
                    q_cipher cipher, const uint8_t ee[32], const uint8_t es[32],
                    q_schedule *out) {
    const uint8_t chosen = (uint8_t)cipher;
    crypto_hash_sha256_state st;
    crypto_hash_sha256_init(&st);
    crypto_hash_sha256_update(&st, (const uint8_t *)Q_PROTOCOL_LABEL, strlen(Q_PROTOCOL_LABEL));
    crypto_hash_sha256_update(&st, cid, 16);
    crypto_hash_sha256_update(&st, e_c, 32);
    crypto_hash_sha256_update(&st, offer, offer_len);
    crypto_hash_sha256_update(&st, e_s, 32);
    crypto_hash_sha256_update(&st, s, 32);
    crypto_hash_sha256_update(&st, &chosen, 1);
    crypto_hash_sha256_final(&st, out->transcript);
    /* prk = HKDF-Extract(salt = h, ikm = ee || es) = HMAC-SHA256(h, ee || es) */
    uint8_t prk[32];
    crypto_auth_hmacsha256_state hs;
    crypto_auth_hmacsha256_init(&hs, out->transcript, 32);
    crypto_auth_hmacsha256_update(&hs, ee, 32);
    crypto_auth_hmacsha256_update(&hs, es, 32);
    crypto_auth_hmacsha256_final(&hs, prk);
    q_expand_label(prk, "confirm", out->confirm_key, 32);
    q_expand_label(prk, "finish", out->finish_key, 32);
    q_expand_label(prk, "client traffic", out->client_secret, 32);
    q_expand_label(prk, "server traffic", out->server_secret, 32);
    out->cipher = cipher;
    sodium_memzero(prk, sizeof prk);
    sodium_memzero(&hs, sizeof hs);
}

/* ---------------------------------------------------------------------------- messages */

int q_client_hs_init(q_client_hs *hs, const uint8_t cid[16], const quantum_credentials *creds,
                     int fec_k, int fec_m, const char *server_key, const uint8_t *offer,
                     const uint8_t *ephemeral_private) {
    memset(hs, 0, sizeof *hs);
    memcpy(hs->cid, cid, 16);
    if (!offer || offer[0] < 1 || offer[0] > Q_MAX_OFFER)
        return QUANTUM_E_CRYPTO;
    memcpy(hs->offer, offer, 1 + (size_t)offer[0]);
    int r = q_credentials_encode(creds, fec_k, fec_m, hs->credentials, sizeof hs->credentials,
                                 &hs->credentials_len);
    if (r != 0)
        return r;
    r = q_parse_pin(server_key, hs->pin_key, &hs->has_pin_key, hs->pin_fingerprint,
                    &hs->has_pin_fingerprint);
    if (r != 0)
        return r;
    if (ephemeral_private)
        memcpy(hs->eph_private, ephemeral_private, 32);
    else
        randombytes_buf(hs->eph_private, 32);
    if (crypto_scalarmult_base(hs->eph_public, hs->eph_private) != 0)
        return QUANTUM_E_CRYPTO;
    return 0;
}

void q_client_hello(const q_client_hs *hs, uint8_t out[Q_HELLO_SIZE]) {
    memset(out, 0, Q_HELLO_SIZE);
    memcpy(out, hs->eph_public, 32);
    size_t at = 32, offer_len = 1 + (size_t)hs->offer[0];
    memcpy(out + at, hs->offer, offer_len);
    at += offer_len;
    if (hs->has_retry) {
        out[at] = Q_RETRY_COOKIE_SIZE;
        memcpy(out + at + 1, hs->retry_cookie, Q_RETRY_COOKIE_SIZE);
    } /* else the cookie length byte stays 0; the rest is zero padding */
}

static int offered(const q_client_hs *hs, uint8_t cipher) {
    for (uint8_t i = 0; i < hs->offer[0]; i++)
        if (hs->offer[1 + i] == cipher)
            return 1;
    return 0;
}

int q_client_on_retry(q_client_hs *hs, const uint8_t *payload, size_t len) {
    if (len != Q_RETRY_COOKIE_SIZE)
        return -1;
    memcpy(hs->retry_cookie, payload, Q_RETRY_COOKIE_SIZE);
    hs->has_retry = 1;
    return 0;
}

static int decode_params(const uint8_t p[Q_PARAMS_SIZE], q_params *out) {
    out->fec_k = p[0];
    out->fec_m = p[1];
    out->keepalive_ms = q_get32(p + 2);
    out->idle_ms = q_get32(p + 6);
    int fec_off = out->fec_k == 0 && out->fec_m == 0;
    int fec_ok = out->fec_k >= 1 && out->fec_k <= 32 && out->fec_m >= 1 && out->fec_m <= 16;
    if (!(fec_off || fec_ok) || out->keepalive_ms < 1 || out->idle_ms < 1)
        return -1;
    return 0;
}

int q_client_on_server_hello(q_client_hs *hs, const uint8_t *payload, size_t len,
                             q_params *params, const char **why) {
    if (hs->done) {
        *why = "second server hello";
        return QUANTUM_CLOSE_PROTOCOL_VIOLATION;
    }
    if (len < Q_SERVER_HELLO_FIXED) {
        *why = "server hello too short";
        return QUANTUM_CLOSE_PROTOCOL_VIOLATION;
    }
    const uint8_t *e_s = payload, *s = payload + 32;
    uint8_t cipher = payload[64];
    size_t cookie_len = q_get16(payload + 65);
    const uint8_t *cookie = payload + 67;
    if (len != Q_SERVER_HELLO_FIXED + cookie_len || cookie_len < 1) {
        *why = "server hello has the wrong size for its cookie";
        return QUANTUM_CLOSE_PROTOCOL_VIOLATION;
    }
    /* the ClientFinish (cookie length, cookie, sealed credentials) must fit 1200 bytes */
    if (2 + cookie_len + hs->credentials_len + Q_TAG_SIZE > Q_MAX_FINISH) {
        *why = "server cookie too long for the client finish";
        return QUANTUM_CLOSE_PROTOCOL_VIOLATION;
    }
    if (!offered(hs, cipher)) {
        *why = "server chose a cipher the client did not offer";
        return QUANTUM_CLOSE_PROTOCOL_VIOLATION;
    }
    const uint8_t *confirmation = cookie + cookie_len;
    if (hs->has_pin_key && sodium_memcmp(s, hs->pin_key, 32) != 0) {
        *why = "server key does not match the pinned key";
        return QUANTUM_CLOSE_BAD_SERVER_KEY;
    }
    if (hs->has_pin_fingerprint) {
        char seen[52];
        q_fingerprint(s, seen);
        if (strcmp(seen, hs->pin_fingerprint) != 0) {
            *why = "server key does not match the pinned fingerprint";
            return QUANTUM_CLOSE_BAD_SERVER_KEY;
        }
    }
    uint8_t ee[32], es[32];
    if (crypto_scalarmult(ee, hs->eph_private, e_s) != 0) {
        *why = "server ephemeral key is a low-order point";
        return QUANTUM_CLOSE_PROTOCOL_VIOLATION;
    }
    if (crypto_scalarmult(es, hs->eph_private, s) != 0) {
        sodium_memzero(ee, sizeof ee);
        *why = "server static key is a low-order point";
        return QUANTUM_CLOSE_BAD_SERVER_KEY;
    }
    q_schedule sch;
    q_key_schedule(hs->cid, hs->eph_public, hs->offer, 1 + (size_t)hs->offer[0], e_s, s,
                   (q_cipher)cipher, ee, es, &sch);
    sodium_memzero(ee, sizeof ee);
    sodium_memzero(es, sizeof es);
    uint8_t plain[Q_PARAMS_SIZE];
    /* h binds our offer and the server's choice: a changed offer (a downgrade) or the wrong
     * key both fail here */
    if (q_aead_once_open(sch.cipher, sch.confirm_key, ZERO_NONCE, sch.transcript, 32,
                         confirmation, Q_CONFIRMATION_SIZE, plain) != 0) {
        sodium_memzero(&sch, sizeof sch);
        *why = "server did not prove its key over this handshake's offer (wrong key or a "
               "downgrade)";
        return QUANTUM_CLOSE_BAD_SERVER_KEY;
    }
    if (decode_params(plain, params) != 0) {
        sodium_memzero(&sch, sizeof sch);
        *why = "server parameters out of range";
        return QUANTUM_CLOSE_PROTOCOL_VIOLATION;
    }
    q_put16(hs->finish, (uint32_t)cookie_len);
    memcpy(hs->finish + 2, cookie, cookie_len);
    q_aead_once_seal(sch.cipher, sch.finish_key, ZERO_NONCE, sch.transcript, 32,
                     hs->credentials, hs->credentials_len, hs->finish + 2 + cookie_len);
    hs->finish_len = 2 + cookie_len + hs->credentials_len + Q_TAG_SIZE;
    sodium_memzero(hs->credentials, sizeof hs->credentials); /* sealed now; not kept in clear */
    memcpy(hs->server_static, s, 32);
    hs->schedule = sch;
    hs->done = 1;
    sodium_memzero(&sch, sizeof sch);
    /* the ephemeral private key is no longer needed: forward secrecy starts here */
    sodium_memzero(hs->eph_private, sizeof hs->eph_private);
    return 0;
}

void q_client_hs_wipe(q_client_hs *hs) { sodium_memzero(hs, sizeof *hs); }
