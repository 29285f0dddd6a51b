/* The client's side of the handshake (5.1 - 5.3): ClientHello, Retry, ServerHello check,
 * key schedule, ClientFinish; credentials encoding (5.2.5) and server key pinning (5.3.1). */
#ifndef Q_HANDSHAKE_H
#define Q_HANDSHAKE_H

#include "aead.h"
#include "common.h"

#define Q_HELLO_SIZE 1168          /* ClientHello payload: a 1200-byte SYN datagram */
#define Q_RETRY_COOKIE_SIZE 36
#define Q_MAX_OFFER 8              /* cipher ids a ClientHello may offer */
#define Q_PARAMS_SIZE 10
#define Q_CONFIRMATION_SIZE (Q_PARAMS_SIZE + Q_TAG_SIZE)
/* e_s, S, cipher, cookie length: then the cookie, then the confirmation */
#define Q_SERVER_HELLO_FIXED (32 + 32 + 1 + 2 + Q_CONFIRMATION_SIZE)
/* The ClientFinish must fit the base datagram: cookie length + cookie + sealed credentials */
#define Q_MAX_FINISH (Q_BASE_DATAGRAM - Q_HEADER_SIZE) /* 1168 */
#define Q_MAX_CREDENTIALS 1032    /* encoded, the server's bound (with its 118-byte cookie) */
#define Q_MAX_COOKIE (Q_MAX_FINISH - 2 - Q_TAG_SIZE) /* bounded further by the credentials */
#define Q_MAX_TICKET 512

extern const char Q_PROTOCOL_LABEL[];
extern const char Q_LABEL_PREFIX[];

/* The server's connection parameters (5.2.3). */
typedef struct q_params {
    uint8_t fec_k, fec_m;           /* 0, 0: FEC off */
    uint32_t keepalive_ms, idle_ms;
} q_params;

/* The key schedule's outputs (5). */
typedef struct q_schedule {
    uint8_t transcript[32];
    uint8_t confirm_key[32], finish_key[32];
    uint8_t client_secret[32], server_secret[32]; /* generation 0 of each direction */
    q_cipher cipher;
} q_schedule;

typedef struct q_client_hs {
    uint8_t cid[Q_CID_SIZE];
    uint8_t eph_private[32], eph_public[32];
    uint8_t pin_key[32];
    char pin_fingerprint[52];
    int has_pin_key, has_pin_fingerprint;
    uint8_t offer[1 + Q_MAX_OFFER]; /* n || ids, as sent */
    uint8_t retry_cookie[Q_RETRY_COOKIE_SIZE];
    int has_retry;
    uint8_t credentials[Q_MAX_CREDENTIALS];
    size_t credentials_len;
    uint8_t finish[Q_MAX_FINISH];   /* the ClientFinish payload, identical on every resend */
    size_t finish_len;
    uint8_t server_static[32];
    int done;                       /* a server hello was accepted */
    q_schedule schedule;
} q_client_hs;

/* The cipher offer for a quantum_cipher_preference on this CPU: writes n || ids into
 * offer (1 + n bytes), returns 1 + n, or 0 when the preference leaves no usable cipher. */
size_t q_cipher_offer(int preference, uint8_t offer[1 + Q_MAX_OFFER]);

/* HKDF-Expand as 1.0 uses it (L <= 32): HMAC-SHA256(secret, "quantum 1.0 " || label || 01). */
void q_expand_label(const uint8_t secret[32], const char *label, uint8_t *out, size_t len);

/* Encode credentials (bounds of 5.2.5); QUANTUM_E_CREDENTIALS when they do not fit.
 * fec_k, fec_m = 0, 0 declines FEC. */
int q_credentials_encode(const quantum_credentials *c, int fec_k, int fec_m, uint8_t *out,
                         size_t cap, size_t *len);

/* Parse a pin (5.3.1): base64 (standard or URL-safe, padding optional) of 32 bytes, or
 * "SHA256:<43 characters>". NULL or "" pins nothing. 0 or QUANTUM_E_SERVER_KEY. */
int q_parse_pin(const char *text, uint8_t key[32], int *has_key, char fingerprint[52],
                int *has_fingerprint);
/* "SHA256:" + unpadded base64 of SHA-256(key). */
void q_fingerprint(const uint8_t key[32], char out[52]);

/* ephemeral_private may be NULL (fresh random). offer: n || ids (q_cipher_offer). 0 or an
 * error code. */
int q_client_hs_init(q_client_hs *hs, const uint8_t cid[16], const quantum_credentials *creds,
                     int fec_k, int fec_m, const char *server_key, const uint8_t *offer,
                     const uint8_t *ephemeral_private);
/* The SYN payload (Q_HELLO_SIZE bytes). */
void q_client_hello(const q_client_hs *hs, uint8_t out[Q_HELLO_SIZE]);
/* Remember a Retry's cookie; 0, or -1 when malformed. */
int q_client_on_retry(q_client_hs *hs, const uint8_t *payload, size_t len);
/* Verify a ServerHello, derive the keys, build the finish. 0, or a quantum_close_code
 * (PROTOCOL_VIOLATION: malformed, or a cipher we did not offer; BAD_SERVER_KEY: not the
 * pinned key, or the confirmation does not open: wrong key or a changed offer, i.e. a
 * downgrade) with a message in *why. */
int q_client_on_server_hello(q_client_hs *hs, const uint8_t *payload, size_t len,
                             q_params *params, const char **why);

/* The 1.0 key schedule from the two Diffie-Hellman results (offer: n || ids). */
void q_key_schedule(const uint8_t cid[16], const uint8_t e_c[32], const uint8_t *offer,
                    size_t offer_len, const uint8_t e_s[32], const uint8_t s[32],
                    q_cipher cipher, const uint8_t ee[32], const uint8_t es[32],
                    q_schedule *out);

void q_client_hs_wipe(q_client_hs *hs);

#endif
