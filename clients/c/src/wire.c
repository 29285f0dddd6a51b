/* The wire format: docs/PROTOCOL.md sections 2 (packets), 3 (packet numbers), 4 (frames). */
#include "wire.h"

#include <stdlib.h>

static const uint8_t MAGIC[4] = {'Q', 'U', 'N', 'T'};

uint64_t q_expand(uint32_t wire, uint64_t largest) {
    const uint64_t modulus = (uint64_t)1 << 32, half = (uint64_t)1 << 31;
    uint64_t expected = largest + 1;
    uint64_t candidate = (expected & ~(uint64_t)0xFFFFFFFFu) | wire;
    /* the comparisons of 3.3, written so that no intermediate wraps below 0 or above 2^64 */
    if (expected >= half && candidate <= expected - half && candidate < UINT64_MAX - modulus + 1)
        return candidate + modulus;
    if (candidate > expected + half && candidate >= modulus)
        return candidate - modulus;
    return candidate;
}

int q_header_decode(const uint8_t *d, size_t n, q_header *h) {
    if (n < Q_HEADER_SIZE || memcmp(d, MAGIC, 4) != 0)
        return -1;
    h->version = d[4];
    h->flags = d[5];
    h->cid = d + 6;
    h->seq = q_get32(d + 22);
    h->ack = q_get32(d + 26);
    h->payload_len = q_get16(d + 30);
    return 0;
}

void q_header_encode(uint8_t *out, uint8_t flags, const uint8_t cid[16], uint32_t seq,
                     uint32_t ack, uint16_t payload_len) {
    memcpy(out, MAGIC, 4);
    out[4] = QUANTUM_WIRE_VERSION;
    out[5] = flags;
    memcpy(out + 6, cid, Q_CID_SIZE);
    q_put32(out + 22, seq);
    q_put32(out + 26, ack);
    q_put16(out + 30, payload_len);
}

int q_split_body(const uint8_t *body, size_t n, uint16_t payload_len, q_sack sack[Q_MAX_SACK],
                 int *nsack, const uint8_t **payload) {
    if (payload_len > Q_MAX_PAYLOAD || n < payload_len)
        return -1;
    size_t rest = n - payload_len;
    if (rest % 8 != 0 || rest / 8 > Q_MAX_SACK)
        return -1;
    int k = (int)(rest / 8);
    for (int i = 0; i < k; i++) {
        uint32_t start = q_get32(body + 8 * i), end = q_get32(body + 8 * i + 4);
        if ((uint32_t)(end - start) >= 0x80000000u)
            return -1; /* ends before it starts, in serial order (2.3) */
        sack[i].start = start;
        sack[i].end = end;
    }
    *nsack = k;
    *payload = body + rest;
    return 0;
}

int q_decode_plain(const uint8_t *d, size_t n, q_header *h, q_sack sack[Q_MAX_SACK], int *nsack,
                   const uint8_t **payload) {
    if (n > Q_MAX_DATAGRAM || q_header_decode(d, n, h) != 0)
        return -1;
    return q_split_body(d + Q_HEADER_SIZE, n - Q_HEADER_SIZE, h->payload_len, sack, nsack,
                        payload);
}

/* ------------------------------------------------------------------------------ frames */

int q_frame_next(const uint8_t *p, size_t n, size_t *pos, q_frame *f) {
    size_t i = *pos;
    if (i >= n)
        return 0;
    uint8_t type = p[i++];
    f->type = type;
    switch (type) {
    case Q_FRAME_PADDING: {
        /* the rest of the payload, all zeros: a PMTU probe carries up to 1400 of them, so
         * eight at a time */
        for (; n - i >= 8; i += 8) {
            uint64_t word;
            memcpy(&word, p + i, 8);
            if (word)
                return -1;
        }
        for (; i < n; i++)
            if (p[i] != 0)
                return -1;
        *pos = n;
        return 0;
    }
    case Q_FRAME_MESSAGE: {
        if (n - i < 8)
            return -1;
        uint8_t mode = p[i + 1];
        /* bits 2..6 reserved; fragments only for the reliable modes (0, 1) */
        if ((mode & 0x7C) || ((mode & Q_MODE_FRAGMENT) && (mode & 0x03) >= 2))
            return -1;
        f->u.msg.channel = p[i];
        f->u.msg.mode = mode & 0x03;
        f->u.msg.id = q_get32(p + i + 2);
        size_t head = 8;
        if (mode & Q_MODE_FRAGMENT) {
            if (n - i < 16)
                return -1;
            f->u.msg.fragment = 1;
            f->u.msg.offset = q_get32(p + i + 6);
            f->u.msg.total = q_get32(p + i + 10);
            head = 16;
        } else {
            f->u.msg.fragment = 0;
            f->u.msg.offset = 0;
        }
        uint16_t length = q_get16(p + i + head - 2);
        if (n - i - head < length)
            return -1;
        if (f->u.msg.fragment) {
            uint32_t off = f->u.msg.offset, total = f->u.msg.total;
            if (total > QUANTUM_MAX_MESSAGE_SIZE || length < 1 || off > total ||
                total - off < length)
                return -1;
        } else {
            f->u.msg.total = length;
        }
        f->u.msg.length = length;
        f->u.msg.data = p + i + head;
        i += head + (size_t)length;
        break;
    }
    case Q_FRAME_PING:
        break; /* no body */
    case Q_FRAME_KEEPALIVE:
    case Q_FRAME_ACK_FLOOR:
        if (n - i < 4)
            return -1;
        f->u.keepalive.id = q_get32(p + i); /* ack_floor.floor shares the layout */
        i += 4;
        break;
    case Q_FRAME_KEEPALIVE_ACK:
        if (n - i < 8)
            return -1;
        f->u.keepalive_ack.id = q_get32(p + i);
        f->u.keepalive_ack.remaining_ms = q_get32(p + i + 4);
        i += 8;
        break;
    case Q_FRAME_CLOSE:
    case Q_FRAME_REJECT: {
        if (n - i < 4)
            return -1;
        uint16_t length = q_get16(p + i + 2);
        if (length > Q_MAX_REASON || n - i - 4 < length || !q_utf8_valid(p + i + 4, length))
            return -1;
        f->u.close.code = q_get16(p + i);
        f->u.close.length = length;
        f->u.close.reason = p + i + 4;
        i += 4 + (size_t)length;
        break;
    }
    case Q_FRAME_PARITY: {
        if (n - i < 7)
            return -1;
        uint8_t m = p[i + 4], index = p[i + 5], k = p[i + 6];
        if (index >= m || k < 1 || k > Q_MAX_PARITY_SEQS)
            return -1;
        size_t seqs = i + 7;
        if (n - seqs < 4 * (size_t)k + 2)
            return -1;
        uint16_t length = q_get16(p + seqs + 4 * (size_t)k);
        size_t shard = seqs + 4 * (size_t)k + 2;
        if (n - shard < length)
            return -1;
        f->u.parity.group = q_get32(p + i);
        f->u.parity.m = m;
        f->u.parity.index = index;
        f->u.parity.k = k;
        f->u.parity.seqs = p + seqs;
        f->u.parity.length = length;
        f->u.parity.shard = p + shard;
        i = shard + length;
        break;
    }
    case Q_FRAME_PATH_CHALLENGE:
    case Q_FRAME_PATH_RESPONSE:
        if (n - i < Q_PATH_DATA)
            return -1;
        f->u.path.data = p + i;
        i += Q_PATH_DATA;
        break;
    case Q_FRAME_SESSION: {
        if (n - i < 17)
            return -1;
        uint8_t len = p[i + 16];
        if (len > QUANTUM_MAX_TOKEN || n - i - 17 < (size_t)len + 5)
            return -1;
        const uint8_t *token = p + i + 17;
        for (uint8_t j = 0; j < len; j++)
            if (token[j] > 0x7F)
                return -1; /* ASCII only */
        uint8_t resumed = token[len + 4];
        if (resumed > 2) /* 2: resumed, streams carried over (12.4; only if we asked) */
            return -1;
        f->u.session.session_id = p + i;
        f->u.session.token_len = len;
        f->u.session.token = token;
        f->u.session.remaining_ms = q_get32(token + len);
        f->u.session.resumed = resumed;
        i += 17 + (size_t)len + 5;
        break;
    }
    default:
        return -1; /* unknown frame type */
    }
    *pos = i;
    return 1;
}

int q_frames_check(const uint8_t *payload, size_t len, int *ack_eliciting) {
    size_t pos = 0;
    q_frame f;
    int r, eliciting = 0;
    while ((r = q_frame_next(payload, len, &pos, &f)) == 1)
        if (f.type != Q_FRAME_KEEPALIVE_ACK)
            eliciting = 1;
    *ack_eliciting = eliciting;
    return r < 0 ? -1 : 0;
}

size_t q_enc_message(uint8_t *out, uint8_t channel, uint8_t mode, uint32_t id,
                     const uint8_t *data, uint16_t length) {
    out[0] = Q_FRAME_MESSAGE;
    out[1] = channel;
    out[2] = mode;
    q_put32(out + 3, id);
    q_put16(out + 7, length);
    if (length)
        memcpy(out + 9, data, length);
    return Q_MESSAGE_OVERHEAD + (size_t)length;
}

size_t q_enc_fragment(uint8_t *out, uint8_t channel, uint8_t mode, uint32_t id, uint32_t offset,
                      uint32_t total, const uint8_t *data, uint16_t length) {
    out[0] = Q_FRAME_MESSAGE;
    out[1] = channel;
    out[2] = (uint8_t)(mode | Q_MODE_FRAGMENT);
    q_put32(out + 3, id);
    q_put32(out + 7, offset);
    q_put32(out + 11, total);
    q_put16(out + 15, length);
    memcpy(out + 17, data, length);
    return Q_FRAGMENT_OVERHEAD + (size_t)length;
}

size_t q_enc_u32_frame(uint8_t *out, uint8_t type, uint32_t value) {
    out[0] = type;
    q_put32(out + 1, value);
    return 5;
}

size_t q_enc_keepalive_ack(uint8_t *out, uint32_t id, uint32_t remaining_ms) {
    out[0] = Q_FRAME_KEEPALIVE_ACK;
    q_put32(out + 1, id);
    q_put32(out + 5, remaining_ms);
    return 9;
}

size_t q_enc_code_reason(uint8_t *out, uint8_t type, uint16_t code, const uint8_t *reason,
                         uint16_t length) {
    out[0] = type;
    q_put16(out + 1, code);
    q_put16(out + 3, length);
    if (length)
        memcpy(out + 5, reason, length);
    return 5 + (size_t)length;
}

size_t q_enc_parity(uint8_t *out, uint32_t group, uint8_t m, uint8_t index, uint8_t k,
                    const uint32_t *seqs, const uint8_t *shard, uint16_t length) {
    out[0] = Q_FRAME_PARITY;
    q_put32(out + 1, group);
    out[5] = m;
    out[6] = index;
    out[7] = k;
    size_t pos = 8;
    for (uint8_t i = 0; i < k; i++, pos += 4)
        q_put32(out + pos, seqs[i]);
    q_put16(out + pos, length);
    memcpy(out + pos + 2, shard, length);
    return pos + 2 + length;
}

size_t q_enc_path(uint8_t *out, uint8_t type, const uint8_t data[8]) {
    out[0] = type;
    memcpy(out + 1, data, Q_PATH_DATA);
    return 1 + Q_PATH_DATA;
}

size_t q_enc_session(uint8_t *out, const uint8_t id[16], const uint8_t *token, uint8_t token_len,
                     uint32_t remaining_ms, uint8_t resumed) {
    out[0] = Q_FRAME_SESSION;
    memcpy(out + 1, id, 16);
    out[17] = token_len;
    if (token_len)
        memcpy(out + 18, token, token_len);
    q_put32(out + 18 + token_len, remaining_ms);
    out[22 + token_len] = resumed;
    return 23 + (size_t)token_len;
}

/* ----------------------------------------------------------------------------- helpers */

int q_utf8_valid(const uint8_t *s, size_t len) {
    size_t i = 0;
    while (i < len) {
        uint8_t c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t need;
        uint32_t cp, min;
        if (c >= 0xC2 && c <= 0xDF) {
            need = 1; cp = c & 0x1Fu; min = 0x80;
        } else if (c >= 0xE0 && c <= 0xEF) {
            need = 2; cp = c & 0x0Fu; min = 0x800;
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3; cp = c & 0x07u; min = 0x10000;
        } else {
            return 0;
        }
        if (len - i - 1 < need)
            return 0;
        for (size_t j = 1; j <= need; j++) {
            uint8_t cc = s[i + j];
            if ((cc & 0xC0) != 0x80)
                return 0;
            cp = cp << 6 | (cc & 0x3Fu);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        i += need + 1;
    }
    return 1;
}

int q_buf_reserve(q_buf *b, size_t extra) {
    if (b->cap - b->len >= extra)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->len < extra) {
        if (cap > SIZE_MAX / 2)
            return QUANTUM_E_NOMEM;
        cap *= 2;
    }
    uint8_t *data = realloc(b->data, cap);
    if (!data)
        return QUANTUM_E_NOMEM;
    b->data = data;
    b->cap = cap;
    return 0;
}

size_t q_buf_append(q_buf *b, const void *data, size_t len) {
    if (q_buf_reserve(b, len) != 0)
        return (size_t)-1;
    size_t at = b->len;
    if (len)
        memcpy(b->data + at, data, len);
    b->len += len;
    return at;
}

void q_buf_free(q_buf *b) {
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}
