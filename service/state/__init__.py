"""Everything kept in Redis: key layout, store, Lua scripts, codec, records, job states, manifest."""
