package genbuild

// The wrapper itself, without Nix: contexts, Close, arguments genbuild cannot take,
// result codes, durations, the README's example.

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"genbuild/genbuildpb"
)

// idle is a builder whose repository does not exist: it starts no Nix process but for
// the evaluations a test asks for.
func idle(t *testing.T) *Builder {
	t.Helper()
	return newBuilder(t, Config{Hostname: "h", RepositoryPath: "/nonexistent/repository"}, "")
}

// inNextEvent lists the goroutines that are in NextEvent (and so maybe in C).
func inNextEvent() []string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var found []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "genbuild.(*Builder).NextEvent") || strings.Contains(g, "genbuild.(*Builder).pollEvent") {
			found = append(found, g)
		}
	}
	return found
}

// NextEvent returns ctx.Err() soon after ctx ends, whether by its deadline or by a
// cancel from another goroutine; no goroutine stays in it and no C call is left
// waiting: the first event after twenty abandoned waits goes to the next waiter.
func TestNextEventHonoursItsContext(t *testing.T) {
	b := idle(t)
	// The promise is about 50 ms; the bound only tells a slow machine from a hang.
	const late = time.Second

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	ev, err := b.NextEvent(ctx)
	took := time.Since(start)
	t.Logf("deadline of 200ms: returned after %v", took)
	if ev != nil || err != context.DeadlineExceeded {
		t.Fatalf("NextEvent past its deadline: %v, %v; want context.DeadlineExceeded", ev, err)
	}
	if took > 200*time.Millisecond+late {
		t.Errorf("NextEvent returned %v after its 200ms deadline", took-200*time.Millisecond)
	}

	for i := 0; i < 10; i++ {
		ctx, cancel := context.WithCancel(context.Background())
		started := make(chan struct{})
		type result struct {
			ev  *genbuildpb.Event
			err error
			at  time.Time
		}
		done := make(chan result, 1)
		go func() {
			close(started)
			ev, err := b.NextEvent(ctx)
			done <- result{ev, err, time.Now()}
		}()
		<-started
		cancelled := time.Now()
		cancel()
		select {
		case r := <-done:
			if r.ev != nil || r.err != context.Canceled {
				t.Fatalf("NextEvent cancelled: %v, %v; want context.Canceled", r.ev, r.err)
			}
			if d := r.at.Sub(cancelled); d > late {
				t.Errorf("NextEvent returned %v after its context was cancelled", d)
			}
		case <-time.After(hang):
			t.Fatalf("NextEvent still waits %v after its context was cancelled", hang)
		}
	}
	for i := 1; i <= 10; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(i)*7*time.Millisecond)
		if _, err := b.NextEvent(ctx); err != context.DeadlineExceeded {
			t.Fatalf("NextEvent with a deadline of %v: %v", time.Duration(i)*7*time.Millisecond, err)
		}
		cancel()
	}
	already, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := b.NextEvent(already); err != context.Canceled {
		t.Fatalf("NextEvent with a context already cancelled: %v", err)
	}

	// The goroutines above returned from NextEvent (their results were received);
	// one still in it would be a leak.
	if stuck := inNextEvent(); len(stuck) > 0 {
		t.Fatalf("%d goroutines are still in NextEvent after every wait returned:\n%s",
			len(stuck), strings.Join(stuck, "\n\n"))
	}
	// The builder's first event is EvalStarted: a C call left waiting by an abandoned
	// NextEvent would take it.
	uuid, err := b.Eval(rs("not-a-commit"))
	if err != nil {
		t.Fatalf("Eval: %v", err)
	}
	if name, g := kind(next(t, b, "EvalStarted")); name != "EvalStarted" || g.GetUuid() != uuid {
		t.Fatalf("the first event is %s of %s, want EvalStarted of %s", name, g.GetUuid(), uuid)
	}
	if g := waitFor(t, b, "EvalFinished", uuid); g.EvalStatus != "failed" {
		t.Fatalf("the evaluation of no commit: %s", g.EvalStatus)
	}
}

// Close waits for the calls in flight (a NextEvent without deadline among them, which
// returns ErrClosed), every later call returns ErrClosed, Close is idempotent and may
// be called from several goroutines at once.
func TestUseAfterClose(t *testing.T) {
	b := idle(t)
	waiting := make(chan error, 1)
	go func() {
		for {
			// The Eval callers below make events: this waits through them.
			if _, err := b.NextEvent(context.Background()); err != nil {
				waiting <- err
				return
			}
		}
	}()
	// Callers of every method, until they see ErrClosed; refusals are fine meanwhile.
	var wg sync.WaitGroup
	unexpected := make(chan error, 64)
	callers := []func() error{
		func() error { _, err := b.State(); return err },
		func() error { b.Stop(); return b.Resume() },
		func() error { return b.Suspend() },
		func() error { return b.SubmitBuild("00000000-0000-4000-8000-000000000000") },
		func() error { _, err := b.Eval(rs("not-a-commit")); return err },
		func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Millisecond)
			defer cancel()
			_, err := b.NextEvent(ctx)
			if err == context.DeadlineExceeded {
				return nil
			}
			return err
		},
	}
	calls := make(chan int, len(callers))
	var ready sync.WaitGroup
	for _, call := range callers {
		wg.Add(1)
		ready.Add(1)
		go func(call func() error) {
			defer wg.Done()
			for n := 1; ; n++ {
				err := call()
				if err == ErrClosed {
					calls <- n
					return
				}
				if err != nil && !errors.Is(err, ErrRefused) {
					unexpected <- err
				}
				if n == 1 {
					ready.Done()
				}
			}
		}(call)
	}
	// Close once every caller made a call: the next ones are in flight.
	ready.Wait()
	closed := make(chan struct{})
	go func() {
		var all sync.WaitGroup
		for i := 0; i < 4; i++ {
			all.Add(1)
			go func() { defer all.Done(); b.Close() }()
		}
		all.Wait()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(hang):
		t.Fatalf("Close has not returned after %v", hang)
	}
	select {
	case err := <-waiting:
		if err != ErrClosed {
			t.Errorf("NextEvent waiting without deadline during Close: %v, want ErrClosed", err)
		}
	case <-time.After(hang):
		t.Fatalf("NextEvent still waits %v after Close", hang)
	}
	wg.Wait()
	close(unexpected)
	for err := range unexpected {
		t.Errorf("a call during Close: %v", err)
	}
	close(calls)
	for n := range calls {
		t.Logf("a caller made %d calls before ErrClosed", n)
	}

	b.Close()
	b.Stop()
	if uuid, err := b.Eval(rs("0123")); uuid != "" || err != ErrClosed {
		t.Errorf("Eval after Close: %q, %v", uuid, err)
	}
	if _, err := b.Eval(nil); err != ErrClosed {
		t.Errorf("Eval(nil) after Close: %v", err)
	}
	if _, err := b.evalBytes([]byte{0xff}); err != ErrClosed {
		t.Errorf("evalBytes after Close: %v", err)
	}
	for name, err := range map[string]error{
		"SubmitBuild":      b.SubmitBuild("x"),
		"SubmitBuild(NUL)": b.SubmitBuild("x\x00"),
		"Suspend":          b.Suspend(),
		"Resume":           b.Resume(),
	} {
		if err != ErrClosed || !errors.Is(err, ErrClosed) {
			t.Errorf("%s after Close: %v", name, err)
		}
	}
	if st, err := b.State(); st != nil || err != ErrClosed {
		t.Errorf("State after Close: %v, %v", st, err)
	}
	if ev, err := b.NextEvent(context.Background()); ev != nil || err != ErrClosed {
		t.Errorf("NextEvent after Close: %v, %v", ev, err)
	}
}

// What genbuild cannot take is ErrInvalidArgument, from the Go side (NUL bytes, nil,
// strings protobuf refuses to encode, negative durations) and from genbuild's (bytes
// that do not decode); the bytes genbuild hands out are decoded likewise.
func TestBadProtobufAndArguments(t *testing.T) {
	b := idle(t)
	garbage := []byte{0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x01}
	uuid, err := b.evalBytes(garbage)
	assertInvalid(t, "Eval(garbage bytes)", err, "rs does not decode as a RepositoryStatus")
	var e *Error
	if uuid != "" || !errors.As(err, &e) || e.Op != "Eval" {
		t.Errorf("Eval(garbage bytes): %q, %#v", uuid, err)
	}
	_, err = b.Eval(&genbuildpb.RepositoryStatus{SelectedCommitId: "\xff\xfe"})
	assertInvalid(t, "Eval(a commit id that is not UTF-8)", err, "does not encode")
	_, err = b.Eval(nil)
	assertInvalid(t, "Eval(nil)", err, "nil")
	assertInvalid(t, "SubmitBuild(a NUL byte)", b.SubmitBuild("a\x00b"), "NUL")
	_, err = decodeEvent(garbage)
	assertInvalid(t, "an event of garbage", err, "genbuild.Event")
	_, err = decodeState(garbage)
	assertInvalid(t, "a state of garbage", err, "genbuild.Builder")
	if ev, err := decodeEvent([]byte{}); err != nil || ev.Kind != nil {
		t.Errorf("an empty event decodes as an event of no kind: %v, %v", ev, err)
	}
	// The builder is unharmed.
	if st, err := b.State(); err != nil || st.Hostname != "h" {
		t.Errorf("State after bad input: %v, %v", st, err)
	}

	ok := Config{Hostname: "h", RepositoryPath: "/nonexistent/repository"}
	for _, c := range []struct {
		what string
		edit func(*Config)
		text string
	}{
		{"no hostname", func(c *Config) { c.Hostname = "" }, "Config.Hostname is required"},
		{"no repository", func(c *Config) { c.RepositoryPath = "" }, "Config.RepositoryPath is required"},
		{"a NUL in the hostname", func(c *Config) { c.Hostname = "h\x00" }, "Config.Hostname holds a NUL byte"},
		{"a NUL in the state file", func(c *Config) { c.StateFile = "/tmp/\x00" }, "Config.StateFile holds a NUL byte"},
		{"a hostname not UTF-8", func(c *Config) { c.Hostname = "\xff\xfe" }, "config->hostname is not UTF-8"},
		{"a negative eval timeout", func(c *Config) { c.EvalTimeout = -time.Second }, "Config.EvalTimeout is negative"},
		{"a negative build timeout", func(c *Config) { c.BuildTimeout = -1 }, "Config.BuildTimeout is negative"},
		{"a negative kill grace", func(c *Config) { c.KillGrace = -1 }, "Config.KillGrace is negative"},
		{"an unnamed option", func(c *Config) { c.NixOptions = []NixOption{{"a", "1"}, {"", "2"}} }, "Config.NixOptions[1].Name is empty"},
		{"a NUL in an option", func(c *Config) { c.NixOptions = []NixOption{{"a", "\x00"}} }, "Config.NixOptions[0].Value holds a NUL byte"},
	} {
		cfg := ok
		c.edit(&cfg)
		b, err := New(cfg)
		if b != nil {
			b.Close()
		}
		assertInvalid(t, "New with "+c.what, err, c.text)
		if errors.As(err, &e) && e.Op != "New" {
			t.Errorf("New with %s: Op %q", c.what, e.Op)
		}
	}

	// A state file that does not decode is ErrStore, named, and left untouched.
	corrupt := filepath.Join(t.TempDir(), "garbage.pb")
	text := []byte("\xff\xff\xff\xff this is no protobuf")
	if err := os.WriteFile(corrupt, text, 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := ok
	cfg.StateFile = corrupt
	if b, err := New(cfg); !errors.Is(err, ErrStore) || !strings.Contains(err.Error(), "garbage.pb") {
		if b != nil {
			b.Close()
		}
		t.Errorf("New with a corrupt state file: %v, want ErrStore naming the file", err)
	} else {
		t.Logf("ok   New with a corrupt state file: %v", err)
	}
	if after, _ := os.ReadFile(corrupt); !bytes.Equal(after, text) {
		t.Errorf("the corrupt state file was changed")
	}
}

// Every result code the C ABI names has its kind; an unknown one is ErrInternal.
func TestResultCodes(t *testing.T) {
	want := map[uint32]struct {
		name string
		kind error
	}{
		resultTimeout:         {"GENBUILD_RESULT_TIMEOUT", ErrTimeout},
		resultNullArgument:    {"GENBUILD_RESULT_NULL_ARGUMENT", ErrInvalidArgument},
		resultInvalidArgument: {"GENBUILD_RESULT_INVALID_ARGUMENT", ErrInvalidArgument},
		resultRefused:         {"GENBUILD_RESULT_REFUSED", ErrRefused},
		resultStoreError:      {"GENBUILD_RESULT_STORE_ERROR", ErrStore},
		resultPanic:           {"GENBUILD_RESULT_PANIC", ErrInternal},
		resultDisconnected:    {"GENBUILD_RESULT_DISCONNECTED", ErrInternal},
	}
	if err := errorFor("Op", resultOK, "ignored"); err != nil || resultName(resultOK) != "GENBUILD_RESULT_OK" {
		t.Errorf("OK: %v, %s", err, resultName(resultOK))
	}
	for code := uint32(1); code < 256; code++ {
		name := resultName(code)
		w, known := want[code]
		switch {
		case name == "unknown" && known:
			t.Errorf("code %d (%s) is unknown to libgenbuild", code, w.name)
		case name == "unknown":
			err := errorFor("Op", code, "")
			if !errors.Is(err, ErrInternal) || err.Error() != "Op failed with unknown" {
				t.Errorf("an unknown code %d: %v", code, err)
			}
		case !known:
			t.Errorf("libgenbuild names code %d %s, which this package does not know: give it its kind", code, name)
		case name != w.name:
			t.Errorf("code %d is %s, want %s", code, name, w.name)
		default:
			err := errorFor("Op", code, "a message")
			if !errors.Is(err, w.kind) || err.Error() != "a message" {
				t.Errorf("%s: %v, want %v", name, err, w.kind)
			}
			for _, other := range []error{ErrTimeout, ErrInvalidArgument, ErrRefused, ErrStore, ErrInternal, ErrClosed} {
				if other != w.kind && errors.Is(err, other) {
					t.Errorf("%s is also %v", name, other)
				}
			}
			if err := errorFor("Op", code, ""); err.Error() != "Op failed with "+name {
				t.Errorf("%s without a message: %q", name, err)
			}
		}
	}
}

func TestMillis(t *testing.T) {
	for _, c := range []struct {
		d  time.Duration
		ms uint64
		ok bool
	}{
		{0, 0, true},
		{time.Nanosecond, 1, true},
		{time.Millisecond, 1, true},
		{time.Millisecond + 1, 2, true},
		{90 * time.Second, 90000, true},
		{Forever - 1, uint64((Forever-1)/time.Millisecond) + 1, true},
		{Forever, 1<<64 - 1, true},
		{-1, 0, false},
		{-Forever, 0, false},
	} {
		if ms, ok := millis(c.d); ms != c.ms || ok != c.ok {
			t.Errorf("millis(%v) = %d, %v; want %d, %v", c.d, ms, ok, c.ms, c.ok)
		}
	}
}

// The README shows go/example/main.go in full; building the file builds what the
// README says (go/test.sh builds and runs it).
func TestReadmeExampleIsExampleMain(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("../README.md: %v", err)
		}
		t.Skipf("skipped: not in genbuild's repository: %v", err)
	}
	_, section, found := strings.Cut(string(readme), "## Using genbuild from Go")
	if !found {
		t.Fatal(`the README has no "Using genbuild from Go" section`)
	}
	_, block, _ := strings.Cut(section, "```go\n")
	block, _, _ = strings.Cut(block, "```\n")
	example, err := os.ReadFile("example/main.go")
	if err != nil {
		t.Fatal(err)
	}
	if block != string(example) {
		t.Fatal("the README's Go example differs from go/example/main.go: copy the file into the README")
	}
}
