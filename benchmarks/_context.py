"""What the benchmarks report beside their numbers: the machine, and XLA compilations."""

from __future__ import annotations

import datetime
import os
from typing import Any


def machine(**libraries: str) -> str:
    """CPU model, core count, load, default JAX device, library versions and date.

    ``libraries`` adds ``name=version`` pairs to jax's and numpyro's.
    """
    import jax
    import numpyro

    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    versions = {"jax": jax.__version__, "numpyro": numpyro.__version__, **libraries}
    return (
        f"{cpu}, {os.cpu_count()} cores, load average {load}; device {jax.devices()[0]} "
        f"({jax.default_backend()}); " + ", ".join(f"{k} {v}" for k, v in versions.items())
        + f"; {datetime.datetime.now().isoformat(timespec='minutes')}"
    )


class CompileCounter:
    """Counts XLA compilations (``jax.monitoring`` backend-compile events)."""

    def __init__(self) -> None:
        import jax

        self.count = 0
        jax.monitoring.register_event_duration_secs_listener(self._listen)

    def _listen(self, event: str, duration: float, **kwargs: Any) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            self.count += 1
