-- A mixed Lua workload run by the stock Lua 5.4 interpreter library
-- (embedded by lua_driver.c): recursion, tables, closures and metatables,
-- string building and pattern matching, sorting. Output is deterministic.
--
-- arg[1]: scale (default 1)

local scale = tonumber(arg and arg[1]) or 1

local function checksum(s)
  local h = 0
  for i = 1, #s do
    h = (h * 31 + s:byte(i)) & 0xffffffff
  end
  return h
end

-- Recursion
local function fib(n)
  if n < 2 then return n end
  return fib(n - 1) + fib(n - 2)
end
print("fib(25) = " .. fib(25))

-- A tiny class system with metatables
local Vec = {}
Vec.__index = Vec
function Vec.new(x, y) return setmetatable({x = x, y = y}, Vec) end
function Vec.__add(a, b) return Vec.new(a.x + b.x, a.y + b.y) end
function Vec:scale(k) return Vec.new(self.x * k, self.y * k) end
function Vec:len2() return self.x * self.x + self.y * self.y end

local Particle = {}
Particle.__index = Particle
function Particle.new(i)
  return setmetatable({pos = Vec.new(i % 17, i % 23), vel = Vec.new((i % 7) - 3, (i % 5) - 2)}, Particle)
end
function Particle:step(dt)
  self.pos = self.pos + self.vel:scale(dt)
  if self.pos:len2() > 10000 then self.vel = self.vel:scale(-1) end
end

local particles = {}
for i = 1, 500 do particles[i] = Particle.new(i) end
for _ = 1, 60 * scale do
  for _, p in ipairs(particles) do p:step(0.1) end
end
local sx, sy = 0, 0
for _, p in ipairs(particles) do sx, sy = sx + p.pos.x, sy + p.pos.y end
print(string.format("particles: %.6f %.6f", sx, sy))

-- Closures and higher-order functions
local function map(t, f) local r = {} for i = 1, #t do r[i] = f(t[i]) end return r end
local function filter(t, f) local r = {} for i = 1, #t do if f(t[i]) then r[#r + 1] = t[i] end end return r end
local function reduce(t, f, acc) for i = 1, #t do acc = f(acc, t[i]) end return acc end
local function counter()
  local n = 0
  return function() n = n + 1; return n end
end
local total = 0
for round = 1, 20 * scale do
  local next_id = counter()
  local xs = {}
  for i = 1, 2000 do xs[i] = (i * 7919 + round) % 1000 + next_id() end
  local ys = filter(map(xs, function(x) return x * x end), function(x) return x % 3 == 0 end)
  total = total + reduce(ys, function(a, b) return (a + b) % 1000000007 end, 0)
end
print("closures: " .. total)

-- Records, sorting with a comparator
local names = {"ada", "bob", "cyd", "dee", "eve", "fay", "gus", "hal", "ivy", "jon"}
local seed = 12345
local function rand(n)
  seed = (seed * 1103515245 + 12345) % 2147483648
  return seed % n
end
local records = {}
for i = 1, 20000 * scale do
  records[i] = {name = names[rand(#names) + 1] .. rand(1000), score = rand(100000), id = i}
end
table.sort(records, function(a, b)
  if a.score ~= b.score then return a.score > b.score end
  return a.id < b.id
end)
local top = {}
for i = 1, 5 do top[i] = records[i].name .. ":" .. records[i].score end
print("sorted: " .. table.concat(top, " "))

-- String building, formatting and patterns
local parts = {}
for i = 1, 20000 * scale do
  parts[#parts + 1] = string.format("%s-%05d=%x;", names[i % #names + 1], i, i * 2654435761 % 4294967296)
end
local text = table.concat(parts)
local count, digits = 0, 0
for name, num in text:gmatch("(%a+)%-(%d+)=") do
  if name == "eve" then count = count + 1 end
  digits = digits + #num
end
local upper = text:gsub("%a+", string.upper)
local words = {}
for w in text:gmatch("%a+") do words[w] = (words[w] or 0) + 1 end
local distinct = 0
for _ in pairs(words) do distinct = distinct + 1 end
print(string.format("strings: len %d, eve %d, digits %d, distinct %d, checksum %08x",
  #text, count, digits, distinct, checksum(upper:sub(1, 100000))))

-- A table used as a hash map with integer and string keys
local map_ = {}
for i = 1, 50000 * scale do
  local k = "k" .. (i * 37 % 10007)
  map_[k] = (map_[k] or 0) + i
  map_[i % 5000] = k
end
local sum = 0
for i = 0, 4999 do sum = sum + #map_[i] end
print("map: " .. sum .. " " .. map_["k42"])
