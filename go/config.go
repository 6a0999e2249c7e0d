package genbuild

// #include <stdlib.h>
// #include "genbuild.h"
import "C"

import (
	"fmt"
	"math"
	"strings"
	"time"
	"unsafe"
)

// Forever is a duration without end: a timeout that never fires, a kill grace after
// which SIGKILL is never sent (UINT64_MAX milliseconds in the C ABI).
const Forever time.Duration = math.MaxInt64

// Config is how a Builder is made. Hostname and RepositoryPath are required; every
// other zero value means genbuild's default.
type Config struct {
	// Hostname is the machine's name, passed to Nix as data.
	Hostname string
	// RepositoryPath is the git repository whose commits are evaluated.
	RepositoryPath string
	// RepositorySubdir is the directory of the repository holding default.nix or
	// flake.nix; "" or "." for the root. It must not leave the repository.
	RepositorySubdir string
	// SystemAttr is, for default.nix, the attribute path holding `.toplevel`; for
	// flakes, the attribute holding the configurations. "": "nixosConfigurations".
	SystemAttr string
	// Flake: evaluate and build the repository's flake (nix eval, nix build)
	// instead of its default.nix (nix-instantiate, nix-store). Flakes need the
	// Nix setting experimental-features = nix-command flakes (see NixOptions).
	Flake bool
	// Submodules: git submodules are part of the source.
	Submodules bool
	// StateFile is where the generations are persisted (protobuf, written
	// atomically on every change); "" keeps them in memory. A file that does not
	// decode makes New fail with ErrStore.
	StateFile string
	// EvalTimeout and BuildTimeout bound an evaluation and a build; 0: 30
	// minutes; Forever: without end. Durations are rounded up to milliseconds.
	EvalTimeout, BuildTimeout time.Duration
	// KillGrace is the time between SIGTERM and SIGKILL when a build is
	// cancelled; 0: 5 seconds; Forever: SIGKILL is never sent.
	KillGrace time.Duration
	// GCRootDir is the directory of the gc roots genbuild owns; "":
	// /nix/var/nix/gcroots/genbuild.
	GCRootDir string
	// NixBinDir is the directory of the Nix binaries; "": found through PATH.
	NixBinDir string
	// MachineIDAttr is the attribute path, relative to the system, of the expected
	// machine id; "": "config.services.comin.machineId".
	MachineIDAttr string
	// NixOptions are passed as `--option NAME VALUE` to every Nix call, in order:
	// "substituters", "max-jobs", "builders", …
	NixOptions []NixOption
	// EvalMemoryLimit bounds, in bytes, the memory each command of an evaluation may
	// use (its processes together); past it the command is killed and the
	// evaluation fails ("… was killed: it reached its memory limit of …"). 0: no
	// limit. The kernel enforces it where the commands' cgroups have the memory
	// controller; elsewhere genbuild samples every 50 ms (it may overshoot by what is
	// allocated in one interval).
	EvalMemoryLimit uint64
	// BuildMemoryLimit is the same for each command of a build. Through a
	// nix-daemon it bounds the Nix client only.
	BuildMemoryLimit uint64
	// Nice is the nice value (-20 to 19) every command runs at; 0: this process's.
	Nice int
}

// NixOption is one Nix setting, e.g. {"sandbox", "false"}; Value may be empty.
type NixOption struct {
	Name, Value string
}

// cConfig is a genbuild_config in C memory and the C memory its fields point to, all
// released by free.
type cConfig struct {
	c      *C.genbuild_config
	allocs []unsafe.Pointer
}

func (cc *cConfig) free() {
	for _, p := range cc.allocs {
		C.free(p)
	}
	cc.allocs = nil
}

// alloc is n zeroed bytes of C memory, released by free.
func (cc *cConfig) alloc(n int) unsafe.Pointer {
	p := C.calloc(1, C.size_t(n))
	if p == nil {
		panic("genbuild: out of memory")
	}
	cc.allocs = append(cc.allocs, p)
	return p
}

// converter fills a cConfig and keeps the first error, so that toC reads as one
// assignment per field.
type converter struct {
	cc  *cConfig
	err error
}

func (v *converter) fail(err error) {
	if v.err == nil {
		v.err = err
	}
}

// str is s as a C string; NULL (genbuild's default) for "" unless keepEmpty.
func (v *converter) str(field, s string, keepEmpty bool) *C.char {
	if s == "" && !keepEmpty {
		return nil
	}
	if strings.IndexByte(s, 0) >= 0 {
		v.fail(invalid("New", "Config.%s holds a NUL byte", field))
		return nil
	}
	p := (*C.char)(v.cc.alloc(len(s) + 1))
	copy(unsafe.Slice((*byte)(unsafe.Pointer(p)), len(s)), s)
	return p
}

func (v *converter) required(field, s string) *C.char {
	if s == "" {
		v.fail(invalid("New", "Config.%s is required", field))
		return nil
	}
	return v.str(field, s, false)
}

func (v *converter) millis(field string, d time.Duration) C.uint64_t {
	ms, ok := millis(d)
	if !ok {
		v.fail(invalid("New", "Config.%s is negative (%v)", field, d))
	}
	return C.uint64_t(ms)
}

// millis is d in the C ABI's milliseconds, rounded up (so that no positive duration
// becomes 0, "the default"); Forever is UINT64_MAX. false for a negative d.
func millis(d time.Duration) (uint64, bool) {
	switch {
	case d < 0:
		return 0, false
	case d == Forever:
		return math.MaxUint64, true
	}
	ms := d / time.Millisecond
	if d%time.Millisecond != 0 {
		ms++
	}
	return uint64(ms), true
}

// toC is the one place where a Config becomes a genbuild_config: a field added to
// either is added here. The caller frees the result.
func (cfg *Config) toC() (*cConfig, error) {
	cc := &cConfig{}
	c := (*C.genbuild_config)(cc.alloc(C.sizeof_genbuild_config))
	cc.c = c
	v := &converter{cc: cc}

	c.executor = C.GENBUILD_EXECUTOR_KIND_LEGACY
	if cfg.Flake {
		c.executor = C.GENBUILD_EXECUTOR_KIND_FLAKE
	}
	c.hostname = v.required("Hostname", cfg.Hostname)
	c.repository_path = v.required("RepositoryPath", cfg.RepositoryPath)
	c.repository_subdir = v.str("RepositorySubdir", cfg.RepositorySubdir, false)
	c.system_attr = v.str("SystemAttr", cfg.SystemAttr, false)
	if cfg.Submodules {
		c.submodules = 1
	}
	c.state_file = v.str("StateFile", cfg.StateFile, false)
	c.eval_timeout_ms = v.millis("EvalTimeout", cfg.EvalTimeout)
	c.build_timeout_ms = v.millis("BuildTimeout", cfg.BuildTimeout)
	c.kill_grace_ms = v.millis("KillGrace", cfg.KillGrace)
	c.gc_root_dir = v.str("GCRootDir", cfg.GCRootDir, false)
	c.nix_bin_dir = v.str("NixBinDir", cfg.NixBinDir, false)
	c.machine_id_attr = v.str("MachineIDAttr", cfg.MachineIDAttr, false)
	c.eval_memory_limit_bytes = C.uint64_t(cfg.EvalMemoryLimit)
	c.build_memory_limit_bytes = C.uint64_t(cfg.BuildMemoryLimit)
	if cfg.Nice < -20 || cfg.Nice > 19 {
		v.fail(invalid("New", "Config.Nice is not a nice value (-20 to 19): %d", cfg.Nice))
	}
	c.nice = C.int32_t(cfg.Nice)
	if n := len(cfg.NixOptions); n > 0 {
		size := n * int(unsafe.Sizeof((*C.char)(nil)))
		names := unsafe.Slice((**C.char)(cc.alloc(size)), n)
		values := unsafe.Slice((**C.char)(cc.alloc(size)), n)
		for i, o := range cfg.NixOptions {
			if o.Name == "" {
				v.fail(invalid("New", "Config.NixOptions[%d].Name is empty", i))
			}
			names[i] = v.str(fmt.Sprintf("NixOptions[%d].Name", i), o.Name, true)
			values[i] = v.str(fmt.Sprintf("NixOptions[%d].Value", i), o.Value, true)
		}
		c.nix_option_names = &names[0]
		c.nix_option_values = &values[0]
		c.nix_options_len = C.size_t(n)
	}

	if v.err != nil {
		cc.free()
		return nil, v.err
	}
	return cc, nil
}
