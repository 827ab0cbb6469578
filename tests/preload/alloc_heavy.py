# tests/preload/alloc_heavy.py — an allocation-heavy, deterministic python3
# workload for the LD_PRELOAD test: many small objects, big containers that
# grow and shrink, strings, big integers, C extension modules loaded by
# dlopen (json, zlib, decimal, hashlib), a fork and a subprocess.
# Prints results that must be identical with and without loam as malloc.
import decimal
import gc
import hashlib
import json
import os
import random
import subprocess
import sys
import zlib

rng = random.Random(20240611)
out = []

# Many small dicts and lists, then half of them dropped.
records = []
for i in range(200000):
    records.append({"id": i, "name": "n%06d" % rng.randrange(1000000),
                    "tags": [rng.randrange(100) for _ in range(rng.randrange(6))],
                    "score": rng.random()})
records.sort(key=lambda r: (r["name"], r["id"]))
out.append("records %d first %s last %s" % (len(records), records[0]["name"], records[-1]["name"]))
del records[::2]
gc.collect()
out.append("after delete %d tagsum %d" % (len(records), sum(sum(r["tags"]) for r in records)))

# JSON round trip of a big structure (the _json C module).
text = json.dumps(records, sort_keys=True)
back = json.loads(text)
out.append("json %d bytes, equal %s, sha %s" % (len(text), back == records,
                                                 hashlib.sha256(text.encode()).hexdigest()[:16]))
del back, text

# Strings: build, join, split, replace; a bytearray that grows by doubling.
words = ["".join(chr(97 + rng.randrange(26)) for _ in range(rng.randrange(1, 12))) for _ in range(100000)]
joined = " ".join(words)
out.append("words %d joined %d upper-sha %s" % (len(words), len(joined),
                                               hashlib.sha256(joined.upper().encode()).hexdigest()[:16]))
counts = {}
for w in joined.split():
    counts[w] = counts.get(w, 0) + 1
top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
out.append("distinct %d top %s" % (len(counts), top))
ba = bytearray()
for i in range(20000):
    ba += bytes([i & 0xff]) * (i % 97)
out.append("bytearray %d crc %08x" % (len(ba), zlib.crc32(ba)))
comp = zlib.compress(bytes(ba), 6)
out.append("zlib %d -> %d roundtrip %s" % (len(ba), len(comp), zlib.decompress(comp) == ba))

# Big integers and decimals.
f = 1
for i in range(1, 1201):
    f *= i
out.append("1200! digits %d digitsum %d" % (len(str(f)), sum(map(int, str(f)))))
decimal.getcontext().prec = 200
d = decimal.Decimal(1)
for i in range(1, 400):
    d += decimal.Decimal(1) / decimal.Decimal(i * i)
out.append("sum 1/i^2 %s" % str(d)[:40])

# Sets and tuples, churned.
s = set()
for i in range(300000):
    s.add((rng.randrange(50000), rng.randrange(10)))
    if i % 3 == 0:
        s.discard((rng.randrange(50000), rng.randrange(10)))
out.append("set %d" % len(s))

# A fork: the child allocates and reports through a pipe.
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(r)
    data = [str(i) * 3 for i in range(100000)]
    os.write(w, ("child %d %d" % (len(data), sum(len(x) for x in data))).encode())
    os._exit(0)
os.close(w)
msg = b""
while True:
    chunk = os.read(r, 4096)
    if not chunk:
        break
    msg += chunk
os.close(r)
_, status = os.waitpid(pid, 0)
out.append("%s status %d" % (msg.decode(), status))

# A subprocess (fork + exec of another python3, which inherits LD_PRELOAD).
res = subprocess.run([sys.executable, "-c", "print(sum(len(str(i)) for i in range(10**5)))"],
                     capture_output=True, text=True, check=True)
out.append("subprocess %s" % res.stdout.strip())

print("\n".join(out))
