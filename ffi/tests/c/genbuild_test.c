/*
 * The C ABI against real Nix: every entry point, its errors, and a full
 * eval -> build -> suspend -> resume -> stop cycle on a temporary git repository,
 * then two threads stopping at once a build that ignores SIGTERM while a third waits
 * in genbuild_next_event.
 *
 * Run by `cargo test -p genbuild-ffi --test c` (ffi/tests/c.rs), which compiles it
 * with -Wall -Wextra -Werror, and under valgrind by ffi/tests/c/valgrind.sh.
 *
 * usage: genbuild_test NONCE
 * NONCE (digits) goes into the derivations, whose builders sleep as `sleep 300.NONCE`;
 * the program looks for processes carrying that in /proc after every stop (the
 * bare nonce is also in the command lines of this program and whatever started it).
 * Exit status 0 when every check passed.
 *
 * The program makes itself a child subreaper: a process the builder started and
 * failed to kill would be re-parented here, and the last check finds it.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif
#include <sched.h>

#include "genbuild.h"

/* Bound on every wait: only there to turn a hang into a failure. */
#define WAIT_MS 120000
/* Bound on the whole program, for the waits that have none (UINT64_MAX). */
#define WATCHDOG_S 1200
/* A process SIGKILLed a moment ago may still be on its way out: how long a check for
 * leftovers waits for it. The build stopped below lives a second or more after
 * SIGTERM, so a stop that returns early is still caught. */
#define SETTLE_MS 250

static genbuild_builder *g_builder;
static char g_dir[64];

static void cleanup(void) {
  genbuild_builder_destroy(g_builder);
  g_builder = NULL;
  if (g_dir[0] != '\0') {
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    if (system(cmd) != 0) {
      fprintf(stderr, "cannot remove %s\n", g_dir);
    }
    g_dir[0] = '\0';
  }
}

__attribute__((noreturn, format(printf, 1, 2))) static void fail(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stdout, "FAIL: ");
  vfprintf(stdout, fmt, ap);
  fprintf(stdout, "\n");
  va_end(ap);
  cleanup();
  exit(1);
}

#define CHECK(cond, ...)                                                      \
  do {                                                                        \
    if (!(cond)) {                                                            \
      fprintf(stdout, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      fail(__VA_ARGS__);                                                      \
    }                                                                         \
  } while (0)

/* Checks that a call returned `want`, with a message containing `needle` (when not
 * NULL) unless the call succeeded; frees the message. */
static void expect(const char *what, genbuild_result got, char **errp, genbuild_result want,
                   const char *needle) {
  /* `errp`, not the message: arguments are evaluated in no fixed order, so the call
   * must have stored the message before it is read here. */
  char *err = *errp;
  *errp = NULL;
  if (got != want) {
    fail("%s: got %s (%s), want %s", what, genbuild_result_name(got), err ? err : "no message",
         genbuild_result_name(want));
  }
  if (want == GENBUILD_RESULT_OK && err != NULL) {
    fail("%s: OK with a message: %s", what, err);
  }
  if (want != GENBUILD_RESULT_OK && err == NULL) {
    fail("%s: %s without a message", what, genbuild_result_name(got));
  }
  if (needle != NULL && (err == NULL || strstr(err, needle) == NULL)) {
    fail("%s: message %s does not contain \"%s\"", what, err ? err : "(none)", needle);
  }
  printf("ok   %s -> %s%s%s\n", what, genbuild_result_name(got), err ? ": " : "", err ? err : "");
  genbuild_string_free(err);
}

/* ---- a protobuf walker: varints and length-delimited fields, nothing more ---- */

typedef struct {
  const uint8_t *data;
  size_t len;
} slice;

static int read_varint(const uint8_t **p, const uint8_t *end, uint64_t *out) {
  uint64_t v = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (*p >= end) {
      return 0;
    }
    uint8_t b = *(*p)++;
    v |= (uint64_t)(b & 0x7f) << shift;
    if ((b & 0x80) == 0) {
      *out = v;
      return 1;
    }
  }
  return 0;
}

/* The last occurrence of field `number` of `msg` (proto3: last one wins). Wire type
 * 2 gives its bytes in `*bytes`, wire type 0 its value in `*varint`. Returns 1 when
 * found, 0 when absent; fails the test on malformed input. */
static int pb_field(slice msg, uint32_t number, slice *bytes, uint64_t *varint) {
  const uint8_t *p = msg.data, *end = msg.data + msg.len;
  int found = 0;
  while (p < end) {
    uint64_t key, n;
    CHECK(read_varint(&p, end, &key), "malformed key");
    switch (key & 7) {
    case 0:
      CHECK(read_varint(&p, end, &n), "malformed varint");
      if ((key >> 3) == number && varint != NULL) {
        *varint = n;
        found = 1;
      }
      break;
    case 1:
      CHECK(end - p >= 8, "truncated fixed64");
      p += 8;
      break;
    case 2:
      CHECK(read_varint(&p, end, &n) && n <= (uint64_t)(end - p), "malformed length");
      if ((key >> 3) == number && bytes != NULL) {
        bytes->data = p;
        bytes->len = (size_t)n;
        found = 1;
      }
      p += n;
      break;
    case 5:
      CHECK(end - p >= 4, "truncated fixed32");
      p += 4;
      break;
    default:
      fail("unsupported wire type %u", (unsigned)(key & 7));
    }
  }
  return found;
}

static slice pb_message(slice msg, uint32_t number) {
  slice s = {NULL, 0};
  pb_field(msg, number, &s, NULL);
  return s;
}

/* A string field copied into a static ring of buffers; "" when absent. */
static const char *pb_string(slice msg, uint32_t number) {
  static char ring[8][4096];
  static int next;
  char *out = ring[next++ % 8];
  slice s = {NULL, 0};
  pb_field(msg, number, &s, NULL);
  size_t n = s.len < sizeof ring[0] - 1 ? s.len : sizeof ring[0] - 1;
  if (n > 0) {
    memcpy(out, s.data, n);
  }
  out[n] = '\0';
  return out;
}

/* A google.protobuf.BoolValue field: its field 1. */
static int pb_bool_value(slice msg, uint32_t number) {
  uint64_t v = 0;
  pb_field(pb_message(msg, number), 1, NULL, &v);
  return v != 0;
}

static void put_varint(uint8_t *buf, size_t *len, uint64_t v) {
  do {
    uint8_t b = v & 0x7f;
    v >>= 7;
    buf[(*len)++] = b | (v ? 0x80 : 0);
  } while (v);
}

static void put_string(uint8_t *buf, size_t *len, uint32_t number, const char *s) {
  put_varint(buf, len, (uint64_t)number << 3 | 2);
  put_varint(buf, len, strlen(s));
  memcpy(buf + *len, s, strlen(s));
  *len += strlen(s);
}

/* ---- events ---- */

/* The kinds of an Event, by field number (genbuild_next_event's documentation). */
enum {
  EVAL_STARTED = 1,
  EVAL_FINISHED = 2,
  BUILD_STARTED = 3,
  BUILD_FINISHED = 4,
  LOG_LINE = 16,
  BUILD_PROGRESS = 17
};

static const char *kind_name(int kind) {
  switch (kind) {
  case EVAL_STARTED: return "EvalStarted";
  case EVAL_FINISHED: return "EvalFinished";
  case BUILD_STARTED: return "BuildStarted";
  case BUILD_FINISHED: return "BuildFinished";
  case LOG_LINE: return "LogLine";
  case BUILD_PROGRESS: return "BuildProgress";
  default: return "?";
  }
}

typedef struct {
  int kind;
  char uuid[64];
  char eval_status[32];
  char build_status[32];
  char build_reason[64];
  char eval_err[1024];
  char build_err[1024];
  char out_path[512];
  char drv_path[512];
  char line[1024];     /* LogLine */
  char line_drv[512];  /* LogLine: the derivation that printed it, or "" */
  uint64_t done;       /* BuildProgress */
  uint64_t expected;   /* BuildProgress */
} event;

static int g_log_lines;

/* Decodes an Event; the generation's fields for lifecycle events. */
static void decode_event(genbuild_buffer buf, event *ev) {
  slice msg = {buf.data, buf.len};
  memset(ev, 0, sizeof *ev);
  const int kinds[] = {EVAL_STARTED,   EVAL_FINISHED, BUILD_STARTED,
                       BUILD_FINISHED, LOG_LINE,      BUILD_PROGRESS};
  slice inner = {NULL, 0};
  for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
    if (pb_field(msg, (uint32_t)kinds[i], &inner, NULL)) {
      ev->kind = kinds[i];
    }
  }
  CHECK(ev->kind != 0, "an event of no known kind (%zu bytes)", buf.len);
  CHECK(pb_field(msg, 15, &(slice){NULL, 0}, NULL), "an event without created_at");
  if (ev->kind == LOG_LINE) {
    snprintf(ev->uuid, sizeof ev->uuid, "%s", pb_string(inner, 1));
    snprintf(ev->line, sizeof ev->line, "%s", pb_string(inner, 4));
    snprintf(ev->line_drv, sizeof ev->line_drv, "%s", pb_string(inner, 6));
    return;
  }
  if (ev->kind == BUILD_PROGRESS) {
    snprintf(ev->uuid, sizeof ev->uuid, "%s", pb_string(inner, 1));
    pb_field(inner, 2, NULL, &ev->done);
    pb_field(inner, 3, NULL, &ev->expected);
    return;
  }
  slice g = pb_message(inner, 1);
  snprintf(ev->uuid, sizeof ev->uuid, "%s", pb_string(g, 1));
  snprintf(ev->eval_status, sizeof ev->eval_status, "%s", pb_string(g, 13));
  snprintf(ev->eval_err, sizeof ev->eval_err, "%s", pb_string(g, 16));
  snprintf(ev->out_path, sizeof ev->out_path, "%s", pb_string(g, 17));
  snprintf(ev->drv_path, sizeof ev->drv_path, "%s", pb_string(g, 18));
  snprintf(ev->build_status, sizeof ev->build_status, "%s", pb_string(g, 20));
  snprintf(ev->build_err, sizeof ev->build_err, "%s", pb_string(g, 23));
  snprintf(ev->build_reason, sizeof ev->build_reason, "%s", pb_string(g, 27));
}

/* Reads events until one of `kind` for `uuid` (log lines are counted and printed; a
 * log line containing `until_line`, when not NULL, also ends the wait). */
static void wait_event(int kind, const char *uuid, const char *until_line, event *ev) {
  for (;;) {
    genbuild_buffer buf = {NULL, 0};
    char *err = NULL;
    genbuild_result r = genbuild_next_event(g_builder, WAIT_MS, &buf, &err);
    if (r != GENBUILD_RESULT_OK) {
      fail("waiting for %s of %s: %s: %s", kind_name(kind), uuid, genbuild_result_name(r),
           err ? err : "");
    }
    decode_event(buf, ev);
    genbuild_buffer_free(buf);
    if (ev->kind == BUILD_PROGRESS) {
      printf("     progress %.8s: %llu/%llu\n", ev->uuid, (unsigned long long)ev->done,
             (unsigned long long)ev->expected);
      continue;
    }
    if (ev->kind == LOG_LINE) {
      g_log_lines++;
      printf("     log %.8s%s%.60s: %s\n", ev->uuid, ev->line_drv[0] ? " " : "", ev->line_drv,
             ev->line);
      if (until_line != NULL && strstr(ev->line, until_line) != NULL) {
        return;
      }
      continue;
    }
    printf("     event %s %.8s eval=%s build=%s%s%s%s%s\n", kind_name(ev->kind), ev->uuid,
           ev->eval_status, ev->build_status, ev->eval_err[0] ? " eval_err=" : "", ev->eval_err,
           ev->build_err[0] ? " build_err=" : "", ev->build_err);
    if (ev->kind == kind && strcmp(ev->uuid, uuid) == 0) {
      return;
    }
  }
}

/* ---- processes ---- */

static double now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

/* The number of live processes but this one whose command line contains `marker`
 * (a zombie's command line reads empty), or -1 when /proc cannot be read; `show`
 * prints them. */
static int processes_with(const char *marker, int show) {
  DIR *proc = opendir("/proc");
  if (proc == NULL) {
    return -1;
  }
  int count = 0;
  struct dirent *entry;
  while ((entry = readdir(proc)) != NULL) {
    if (!isdigit((unsigned char)entry->d_name[0]) || atoi(entry->d_name) == (int)getpid()) {
      continue;
    }
    char path[300], cmdline[4096];
    snprintf(path, sizeof path, "/proc/%s/cmdline", entry->d_name);
    FILE *f = fopen(path, "r");
    if (f == NULL) {
      continue; /* gone meanwhile */
    }
    size_t n = fread(cmdline, 1, sizeof cmdline - 1, f);
    fclose(f);
    for (size_t i = 0; i < n; i++) {
      cmdline[i] = cmdline[i] == '\0' ? ' ' : cmdline[i];
    }
    cmdline[n] = '\0';
    if (strstr(cmdline, marker) != NULL) {
      count++;
      if (show) {
        printf("     alive: pid %s: %s\n", entry->d_name, cmdline);
      }
    }
  }
  closedir(proc);
  return count;
}

/* Prints this process's children (orphans of the builder's processes are re-parented
 * here) and returns how many there are. */
static int show_children(void) {
  DIR *proc = opendir("/proc");
  int count = 0;
  struct dirent *entry;
  while (proc != NULL && (entry = readdir(proc)) != NULL) {
    char path[300], stat[512] = {0}, cmdline[256] = {0};
    snprintf(path, sizeof path, "/proc/%s/stat", entry->d_name);
    FILE *f = isdigit((unsigned char)entry->d_name[0]) ? fopen(path, "r") : NULL;
    if (f == NULL) {
      continue;
    }
    size_t n = fread(stat, 1, sizeof stat - 1, f);
    fclose(f);
    stat[n] = '\0';
    char state = '?';
    int ppid = 0;
    const char *end = strrchr(stat, ')');
    if (end == NULL || sscanf(end + 1, " %c %d", &state, &ppid) != 2 || ppid != (int)getpid()) {
      continue;
    }
    snprintf(path, sizeof path, "/proc/%s/cmdline", entry->d_name);
    f = fopen(path, "r");
    n = f != NULL ? fread(cmdline, 1, sizeof cmdline - 1, f) : 0;
    if (f != NULL) {
      fclose(f);
    }
    for (size_t i = 0; i < n; i++) {
      cmdline[i] = cmdline[i] == '\0' ? ' ' : cmdline[i];
    }
    printf("     child: pid %s, state %c: %s\n", entry->d_name, state, cmdline);
    count++;
  }
  if (proc != NULL) {
    closedir(proc);
  }
  return count;
}

/* processes_with(marker) once it is 0, or after SETTLE_MS (then they are printed). */
static int processes_left(const char *marker) {
  /* Through a nix-daemon (NIX_REMOTE set) the builders are the daemon's children, out
   * of genbuild's reach: the daemon ends them once their client is gone, later. */
  const char *remote = getenv("NIX_REMOTE");
  int daemon = remote != NULL && remote[0] != '\0' && strcmp(remote, "local") != 0;
  double until = now_ms() + (daemon ? 20000 : SETTLE_MS);
  int n;
  while ((n = processes_with(marker, 0)) != 0 && now_ms() < until) {
    sched_yield();
  }
  return n == 0 ? 0 : processes_with(marker, 1);
}

/* ---- the repository ---- */

static void run(const char *cmd) {
  int status = system(cmd);
  CHECK(status == 0, "`%s` exited with %d", cmd, status);
}

static void write_file(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  CHECK(f != NULL, "cannot write %s: %s", path, strerror(errno));
  fputs(text, f);
  CHECK(fclose(f) == 0, "cannot close %s", path);
}

/* Commits a default.nix whose `machine.toplevel` runs `script`; returns its id. */
static void commit(const char *repo, const char *nonce, const char *script, char id[41]) {
  char path[256], text[1024], cmd[512];
  snprintf(path, sizeof path, "%s/default.nix", repo);
  snprintf(text, sizeof text,
           "{ machine = { toplevel = derivation { name = \"t\"; system = builtins.currentSystem;"
           " builder = \"/bin/sh\"; nonce = \"%s\"; args = [ \"-c\" \"%s\" ]; }; }; }\n",
           nonce, script);
  write_file(path, text);
  snprintf(cmd, sizeof cmd,
           "git -C '%s' add default.nix && git -C '%s' -c user.name=t -c user.email=t@t "
           "commit -q -m 'nonce %s'",
           repo, repo, nonce);
  run(cmd);
  snprintf(cmd, sizeof cmd, "git -C '%s' rev-parse HEAD", repo);
  FILE *p = popen(cmd, "r");
  CHECK(p != NULL, "popen");
  CHECK(fgets(id, 41, p) != NULL && strlen(id) == 40, "no commit id");
  CHECK(pclose(p) == 0, "git rev-parse failed");
}

/* A RepositoryStatus of `commit_id` on branch main. */
static size_t repository_status(uint8_t *buf, const char *commit_id) {
  size_t len = 0;
  put_string(buf, &len, 1, commit_id);   /* selected_commit_id */
  put_string(buf, &len, 2, "a commit");  /* selected_commit_msg */
  put_string(buf, &len, 3, "origin");    /* selected_remote_name */
  put_string(buf, &len, 4, "main");      /* selected_branch_name */
  put_string(buf, &len, 9, commit_id);   /* main_commit_id */
  return len;
}

/* Evaluates `commit_id` (`what` in the output) and waits until it is evaluated; its
 * generation's uuid goes to `uuid`. */
static void evaluate(const char *what, const char *commit_id, char uuid[37]) {
  uint8_t rs[512];
  size_t rs_len = repository_status(rs, commit_id);
  char label[64], *err = NULL, *out = NULL;
  snprintf(label, sizeof label, "eval(%s)", what);
  expect(label, genbuild_eval(g_builder, rs, rs_len, &out, &err), &err, GENBUILD_RESULT_OK, NULL);
  CHECK(out != NULL && strlen(out) == 36, "a uuid");
  snprintf(uuid, 37, "%s", out);
  genbuild_string_free(out);
  event ev;
  wait_event(EVAL_FINISHED, uuid, NULL, &ev);
  CHECK(strcmp(ev.eval_status, "evaluated") == 0, "evaluated, not %s: %s", ev.eval_status,
        ev.eval_err);
}

/* A Nix bin dir (`genbuild_config.nix_bin_dir`) whose nix-store only SIGKILL ends:
 * the real one (from PATH) runs in a session of its own, so the SIGTERM of a
 * cancellation reaches only the wrapper shell, which ignores it. (The real nix-store
 * ends within milliseconds of a SIGTERM, killing its builder however that one traps
 * signals.) A build cancelled through it takes the whole grace period to die. */
static void slow_dying_nix(const char *dir) {
  CHECK(mkdir(dir, 0755) == 0, "mkdir %s: %s", dir, strerror(errno));
  const char *scripts[][2] = {
      {"nix", "exec nix \"$@\"\n"},
      {"nix-instantiate", "exec nix-instantiate \"$@\"\n"},
      {"nix-store", "trap '' TERM\nsetsid nix-store \"$@\"\n"},
  };
  for (size_t i = 0; i < sizeof scripts / sizeof scripts[0]; i++) {
    char path[256], text[256];
    snprintf(path, sizeof path, "%s/%s", dir, scripts[i][0]);
    snprintf(text, sizeof text, "#!/bin/sh\n%s", scripts[i][1]);
    write_file(path, text);
    CHECK(chmod(path, 0755) == 0, "chmod %s: %s", path, strerror(errno));
  }
}

/* ---- threads: two stops at once, and a reader blocked meanwhile ---- */

typedef struct {
  pthread_barrier_t *start;
  const char *marker; /* of the build's processes */
  genbuild_result result;
  char message[256];
  double elapsed_ms;
  int left; /* processes carrying the marker after the call returned */
} stopper;

static void *stop_at_once(void *arg) {
  stopper *s = arg;
  pthread_barrier_wait(s->start);
  double started = now_ms();
  char *err = NULL;
  s->result = genbuild_stop(g_builder, &err);
  s->elapsed_ms = now_ms() - started;
  s->left = processes_left(s->marker);
  snprintf(s->message, sizeof s->message, "%s", err ? err : "");
  genbuild_string_free(err);
  return NULL;
}

typedef struct {
  const char *uuid;
  genbuild_result result; /* of the last genbuild_next_event */
  event ev;               /* the last event: BuildFinished of `uuid` when all went well */
} reader;

/* Waits without end (UINT64_MAX) for events until the BuildFinished of r->uuid. */
static void *read_until_build_finished(void *arg) {
  reader *r = arg;
  for (;;) {
    genbuild_buffer buf = {NULL, 0};
    r->result = genbuild_next_event(g_builder, UINT64_MAX, &buf, NULL);
    if (r->result != GENBUILD_RESULT_OK) {
      return NULL;
    }
    decode_event(buf, &r->ev);
    genbuild_buffer_free(buf);
    if (r->ev.kind == BUILD_FINISHED && strcmp(r->ev.uuid, r->uuid) == 0) {
      return NULL;
    }
  }
}

#define CHECK_NAME(code) \
  CHECK(strcmp(genbuild_result_name(code), #code) == 0, "the name of %s", #code)

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IONBF, 0);
  alarm(WATCHDOG_S);
  CHECK(argc == 2 && strspn(argv[1], "0123456789") == strlen(argv[1]) && argv[1][0],
        "usage: %s NONCE (digits)", argv[0]);
  const char *nonce = argv[1];
#ifdef __linux__
  CHECK(prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0, "prctl: %s", strerror(errno));
#endif
  printf("genbuild %s, nonce %s\n", genbuild_version(), nonce);

  snprintf(g_dir, sizeof g_dir, "%s", "/tmp/genbuild-ffi-XXXXXX");
  CHECK(mkdtemp(g_dir) != NULL, "mkdtemp: %s", strerror(errno));
  char repo[128], state_file[128], roots[128], cmd[512];
  snprintf(repo, sizeof repo, "%s/repo", g_dir);
  snprintf(state_file, sizeof state_file, "%s/state.pb", g_dir);
  snprintf(roots, sizeof roots, "%s/roots", g_dir);
  snprintf(cmd, sizeof cmd, "git init -q '%s'", repo);
  run(cmd);
  char commit1[41], commit2[41], script[256], sleeper[64];
  snprintf(sleeper, sizeof sleeper, "300.%s", nonce);
  snprintf(script, sizeof script, "echo %s > $out", nonce);
  commit(repo, nonce, script, commit1);
  snprintf(script, sizeof script, "echo started %s; /bin/sleep 300.%s; echo > $out", nonce, nonce);
  commit(repo, nonce, script, commit2);
  char commit3[41];
  snprintf(script, sizeof script,
           "trap '' TERM; echo ignoring TERM %s; /bin/sleep 300.%s; echo > $out", nonce, nonce);
  commit(repo, nonce, script, commit3);

  const char *names[] = {"build-users-group", "substituters", "sandbox"};
  const char *values[] = {"", "", "false"};
  genbuild_config cfg = {0};
  cfg.executor = GENBUILD_EXECUTOR_KIND_LEGACY;
  cfg.repository_path = repo;
  cfg.system_attr = "machine";
  cfg.hostname = "testhost";
  /* Without end, and overflowing nothing: the suspend and stop below cancel builds
   * through the SIGTERM + grace path. The real nix-store usually ends at once on
   * SIGTERM, but Nix 2.34's sometimes waits on (seen in a Debian sid root, ended at
   * once by a second SIGTERM): a grace bounds the stop there too. */
  cfg.eval_timeout_ms = UINT64_MAX;
  cfg.build_timeout_ms = UINT64_MAX;
  cfg.kill_grace_ms = 5000;
  cfg.state_file = state_file;
  cfg.gc_root_dir = roots;
  cfg.nix_option_names = names;
  cfg.nix_option_values = values;
  cfg.nix_options_len = 3;
  /* Generous: they change nothing but what is reported. */
  cfg.eval_memory_limit_bytes = 8ULL << 30;
  cfg.build_memory_limit_bytes = 8ULL << 30;
  cfg.nice = 5;

  char *err = NULL, *uuid = NULL;
  genbuild_buffer buf = {NULL, 0};
  genbuild_builder *b = NULL;
  event ev;

  /* ---- creation errors ---- */
  expect("builder_new(NULL config)", genbuild_builder_new(NULL, &b, &err), &err,
         GENBUILD_RESULT_NULL_ARGUMENT, "config");
  CHECK(b == NULL, "no builder on failure");
  expect("builder_new(NULL out)", genbuild_builder_new(&cfg, NULL, &err), &err,
         GENBUILD_RESULT_NULL_ARGUMENT, "builder_out");
  genbuild_config bad = cfg;
  bad.hostname = NULL;
  expect("builder_new(NULL hostname)", genbuild_builder_new(&bad, &b, &err), &err,
         GENBUILD_RESULT_NULL_ARGUMENT, "config->hostname");
  bad = cfg;
  bad.hostname = "\xff\xfe";
  expect("builder_new(non-UTF-8 hostname)", genbuild_builder_new(&bad, &b, &err), &err,
         GENBUILD_RESULT_INVALID_ARGUMENT, "UTF-8");
  bad = cfg;
  bad.executor = 42;
  expect("builder_new(executor 42)", genbuild_builder_new(&bad, &b, &err), &err,
         GENBUILD_RESULT_INVALID_ARGUMENT, "executor");
  bad = cfg;
  bad.nix_option_values = NULL;
  expect("builder_new(NULL option values)", genbuild_builder_new(&bad, &b, &err), &err,
         GENBUILD_RESULT_NULL_ARGUMENT, "nix_option_values");
  char garbage_state[160];
  snprintf(garbage_state, sizeof garbage_state, "%s/garbage.pb", g_dir);
  write_file(garbage_state, "\xff\xff\xff\xff this is no protobuf");
  bad = cfg;
  bad.state_file = garbage_state;
  expect("builder_new(corrupt state file)", genbuild_builder_new(&bad, &b, &err), &err,
         GENBUILD_RESULT_STORE_ERROR, "garbage.pb");
  bad = cfg;
  bad.nix_options_len = SIZE_MAX;
  expect("builder_new(SIZE_MAX options)", genbuild_builder_new(&bad, &b, &err), &err,
         GENBUILD_RESULT_INVALID_ARGUMENT, "larger than any buffer");
  CHECK(genbuild_builder_new(NULL, &b, NULL) == GENBUILD_RESULT_NULL_ARGUMENT, "err may be NULL");

  expect("builder_new", genbuild_builder_new(&cfg, &g_builder, &err), &err, GENBUILD_RESULT_OK,
         NULL);
  CHECK(g_builder != NULL, "a builder");

  /* ---- NULL handles, garbage, refusals ---- */
  uint8_t rs[512];
  size_t rs_len = repository_status(rs, commit1);
  expect("eval(NULL builder)", genbuild_eval(NULL, rs, rs_len, &uuid, &err), &err,
         GENBUILD_RESULT_NULL_ARGUMENT, "builder");
  CHECK(uuid == NULL, "no uuid on failure");
  expect("eval(NULL uuid_out)", genbuild_eval(g_builder, rs, rs_len, NULL, &err), &err,
         GENBUILD_RESULT_NULL_ARGUMENT, "uuid_out");
  expect("eval(NULL bytes, len 5)", genbuild_eval(g_builder, NULL, 5, &uuid, &err), &err,
         GENBUILD_RESULT_NULL_ARGUMENT, "rs");
  const uint8_t garbage[] = {0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x01};
  expect("eval(garbage protobuf)", genbuild_eval(g_builder, garbage, sizeof garbage, &uuid, &err),
         &err, GENBUILD_RESULT_INVALID_ARGUMENT, "RepositoryStatus");
  CHECK(uuid == NULL, "no uuid on failure");
  expect("submit_build(NULL builder)", genbuild_submit_build(NULL, "x", &err), &err,
         GENBUILD_RESULT_NULL_ARGUMENT, "builder");
  expect("submit_build(NULL uuid)", genbuild_submit_build(g_builder, NULL, &err), &err,
         GENBUILD_RESULT_NULL_ARGUMENT, "uuid");
  expect("submit_build(non-UTF-8 uuid)", genbuild_submit_build(g_builder, "\xc3\x28", &err), &err,
         GENBUILD_RESULT_INVALID_ARGUMENT, "UTF-8");
  expect("submit_build(unknown uuid)",
         genbuild_submit_build(g_builder, "00000000-0000-4000-8000-000000000000", &err), &err,
         GENBUILD_RESULT_REFUSED,
         "no generation with uuid 00000000-0000-4000-8000-000000000000 has been found");
  expect("suspend(NULL)", genbuild_suspend(NULL, &err), &err, GENBUILD_RESULT_NULL_ARGUMENT, NULL);
  expect("resume(NULL)", genbuild_resume(NULL, &err), &err, GENBUILD_RESULT_NULL_ARGUMENT, NULL);
  expect("stop(NULL)", genbuild_stop(NULL, &err), &err, GENBUILD_RESULT_NULL_ARGUMENT, NULL);
  expect("state(NULL)", genbuild_state(NULL, &buf, &err), &err, GENBUILD_RESULT_NULL_ARGUMENT,
         NULL);
  CHECK(buf.data == NULL && buf.len == 0, "an empty buffer on failure");
  expect("state(NULL out)", genbuild_state(g_builder, NULL, &err), &err,
         GENBUILD_RESULT_NULL_ARGUMENT, "state_out");
  expect("next_event(NULL)", genbuild_next_event(NULL, 0, &buf, &err), &err,
         GENBUILD_RESULT_NULL_ARGUMENT, NULL);
  expect("resume(not suspended)", genbuild_resume(g_builder, &err), &err, GENBUILD_RESULT_REFUSED,
         "the builder is not suspended");
  expect("eval(SIZE_MAX bytes)", genbuild_eval(g_builder, rs, SIZE_MAX, &uuid, &err), &err,
         GENBUILD_RESULT_INVALID_ARGUMENT, "larger than any buffer");
  expect("next_event(NULL out)", genbuild_next_event(g_builder, 0, NULL, &err), &err,
         GENBUILD_RESULT_NULL_ARGUMENT, "event_out");
  expect("next_event(nothing yet)", genbuild_next_event(g_builder, 10, &buf, &err), &err,
         GENBUILD_RESULT_TIMEOUT, NULL);
  CHECK(genbuild_stop(NULL, NULL) == GENBUILD_RESULT_NULL_ARGUMENT, "err may be NULL");
  CHECK(strcmp(genbuild_result_name(12345), "unknown") == 0, "unknown result name");
  CHECK(strcmp(genbuild_result_name(UINT32_MAX), "unknown") == 0, "unknown result name");
  CHECK_NAME(GENBUILD_RESULT_OK);
  CHECK_NAME(GENBUILD_RESULT_TIMEOUT);
  CHECK_NAME(GENBUILD_RESULT_NULL_ARGUMENT);
  CHECK_NAME(GENBUILD_RESULT_INVALID_ARGUMENT);
  CHECK_NAME(GENBUILD_RESULT_REFUSED);
  CHECK_NAME(GENBUILD_RESULT_STORE_ERROR);
  CHECK_NAME(GENBUILD_RESULT_PANIC);
  CHECK_NAME(GENBUILD_RESULT_DISCONNECTED);
  genbuild_builder_destroy(NULL);
  genbuild_string_free(NULL);
  genbuild_buffer_free((genbuild_buffer){NULL, 0});

  /* ---- evaluate and build commit 1 ---- */
  expect("eval(commit 1)", genbuild_eval(g_builder, rs, rs_len, &uuid, &err), &err,
         GENBUILD_RESULT_OK, NULL);
  CHECK(uuid != NULL && strlen(uuid) == 36, "a uuid");
  char uuid1[37];
  snprintf(uuid1, sizeof uuid1, "%s", uuid);
  genbuild_string_free(uuid);
  uuid = NULL;
  wait_event(EVAL_STARTED, uuid1, NULL, &ev);
  CHECK(strcmp(ev.eval_status, "evaluating") == 0, "evaluating, not %s", ev.eval_status);
  wait_event(EVAL_FINISHED, uuid1, NULL, &ev);
  CHECK(strcmp(ev.eval_status, "evaluated") == 0, "evaluated, not %s: %s", ev.eval_status,
        ev.eval_err);
  CHECK(strstr(ev.drv_path, ".drv") != NULL, "a drv path: %s", ev.drv_path);
  CHECK(strncmp(ev.out_path, "/nix/store/", 11) == 0, "an out path: %s", ev.out_path);
  char out_path[512];
  snprintf(out_path, sizeof out_path, "%s", ev.out_path);

  expect("submit_build(commit 1)", genbuild_submit_build(g_builder, uuid1, &err), &err,
         GENBUILD_RESULT_OK, NULL);
  wait_event(BUILD_STARTED, uuid1, NULL, &ev);
  CHECK(strcmp(ev.build_reason, "need to be built") == 0, "reason %s", ev.build_reason);
  wait_event(BUILD_FINISHED, uuid1, NULL, &ev);
  CHECK(strcmp(ev.build_status, "built") == 0, "built, not %s: %s", ev.build_status, ev.build_err);
  FILE *f = fopen(out_path, "r");
  CHECK(f != NULL, "cannot open the output %s", out_path);
  char content[128] = {0};
  CHECK(fgets(content, sizeof content, f) != NULL, "an empty output");
  fclose(f);
  CHECK(strncmp(content, nonce, strlen(nonce)) == 0, "the output holds %s, not the nonce", content);
  expect("submit_build(built)", genbuild_submit_build(g_builder, uuid1, &err), &err,
         GENBUILD_RESULT_REFUSED, "the generation is already built");

  /* ---- state ---- */
  expect("state", genbuild_state(g_builder, &buf, &err), &err, GENBUILD_RESULT_OK, NULL);
  {
    slice st = {buf.data, buf.len};
    CHECK(strcmp(pb_string(st, 4), uuid1) == 0, "state generation_uuid %s", pb_string(st, 4));
    CHECK(strcmp(pb_string(st, 6), "testhost") == 0, "state hostname %s", pb_string(st, 6));
    CHECK(!pb_bool_value(st, 1) && !pb_bool_value(st, 2) && !pb_bool_value(st, 5),
          "idle and not suspended");
    slice g = pb_message(st, 3);
    CHECK(strcmp(pb_string(g, 1), uuid1) == 0, "state generation %s", pb_string(g, 1));
    CHECK(strcmp(pb_string(g, 13), "evaluated") == 0, "eval_status %s", pb_string(g, 13));
    CHECK(strcmp(pb_string(g, 20), "built") == 0, "build_status %s", pb_string(g, 20));
    CHECK(strcmp(pb_string(g, 7), commit1) == 0, "selected_commit_id %s", pb_string(g, 7));
    CHECK(strcmp(pb_string(g, 6), "main") == 0, "selected_branch_name %s", pb_string(g, 6));
    /* eval_usage (101) and build_usage (102): peak_memory_bytes 1, cpu_ms 2,
     * memory_limit_reached 3. */
    uint64_t eval_peak = 0, build_peak = 0, reached = 0;
    slice eval_usage = pb_message(g, 101), build_usage = pb_message(g, 102);
    CHECK(eval_usage.data != NULL && build_usage.data != NULL, "eval_usage and build_usage set");
    pb_field(eval_usage, 1, NULL, &eval_peak);
    pb_field(build_usage, 1, NULL, &build_peak);
    pb_field(eval_usage, 3, NULL, &reached);
    CHECK(eval_peak > 0 && build_peak > 0 && !reached, "usage: eval peak %llu, build peak %llu",
          (unsigned long long)eval_peak, (unsigned long long)build_peak);
    printf("ok   state: generation %s eval=%s build=%s out=%s eval peak=%llu KiB\n", pb_string(g, 1),
           pb_string(g, 13), pb_string(g, 20), pb_string(g, 17), (unsigned long long)(eval_peak >> 10));
  }
  genbuild_buffer_free(buf);
  buf = (genbuild_buffer){NULL, 0};

  /* ---- commit 2 builds for 300 s: suspend, resume, stop ---- */
  char uuid2[37];
  evaluate("commit 2", commit2, uuid2);
  expect("submit_build(old generation)", genbuild_submit_build(g_builder, uuid1, &err), &err,
         GENBUILD_RESULT_REFUSED, "another generation is evaluating or evaluated");
  expect("submit_build(commit 2)", genbuild_submit_build(g_builder, uuid2, &err), &err,
         GENBUILD_RESULT_OK, NULL);
  expect("submit_build(twice)", genbuild_submit_build(g_builder, uuid2, &err), &err,
         GENBUILD_RESULT_REFUSED, "the builder is already building");
  wait_event(BUILD_STARTED, uuid2, NULL, &ev);
  /* The builder's first line says the sleeper runs. */
  char started[64];
  snprintf(started, sizeof started, "started %s", nonce);
  wait_event(-1, uuid2, started, &ev);

  expect("suspend", genbuild_suspend(g_builder, &err), &err, GENBUILD_RESULT_OK, NULL);
  wait_event(BUILD_FINISHED, uuid2, NULL, &ev);
  CHECK(strcmp(ev.build_status, "failed") == 0, "failed, not %s", ev.build_status);
  CHECK(strstr(ev.build_err, "cancelled: suspended") != NULL, "build_err %s", ev.build_err);
  expect("suspend(twice)", genbuild_suspend(g_builder, &err), &err, GENBUILD_RESULT_REFUSED,
         "the builder is already suspended");
  expect("state(suspended)", genbuild_state(g_builder, &buf, &err), &err, GENBUILD_RESULT_OK, NULL);
  CHECK(pb_bool_value((slice){buf.data, buf.len}, 5), "is_suspended");
  genbuild_buffer_free(buf);
  buf = (genbuild_buffer){NULL, 0};

  expect("resume", genbuild_resume(g_builder, &err), &err, GENBUILD_RESULT_OK, NULL);
  wait_event(BUILD_STARTED, uuid2, NULL, &ev);
  wait_event(-1, uuid2, started, &ev);
  expect("stop", genbuild_stop(g_builder, &err), &err, GENBUILD_RESULT_OK, NULL);
  int left = processes_left(sleeper);
  CHECK(left == 0, "stop returned while %d processes carrying %s were alive", left, sleeper);
  wait_event(BUILD_FINISHED, uuid2, NULL, &ev);
  CHECK(strcmp(ev.build_status, "failed") == 0, "failed, not %s", ev.build_status);
  CHECK(strstr(ev.build_err, "cancelled: stopped") != NULL, "build_err %s", ev.build_err);
  expect("state(stopped)", genbuild_state(g_builder, &buf, &err), &err, GENBUILD_RESULT_OK, NULL);
  {
    slice st = {buf.data, buf.len};
    CHECK(!pb_bool_value(st, 1) && !pb_bool_value(st, 2), "nothing runs after stop");
    CHECK(strcmp(pb_string(pb_message(st, 3), 20), "failed") == 0, "build failed");
  }
  genbuild_buffer_free(buf);
  buf = (genbuild_buffer){NULL, 0};
  /* Drain what is left (log lines), then the stream is quiet. */
  while (genbuild_next_event(g_builder, 200, &buf, NULL) == GENBUILD_RESULT_OK) {
    decode_event(buf, &ev);
    genbuild_buffer_free(buf);
    buf = (genbuild_buffer){NULL, 0};
  }
  printf("ok   %d log lines received\n", g_log_lines);

  /* ---- destroy: stops and joins; then nothing the builder started is alive ---- */
  genbuild_builder_destroy(g_builder);
  g_builder = NULL;
  struct stat st;
  CHECK(stat(state_file, &st) == 0 && st.st_size > 0, "the state file was written");

  /* ---- commit 3 ignores SIGTERM, and so does nix-store (slow_dying_nix): two
   * threads stop its build at once, a third waits for its end in genbuild_next_event
   * without a timeout; each stop returns only when the build's processes are gone,
   * which takes the grace period ---- */
  char slow_bin[128];
  snprintf(slow_bin, sizeof slow_bin, "%s/slow-bin", g_dir);
  slow_dying_nix(slow_bin);
  cfg.nix_bin_dir = slow_bin;
  cfg.state_file = NULL;
  cfg.kill_grace_ms = 2000;
  expect("builder_new(slow-dying nix-store)", genbuild_builder_new(&cfg, &g_builder, &err), &err,
         GENBUILD_RESULT_OK, NULL);
  char uuid3[37];
  evaluate("commit 3", commit3, uuid3);
  expect("submit_build(commit 3)", genbuild_submit_build(g_builder, uuid3, &err), &err,
         GENBUILD_RESULT_OK, NULL);
  wait_event(BUILD_STARTED, uuid3, NULL, &ev);
  char ignoring[64];
  snprintf(ignoring, sizeof ignoring, "ignoring TERM %s", nonce);
  wait_event(-1, uuid3, ignoring, &ev);
  int alive = processes_with(sleeper, 1);
  CHECK(alive > 0, "the build of commit 3 runs no process (%d)", alive);
  printf("ok   %d processes of the build run\n", alive);

  pthread_barrier_t start;
  CHECK(pthread_barrier_init(&start, NULL, 2) == 0, "pthread_barrier_init");
  reader r = {.uuid = uuid3};
  stopper stoppers[2] = {{.start = &start, .marker = sleeper}, {.start = &start, .marker = sleeper}};
  pthread_t reader_thread, stop_threads[2];
  CHECK(pthread_create(&reader_thread, NULL, read_until_build_finished, &r) == 0, "a thread");
  for (int i = 0; i < 2; i++) {
    CHECK(pthread_create(&stop_threads[i], NULL, stop_at_once, &stoppers[i]) == 0, "a thread");
  }
  for (int i = 0; i < 2; i++) {
    CHECK(pthread_join(stop_threads[i], NULL) == 0, "pthread_join");
  }
  CHECK(pthread_join(reader_thread, NULL) == 0, "pthread_join");
  pthread_barrier_destroy(&start);
  for (int i = 0; i < 2; i++) {
    stopper *s = &stoppers[i];
    printf("     stop %d: %s after %.1f ms, %d processes left\n", i, genbuild_result_name(s->result),
           s->elapsed_ms, s->left);
    CHECK(s->result == GENBUILD_RESULT_OK, "stop %d: %s", i, s->message);
    CHECK(s->left == 0,
          "stop %d returned after %.1f ms while %d processes of the build were alive "
          "(and still were %d ms later)",
          i, s->elapsed_ms, s->left, SETTLE_MS);
  }
  printf("ok   two stops at once: both returned after the build's processes were gone\n");
  CHECK(r.result == GENBUILD_RESULT_OK, "next_event(UINT64_MAX): %s",
        genbuild_result_name(r.result));
  CHECK(r.ev.kind == BUILD_FINISHED && strcmp(r.ev.build_status, "failed") == 0 &&
            strstr(r.ev.build_err, "cancelled: stopped") != NULL,
        "the waiting reader got %s %s: %s", kind_name(r.ev.kind), r.ev.build_status,
        r.ev.build_err);
  printf("ok   next_event(UINT64_MAX) blocked meanwhile got BuildFinished: %s\n", r.ev.build_err);
  expect("state(stopped twice)", genbuild_state(g_builder, &buf, &err), &err, GENBUILD_RESULT_OK,
         NULL);
  CHECK(!pb_bool_value((slice){buf.data, buf.len}, 2), "nothing builds after two stops");
  genbuild_buffer_free(buf);
  buf = (genbuild_buffer){NULL, 0};

  genbuild_builder_destroy(g_builder);
  g_builder = NULL;
  left = processes_left(sleeper);
  CHECK(left == 0, "destroy returned while %d processes carrying %s were alive", left, sleeper);
#ifdef __linux__
  /* Orphans of the builder's processes are re-parented here: reap them. One killed a
   * moment ago may still be on its way out. */
  double until = now_ms() + SETTLE_MS;
  for (;;) {
    int status;
    pid_t pid = waitpid(-1, &status, WNOHANG);
    if (pid > 0) {
      continue;
    }
    if (pid == -1 && errno == ECHILD) {
      break;
    }
    CHECK(pid == 0 && now_ms() < until, "a process is still alive %d ms after destroy (%d children)",
          SETTLE_MS, show_children());
    sched_yield();
  }
  printf("ok   no process left\n");
#endif
  cleanup();
  printf("PASS\n");
  return 0;
}
