/* Reading test vectors out of docs/PROTOCOL.md, and hex helpers. */
#include <ctype.h>

#include "test.h"

static int hexval(int ch) {
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

size_t hex_decode(const char *hex, uint8_t *out, size_t cap) {
    size_t n = 0;
    int hi = -1;
    for (; *hex; hex++) {
        int v = hexval((unsigned char)*hex);
        if (v < 0)
            continue;
        if (hi < 0) {
            hi = v;
        } else {
            if (n < cap)
                out[n] = (uint8_t)(hi << 4 | v);
            n++;
            hi = -1;
        }
    }
    return n;
}

void hex_encode(const uint8_t *data, size_t len, char *out) {
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < len; i++) {
        out[2 * i] = digits[data[i] >> 4];
        out[2 * i + 1] = digits[data[i] & 15];
    }
    out[2 * len] = 0;
}

int bytes_equal_hex(const uint8_t *data, size_t len, const char *hex) {
    uint8_t want[4096];
    size_t n = hex_decode(hex, want, sizeof want);
    if (n != len || memcmp(want, data, len) != 0) {
        char got[2 * 600 + 1];
        hex_encode(data, len < 600 ? len : 600, got);
        fprintf(stderr, "    want %s\n    got  %s\n", hex, got);
        return 0;
    }
    return 1;
}

const char *spec_section(const char *heading) {
    size_t n = strlen(heading);
    for (const char *p = q_spec_text; p && *p;) {
        if (strncmp(p, heading, n) == 0) {
            const char *eol = strchr(p, '\n');
            return eol ? eol + 1 : p + strlen(p);
        }
        p = strchr(p, '\n');
        if (p)
            p++;
    }
    return NULL;
}

static int is_hex_text(const char *s, size_t n) {
    size_t digits = 0;
    for (size_t i = 0; i < n; i++) {
        if (isspace((unsigned char)s[i]))
            continue;
        if (hexval((unsigned char)s[i]) < 0)
            return 0;
        digits++;
    }
    return digits > 0 && digits % 2 == 0;
}

int spec_value(const char *section, const char *label, char *out, size_t cap) {
    size_t llen = strlen(label);
    for (const char *p = section; p && *p;) {
        const char *eol = strchr(p, '\n');
        if (!eol)
            eol = p + strlen(p);
        if (strncmp(p, "## ", 3) == 0)
            return -1; /* the next top-level section */
        const char *s = p;
        while (s < eol && *s == ' ')
            s++;
        if ((size_t)(eol - s) > llen && strncmp(s, label, llen) == 0 &&
            isspace((unsigned char)s[llen])) {
            const char *v = s + llen;
            while (v < eol && isspace((unsigned char)*v))
                v++;
            const char *end = v;
            while (end < eol && !isspace((unsigned char)*end))
                end++;
            size_t n = 0;
            if (end > v && (is_hex_text(v, (size_t)(end - v)) || strncmp(v, "SHA256:", 7) == 0)) {
                if ((size_t)(end - v) >= cap)
                    return -1;
                memcpy(out, v, (size_t)(end - v));
                out[end - v] = 0;
                return 0;
            }
            /* a block: the hex lines below the label */
            const char *q = *eol ? eol + 1 : eol;
            int prose = 0; /* a label's description may run on for a line or two */
            while (*q) {
                const char *qe = strchr(q, '\n');
                if (!qe)
                    qe = q + strlen(q);
                int blank = 1;
                for (const char *c = q; c < qe; c++)
                    blank &= isspace((unsigned char)*c) != 0;
                if (blank && n == 0) { /* blank lines between the label and its block */
                    q = *qe ? qe + 1 : qe;
                    continue;
                }
                if (!is_hex_text(q, (size_t)(qe - q))) {
                    if (n == 0 && ++prose <= 3) {
                        q = *qe ? qe + 1 : qe;
                        continue;
                    }
                    break;
                }
                for (const char *c = q; c < qe; c++)
                    if (!isspace((unsigned char)*c)) {
                        if (n + 1 >= cap)
                            return -1;
                        out[n++] = *c;
                    }
                q = *qe ? qe + 1 : qe;
            }
            out[n] = 0;
            return n ? 0 : -1;
        }
        p = *eol ? eol + 1 : NULL;
    }
    return -1;
}

int spec_table(const char *section, void (*fn)(const char *desc, const char *hex, void *ctx),
               void *ctx) {
    int rows = 0;
    for (const char *p = section; p && *p;) {
        const char *eol = strchr(p, '\n');
        if (!eol)
            eol = p + strlen(p);
        if (strncmp(p, "## ", 3) == 0)
            break;
        if (*p == '|') {
            /* | description | `hex` | */
            const char *bar1 = memchr(p + 1, '|', (size_t)(eol - p - 1));
            const char *tick1 = bar1 ? memchr(bar1, '`', (size_t)(eol - bar1)) : NULL;
            const char *tick2 = tick1 ? memchr(tick1 + 1, '`', (size_t)(eol - tick1 - 1)) : NULL;
            if (bar1 && tick1 && tick2 && is_hex_text(tick1 + 1, (size_t)(tick2 - tick1 - 1))) {
                char desc[256], hex[1024];
                const char *d = p + 1;
                while (*d == ' ')
                    d++;
                const char *de = bar1;
                while (de > d && de[-1] == ' ')
                    de--;
                size_t dn = (size_t)(de - d), hn = (size_t)(tick2 - tick1 - 1);
                if (dn < sizeof desc && hn < sizeof hex) {
                    memcpy(desc, d, dn);
                    desc[dn] = 0;
                    memcpy(hex, tick1 + 1, hn);
                    hex[hn] = 0;
                    fn(desc, hex, ctx);
                    rows++;
                }
            }
        }
        p = *eol ? eol + 1 : NULL;
    }
    return rows;
}

/* The end of the top-level section `from` is in: the next "## " heading, or the end. */
static const char *section_end(const char *from) {
    const char *end = strstr(from, "\n## ");
    return end ? end : from + strlen(from);
}

const char *spec_find(const char *from, const char *text) {
    if (!from)
        return NULL;
    const char *hit = strstr(from, text);
    return hit && hit < section_end(from) ? hit : NULL;
}

const char *spec_line(const char *from, const char *prefix) {
    if (!from)
        return NULL;
    const char *end = section_end(from);
    size_t n = strlen(prefix);
    for (const char *p = from; p && p < end;) {
        const char *s = p;
        while (*s == ' ')
            s++;
        if (strncmp(s, prefix, n) == 0)
            return s;
        p = strchr(p, '\n');
        if (p)
            p++;
    }
    return NULL;
}

int spec_block(const char *from, char *out, size_t cap) {
    const char *open = spec_find(from, "```");
    if (!open)
        return -1;
    const char *start = strchr(open, '\n');
    const char *close = start ? strstr(start + 1, "\n```") : NULL;
    if (!close || (size_t)(close - start) >= cap)
        return -1;
    memcpy(out, start + 1, (size_t)(close - start));
    out[close - start] = 0; /* ends with the block's last newline */
    return 0;
}

size_t spec_copy_line(const char *line, char *out, size_t cap) {
    size_t n = 0;
    if (cap == 0)
        return 0;
    out[0] = 0;
    if (!line)
        return 0;
    while (line[n] && line[n] != '\n' && n + 1 < cap) {
        out[n] = line[n];
        n++;
    }
    out[n] = 0;
    return n;
}

size_t hex_run(const char *s, char *out, size_t cap) {
    size_t n = 0;
    while (s && *s && hexval((unsigned char)*s) >= 0 && n + 1 < cap)
        out[n++] = *s++;
    if (cap)
        out[n] = 0;
    return n;
}
