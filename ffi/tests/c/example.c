/*
 * Using genbuild from C: evaluate a commit of a legacy (default.nix) repository,
 * build it, print how it went.
 *
 *   cargo build --release -p genbuild-ffi
 *   cc -Iffi/include ffi/tests/c/example.c -Ltarget/release -lgenbuild -o example
 *   LD_LIBRARY_PATH=target/release ./example /path/to/repo HOSTNAME COMMIT_ID
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "genbuild.h"

/* Protobuf, just enough of it: finds field `number` in `msg` (wire types 0 and 2). */
static int field(const uint8_t *msg, size_t len, uint32_t number, const uint8_t **data,
                 size_t *data_len) {
  const uint8_t *p = msg, *end = msg + len;
  int found = 0;
  while (p < end) {
    uint64_t key = 0, n = 0;
    for (int s = 0; p < end; s += 7) { key |= (uint64_t)(*p & 0x7f) << s; if (!(*p++ & 0x80)) break; }
    for (int s = 0; p < end; s += 7) { n |= (uint64_t)(*p & 0x7f) << s; if (!(*p++ & 0x80)) break; }
    if ((key & 7) == 2) {
      if (n > (uint64_t)(end - p)) return 0;
      if ((key >> 3) == number) { *data = p; *data_len = (size_t)n; found = 1; }
      p += n;
    } else if ((key & 7) != 0) {
      return 0; /* no other wire type in the messages read here */
    }
  }
  return found;
}

/* Waits for the event `kind` (2: EvalFinished, 4: BuildFinished); prints the
 * generation's status `status_field` (13: eval, 20: build) and error `err_field`. */
static int wait_for(genbuild_builder *b, uint32_t kind, uint32_t status_field, uint32_t err_field) {
  for (;;) {
    genbuild_buffer ev;
    char *err = NULL;
    genbuild_result r = genbuild_next_event(b, 30 * 60 * 1000, &ev, &err);
    if (r != GENBUILD_RESULT_OK) {
      fprintf(stderr, "next_event: %s: %s\n", genbuild_result_name(r), err);
      genbuild_string_free(err);
      return -1;
    }
    const uint8_t *inner, *gen, *s;
    size_t inner_len, gen_len, s_len;
    int done = field(ev.data, ev.len, kind, &inner, &inner_len) &&
               field(inner, inner_len, 1, &gen, &gen_len);
    if (done) {
      int ok = 0;
      if (field(gen, gen_len, status_field, &s, &s_len)) {
        printf("status: %.*s\n", (int)s_len, (const char *)s);
        ok = (s_len == 9 && memcmp(s, "evaluated", 9) == 0) || (s_len == 5 && memcmp(s, "built", 5) == 0);
      }
      if (field(gen, gen_len, err_field, &s, &s_len)) {
        printf("error: %.*s\n", (int)s_len, (const char *)s);
      }
      genbuild_buffer_free(ev);
      return ok ? 0 : -1;
    }
    genbuild_buffer_free(ev); /* another event: EvalStarted, a log line... */
  }
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s REPOSITORY HOSTNAME COMMIT_ID\n", argv[0]);
    return 2;
  }
  genbuild_config cfg = {0}; /* zero: the defaults */
  cfg.executor = GENBUILD_EXECUTOR_KIND_LEGACY;
  cfg.repository_path = argv[1];
  cfg.hostname = argv[2];
  cfg.system_attr = "machine"; /* default.nix: { machine = { toplevel = ...; }; } */

  genbuild_builder *b = NULL;
  char *err = NULL;
  if (genbuild_builder_new(&cfg, &b, &err) != GENBUILD_RESULT_OK) {
    fprintf(stderr, "genbuild_builder_new: %s\n", err);
    genbuild_string_free(err);
    return 1;
  }

  /* A RepositoryStatus holding selected_commit_id (field 1). */
  uint8_t rs[2 + 64];
  size_t id_len = strlen(argv[3]) < 64 ? strlen(argv[3]) : 64;
  rs[0] = 1 << 3 | 2;
  rs[1] = (uint8_t)id_len;
  memcpy(rs + 2, argv[3], id_len);

  char *uuid = NULL;
  int status = 1;
  if (genbuild_eval(b, rs, 2 + id_len, &uuid, &err) != GENBUILD_RESULT_OK) {
    fprintf(stderr, "genbuild_eval: %s\n", err);
    genbuild_string_free(err);
  } else if (printf("generation %s\n", uuid), wait_for(b, 2, 13, 16) == 0) {
    /* Evaluated. (An output already in the store is recorded built right after
     * EvalFinished: the submission is then refused, "the generation is already built".) */
    if (genbuild_submit_build(b, uuid, &err) != GENBUILD_RESULT_OK) {
      fprintf(stderr, "genbuild_submit_build: %s\n", err);
      genbuild_string_free(err);
    } else if (wait_for(b, 4, 20, 23) == 0) {
      status = 0;
    }
  }
  genbuild_string_free(uuid);
  genbuild_builder_destroy(b); /* stops what still runs, joins, frees */
  return status;
}
