package genbuild

// How the package links libgenbuild, the C ABI of genbuild (the workspace member
// genbuild-ffi). CGO_LDFLAGS="-L DIR" names the directory holding it, e.g.
// target/release after `cargo build --release -p genbuild-ffi`.
//
// By default the shared library (-lgenbuild): the program then needs libgenbuild.so at
// run time (LD_LIBRARY_PATH, or -Wl,-rpath,DIR in CGO_LDFLAGS). With the build tag
// genbuild_static, the static library and the system libraries Rust's standard
// library needs (`rustc --print native-static-libs`): the program then needs nothing
// of genbuild at run time.

// #cgo !genbuild_static LDFLAGS: -lgenbuild
// #cgo genbuild_static LDFLAGS: -l:libgenbuild.a -lgcc_s -lutil -lrt -lpthread -lm -ldl
import "C"
