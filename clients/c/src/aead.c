/* Packet protection with libsodium: AES-256-GCM (where the CPU has it) and ChaCha20-Poly1305. */
#include "aead.h"

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

int q_keys_install(q_dir_keys *d, q_cipher cipher, const uint8_t key[32], const uint8_t iv[12]) {
    /* the new generation takes the slot of the one before the current (which is dropped) */
    int slot = d->installed == 0 ? 0 : 1 - d->current;
    int r = q_aead_init(&d->gen[slot], cipher, key, iv);
    if (r != 0)
        return r;
    if (d->installed > 0)
        d->generation++;
    d->current = slot;
    if (d->installed < Q_GENERATIONS)
        d->installed++;
    return 0;
}

void q_keys_wipe(q_dir_keys *d) { sodium_memzero(d, sizeof *d); }

void q_hkdf_sha256(const uint8_t *salt, size_t salt_len, const uint8_t *ikm, size_t ikm_len,
                   const uint8_t *info, size_t info_len, uint8_t *out, size_t out_len) {
    uint8_t prk[crypto_auth_hmacsha256_BYTES], block[crypto_auth_hmacsha256_BYTES];
    crypto_auth_hmacsha256_state st;
    /* extract: PRK = HMAC(salt, IKM) */
    crypto_auth_hmacsha256_init(&st, salt, salt_len);
    crypto_auth_hmacsha256_update(&st, ikm, ikm_len);
    crypto_auth_hmacsha256_final(&st, prk);
    /* expand: T(i) = HMAC(PRK, T(i-1) || info || i) */
    size_t done = 0, prev = 0;
    for (uint8_t counter = 1; done < out_len; counter++) {
        crypto_auth_hmacsha256_init(&st, prk, sizeof prk);
        crypto_auth_hmacsha256_update(&st, block, prev);
        crypto_auth_hmacsha256_update(&st, info, info_len);
        crypto_auth_hmacsha256_update(&st, &counter, 1);
        crypto_auth_hmacsha256_final(&st, block);
        prev = sizeof block;
        size_t take = q_min_z(sizeof block, out_len - done);
        memcpy(out + done, block, take);
        done += take;
    }
    sodium_memzero(prk, sizeof prk);
    sodium_memzero(block, sizeof block);
    sodium_memzero(&st, sizeof st);
}
