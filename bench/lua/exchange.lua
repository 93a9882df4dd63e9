-- POST /api/sys/users/exchange with a fresh pre-minted token per request. Each thread reads its own file of tokens
-- (one per line): no token is ever sent twice. Args: tokens_prefix [delay_ms]
local counter, tokens, index, pause = 0, {}, 0, 0
local threads = {}
function setup(thread)
  counter = counter + 1
  thread:set("id", counter)
  table.insert(threads, thread)
end
function init(args)
  pause = tonumber(args[2] or "0")
  for line in io.lines(args[1] .. id .. ".txt") do tokens[#tokens + 1] = line end
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end
-- A random pause (mean ``pause``) per request, so connections do not fire in lock-step bursts.
function delay() return pause > 0 and math.random(0, 2 * pause) or 0 end
function request()
  index = index + 1
  local token = tokens[index]
  if token == nil then token = "exhausted" end  -- shows up as non-2xx: the run needs more tokens
  return wrk.format(nil, nil, nil, '{"token":"' .. token .. '"}')
end
dofile(os.getenv("BENCH_LUA") .. "/report.lua")
