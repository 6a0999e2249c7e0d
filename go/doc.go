// Package genbuild evaluates and builds one NixOS generation at a time, for Go
// programs: a thin wrapper over genbuild's C ABI (libgenbuild, the workspace member
// genbuild-ffi) whose messages are the protobuf types of package
// genbuild/genbuildpb.
//
// A caller hands a Builder a repository status ("commit C is the one to run"):
// Eval evaluates the Nix expression at that commit as a new generation (its .drv, its
// output path, the expected machine id) and returns the generation's uuid;
// SubmitBuild builds it once the caller confirms. A new Eval pre-empts whatever runs.
// Everything happens on the builder's own threads; the caller learns how it goes from
// NextEvent and State:
//
//	b, err := genbuild.New(genbuild.Config{
//		Hostname:       "web1",
//		RepositoryPath: "/var/lib/infra",
//		Flake:          true,
//		NixOptions:     []genbuild.NixOption{{Name: "experimental-features", Value: "nix-command flakes"}},
//	})
//	if err != nil {
//		return err
//	}
//	defer b.Close()
//	uuid, err := b.Eval(&genbuildpb.RepositoryStatus{SelectedCommitId: commit})
//	if err != nil {
//		return err
//	}
//	for {
//		ev, err := b.NextEvent(ctx)
//		if err != nil {
//			return err // ctx.Err() when ctx ends
//		}
//		if g := ev.GetEvalFinished().GetGeneration(); g.GetUuid() == uuid {
//			if g.EvalStatus != "evaluated" {
//				return errors.New(g.EvalErr)
//			}
//			return b.SubmitBuild(uuid) // then wait for its BuildFinished
//		}
//	}
//
// go/example in genbuild's repository is a whole program: it evaluates and builds a
// commit, printing progress and a summary.
//
// # Concurrency and Close
//
// Every method may be called from any goroutine, concurrently with the others:
// sixteen goroutines reading State while another evaluates, a goroutine calling Stop
// while another waits in NextEvent. Eval, Suspend and Stop block until what they
// cancel has ended; NextEvent waits in slices of 50 ms, so that it honours its context
// within about that and never holds up Close.
//
// Close is required. It stops what runs, waits for the calls in flight and frees the
// builder; every method called once it began returns ErrClosed, never a crash. A
// finalizer closes a Builder that became unreachable, but only as a safety net: the
// garbage collector may run it late or never, and until then the builder's threads
// and the Nix processes it started live on.
//
// # Errors
//
// Methods return an *Error whose text is genbuild's message; errors.Is tells its
// kind: ErrRefused (the builder's refusals, with the exact texts of comin's builder,
// e.g. "the builder is already building"), ErrInvalidArgument, ErrStore, ErrClosed,
// ErrInternal (a bug), ErrTimeout. A failed evaluation or build is no error of a
// method: it is recorded on its generation (EvalErr, BuildErr: the failing command, its
// status and the last lines of Nix's message; "cancelled: …"; "timed out after …").
//
// # Building and linking
//
// The package is imported as "genbuild" with its directory (go/ in genbuild's
// repository) at $GOPATH/src/genbuild, in GOPATH mode (GO111MODULE=off); it needs
// google.golang.org/protobuf (Debian: golang-google-protobuf-dev, in
// /usr/share/gocode) and cgo. genbuild.h in this directory is a link to
// ffi/include/genbuild.h; copy the file itself (cp -L) when copying the directory out
// of the repository. Build the library first:
//
//	cargo build --release -p genbuild-ffi   # target/release/libgenbuild.{so,a}
//
// Dynamically (the default), the program needs libgenbuild.so at run time: through
// LD_LIBRARY_PATH, or a run path set at link time:
//
//	CGO_LDFLAGS="-L$REPO/target/release -Wl,-rpath,$REPO/target/release" go build
//
// Statically, with the build tag genbuild_static: the program links libgenbuild.a and
// the system libraries Rust's standard library needs, and runs without
// LD_LIBRARY_PATH or libgenbuild.so (of shared libraries it needs only the C library
// and libgcc_s):
//
//	CGO_LDFLAGS="-L$REPO/target/release" go build -tags genbuild_static
//
// # Nix
//
// genbuild runs Nix's own commands (nix-instantiate and nix-store, or nix eval and
// nix build for flakes), found through PATH or Config.NixBinDir. A fresh single-user
// install as root needs NixOptions build-users-group = "",
// substituters = "" (when offline) and sandbox = false; flakes need
// experimental-features = nix-command flakes.
package genbuild
