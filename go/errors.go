package genbuild

// #include <stdlib.h>
// #include "genbuild.h"
import "C"

import (
	"errors"
	"fmt"
)

// The kinds of error a Builder returns; test for them with errors.Is. Every error
// but ErrClosed itself and the ones of a context is an *Error.
var (
	// ErrRefused: the builder refused the request. The error's text is the
	// builder's own message, unchanged: "the builder is already building", "the
	// generation is already built", "no generation with uuid … has been found",
	// "another generation is evaluating or evaluated", "the generation is not
	// evaluated", "the builder is already suspended", "the builder is not
	// suspended", and Eval's when a Stop came while it waited (see Eval).
	ErrRefused = errors.New("genbuild: refused")
	// ErrTimeout is the C ABI's GENBUILD_RESULT_TIMEOUT, so that every result code
	// has its kind. No method returns it today: NextEvent returns ctx.Err() when its
	// context ends, and an evaluation or build that times out is recorded on its
	// generation ("timed out after …"), not returned.
	ErrTimeout = errors.New("genbuild: timed out")
	// ErrInvalidArgument: an argument genbuild cannot take (a required Config field
	// left empty, a string holding a NUL byte, a negative duration, a nil
	// RepositoryStatus or one that does not encode), or bytes that do not decode as
	// the expected protobuf message.
	ErrInvalidArgument = errors.New("genbuild: invalid argument")
	// ErrStore: the state file cannot be read or does not decode (it is left
	// untouched); the text names the file.
	ErrStore = errors.New("genbuild: the state file cannot be used")
	// ErrClosed is returned by every method called once Close has begun.
	ErrClosed = errors.New("genbuild: the builder is closed")
	// ErrInternal: genbuild panicked (a bug; the text is the panic's message), or
	// answered with a result code this package does not know (a libgenbuild newer
	// than the package).
	ErrInternal = errors.New("genbuild: internal error")
)

// Error is a failed call: which method, and genbuild's message. Its text is the
// message alone (for a refusal, exactly the builder's words); errors.Is(err, ErrRefused)
// and the like tell its kind.
type Error struct {
	// Op is the method that failed: "New", "Eval", "SubmitBuild", "Suspend",
	// "Resume", "State" or "NextEvent".
	Op string
	// Message is genbuild's message, e.g. "the builder is already building".
	Message string
	kind    error
}

func (e *Error) Error() string { return e.Message }

// Is reports whether target is the error's kind (ErrRefused, ErrInvalidArgument, …).
func (e *Error) Is(target error) bool { return target == e.kind }

// The result codes of the C ABI (genbuild_result).
const (
	resultOK              = uint32(C.GENBUILD_RESULT_OK)
	resultTimeout         = uint32(C.GENBUILD_RESULT_TIMEOUT)
	resultNullArgument    = uint32(C.GENBUILD_RESULT_NULL_ARGUMENT)
	resultInvalidArgument = uint32(C.GENBUILD_RESULT_INVALID_ARGUMENT)
	resultRefused         = uint32(C.GENBUILD_RESULT_REFUSED)
	resultStoreError      = uint32(C.GENBUILD_RESULT_STORE_ERROR)
	resultPanic           = uint32(C.GENBUILD_RESULT_PANIC)
	resultDisconnected    = uint32(C.GENBUILD_RESULT_DISCONNECTED)
)

// kindOf is the error kind of a result code other than OK.
func kindOf(code uint32) error {
	switch code {
	case resultTimeout:
		return ErrTimeout
	case resultNullArgument, resultInvalidArgument:
		return ErrInvalidArgument
	case resultRefused:
		return ErrRefused
	case resultStoreError:
		return ErrStore
	default: // a panic, the event stream's end (never while the builder lives), or a newer code
		return ErrInternal
	}
}

// errorFor is the error of a call that returned code with message; nil for OK.
func errorFor(op string, code uint32, message string) error {
	if code == resultOK {
		return nil
	}
	if message == "" {
		message = fmt.Sprintf("%s failed with %s", op, resultName(code))
	}
	return &Error{Op: op, Message: message, kind: kindOf(code)}
}

// invalid is an ErrInvalidArgument found on the Go side, before any call into C.
func invalid(op, format string, args ...any) error {
	return &Error{Op: op, Message: fmt.Sprintf(format, args...), kind: ErrInvalidArgument}
}

// resultName is the C ABI's name of a result code ("GENBUILD_RESULT_REFUSED"; "unknown"
// for a value that is none).
func resultName(code uint32) string {
	return C.GoString(C.genbuild_result_name(C.uint32_t(code)))
}

// failure is the error of a C call that returned r and, in msg, a message it handed
// out (freed here); nil for OK. The call is made before, not in failure's arguments:
// Go does not order the read of msg against a call in the same argument list.
func failure(op string, r C.genbuild_result, msg *C.char) error {
	message := ""
	if msg != nil {
		message = C.GoString(msg)
		C.genbuild_string_free(msg)
	}
	return errorFor(op, uint32(r), message)
}
