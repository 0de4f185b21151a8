/*
 * Runs the embedded bench.lua with the stock Lua library, passing the
 * command-line arguments in the global table `arg` as the lua executable does.
 */
#include <stdio.h>

#include "lauxlib.h"
#include "lua.h"
#include "lualib.h"

#include "bench_lua.h" /* generated: static const char bench_lua[] */

int main(int argc, char **argv) {
  lua_State *L = luaL_newstate();
  if (L == NULL) {
    fprintf(stderr, "cannot create Lua state\n");
    return 1;
  }
  luaL_openlibs(L);

  lua_createtable(L, argc, 0);
  for (int i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i);
  }
  lua_setglobal(L, "arg");

  if (luaL_loadbuffer(L, bench_lua, sizeof(bench_lua) - 1, "=bench.lua") != LUA_OK ||
      lua_pcall(L, 0, 0, 0) != LUA_OK) {
    fprintf(stderr, "lua: %s\n", lua_tostring(L, -1));
    lua_close(L);
    return 1;
  }
  lua_close(L);
  return 0;
}
