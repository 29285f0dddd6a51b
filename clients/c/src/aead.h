/* Packet protection (5.4, 6): an AEAD abstraction with the two negotiable ciphers
 * (AES-256-GCM, ChaCha20-Poly1305), and the keys of one direction by generation (key update):
 * each generation's key and iv come from its traffic secret, the next secret from the
 * current one; the header's KEY_PHASE bit is the low bit of the generation. */
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

/* The keys of one direction (Quantum 1.0 section 6). Sending uses `cur` only; receiving
 * also keeps `prev` (the generation before, for reordered packets, until prev_expires) and
 * derives the next generation on demand when a packet shows the other phase. */
typedef struct q_dir_keys {
    q_cipher cipher;
    uint8_t secret[32];     /* the current generation's traffic secret */
    q_aead cur, prev;
    uint64_t generation;    /* of cur */
    uint64_t first_pn;      /* the first pn sealed / opened with cur; UINT64_MAX: none yet */
    uint64_t sealed;        /* packets sealed with cur */
    int has_prev;
    double prev_expires;
} q_dir_keys;

/* Generation 0 from a direction's traffic secret; 0 or QUANTUM_E_CRYPTO. */
int q_keys_init(q_dir_keys *d, q_cipher cipher, const uint8_t secret[32]);
/* The generation's header flag: KEY_PHASE (0x80) for odd generations, else 0. */
static inline uint8_t q_keys_phase_flag(const q_dir_keys *d) {
    return (uint8_t)((d->generation & 1u) ? 0x80 : 0);
}
/* Sending: move to the next generation (the previous one is not kept for sealing). */
void q_keys_update(q_dir_keys *d);
/* Seal with the current generation (counts the packet). */
void q_keys_seal(q_dir_keys *d, uint64_t pn, const uint8_t *ad, size_t ad_len, uint8_t *body,
                 size_t len);
/* Receiving: open a packet whose header says `phase` (0 or 1) with the generation it
 * selects (current, next derived on demand, or previous while kept); on success with the
 * next generation the keys rotate (previous = current, kept until now + keep_for). A failed
 * open changes nothing. Returns the plaintext length or -1. */
long q_keys_open(q_dir_keys *d, int phase, uint64_t pn, double now, double keep_for,
                 const uint8_t *ad, size_t ad_len, uint8_t *body, size_t len);
/* Drop the previous generation once its time is over. */
void q_keys_expire(q_dir_keys *d, double now);
void q_keys_wipe(q_dir_keys *d);

#endif
