/* Packet protection (5.4): an AEAD abstraction with two ciphers, and keys per generation.
 *
 * Wire version 2 knows one cipher (AES-256-GCM) and one key per direction for the whole
 * connection. Quantum 1.0 adds a negotiated cipher (AES-256-GCM or ChaCha20-Poly1305) and
 * key updates: generations of keys derived from a per-direction traffic secret, selected by
 * a key-phase bit, the previous generation kept briefly for reordered packets. So keys live
 * in q_dir_keys as generations from the start; v2 only ever installs generation 0. */
#ifndef Q_AEAD_H
#define Q_AEAD_H

#include <sodium.h>

#include "common.h"

typedef enum q_cipher {
    Q_CIPHER_AES256GCM = 1,
    Q_CIPHER_CHACHA20POLY1305 = 2
} q_cipher;

#define Q_KEY_SIZE 32
#define Q_IV_SIZE 12

typedef struct q_aead {
    q_cipher cipher;
    uint8_t iv[Q_IV_SIZE];
    union {
        crypto_aead_aes256gcm_state aes; /* expanded once: the per-packet cost is the AEAD only */
        uint8_t key[Q_KEY_SIZE];         /* ChaCha20-Poly1305 uses the raw key */
    } k;
} q_aead;

/* Whether a cipher can run here (AES-256-GCM needs AES-NI and CLMUL in libsodium). */
int q_cipher_available(q_cipher cipher);
/* 0, or QUANTUM_E_CRYPTO when the cipher is unavailable. */
int q_aead_init(q_aead *a, q_cipher cipher, const uint8_t key[Q_KEY_SIZE],
                const uint8_t iv[Q_IV_SIZE]);
void q_aead_wipe(q_aead *a);
/* Seal body[0..len) in place for packet number pn, authenticating ad; the 16-byte tag is
 * written at body + len. */
void q_aead_seal(const q_aead *a, uint64_t pn, const uint8_t *ad, size_t ad_len, uint8_t *body,
                 size_t len);
/* Open in place: body holds ciphertext || tag (len includes the tag). Returns the plaintext
 * length, or -1 when authentication fails. */
long q_aead_open(const q_aead *a, uint64_t pn, const uint8_t *ad, size_t ad_len, uint8_t *body,
                 size_t len);

/* One-shot AEAD with an explicit nonce (the handshake's zero nonce, cookies). */
int q_aead_once_seal(q_cipher cipher, const uint8_t key[32], const uint8_t nonce[12],
                     const uint8_t *ad, size_t ad_len, const uint8_t *plain, size_t len,
                     uint8_t *out);
int q_aead_once_open(q_cipher cipher, const uint8_t key[32], const uint8_t nonce[12],
                     const uint8_t *ad, size_t ad_len, const uint8_t *sealed, size_t len,
                     uint8_t *out);

/* The keys of one direction, by generation. */
#define Q_GENERATIONS 2
typedef struct q_dir_keys {
    q_aead gen[Q_GENERATIONS]; /* current and previous (key update, Quantum 1.0) */
    uint32_t generation;       /* of gen[current] */
    int current;
    int installed;             /* generations installed so far (0, 1 or 2) */
} q_dir_keys;

int q_keys_install(q_dir_keys *d, q_cipher cipher, const uint8_t key[32], const uint8_t iv[12]);
static inline const q_aead *q_keys_current(const q_dir_keys *d) { return &d->gen[d->current]; }
void q_keys_wipe(q_dir_keys *d);

/* HKDF-SHA256 (RFC 5869) with HMAC-SHA256 from libsodium; out_len <= 255 * 32. */
void q_hkdf_sha256(const uint8_t *salt, size_t salt_len, const uint8_t *ikm, size_t ikm_len,
                   const uint8_t *info, size_t info_len, uint8_t *out, size_t out_len);

#endif
