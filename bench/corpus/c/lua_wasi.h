/*
 * Porting settings for building the stock Lua 5.4 sources for wasm32-wasip1,
 * included before every Lua source file (cc -include lua_wasi.h).
 */
#include <stdio.h>
#include <stdlib.h>

/*
 * Lua raises errors with setjmp/longjmp, which wasm32-wasip1 only has with
 * the exception-handling proposal. The benchmark script never raises an
 * error or yields from a coroutine, so instead of unwinding, an error ends
 * the program with a message. (nosjlj/setjmp.h stands in for the header.)
 */
#define LUAI_THROW(L, c) \
  (fprintf(stderr, "lua: error %d without setjmp/longjmp support\n", (c)->status), exit(1))
#define LUAI_TRY(L, c, a) { a }
#define luai_jmpbuf int

/* WASI has no processes and no temporary files. */
#define l_system(cmd) ((cmd) == NULL ? 0 : -1)
#define LUA_TMPNAMBUFSIZE 32
#define lua_tmpnam(b, e) { (void)(b); e = 1; }
#define tmpfile() NULL
