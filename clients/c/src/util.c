/* Names of error and close codes, and small exported helpers. */
#include "common.h"
#include "handshake.h"

const char *quantum_error_string(int error) {
    switch (error) {
    case QUANTUM_OK: return "ok";
    case QUANTUM_E_INVALID: return "invalid argument";
    case QUANTUM_E_NOMEM: return "out of memory";
    case QUANTUM_E_STATE: return "not possible in the current state";
    case QUANTUM_E_TOO_LARGE: return "message too large";
    case QUANTUM_E_SERVER_KEY: return "malformed server key (expected base64 or SHA256:...)";
    case QUANTUM_E_RESOLVE: return "cannot resolve host";
    case QUANTUM_E_SOCKET: return "socket error";
    case QUANTUM_E_CLOSED: return "connection closed";
    case QUANTUM_E_RECONNECTING: return "reconnecting";
    case QUANTUM_E_CRYPTO: return "cryptography unavailable (libsodium, or the forced cipher)";
    case QUANTUM_E_CREDENTIALS: return "credentials do not fit the handshake";
    case QUANTUM_E_BUFFER: return "buffer too small";
    case QUANTUM_E_TIMEOUT: return "timed out";
    case QUANTUM_E_DISCONNECTED: return "disconnected";
    default: return "unknown error";
    }
}

const char *quantum_close_code_name(int code) {
    switch (code) {
    case QUANTUM_CLOSE_NORMAL: return "NORMAL";
    case QUANTUM_CLOSE_IDLE_TIMEOUT: return "IDLE_TIMEOUT";
    case QUANTUM_CLOSE_PROTOCOL_VIOLATION: return "PROTOCOL_VIOLATION";
    case QUANTUM_CLOSE_SESSION_ENDED: return "SESSION_ENDED";
    case QUANTUM_CLOSE_SERVER_SHUTDOWN: return "SERVER_SHUTDOWN";
    case QUANTUM_CLOSE_HANDSHAKE_TIMEOUT: return "HANDSHAKE_TIMEOUT";
    case QUANTUM_CLOSE_INTERNAL_ERROR: return "INTERNAL_ERROR";
    case QUANTUM_CLOSE_KEYS_EXHAUSTED: return "KEYS_EXHAUSTED";
    case QUANTUM_CLOSE_BAD_TICKET: return "BAD_TICKET";
    case QUANTUM_CLOSE_EXPIRED_TICKET: return "EXPIRED_TICKET";
    case QUANTUM_CLOSE_UNKNOWN_USER: return "UNKNOWN_USER";
    case QUANTUM_CLOSE_SERVER_FULL: return "SERVER_FULL";
    case QUANTUM_CLOSE_RATE_LIMITED: return "RATE_LIMITED";
    case QUANTUM_CLOSE_VERSION_NOT_SUPPORTED: return "VERSION_NOT_SUPPORTED";
    case QUANTUM_CLOSE_BAD_RESUME: return "BAD_RESUME";
    case QUANTUM_CLOSE_BAD_SERVER_KEY: return "BAD_SERVER_KEY";
    case QUANTUM_CLOSE_BAD_REQUEST: return "BAD_REQUEST";
    case QUANTUM_CLOSE_STORE_UNAVAILABLE: return "STORE_UNAVAILABLE";
    case QUANTUM_CLOSE_CIPHER_NOT_SUPPORTED: return "CIPHER_NOT_SUPPORTED";
    default: return "UNKNOWN";
    }
}

int quantum_fingerprint(const uint8_t key[32], char *out, size_t capacity) {
    if (!key || !out)
        return QUANTUM_E_INVALID;
    if (capacity < 51)
        return QUANTUM_E_BUFFER;
    if (sodium_init() < 0)
        return QUANTUM_E_CRYPTO;
    char fp[52];
    q_fingerprint(key, fp);
    memcpy(out, fp, strlen(fp) + 1);
    return 0;
}
