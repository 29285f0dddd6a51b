/*
 * libquantum: a client library for the Quantum protocol (Quantum 1.0, wire version 3,
 * docs/PROTOCOL.md).
 *
 * Two layers, use either:
 *
 *   quantum_client_*      The socket layer, in the style of ENet: create a client, connect,
 *                         send, and call quantum_client_service() in your game loop; it does
 *                         the I/O (one UDP socket, poll()), the timers, keepalives and
 *                         automatic reconnection, and hands you one event at a time.
 *
 *   quantum_connection_*  The sans-I/O protocol core underneath: no sockets, no clock.
 *                         You feed it datagrams and the time, and pull datagrams to send,
 *                         the next timer and events. Use it to run many connections on your
 *                         own sockets (see tools/quantum-loadgen.c) or inside an engine's
 *                         own network loop.
 *
 * Conventions
 *   - Every function that can fail returns an int: QUANTUM_OK (0) or a negative
 *     quantum_error code; quantum_error_string() names it. Functions that answer a yes/no
 *     question ("is there an event?") return 1 or 0, or a negative error.
 *   - No global state: any number of clients may live in one process; one client or
 *     connection must be used from one thread at a time.
 *   - Strings are NUL-terminated UTF-8. Pointers in events stay valid until the next call
 *     into the same client or connection.
 *   - Times in the sans-I/O API are seconds as a double, from any monotonic origin (for
 *     example CLOCK_MONOTONIC); the socket layer reads CLOCK_MONOTONIC itself.
 *
 * Thread safety: none inside an object; separate objects are independent.
 */
#ifndef QUANTUM_H
#define QUANTUM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#  define QUANTUM_API __declspec(dllexport)
#elif defined(__GNUC__)
#  define QUANTUM_API __attribute__((visibility("default")))
#else
#  define QUANTUM_API
#endif

#define QUANTUM_LIBRARY_VERSION "0.1.0"
/** The protocol version this library speaks on the wire (docs/PROTOCOL.md). */
#define QUANTUM_WIRE_VERSION 3
/** Largest application message, in bytes (1 MiB). */
#define QUANTUM_MAX_MESSAGE_SIZE (1u << 20)
/** Largest unreliable (UNRELIABLE, UNRELIABLE_SEQUENCED) message, in bytes: such messages
 *  are never fragmented and always fit one packet at the 1200-byte base datagram. */
#define QUANTUM_MAX_UNRELIABLE 1024u
/** Channels are 0..QUANTUM_MAX_CHANNEL. */
#define QUANTUM_MAX_CHANNEL 255
/** Session tokens are at most this many ASCII characters. */
#define QUANTUM_MAX_TOKEN 64
/** remaining_ms value meaning "no session" (keepalive answers) or "never expires". */
#define QUANTUM_NO_SESSION 0xFFFFFFFFu

/* ------------------------------------------------------------------------------ errors */

typedef enum quantum_error {
    QUANTUM_OK = 0,
    /** An argument is NULL, out of range, or not valid UTF-8. */
    QUANTUM_E_INVALID = -1,
    /** Memory allocation failed. */
    QUANTUM_E_NOMEM = -2,
    /** Not possible in the current state (for example send() before the connection is
     *  established, or connect() on a client that is already connected). */
    QUANTUM_E_STATE = -3,
    /** The message exceeds QUANTUM_MAX_MESSAGE_SIZE, or an unreliable / sequenced message
     *  exceeds QUANTUM_MAX_UNRELIABLE (1024 bytes). */
    QUANTUM_E_TOO_LARGE = -4,
    /** The pinned server key is neither the base64 of 32 bytes (standard or URL-safe,
     *  canonical, padding optional) nor "SHA256:" followed by 43 base64 characters. */
    QUANTUM_E_SERVER_KEY = -5,
    /** The host name could not be resolved (getaddrinfo). */
    QUANTUM_E_RESOLVE = -6,
    /** A socket call failed (errno is left as the call set it). */
    QUANTUM_E_SOCKET = -7,
    /** The connection is closed or closing: nothing more can be sent. */
    QUANTUM_E_CLOSED = -8,
    /** The client is reconnecting after losing its connection; try again after the
     *  QUANTUM_EVENT_RECONNECTED event. Messages are not queued meanwhile. */
    QUANTUM_E_RECONNECTING = -9,
    /** libsodium could not be initialised, or the configured cipher preference leaves no
     *  cipher this CPU can run (QUANTUM_CIPHERS_AES_ONLY without AES-NI). */
    QUANTUM_E_CRYPTO = -10,
    /** The credentials do not fit the handshake (user id 1..1024 bytes, ticket <= 512,
     *  resume token <= 255, metadata <= 64 entries with keys 1..64 and values <= 1024 bytes,
     *  no duplicate keys, all of it <= 1032 bytes encoded). */
    QUANTUM_E_CREDENTIALS = -11,
    /** A caller-provided buffer is too small. */
    QUANTUM_E_BUFFER = -12,
    /** Nothing happened before the deadline (quantum_client_wait_connected()). */
    QUANTUM_E_TIMEOUT = -13,
    /** The connection ended (quantum_client_wait_connected(): refused or unreachable; the
     *  QUANTUM_EVENT_DISCONNECTED event that was returned says why). */
    QUANTUM_E_DISCONNECTED = -14
} quantum_error;

/** A short English description of a quantum_error code (never NULL). */
QUANTUM_API const char *quantum_error_string(int error);

/** Reason codes of CLOSE and REJECT frames (docs/PROTOCOL.md, quantum.errors.CloseCode). */
typedef enum quantum_close_code {
    QUANTUM_CLOSE_NORMAL = 0,
    QUANTUM_CLOSE_IDLE_TIMEOUT = 1,
    QUANTUM_CLOSE_PROTOCOL_VIOLATION = 2,
    QUANTUM_CLOSE_SESSION_ENDED = 3,
    QUANTUM_CLOSE_SERVER_SHUTDOWN = 4,
    QUANTUM_CLOSE_HANDSHAKE_TIMEOUT = 5,
    QUANTUM_CLOSE_INTERNAL_ERROR = 6,
    QUANTUM_CLOSE_KEYS_EXHAUSTED = 7,
    QUANTUM_CLOSE_BAD_TICKET = 16,
    QUANTUM_CLOSE_EXPIRED_TICKET = 17,
    QUANTUM_CLOSE_UNKNOWN_USER = 18,
    QUANTUM_CLOSE_SERVER_FULL = 19,
    QUANTUM_CLOSE_RATE_LIMITED = 20,
    QUANTUM_CLOSE_VERSION_NOT_SUPPORTED = 21,
    QUANTUM_CLOSE_BAD_RESUME = 22,
    QUANTUM_CLOSE_BAD_SERVER_KEY = 23,
    QUANTUM_CLOSE_BAD_REQUEST = 24,
    QUANTUM_CLOSE_STORE_UNAVAILABLE = 25,
    /** The ClientHello offered no cipher the server has enabled (plaintext REJECT). */
    QUANTUM_CLOSE_CIPHER_NOT_SUPPORTED = 30
} quantum_close_code;

/** The upper-case name of a close code ("IDLE_TIMEOUT"), or "UNKNOWN". */
QUANTUM_API const char *quantum_close_code_name(int code);

/* ------------------------------------------------------------------------ delivery modes */

typedef enum quantum_delivery {
    /** Exactly once, in order within its (channel, mode) stream. Up to 1 MiB. */
    QUANTUM_RELIABLE_ORDERED = 0,
    /** Exactly once, delivered as soon as complete. Up to 1 MiB. */
    QUANTUM_RELIABLE_UNORDERED = 1,
    /** At most once, never retransmitted; must fit in one fragment. */
    QUANTUM_UNRELIABLE = 2,
    /** At most once, never older after newer in its stream; must fit in one fragment. */
    QUANTUM_UNRELIABLE_SEQUENCED = 3
} quantum_delivery;

/* ------------------------------------------------------------------------ configuration */

typedef struct quantum_config {
    /** Seconds between automatic keepalives once established; 0 turns them off. Default 10.
     *  The server's interval (sent in its hello) caps it, and the server's idle timeout caps
     *  idle_timeout. */
    double keepalive_interval;
    /** Nothing authenticated received for this long closes the connection (code
     *  IDLE_TIMEOUT). Default 60 s. */
    double idle_timeout;
    /** The whole handshake must finish within this time. Default 5 s. */
    double handshake_timeout;
    /** Transmissions of each handshake packet (SYN, then the finish) before giving up;
     *  they are spaced handshake_timeout / handshake_tries apart. Default 5. */
    int handshake_tries;
    /** FEC requested in the handshake: k data packets and m parity packets per group
     *  (1..16 each), or 0, 0 to decline. The server's (k, m) apply if it has FEC on.
     *  Default 10, 3. Parity is zfec's Reed-Solomon code, so both ends recover losses. */
    int fec_k, fec_m;
    /** Send and receive window in packets (16..4096); must equal the server's. Default 256. */
    int window;
    /** Longest an acknowledgement is delayed, seconds (0 < x <= 0.5). Default 0.025. */
    double max_ack_delay;
    /** How long close() waits for the FIN to be acknowledged. Default 3 s. */
    double close_timeout;
    /** Packets one key generation may seal at most (2048 .. 2^62). Default 2^23 (the AES-GCM
     *  bound of RFC 9001 section 6.6). If no key update was possible in time (the peer
     *  acknowledged nothing of the generation) the connection closes with KEYS_EXHAUSTED
     *  1024 packets before the limit. */
    uint64_t packets_per_key;
    /** Receive budget for undelivered messages, bytes (>= 64 KiB). Default 4 MiB. */
    size_t max_receive_buffer;
    /** Largest datagram this connection sends, bytes. Quantum 1.0 lets an endpoint send
     *  more than the 1200-byte base datagram only after path MTU probing confirmed the size;
     *  libquantum does not probe, so the only valid value is 1200 (the default). It still
     *  receives datagrams up to 1472 bytes and answers the server's probes. */
    int max_datagram;

    /* The socket layer only (quantum_client_*). */

    /** Reconnect (resuming the session) when an established connection is lost: idle
     *  timeout, server shutdown, keys exhausted, internal error. Default 1. */
    int auto_reconnect;
    /** First reconnect delay, seconds; doubled per failed attempt (+-25 % jitter) up to
     *  reconnect_max_delay. Defaults 0.5 and 30. */
    double reconnect_initial_delay, reconnect_max_delay;
    /** Attempts before giving up with QUANTUM_EVENT_DISCONNECTED; 0 = no limit. Default 10. */
    int reconnect_max_attempts;
    /** On reconnect, take a new session when the server refuses the resume (the event then
     *  says resumed = 0). Default 0: a refused resume ends with DISCONNECTED/BAD_RESUME. */
    int resume_fallback;

    /* Quantum 1.0 (appended, so that bindings built for the fields above keep their layout). */

    /** Packets sealed with one key generation before the client moves to the next (key
     *  update, once the server acknowledged a packet of the current one); 16 .. less than
     *  packets_per_key - 1024. Default 2^22. */
    uint64_t key_update_packets;
    /** The cipher offer of the ClientHello (quantum_cipher_preference). Default
     *  QUANTUM_CIPHERS_AUTO. */
    int cipher_preference;
} quantum_config;

/** The ciphers the ClientHello offers, in order (the server takes the first it has). */
typedef enum quantum_cipher_preference {
    /** AES-256-GCM then ChaCha20-Poly1305 where the CPU has AES-NI
     *  (crypto_aead_aes256gcm_is_available()), else ChaCha20-Poly1305 only. */
    QUANTUM_CIPHERS_AUTO = 0,
    /** ChaCha20-Poly1305 first, then AES-256-GCM where the CPU has it. */
    QUANTUM_CIPHERS_CHACHA_FIRST = 1,
    /** ChaCha20-Poly1305 only. */
    QUANTUM_CIPHERS_CHACHA_ONLY = 2,
    /** AES-256-GCM only (QUANTUM_E_CRYPTO at connect without AES-NI). */
    QUANTUM_CIPHERS_AES_ONLY = 3
} quantum_cipher_preference;

/** Cipher ids on the wire (docs/PROTOCOL.md 5). */
#define QUANTUM_CIPHER_AES256GCM 1
#define QUANTUM_CIPHER_CHACHA20POLY1305 2

/** Fill *config with the defaults listed above. */
QUANTUM_API void quantum_config_default(quantum_config *config);

/* ------------------------------------------------------------------------------ events */

typedef enum quantum_event_type {
    QUANTUM_EVENT_NONE = 0,
    /** The server accepted us: session_id, session_token, remaining_ms, resumed. */
    QUANTUM_EVENT_CONNECTED = 1,
    /** A whole message: data, length, channel, mode. */
    QUANTUM_EVENT_MESSAGE = 2,
    /** A keepalive was answered: keepalive_id, remaining_ms (the session's remaining
     *  lifetime; QUANTUM_NO_SESSION if the server has none), rtt (seconds, < 0 unknown). */
    QUANTUM_EVENT_KEEPALIVE = 3,
    /** The connection is over, for good: code (quantum_close_code), reason, by_peer. For a
     *  refused or failed connect this is the only event. Always the last event. */
    QUANTUM_EVENT_DISCONNECTED = 4,
    /** The socket layer lost the connection and connected again (session_id, session_token,
     *  remaining_ms, resumed = 1 if the same session continues). Messages in flight at the
     *  loss may be lost; each stream starts again from message id 0. */
    QUANTUM_EVENT_RECONNECTED = 5,
    /** A heartbeat (quantum_*_heartbeat) got no answer within its timeout: keepalive_id. */
    QUANTUM_EVENT_KEEPALIVE_TIMEOUT = 6
} quantum_event_type;

typedef struct quantum_event {
    int32_t type;                /**< quantum_event_type */
    uint8_t channel;             /**< MESSAGE */
    uint8_t mode;                /**< MESSAGE: quantum_delivery */
    uint8_t resumed;             /**< CONNECTED, RECONNECTED */
    uint8_t by_peer;             /**< DISCONNECTED: 1 if the server ended it */
    uint32_t keepalive_id;       /**< KEEPALIVE, KEEPALIVE_TIMEOUT */
    uint32_t remaining_ms;       /**< CONNECTED, RECONNECTED, KEEPALIVE */
    uint16_t code;               /**< DISCONNECTED: quantum_close_code */
    uint16_t reserved;
    double rtt;                  /**< KEEPALIVE: round trip in seconds, < 0 if unknown */
    const uint8_t *data;         /**< MESSAGE: the bytes (valid until the next call) */
    size_t length;               /**< MESSAGE: byte count */
    const char *reason;          /**< DISCONNECTED: UTF-8, NUL-terminated */
    size_t reason_length;        /**< DISCONNECTED: bytes, without the NUL */
    uint8_t session_id[16];      /**< CONNECTED, RECONNECTED: the session (a UUID's bytes) */
    char session_token[QUANTUM_MAX_TOKEN + 4]; /**< CONNECTED, RECONNECTED: NUL-terminated */
} quantum_event;

/** Counters and estimates of one connection. */
typedef struct quantum_stats {
    uint64_t packets_sent, packets_received, bytes_sent, bytes_received;
    uint64_t messages_sent, messages_received;
    uint64_t fast_retransmits, timeout_retransmits, packets_lost, fec_recovered;
    uint64_t path_challenges_answered;
    uint64_t dropped;            /**< datagrams dropped (malformed, replayed, forged...) */
    double srtt, min_rtt;        /**< seconds; < 0 before the first sample */
    uint64_t cwnd;               /**< congestion window, bytes */
    double pacing_rate;          /**< bytes per second */
    uint32_t reconnects;         /**< socket layer: successful reconnections */
    uint32_t max_datagram;       /**< the datagram size this connection builds */
    uint32_t cipher;             /**< QUANTUM_CIPHER_*: negotiated (0 before the handshake) */
    uint64_t key_updates;        /**< sending key generations moved to (key update) */
    uint64_t send_generation, receive_generation; /**< current key generations */
} quantum_stats;

/* ======================================================================= socket layer */

typedef struct quantum_client quantum_client;

/** A new, unconnected client. config may be NULL (defaults); it is copied. */
QUANTUM_API int quantum_client_create(quantum_client **out, const quantum_config *config);

/** Add a metadata entry (key 1..64 bytes, value 0..1024) sent with the next connect;
 *  at most 64 entries, keys unique. Call before quantum_client_connect(). */
QUANTUM_API int quantum_client_set_metadata(quantum_client *client, const char *key,
                                            const char *value);

/** Resume this session on the next connect (session_id: 16 bytes, token: ASCII). */
QUANTUM_API int quantum_client_set_resume(quantum_client *client, const uint8_t session_id[16],
                                          const char *token, int fallback);

/** Restrict name resolution to AF_INET (4), AF_INET6 (6) or either (0, the default). */
QUANTUM_API int quantum_client_set_family(quantum_client *client, int ip_version);

/**
 * Start connecting to host:port (a name, an IPv4 or an IPv6 address). Returns at once:
 * call quantum_client_service() until QUANTUM_EVENT_CONNECTED or QUANTUM_EVENT_DISCONNECTED
 * (or use quantum_client_wait_connected()).
 *
 * server_key pins the server: base64 of its 32-byte public key (standard or URL-safe,
 * padding optional) or its fingerprint "SHA256:<43 base64 characters>" as printed by
 * `quantum-server keygen`. NULL trusts whatever key the server presents (only for
 * development: an active man in the middle could then read everything).
 * ticket may be NULL (servers running --allow-anonymous ignore it).
 */
QUANTUM_API int quantum_client_connect(quantum_client *client, const char *host, uint16_t port,
                                       const char *server_key, const char *user_id,
                                       const char *ticket);

/** Service until connected (QUANTUM_OK, *event holds CONNECTED), refused or unreachable
 *  (QUANTUM_E_DISCONNECTED, *event holds DISCONNECTED) or timeout_ms passed
 *  (QUANTUM_E_TIMEOUT). Other events that arrive meanwhile stay queued for service(). */
QUANTUM_API int quantum_client_wait_connected(quantum_client *client, int timeout_ms,
                                              quantum_event *event);

/** Queue a message on channel (0..255) with a delivery mode; it leaves at once if the
 *  congestion window allows (else in later service() calls). The bytes are copied.
 *  Errors: E_STATE (not connected yet), E_RECONNECTING, E_CLOSED, E_TOO_LARGE, E_INVALID. */
QUANTUM_API int quantum_client_send(quantum_client *client, uint8_t channel,
                                    quantum_delivery mode, const void *data, size_t length);

/** Send a keepalive now and keep re-sending a fresh one every max(2 x SRTT, 250 ms) until
 *  one is answered (QUANTUM_EVENT_KEEPALIVE with *keepalive_id and the session's
 *  remaining_ms) or timeout_ms passes (QUANTUM_EVENT_KEEPALIVE_TIMEOUT). */
QUANTUM_API int quantum_client_heartbeat(quantum_client *client, int timeout_ms,
                                         uint32_t *keepalive_id);

/**
 * Do the I/O and the timers, waiting at most timeout_ms (0: do not wait, but still read what
 * has arrived; < 0: no limit) for something to happen. Returns 1 with *event filled, 0 if
 * nothing happened in time (and always 0 once DISCONNECTED was returned or after abort()),
 * or a negative error (E_STATE before connect). Call it often (every frame): the protocol's
 * timers (acknowledgements, retransmissions, keepalives, pacing) only run inside it.
 */
QUANTUM_API int quantum_client_service(quantum_client *client, int timeout_ms,
                                       quantum_event *event);

/** Graceful close: what is queued is delivered, then a FIN goes out. Keep calling
 *  service() until QUANTUM_EVENT_DISCONNECTED (at most close_timeout after the FIN). */
QUANTUM_API int quantum_client_close(quantum_client *client, const char *reason);

/** Drop the connection at once without telling the server (as a crash would); the server
 *  keeps the session until it expires, so it can be resumed. No event follows. */
QUANTUM_API void quantum_client_abort(quantum_client *client);

/** Move to a new local UDP port (a new socket), as a NAT rebinding or a network change
 *  would: the connection continues and the server validates the new path. */
QUANTUM_API int quantum_client_rebind(quantum_client *client);

/** The session of the current (or last) connection: 16-byte id and token (NUL-terminated,
 *  token_capacity >= QUANTUM_MAX_TOKEN + 1). E_STATE before the first CONNECTED event. */
QUANTUM_API int quantum_client_session(const quantum_client *client, uint8_t session_id[16],
                                       char *token, size_t token_capacity);

/** Counters of the current connection (zeros before connect). */
QUANTUM_API int quantum_client_stats(const quantum_client *client, quantum_stats *stats);

/** The UDP socket's file descriptor (for select/epoll integration), or -1. */
QUANTUM_API int quantum_client_fd(const quantum_client *client);

/** The local port of the current socket (0 if none). */
QUANTUM_API uint16_t quantum_client_local_port(const quantum_client *client);

/** The server's public key as presented in the handshake (32 bytes), for trust on first
 *  use; E_STATE before the server answered. */
QUANTUM_API int quantum_client_server_public_key(const quantum_client *client,
                                                 uint8_t key[32]);

/** Free everything (an open connection is aborted, not closed). NULL is ignored. */
QUANTUM_API void quantum_client_destroy(quantum_client *client);

/* ===================================================================== sans-I/O core */

typedef struct quantum_connection quantum_connection;

typedef struct quantum_metadata {
    const char *key;
    const char *value;
} quantum_metadata;

/** What the client presents in the handshake. */
typedef struct quantum_credentials {
    const char *user_id;                 /**< required, 1..1024 bytes */
    const char *ticket;                  /**< NULL: none */
    const uint8_t *resume_session_id;    /**< NULL: a new session; else 16 bytes */
    const char *resume_token;            /**< with resume_session_id */
    int resume_fallback;                 /**< a new session if the resume is refused */
    const quantum_metadata *metadata;    /**< metadata_count entries */
    size_t metadata_count;
} quantum_credentials;

typedef enum quantum_state {
    QUANTUM_STATE_SYN_SENT = 0,
    QUANTUM_STATE_AWAIT_ACCEPT = 1,
    QUANTUM_STATE_ESTABLISHED = 2,
    QUANTUM_STATE_CLOSING = 3,
    QUANTUM_STATE_CLOSED = 4
} quantum_state;

/**
 * A client connection to the server at `server` (a struct sockaddr_in or sockaddr_in6 of
 * server_len bytes). Its SYN is ready in quantum_connection_next_datagram() at once.
 * server_key as for quantum_client_connect(); config may be NULL.
 * connection_id: 16 bytes, or NULL for random ones.
 */
QUANTUM_API int quantum_connection_create(quantum_connection **out, const quantum_config *config,
                                          const quantum_credentials *credentials,
                                          const char *server_key, const void *server,
                                          size_t server_len, const uint8_t *connection_id,
                                          double now);

/** Process one received datagram from address `from` (may be NULL: the current peer).
 *  Anything malformed, forged, replayed or for another connection is dropped and counted;
 *  this only fails for NULL arguments. */
QUANTUM_API int quantum_connection_receive(quantum_connection *conn, const uint8_t *datagram,
                                           size_t length, const void *from, size_t from_len,
                                           double now);

/** Build the next datagram to send into buf (capacity >= 1500 is always enough) and store
 *  its length: returns 1, or 0 when nothing may be sent now (look at next_timer()). Send
 *  it to quantum_connection_peer(). Call until it returns 0 after every input. */
QUANTUM_API int quantum_connection_next_datagram(quantum_connection *conn, double now,
                                                 uint8_t *buf, size_t capacity, size_t *length);

/** Where datagrams go (the server; it follows a validated migration). */
QUANTUM_API const void *quantum_connection_peer(const quantum_connection *conn, size_t *length);

/** When handle_timer() must be called next, or a negative value for never. */
QUANTUM_API double quantum_connection_next_timer(const quantum_connection *conn);

/** Run the timers due at `now` (retransmissions, keepalives, timeouts). */
QUANTUM_API void quantum_connection_handle_timer(quantum_connection *conn, double now);

/** Pop the next event into *event: 1, or 0 when there is none. */
QUANTUM_API int quantum_connection_next_event(quantum_connection *conn, quantum_event *event);

/** Queue a message (copied). Only once established (E_STATE before, E_CLOSED after). */
QUANTUM_API int quantum_connection_send(quantum_connection *conn, uint8_t channel,
                                        quantum_delivery mode, const void *data, size_t length);

/** Queue one keepalive now (not re-sent if lost); its answer is a KEEPALIVE event. */
QUANTUM_API int quantum_connection_keepalive(quantum_connection *conn, uint32_t *keepalive_id);

/** A keepalive re-sent every max(2 x SRTT, 250 ms) until answered or `timeout` seconds
 *  pass (QUANTUM_EVENT_KEEPALIVE or QUANTUM_EVENT_KEEPALIVE_TIMEOUT with this id). */
QUANTUM_API int quantum_connection_heartbeat(quantum_connection *conn, double timeout,
                                             double now, uint32_t *keepalive_id);

/** Graceful close (code QUANTUM_CLOSE_NORMAL): queued data first, then the FIN. */
QUANTUM_API int quantum_connection_close(quantum_connection *conn, const char *reason);

QUANTUM_API quantum_state quantum_connection_state(const quantum_connection *conn);

/** The largest unreliable / sequenced message: QUANTUM_MAX_UNRELIABLE (1024 bytes). */
QUANTUM_API size_t quantum_connection_max_unreliable(const quantum_connection *conn);

QUANTUM_API int quantum_connection_stats(const quantum_connection *conn, quantum_stats *stats);

/** The 16-byte connection id. */
QUANTUM_API const uint8_t *quantum_connection_id(const quantum_connection *conn);

/** The server's static public key once the server hello was verified (32 bytes), else
 *  NULL. */
QUANTUM_API const uint8_t *quantum_connection_server_public_key(const quantum_connection *conn);

QUANTUM_API void quantum_connection_destroy(quantum_connection *conn);

/* ============================================================================ helpers */

/** "SHA256:<unpadded base64 of SHA-256(key)>" into out (capacity >= 51). */
QUANTUM_API int quantum_fingerprint(const uint8_t key[32], char *out, size_t capacity);

/** Reed-Solomon parity exactly as zfec computes it: `k` data blocks of `block_size` bytes
 *  each (data[i]) and parity block numbers k..k+m-1 into parity[0..m-1]. 1 <= k <= 32,
 *  1 <= m <= 16. Exposed for interoperability tests. */
QUANTUM_API int quantum_fec_encode(int k, int m, const uint8_t *const *data, size_t block_size,
                                   uint8_t *const *parity);

#ifdef __cplusplus
}
#endif
#endif /* QUANTUM_H */
