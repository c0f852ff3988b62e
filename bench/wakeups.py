"""What a wake-up costs on this machine: the floor under every round trip of a campaign.

    python bench/wakeups.py

Two processes bounce one byte over a pair of pipes (each round trip wakes each process once);
then the same with a thread in the first process that reads each reply and hands it to the
waiting thread through a condition variable, as a receiver thread would. Last, the path of a
task at K = 1 with no work at all on it: a submitter thread writes a 900-byte request, a
server process and a worker process relay it, a processor thread reads it and hands the slot
back to the submitter: what `bench/roundtrip.py` would measure if the runtime cost nothing.
"""

from __future__ import annotations

import argparse
import collections
import os
import threading
import time


def echo(read_fd: int, write_fd: int) -> None:
    while True:
        data = os.read(read_fd, 4096)  # one message per read: they are written one at a time
        if not data:
            return
        os.write(write_fd, data)


def direct(out_fd: int, in_fd: int, rounds: int) -> float:
    start = time.perf_counter()
    for _ in range(rounds):
        os.write(out_fd, b"x")
        os.read(in_fd, 64)
    return (time.perf_counter() - start) / rounds


def handed_over(out_fd: int, in_fd: int, rounds: int) -> float:
    arrived = threading.Condition()
    box: collections.deque[bytes] = collections.deque()

    def receive() -> None:
        for _ in range(rounds):
            data = os.read(in_fd, 64)
            with arrived:
                box.append(data)
                arrived.notify()

    receiver = threading.Thread(target=receive, daemon=True)
    receiver.start()
    start = time.perf_counter()
    for _ in range(rounds):
        os.write(out_fd, b"x")
        with arrived:
            while not box:
                arrived.wait()
            box.popleft()
    elapsed = time.perf_counter() - start
    receiver.join()
    return elapsed / rounds


def task_path(rounds: int) -> float:
    """Submitter thread -> server process -> worker process -> processor thread -> submitter."""
    to_server, to_worker, to_thinker = os.pipe(), os.pipe(), os.pipe()
    relays = [(to_server[0], to_worker[1]), (to_worker[0], to_thinker[1])]
    children = []
    for read_fd, write_fd in relays:
        pid = os.fork()
        if pid == 0:  # keep only its own ends, so that it sees end-of-file when we close ours
            for fd in {*to_server, *to_worker, *to_thinker} - {read_fd, write_fd}:
                os.close(fd)
            echo(read_fd, write_fd)
            os._exit(0)
        children.append(pid)
    slot = threading.Condition()
    free = [1]

    def process() -> None:
        for _ in range(rounds):
            os.read(to_thinker[0], 4096)
            with slot:
                free[0] += 1
                slot.notify()

    processor = threading.Thread(target=process, daemon=True)
    processor.start()
    request = b"x" * 900
    start = time.perf_counter()
    for _ in range(rounds):
        with slot:
            while not free[0]:
                slot.wait()
            free[0] -= 1
        os.write(to_server[1], request)
    processor.join()
    elapsed = time.perf_counter() - start
    for fd in (*to_server, *to_worker, *to_thinker):
        os.close(fd)
    for pid in children:
        os.waitpid(pid, 0)
    return elapsed / rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5000, help="round trips per measurement")
    parser.add_argument("--repeat", type=int, default=3, help="measurements of each kind")
    args = parser.parse_args()
    down_read, down_write = os.pipe()  # parent to child
    up_read, up_write = os.pipe()  # child to parent
    pid = os.fork()
    if pid == 0:
        os.close(down_write)
        os.close(up_read)
        echo(down_read, up_write)
        os._exit(0)
    os.close(down_read)
    os.close(up_write)
    print(f"# {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}, {args.rounds} round trips each")
    print(f"{'process ping-pong us':>22} {'with a thread hand-off us':>26} "
          f"{'task path at K=1 us':>20}")
    for _ in range(args.repeat):
        plain = direct(down_write, up_read, args.rounds)
        relayed = handed_over(down_write, up_read, args.rounds)
        path = task_path(args.rounds)
        print(f"{plain * 1e6:>22.1f} {relayed * 1e6:>26.1f} {path * 1e6:>20.1f}")
    os.close(down_write)
    os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
