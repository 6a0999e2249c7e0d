package genbuild

// What the tests share: real Nix, temporary git repositories holding tiny systems (one
// derivation whose builder is /bin/sh, no nixpkgs, no network), builders that are
// closed and checked to leave no process behind, and waits for events.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"genbuild/genbuildpb"
)

// hang bounds every wait: it only turns a hang into a failure.
const hang = 2 * time.Minute

// settle is how long a process SIGKILLed a moment ago may take to be gone from /proc.
const settle = 250 * time.Millisecond

// nixSettings are what a fresh single-user root install needs, passed as options
// (the machine's /etc/nix is never edited).
var nixSettings = []NixOption{
	{Name: "build-users-group", Value: ""},
	{Name: "substituters", Value: ""},
	{Name: "sandbox", Value: "false"},
}

// requireNix skips the test when Nix is not runnable, and fails it under CI=true.
func requireNix(t *testing.T) {
	t.Helper()
	if err := exec.Command("nix-instantiate", "--version").Run(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true but nix-instantiate is not runnable (%v): the Nix tests need Nix installed", err)
		}
		t.Skipf("skipped: nix-instantiate is not runnable, Nix is not installed (%v)", err)
	}
}

var nonces atomic.Int64

// newNonce is digits unique to this run and call: derivations carry it, so their
// outputs are new, and their processes are found by it in /proc.
func newNonce() string {
	return fmt.Sprintf("%d%09d%d", os.Getpid(), time.Now().Nanosecond(), nonces.Add(1))
}

// sleeper is a builder script that says it started, then sleeps 300 s; the sleep's
// command line carries "300.NONCE" (sleepMarker).
func sleeper(nonce string) string {
	return fmt.Sprintf("echo started %s; /bin/sleep 300.%s; echo > $out", nonce, nonce)
}

func sleepMarker(nonce string) string { return "300." + nonce }

// nixStr is s as a Nix string literal.
func nixStr(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`, "${", `\${`)
	return `"` + r.Replace(s) + `"`
}

// drv is a derivation (Nix source) whose builder runs script and carries nonce.
func drv(nonce, script, system string) string {
	return fmt.Sprintf(`derivation { name = "t"; system = %s; builder = "/bin/sh"; nonce = %s; args = [ "-c" %s ]; }`,
		system, nixStr(nonce), nixStr(script))
}

// repo is a temporary git repository.
type repo struct {
	t     *testing.T
	dir   string
	nonce string
}

func newRepo(t *testing.T) *repo {
	t.Helper()
	r := &repo{t: t, dir: filepath.Join(t.TempDir(), "repo"), nonce: newNonce()}
	r.git("init", "-q", r.dir)
	return r
}

func (r *repo) git(args ...string) string {
	r.t.Helper()
	cmd := exec.Command("git", append([]string{"-c", "user.name=t", "-c", "user.email=t@t"}, args...)...)
	cmd.Dir = filepath.Dir(r.dir)
	if _, err := os.Stat(r.dir); err == nil {
		cmd.Dir = r.dir
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		r.t.Fatalf("git %v: %v\n%s", args, err, out)
	}
	return strings.TrimSpace(string(out))
}

// commitFile commits text as path (relative to the repository) and returns the
// commit's id.
func (r *repo) commitFile(path, text string) string {
	r.t.Helper()
	full := filepath.Join(r.dir, path)
	if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
		r.t.Fatal(err)
	}
	if err := os.WriteFile(full, []byte(text), 0o644); err != nil {
		r.t.Fatal(err)
	}
	r.git("add", path)
	r.git("commit", "-q", "-m", "nonce "+r.nonce)
	return r.git("rev-parse", "HEAD")
}

// commit commits a default.nix whose `machine.toplevel` runs script.
func (r *repo) commit(script string) string {
	r.t.Helper()
	return r.commitFile("default.nix",
		fmt.Sprintf("{ machine = { toplevel = %s; }; }\n", drv(r.nonce, script, "builtins.currentSystem")))
}

// config is a builder of r's `machine` for "testhost", with the Nix settings of the
// tests and gc roots of its own.
func (r *repo) config() Config {
	return Config{
		Hostname:       "testhost",
		RepositoryPath: r.dir,
		SystemAttr:     "machine",
		GCRootDir:      filepath.Join(r.t.TempDir(), "roots"),
		NixOptions:     nixSettings,
	}
}

// rs is a RepositoryStatus of commit on branch main.
func rs(commit string) *genbuildpb.RepositoryStatus {
	return &genbuildpb.RepositoryStatus{
		SelectedCommitId:   commit,
		SelectedCommitMsg:  "a commit",
		SelectedRemoteName: "origin",
		SelectedBranchName: "main",
		MainCommitId:       commit,
	}
}

// newBuilder makes a builder closed at the end of the test, after which no process
// carrying marker (when not "") may be alive.
func newBuilder(t *testing.T, cfg Config, marker string) *Builder {
	t.Helper()
	if marker != "" {
		t.Cleanup(func() { assertNoProcess(t, marker, "after Close") })
	}
	b, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(b.Close)
	return b
}

// processesWith lists the live processes but this one whose command line contains
// marker (a zombie's reads empty).
func processesWith(marker string) []string {
	var found []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue // gone meanwhile
		}
		line := strings.ReplaceAll(string(cmdline), "\x00", " ")
		if strings.Contains(line, marker) {
			found = append(found, fmt.Sprintf("pid %d: %s", pid, line))
		}
	}
	return found
}

// assertNoProcess fails the test when a process carrying marker is still alive settle
// after now.
func assertNoProcess(t *testing.T, marker, when string) {
	t.Helper()
	until := time.Now().Add(settle)
	for {
		alive := processesWith(marker)
		if len(alive) == 0 {
			return
		}
		if time.Now().After(until) {
			t.Errorf("%s, %d processes carrying %s are alive:\n%s", when, len(alive), marker, strings.Join(alive, "\n"))
			return
		}
		time.Sleep(5 * time.Millisecond) // polling /proc: nothing to wait on
	}
}

// kind is the name of an event's kind, and the generation of a lifecycle event.
func kind(ev *genbuildpb.Event) (string, *genbuildpb.Generation) {
	switch k := ev.Kind.(type) {
	case *genbuildpb.Event_EvalStarted:
		return "EvalStarted", k.EvalStarted.GetGeneration()
	case *genbuildpb.Event_EvalFinished:
		return "EvalFinished", k.EvalFinished.GetGeneration()
	case *genbuildpb.Event_BuildStarted:
		return "BuildStarted", k.BuildStarted.GetGeneration()
	case *genbuildpb.Event_BuildFinished:
		return "BuildFinished", k.BuildFinished.GetGeneration()
	case *genbuildpb.Event_LogLine:
		return "LogLine", nil
	case *genbuildpb.Event_BuildProgress:
		return "BuildProgress", nil
	}
	return fmt.Sprintf("%T", ev.Kind), nil
}

// describe is an event in one line, for the test's log.
func describe(ev *genbuildpb.Event) string {
	name, g := kind(ev)
	switch {
	case g != nil:
		return fmt.Sprintf("%s %.8s eval=%s build=%s %s%s", name, g.Uuid, g.EvalStatus, g.BuildStatus, g.EvalErr, g.BuildErr)
	case ev.GetLogLine() != nil:
		return fmt.Sprintf("log %.8s: %s", ev.GetLogLine().GenerationUuid, ev.GetLogLine().Line)
	}
	return name
}

// next is the next event, within hang; it fails the test otherwise.
func next(t *testing.T, b *Builder, waitingFor string) *genbuildpb.Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), hang)
	defer cancel()
	ev, err := b.NextEvent(ctx)
	if err != nil {
		t.Fatalf("waiting for %s: %v", waitingFor, err)
	}
	t.Logf("     %s", describe(ev))
	return ev
}

// waitFor reads events until the lifecycle event name of generation uuid, and returns
// the generation it holds.
func waitFor(t *testing.T, b *Builder, name, uuid string) *genbuildpb.Generation {
	t.Helper()
	what := fmt.Sprintf("%s of %s", name, uuid)
	for {
		if n, g := kind(next(t, b, what)); n == name && g.GetUuid() == uuid {
			return g
		}
	}
}

// waitLine reads events until a log line of generation uuid containing text.
func waitLine(t *testing.T, b *Builder, uuid, text string) {
	t.Helper()
	what := fmt.Sprintf("a line of %s containing %q", uuid, text)
	for {
		l := next(t, b, what).GetLogLine()
		if l.GetGenerationUuid() == uuid && strings.Contains(l.GetLine(), text) {
			return
		}
	}
}

// evaluate evaluates commit and waits until it is evaluated; returns the uuid.
func evaluate(t *testing.T, b *Builder, commit string) string {
	t.Helper()
	uuid, err := b.Eval(rs(commit))
	if err != nil {
		t.Fatalf("Eval(%s): %v", commit, err)
	}
	if g := waitFor(t, b, "EvalFinished", uuid); g.EvalStatus != "evaluated" {
		t.Fatalf("%s: eval %s: %s", commit, g.EvalStatus, g.EvalErr)
	}
	return uuid
}

// assertRefused checks that err is the refusal whose text is exactly message.
func assertRefused(t *testing.T, what string, err error, message string) {
	t.Helper()
	var e *Error
	switch {
	case !errors.Is(err, ErrRefused):
		t.Errorf("%s: %v, want the refusal %q", what, err, message)
	case err.Error() != message:
		t.Errorf("%s: refused with %q, want exactly %q", what, err.Error(), message)
	case errors.Is(err, ErrInvalidArgument) || errors.Is(err, ErrClosed):
		t.Errorf("%s: a refusal is of one kind only: %v", what, err)
	case !errors.As(err, &e) || e.Message != message:
		t.Errorf("%s: not an *Error holding the message: %#v", what, err)
	default:
		t.Logf("ok   %s: refused: %s", what, err)
	}
}

// assertInvalid checks that err is an ErrInvalidArgument whose text contains text.
func assertInvalid(t *testing.T, what string, err error, text string) {
	t.Helper()
	if !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), text) {
		t.Errorf("%s: %v, want an invalid argument mentioning %q", what, err, text)
		return
	}
	t.Logf("ok   %s: %s", what, err)
}
