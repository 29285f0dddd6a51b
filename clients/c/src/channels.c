/* Channels and delivery modes: docs/PROTOCOL.md section 7 (reference: quantum/channels.py). */
#include "channels.h"

#include <stdlib.h>

#include "wire.h"

#define RETRANSMIT_SCAN 16
#define MIN_FRAGMENT 64

/* ================================================================================ send */

q_sender *q_sender_new(void) { return calloc(1, sizeof(q_sender)); }

void q_sender_free(q_sender *s) {
    if (!s)
        return;
    for (q_out_msg *m = s->all, *next; m; m = next) {
        next = m->all_next;
        free(m);
    }
    free(s->retx);
    free(s);
}

void q_sender_release(q_sender *s, q_out_msg *m) {
    if (--m->refs)
        return;
    if (m->all_prev)
        m->all_prev->all_next = m->all_next;
    else
        s->all = m->all_next;
    if (m->all_next)
        m->all_next->all_prev = m->all_prev;
    free(m);
}

int q_sender_queue(q_sender *s, uint8_t channel, uint8_t mode, const void *data, size_t len,
                   uint32_t *id) {
    if (mode > QUANTUM_UNRELIABLE_SEQUENCED || (len && !data))
        return QUANTUM_E_INVALID;
    if (len > QUANTUM_MAX_MESSAGE_SIZE)
        return QUANTUM_E_TOO_LARGE;
    if (len > QUANTUM_MAX_UNRELIABLE && mode >= QUANTUM_UNRELIABLE)
        return QUANTUM_E_TOO_LARGE; /* never fragmented: one packet at the base datagram */
    q_out_msg *m = malloc(sizeof *m + len);
    if (!m)
        return QUANTUM_E_NOMEM;
    uint32_t key = (uint32_t)channel << 2 | mode;
    m->next = NULL;
    m->refs = 1; /* the queue's */
    m->id = s->next_id[key]++;
    m->size = (uint32_t)len;
    m->next_offset = 0;
    m->channel = channel;
    m->mode = mode;
    if (len)
        memcpy(m->data, data, len);
    m->all_prev = NULL;
    m->all_next = s->all;
    if (s->all)
        s->all->all_prev = m;
    s->all = m;
    if (s->head[channel]) {
        s->tail[channel]->next = m;
    } else {
        s->head[channel] = m;
        s->active[(s->active_start + s->active_count) % 256] = channel;
        s->active_count++;
    }
    s->tail[channel] = m;
    s->pending_bytes += len;
    *id = m->id;
    return 0;
}

static void rotate(q_sender *s) {
    uint8_t ch = s->active[s->active_start];
    s->active_start = (s->active_start + 1) % 256;
    s->active[(s->active_start + s->active_count - 1) % 256] = ch;
}

/* The frame of new data m can give in `room` bytes: 1 with *ref filled, 0 if none now. */
static int cut(const q_out_msg *m, size_t room, size_t full_room, q_frag_ref *ref) {
    size_t left = m->size - m->next_offset;
    if (m->next_offset == 0 && Q_MESSAGE_OVERHEAD + left <= room) {
        ref->offset = 0;
        ref->len = (uint16_t)left;
        ref->whole = 1;
        return 1;
    }
    if (m->mode >= QUANTUM_UNRELIABLE ||
        (m->next_offset == 0 && Q_MESSAGE_OVERHEAD + left <= full_room) ||
        room <= Q_FRAGMENT_OVERHEAD)
        return 0; /* wait for a packet with room for it */
    size_t take = q_min_z(left, room - Q_FRAGMENT_OVERHEAD);
    if (take > 0xFFFF)
        take = 0xFFFF;
    if (take < left && take < MIN_FRAGMENT)
        return 0; /* a sliver at the end of a packet costs more than it carries */
    ref->offset = m->next_offset;
    ref->len = (uint16_t)take;
    ref->whole = 0;
    return 1;
}

int q_sender_pop(q_sender *s, size_t room, size_t full_room, q_frag_ref *ref) {
    if (room < Q_MESSAGE_OVERHEAD)
        return 0;
    /* retransmissions first (the same frame again): the oldest that fits, looking at a
     * bounded number. The datagram size never changes here (no PMTU probing), so every
     * frame fits an empty packet again. */
    uint32_t scan = s->retx_len < RETRANSMIT_SCAN ? s->retx_len : RETRANSMIT_SCAN;
    for (uint32_t i = 0; i < scan; i++) {
        uint32_t at = (s->retx_head + i) % s->retx_cap;
        q_frag_ref r = s->retx[at];
        if (q_frag_frame_size(&r) > room)
            continue;
        /* close the gap: shift the entries before it one place towards the tail */
        for (uint32_t j = i; j > 0; j--)
            s->retx[(s->retx_head + j) % s->retx_cap] =
                s->retx[(s->retx_head + j - 1) % s->retx_cap];
        s->retx_head = (s->retx_head + 1) % s->retx_cap;
        s->retx_len--;
        s->pending_bytes -= r.len;
        *ref = r; /* the reference moves from the queue to the caller */
        return 1;
    }
    /* new data: round-robin across channels, one frame per turn */
    for (uint32_t turn = 0; turn < s->active_count;) {
        uint8_t ch = s->active[s->active_start];
        q_out_msg *m = s->head[ch];
        if (m->mode >= QUANTUM_UNRELIABLE && Q_MESSAGE_OVERHEAD + (size_t)m->size > full_room) {
            /* never fits (FEC with k > 16 leaves less than 1024 + 9 bytes): lost, as an
             * unreliable message may be, rather than blocking its channel */
            s->head[ch] = m->next;
            s->pending_bytes -= m->size;
            s->unsendable++;
            q_sender_release(s, m);
            if (!s->head[ch]) {
                s->tail[ch] = NULL;
                s->active_start = (s->active_start + 1) % 256;
                s->active_count--;
            }
            continue;
        }
        if (!cut(m, room, full_room, ref)) {
            rotate(s);
            turn++;
            continue;
        }
        m->refs++; /* the caller's */
        ref->msg = m;
        s->pending_bytes -= ref->len;
        m->next_offset += ref->len;
        if (m->next_offset == m->size) {
            s->head[ch] = m->next;
            q_sender_release(s, m); /* the queue's reference; the caller's keeps it alive */
            if (!s->head[ch]) {
                s->tail[ch] = NULL;
                s->active_start = (s->active_start + 1) % 256;
                s->active_count--;
            } else {
                rotate(s);
            }
        } else {
            rotate(s);
        }
        return 1;
    }
    return 0;
}

int q_sender_requeue(q_sender *s, q_frag_ref ref) {
    if (ref.msg->mode >= QUANTUM_UNRELIABLE) { /* never retransmitted */
        q_sender_release(s, ref.msg);
        return 0;
    }
    if (s->retx_len == s->retx_cap) {
        uint32_t cap = s->retx_cap ? s->retx_cap * 2 : 64;
        q_frag_ref *grown = malloc(cap * sizeof *grown);
        if (!grown) {
            q_sender_release(s, ref.msg);
            return QUANTUM_E_NOMEM;
        }
        for (uint32_t i = 0; i < s->retx_len; i++)
            grown[i] = s->retx[(s->retx_head + i) % s->retx_cap];
        free(s->retx);
        s->retx = grown;
        s->retx_cap = cap;
        s->retx_head = 0;
    }
    s->retx[(s->retx_head + s->retx_len) % s->retx_cap] = ref;
    s->retx_len++;
    s->pending_bytes += ref.len;
    return 0;
}

/* ============================================================================= receive */

/* Receive-side memory is charged against one budget: data bytes plus these approximate
 * bookkeeping costs (a message under reassembly, a received byte range, a complete message
 * waiting for its turn, a delivered-id range), so a peer cannot exhaust memory with many
 * tiny or empty pieces. */
#define PARTIAL_COST 128
#define RANGE_COST 64
#define READY_COST 96

/* A received byte range of a message under reassembly, with its bytes. */
typedef struct chunk {
    uint32_t start, end, cap;
    uint8_t *data;
} chunk;

/* A message under reassembly: the union of received ranges, sorted, disjoint, never
 * adjacent (adjacent ones are merged), so one in-order message is one growing chunk. */
typedef struct partial {
    int64_t id;
    uint32_t total, cost;
    uint32_t n, cap;
    chunk *chunks;
} partial;

typedef struct ready_msg {
    int64_t id;
    uint8_t *data;
    uint32_t len;
} ready_msg;

/* A sorted array of (id, pointer), for the few messages a stream holds at once. */
typedef struct idmap {
    int64_t *ids;
    void **vals;
    uint32_t n, cap;
} idmap;

typedef struct stream {
    uint8_t mode;
    int64_t pos;     /* ordered: next id; unordered: watermark; else the highest id seen */
    idmap partials;  /* reliable modes */
    idmap ready;     /* ordered: complete messages waiting for an earlier one */
    int64_t *starts, *ends; /* unordered: delivered ids above the watermark, [start, end) */
    uint32_t nranges, rcap;
    uint64_t seen[Q_UNRELIABLE_WINDOW / 64]; /* unreliable: bit i = id (highest - i) */
} stream;

struct q_receiver {
    stream *streams[Q_STREAMS];
    size_t budget, buffered;
    uint64_t duplicates, stale, too_old, delivered;
};

static uint32_t idmap_find(const idmap *m, int64_t id) {
    uint32_t lo = 0, hi = m->n;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (m->ids[mid] < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}
static void *idmap_get(const idmap *m, int64_t id) {
    uint32_t i = idmap_find(m, id);
    return i < m->n && m->ids[i] == id ? m->vals[i] : NULL;
}
static int idmap_put(idmap *m, int64_t id, void *val) {
    if (m->n == m->cap) {
        uint32_t cap = m->cap ? m->cap * 2 : 8;
        int64_t *ids = realloc(m->ids, cap * sizeof *ids);
        if (!ids)
            return QUANTUM_E_NOMEM;
        m->ids = ids;
        void **vals = realloc(m->vals, cap * sizeof *vals);
        if (!vals)
            return QUANTUM_E_NOMEM;
        m->vals = vals;
        m->cap = cap;
    }
    uint32_t i = idmap_find(m, id);
    memmove(m->ids + i + 1, m->ids + i, (m->n - i) * sizeof *m->ids);
    memmove(m->vals + i + 1, m->vals + i, (m->n - i) * sizeof *m->vals);
    m->ids[i] = id;
    m->vals[i] = val;
    m->n++;
    return 0;
}
static void *idmap_take(idmap *m, int64_t id) {
    uint32_t i = idmap_find(m, id);
    if (i >= m->n || m->ids[i] != id)
        return NULL;
    void *val = m->vals[i];
    memmove(m->ids + i, m->ids + i + 1, (m->n - i - 1) * sizeof *m->ids);
    memmove(m->vals + i, m->vals + i + 1, (m->n - i - 1) * sizeof *m->vals);
    m->n--;
    return val;
}

static void partial_free(partial *p) {
    if (!p)
        return;
    for (uint32_t i = 0; i < p->n; i++)
        free(p->chunks[i].data);
    free(p->chunks);
    free(p);
}

static void stream_free(stream *s) {
    if (!s)
        return;
    for (uint32_t i = 0; i < s->partials.n; i++)
        partial_free(s->partials.vals[i]);
    for (uint32_t i = 0; i < s->ready.n; i++) {
        ready_msg *r = s->ready.vals[i];
        free(r->data);
        free(r);
    }
    free(s->partials.ids);
    free(s->partials.vals);
    free(s->ready.ids);
    free(s->ready.vals);
    free(s->starts);
    free(s->ends);
    free(s);
}

q_receiver *q_receiver_new(size_t budget) {
    q_receiver *r = calloc(1, sizeof *r);
    if (r)
        r->budget = budget;
    return r;
}

void q_receiver_free(q_receiver *r) {
    if (!r)
        return;
    for (int i = 0; i < Q_STREAMS; i++)
        stream_free(r->streams[i]);
    free(r);
}

uint64_t q_receiver_duplicates(const q_receiver *r) { return r->duplicates; }
uint64_t q_receiver_stale(const q_receiver *r) { return r->stale; }
size_t q_receiver_buffered(const q_receiver *r) { return r->buffered; }

static int charge(q_receiver *r, size_t cost, const char **why) {
    if (r->buffered > r->budget || r->budget - r->buffered < cost) {
        *why = "peer exceeded the receive buffer bound";
        return -1;
    }
    r->buffered += cost;
    return 0;
}

/* The 64-bit position of a wire id relative to a stream position (RFC 1982). */
static int64_t position(int64_t pos, uint32_t id) {
    return pos + q_serial_diff(id, (uint32_t)pos);
}

typedef struct frame_in {
    uint8_t channel, mode, fragment;
    uint32_t id, offset, total;
    uint16_t len;
    const uint8_t *data;
} frame_in;

/* Append bytes to the end of a chunk, growing its buffer by doubling; 0 or E_NOMEM. */
static int chunk_append(chunk *c, const uint8_t *data, uint32_t len) {
    uint32_t have = c->end - c->start;
    if (c->cap - have < len) {
        uint64_t cap = c->cap ? c->cap : 1024;
        while (cap < (uint64_t)have + len)
            cap *= 2;
        if (cap > QUANTUM_MAX_MESSAGE_SIZE)
            cap = QUANTUM_MAX_MESSAGE_SIZE; /* a message is never longer */
        uint8_t *grown = realloc(c->data, (size_t)cap);
        if (!grown)
            return QUANTUM_E_NOMEM;
        c->data = grown;
        c->cap = (uint32_t)cap;
    }
    memcpy(c->data + have, data, len);
    c->end += len;
    return 0;
}

/* Put a piece (a gap's new bytes, or an old chunk whose buffer it takes over) after the
 * chunks in out[0..*n): appended to the last one if adjacent (one range less to pay for),
 * else a chunk of its own. 0 or E_NOMEM. */
static int emit(q_receiver *r, partial *p, chunk *out, uint32_t *n, uint32_t start,
                const uint8_t *bytes, uint32_t len, uint8_t *owned, uint32_t owned_cap) {
    if (*n && out[*n - 1].end == start) {
        int err = chunk_append(&out[*n - 1], bytes, len);
        free(owned);
        if (err)
            return err;
        p->cost -= RANGE_COST;
        r->buffered -= RANGE_COST;
        return 0;
    }
    chunk c = {start, start, 0, NULL};
    if (owned) {
        c.data = owned;
        c.cap = owned_cap;
        c.end = start + len;
    } else if (chunk_append(&c, bytes, len) != 0) {
        return QUANTUM_E_NOMEM;
    }
    out[(*n)++] = c;
    return 0;
}

/* Add the bytes of f to p: only what is not covered yet (the bytes of an offset are always
 * the same, so an overlap keeps what arrived first). 1 if something was new, 0 a duplicate,
 * -1 over budget, E_NOMEM (the message then cannot complete: the caller fails the
 * connection). One pass builds the new range list, merging adjacent ranges. */
static int partial_add(q_receiver *r, partial *p, const frame_in *f, const char **why) {
    uint32_t lo = f->offset, hi = f->offset + f->len;
    /* first the gaps of [lo, hi) between the existing ranges, and what they cost */
    uint32_t gaps = 0, fresh = 0, pos = lo;
    for (uint32_t i = 0; i <= p->n && pos < hi; i++) {
        uint32_t next = i < p->n ? p->chunks[i].start : UINT32_MAX;
        uint32_t end = next < hi ? next : hi;
        if (pos < end) {
            gaps++;
            fresh += end - pos;
        }
        if (i < p->n && p->chunks[i].end > pos)
            pos = p->chunks[i].end;
    }
    if (!gaps) {
        r->duplicates++;
        return 0;
    }
    size_t cost = fresh + (size_t)gaps * RANGE_COST;
    if (charge(r, cost, why) != 0)
        return -1;
    p->cost += (uint32_t)cost;
    chunk *out = malloc(((size_t)p->n + gaps) * sizeof *out);
    if (!out)
        return QUANTUM_E_NOMEM;
    uint32_t n = 0, i = 0;
    int err = 0;
    pos = lo;
    for (; i <= p->n && !err; i++) {
        uint32_t next = i < p->n ? p->chunks[i].start : UINT32_MAX;
        uint32_t end = next < hi ? next : hi;
        if (pos < end) {
            err = emit(r, p, out, &n, pos, f->data + (pos - lo), end - pos, NULL, 0);
            if (err)
                break;
        }
        if (i == p->n)
            break;
        chunk *c = &p->chunks[i];
        if (c->end > pos)
            pos = c->end;
        uint8_t *owned = c->data;
        c->data = NULL; /* owned by out now (or freed by emit) */
        err = emit(r, p, out, &n, c->start, owned, c->end - c->start, owned, c->cap);
    }
    for (; err && i < p->n; i++) /* out of memory midway: keep the rest for partial_free */
        if (p->chunks[i].data)
            out[n++] = p->chunks[i];
    free(p->chunks);
    p->chunks = out;
    p->n = n;
    p->cap = n;
    return err ? QUANTUM_E_NOMEM : 1;
}

/* The whole message if this frame completes it: 1 with *out (malloc'd, or NULL with the
 * frame's own bytes for a whole message), 0 not complete yet (or a duplicate), -1 a
 * violation, E_NOMEM. */
static int complete(q_receiver *r, stream *s, int64_t id, const frame_in *f, uint8_t **out,
                    size_t *out_len, const char **why) {
    partial *p = idmap_get(&s->partials, id);
    if (!f->fragment) {
        /* whole: a late original after its split retransmission makes any partial moot */
        if (p) {
            idmap_take(&s->partials, id);
            r->buffered -= p->cost;
            partial_free(p);
        }
        *out = NULL;
        *out_len = f->len;
        return 1;
    }
    if (!p) {
        if (charge(r, PARTIAL_COST, why) != 0)
            return -1;
        p = calloc(1, sizeof *p);
        if (!p || idmap_put(&s->partials, id, p) != 0) {
            free(p);
            r->buffered -= PARTIAL_COST;
            return QUANTUM_E_NOMEM;
        }
        p->id = id;
        p->total = f->total;
        p->cost = PARTIAL_COST;
    } else if (p->total != f->total) {
        *why = "message total changed between fragments of one message";
        return -1;
    }
    int added = partial_add(r, p, f, why);
    if (added != 1)
        return added;
    if (p->n != 1 || p->chunks[0].start != 0 || p->chunks[0].end != p->total)
        return 0;
    idmap_take(&s->partials, id);
    r->buffered -= p->cost;
    *out = p->chunks[0].data; /* the one chunk is the message */
    *out_len = p->total;
    p->chunks[0].data = NULL;
    partial_free(p);
    return 1;
}

/* A reliable message's fragment: counted as a duplicate if `seen`, else reassembled
 * (complete()'s results). */
static int take(q_receiver *r, stream *s, int64_t id, int seen, const frame_in *f, uint8_t **msg,
                size_t *len, const char **why) {
    if (seen) {
        r->duplicates++;
        return 0;
    }
    return complete(r, s, id, f, msg, len, why);
}

static int on_ordered(q_receiver *r, stream *s, const frame_in *f, q_deliver_fn deliver,
                      void *ctx, const char **why) {
    int64_t next = s->pos, id = position(next, f->id);
    uint8_t *msg;
    size_t len;
    int c = take(r, s, id, id < next || idmap_get(&s->ready, id), f, &msg, &len, why);
    if (c != 1)
        return c;
    if (id != next) { /* early: wait for the ones before it */
        if (charge(r, len + READY_COST, why) != 0) {
            free(msg);
            return -1;
        }
        ready_msg *w = malloc(sizeof *w);
        if (w && !msg && len) {
            msg = malloc(len);
            if (msg)
                memcpy(msg, f->data, len);
        }
        if (!w || (len && !msg) || idmap_put(&s->ready, id, w) != 0) {
            free(w);
            free(msg);
            r->buffered -= len + READY_COST;
            return QUANTUM_E_NOMEM;
        }
        w->id = id;
        w->data = msg;
        w->len = (uint32_t)len;
        return 0;
    }
    int e = deliver(ctx, f->channel, QUANTUM_RELIABLE_ORDERED, msg ? msg : f->data, len, msg);
    r->delivered++;
    next++;
    while (e == 0 && s->ready.n && s->ready.ids[0] == next) {
        ready_msg *w = idmap_take(&s->ready, next);
        r->buffered -= w->len + READY_COST;
        e = deliver(ctx, f->channel, QUANTUM_RELIABLE_ORDERED, w->data, w->len, w->data);
        free(w);
        r->delivered++;
        next++;
    }
    s->pos = next;
    return e;
}

/* The index of the first delivered range starting above id. */
static uint32_t first_above(const stream *s, int64_t id) {
    uint32_t lo = 0, hi = s->nranges;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (s->starts[mid] <= id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static int mark_delivered(q_receiver *r, stream *s, int64_t id, const char **why) {
    uint32_t i = first_above(s, id);
    int joins_left = i > 0 && s->ends[i - 1] == id;
    int joins_right = i < s->nranges && s->starts[i] == id + 1;
    if (joins_left && joins_right) {
        s->ends[i - 1] = s->ends[i];
        memmove(s->starts + i, s->starts + i + 1, (s->nranges - i - 1) * sizeof *s->starts);
        memmove(s->ends + i, s->ends + i + 1, (s->nranges - i - 1) * sizeof *s->ends);
        s->nranges--;
        r->buffered -= RANGE_COST;
    } else if (joins_left) {
        s->ends[i - 1] = id + 1;
    } else if (joins_right) {
        s->starts[i] = id;
    } else {
        if (charge(r, RANGE_COST, why) != 0)
            return -1;
        if (s->nranges == s->rcap) {
            uint32_t cap = s->rcap ? s->rcap * 2 : 8;
            int64_t *st = realloc(s->starts, cap * sizeof *st);
            if (st)
                s->starts = st;
            int64_t *en = st ? realloc(s->ends, cap * sizeof *en) : NULL;
            if (!st || !en) {
                r->buffered -= RANGE_COST;
                return QUANTUM_E_NOMEM;
            }
            s->ends = en;
            s->rcap = cap;
        }
        memmove(s->starts + i + 1, s->starts + i, (s->nranges - i) * sizeof *s->starts);
        memmove(s->ends + i + 1, s->ends + i, (s->nranges - i) * sizeof *s->ends);
        s->starts[i] = id;
        s->ends[i] = id + 1;
        s->nranges++;
    }
    return 0;
}

static int on_unordered(q_receiver *r, stream *s, const frame_in *f, q_deliver_fn deliver,
                        void *ctx, const char **why) {
    int64_t watermark = s->pos, id = position(watermark, f->id);
    if (id < watermark) {
        r->duplicates++;
        return 0;
    }
    uint32_t i = first_above(s, id);
    uint8_t *msg;
    size_t len;
    int c = take(r, s, id, i > 0 && id < s->ends[i - 1], f, &msg, &len, why);
    if (c != 1)
        return c;
    if (id == watermark) {
        watermark++;
        if (s->nranges && s->starts[0] == watermark) {
            watermark = s->ends[0];
            memmove(s->starts, s->starts + 1, (s->nranges - 1) * sizeof *s->starts);
            memmove(s->ends, s->ends + 1, (s->nranges - 1) * sizeof *s->ends);
            s->nranges--;
            r->buffered -= RANGE_COST;
        }
        s->pos = watermark;
    } else {
        int e = mark_delivered(r, s, id, why);
        if (e != 0) {
            free(msg);
            return e;
        }
    }
    r->delivered++;
    return deliver(ctx, f->channel, QUANTUM_RELIABLE_UNORDERED, msg ? msg : f->data, len, msg);
}

static int seen_test(const stream *s, uint64_t offset) {
    return (int)((s->seen[offset / 64] >> (offset % 64)) & 1u);
}
static void seen_set(stream *s, uint64_t offset) { s->seen[offset / 64] |= 1ull << (offset % 64); }
/* Shift the window by `shift` newer ids (bit 0 = the newest). */
static void seen_shift(stream *s, uint64_t shift) {
    const int words = Q_UNRELIABLE_WINDOW / 64;
    if (shift >= Q_UNRELIABLE_WINDOW) {
        memset(s->seen, 0, sizeof s->seen);
        return;
    }
    int w = (int)(shift / 64), b = (int)(shift % 64);
    for (int i = words - 1; i >= 0; i--) {
        uint64_t v = 0;
        if (i - w >= 0) {
            v = s->seen[i - w] << b;
            if (b && i - w - 1 >= 0)
                v |= s->seen[i - w - 1] >> (64 - b);
        }
        s->seen[i] = v;
    }
}

static int on_unreliable(q_receiver *r, stream *s, const frame_in *f, q_deliver_fn deliver,
                         void *ctx) {
    int64_t highest = s->pos, id = position(highest, f->id);
    if (id > highest) {
        seen_shift(s, (uint64_t)(id - highest));
        seen_set(s, 0);
        s->pos = id;
    } else {
        uint64_t offset = (uint64_t)(highest - id);
        if (offset >= Q_UNRELIABLE_WINDOW) {
            r->too_old++;
            return 0;
        }
        if (seen_test(s, offset)) {
            r->duplicates++;
            return 0;
        }
        seen_set(s, offset);
    }
    r->delivered++;
    return deliver(ctx, f->channel, QUANTUM_UNRELIABLE, f->data, f->len, NULL);
}

static int on_sequenced(q_receiver *r, stream *s, const frame_in *f, q_deliver_fn deliver,
                        void *ctx) {
    int64_t highest = s->pos, id = position(highest, f->id);
    if (id <= highest) {
        if (id == highest)
            r->duplicates++;
        else
            r->stale++;
        return 0;
    }
    s->pos = id;
    r->delivered++;
    return deliver(ctx, f->channel, QUANTUM_UNRELIABLE_SEQUENCED, f->data, f->len, NULL);
}

int q_receiver_on_frame(q_receiver *r, uint8_t channel, uint8_t mode, uint32_t id,
                        int fragment, uint32_t offset, uint32_t total, const uint8_t *data,
                        uint16_t len, q_deliver_fn deliver, void *ctx, const char **why) {
    if (mode > QUANTUM_UNRELIABLE_SEQUENCED) {
        *why = "unknown delivery mode";
        return -1;
    }
    if (fragment && (mode >= QUANTUM_UNRELIABLE || len < 1 || total > QUANTUM_MAX_MESSAGE_SIZE ||
                     offset > total || total - offset < len)) {
        *why = "malformed message fragment";
        return -1;
    }
    uint32_t key = (uint32_t)channel << 2 | mode;
    stream *s = r->streams[key];
    if (!s) {
        s = calloc(1, sizeof *s);
        if (!s)
            return QUANTUM_E_NOMEM;
        s->mode = mode;
        /* ids start at 0; the unreliable modes track the highest seen, "one before" at first,
         * with every id before the stream counted as seen */
        s->pos = mode >= QUANTUM_UNRELIABLE ? -1 : 0;
        if (mode == QUANTUM_UNRELIABLE)
            memset(s->seen, 0xFF, sizeof s->seen);
        r->streams[key] = s;
    }
    frame_in f = {channel, mode, (uint8_t)(fragment != 0), id, fragment ? offset : 0,
                  fragment ? total : len, len, data};
    switch (mode) {
    case QUANTUM_RELIABLE_ORDERED:
        return on_ordered(r, s, &f, deliver, ctx, why);
    case QUANTUM_RELIABLE_UNORDERED:
        return on_unordered(r, s, &f, deliver, ctx, why);
    default:
        return mode == QUANTUM_UNRELIABLE ? on_unreliable(r, s, &f, deliver, ctx)
                                          : on_sequenced(r, s, &f, deliver, ctx);
    }
}
