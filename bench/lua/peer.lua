-- The peer: oidc-provider's client-credentials grant (client_secret_basic), one fresh EdDSA JWT per request.
function init(args)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
  wrk.headers["Authorization"] = "Basic YmVuY2g6YmVuY2gtc2VjcmV0"  -- bench:bench-secret
  wrk.body = "grant_type=client_credentials&scope=api"
end
dofile(os.getenv("BENCH_LUA") .. "/report.lua")
