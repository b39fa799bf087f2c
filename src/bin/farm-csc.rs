//! Every farm binary is the same program; it acts on the name it was started as.
//!
//! `no_main`: the shim runs once per compile, so it skips std's runtime set-up
//! (signal handlers, stack-guard probing of /proc/self/maps). std still captures argv
//! on glibc, and SIGPIPE keeps its default, as it has for the compiler.
#![no_main]

#[no_mangle]
pub extern "C" fn main(_argc: i32, _argv: *const *const u8) -> i32 {
    farm::entry::main()
}
