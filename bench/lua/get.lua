-- GET the URL given to wrk, with an optional Authorization header and an optional pause per request (ms) so that
-- a fixed number of connections offers a fixed rate. Args: [bearer or "-"] [delay_ms]
local bearer, pause
function init(args)
  bearer = args[1] ~= nil and args[1] ~= "-" and args[1] or nil
  pause = tonumber(args[2] or "0")
  if bearer then wrk.headers["Authorization"] = "Bearer " .. bearer end
end
-- A random pause (mean ``pause``) per request, so connections do not fire in lock-step bursts.
function delay() return pause > 0 and math.random(0, 2 * pause) or 0 end
dofile(os.getenv("BENCH_LUA") .. "/report.lua")
