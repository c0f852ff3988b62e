"""What a wake-up costs on this machine: the floor under every round trip of a campaign.

    python bench/wakeups.py

Two processes bounce one byte over a pair of pipes (each round trip wakes each process once);
then the same with a thread in the first process that reads each reply and hands it to the
waiting thread through a condition variable, as a receiver thread would.
"""

from __future__ import annotations

import argparse
import collections
import os
import threading
import time


def echo(read_fd: int, write_fd: int) -> None:
    while True:
        data = os.read(read_fd, 64)
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
    print(f"{'process ping-pong us':>22} {'with a thread hand-off us':>26}")
    for _ in range(args.repeat):
        plain = direct(down_write, up_read, args.rounds)
        relayed = handed_over(down_write, up_read, args.rounds)
        print(f"{plain * 1e6:>22.1f} {relayed * 1e6:>26.1f}")
    os.close(down_write)
    os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
