// Using genbuild from Go: evaluate a commit of a repository, build it, print the
// builder's progress and a summary, as the Rust demo (examples/demo) does.
//
//	cargo build --release -p genbuild-ffi
//	CGO_LDFLAGS="-L$PWD/target/release" go build -tags genbuild_static -o example genbuild/example
//	./example                                       # the bundled demo
//	./example -repo ~/infra -host web1 -flake -build
//
// Without -repo it creates a temporary git repository holding a tiny default.nix (one
// derivation, no nixpkgs, no network), evaluates and builds it with real Nix, and
// removes it (bundled.go). Ctrl-C stops the builder and its Nix processes. Exit
// status: 0 when what was asked succeeded, 1 when not, 2 for a usage error.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path"
	"strings"
	"syscall"
	"time"

	"genbuild"
	"genbuild/genbuildpb"

	"google.golang.org/protobuf/types/known/timestamppb"
)

func main() { os.Exit(run()) }

func run() int {
	repo := flag.String("repo", "", "the git repository (none: the bundled demo)")
	host := flag.String("host", "", "the host whose system is evaluated")
	flake := flag.Bool("flake", false, "the repository is a flake (otherwise its default.nix is evaluated)")
	attr := flag.String("attr", "", "the attribute holding the systems (default nixosConfigurations)")
	subdir := flag.String("subdir", "", "where flake.nix or default.nix is, inside the repository")
	rev := flag.String("commit", "HEAD", "the commit to evaluate: anything git rev-parse knows")
	build := flag.Bool("build", false, "build the evaluated generation (the bundled demo always does)")
	roots := flag.String("gc-roots", "/nix/var/nix/gcroots/genbuild-demo", "the directory of genbuild's gc roots")
	var settings nixSettings
	flag.Var(&settings, "option", "a Nix setting `NAME=VALUE`, repeatable; the defaults suit a fresh single-user root install")
	flag.Parse()
	if flag.NArg() > 0 || (*repo == "") != (*host == "") {
		fmt.Fprintln(os.Stderr, "example: -repo PATH and -host NAME go together (without them the bundled demo runs)")
		return 2
	}

	cfg := genbuild.Config{Hostname: *host, RepositoryPath: *repo, RepositorySubdir: *subdir,
		SystemAttr: *attr, Flake: *flake, GCRootDir: *roots}
	if *repo == "" {
		demo, err := createDemo()
		if err != nil {
			fmt.Fprintln(os.Stderr, "example:", err)
			return 1
		}
		defer demo.remove()
		cfg.Hostname, cfg.RepositoryPath, cfg.SystemAttr, cfg.GCRootDir = "demo", demo.repo, "system", demo.gcRoots
		*build = true
	}
	cfg.NixOptions = []genbuild.NixOption{{Name: "build-users-group"}, {Name: "substituters"}, {Name: "sandbox", Value: "false"}}
	if cfg.Flake {
		cfg.NixOptions = append(cfg.NixOptions, genbuild.NixOption{Name: "experimental-features", Value: "nix-command flakes"})
	}
	cfg.NixOptions = append(cfg.NixOptions, settings...) // later settings win

	commit, subject, err := resolveCommit(cfg.RepositoryPath, *rev)
	if err != nil {
		fmt.Fprintln(os.Stderr, "example:", err)
		return 1
	}
	b, err := genbuild.New(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "example:", err)
		return 1
	}
	defer b.Close() // stops what still runs, joins, frees
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	if err := mainJob(ctx, b, &genbuildpb.RepositoryStatus{SelectedCommitId: commit, SelectedCommitMsg: subject}, *build); err != nil {
		fmt.Fprintln(os.Stderr, "example:", err)
	}
	st, err := b.State()
	if err != nil {
		fmt.Fprintln(os.Stderr, "example:", err)
		return 1
	}
	g := st.Generation
	fmt.Println()
	printSummary(st)
	if g.GetEvalStatus() == "evaluated" && (!*build || g.GetBuildStatus() == "built") {
		return 0
	}
	return 1
}

// mainJob evaluates rs's commit, then builds it when asked, printing what happens.
func mainJob(ctx context.Context, b *genbuild.Builder, rs *genbuildpb.RepositoryStatus, build bool) error {
	uuid, err := b.Eval(rs)
	if err != nil {
		return err
	}
	g, err := watch(ctx, b, uuid, "EvalFinished")
	if err == nil && build && g.EvalStatus == "evaluated" {
		// An output already in the store is recorded built with its evaluation.
		if st, e := b.State(); e == nil && st.Generation.GetBuildStatus() == "built" {
			fmt.Println("already built: its output is in the store")
			return nil
		}
		if err = b.SubmitBuild(uuid); err == nil {
			_, err = watch(ctx, b, uuid, "BuildFinished")
		}
	}
	if errors.Is(err, context.Canceled) {
		fmt.Println("interrupted: stopping the builder and its Nix processes")
		b.Stop()
		return nil
	}
	return err
}

// watch prints the builder's events until the event `until` of generation uuid.
func watch(ctx context.Context, b *genbuild.Builder, uuid, until string) (*genbuildpb.Generation, error) {
	for {
		ev, err := b.NextEvent(ctx)
		if err != nil {
			return nil, err
		}
		var kind string
		var g *genbuildpb.Generation
		switch k := ev.Kind.(type) {
		case *genbuildpb.Event_EvalStarted:
			kind, g = "EvalStarted", k.EvalStarted.Generation
			fmt.Printf("evaluating %s at %.12s\n", g.Hostname, g.SelectedCommitId)
		case *genbuildpb.Event_EvalFinished:
			kind, g = "EvalFinished", k.EvalFinished.Generation
			fmt.Printf("evaluation %s in %s: %s%s\n", g.EvalStatus, took(g.EvalStartedAt, g.EvalEndedAt), g.DrvPath, g.EvalErr)
		case *genbuildpb.Event_BuildStarted:
			kind, g = "BuildStarted", k.BuildStarted.Generation
			fmt.Printf("building %s (%s)\n", g.OutPath, g.BuildReason)
		case *genbuildpb.Event_BuildFinished:
			kind, g = "BuildFinished", k.BuildFinished.Generation
			fmt.Printf("build %s in %s: %s%s\n", g.BuildStatus, took(g.BuildStartedAt, g.BuildEndedAt), g.OutPath, g.BuildErr)
		case *genbuildpb.Event_LogLine:
			prefix := "" // the derivation that printed the line: /nix/store/HASH-NAME.drv
			if _, name, ok := strings.Cut(path.Base(k.LogLine.DrvPath), "-"); ok {
				prefix = "[" + strings.TrimSuffix(name, ".drv") + "] "
			}
			fmt.Printf("  %s%s\n", prefix, k.LogLine.Line)
		case *genbuildpb.Event_BuildProgress:
			p := k.BuildProgress
			fmt.Printf("  %d of %d derivations built, %d building\n", p.Done, p.Expected, p.Running)
		}
		if kind == until && g.GetUuid() == uuid {
			return g, nil
		}
	}
}

// printSummary prints the current generation, one fact per line.
func printSummary(st *genbuildpb.Builder) {
	g := st.Generation
	if g == nil {
		fmt.Println("no generation was evaluated")
		return
	}
	row := func(name, value string) {
		if value != "" {
			fmt.Printf("%-11s %s\n", name, strings.ReplaceAll(strings.TrimSpace(value), "\n", "\n            "))
		}
	}
	row("generation", g.Uuid)
	row("repository", strings.TrimSuffix(g.RepositoryPath+" (subdir "+g.RepositorySubdir+")", " (subdir )"))
	row("host", g.Hostname+" (attribute "+g.SystemAttr+")")
	row("commit", g.SelectedCommitId+" "+strings.SplitN(g.SelectedCommitMsg, "\n", 2)[0])
	row("evaluation", g.EvalStatus+" in "+took(g.EvalStartedAt, g.EvalEndedAt))
	if g.BuildStatus == "initialized" {
		row("build", "not started")
	} else {
		row("build", g.BuildStatus+" in "+took(g.BuildStartedAt, g.BuildEndedAt)+" ("+g.BuildReason+")")
	}
	row("drv", g.DrvPath)
	row("out", g.OutPath)
	row("machine id", g.MachineId)
	for _, e := range []string{g.EvalErr, g.BuildErr, st.LastError} {
		row("error", e)
	}
}

// took is the time from start to end, "?" while either is unknown.
func took(start, end *timestamppb.Timestamp) string {
	if start == nil || end == nil {
		return "?"
	}
	return end.AsTime().Sub(start.AsTime()).Round(time.Millisecond).String()
}

// nixSettings are -option NAME=VALUE flags.
type nixSettings []genbuild.NixOption

func (s *nixSettings) String() string { return fmt.Sprint(*s) }

func (s *nixSettings) Set(v string) error {
	name, value, ok := strings.Cut(v, "=")
	if !ok || name == "" {
		return errors.New("want NAME=VALUE")
	}
	*s = append(*s, genbuild.NixOption{Name: name, Value: value})
	return nil
}
