/* Stand-in C headers for `cargo check` of Windows and macOS targets from Linux: ring's build
   script compiles C for the target, and no Windows or macOS SDK is installed. The objects are
   never linked (check only), so declarations are all that is needed. */
#pragma once
#define assert(x) ((void)0)
