-- wrk's requests for POST /predict (chapter 18's bench). The bench writes `bodies = {...}` (one JSON body per
-- review) in front of this file; each connection sends them in turn, one review per request.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local counter = 0

request = function()
  counter = counter + 1
  return wrk.format(nil, "/predict", nil, bodies[(counter % #bodies) + 1])
end
