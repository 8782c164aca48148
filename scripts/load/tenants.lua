-- wrk script for the load tests: each request carries a random one of
-- TENANTS (default 100000) bearer tokens, which the example's fake auth
-- takes as the tenant.
local tenants = tonumber(os.getenv("TENANTS") or "100000")
math.randomseed(42)
request = function()
  local tenant = "tenant-" .. math.random(0, tenants - 1)
  return wrk.format("GET", "/", { ["authorization"] = "Bearer " .. tenant })
end
