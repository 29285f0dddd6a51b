/* Reed-Solomon FEC compatible with zfec: docs/PROTOCOL.md section 9 (reference:
 * quantum/fec.py). The code is zfec's: GF(2^8) with the polynomial x^8 + x^4 + x^3 + x^2 + 1,
 * a Vandermonde matrix on the points 0, 1, alpha, alpha^2, ... made systematic by
 * multiplying with the inverse of its top k x k square. Any inverse of that square is the
 * inverse, so plain Gauss-Jordan elimination gives zfec's exact parity. */
#include "fec.h"

#include <stdlib.h>

void q_gf_init(q_gf *gf) {
    unsigned x = 1;
    for (int i = 0; i < 255; i++) {
        gf->exp[i] = (uint8_t)x;
        gf->log[x] = (uint8_t)i;
        x <<= 1;
        if (x & 0x100)
            x ^= 0x11D;
    }
    for (int i = 255; i < 510; i++)
        gf->exp[i] = gf->exp[i - 255];
    gf->log[0] = 0; /* never used: products with 0 are special-cased */
}

static uint8_t gf_mul(const q_gf *gf, uint8_t a, uint8_t b) {
    if (!a || !b)
        return 0;
    return gf->exp[gf->log[a] + gf->log[b]];
}

static uint8_t gf_inv(const q_gf *gf, uint8_t a) { return gf->exp[255 - gf->log[a]]; }

/* dst ^= c * src over n bytes */
static void addmul(const q_gf *gf, uint8_t *dst, const uint8_t *src, uint8_t c, size_t n) {
    if (!c)
        return;
    uint8_t table[256];
    for (int v = 0; v < 256; v++)
        table[v] = gf_mul(gf, (uint8_t)v, c);
    for (size_t i = 0; i < n; i++)
        dst[i] ^= table[src[i]];
}

/* Invert the n x n matrix a (row-major) into inv; 0, or -1 if singular. a is destroyed. */
static int invert(const q_gf *gf, uint8_t *a, uint8_t *inv, int n) {
    memset(inv, 0, (size_t)n * n);
    for (int i = 0; i < n; i++)
        inv[i * n + i] = 1;
    for (int col = 0; col < n; col++) {
        int pivot = -1;
        for (int r = col; r < n; r++)
            if (a[r * n + col]) {
                pivot = r;
                break;
            }
        if (pivot < 0)
            return -1;
        if (pivot != col) {
            for (int j = 0; j < n; j++) {
                uint8_t t = a[col * n + j];
                a[col * n + j] = a[pivot * n + j];
                a[pivot * n + j] = t;
                t = inv[col * n + j];
                inv[col * n + j] = inv[pivot * n + j];
                inv[pivot * n + j] = t;
            }
        }
        uint8_t scale = gf_inv(gf, a[col * n + col]);
        for (int j = 0; j < n; j++) {
            a[col * n + j] = gf_mul(gf, a[col * n + j], scale);
            inv[col * n + j] = gf_mul(gf, inv[col * n + j], scale);
        }
        for (int r = 0; r < n; r++) {
            uint8_t f = a[r * n + col];
            if (r == col || !f)
                continue;
            for (int j = 0; j < n; j++) {
                a[r * n + j] ^= gf_mul(gf, f, a[col * n + j]);
                inv[r * n + j] ^= gf_mul(gf, f, inv[col * n + j]);
            }
        }
    }
    return 0;
}

/* Row r (0-based) of zfec's n x k Vandermonde matrix: row 0 is (1, 0, ..., 0) (the point 0),
 * row r >= 1 is alpha^((r-1) * c). */
static void vandermonde_row(const q_gf *gf, int r, int k, uint8_t *out) {
    for (int c = 0; c < k; c++)
        out[c] = r == 0 ? (uint8_t)(c == 0) : gf->exp[((r - 1) * c) % 255];
}

int q_fec_parity_rows(const q_gf *gf, int k, int m, uint8_t *rows) {
    if (k < 1 || k > Q_FEC_MAX_K || m < 1 || m > Q_FEC_MAX_M)
        return QUANTUM_E_INVALID;
    uint8_t top[Q_FEC_MAX_K * Q_FEC_MAX_K], inv[Q_FEC_MAX_K * Q_FEC_MAX_K], row[Q_FEC_MAX_K];
    for (int r = 0; r < k; r++)
        vandermonde_row(gf, r, k, top + r * k);
    if (invert(gf, top, inv, k) != 0)
        return QUANTUM_E_INVALID; /* cannot happen: the points are distinct */
    for (int i = 0; i < m; i++) {
        vandermonde_row(gf, k + i, k, row);
        for (int j = 0; j < k; j++) {
            uint8_t acc = 0;
            for (int l = 0; l < k; l++)
                acc ^= gf_mul(gf, row[l], inv[l * k + j]);
            rows[i * k + j] = acc;
        }
    }
    return 0;
}

void q_fec_encode_blocks(const q_gf *gf, const uint8_t *rows, int k, int m,
                         const uint8_t *const *data, size_t size, uint8_t *const *parity) {
    for (int i = 0; i < m; i++) {
        memset(parity[i], 0, size);
        for (int j = 0; j < k; j++)
            addmul(gf, parity[i], data[j], rows[i * k + j], size);
    }
}

int quantum_fec_encode(int k, int m, const uint8_t *const *data, size_t block_size,
                       uint8_t *const *parity) {
    if (!data || !parity || k < 1 || k > Q_FEC_MAX_K || m < 1 || m > Q_FEC_MAX_M)
        return QUANTUM_E_INVALID;
    q_gf gf;
    q_gf_init(&gf);
    uint8_t rows[Q_FEC_MAX_M * Q_FEC_MAX_K];
    int r = q_fec_parity_rows(&gf, k, m, rows);
    if (r == 0)
        q_fec_encode_blocks(&gf, rows, k, m, data, block_size, parity);
    return r;
}

/* ---------------------------------------------------------------------------- encoder */

q_fec_encoder *q_fec_encoder_new(int k, int m) {
    if (k < 1 || k > Q_FEC_MAX_K || m < 1 || m > Q_FEC_MAX_M)
        return NULL;
    q_fec_encoder *e = malloc(sizeof *e);
    if (!e)
        return NULL;
    /* the buffers need no clearing, but every counter does, including those laid out after
     * them (the parity queue, the cached matrix's shape): malloc may hand back a freed
     * encoder's memory, and a stale out_next < out_count sent a garbage parity packet */
    memset(e, 0, offsetof(q_fec_encoder, payloads));
    e->out_count = e->out_next = e->out_k = 0;
    e->out_group = 0;
    e->out_size = 0;
    e->rows_k = e->rows_m = 0;
    q_gf_init(&e->gf);
    e->k = k;
    e->m = m;
    return e;
}

int q_fec_partial_parity(int k, int m, int count) {
    int p = (m * count + k - 1) / k + 1;
    return p < m ? p : m;
}

static void close_group(q_fec_encoder *e, int m) {
    int k = e->pending;
    size_t size = 0;
    for (int i = 0; i < k; i++)
        if (e->lens[i] > size)
            size = e->lens[i];
    size += 2;
    const uint8_t *blocks[Q_FEC_MAX_K];
    uint8_t *parity[Q_FEC_MAX_M];
    for (int i = 0; i < k; i++) {
        /* data block: u16 length || payload || zeros up to the longest (9) */
        memset(e->payloads[i] + 2 + e->lens[i], 0, size - 2 - e->lens[i]);
        blocks[i] = e->payloads[i];
        e->out_seqs[i] = (uint32_t)e->pns[i];
    }
    for (int i = 0; i < m; i++)
        parity[i] = e->shards[i];
    if (e->rows_k != k || e->rows_m != m) {
        q_fec_parity_rows(&e->gf, k, m, e->rows);
        e->rows_k = k;
        e->rows_m = m;
    }
    q_fec_encode_blocks(&e->gf, e->rows, k, m, blocks, size, parity);
    e->out_group = e->next_group++;
    e->out_k = k;
    e->out_count = m;
    e->out_next = 0;
    e->out_size = (uint16_t)size;
    e->pending = 0;
}

void q_fec_encoder_add(q_fec_encoder *e, uint64_t pn, const uint8_t *payload, size_t len) {
    int i = e->pending++;
    e->pns[i] = pn;
    e->lens[i] = (uint16_t)len;
    q_put16(e->payloads[i], (uint32_t)len);
    memcpy(e->payloads[i] + 2, payload, len);
    if (e->pending == e->k)
        close_group(e, e->m);
}

void q_fec_encoder_flush(q_fec_encoder *e) {
    if (e->pending)
        close_group(e, q_fec_partial_parity(e->k, e->m, e->pending));
}

/* ---------------------------------------------------------------------------- decoder */

q_fec_decoder *q_fec_decoder_new(void) {
    q_fec_decoder *d = calloc(1, sizeof *d);
    if (d)
        q_gf_init(&d->gf);
    return d;
}

void q_fec_decoder_free(q_fec_decoder *d) {
    if (!d)
        return;
    for (int i = 0; i < Q_FEC_GROUPS; i++)
        free(d->groups[i].parity);
    free(d);
}

static int cached(const q_fec_decoder *d, uint64_t pn) {
    return d->cache[pn % Q_FEC_CACHE].pn == pn && pn != 0;
}

static void close_fec_group(q_fec_group *g) {
    g->done = 1;
    g->have_parity = 0;
}

static int try_recover(q_fec_decoder *d, q_fec_group *g, const char **why) {
    int k = g->k, have = 0;
    for (int i = 0; i < k; i++)
        have += cached(d, g->pns[i]);
    if (have == k) {
        close_fec_group(g);
        return 0;
    }
    int nparity = 0;
    for (uint32_t bits = g->have_parity; bits; bits &= bits - 1)
        nparity++;
    if (have + nparity < k)
        return 0;
    if (d->out_len + (k - have) > Q_FEC_RECOVERED)
        return 0; /* the queue is full: give up on this group rather than grow */
    /* k known blocks: the data we have, then parity; their encoding rows; invert */
    uint8_t mat[Q_FEC_MAX_K * Q_FEC_MAX_K], inv[Q_FEC_MAX_K * Q_FEC_MAX_K];
    uint8_t rows[Q_FEC_MAX_M * Q_FEC_MAX_K];
    uint8_t padded[Q_FEC_MAX_K][Q_FEC_SHARD_MAX];
    const uint8_t *blocks[Q_FEC_MAX_K];
    q_fec_parity_rows(&d->gf, k, g->m, rows);
    int n = 0;
    for (int i = 0; i < k && n < k; i++) {
        if (!cached(d, g->pns[i]))
            continue;
        const uint8_t *payload = d->cache[g->pns[i] % Q_FEC_CACHE].data;
        uint16_t len = d->cache[g->pns[i] % Q_FEC_CACHE].len;
        q_put16(padded[n], len);
        memcpy(padded[n] + 2, payload, len);
        memset(padded[n] + 2 + len, 0, g->size - 2 - len);
        blocks[n] = padded[n];
        memset(mat + n * k, 0, (size_t)k);
        mat[n * k + i] = 1;
        n++;
    }
    for (int p = 0; p < g->m && n < k; p++) {
        if (!(g->have_parity >> p & 1))
            continue;
        blocks[n] = g->parity + (size_t)p * Q_FEC_SHARD_MAX;
        memcpy(mat + n * k, rows + p * k, (size_t)k);
        n++;
    }
    if (invert(&d->gf, mat, inv, k) != 0) {
        close_fec_group(g);
        return 0;
    }
    for (int i = 0; i < k; i++) {
        if (cached(d, g->pns[i]))
            continue;
        uint8_t block[Q_FEC_SHARD_MAX];
        memset(block, 0, g->size);
        for (int r = 0; r < k; r++)
            addmul(&d->gf, block, blocks[r], inv[i * k + r], g->size);
        uint16_t len = q_get16(block);
        if ((size_t)len + 2 > g->size) {
            *why = "a recovered packet's length prefix exceeds its FEC shard";
            return -1;
        }
        q_fec_recovered *out = &d->out[(d->out_head + d->out_len) % Q_FEC_RECOVERED];
        out->pn = g->pns[i];
        out->len = len;
        memcpy(out->data, block + 2, len);
        d->out_len++;
        d->recovered++;
    }
    close_fec_group(g);
    return 0;
}

int q_fec_on_data(q_fec_decoder *d, uint64_t pn, const uint8_t *payload, size_t len,
                  const char **why) {
    if (cached(d, pn) || len > Q_MAX_PAYLOAD)
        return 0;
    d->cache[pn % Q_FEC_CACHE].pn = pn;
    d->cache[pn % Q_FEC_CACHE].len = (uint16_t)len;
    memcpy(d->cache[pn % Q_FEC_CACHE].data, payload, len);
    for (int gi = 0; gi < Q_FEC_GROUPS; gi++) {
        q_fec_group *g = &d->groups[gi];
        if (!g->used || g->done)
            continue;
        for (int i = 0; i < g->k; i++) {
            if (g->pns[i] != pn)
                continue;
            if (len + 2 > g->size) {
                *why = "a packet is longer than its FEC group's shards hold";
                return -1;
            }
            if (try_recover(d, g, why) != 0)
                return -1;
            break;
        }
    }
    return 0;
}

static q_fec_group *open_group(q_fec_decoder *d, uint32_t gid) {
    q_fec_group *slot = NULL, *oldest = NULL;
    for (int i = 0; i < Q_FEC_GROUPS; i++) {
        q_fec_group *g = &d->groups[i];
        if (!g->used) {
            slot = g;
            break;
        }
        if (!oldest || g->gid < oldest->gid)
            oldest = g;
    }
    if (!slot) {
        if (gid < oldest->gid)
            return NULL; /* older than everything kept: as good as forgotten */
        d->floor = oldest->gid + 1;
        d->has_floor = 1;
        slot = oldest;
    }
    if (!slot->parity) {
        slot->parity = malloc((size_t)Q_FEC_MAX_M * Q_FEC_SHARD_MAX);
        if (!slot->parity)
            return NULL;
    }
    slot->used = 1;
    slot->done = 0;
    slot->gid = gid;
    slot->have_parity = 0;
    return slot;
}

int q_fec_on_parity(q_fec_decoder *d, uint32_t gid, int m, int index, const uint64_t *pns,
                    int k, const uint8_t *shard, size_t len, const char **why) {
    if (k < 1 || k > Q_FEC_MAX_K || m < 1 || m > Q_FEC_MAX_M || index < 0 || index >= m) {
        *why = "parity shard with k or m out of range";
        return -1;
    }
    for (int i = 0; i < k; i++)
        for (int j = 0; j < i; j++)
            if (pns[i] == pns[j]) {
                *why = "parity shard names a packet twice";
                return -1;
            }
    if (len < 2 || len > Q_FEC_SHARD_MAX) {
        *why = "parity shard shorter than a length prefix";
        return -1;
    }
    if (d->has_floor && gid < d->floor)
        return 0;
    q_fec_group *g = NULL;
    for (int i = 0; i < Q_FEC_GROUPS; i++)
        if (d->groups[i].used && d->groups[i].gid == gid)
            g = &d->groups[i];
    if (!g) {
        g = open_group(d, gid);
        if (!g)
            return 0;
        g->k = k;
        g->m = m;
        g->size = (uint16_t)len;
        memcpy(g->pns, pns, (size_t)k * sizeof *pns);
        for (int i = 0; i < k; i++)
            if (cached(d, pns[i]) && (size_t)d->cache[pns[i] % Q_FEC_CACHE].len + 2 > len) {
                *why = "a packet is longer than its FEC group's shards hold";
                return -1;
            }
    } else if (g->k != k || g->m != m || g->size != len ||
               memcmp(g->pns, pns, (size_t)k * sizeof *pns) != 0) {
        *why = "parity shard contradicts the rest of its group";
        return -1;
    }
    if (g->done || (g->have_parity >> index & 1))
        return 0;
    memcpy(g->parity + (size_t)index * Q_FEC_SHARD_MAX, shard, len);
    g->have_parity |= 1u << index;
    return try_recover(d, g, why);
}

int q_fec_next_recovered(q_fec_decoder *d, q_fec_recovered *out) {
    if (!d || d->out_len == 0)
        return 0;
    *out = d->out[d->out_head];
    d->out_head = (d->out_head + 1) % Q_FEC_RECOVERED;
    d->out_len--;
    return 1;
}
