-- POST the URL given to wrk with one fixed body, its Content-Type, an optional Authorization header and an optional
-- pause per request (ms). The waterfall's layers re-send one token this way (verifying it costs the same each
-- time), and introspection asks about the same access token again and again, as a resource server does.
-- Args: body content_type [bearer or "-"] [delay_ms]
local pause
function init(args)
  wrk.method = "POST"
  wrk.body = args[1]
  wrk.headers["Content-Type"] = args[2]
  if args[3] ~= nil and args[3] ~= "-" then wrk.headers["Authorization"] = "Bearer " .. args[3] end
  pause = tonumber(args[4] or "0")
end
-- A random pause (mean ``pause``) per request, so connections do not fire in lock-step bursts.
function delay() return pause > 0 and math.random(0, 2 * pause) or 0 end
dofile(os.getenv("BENCH_LUA") .. "/report.lua")
