package genbuild

// The package against real Nix: evaluation and build, refusals, concurrent readers,
// stops, persistence, every Config field that can be seen at work, flakes, the
// finalizer. Every test that starts processes checks that none is left.

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestEvalAndBuild(t *testing.T) {
	requireNix(t)
	r := newRepo(t)
	commit := r.commit("echo " + r.nonce + " > $out")
	cfg := r.config()
	b := newBuilder(t, cfg, r.nonce)

	uuid, err := b.Eval(rs(commit))
	if err != nil || len(uuid) != 36 {
		t.Fatalf("Eval: %q, %v", uuid, err)
	}
	if g := waitFor(t, b, "EvalStarted", uuid); g.EvalStatus != "evaluating" {
		t.Errorf("EvalStarted: eval status %q", g.EvalStatus)
	}
	g := waitFor(t, b, "EvalFinished", uuid)
	if g.EvalStatus != "evaluated" || !strings.HasSuffix(g.DrvPath, ".drv") || !strings.HasPrefix(g.OutPath, "/nix/store/") {
		t.Fatalf("EvalFinished: %s (%s), drv %q, out %q", g.EvalStatus, g.EvalErr, g.DrvPath, g.OutPath)
	}
	out := g.OutPath

	if err := b.SubmitBuild(uuid); err != nil {
		t.Fatalf("SubmitBuild: %v", err)
	}
	if g := waitFor(t, b, "BuildStarted", uuid); g.BuildReason != "need to be built" {
		t.Errorf("BuildStarted: reason %q", g.BuildReason)
	}
	if g := waitFor(t, b, "BuildFinished", uuid); g.BuildStatus != "built" {
		t.Fatalf("BuildFinished: %s: %s", g.BuildStatus, g.BuildErr)
	}
	if content, err := os.ReadFile(out); err != nil || strings.TrimSpace(string(content)) != r.nonce {
		t.Errorf("the output %s holds %q (%v), not the nonce", out, content, err)
	}
	assertRefused(t, "SubmitBuild(built)", b.SubmitBuild(uuid), "the generation is already built")

	st, err := b.State()
	if err != nil {
		t.Fatalf("State: %v", err)
	}
	if st.Hostname != "testhost" || st.GenerationUuid != uuid || st.IsEvaluating.GetValue() ||
		st.IsBuilding.GetValue() || st.IsSuspended.GetValue() {
		t.Errorf("State: %v", st)
	}
	sg := st.Generation
	if sg.GetUuid() != uuid || sg.EvalStatus != "evaluated" || sg.BuildStatus != "built" ||
		sg.SelectedCommitId != commit || sg.SelectedBranchName != "main" || sg.SelectedRemoteName != "origin" ||
		sg.MainCommitId != commit || sg.Hostname != "testhost" || sg.RepositoryPath != r.dir ||
		sg.SystemAttr != "machine" || sg.OutPath != out || sg.EvalEndedAt == nil || sg.BuildEndedAt == nil {
		t.Errorf("State's generation: %v", sg)
	}
	// Config.GCRootDir: the output is rooted there.
	var roots []string
	_ = filepath.WalkDir(cfg.GCRootDir, func(path string, d fs.DirEntry, err error) error {
		if err == nil && d.Type()&fs.ModeSymlink != 0 {
			if target, _ := os.Readlink(path); target == out {
				roots = append(roots, path)
			}
		}
		return nil
	})
	if len(roots) == 0 {
		t.Errorf("no gc root of %s in Config.GCRootDir %s", out, cfg.GCRootDir)
	}
}

// Every refusal, with errors.Is(err, ErrRefused) and the builder's exact text.
func TestRefusals(t *testing.T) {
	requireNix(t)
	r := newRepo(t)
	slow := r.commit(sleeper(r.nonce))
	b := newBuilder(t, r.config(), sleepMarker(r.nonce))

	assertRefused(t, "Resume(not suspended)", b.Resume(), "the builder is not suspended")
	unknown := "00000000-0000-4000-8000-000000000000"
	assertRefused(t, "SubmitBuild(unknown)", b.SubmitBuild(unknown),
		"no generation with uuid "+unknown+" has been found")

	bad, err := b.Eval(rs("not-a-commit"))
	if err != nil {
		t.Fatalf("Eval(not a commit): %v", err)
	}
	if g := waitFor(t, b, "EvalFinished", bad); g.EvalStatus != "failed" {
		t.Fatalf("the evaluation of no commit: %s", g.EvalStatus)
	}
	assertRefused(t, "SubmitBuild(failed evaluation)", b.SubmitBuild(bad), "the generation is not evaluated")

	uuid := evaluate(t, b, slow)
	assertRefused(t, "SubmitBuild(earlier generation)", b.SubmitBuild(bad),
		"another generation is evaluating or evaluated")
	if err := b.SubmitBuild(uuid); err != nil {
		t.Fatalf("SubmitBuild: %v", err)
	}
	assertRefused(t, "SubmitBuild(twice)", b.SubmitBuild(uuid), "the builder is already building")
	waitLine(t, b, uuid, "started "+r.nonce)

	if err := b.Suspend(); err != nil {
		t.Fatalf("Suspend: %v", err)
	}
	if g := waitFor(t, b, "BuildFinished", uuid); g.BuildStatus != "failed" || !strings.Contains(g.BuildErr, "cancelled: suspended") {
		t.Errorf("the suspended build: %s: %s", g.BuildStatus, g.BuildErr)
	}
	assertRefused(t, "Suspend(twice)", b.Suspend(), "the builder is already suspended")
	if err := b.Resume(); err != nil {
		t.Fatalf("Resume: %v", err)
	}
	waitFor(t, b, "BuildStarted", uuid)
	b.Stop()
	assertNoProcess(t, sleepMarker(r.nonce), "after Stop")
	if g := waitFor(t, b, "BuildFinished", uuid); !strings.Contains(g.BuildErr, "cancelled: stopped") {
		t.Errorf("the stopped build: %s: %s", g.BuildStatus, g.BuildErr)
	}
}

// Eval's refusal when a stop comes while it waits for the running job to end.
const stoppedWhileWaiting = "stop() was called while eval() waited for the running job to end, " +
	"so the evaluation was not started: call eval() again to evaluate this commit"

// Sixteen goroutines read State while this one evaluates, builds, pre-empts and
// stops, and another one stops too; under the race detector.
func TestSixteenGoroutinesReadStateDuringEvalAndStop(t *testing.T) {
	requireNix(t)
	r := newRepo(t)
	quick := r.commit("echo " + r.nonce + " > $out")
	slow := r.commit(sleeper(r.nonce))
	b := newBuilder(t, r.config(), sleepMarker(r.nonce))

	done := make(chan struct{})
	var wg sync.WaitGroup
	reads := make([]int, 16)
	problems := make(chan string, len(reads))
	for i := range reads {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			for {
				st, err := b.State()
				problem := ""
				switch {
				case err != nil:
					problem = err.Error()
				case st.Hostname != "testhost" || st.IsEvaluating == nil || st.IsBuilding == nil || st.IsSuspended == nil:
					problem = fmt.Sprintf("a state without hostname or flags: %v", st)
				case st.Generation != nil && st.Generation.Uuid != st.GenerationUuid:
					problem = fmt.Sprintf("generation %s in a state of %s", st.Generation.Uuid, st.GenerationUuid)
				}
				if problem != "" {
					problems <- fmt.Sprintf("reader %d: %s", i, problem)
					return
				}
				reads[i]++
				select {
				case <-done:
					return
				default:
				}
			}
		}(i)
	}

	building := evaluate(t, b, slow)
	if err := b.SubmitBuild(building); err != nil {
		t.Fatalf("SubmitBuild: %v", err)
	}
	waitLine(t, b, building, "started "+r.nonce)
	// An evaluation pre-empts the build.
	evaluate(t, b, quick)
	// A stop during (or right after) an evaluation.
	if _, err := b.Eval(rs(slow)); err != nil {
		t.Fatalf("Eval: %v", err)
	}
	b.Stop()
	if st, err := b.State(); err != nil || st.IsEvaluating.GetValue() || st.IsBuilding.GetValue() {
		t.Errorf("State after Stop: %v, %v", st, err)
	}
	// A stop from another goroutine during a build, while this one evaluates.
	building = evaluate(t, b, slow)
	if err := b.SubmitBuild(building); err != nil {
		t.Fatalf("SubmitBuild: %v", err)
	}
	waitLine(t, b, building, "started "+r.nonce)
	stopped := make(chan struct{})
	go func() { b.Stop(); close(stopped) }()
	// The evaluation starts after the stop, or is refused when the stop came while it
	// waited for the build to end.
	if _, err := b.Eval(rs(quick)); err != nil {
		assertRefused(t, "Eval during Stop", err, stoppedWhileWaiting)
	}
	<-stopped
	b.Stop()
	assertNoProcess(t, sleepMarker(r.nonce), "after Stop")

	close(done)
	wg.Wait()
	close(problems)
	for p := range problems {
		t.Error(p)
	}
	t.Logf("reads of State per goroutine: %v", reads)
	for i, n := range reads {
		if n == 0 {
			t.Errorf("reader %d read nothing", i)
		}
	}
}

// Stop from another goroutine while a third waits in NextEvent: when it returns,
// nothing the builder started is alive, and the waiter gets the build's end.
func TestStopFromAnotherGoroutine(t *testing.T) {
	requireNix(t)
	r := newRepo(t)
	slow := r.commit(sleeper(r.nonce))
	cfg := r.config()
	// Without end: the stop cancels the build through SIGTERM alone (nix-store ends at
	// once on it), never through a timeout.
	cfg.EvalTimeout, cfg.BuildTimeout, cfg.KillGrace = Forever, Forever, Forever
	b := newBuilder(t, cfg, sleepMarker(r.nonce))

	uuid := evaluate(t, b, slow)
	if err := b.SubmitBuild(uuid); err != nil {
		t.Fatalf("SubmitBuild: %v", err)
	}
	waitLine(t, b, uuid, "started "+r.nonce)
	if alive := processesWith(sleepMarker(r.nonce)); len(alive) == 0 {
		t.Fatal("the build runs no process")
	}

	type ended struct {
		status, err string
		problem     error
	}
	finished := make(chan ended, 1)
	ctx, cancel := context.WithTimeout(context.Background(), hang)
	defer cancel()
	go func() {
		for {
			ev, err := b.NextEvent(ctx)
			if err != nil {
				finished <- ended{problem: err}
				return
			}
			if name, g := kind(ev); name == "BuildFinished" && g.GetUuid() == uuid {
				finished <- ended{status: g.BuildStatus, err: g.BuildErr}
				return
			}
		}
	}()
	stopped := make(chan struct{})
	go func() { b.Stop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(hang):
		t.Fatalf("Stop has not returned after %v", hang)
	}
	assertNoProcess(t, sleepMarker(r.nonce), "after Stop returned")
	e := <-finished
	if e.problem != nil || e.status != "failed" || !strings.Contains(e.err, "cancelled: stopped") {
		t.Errorf("the waiter got %q: %q (%v), want the build failed, cancelled: stopped", e.status, e.err, e.problem)
	}
	if st, err := b.State(); err != nil || st.IsBuilding.GetValue() || st.IsEvaluating.GetValue() {
		t.Errorf("State after Stop: %v, %v", st, err)
	}
}

// A new builder over the state file of a closed one knows its generations.
func TestStateFileReopened(t *testing.T) {
	requireNix(t)
	r := newRepo(t)
	commit := r.commit("echo " + r.nonce + " > $out")
	cfg := r.config()
	cfg.StateFile = filepath.Join(t.TempDir(), "state.pb")
	first := newBuilder(t, cfg, r.nonce)
	uuid := evaluate(t, first, commit)
	if err := first.SubmitBuild(uuid); err != nil {
		t.Fatalf("SubmitBuild: %v", err)
	}
	if g := waitFor(t, first, "BuildFinished", uuid); g.BuildStatus != "built" {
		t.Fatalf("BuildFinished: %s: %s", g.BuildStatus, g.BuildErr)
	}
	first.Close()
	if info, err := os.Stat(cfg.StateFile); err != nil || info.Size() == 0 {
		t.Fatalf("the state file: %v", err)
	}

	reopened := newBuilder(t, cfg, "")
	assertRefused(t, "SubmitBuild on the reopened state file", reopened.SubmitBuild(uuid),
		"the generation is already built")
	reopened.Close()
	// The same request to a builder of another state file: the generation is unknown.
	other := cfg
	other.StateFile = filepath.Join(t.TempDir(), "other.pb")
	fresh := newBuilder(t, other, "")
	assertRefused(t, "SubmitBuild on another state file", fresh.SubmitBuild(uuid),
		"no generation with uuid "+uuid+" has been found")
}

// Config fields seen at work: RepositorySubdir, SystemAttr, MachineIDAttr and
// NixBinDir (through an evaluation), EvalTimeout and BuildTimeout (through their
// failures). (Hostname, RepositoryPath, NixOptions and GCRootDir: TestEvalAndBuild;
// StateFile: TestStateFileReopened; Flake: TestFlake.)
func TestConfigReachesNix(t *testing.T) {
	requireNix(t)
	r := newRepo(t)
	slow := r.commit(sleeper(r.nonce))
	machineID := "id-" + r.nonce
	sub := r.commitFile("sys/default.nix", fmt.Sprintf("{ custom = { toplevel = %s; my.id = %s; }; }\n",
		drv(r.nonce, "echo > $out", "builtins.currentSystem"), nixStr(machineID)))

	// A Nix bin dir whose commands note their names, then run the real ones.
	bin := filepath.Join(t.TempDir(), "bin")
	calls := filepath.Join(t.TempDir(), "calls")
	if err := os.Mkdir(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"nix", "nix-instantiate", "nix-store"} {
		real, err := exec.LookPath(name)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		script := fmt.Sprintf("#!/bin/sh\necho %s >> %s\nexec %s \"$@\"\n", name, calls, real)
		if err := os.WriteFile(filepath.Join(bin, name), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cfg := r.config()
	cfg.RepositorySubdir, cfg.SystemAttr, cfg.MachineIDAttr, cfg.NixBinDir = "sys", "custom", "my.id", bin
	b := newBuilder(t, cfg, sleepMarker(r.nonce))
	uuid, err := b.Eval(rs(sub))
	if err != nil {
		t.Fatalf("Eval: %v", err)
	}
	g := waitFor(t, b, "EvalFinished", uuid)
	if g.EvalStatus != "evaluated" || g.MachineId != machineID || g.RepositorySubdir != "sys" || g.SystemAttr != "custom" {
		t.Errorf("evaluated in subdir sys, attribute custom, machine id my.id: %v", g)
	}
	if noted, err := os.ReadFile(calls); err != nil || !strings.Contains(string(noted), "nix-instantiate") {
		t.Errorf("Config.NixBinDir's nix-instantiate did not run: %q, %v", noted, err)
	}

	cfg = r.config()
	cfg.EvalTimeout = time.Nanosecond // 1 ms
	cfg.BuildTimeout = 300 * time.Millisecond
	b = newBuilder(t, cfg, sleepMarker(r.nonce))
	uuid, err = b.Eval(rs(slow))
	if err != nil {
		t.Fatalf("Eval: %v", err)
	}
	if g := waitFor(t, b, "EvalFinished", uuid); g.EvalStatus != "failed" || !strings.Contains(g.EvalErr, "timed out after") {
		t.Errorf("an evaluation with a timeout of 1 ms: %s: %s", g.EvalStatus, g.EvalErr)
	}
	b.Close()

	cfg.EvalTimeout = 0
	b = newBuilder(t, cfg, sleepMarker(r.nonce))
	uuid = evaluate(t, b, slow)
	if err := b.SubmitBuild(uuid); err != nil {
		t.Fatalf("SubmitBuild: %v", err)
	}
	if g := waitFor(t, b, "BuildFinished", uuid); g.BuildStatus != "failed" || !strings.Contains(g.BuildErr, "timed out after") {
		t.Errorf("a build of 300 s with a timeout of 300 ms: %s: %s", g.BuildStatus, g.BuildErr)
	}
	assertNoProcess(t, sleepMarker(r.nonce), "after the build timed out")
}

// Config.EvalMemoryLimit: an evaluation past it is killed and says so, with what it
// used; Config.Nice out of range is refused.
func TestMemoryLimitAndUsage(t *testing.T) {
	requireNix(t)
	r := newRepo(t)
	hog := r.commitFile("default.nix", fmt.Sprintf("{ machine = { toplevel = derivation { name = \"hog\"; system = builtins.currentSystem; builder = \"/bin/sh\"; nonce = %s; work = builtins.deepSeq (builtins.genList (x: toString x) 3000000) true; args = [ \"-c\" \"echo > $out\" ]; }; }; }\n", nixStr(r.nonce)))
	cfg := r.config()
	cfg.EvalMemoryLimit = 128 << 20
	cfg.Nice = 5
	// Carries the nonce into the evaluator's command line, for the check that none is left.
	cfg.NixOptions = append(cfg.NixOptions, NixOption{"system-features", "nonce-" + r.nonce})
	b := newBuilder(t, cfg, "nonce-"+r.nonce)
	uuid, err := b.Eval(rs(hog))
	if err != nil {
		t.Fatalf("Eval: %v", err)
	}
	g := waitFor(t, b, "EvalFinished", uuid)
	if g.EvalStatus != "failed" || !strings.Contains(g.EvalErr, "was killed: it reached its memory limit of 128 MiB") {
		t.Errorf("an evaluation past its limit: %s: %s", g.EvalStatus, g.EvalErr)
	}
	if u := g.EvalUsage; u == nil || !u.MemoryLimitReached || u.PeakMemoryBytes <= 128<<20 {
		t.Errorf("eval_usage of a killed evaluation: %v", u)
	}
	cfg.Nice = 20
	if _, err := New(cfg); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("Nice 20: %v", err)
	}
}

// Config.Flake: a flake is evaluated and built with nix eval and nix build.
func TestFlake(t *testing.T) {
	requireNix(t)
	r := newRepo(t)
	system := map[string]string{"amd64": "x86_64-linux", "arm64": "aarch64-linux"}[runtime.GOARCH]
	if system == "" {
		t.Skipf("skipped: no Nix system name known for %s", runtime.GOARCH)
	}
	commit := r.commitFile("flake.nix", fmt.Sprintf(
		"{ outputs = { self }: { nixosConfigurations.testhost = { config.system.build.toplevel = %s; }; }; }\n",
		drv(r.nonce, "echo "+r.nonce+" > $out", nixStr(system))))
	cfg := r.config()
	cfg.Flake, cfg.SystemAttr = true, ""
	cfg.NixOptions = append(append([]NixOption{}, nixSettings...), NixOption{"experimental-features", "nix-command flakes"})
	b := newBuilder(t, cfg, r.nonce)
	uuid := evaluate(t, b, commit)
	if err := b.SubmitBuild(uuid); err != nil {
		t.Fatalf("SubmitBuild: %v", err)
	}
	g := waitFor(t, b, "BuildFinished", uuid)
	if g.BuildStatus != "built" || g.SystemAttr != "nixosConfigurations" {
		t.Fatalf("the flake's build: %s: %s (attribute %s)", g.BuildStatus, g.BuildErr, g.SystemAttr)
	}
	if content, err := os.ReadFile(g.OutPath); err != nil || strings.TrimSpace(string(content)) != r.nonce {
		t.Errorf("the output %s holds %q (%v)", g.OutPath, content, err)
	}
}

// A builder dropped without Close is closed by its finalizer once collected: the
// build it ran is killed. (A safety net only; see Close.)
func TestFinalizerClosesAnUnreachableBuilder(t *testing.T) {
	requireNix(t)
	r := newRepo(t)
	slow := r.commit(sleeper(r.nonce))
	marker := sleepMarker(r.nonce)
	t.Cleanup(func() { assertNoProcess(t, marker, "at the end") })
	startAndDrop(t, r.config(), slow, r.nonce)
	deadline := time.Now().Add(hang)
	for len(processesWith(marker)) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the build still runs %v after its builder became unreachable", hang)
		}
		runtime.GC()
		time.Sleep(10 * time.Millisecond) // polling /proc: nothing to wait on
	}
}

// startAndDrop starts a build of commit and returns without closing its builder,
// which then nothing refers to.
//
//go:noinline
func startAndDrop(t *testing.T, cfg Config, commit, nonce string) {
	b, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	uuid := evaluate(t, b, commit)
	if err := b.SubmitBuild(uuid); err != nil {
		t.Fatalf("SubmitBuild: %v", err)
	}
	waitLine(t, b, uuid, "started "+nonce)
	if len(processesWith(sleepMarker(nonce))) == 0 {
		t.Fatal("the build runs no process")
	}
	// Until here: the garbage collector may finalize b as soon as it is no longer used.
	runtime.KeepAlive(b)
}
