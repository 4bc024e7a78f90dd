//! The Lua scripts Redis runs for the shared state. Each runs atomically, so a grant never races
//! another replica's grant.

/// One sync of one replica: heartbeat, then a batch of lease items.
///
/// `KEYS[1]` the replica set; `KEYS[2..]` one Redis key per item. `ARGV[1]` the replica id,
/// `ARGV[2]` how long a heartbeat counts (ms), then six values per item: kind (`m` requests per
/// minute, `d` requests per day, `t` tokens per minute), limit, units wanted, units given back,
/// units charged (spent without a lease, or tokens), and the window (ms; for `d`, the key's
/// lifetime).
///
/// Answers `{now_ms, replicas, g1, x1, g2, x2, …}`: per item the units granted and, for `m` and
/// `t`, how far (ms) the GCRA's theoretical arrival time is past now; for `d`, the units left today.
pub(crate) const SYNC: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local beat = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now / 1000, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now / 1000 - beat)
redis.call('PEXPIRE', KEYS[1], beat * 2)
local out = {math.floor(now / 1000), redis.call('ZCARD', KEYS[1])}
for i = 2, #KEYS do
  local a = 3 + (i - 2) * 6
  local kind = ARGV[a]
  local limit = tonumber(ARGV[a + 1])
  local want = tonumber(ARGV[a + 2])
  local back = tonumber(ARGV[a + 3])
  local charge = tonumber(ARGV[a + 4])
  local win = tonumber(ARGV[a + 5])
  if kind == 'd' then
    local used = tonumber(redis.call('GET', KEYS[i]) or '0')
    used = math.max(0, used - back) + charge
    local g = math.max(0, math.min(want, limit - used))
    used = used + g
    redis.call('SET', KEYS[i], string.format('%d', used), 'PX', win)
    out[#out + 1] = g
    out[#out + 1] = math.max(0, limit - used)
  else
    -- Microseconds per unit, fractional: a large limit is not rounded to a smaller one.
    local iv = win * 1000 / limit
    local w = win * 1000
    local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
    if tat < now then tat = now end
    if back > 0 then tat = math.max(now, tat - back * iv) end
    tat = tat + charge * iv
    local g = 0
    if want > 0 then
      local room = math.floor((now + w - tat) / iv)
      g = math.max(0, math.min(want, room))
      tat = tat + g * iv
    end
    redis.call('SET', KEYS[i], string.format('%.17g', tat), 'PX', math.floor((tat - now) / 1000) + win)
    out[#out + 1] = g
    out[#out + 1] = math.floor((tat - now) / 1000)
  end
end
return out
"#;

/// One event: updates the record it concerns and appends it to the event stream.
///
/// `KEYS[1]` the stream, `KEYS[2]` the record (a key's hash, a binding, the latest config
/// change), `KEYS[3]` the config changes' version counter. `ARGV[1]` the kind (`rest`,
/// `invalid`, `disable`, `enable`, `bind`, `config`), `ARGV[2]` the event (JSON), `ARGV[3]` the
/// hash field (`rest:<model>`, `invalid`, `disabled`), `ARGV[4]` a binding's lifetime (ms),
/// `ARGV[5]` the stream's approximate length cap.
///
/// A config change gets the next version: its record is a hash `{v, e}` (only the latest change
/// is kept: each carries the whole config), and its stream entry carries `v` too, so a replica
/// that was apart can tell whether it missed one.
pub(crate) const EVENT: &str = r#"
local kind = ARGV[1]
if kind == 'enable' then
  redis.call('DEL', KEYS[2])
elseif kind == 'bind' then
  redis.call('SET', KEYS[2], ARGV[2], 'PX', math.max(1, tonumber(ARGV[4])))
elseif kind == 'config' then
  local v = redis.call('INCR', KEYS[3])
  redis.call('HSET', KEYS[2], 'v', v, 'e', ARGV[2])
  return redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[5], '*', 'e', ARGV[2], 'v', v)
else
  redis.call('HSET', KEYS[2], ARGV[3], ARGV[2])
end
return redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[5], '*', 'e', ARGV[2])
"#;
