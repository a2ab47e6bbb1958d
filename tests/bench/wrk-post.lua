-- wrk script for scripts/bench: POSTs BENCH_BODY with BENCH_AUTH (optional)
-- as the bearer key, and counts non-200 answers in the summary line.
wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY")
wrk.headers["Content-Type"] = "application/json"
local auth = os.getenv("BENCH_AUTH")
if auth and auth ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. auth
end
