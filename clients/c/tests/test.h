/* A minimal test harness: CHECK stops the current test, every test is counted, and the run
 * ends with the line "N passed, M failed" (what CI's log readers look for). */
#ifndef Q_TEST_H
#define Q_TEST_H

#include <stdio.h>
#include <string.h>

#include "common.h"

extern int q_test_failed_flag;
void q_test_fail(const char *file, int line, const char *what);
void q_test_run(const char *name, void (*fn)(void));

#define CHECK(cond)                                                                          \
    do {                                                                                     \
        if (!(cond)) {                                                                       \
            q_test_fail(__FILE__, __LINE__, #cond);                                          \
            return;                                                                          \
        }                                                                                    \
    } while (0)
#define RUN(fn) q_test_run(#fn, fn)

/* hex <-> bytes */
size_t hex_decode(const char *hex, uint8_t *out, size_t cap);
void hex_encode(const uint8_t *data, size_t len, char *out);
int bytes_equal_hex(const uint8_t *data, size_t len, const char *hex);

/* The specification, read at test time (the vectors are never copied into the tests). */
extern const char *q_spec_text;
/* The text after the first line starting with `heading` (NULL if absent). */
const char *spec_section(const char *heading);
/* The value printed after `label` on its line (up to the end of the line, trimmed), or, when
 * that is not hex, the hex lines right below it, concatenated without spaces. 0 or -1. */
int spec_value(const char *section, const char *label, char *out, size_t cap);
/* Table rows of a section: calls fn(description, hex) for each `| desc | `hex` |` row. */
int spec_table(const char *section, void (*fn)(const char *desc, const char *hex, void *ctx),
               void *ctx);

/* Where `text` first occurs at or after `from` within its top-level section; NULL if not. */
const char *spec_find(const char *from, const char *text);
/* The first line at or after `from` (within its top-level section) that starts, after its
 * indentation, with `prefix`: a pointer to that prefix, or NULL. */
const char *spec_line(const char *from, const char *prefix);
/* The text of the first fenced code block (```) at or after `from` in its section, copied
 * into out (NUL-terminated, so spec_value and spec_line read it as a section); 0 or -1. */
int spec_block(const char *from, char *out, size_t cap);
/* The line at `line` up to its end, copied into out; its length. */
size_t spec_copy_line(const char *line, char *out, size_t cap);
/* The run of hex digits at s, copied into out; its length (0: s is not at a hex digit). */
size_t hex_run(const char *s, char *out, size_t cap);

void run_wire_tests(void);
void run_handshake_vector_tests(void);
void run_wire_vector_tests(void);
void run_reliability_tests(void);
void run_channel_tests(void);
void run_fec_tests(void);
void run_connection_tests(void);
void run_misc_tests(void);

#endif
