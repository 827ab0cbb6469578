# tests/preload/threads.py — a multi-threaded python3 workload for the
# LD_PRELOAD test: 8 threads passing objects to each other through queues
# (freed by a thread other than the allocating one), and zlib / hashlib work
# in a thread pool, which releases the GIL so that C code allocates in
# parallel. Deterministic output.
import hashlib
import queue
import random
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor

NTHREADS = 8
queues = [queue.Queue(maxsize=256) for _ in range(NTHREADS)]
results = [None] * NTHREADS


def worker(k):
    rng = random.Random(1000 + k)
    total = 0
    received = 0
    sent = 0
    # each thread sends 20000 objects to the next one and receives as many
    pending = None
    while sent < 20000 or received < 20000:
        if sent < 20000:
            if pending is None:
                pending = {"from": k, "n": sent,
                           "payload": [rng.randrange(1000) for _ in range(rng.randrange(1, 40))],
                           "text": "x" * rng.randrange(300)}
            try:
                queues[(k + 1) % NTHREADS].put(pending, timeout=0.001)
                pending = None
                sent += 1
            except queue.Full:
                pass
        try:
            obj = queues[k].get_nowait()
            total += sum(obj["payload"]) + len(obj["text"])
            received += 1
        except queue.Empty:
            pass
    results[k] = (received, total)


threads = [threading.Thread(target=worker, args=(k,)) for k in range(NTHREADS)]
for t in threads:
    t.start()
for t in threads:
    t.join()
for k, (n, total) in enumerate(results):
    print("thread %d received %d total %d" % (k, n, total))


def job(i):
    rng = random.Random(i)
    data = bytes(rng.randrange(64) for _ in range(200000))
    comp = zlib.compress(data * 4, 9)
    h = hashlib.sha256(data * 20).hexdigest()
    return i, len(comp), zlib.crc32(zlib.decompress(comp)), h[:16]


with ThreadPoolExecutor(max_workers=4) as ex:
    for i, n, crc, h in ex.map(job, range(24)):
        print("job %d compressed %d crc %08x sha %s" % (i, n, crc, h))
