/*
 * Stands in for <setjmp.h>, which wasi-libc refuses without the exception
 * handling proposal. Lua's ldo.c includes it unconditionally but, with the
 * LUAI_THROW/LUAI_TRY overrides of lua_wasi.h, uses nothing from it.
 */
