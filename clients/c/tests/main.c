/* The C unit tests: `make check` (argument: the path of docs/PROTOCOL.md). */
#include <stdlib.h>

#include <sodium.h>

#include "test.h"

int q_test_failed_flag;
static int passed, failed;
const char *q_spec_text;

void q_test_fail(const char *file, int line, const char *what) {
    fprintf(stderr, "    %s:%d: CHECK(%s) failed\n", file, line, what);
    q_test_failed_flag = 1;
}

void q_test_run(const char *name, void (*fn)(void)) {
    q_test_failed_flag = 0;
    fn();
    if (q_test_failed_flag) {
        failed++;
        fprintf(stderr, "FAIL %s\n", name);
    } else {
        passed++;
        printf("ok   %s\n", name);
    }
}

static char *read_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (text && fread(text, 1, (size_t)n, f) != (size_t)n) {
        free(text);
        text = NULL;
    }
    if (text)
        text[n] = 0;
    fclose(f);
    return text;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: unit-tests path/to/docs/PROTOCOL.md\n");
        return 2;
    }
    char *spec = read_file(argv[1]);
    if (!spec) {
        fprintf(stderr, "unit-tests: cannot read %s\n", argv[1]);
        return 2;
    }
    if (sodium_init() < 0) {
        fprintf(stderr, "unit-tests: sodium_init failed\n");
        return 2;
    }
    q_spec_text = spec;
    setvbuf(stdout, NULL, _IOLBF, 0);
    run_handshake_vector_tests();
    run_wire_vector_tests();
    run_wire_tests();
    run_reliability_tests();
    run_channel_tests();
    run_fec_tests();
    run_connection_tests();
    run_misc_tests();
    printf("%d passed, %d failed\n", passed, failed);
    free(spec);
    return failed ? 1 : 0;
}
