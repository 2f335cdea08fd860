"""Running the service: `serve` (uvicorn in this process, blocking) and `background_server` (a separate
`bigmodel-course serve` process for notebooks, tests and load tests, stopped cleanly on exit).

Connections are timed out at three points: a client has `header_timeout` seconds from connecting (or from the
end of its previous answer) to send a complete request head, a kept-alive connection is closed after
`keep_alive_timeout` idle seconds, and a request body must arrive within the app's `body_timeout` (408).
Access-log lines never contain a URL's query string.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .registry import ModelRegistry

DEFAULT_HEADER_TIMEOUT, DEFAULT_KEEP_ALIVE_TIMEOUT = 10.0, 5


def timed_protocol(header_timeout: float) -> type:
    """uvicorn's h11 protocol with a deadline for each request head.

    uvicorn closes an idle kept-alive connection, but forgets the timer as soon as any byte arrives and sets
    none for a fresh connection, so a client that connects and sends nothing, or sends its headers a byte at a
    time (slowloris), holds a connection for ever. Here the deadline runs from the connection (or the end of
    the previous answer) until the request head is complete, whatever arrives in between.
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    if isinstance(header_timeout, bool) or not isinstance(header_timeout, (int, float)) or not header_timeout > 0:
        raise ValueError(f"header_timeout must be a positive number of seconds, got {header_timeout!r}")

    class TimedH11Protocol(H11Protocol):
        _head_timer = None

        def _arm(self) -> None:
            self._disarm()
            self._head_timer = self.loop.call_later(header_timeout, self._head_timeout)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timeout(self) -> None:
            self._head_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()  # no complete request head in time: drop the connection

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:
                self._disarm()  # the head is complete; the body has the app's own timeout

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._arm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

    return TimedH11Protocol


class QueryRedactingFilter(logging.Filter):
    """Cut the query string from uvicorn's access-log lines (a secret sent in a URL must not reach the log)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str) and "?" in args[2]:
            record.args = (args[0], args[1], args[2].split("?", 1)[0] + "?[query removed]", args[3], args[4])
        return True


def _bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port); port 0 lets the OS pick a free port."""
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an int in 0..65535, got {port!r}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP (not 0) so asyncio sets TCP_NODELAY on accepted connections; without it Nagle's
    # algorithm and delayed ACKs add ~40 ms to every response on a kept-alive connection
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    if os.name != "nt":  # on Windows SO_REUSEADDR would allow two servers on one port
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock


def base_url(host: str, port: int) -> str:
    """http://host:port (IPv6 hosts in brackets)."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve(
    registry: ModelRegistry | str | os.PathLike | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    log_level: str = "info",
    access_log: bool = True,
    port_file: str | os.PathLike | None = None,
    threads: int | None = 1,
    header_timeout: float = DEFAULT_HEADER_TIMEOUT,
    keep_alive_timeout: int = DEFAULT_KEEP_ALIVE_TIMEOUT,
    llm_dir: str | os.PathLike | None = None,
    llm_name: str = "assistant",
    llm_max_batch: int = 8,
    rag: bool = False,
    **limits: int,
) -> None:
    """Serve `create_app(registry, **limits)` with uvicorn on host:port until interrupted (Ctrl+C / SIGTERM).

    header_timeout: seconds a connection may take to send a complete request head; keep_alive_timeout: seconds
    an idle kept-alive connection stays open (the module docstring explains both). llm_dir: a chat model folder
    to serve through the OpenAI-compatible routes as `llm_name`, with `llm_max_batch` KV slots; API keys from
    $BIGMODEL_LLM_KEYS (see `llm_keys_from_env`). rag: also answer questions about the book at POST /v1/rag/ask
    (the cached book index, built first when missing or stale).

    threads: torch intra-op threads per forward pass (None: torch's choice). One is fastest for the small
    batches of this service: requests run in parallel threads anyway, and more threads per forward pass
    only compete for the same cores.
    """
    import torch
    import uvicorn

    from .app import create_app

    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads <= 0:
            raise ValueError(f"threads must be a positive int or None, got {threads!r}")
        torch.set_num_threads(threads)
    protocol = timed_protocol(header_timeout)
    if isinstance(keep_alive_timeout, bool) or not isinstance(keep_alive_timeout, int) or keep_alive_timeout <= 0:
        raise ValueError(f"keep_alive_timeout must be a positive int of seconds, got {keep_alive_timeout!r}")
    llm = None
    if llm_dir is not None:
        from ..pretrained import read_model_folder
        from ..transformer import GPT, GPTConfig
        from .llm import LLMService

        model, tokenizer, _ = read_model_folder(Path(llm_dir), GPTConfig, GPT)
        llm = LLMService(model.eval(), tokenizer, name=llm_name, max_batch_size=llm_max_batch)
    rag_index = None
    if rag:
        from ..rag.answer import BookIndex

        rag_index = BookIndex.load_or_build()
    app = create_app(registry, llm=llm, llm_api_keys=llm_keys_from_env(), rag_index=rag_index, **limits)
    sock = _bind(host, port)
    bound = sock.getsockname()[1]
    print(f"serving the models of {app.state.registry.root} on {base_url(host, bound)} (Ctrl+C stops)", flush=True)
    if port_file is not None:  # tell a parent process which port the OS picked
        path = Path(port_file)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(str(bound), encoding="utf-8")
        os.replace(tmp, path)
    config = uvicorn.Config(app, host=host, port=bound, log_level=log_level, access_log=access_log,
                            timeout_graceful_shutdown=5, http=protocol, timeout_keep_alive=keep_alive_timeout)
    access = logging.getLogger("uvicorn.access")  # configured by uvicorn.Config above
    if not any(isinstance(f, QueryRedactingFilter) for f in access.filters):
        access.addFilter(QueryRedactingFilter())
    uvicorn.Server(config).run(sockets=[sock])


LLM_KEYS_ENV = "BIGMODEL_LLM_KEYS"


def llm_keys_from_env() -> dict[str, int] | None:
    """API keys of the language-model routes from $BIGMODEL_LLM_KEYS ("key:requests-per-minute,…"); None if unset."""
    raw = os.environ.get(LLM_KEYS_ENV, "").strip()
    if not raw:
        return None
    keys = {}
    for number, item in enumerate(raw.split(","), 1):
        key, _, rate = item.strip().rpartition(":")
        if not key or not rate.isdigit() or int(rate) < 1:  # the message never quotes a key
            raise ValueError(f"{LLM_KEYS_ENV} must hold key:requests-per-minute pairs separated by commas; "
                             f"pair {number} is not one")
        keys[key] = int(rate)
    return keys


def _tail(path: Path, lines: int = 30) -> str:
    """The last lines of a log file."""
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _wait_ready(proc: subprocess.Popen, port_file: Path, log: Path, host: str, timeout: float) -> str:
    """Poll until the server wrote its port and answers GET /healthz with 200; return its base URL."""
    deadline = time.monotonic() + timeout
    url = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the model server exited with code {proc.returncode} "
                               f"before it was ready:\n{_tail(log)}")
        if url is None and port_file.is_file():
            url = base_url(host, int(port_file.read_text(encoding="utf-8")))
        if url is not None:
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
                    if response.status == 200:
                        return url
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
        time.sleep(0.05)
    raise RuntimeError(f"the model server was not ready after {timeout:.0f} s:\n{_tail(log)}")


def _stop(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Ask the server to shut down (SIGINT: uvicorn finishes open requests), kill it if it does not."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT if os.name != "nt" else signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def background_server(
    registry: ModelRegistry | str | os.PathLike | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    timeout: float = 60.0,
    log_level: str = "warning",
    threads: int = 1,
    access_log: bool = False,
    log_file: str | os.PathLike | None = None,
    **limits: int,
) -> Iterator[str]:
    """Run `bigmodel-course serve` in a child process; yield its base URL once /healthz answers; stop it on exit.

    A separate process (not a thread) keeps the server's work off the caller's interpreter lock, so a
    load test measures the server and not the client. port=0 lets the OS pick a free port; `threads`, the app
    limits (max_batch, max_text_chars, max_body_bytes) and micro-batching (micro_batch, micro_batch_wait_ms) are
    passed on to `serve`; the admin key, if any, reaches the server through the environment (BIGMODEL_ADMIN_KEY).
    The server's log is kept in a temporary file (or `log_file`) and quoted if the server fails to start.
    """
    root = registry.root if isinstance(registry, ModelRegistry) else ModelRegistry(registry).root
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an int in 0..65535, got {port!r}")
    with tempfile.TemporaryDirectory(prefix="bigmodel-serve-") as tmp:
        port_file, log = Path(tmp) / "port", Path(log_file or Path(tmp) / "server.log")
        command = [sys.executable, "-m", "bigmodel_course.cli", "serve", "--host", host, "--port", str(port),
                   "--registry", str(root), "--port-file", str(port_file), "--log-level", log_level,
                   "--threads", str(int(threads))] + ([] if access_log else ["--no-access-log"])
        for key, value in limits.items():  # max_batch, max_text_chars, max_body_bytes, micro_batch, micro_batch_wait_ms
            command += [f"--{key.replace('_', '-')}", str(value)]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(log, "wb") as out:
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        try:
            yield _wait_ready(proc, port_file, log, host, timeout)
        finally:
            _stop(proc)
