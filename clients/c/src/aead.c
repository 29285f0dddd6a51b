/* Packet protection with libsodium: AES-256-GCM (where the CPU has it) and ChaCha20-Poly1305. */
#include "aead.h"

#include "handshake.h"

int q_cipher_available(q_cipher cipher) {
    if (cipher == Q_CIPHER_AES256GCM)
        return crypto_aead_aes256gcm_is_available();
    return cipher == Q_CIPHER_CHACHA20POLY1305;
}

int q_aead_init(q_aead *a, q_cipher cipher, const uint8_t key[Q_KEY_SIZE],
                const uint8_t iv[Q_IV_SIZE]) {
    if (!q_cipher_available(cipher))
        return QUANTUM_E_CRYPTO;
    a->cipher = cipher;
    memcpy(a->iv, iv, Q_IV_SIZE);
    if (cipher == Q_CIPHER_AES256GCM)
        crypto_aead_aes256gcm_beforenm(&a->k.aes, key);
    else
        memcpy(a->k.key, key, Q_KEY_SIZE);
    return 0;
}

void q_aead_wipe(q_aead *a) { sodium_memzero(a, sizeof *a); }

/* nonce = iv XOR pn, the 64-bit packet number right-aligned in 96 bits (5.4) */
static void nonce_for(const q_aead *a, uint64_t pn, uint8_t nonce[Q_IV_SIZE]) {
    memcpy(nonce, a->iv, Q_IV_SIZE);
    for (int i = 0; i < 8; i++)
        nonce[Q_IV_SIZE - 1 - i] ^= (uint8_t)(pn >> (8 * i));
}

void q_aead_seal(const q_aead *a, uint64_t pn, const uint8_t *ad, size_t ad_len, uint8_t *body,
                 size_t len) {
    uint8_t nonce[Q_IV_SIZE];
    nonce_for(a, pn, nonce);
    if (a->cipher == Q_CIPHER_AES256GCM)
        crypto_aead_aes256gcm_encrypt_detached_afternm(body, body + len, NULL, body, len, ad,
                                                       ad_len, NULL, nonce, &a->k.aes);
    else
        crypto_aead_chacha20poly1305_ietf_encrypt_detached(body, body + len, NULL, body, len, ad,
                                                           ad_len, NULL, nonce, a->k.key);
}

long q_aead_open(const q_aead *a, uint64_t pn, const uint8_t *ad, size_t ad_len, uint8_t *body,
                 size_t len) {
    if (len < Q_TAG_SIZE)
        return -1;
    uint8_t nonce[Q_IV_SIZE];
    nonce_for(a, pn, nonce);
    size_t n = len - Q_TAG_SIZE;
    int r;
    if (a->cipher == Q_CIPHER_AES256GCM)
        r = crypto_aead_aes256gcm_decrypt_detached_afternm(body, NULL, body, n, body + n, ad,
                                                           ad_len, nonce, &a->k.aes);
    else
        r = crypto_aead_chacha20poly1305_ietf_decrypt_detached(body, NULL, body, n, body + n, ad,
                                                               ad_len, nonce, a->k.key);
    return r == 0 ? (long)n : -1;
}

int q_aead_once_seal(q_cipher cipher, const uint8_t key[32], const uint8_t nonce[12],
                     const uint8_t *ad, size_t ad_len, const uint8_t *plain, size_t len,
                     uint8_t *out) {
    if (!q_cipher_available(cipher))
        return QUANTUM_E_CRYPTO;
    if (cipher == Q_CIPHER_AES256GCM)
        crypto_aead_aes256gcm_encrypt(out, NULL, plain, len, ad, ad_len, NULL, nonce, key);
    else
        crypto_aead_chacha20poly1305_ietf_encrypt(out, NULL, plain, len, ad, ad_len, NULL, nonce,
                                                  key);
    return 0;
}

int q_aead_once_open(q_cipher cipher, const uint8_t key[32], const uint8_t nonce[12],
                     const uint8_t *ad, size_t ad_len, const uint8_t *sealed, size_t len,
                     uint8_t *out) {
    if (!q_cipher_available(cipher) || len < Q_TAG_SIZE)
        return -1;
    if (cipher == Q_CIPHER_AES256GCM)
        return crypto_aead_aes256gcm_decrypt(out, NULL, NULL, sealed, len, ad, ad_len, nonce,
                                             key);
    return crypto_aead_chacha20poly1305_ietf_decrypt(out, NULL, NULL, sealed, len, ad, ad_len,
                                                     nonce, key);
}

/* A generation's AEAD from its secret: key = Expand(secret, "key"), iv = Expand(secret, "iv"). */
static int derive(q_aead *a, q_cipher cipher, const uint8_t secret[32]) {
    uint8_t key[Q_KEY_SIZE], iv[Q_IV_SIZE];
    q_expand_label(secret, "key", key, sizeof key);
    q_expand_label(secret, "iv", iv, sizeof iv);
    int r = q_aead_init(a, cipher, key, iv);
    sodium_memzero(key, sizeof key);
    sodium_memzero(iv, sizeof iv);
    return r;
}

static void next_secret(const uint8_t secret[32], uint8_t out[32]) {
    q_expand_label(secret, "key update", out, 32);
}

int q_keys_init(q_dir_keys *d, q_cipher cipher, const uint8_t secret[32]) {
    memset(d, 0, sizeof *d);
    d->cipher = cipher;
    memcpy(d->secret, secret, 32);
    d->first_pn = UINT64_MAX;
    return derive(&d->cur, cipher, secret);
}

void q_keys_update(q_dir_keys *d) {
    uint8_t next[32];
    next_secret(d->secret, next);
    memcpy(d->secret, next, 32);
    sodium_memzero(next, sizeof next);
    q_aead_wipe(&d->cur);
    derive(&d->cur, d->cipher, d->secret); /* the cipher was available for generation 0 */
    d->generation++;
    d->first_pn = UINT64_MAX;
    d->sealed = 0;
}

void q_keys_seal(q_dir_keys *d, uint64_t pn, const uint8_t *ad, size_t ad_len, uint8_t *body,
                 size_t len) {
    if (d->first_pn == UINT64_MAX)
        d->first_pn = pn;
    d->sealed++;
    q_aead_seal(&d->cur, pn, ad, ad_len, body, len);
}

long q_keys_open(q_dir_keys *d, int phase, uint64_t pn, double now, double keep_for,
                 const uint8_t *ad, size_t ad_len, uint8_t *body, size_t len) {
    long n;
    if (phase == (int)(d->generation & 1u)) {
        n = q_aead_open(&d->cur, pn, ad, ad_len, body, len);
        if (n >= 0 && (d->first_pn == UINT64_MAX || pn < d->first_pn))
            d->first_pn = pn;
        return n;
    }
    if (d->first_pn == UINT64_MAX || pn > d->first_pn) {
        /* newer than anything of the current generation: the peer's next one */
        uint8_t secret[32];
        q_aead next;
        next_secret(d->secret, secret);
        if (derive(&next, d->cipher, secret) != 0) {
            sodium_memzero(secret, sizeof secret);
            return -1;
        }
        n = q_aead_open(&next, pn, ad, ad_len, body, len);
        if (n < 0) {
            q_aead_wipe(&next);
            sodium_memzero(secret, sizeof secret);
            return -1;
        }
        q_aead_wipe(&d->prev);
        d->prev = d->cur;
        d->has_prev = 1;
        d->prev_expires = now + keep_for;
        d->cur = next;
        memcpy(d->secret, secret, 32);
        d->generation++;
        d->first_pn = pn;
        q_aead_wipe(&next);
        sodium_memzero(secret, sizeof secret);
        return n;
    }
    q_keys_expire(d, now);
    if (!d->has_prev)
        return -1; /* older than the previous generation's time: dropped */
    return q_aead_open(&d->prev, pn, ad, ad_len, body, len);
}

void q_keys_expire(q_dir_keys *d, double now) {
    if (d->has_prev && now >= d->prev_expires) {
        q_aead_wipe(&d->prev);
        d->has_prev = 0;
    }
}

void q_keys_wipe(q_dir_keys *d) { sodium_memzero(d, sizeof *d); }
