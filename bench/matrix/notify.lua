-- wrk script: POST realistic Matrix push notifications (the body Synapse
-- sends for a message in a named room, PEERS.md "Matrix"), each request to
-- one of TOKENS devices (base64 pushkeys of 32 bytes), so the gateway and
-- the APNS stand-in see distinct devices as in real traffic.
-- Usage: wrk -s notify.lua http://127.0.0.1:PORT/_matrix/push/v1/notify
local TOKENS = 1000
local APP_ID = os.getenv("MATRIX_APP_ID") or "com.example.chat.ios"

local b64chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local function base64(bytes)
  local out, n = {}, #bytes
  for i = 1, n, 3 do
    local a, b, c = bytes[i], bytes[i + 1] or 0, bytes[i + 2] or 0
    local v = a * 65536 + b * 256 + c
    for k = 3, 0, -1 do
      local idx = math.floor(v / 64 ^ k) % 64
      out[#out + 1] = b64chars:sub(idx + 1, idx + 1)
    end
  end
  local pad = (3 - n % 3) % 3
  local s = table.concat(out)
  return s:sub(1, #s - pad) .. string.rep("=", pad)
end

local bodies = {}
for t = 1, TOKENS do
  local bytes = {}
  for i = 1, 32 do bytes[i] = (t * 31 + i * 7) % 256 end
  bytes[1], bytes[2] = math.floor(t / 256) % 256, t % 256
  local key = base64(bytes)
  bodies[t] = '{"notification":{"content":{"body":"hello alice, lunch at noon?","msgtype":"m.text"},'
    .. '"counts":{"unread":' .. (t % 9 + 1) .. '},"devices":[{"app_id":"' .. APP_ID .. '","data":{},'
    .. '"pushkey":"' .. key .. '","pushkey_ts":1795986541,"tweaks":{"highlight":true,"sound":"default"}}],'
    .. '"event_id":"$bppkEvent' .. t .. '","id":"$bppkEvent' .. t .. '","prio":"high",'
    .. '"room_id":"!KkPRroom' .. (t % 50) .. ':localhost","room_name":"Probe room","sender":"@bob:localhost",'
    .. '"sender_display_name":"Bob","type":"m.room.message"}}'
end

local counter = 0
request = function()
  counter = counter + 1
  local body = bodies[counter % TOKENS + 1]
  return wrk.format("POST", nil, { ["Content-Type"] = "application/json" }, body)
end

local non2xx = 0
response = function(status, headers, body)
  if status ~= 200 then non2xx = non2xx + 1 end
end
