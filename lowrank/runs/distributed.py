"""Many processes, one run: the torch.distributed set-up, exact merging, and failure reports.

A launcher (``torchrun``; ``srun torchrun`` on a cluster) starts one process per rank and sets
RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; :func:`launch_from_env` reads them
and :meth:`Team.start` joins the process group. The statistics are float64 CPU arrays: they
travel through torch.distributed's object collectives over gloo (on GPUs, a gloo group beside
the NCCL default group) and are combined with Chan's merge in rank order, exactly as
``lowrank merge`` combines shards.

Failures are bounded in time. Every collective times out after ``LOWRANK_TIMEOUT`` seconds
(default 300), so a rank that hangs, or whose node is lost, fails the others' next
collective within that time; a rank that dies closes its connections, which fails the
others' next collective at once. Each rank that stops posts why (``failed``, ``interrupted``,
``lost``) in the launcher's key-value store, and rank 0 reads the posts to name the rank and
the cause in one line.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal, TypeVar

from lowrank.core.options import named
from lowrank.errors import LowrankError

# The variables torchrun sets in every process (srun + torchrun too).
ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
Backend = Literal["gloo", "nccl"]
TIMEOUT_ENV = "LOWRANK_TIMEOUT"
DEFAULT_TIMEOUT = 300.0  # seconds: above one batch of the slowest rank, below a user's patience
THREADS_ENV = "LOWRANK_NUM_THREADS"
ROLL_CALL_SECONDS = 10.0  # how long rank 0 waits for the others to say why they stopped
# Why a rank stops: its own error, a signal, or a collective broken by another rank.
Kind = Literal["failed", "interrupted", "lost"]

M = TypeVar("M")


@dataclass(frozen=True)
class Launch:
    """Where this process sits among the ranks of a launch."""

    rank: int
    world: int
    local_rank: int  # index of this process on its node: its GPU
    local_world: int  # processes on this node


def launch_from_env(env: Mapping[str, str] | None = None) -> Launch | None:
    """The launch described by the torch.distributed variables; None when none is set.

    Raises:
        LowrankError: some variables set and others not, or values that do not fit.
    """
    env = os.environ if env is None else env
    present = [k for k in ENV_VARS if k in env]
    if not present:
        return None
    missing = [k for k in ENV_VARS if k not in env]
    if missing:
        raise LowrankError(
            f"{', '.join(present)} set but not {', '.join(missing)}: launch with torchrun "
            "(it sets them all), or unset them to run in one process"
        )
    try:
        rank, world, local = (int(env[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
        local_world = int(env.get("LOCAL_WORLD_SIZE", "1"))
    except ValueError as exc:
        raise LowrankError(f"torch.distributed variables are not integers: {exc}") from None
    if not (0 <= rank < world and 0 <= local < max(local_world, local + 1)):
        raise LowrankError(f"RANK {rank} does not fit WORLD_SIZE {world} (LOCAL_RANK {local})")
    return Launch(rank, world, local, max(local_world, 1))


def check_command(
    argv: list[str], rank_commands: Sequence[str], env: Mapping[str, str] | None = None
) -> None:
    """Refuse, under a launch of several ranks, a command that runs in one process only.

    Every rank would run all of it and write the same folder; only ``rank_commands`` (the
    families that split their work over the ranks) may run so (see docs/long-runs.md,
    "Running on a cluster").
    """
    try:
        launch = launch_from_env(env)
    except LowrankError:
        return  # a command that splits its work reports it; the others ignore the launch
    command = next((a for a in argv if not a.startswith("-")), None)
    if launch is None or launch.world == 1 or command in (None, *rank_commands):
        return
    raise LowrankError(
        f"lowrank {command} runs in one process; only {', '.join(rank_commands)} splits its "
        f"work over torchrun's ranks: start it with `lowrank {command} ...`"
    )


def choose_backend(requested: Backend | None, cuda: bool) -> Backend:
    """gloo on the CPU, nccl on CUDA, unless ``--backend`` says otherwise."""
    if requested == "nccl" and not cuda:
        raise LowrankError(
            f"{named('backend', 'nccl')} needs CUDA GPUs (none visible, or "
            f"{named('device', 'cpu')}): use {named('backend', 'gloo')}"
        )
    return requested or ("nccl" if cuda else "gloo")


MAX_TIMEOUT = 7 * 24 * 3600.0  # seconds: a week; beyond it a timeout is a typo
MIN_TIMEOUT = 1.0  # seconds: below it no rank can answer a collective in time
MAX_THREADS = 4096  # CPU threads per rank: more than any machine has


def collective_timeout(env: Mapping[str, str] | None = None) -> float:
    """Seconds a collective may wait for the other ranks (``LOWRANK_TIMEOUT``, default 300),
    a finite number in [1, 604800] (a week), checked like an option.

    Raises:
        LowrankError: ``LOWRANK_TIMEOUT='inf' must be a number of seconds in [1, 604800]``.
    """
    env = os.environ if env is None else env
    text = env.get(TIMEOUT_ENV)
    if text is None:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not MIN_TIMEOUT <= value <= MAX_TIMEOUT:  # NaN and infinities fail too
        raise LowrankError(
            f"{TIMEOUT_ENV}={text[:40]!r} must be a number of seconds in "
            f"[{MIN_TIMEOUT:g}, {MAX_TIMEOUT:g}]: the collective timeout (default "
            f"{DEFAULT_TIMEOUT:g})"
        )
    return value


def cpu_threads(local_world: int, env: Mapping[str, str] | None = None) -> int:
    """CPU threads per rank: ``LOWRANK_NUM_THREADS`` (a whole number in [1, 4096]), else this
    process's cores / local ranks.

    torchrun sets OMP_NUM_THREADS=1 itself whenever it starts several processes, so that
    variable cannot tell the user's choice from the launcher's and is not read here.

    Raises:
        LowrankError: a value that is not a whole number in range.
    """
    env = os.environ if env is None else env
    text = env.get(THREADS_ENV)
    if text is not None:
        value = int(text) if text.strip().isdigit() and len(text.strip()) <= 6 else 0
        if not 1 <= value <= MAX_THREADS:
            raise LowrankError(
                f"{THREADS_ENV}={text[:40]!r} must be a whole number of threads in "
                f"[1, {MAX_THREADS}]"
            )
        return value
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // max(local_world, 1))


def check_rendezvous(launch: Launch, env: Mapping[str, str] | None = None) -> None:
    """``MASTER_ADDR`` and ``MASTER_PORT`` checked before torch.distributed tries them for
    minutes: the port a whole number in [1, 65535], the address one that resolves, and, on
    the ranks that connect to it (all but rank 0, and every rank under torchrun, whose agent
    serves it), one that answers within 10 s.

    Raises:
        LowrankError: naming the variable, its value and what to do.
    """
    env = os.environ if env is None else env
    addr, port_text = env.get("MASTER_ADDR", ""), env.get("MASTER_PORT", "")
    port = int(port_text) if port_text.isdigit() and len(port_text) <= 5 else 0
    if not 1 <= port <= 65535:
        raise LowrankError(f"MASTER_PORT={port_text[:40]!r} must be a port number in [1, 65535]")
    try:
        socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise LowrankError(
            f"MASTER_ADDR={addr[:80]!r} does not resolve ({_one_line(exc)}): give the host of "
            "rank 0 (torchrun sets it; with --rdzv-endpoint, that host)"
        ) from None
    served = env.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
    if launch.rank == 0 and not served:
        return  # rank 0 serves the rendezvous itself
    deadline = time.monotonic() + RENDEZVOUS_WAIT
    while True:
        try:
            with socket.create_connection((addr, port), timeout=10):
                return
        except ConnectionRefusedError:  # the host answers; its server may not be up yet
            if time.monotonic() > deadline:
                raise _unreachable(launch, addr, port, "connection refused") from None
            time.sleep(0.5)
        except OSError as exc:  # no route, no answer: it will not come
            raise _unreachable(launch, addr, port, exc.strerror or str(exc)) from None


RENDEZVOUS_WAIT = 60.0  # seconds a rank waits for rank 0's rendezvous server to come up


def _unreachable(launch: Launch, addr: str, port: int, why: str) -> LowrankError:
    return LowrankError(
        f"rank {launch.rank} cannot reach the rendezvous at {addr}:{port} ({why}): check "
        "MASTER_ADDR and MASTER_PORT, or start the ranks with torchrun"
    )


def merge_in_order(parts: list[M]) -> M:
    """Chan-merge per-rank accumulators in rank order (as ``lowrank merge`` does shards).

    Other orders agree to float64 rounding: each merge is exact in real arithmetic.
    """
    return functools.reduce(lambda a, b: a.merge(b), parts)  # type: ignore[attr-defined]


class SharedError(LowrankError):
    """An error every rank knows, because the ranks agreed on it (see :meth:`Team.agree`)."""


class PeerFailure(Exception):
    """A collective failed: another rank died, raised, hung past the timeout, or stopped."""


class Team:
    """The ranks of one run, with the collectives a family that splits its work needs."""

    def __init__(self, launch: Launch, backend: Backend, timeout: float) -> None:
        self.launch, self.backend, self.timeout = launch, backend, timeout
        self.group: Any = None  # the gloo group the statistics travel on (None: default)
        self.store: Any = None  # the launcher's key-value store, under this run's prefix
        self.joined = False

    @property
    def rank(self) -> int:
        return self.launch.rank

    @property
    def world(self) -> int:
        return self.launch.world

    @property
    def lead(self) -> bool:
        """Rank 0: reads and writes the run folder, shows progress, reports failures."""
        return self.launch.rank == 0

    @classmethod
    def start(cls, launch: Launch, backend: Backend, timeout: float) -> Team:
        """Join the process group (env:// rendezvous) and agree on a run id.

        On CUDA, call ``torch.cuda.set_device(launch.local_rank)`` first.
        """
        import torch.distributed as dist

        team = cls(launch, backend, timeout)
        wait = timedelta(seconds=timeout)
        where = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
        try:
            store, _, _ = next(dist.rendezvous("env://", timeout=wait))
            dist.init_process_group(
                backend, store=store, rank=launch.rank, world_size=launch.world, timeout=wait
            )
            team.joined = True
            if backend != "gloo":
                team.group = dist.new_group(backend="gloo", timeout=wait)
            run_id = team.broadcast(uuid.uuid4().hex if team.lead else None)
        except (RuntimeError, ValueError, PeerFailure) as exc:
            team.close()
            raise LowrankError(
                f"rank {launch.rank} could not join the other {launch.world - 1} ranks at "
                f"{where} ({backend}, {timeout:g} s): {_one_line(exc)}"
            ) from None
        team.store = dist.PrefixStore(f"lowrank/{run_id}/", store)
        team.store.set(f"host/{launch.rank}", f"{socket.gethostname()} {os.getpid()}")
        return team

    def _collective(self, call: Callable[[], None]) -> None:
        try:
            call()
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # gloo: DistBackendError, RuntimeError on reset or timeout
            raise PeerFailure(_one_line(exc)) from exc

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        self._collective(lambda: dist.all_gather_object(out, obj, group=self.group))
        return out

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj``, in rank order, on rank 0 (None elsewhere)."""
        import torch.distributed as dist

        out: list[Any] | None = [None] * self.world if self.lead else None
        self._collective(lambda: dist.gather_object(obj, out, dst=0, group=self.group))
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        import torch.distributed as dist

        box = [obj]
        self._collective(lambda: dist.broadcast_object_list(box, src=0, group=self.group))
        return box[0]

    def scatter(self, objs: list[Any] | None) -> Any:
        """``objs[r]`` (given on rank 0) on rank r."""
        import torch.distributed as dist

        box: list[Any] = [None]
        self._collective(
            lambda: dist.scatter_object_list(box, objs if self.lead else None, 0, self.group)
        )
        return box[0]

    def agree(self, error: str | None) -> None:
        """Raise on every rank when any rank met an error (the lowest rank's, named)."""
        for rank, message in enumerate(self.all_gather(error)):
            if message is not None:
                raise SharedError(message if rank == 0 else f"rank {rank}: {message}")

    def close(self) -> None:
        """Leave the process group; peers blocked on this rank are released at once."""
        if not self.joined:
            return
        import torch.distributed as dist

        self.joined = False
        with contextlib.suppress(Exception):
            dist.destroy_process_group()

    def stop(self, kind: Kind, cause: str) -> str | None:
        """Post why this rank stops, leave the group, and explain the stop of the run.

        From here on the process only reports and exits: SIGTERM and SIGINT are ignored for
        good (torchrun sends SIGTERM to the survivors of a failure, and SIGKILL 30 s later).
        Returns, on the rank that reports (rank 0; rank 1 when rank 0 said nothing), the line
        naming the rank that failed and why, or ``"interrupted"`` when every rank was
        interrupted; None on the other ranks and on a rank stopped by its own error.
        """
        ignore_signals()
        with contextlib.suppress(Exception):
            self.store.set(f"left/{self.rank}", f"{kind} {cause}")
        self.close()
        if kind == "failed" or self.rank > 1 or self.store is None:
            return None
        ranks = [0] if self.rank == 1 else list(range(self.world))
        posts, dead = self._roll_call(ranks)
        if self.rank == 1 and 0 in posts:
            return None
        world = self.world if self.rank == 0 else 1
        return explain(world, posts, dead, self.timeout, cause)

    def _roll_call(self, ranks: list[int]) -> tuple[dict[int, tuple[str, str]], set[int]]:
        """The posts of ``ranks``, and those known dead (their process on this host is gone);
        waits until every rank posted or is dead, at most ``ROLL_CALL_SECONDS``."""
        posts: dict[int, tuple[str, str]] = {}
        dead: set[int] = set()
        deadline = time.monotonic() + min(ROLL_CALL_SECONDS, self.timeout)
        while True:
            for r in ranks:
                if r in posts or r in dead:
                    continue
                try:
                    if self.store.check([f"left/{r}"]):
                        kind, _, cause = self.store.get(f"left/{r}").decode().partition(" ")
                        posts[r] = (kind, cause)
                    elif not _alive(self.store.get(f"host/{r}").decode()):
                        dead.add(r)
                except Exception:  # the store went with rank 0: no more to learn
                    return posts, dead
            if len(posts) + len(dead) == len(ranks) or time.monotonic() > deadline:
                return posts, dead
            time.sleep(0.05)


def explain(
    world: int, posts: dict[int, tuple[str, str]], dead: set[int], timeout: float, own: str
) -> str:
    """One line on why a run of ``world`` ranks stopped, from the ranks' posts.

    A rank's own error comes first; then ranks whose process died without a word; then ranks
    that said nothing (hung, or on a lost node); then, when every rank was interrupted,
    ``"interrupted"``; else the cause of this rank's own failed collective, ``own``.
    """
    failed = [(r, cause) for r, (kind, cause) in sorted(posts.items()) if kind == "failed"]
    if failed:
        rank, cause = failed[0]
        others = f" (ranks {', '.join(str(r) for r, _ in failed[1:])} failed too)"
        return f"rank {rank} failed: {cause}" + (others if len(failed) > 1 else "")
    if dead:
        return (
            f"{_ranks(sorted(dead))} died without a word (killed by a signal, or by the "
            "out-of-memory killer)"
        )
    silent = [r for r in range(world) if r not in posts]
    if silent:
        return (
            f"{_ranks(silent)} stopped answering: hung past the {timeout:g} s collective "
            f"timeout ({TIMEOUT_ENV}), killed, or lost with its node"
        )
    if all(kind == "interrupted" for kind, _ in posts.values()):
        return "interrupted"
    return f"the ranks lost contact: {own}"


def _ranks(ranks: list[int]) -> str:
    return f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {', '.join(map(str, ranks))}"


def _alive(host_pid: str) -> bool:
    """False only for a process on this host that has exited (or is a zombie)."""
    host, _, pid = host_pid.partition(" ")
    if host != socket.gethostname():
        return True
    import psutil

    try:
        return psutil.Process(int(pid)).status() != psutil.STATUS_ZOMBIE
    except (psutil.Error, ValueError):
        return False


def ignore_signals() -> None:
    """Ignore SIGTERM and SIGINT (from the main thread; elsewhere nothing to do)."""
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
