package genbuild

// #include <stdlib.h>
// #include "genbuild.h"
import "C"

import (
	"context"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"genbuild/genbuildpb"

	"google.golang.org/protobuf/proto"
)

// eventSlice is the longest NextEvent waits in C at a time, and so how late it may
// notice that its context ended or that Close began.
const eventSlice = 50 * time.Millisecond

// Builder evaluates and builds one NixOS generation at a time, on threads of its own.
// Every method may be called from any goroutine, concurrently with the others. Close
// it when done: see Close.
type Builder struct {
	// mu is held shared by every call into C and exclusively by Close, which so waits
	// for the calls in flight before it frees the handle.
	mu sync.RWMutex
	// h is the C handle; nil once closed.
	h *C.genbuild_builder
	// closing is set when Close begins: calls made from then on fail at once
	// instead of waiting for it.
	closing atomic.Bool
}

// Version is the version of libgenbuild.
func Version() string {
	return C.GoString(C.genbuild_version())
}

// New makes a builder from cfg. It is subscribed to its own events from this moment:
// NextEvent receives every one of them.
//
// Errors: ErrInvalidArgument for a Config genbuild cannot take (the message names the
// field), ErrStore for a state file that cannot be read or does not decode.
func New(cfg Config) (*Builder, error) {
	cc, err := cfg.toC()
	if err != nil {
		return nil, err
	}
	defer cc.free()
	var h *C.genbuild_builder
	var msg *C.char
	r := C.genbuild_builder_new(cc.c, &h, &msg)
	if err := failure("New", r, msg); err != nil {
		return nil, err
	}
	b := &Builder{h: h}
	// A safety net only (see Close): a finalizer may run late or never. It closes
	// on a goroutine of its own, since Close may wait for a build's kill grace.
	runtime.SetFinalizer(b, func(b *Builder) { go b.Close() })
	return b, nil
}

// enter returns the C handle for one call, holding mu shared: the caller calls
// b.mu.RUnlock() when the call returned. ErrClosed once Close began.
func (b *Builder) enter() (*C.genbuild_builder, error) {
	if b.closing.Load() {
		return nil, ErrClosed
	}
	b.mu.RLock()
	if b.h == nil {
		b.mu.RUnlock()
		return nil, ErrClosed
	}
	return b.h, nil
}

// Eval evaluates the commit of rs as a new generation and returns its uuid.
//
// It cancels a running evaluation or build and waits until its result is recorded,
// then starts the evaluation and returns without waiting for it: its end is an
// EvalFinished event (or BuildStarted and BuildFinished when the output is already in
// the store). A commit id or subdirectory Nix must not see fails the evaluation, whose
// EvalErr says why. ErrInvalidArgument for a nil rs or one that does not encode.
//
// A Stop from another goroutine while Eval waits for the running job to end wins: no
// generation is made, and Eval is refused (ErrRefused) with "stop() was called while
// eval() waited for the running job to end, so the evaluation was not started: call
// eval() again to evaluate this commit".
func (b *Builder) Eval(rs *genbuildpb.RepositoryStatus) (string, error) {
	if b.closing.Load() {
		return "", ErrClosed
	}
	if rs == nil {
		return "", invalid("Eval", "the RepositoryStatus is nil")
	}
	data, err := proto.Marshal(rs)
	if err != nil {
		return "", invalid("Eval", "the RepositoryStatus does not encode: %v", err)
	}
	return b.evalBytes(data)
}

// evalBytes is Eval of a RepositoryStatus already encoded (or of any bytes).
func (b *Builder) evalBytes(data []byte) (string, error) {
	h, err := b.enter()
	if err != nil {
		return "", err
	}
	defer b.mu.RUnlock()
	var p *C.uint8_t
	if len(data) > 0 {
		p = (*C.uint8_t)(unsafe.Pointer(&data[0]))
	}
	var uuid, msg *C.char
	r := C.genbuild_eval(h, p, C.size_t(len(data)), &uuid, &msg)
	if err := failure("Eval", r, msg); err != nil {
		return "", err
	}
	defer C.genbuild_string_free(uuid)
	return C.GoString(uuid), nil
}

// SubmitBuild builds the evaluated generation uuid, now or, when suspended, on
// Resume. It returns once the build started or was queued; its end is a BuildFinished
// event.
//
// Refusals (ErrRefused), checked in this order, with these texts: "another
// generation is evaluating or evaluated", "no generation with uuid UUID has been
// found", "the generation is not evaluated", "the builder is already building",
// "the generation is already built".
func (b *Builder) SubmitBuild(uuid string) error {
	if b.closing.Load() {
		return ErrClosed
	}
	if strings.IndexByte(uuid, 0) >= 0 {
		return invalid("SubmitBuild", "the uuid holds a NUL byte")
	}
	h, err := b.enter()
	if err != nil {
		return err
	}
	defer b.mu.RUnlock()
	cuuid := C.CString(uuid)
	defer C.free(unsafe.Pointer(cuuid))
	var msg *C.char
	r := C.genbuild_submit_build(h, cuuid, &msg)
	return failure("SubmitBuild", r, msg)
}

// Suspend stops building until Resume: a running build is cancelled ("cancelled:
// suspended", a BuildFinished event) and Suspend waits until its result is recorded.
// A running evaluation goes on. Refused with "the builder is already suspended".
func (b *Builder) Suspend() error {
	h, err := b.enter()
	if err != nil {
		return err
	}
	defer b.mu.RUnlock()
	var msg *C.char
	r := C.genbuild_suspend(h, &msg)
	return failure("Suspend", r, msg)
}

// Resume builds again: the current generation is built if its build was submitted
// while suspended or cancelled by the suspension; nothing else is. Refused with "the
// builder is not suspended".
func (b *Builder) Resume() error {
	h, err := b.enter()
	if err != nil {
		return err
	}
	defer b.mu.RUnlock()
	var msg *C.char
	r := C.genbuild_resume(h, &msg)
	return failure("Resume", r, msg)
}

// Stop cancels the running evaluation or build ("cancelled: stopped"), kills its
// processes and waits until they are gone, also when several goroutines call it at
// once. It is stronger than a pending suspension, resumption or submission: a later
// Resume builds nothing wanted before the stop. Not terminal: Eval may follow. After
// Close it does nothing.
func (b *Builder) Stop() {
	h, err := b.enter()
	if err != nil {
		return
	}
	defer b.mu.RUnlock()
	// genbuild_stop fails only for a NULL handle or a panic (a bug, which the
	// handle survives); Stop has nothing to report either way.
	C.genbuild_stop(h, nil)
}

// State is a snapshot of the builder: hostname, whether it evaluates, builds or is
// suspended (BoolValues), the current generation and its uuid, the last failure to
// persist the store, and while a build runs its latest progress.
func (b *Builder) State() (*genbuildpb.Builder, error) {
	h, err := b.enter()
	if err != nil {
		return nil, err
	}
	var buf C.genbuild_buffer
	var msg *C.char
	r := C.genbuild_state(h, &buf, &msg)
	err = failure("State", r, msg)
	b.mu.RUnlock()
	if err != nil {
		return nil, err
	}
	return decodeState(takeBuffer(buf))
}

// NextEvent waits for the builder's next event and returns it; ctx.Err() when ctx
// ends first, ErrClosed when Close begins.
//
// Events are kept from New on, in order, and none is dropped but log lines and
// progress of a reader more than 16 MiB behind (counted in the next LogLine's
// DroppedBefore). With several goroutines waiting, each event goes to exactly one of
// them. An event is never lost to a wait that gives up: NextEvent waits in C in slices
// of at most 50 ms and looks at ctx between them, so it returns within about 50 ms of
// ctx's end, leaving no goroutine and no C call behind; an event that arrives in the
// slice during which ctx ended is returned, not dropped.
//
// The kinds (Event.Kind): EvalStarted, EvalFinished, BuildStarted, BuildFinished
// (each holding the Generation as it is now), LogLine (a line a command printed,
// with the derivation that printed it) and BuildProgress (at most about ten a second
// during a build, the last one always sent). Later versions may add kinds: skip the
// ones you do not know.
func (b *Builder) NextEvent(ctx context.Context) (*genbuildpb.Event, error) {
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		wait := eventSlice
		if deadline, ok := ctx.Deadline(); ok {
			if left := time.Until(deadline); left < wait {
				wait = left
			}
		}
		data, ok, err := b.pollEvent(wait)
		if err != nil {
			return nil, err
		}
		if ok {
			return decodeEvent(data)
		}
	}
}

// pollEvent waits up to wait (at least a millisecond) in genbuild_next_event; ok is
// false when no event came.
func (b *Builder) pollEvent(wait time.Duration) (data []byte, ok bool, err error) {
	h, err := b.enter()
	if err != nil {
		return nil, false, err
	}
	ms, _ := millis(wait)
	if ms == 0 {
		ms = 1
	}
	var buf C.genbuild_buffer
	var msg *C.char
	r := C.genbuild_next_event(h, C.uint64_t(ms), &buf, &msg)
	b.mu.RUnlock()
	if uint32(r) == resultTimeout {
		C.genbuild_string_free(msg)
		return nil, false, nil
	}
	if err := failure("NextEvent", r, msg); err != nil {
		return nil, false, err
	}
	return takeBuffer(buf), true, nil
}

// Close stops the builder (cancels what runs, kills its processes, joins its
// threads), waits for the calls in flight on other goroutines (NextEvent within
// about 50 ms) and frees it. Every method called once Close began returns
// ErrClosed. Close is idempotent, and every call returns once the builder is freed.
//
// Close is required: a Builder that becomes unreachable is closed by a finalizer, but
// the garbage collector runs finalizers late or never, and until then the builder's
// threads, and the Nix processes of a running evaluation or build, live on.
func (b *Builder) Close() {
	b.closing.Store(true)
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.h == nil {
		return
	}
	C.genbuild_builder_destroy(b.h)
	b.h = nil
	runtime.SetFinalizer(b, nil)
}

// takeBuffer copies the bytes of a buffer genbuild handed out into Go memory and
// frees it.
func takeBuffer(buf C.genbuild_buffer) []byte {
	defer C.genbuild_buffer_free(buf)
	if buf.data == nil {
		return []byte{}
	}
	return append([]byte(nil), unsafe.Slice((*byte)(unsafe.Pointer(buf.data)), int(buf.len))...)
}

// decodeState decodes a genbuild.Builder; ErrInvalidArgument when data is none.
func decodeState(data []byte) (*genbuildpb.Builder, error) {
	state := &genbuildpb.Builder{}
	if err := proto.Unmarshal(data, state); err != nil {
		return nil, invalid("State", "the state does not decode as a genbuild.Builder: %v", err)
	}
	return state, nil
}

// decodeEvent decodes a genbuild.Event; ErrInvalidArgument when data is none.
func decodeEvent(data []byte) (*genbuildpb.Event, error) {
	event := &genbuildpb.Event{}
	if err := proto.Unmarshal(data, event); err != nil {
		return nil, invalid("NextEvent", "the event does not decode as a genbuild.Event: %v", err)
	}
	return event, nil
}
